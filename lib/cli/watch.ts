import type { Sql } from 'postgres'
import { channelFor } from '../database/channel.js'
import { parseVersion } from '../database/version.js'
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
 */
export async function watch (sql: Sql, schema: string, io: WatchIo): Promise<void> {
  // Read first: it fails with a clear error when the table is missing.
  let last = (await readVersionRow(sql, schema)).version
  let started = false
  // One line at a time, in the order the notifications came.
  let printing = Promise.resolve()

  const line = (text: string): void => io.out(`${new Date().toISOString()}  ${text}\n`)

  const onChange = async (payload: string): Promise<void> => {
    const version = parseVersion(payload.slice('version:'.length))
    if (version === null) {
      line(`ignored a session_version notification that is not a version: ${JSON.stringify(payload)}`)
      return
    }
    const row = await readVersionRow(sql, schema)
    // A later bump may have landed before this read; its updated_at says nothing about this one.
    const age = row.version === version
      ? `${formatAge(row.ageMs)} since updated_at`
      : `the table already says ${row.version}`
    line(`session_version ${last} -> ${version}  (${age})`)
    last = version
  }

  const onListen = (): void => {
    // postgres.js calls this again after each reconnect; notifications sent while
    // it was down are lost, so read the version to show what was missed.
    if (!started) return
    printing = printing.then(async () => {
      const row = await readVersionRow(sql, schema)
      line(`reconnected; session_version is ${row.version}${row.version === last ? '' : ` (was ${last})`}`)
      last = row.version
    }).catch(io.error)
  }

  // The channel also carries heartbeats and per-user hints; only versions are shown.
  await sql.listen(channelFor(schema), (payload) => {
    if (!payload.startsWith('version:')) return
    printing = printing.then(() => onChange(payload)).catch(io.error)
  }, onListen)
  started = true
  // Read again once listening: a bump between the first read and the LISTEN would be in neither.
  const start = await readVersionRow(sql, schema)
  last = start.version
  io.out(`watching session_version, now ${start.version} (${formatAge(start.ageMs)} since updated_at); Ctrl-C to stop\n`)
  await io.stopped()
  await printing
}
