// The plugin's queries and connections, as the database counts them (pg_stat_statements, pg_stat_activity).
import { hrMs } from '../../shared/log.js'
import { PLUGIN_APPLICATION_NAME } from './config.js'
import type { Target } from './target.js'

export interface Counters { at: number, statements: Map<string, { query: string, calls: number, ms: number }>, commits: number }

export async function readCounters (target: Target, database: string): Promise<Counters> {
  const statements = new Map<string, { query: string, calls: number, ms: number }>()
  if (target.statements) {
    const rows = await target.monitor<{ id: string, query: string, calls: string, ms: number }[]>`
      select s.queryid::text as id, s.query, s.calls::text as calls, s.total_exec_time::float8 as ms
      from pg_stat_statements s join pg_database d on d.oid = s.dbid
      where d.datname = ${database}`
    for (const row of rows) statements.set(row.id, { query: row.query, calls: Number(row.calls), ms: row.ms })
  }
  const [row] = await target.monitor<{ commits: string }[]>`
    select xact_commit::text as commits from pg_stat_database where datname = ${database}`
  return { at: hrMs(), statements, commits: Number(row?.commits ?? 0) }
}

export interface QueryRates {
  heartbeat: number, poll: number, total: number, transactions: number
  /** Busiest first: calls per second, and the mean execution time of those calls (pg_stat_statements' total_exec_time). */
  byQuery: Array<{ query: string, perSecond: number, meanMs: number, busy: number }>
}

/**
 * The plugin's queries between two readings, per second. Heartbeats are told apart
 * by their text (a NOTIFY or pg_notify); everything else the plugin sends while
 * idle (re-reads of the version and of per-user changes, the queue usage, any
 * LISTEN after a reconnect) counts as poll. `exclude`: statements of the bench's own
 * that ran in the bench database meanwhile (the per-user workload's).
 */
export function queryRates (a: Counters, b: Counters, exclude?: RegExp): QueryRates {
  const seconds = (b.at - a.at) / 1000
  let heartbeat = 0
  let poll = 0
  const byQuery: QueryRates['byQuery'] = []
  for (const [id, { query, calls, ms }] of b.statements) {
    const delta = calls - (a.statements.get(id)?.calls ?? 0)
    if (delta <= 0 || exclude?.test(query) === true) continue
    if (/pg_notify|^\s*notify\b/i.test(query)) heartbeat += delta
    else poll += delta
    const spent = ms - (a.statements.get(id)?.ms ?? 0)
    // busy: the share of one core that executing these calls took (execution only, not parse or network).
    byQuery.push({ query: query.replace(/\s+/g, ' ').slice(0, 120), perSecond: delta / seconds, meanMs: spent / delta, busy: spent / 1000 / seconds })
  }
  byQuery.sort((x, y) => y.perSecond - x.perSecond)
  return { heartbeat: heartbeat / seconds, poll: poll / seconds, total: (heartbeat + poll) / seconds, transactions: (b.commits - a.commits) / seconds, byQuery }
}

export async function pluginConnections (target: Target, database: string): Promise<number> {
  const [row] = await target.monitor<{ n: number }[]>`
    select count(*)::int as n from pg_stat_activity where application_name = ${PLUGIN_APPLICATION_NAME} and datname = ${database}`
  return row!.n
}

export async function usedConnections (target: Target): Promise<number> {
  const [row] = await target.monitor<{ n: number }[]>`select count(*)::int as n from pg_stat_activity where backend_type = 'client backend'`
  return row!.n
}

/** Connections of one application_name in the bench database (the app pools of the `sql` variant, the bare listeners). */
export async function applicationConnections (target: Target, database: string, name: string): Promise<number> {
  const [row] = await target.monitor<{ n: number }[]>`
    select count(*)::int as n from pg_stat_activity where application_name = ${name} and datname = ${database}`
  return row!.n
}
