import type { SessionFields } from './sessions.js'
import { keepHash, type SessionStamp } from './stamp.js'
import type { UserState, VersionView } from '../view.js'

/** Why a session needs a refresh; these words also appear in the logs. */
export type StaleReason = 'no-stamp' | 'version' | 'missing-field' | 'user-changed'

/** The global version of a stamp written by a login that did not read the data yet: it is refreshed first. */
export const UNREAD = -1

/**
 * Whether a logout ends this session: a logout of any id the session has held
 * since it authenticated, on a higher logout clock than the session's. A logout
 * that keeps this session (a password change it made) does not; `kept` is then
 * that logout's clock, which the session must be re-stamped with.
 */
export function logoutOf (stamp: SessionStamp, key: string, view: VersionView): { out: true } | { out: false, kept: number } | null {
  // Most apps never change a single user: no lookup at all.
  if (view.userCount === 0) return null
  let kept = 0
  for (let i = -1; i < stamp.h.length; i++) {
    const user = view.user(i < 0 ? key : stamp.h[i]!)
    if (user === undefined || user.logoutSeq <= stamp.a) continue
    if (!keeps(user, stamp)) return { out: true }
    kept = Math.max(kept, user.logoutSeq)
  }
  return kept === 0 ? null : { out: false, kept }
}

function keeps (user: UserState, stamp: SessionStamp): boolean {
  return user.keep !== null && user.keep === keepHash(stamp.k)
}

/**
 * The one place that decides whether a session's data is stale: a few property
 * reads, integer compares and at most one map lookup, no I/O. *Differs*, not
 * *is lower*: after a restore the table can hold a lower version than a stamp.
 */
export function staleReason (session: SessionFields, stamp: SessionStamp, key: string, requiredFields: readonly string[], view: VersionView): StaleReason | null {
  if (stamp.v === UNREAD) return 'no-stamp'
  if (stamp.v !== view.version) return 'version'
  for (const field of requiredFields) {
    if (session.get(field) == null) return 'missing-field'
  }
  if (view.userCount === 0) return null
  const user = view.user(key)
  return user !== undefined && stamp.u !== user.version ? 'user-changed' : null
}

/**
 * Whether the session was stamped by an instance that has already read a
 * change this one has not: it must catch up before judging, or the session
 * would be refreshed back and forth between the two.
 */
export function isAhead (stamp: SessionStamp, key: string, view: VersionView): boolean {
  if (stamp.v > view.version) return true
  const user = view.userCount === 0 ? undefined : view.user(key)
  return user !== undefined && stamp.u > user.version
}
