import type { Sql } from 'postgres'
import { APPLICATION_NAME } from '../../lib/listener.js'

/** Terminates the plugin's LISTEN backends in this database; returns how many. */
export async function terminateListeners (sql: Sql): Promise<number> {
  const rows = await sql`
    select pg_terminate_backend(pid) from pg_stat_activity
    where application_name = ${APPLICATION_NAME} and datname = current_database() and query ilike 'listen%'`
  return rows.length
}

/** Terminates every backend the plugin opened in this database. */
export async function terminatePluginBackends (sql: Sql): Promise<number> {
  const rows = await sql`
    select pg_terminate_backend(pid) from pg_stat_activity
    where application_name = ${APPLICATION_NAME} and datname = current_database()`
  return rows.length
}
