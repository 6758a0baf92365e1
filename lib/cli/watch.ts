import type { Sql } from 'postgres'
import { channelFor } from '../database/channel.js'
import { formatAge, readVersionRow } from './status.js'

export interface WatchIo {
  out (text: string): void
  /** Reports an error while watching goes on, such as a failed read. */
  error (err: unknown): void
  /** Resolves when watching should end (Ctrl-C or SIGTERM for the real command). */
  stopped (): Promise<void>
}

/**
 * Prints one line per session_version change until stopped. The age is taken
 * from `updated_at`, which the trigger sets to the bumping transaction's start,
 * so for a long ETL transaction it includes the time the transaction ran.
 *
 * What is printed comes from the table only. PostgreSQL checks no privilege for
 * NOTIFY, so any role that can connect can send `version:<anything>`: a
 * notification only says "read the table", as it does for the app's listener.
 */
export async function watch (sql: Sql, schema: string, io: WatchIo): Promise<void> {
  // Read first: it fails with a clear error when the table is missing.
  let last = (await readVersionRow(sql, schema)).version
  let started = false
  // Set by a reconnect, so the next read says what was missed while it was down.
  let reconnected = false

  const line = (text: string): void => io.out(`${new Date().toISOString()}  ${text}\n`)

  const reads = coalesce(async () => {
    const afterReconnect = reconnected
    reconnected = false
    const row = await readVersionRow(sql, schema)
    if (afterReconnect) {
      line(`reconnected; session_version is ${row.version}${row.version === last ? '' : ` (was ${last})`}`)
    } else if (row.version !== last) {
      line(`session_version ${last} -> ${row.version}  (${formatAge(row.ageMs)} since updated_at)`)
    }
    last = row.version
  }, io.error)

  const onListen = (): void => {
    // postgres.js calls this again after each reconnect; notifications sent while
    // it was down are lost, so read the version to show what was missed.
    if (!started) return
    reconnected = true
    reads.hint()
  }

  // The channel also carries heartbeats and per-user hints, which say nothing of the version.
  await sql.listen(channelFor(schema), (payload) => {
    if (payload.startsWith('version:')) reads.hint()
  }, onListen)
  started = true
  // Read again once listening: a bump between the first read and the LISTEN would be in neither.
  const start = await readVersionRow(sql, schema)
  last = start.version
  io.out(`watching session_version, now ${start.version} (${formatAge(start.ageMs)} since updated_at); Ctrl-C to stop\n`)
  reads.start()
  await io.stopped()
  await reads.stop()
}

interface Coalesced {
  /** Asks for a run of `read` that starts after this call. */
  hint (): void
  /** Lets runs begin; hints before it share one run then, after the first line is out. */
  start (): void
  /** Drops later hints, and resolves once the run under way (and one queued) has ended. */
  stop (): Promise<void>
}

/**
 * One run of `read` at a time: hints that come while it runs share one more run
 * after it (as the app's listener coalesces its reads), so a flood of forged
 * notifications costs a few reads, not one each. A failed run goes to `onError`.
 */
function coalesce (read: () => Promise<void>, onError: (err: unknown) => void): Coalesced {
  let busy = true
  let again = false
  let stopped = false
  let running = Promise.resolve()
  const run = (): void => {
    busy = true
    running = (async () => {
      while (again) {
        again = false
        await read().catch(onError)
      }
      busy = false
    })()
  }
  return {
    hint: () => {
      // Once stopped, the connection is about to end: a read started now would fail on it.
      if (stopped) return
      again = true
      if (!busy) run()
    },
    start: run,
    stop: async () => {
      stopped = true
      await running
    }
  }
}
