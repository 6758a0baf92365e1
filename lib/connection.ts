import postgres, { type Options, type PostgresType, type Sql } from 'postgres'

/** How every connection of the plugin shows in pg_stat_activity. */
export const APPLICATION_NAME = 'fastify-session-refresh'

export type Connection = string | Options<Record<string, PostgresType>>

/** Opens a postgres.js instance on the app's `connection` option, with the plugin's own settings on top. */
export function openConnection (connection: Connection, settings: Options<Record<string, PostgresType>>): Sql {
  return typeof connection === 'string'
    ? postgres(connection, { ...settings, connection: { application_name: APPLICATION_NAME } })
    : postgres({ ...connection, ...settings, connection: { ...connection.connection, application_name: APPLICATION_NAME } })
}
