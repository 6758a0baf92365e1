import type { Sql } from 'postgres'
import { APPLICATION_NAME } from '../../lib/database/connection.js'

interface Teardown { teardown (fn: () => unknown): void }

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

/** Terminates one backend; true if it was there to be terminated. */
export async function terminateBackend (sql: Sql, pid: number): Promise<boolean> {
  const [row] = await sql<Array<{ done: boolean }>>`select pg_terminate_backend(${pid}) as done`
  return row!.done
}

/** The pids of the plugin's LISTEN backends in this database whose LISTEN has completed (idle after it). */
export async function idleListenBackends (sql: Sql): Promise<number[]> {
  const rows = await sql<Array<{ pid: number }>>`
    select pid from pg_stat_activity
    where application_name = ${APPLICATION_NAME} and datname = current_database() and query ilike 'listen%' and state = 'idle'
    order by pid`
  return rows.map((row) => row.pid)
}

/** How many backends the plugin has open in this database. */
export async function pluginBackends (sql: Sql): Promise<number> {
  const [row] = await sql<Array<{ count: number }>>`
    select count(*)::int as count from pg_stat_activity
    where application_name = ${APPLICATION_NAME} and datname = current_database()`
  return row!.count
}

/** How many of the plugin's backends in this database wait for a lock (a read held by lockTable). */
export async function pluginBackendsWaitingForLock (sql: Sql): Promise<number> {
  const [row] = await sql<Array<{ count: number }>>`
    select count(*)::int as count from pg_stat_activity
    where application_name = ${APPLICATION_NAME} and datname = current_database() and wait_event_type = 'Lock'`
  return row!.count
}

export interface TableLock {
  /** The backend that holds (or waits for) the lock. */
  pid: number
  /** Resolves once the lock is held (at once for lockTable, later for queueTableLock). */
  held: Promise<void>
  /** Commits: the lock is gone, and whoever waited for it goes on. */
  release: () => Promise<void>
}

/**
 * Holds `table` in ACCESS EXCLUSIVE mode inside an open transaction: every read
 * of the plugin waits for it until release() (a read held in flight by real
 * database means). Released at teardown if the test did not.
 */
export async function lockTable (t: Teardown, sql: Sql, table = 'system_settings'): Promise<TableLock> {
  const lock = await queueTableLock(t, sql, table)
  await lock.held
  return lock
}

/** As lockTable, but does not wait for the lock: it may queue behind others (see its `held`). */
export async function queueTableLock (t: Teardown, sql: Sql, table = 'system_settings'): Promise<TableLock> {
  const reserved = await sql.reserve()
  await reserved`begin`
  const [{ pid }] = await reserved<[{ pid: number }]>`select pg_backend_pid() as pid`
  const held = reserved.unsafe(`lock table ${table} in access exclusive mode`).then(() => {})
  held.catch(() => {}) // awaited by the test; a failure shows there
  let released: Promise<void> | undefined
  const release = (): Promise<void> => {
    released ??= held.then(async () => { await reserved`commit` }).finally(() => reserved.release())
    return released
  }
  t.teardown(release)
  return { pid, held, release }
}
