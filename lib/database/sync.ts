import type { Sql } from 'postgres'
import { MissingTableError, QueryTimeoutError } from '../errors.js'
import { withTimeout } from '../timeout.js'
import { quoteIdentifier, withTableCheck } from './migrate.js'
import { parseVersionOrThrow } from './version.js'
import type { VersionChange } from '../view.js'
import type { ReadResult, UserRow, Versions } from './versions.js'

export interface SyncOptions {
  sql: Sql
  schema: string
  /** Milliseconds a session can live: older per-user changes are not read. */
  lifetime: number
  /** Milliseconds a read may take before its connection is dropped. */
  timeout: number
  versions: Versions
  /** Drops the read's connection, so that a read stuck on a dead link fails and the next one reconnects. */
  dropConnection: () => void
  /** Told when a read starts; its answer comes back with `onReadEnd`. */
  onReadStart: () => number
  onReadEnd: (started: number, error: unknown) => void
  /** Told what a read changed, once it is applied. */
  onApplied: (change: VersionChange) => void
  /** The least time between the starts of two reads, so a flood of hints costs a bounded number of reads. */
  spacing: number
}

interface StateRow {
  version: string | null
  user_notify: boolean
  logout_clock: string
  generation: string
  xmin: string
  server_now: number
  queue_usage: number
  users: string
}

/**
 * Reads the tables and applies what they say to `versions`: the global version,
 * the logout clock and the users changed since the last read. One read at a
 * time; callers that ask while one runs share the next one, which starts after
 * it, so what they get is never older than their question.
 */
export class Sync {
  readonly #options: SyncOptions
  readonly #quotedSchema: string
  #running: Promise<boolean> | null = null
  #queued: Promise<boolean> | null = null
  #lastStart = -Infinity
  // Where the next read of per-user changes starts: the oldest transaction
  // still open at the last read, so a change committed later by a long
  // transaction is found, whichever role made it.
  #readFromXid: bigint | null = null
  // Changes when rows may have gone away (delete, truncate, restore): the next read is then full.
  #generation: string | null = null
  lastSyncAt: Date | null = null
  lastError: unknown = null
  queueUsage = 0

  constructor (options: SyncOptions) {
    this.#options = options
    this.#quotedSchema = quoteIdentifier(options.schema)
  }

  /**
   * A read that starts after this call; resolves true if it succeeded. Never
   * rejects. Reads start at least `spacing` ms apart, so hints that come one
   * after another cost at most one read per `spacing`, as a flood of them does.
   */
  request (): Promise<boolean> {
    if (this.#queued !== null) return this.#queued
    if (this.#running === null && performance.now() - this.#lastStart >= this.#options.spacing) return this.#start()
    const queued = (this.#running ?? Promise.resolve(true)).then(async () => {
      const wait = this.#lastStart + this.#options.spacing - performance.now()
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
      this.#queued = null
      return this.#start()
    })
    this.#queued = queued
    return queued
  }

  #start (): Promise<boolean> {
    this.#lastStart = performance.now()
    const started = this.#options.onReadStart()
    const run = this.#readAndApply().then(
      () => {
        this.lastError = null
        this.#options.onReadEnd(started, null)
        return true
      },
      (err: unknown) => {
        this.lastError = err
        this.#options.onReadEnd(started, err)
        return false
      })
    this.#running = run
    void run.then(() => { if (this.#running === run) this.#running = null })
    return run
  }

  async #readAndApply (): Promise<void> {
    const from = this.#readFromXid
    let result = await this.#readPages(from)
    if (from !== null && (result.generation !== this.#generation || result.xmin < from)) {
      // Rows were deleted, the table was replaced, or the database went back in
      // time (a point-in-time restore): only a full read shows what is there now.
      result = await this.#readPages(null)
    }
    const change = this.#options.versions.apply(result)
    this.#readFromXid = result.xmin
    this.#generation = result.generation
    this.lastSyncAt = new Date()
    this.#options.onApplied(change)
  }

  /**
   * The state, and the per-user rows page by page. Everything but the rows
   * comes from the first page's snapshot: every logout on the logout clock it
   * holds was committed before it, so it is in the rows that follow.
   */
  async #readPages (from: bigint | null): Promise<ReadResult & { xmin: bigint, generation: string }> {
    const first = await this.#read(from, null)
    const users = first.users
    for (let page = first.users; page.length === PAGE_ROWS;) {
      page = (await this.#read(from, page[page.length - 1]!)).users
      users.push(...page)
    }
    return { ...first, users }
  }

  /** One statement, so one snapshot: the version, the logout clock and a page of rows agree. */
  async #read (from: bigint | null, after: UserRow | null): Promise<ReadResult & { xmin: bigint, generation: string }> {
    const { sql, lifetime, timeout, schema } = this.#options
    const users = `${this.#quotedSchema}.session_user_versions`
    // Pages follow an index in order, with a bound, so the plan walks the index
    // whatever the table holds. The bounds are sub-selects: the planner then
    // does not look the values up in its statistics, which on an index with
    // many dead entries (every change rewrites a row) costs more than the read.
    const rows = from === null
      ? sql`select * from ${sql(schema)}.session_user_versions
            where updated_at > now() - ${lifetime} * interval '1 millisecond' and user_id > (select ${after?.userId ?? ''}::text)
            order by user_id limit ${PAGE_ROWS}`
      : sql`select * from ${sql(schema)}.session_user_versions
            where (changed_xid, user_id) > ((select ${String(after?.changedXid ?? from)}::xid8), (select ${after?.userId ?? ''}::text))
            order by changed_xid, user_id limit ${PAGE_ROWS}`
    const query = sql<StateRow[]>`
      select (select value from ${sql(schema)}.system_settings where key = 'session_version') as version,
             s.logout_seq::text as logout_clock,
             s.user_notify,
             s.users_epoch::text || ':' || to_regclass(${users})::oid::text || ':' || pg_relation_filenode(to_regclass(${users}))::text as generation,
             pg_snapshot_xmin(pg_current_snapshot())::text as xmin,
             (extract(epoch from now()) * 1000)::float8 as server_now,
             pg_notification_queue_usage() as queue_usage,
             coalesce((
               select json_agg(json_build_array(u.user_id, u.version::text, u.logout_seq::text, u.keep_key,
                                                (extract(epoch from u.updated_at) * 1000)::float8,
                                                (case when u.logout_at > now() - ${lifetime} * interval '1 millisecond' then u.logout_version else 0 end)::text,
                                                u.changed_xid::text))
               from (${rows}) u
             ), '[]')::text as users
      from ${sql(schema)}.session_refresh_state s`
    const [row] = await withTimeout(withTableCheck(query), timeout, () => {
      this.#options.dropConnection()
      throw new QueryTimeoutError('reading the session versions', timeout)
    })
    if (row === undefined || row.version === null) throw new MissingTableError()
    this.queueUsage = row.queue_usage
    return {
      version: parseVersionOrThrow(row.version),
      logoutClock: Number(row.logout_clock),
      notifyUsers: row.user_notify,
      users: (JSON.parse(row.users) as UserTuple[]).map(toUserRow),
      full: from === null,
      clockOffset: row.server_now - Date.now(),
      xmin: BigInt(row.xmin),
      generation: row.generation
    }
  }
}

// Rows per statement: a read of a big table (the first one, a full one) takes several.
const PAGE_ROWS = 5000

type UserTuple = [userId: string, version: string, logoutSeq: string, keep: string | null, updatedAt: number, legacyLogoutVersion: string, changedXid: string]

function toUserRow ([userId, version, logoutSeq, keep, updatedAt, legacyLogoutVersion, changedXid]: UserTuple): UserRow {
  return { userId, version: Number(version), logoutSeq: Number(logoutSeq), keep, updatedAt, legacyLogoutVersion: Number(legacyLogoutVersion), changedXid }
}
