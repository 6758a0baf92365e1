import type { Sql } from 'postgres'
import { ClosedError, QueryTimeoutError } from '../errors.js'
import { jitter, withTimeout } from '../timeout.js'
import { cancelOnServer, connectTimeoutSeconds, openConnection, type Connection } from './connection.js'
import { withTableCheck } from './migrate.js'
import { TrackedSockets } from './sockets.js'

export interface UserChangesOptions {
  connection: Connection
  schema: string
  connectTimeout: number
  /** Milliseconds a change may take before its connection is dropped and the call fails. */
  queryTimeout: number
  /** The app's postgres.js instance, instead of a connection of the plugin's own. */
  sql?: Sql | undefined
}

// PostgreSQL's deadlock_detected: it aborted this transaction to let the other go on.
const DEADLOCK = '40P01'
const DEADLOCK_TRIES = 4
// A connection lost while a change ran can fail the next query too (postgres.js
// hands the terminated backend's last error to it): one more try after that.
const LOST_TRIES = 3
// PostgreSQL's admin_shutdown: the backend was terminated (a restart, a failover, pg_terminate_backend).
const ADMIN_SHUTDOWN = '57P01'
// About how long to wait before a retry (±50%).
const RETRY_PAUSE_MS = 50

/** What one change of a user left in the table. */
export interface UserChange {
  version: number
  logoutSeq: number
  /** Whether the logout kept the session it was asked to keep. */
  kept: boolean
}

/**
 * The session a logout is asked to keep: by the hash of its login key, if no
 * logout of an id it has held came after it authenticated (at clock `since`).
 */
export interface KeptSession {
  hash: string
  since: number
  held: readonly string[]
}

/**
 * Writes per-user changes (refreshUser, logoutUser). A connection of its own,
 * opened on first use: on the listener's, a change waiting for a row lock would
 * hold up the reads and the heartbeat. It has the listener's protections:
 * keep-alive, tracked sockets that can be destroyed, and a bound on every call.
 */
export class UserChanges {
  readonly #options: UserChangesOptions
  readonly #sockets = new TrackedSockets()
  #sql: Sql | undefined
  #closed = false

  constructor (options: UserChangesOptions) {
    this.#options = options
  }

  /**
   * Records a refresh, or a logout keeping the session `keep` names. Tried
   * again, up to LOST_TRIES times in all, when its connection was lost (dropped
   * after a dead link, its backend terminated by a restart or a failover), and
   * up to DEADLOCK_TRIES times after deadlocks (an ETL that refreshes this user
   * and then logs another out in one transaction takes their locks in the other
   * order): a change made twice is harmless.
   */
  async change (userId: string, logout: boolean, keep: KeptSession | null): Promise<UserChange> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#change(userId, logout, keep)
      } catch (err) {
        const code = String((err as { code?: unknown }).code)
        const lost = /^CONNECTION_/.test(code) || code === ADMIN_SHUTDOWN
        if (attempt >= (code === DEADLOCK ? DEADLOCK_TRIES : lost ? LOST_TRIES : 1)) throw err
        // Not at once. After a deadlock, PostgreSQL aborted this change so that
        // the other transaction goes on: retried at once, it could take the first
        // lock back before that transaction's waiting statement wakes up, and
        // deadlock again. A lost connection is still closing: a query sent at
        // once would go to it, and fail again.
        await new Promise((resolve) => setTimeout(resolve, jitter(RETRY_PAUSE_MS, 0.5)))
      }
    }
  }

  async #change (userId: string, logout: boolean, keep: KeptSession | null): Promise<UserChange> {
    if (this.#closed) throw new ClosedError(logout ? 'the logout' : 'the refresh')
    const sql = this.#options.sql ?? (this.#sql ??= openConnection(this.#options.connection, {
      max: 1,
      idle_timeout: 30,
      keep_alive: 10,
      connect_timeout: connectTimeoutSeconds(this.#options.connectTimeout)
    }, this.#sockets))
    const { schema, queryTimeout } = this.#options
    // The table decides the keep, under the logout clock's lock: a logout that
    // this instance has not read yet may have ended that session already.
    // The held ids go as JSON, not sql.array(): postgres.js sends an array of one
    // element as a bare value on a connection that has not read the array types yet.
    const query = sql<Array<{ version: string, logout_seq: string, kept: boolean }>>`
      select version::text, logout_seq::text, kept from ${sql(schema)}.session_change_user(${userId}, ${logout},
        ${keep?.hash ?? null}, ${keep === null ? null : String(keep.since)}::bigint,
        array(select jsonb_array_elements_text(${keep === null ? null : JSON.stringify(keep.held)}::text::jsonb)))`
    // On a connection of its own, dropped and cancelled on the server: a change
    // left waiting on a lock would commit after the caller was told it failed.
    // On the app's pool it may still commit (see cancelOnServer); the caller may retry either way.
    const [row] = await withTimeout(withTableCheck(query), queryTimeout, () => {
      if (this.#options.sql === undefined) {
        this.#sockets.destroyAll()
        cancelOnServer(query)
      }
      throw new QueryTimeoutError(logout ? 'logoutUser' : 'refreshUser', queryTimeout)
    })
    return { version: Number(row!.version), logoutSeq: Number(row!.logout_seq), kept: row!.kept }
  }

  /** Drops the connection, so that the next change connects anew (the link is known to be dead). */
  dropConnection (): void {
    this.#sockets.destroyAll()
  }

  async close (): Promise<void> {
    this.#closed = true
    await this.#sql?.end({ timeout: 1 })
    this.#sockets.destroyAll()
  }
}
