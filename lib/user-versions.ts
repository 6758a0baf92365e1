import type { Sql } from 'postgres'
import { withTableCheck } from './migrate.js'

export const USER_CHANNEL = 'session_user_version'

/** What the plugin knows of one user's changes. */
export interface UserVersion {
  /** The user's latest version. */
  version: number
  /** Sessions stamped before this version must log in again (0: no logout within one session lifetime). */
  logoutVersion: number
  /** When the change was made or heard of, for pruning. */
  changedAt: number
}

// Numbers arrive as text: bigint and numeric do not fit a JavaScript number in general.
interface Row { user_id: string, version: string, logout_version: string, logout_at: string | null, changed_at?: string }

const ROW_COLUMNS = 'user_id, version::text, logout_version::text, (extract(epoch from logout_at) * 1000)::text as logout_at'

/**
 * User id → latest per-user version, for users changed within one session
 * lifetime: older changes cannot concern a live session, so they are pruned.
 * Kept current by notifications, and re-read after every (re)connect.
 */
export class UserVersions {
  readonly #versions = new Map<string, UserVersion>()
  readonly #lifetime: number
  // The oldest transaction still open at the last read: the next read starts there.
  #readFromXid: string | null = null

  constructor (lifetime: number) {
    this.#lifetime = lifetime
  }

  get size (): number {
    return this.#versions.size
  }

  get (userId: unknown): UserVersion | undefined {
    // Most apps never change a single user; skip the string conversion for them.
    return this.#versions.size === 0 ? undefined : this.#versions.get(String(userId))
  }

  /** Applies a change; what is known never goes back (versions only rise, per user). */
  apply (userId: string, version: number, logoutVersion: number, logoutAt: number | null, changedAt = Date.now()): void {
    // A logout older than one session lifetime concerns no live session. Ignoring
    // it keeps a user who logged in since, and was stamped 0, logged in.
    const logout = logoutAt !== null && logoutAt > Date.now() - this.#lifetime ? logoutVersion : 0
    const known = this.#versions.get(userId)
    if (known !== undefined && known.version >= version && known.logoutVersion >= logout) return
    this.#versions.set(userId, {
      version: Math.max(version, known?.version ?? 0),
      logoutVersion: Math.max(logout, known?.logoutVersion ?? 0),
      changedAt
    })
  }

  /** Applies a NOTIFY payload; returns false for one that is not ours to read. */
  applyPayload (payload: string): boolean {
    let change: unknown
    try {
      change = JSON.parse(payload)
    } catch {
      return false
    }
    const { u, v, l, a } = (change ?? {}) as { u?: unknown, v?: unknown, l?: unknown, a?: unknown }
    if (typeof u !== 'string' || !Number.isSafeInteger(v) || !Number.isSafeInteger(l) || !(a === null || Number.isSafeInteger(a))) {
      return false
    }
    this.apply(u, v as number, l as number, a as number | null)
    return true
  }

  /**
   * Reads the rows changed since the last read (all rows within one lifetime the
   * first time). "Since" is by transaction, not by clock: every transaction still
   * open at the last read, of any role and however long, is read again.
   */
  async readChanges (sql: Sql): Promise<void> {
    const [snapshot] = await withTableCheck(sql<{ xmin: string }[]>`select pg_snapshot_xmin(pg_current_snapshot())::text as xmin`)
    const rows = await withTableCheck(sql<Row[]>`
      select ${sql.unsafe(ROW_COLUMNS)}, (extract(epoch from updated_at) * 1000)::text as changed_at
      from session_user_versions
      where updated_at > now() - ${this.#lifetime / 1000} * interval '1 second'
        and (${this.#readFromXid}::xid8 is null or changed_xid >= ${this.#readFromXid}::xid8)`)
    for (const row of rows) this.#applyRow(row)
    this.#readFromXid = snapshot!.xmin
  }

  /** Records a change, as session_refresh_user() or session_logout_user() do, and applies it here at once. */
  async change (sql: Sql, userId: string, logout: boolean): Promise<number> {
    const [row] = await sql.begin(async (tx) => {
      await tx`select session_change_user(${userId}, ${logout})`
      return tx<Row[]>`select ${tx.unsafe(ROW_COLUMNS)} from session_user_versions where user_id = ${userId}`
    })
    this.#applyRow(row!)
    return Number(row!.version)
  }

  #applyRow (row: Row): void {
    const logoutAt = row.logout_at === null ? null : Number(row.logout_at)
    const changedAt = row.changed_at === undefined ? Date.now() : Number(row.changed_at)
    this.apply(row.user_id, Number(row.version), Number(row.logout_version), logoutAt, changedAt)
  }

  /** Forgets changes older than one session lifetime. */
  prune (now = Date.now()): void {
    for (const [userId, { changedAt }] of this.#versions) {
      if (changedAt < now - this.#lifetime) this.#versions.delete(userId)
    }
  }
}
