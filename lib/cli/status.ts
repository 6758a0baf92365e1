import type { Sql } from 'postgres'
import { channelFor } from '../database/channel.js'
import { APPLICATION_NAME } from '../database/connection.js'
import { withTableCheck } from '../database/migrate.js'
import { parseVersionOrThrow } from '../database/version.js'
import { MissingTableError } from '../errors.js'

/** The session_version row, with its age measured by the server's own clock. */
export interface VersionRow {
  version: number
  updatedAt: Date
  ageMs: number
}

/** One app instance that is LISTENing on this database right now. */
export interface ListeningInstance {
  pid: number
  /** The client's IP address, or 'local' for a Unix socket. */
  address: string
  /** Null for a Unix socket. */
  port: number | null
  since: string
}

export interface DatabaseStatus {
  /** The schema whose tables were read. */
  schema: string
  version: number
  updatedAt: string
  updatedMsAgo: number
  listening: ListeningInstance[]
  /** Plugin backends whose details this role may not see (it needs pg_read_all_stats or the app's role). */
  hiddenBackends: number
  /** pg_notification_queue_usage(): the share of the NOTIFY queue in use, 0 to 1. */
  queueUsage: number
}

export async function readVersionRow (sql: Sql, schema: string): Promise<VersionRow> {
  // The age comes from the server, so a client with a wrong clock still reports it right.
  const rows = await withTableCheck(sql<{ value: string, updated_at: Date, age_ms: number }[]>`
    select value, updated_at, (extract(epoch from clock_timestamp() - updated_at) * 1000)::float8 as age_ms
    from ${sql(schema)}.system_settings where key = 'session_version'`)
  const row = rows[0]
  if (row === undefined) throw new MissingTableError()
  return { version: parseVersionOrThrow(row.value), updatedAt: row.updated_at, ageMs: row.age_ms }
}

interface BackendRow {
  pid: number
  address: string
  port: number | null
  backend_start: Date | null
  listens: boolean | null
}

/**
 * Each plugin instance holds two backends with its application_name: one that
 * LISTENs and one that runs its reads and heartbeats. pg_listening_channels()
 * only sees the caller's own session, so the LISTEN backend is told apart by
 * its last statement: postgres.js runs nothing but `listen "<channel>"` on it,
 * also after a reconnect, while the other one runs selects. The channel names
 * the schema, so instances of other tenants in the same database do not count.
 * Only backends on this database count: NOTIFY does not cross databases.
 */
export async function readDatabaseStatus (sql: Sql, schema: string): Promise<DatabaseStatus> {
  // One after the other: with postgres.js 3.4, ending a client while queries
  // pipelined behind a failed one are still pending kept the process alive.
  const row = await readVersionRow(sql, schema)
  const backends = await sql<BackendRow[]>`
    select pid, coalesce(host(client_addr), 'local') as address, nullif(client_port, -1) as port, backend_start,
           query = ${'listen "' + channelFor(schema) + '"'} as listens
    from pg_stat_activity
    where application_name = ${APPLICATION_NAME} and datname = current_database()
    order by backend_start, pid`
  const queue = await sql<{ usage: number }[]>`select pg_notification_queue_usage() as usage`
  const listening: ListeningInstance[] = []
  let hiddenBackends = 0
  for (const backend of backends) {
    // Another role's backends show their pid and application_name, but null for the rest.
    if (backend.backend_start === null) hiddenBackends++
    else if (backend.listens === true) {
      listening.push({
        pid: backend.pid,
        address: backend.address,
        port: backend.port,
        since: backend.backend_start.toISOString()
      })
    }
  }
  return {
    schema,
    version: row.version,
    updatedAt: row.updatedAt.toISOString(),
    updatedMsAgo: Math.round(row.ageMs),
    listening,
    hiddenBackends,
    queueUsage: queue[0]!.usage
  }
}

/** '250 ms', '42 s', '17 min', '5 h', '3 d': enough precision to read at a glance. */
export function formatAge (ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`
  const s = ms / 1000
  if (s < 120) return `${Math.round(s)} s`
  if (s < 2 * 3600) return `${Math.round(s / 60)} min`
  if (s < 2 * 86_400) return `${Math.round(s / 3600)} h`
  return `${Math.round(s / 86_400)} d`
}

export function formatStatus (status: DatabaseStatus): string {
  const lines = [
    `schema           ${status.schema}`,
    `session_version  ${status.version}`,
    `updated_at       ${status.updatedAt} (${formatAge(status.updatedMsAgo)} ago)`
  ]
  const count = status.listening.length
  lines.push(`listening        ${count === 0 ? 'none: no app instance is listening on this database' : `${count} instance${count === 1 ? '' : 's'}`}`)
  for (const instance of status.listening) {
    const where = instance.port === null ? instance.address : `${instance.address}:${instance.port}`
    lines.push(`  ${where}  since ${instance.since}  pid ${instance.pid}`)
  }
  if (status.hiddenBackends > 0) {
    lines.push(`  (${status.hiddenBackends} backends of another role are hidden: connect as the app's role or one with pg_read_all_stats)`)
  }
  lines.push(`notify queue     ${(status.queueUsage * 100).toFixed(2)}% used`)
  return lines.join('\n') + '\n'
}
