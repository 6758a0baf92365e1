import type { PendingQuery, Row, Sql } from 'postgres'
import { MissingTableError, QueryTimeoutError } from '../errors.js'
import { withTimeout } from '../timeout.js'
import { cancelOnServer } from './connection.js'
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
  /** Whether `sql` is the plugin's own (a timed-out read is then cancelled), not the app's pool. */
  ownConnection: boolean
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
  snapshot: string
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
  // The snapshot of the last read: the next one reads only the rows it could
  // not see, written by transactions that were still open then (a long ETL's
  // commit comes late, whichever role made it) or that began after it. Not
  // "every transaction since the oldest one open": any role can hold one open,
  // and the reads would then grow with every change since.
  #since: Snapshot | null = null
  // Changes when rows may have gone away (delete, truncate, restore): the next read is then full.
  #generation: string | null = null
  // A read that timed out on the app's pool, where nothing can safely cancel it:
  // it still holds a connection there, so the next read waits for it to end
  // rather than take another one (a held lock would take the whole pool).
  #stuck: Promise<void> | null = null
  lastSyncAt: Date | null = null
  lastError: unknown = null
  queueUsage = 0

  constructor (options: SyncOptions) {
    this.#options = options
    this.#quotedSchema = quoteIdentifier(options.schema)
  }

  /**
   * Makes the next read a full one: after a reconnect, the server may be
   * another one (a failover), whose transaction ids say nothing of the last read.
   */
  forgetSnapshot (): void {
    this.#since = null
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
    if (this.#stuck !== null) {
      await withTimeout(this.#stuck, this.#options.timeout, () => {
        throw new QueryTimeoutError('reading the session versions (the last read is still running)', this.#options.timeout)
      })
      this.#stuck = null
    }
    const since = this.#since
    let result = await this.#readPages(since)
    if (since !== null && (result.generation !== this.#generation || result.snapshot.xmin < since.xmin || result.snapshot.xmax < since.xmax)) {
      // Rows were deleted, the table was replaced, or the database went back in
      // time (a point-in-time restore, a failover to a standby that lagged):
      // only a full read shows what is there now.
      result = await this.#readPages(null)
    }
    const change = this.#options.versions.apply(result)
    this.#since = result.snapshot
    this.#generation = result.generation
    this.lastSyncAt = new Date()
    this.#options.onApplied(change)
  }

  /**
   * The state, and the per-user rows page by page. Everything but the rows
   * comes from the first page's snapshot: every logout on the logout clock it
   * holds was committed before it, so it is in the rows that follow.
   */
  async #readPages (since: Snapshot | null): Promise<Read> {
    const first = await this.#read(since, null)
    const users = first.users
    for (let page = first.users; page.length === PAGE_ROWS;) {
      page = (await this.#read(since, page[page.length - 1]!)).users
      users.push(...page)
    }
    return { ...first, users }
  }

  // A read of changes takes the two parts that the last snapshot could not see,
  // each one walk of the (changed_xid, user_id) index from a single bound (two
  // bounds on its first column, the index would walk from the lower one): the
  // transactions open then, and those that began after it. A page goes on
  // from the last row of the one before.

  /** Rows of the transactions open at the last read's snapshot (they may have committed since). */
  #openPart (since: Snapshot, after: UserRow | null): PendingQuery<Row[]> {
    const { sql } = this.#options
    const open = sql`changed_xid = any (${`{${since.open.join(',')}}`}::xid8[])`
    if (after === null) return open
    if (BigInt(after.changedXid) >= since.xmax) return sql`false`
    return sql`${open} and (changed_xid, user_id) > ((select ${after.changedXid}::xid8), (select ${after.userId}::text))`
  }

  /**
   * Rows of the transactions that began after the last read's snapshot. With
   * an upper bound too: the planner then estimates a range (a few rows) and
   * walks the index; with a lower bound alone it would take a third of the
   * table to match, and read all of it.
   */
  #laterPart (since: Snapshot, after: UserRow | null): PendingQuery<Row[]> {
    const { sql } = this.#options
    const below = sql`changed_xid < (select ${XID8_MAX}::xid8)`
    if (after === null || BigInt(after.changedXid) < since.xmax) return sql`changed_xid >= (select ${String(since.xmax)}::xid8) and ${below}`
    return sql`(changed_xid, user_id) > ((select ${after.changedXid}::xid8), (select ${after.userId}::text)) and ${below}`
  }

  /** One statement, so one snapshot: the version, the logout clock and a page of rows agree. */
  async #read (since: Snapshot | null, after: UserRow | null): Promise<Read> {
    const { sql, lifetime, timeout, schema } = this.#options
    const users = `${this.#quotedSchema}.session_user_versions`
    const table = sql`${sql(schema)}.session_user_versions`
    // Pages follow an index in order, with a bound, so the plan walks the index
    // whatever the table holds. The bounds are sub-selects: the planner then
    // does not look the values up in its statistics, which on an index with
    // many dead entries (every change rewrites a row) costs more than the read.
    const rows = since === null
      ? sql`select * from ${table}
            where updated_at > now() - ${lifetime} * interval '1 millisecond' and user_id > (select ${after?.userId ?? ''}::text)
            order by user_id limit ${PAGE_ROWS}`
      : sql`(select * from ${table} where ${this.#openPart(since, after)} order by changed_xid, user_id limit ${PAGE_ROWS})
            union all
            (select * from ${table} where ${this.#laterPart(since, after)} order by changed_xid, user_id limit ${PAGE_ROWS})
            order by changed_xid, user_id limit ${PAGE_ROWS}`
    const order = since === null ? sql`u.user_id` : sql`u.changed_xid, u.user_id`
    const query = sql<StateRow[]>`
      select (select value from ${sql(schema)}.system_settings where key = 'session_version') as version,
             s.logout_seq::text as logout_clock,
             s.user_notify,
             s.users_epoch::text || ':' || to_regclass(${users})::oid::text || ':' || pg_relation_filenode(to_regclass(${users}))::text as generation,
             pg_current_snapshot()::text as snapshot,
             (extract(epoch from now()) * 1000)::float8 as server_now,
             pg_notification_queue_usage() as queue_usage,
             coalesce((
               select json_agg(json_build_array(u.user_id, u.version::text, u.logout_seq::text, u.keep_key,
                                                (extract(epoch from u.updated_at) * 1000)::float8,
                                                (case when u.logout_at > now() - ${lifetime} * interval '1 millisecond' then u.logout_version else 0 end)::text,
                                                u.changed_xid::text) order by ${order})
               from (${rows}) u
             ), '[]')::text as users
      from ${sql(schema)}.session_refresh_state s`
    const answer = withTableCheck(query)
    const [row] = await withTimeout(answer, timeout, () => {
      if (this.#options.ownConnection) {
        // Dropped first: the cancel goes out on a connection of its own, which must not be dropped with it.
        this.#options.dropConnection()
        cancelOnServer(query)
      } else {
        this.#stuck = answer.then(() => {}, () => {})
      }
      throw new QueryTimeoutError('reading the session versions', timeout)
    })
    if (row === undefined || row.version === null) throw new MissingTableError()
    this.queueUsage = row.queue_usage
    return {
      version: parseVersionOrThrow(row.version),
      logoutClock: Number(row.logout_clock),
      notifyUsers: row.user_notify,
      users: (JSON.parse(row.users) as UserTuple[]).map(toUserRow),
      full: since === null,
      clockOffset: row.server_now - Date.now(),
      snapshot: parseSnapshot(row.snapshot),
      generation: row.generation
    }
  }
}

/** What a read's snapshot saw: every transaction below `xmax` that is not in `open`. */
interface Snapshot {
  xmin: bigint
  xmax: bigint
  /** The transactions in progress then: what they wrote may have committed since. */
  open: string[]
}

type Read = ReadResult & { snapshot: Snapshot, generation: string }

/** PostgreSQL's text form of a snapshot: `xmin:xmax:xip1,xip2,…`. */
function parseSnapshot (text: string): Snapshot {
  const [xmin, xmax, open] = text.split(':') as [string, string, string]
  return { xmin: BigInt(xmin), xmax: BigInt(xmax), open: open === '' ? [] : open.split(',') }
}

// The largest xid8, above every transaction id.
const XID8_MAX = '18446744073709551615'

// Rows per statement: a read of a big table (the first one, a full one) takes several.
const PAGE_ROWS = 5000

type UserTuple = [userId: string, version: string, logoutSeq: string, keep: string | null, updatedAt: number, legacyLogoutVersion: string, changedXid: string]

function toUserRow ([userId, version, logoutSeq, keep, updatedAt, legacyLogoutVersion, changedXid]: UserTuple): UserRow {
  return { userId, version: Number(version), logoutSeq: Number(logoutSeq), keep, updatedAt, legacyLogoutVersion: Number(legacyLogoutVersion), changedXid }
}
