import { createHash, randomBytes } from 'node:crypto'

/**
 * What the plugin keeps in each logged-in session, under one session field
 * (`stampField`). It travels with the session's data: in the store for
 * @fastify/session, in the encrypted cookie for @fastify/secure-session.
 */
export interface SessionStamp {
  /** The global version the session's data was read at. */
  v: number
  /** The user's own version at that time (0: no change known). */
  u: number
  /**
   * The logout clock when the session authenticated. Set once, at login (or
   * at the first request that carries a new identity), and never changed by a
   * refresh: a logout with a higher clock happened after it.
   */
  a: number
  /** A random key of this login: single flight for sessions without an id, and what a logout may keep. */
  k: string
  /** The identity the stamp was written for, as the session holds it. */
  i: string | number
  /** Earlier identity keys of this login (an ETL renumbered the user), most recent last. */
  h: string[]
}

/** How many earlier ids a session remembers; an ETL renumbers a user once per run. */
export const HELD_IDS = 8

/** The stamp in `value`, or null when it is missing or not one of ours (a session from before 0.2). */
export function asStamp (value: unknown): SessionStamp | null {
  if (typeof value !== 'object' || value === null) return null
  const { v, u, a, k, i, h } = value as Partial<SessionStamp>
  return typeof v === 'number' && typeof u === 'number' && typeof a === 'number' && typeof k === 'string' &&
    (typeof i === 'string' || typeof i === 'number') && Array.isArray(h)
    ? value as SessionStamp
    : null
}

/** The identity as a stamp keeps it: what JSON can carry, compared with ===. */
export function storedIdentity (identity: string | number | bigint): string | number {
  return typeof identity === 'bigint' ? String(identity) : identity
}

export function newLoginKey (): string {
  return randomBytes(16).toString('base64url')
}

/** What a logout keeps: the hash of a login key, so the table never holds the key itself. */
export function keepHash (loginKey: string): string {
  return createHash('sha256').update(loginKey).digest('base64url')
}
