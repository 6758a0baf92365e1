import type { Sql } from 'postgres'

export const USER_CHANNEL = 'session_user_version'

/** What the plugin knows of one user's changes. */
export interface UserVersion {
  /** The user's latest version. */
  version: number
  /** Sessions stamped before this version must log in again (0: never). */
  logoutVersion: number
  /** When the change was made or heard of, for pruning. */
  changedAt: number
}

interface Row { user_id: string, version: string, logout_version: string, changed_at: number }

/**
 * User id → latest per-user version, for users changed within one session
 * lifetime: older changes cannot concern a live session, so they are pruned.
 * Kept current by notifications, and re-read after every (re)connect.
 */
export class UserVersions {
  readonly #versions = new Map<string, UserVersion>()
  readonly #lifetime: number
  // The database clock at the last read; the next catch-up reads from a margin before it.
  #readUntil: Date | null = null

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
  apply (userId: string, version: number, logoutVersion: number, changedAt = Date.now()): void {
    const known = this.#versions.get(userId)
    if (known !== undefined && known.version >= version && known.logoutVersion >= logoutVersion) return
    this.#versions.set(userId, {
      version: Math.max(version, known?.version ?? 0),
      logoutVersion: Math.max(logoutVersion, known?.logoutVersion ?? 0),
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
    const { u, v, l } = (change ?? {}) as { u?: unknown, v?: unknown, l?: unknown }
    if (typeof u !== 'string' || !Number.isSafeInteger(v) || !Number.isSafeInteger(l)) return false
    this.apply(u, v as number, l as number)
    return true
  }

  /**
   * Reads the rows changed since the last read (all rows within one lifetime the
   * first time). A row is dated when it is written, not when its transaction
   * commits, so the next read starts at the oldest transaction still open at
   * this one, less a margin for transactions this role cannot see.
   */
  async catchUp (sql: Sql): Promise<void> {
    const since = this.#readUntil ?? new Date(Date.now() - this.#lifetime)
    const [until] = await sql<{ at: Date }[]>`
      select least(clock_timestamp(), min(xact_start)) - interval '5 seconds' as at
      from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`
    const rows = await sql<Row[]>`
      select user_id, version::text, logout_version::text, extract(epoch from updated_at) * 1000 as changed_at
      from session_user_versions where updated_at >= ${since}`
    for (const row of rows) this.apply(row.user_id, Number(row.version), Number(row.logout_version), Number(row.changed_at))
    this.#readUntil = until!.at
  }

  /** Forgets changes older than one session lifetime. */
  prune (now = Date.now()): void {
    for (const [userId, { changedAt }] of this.#versions) {
      if (changedAt < now - this.#lifetime) this.#versions.delete(userId)
    }
  }
}
