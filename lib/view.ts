/**
* The contract between the two halves of the plugin: what the request path
 * (lib/request) knows of the database side (lib/database): the versions held in memory and
 * a way to catch up. The database side implements it (lib/database/listener.ts);
 * the request path imports nothing else from there.
 */
export interface VersionView {
  /** The global session version, as the table last said. */
  readonly version: number
  /** The logout clock, as the table last said: a session authenticated now is stamped with it. */
  readonly logoutClock: number
  /** How many users changed within one session lifetime; 0 for most apps, which skips every lookup. */
  readonly userCount: number
  /**
   * The logout clock at a time of this process (ms since the epoch), or below
   * it: a session authenticated then was authenticated before every logout
   * with a higher clock. For logins that can only be dated.
   */
  clockAt (time: number): number
  /** What the table says of one user (by identity key), or undefined when they did not change within one session lifetime. */
  user (key: string): UserState | undefined
  /** A mark of the reads applied so far, for `changedSince`. */
  mark (): number
  /** Whether a read applied after `mark` changed what is known of this user. */
  changedSince (key: string, mark: number): boolean
  /** Re-reads the tables now; resolves false if that failed or took longer than `timeout` ms. */
  catchUp (timeout: number): Promise<boolean>
  /** Tells `listener` what each read changed: for the event streams, which tell open pages. */
  onChange (listener: (change: VersionChange) => void): void
}

/** What one read of the tables changed in memory. */
export interface VersionChange {
  /** The global version moved. */
  version: boolean
  /** The keys of the users whose row changed. */
  users: string[]
}

/** One user's row of session_user_versions, as the table last said. */
export interface UserState {
  /** The user's version: a session stamped with another one is refreshed. */
  readonly version: number
  /** The logout clock at the user's last logout (0: none): sessions authenticated before it must log in again. */
  readonly logoutSeq: number
  /** The hash of the key of the one session that logout keeps, or null. */
  readonly keep: string | null
  /**
   * 0.1.0's logout marker (the user's version at the last logout within one
   * session lifetime, else 0): a session stamped by 0.1.0 with a lower user
   * version must log in again. Needed for one session lifetime after an upgrade.
   */
  readonly legacyLogoutVersion: number
}
