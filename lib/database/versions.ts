import type { UserState, VersionChange, VersionView } from '../view.js'

/** One row of session_user_versions as a read returns it. */
export interface UserRow extends UserState {
  userId: string
  /** When the row was last written, by the server's clock (ms). */
  updatedAt: number
  /** The transaction that wrote it, where the next page of a read starts. */
  changedXid: string
}

/** What one read of the tables found. */
export interface ReadResult {
  version: number
  logoutClock: number
  /** Whether per-user changes are notified (else every instance polls for them). */
  notifyUsers: boolean
  users: UserRow[]
  /** The rows are every row within one session lifetime, not only those changed since the last read. */
  full: boolean
  /** The server's clock minus this process's, in ms, for pruning by the server's clock. */
  clockOffset: number
}

interface Entry extends UserState {
  updatedAt: number
  /** The read that last changed this entry. */
  read: number
}

/**
 * The versions this instance holds in memory. Only reads of the tables change
 * them: a notification is a hint to read, never a value to apply, since any
 * role that can connect can send one.
 */
export class Versions implements Omit<VersionView, 'catchUp' | 'onChange'> {
  version = 0
  logoutClock = 0
  notifyUsers = true
  readonly #users = new Map<string, Entry>()
  readonly #lifetime: number
  #reads = 0
  #clockOffset = 0
  // The highest logout clock of the rows read since the last full read.
  #usersLogoutMax = 0

  constructor (lifetime: number) {
    this.#lifetime = lifetime
  }

  get userCount (): number {
    return this.#users.size
  }

  user (key: string): UserState | undefined {
    return this.#users.get(key)
  }

  mark (): number {
    return this.#reads
  }

  clockAt (time: number): number {
    // Every logout's clock is at least the server's time in microseconds then.
    return Math.floor((time + this.#clockOffset) * 1000)
  }

  changedSince (key: string, mark: number): boolean {
    return (this.#users.get(key)?.read ?? 0) > mark
  }

  /**
   * The table is the truth: its values replace what was known, lower ones too
   * (a restore). Reads are applied one at a time, in the order they started.
   */
  apply (result: ReadResult): VersionChange {
    const read = ++this.#reads
    const changed: string[] = []
    const previous = result.full ? new Map(this.#users) : this.#users
    if (result.full) {
      this.#users.clear()
      this.#usersLogoutMax = 0
    }
    for (const { userId, updatedAt, changedXid: _, ...state } of result.users) {
      if (state.logoutSeq > this.#usersLogoutMax) this.#usersLogoutMax = state.logoutSeq
      const known = previous.get(userId)
      // An unchanged row (a full read) keeps the read that last changed it.
      const same = known !== undefined && known.version === state.version && known.logoutSeq === state.logoutSeq && known.keep === state.keep
      this.#users.set(userId, { ...state, updatedAt, read: same ? known.read : read })
      if (!same) changed.push(userId)
    }
    const versionMoved = result.version !== this.version
    this.version = result.version
    // A login is stamped with the clock: it must be above every logout still in
    // the table, even when the clock's own row was re-created or restored lower.
    this.logoutClock = Math.max(result.logoutClock, this.#usersLogoutMax)
    this.notifyUsers = result.notifyUsers
    this.#clockOffset = result.clockOffset
    return { version: versionMoved, users: changed }
  }

  /**
   * Forgets users changed more than one session lifetime ago, by the server's
   * clock: no live session can have been authenticated before such a change.
   */
  prune (now = Date.now()): void {
    const oldest = now + this.#clockOffset - this.#lifetime
    for (const [key, { updatedAt }] of this.#users) {
      if (updatedAt <= oldest) this.#users.delete(key)
    }
  }
}
