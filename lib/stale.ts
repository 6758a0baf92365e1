import { STAMP, USER_STAMP, type SessionFields } from './session-fields.js'
import type { UserVersion, UserVersions } from './user-versions.js'

/** Why a session needs a refresh; these words also appear in the logs. */
export type StaleReason = 'no-stamp' | 'version' | 'missing-field' | 'user-changed'

/** What the check says of a session: fresh (null), stale, or logged out by a per-user change. */
export type Verdict = StaleReason | 'user-logout' | null

export interface StaleRule {
  identityField: string
  requiredFields: readonly string[]
}

export function isLoggedIn (session: SessionFields, rule: StaleRule): boolean {
  return session.get(rule.identityField) != null
}

/**
 * The one place that decides whether a session is stale: a few property reads,
 * an integer compare and a map lookup, no I/O. A logged-out session is never stale;
 * one stamped before its user's last logout-required change must log in again.
 * The stamp differing from the version, in either direction, makes it stale,
 * so a restore that lowers the version refreshes sessions too.
 */
export function staleReason (session: SessionFields, rule: StaleRule, version: number, users: UserVersions): Verdict {
  const userId = session.get(rule.identityField)
  if (userId == null) return null
  const user = users.get(userId)
  // Checked first: no refresh may re-stamp a session that must log in again.
  if (loggedOutBy(session, user)) return 'user-logout'
  const stamp = session.get(STAMP)
  if (stamp === undefined) return 'no-stamp'
  if (stamp !== version) return 'version'
  for (const field of rule.requiredFields) {
    if (session.get(field) == null) return 'missing-field'
  }
  if (user !== undefined && session.get(USER_STAMP) !== user.version) return 'user-changed'
  return null
}

/** A session stamped before its user's last logout-required change must log in again. */
export function mustLogOut (session: SessionFields, userId: unknown, users: UserVersions): boolean {
  return loggedOutBy(session, users.get(userId))
}

function loggedOutBy (session: SessionFields, user: UserVersion | undefined): boolean {
  return user !== undefined && userStamp(session) < user.logoutVersion
}

/**
 * Whether the session was stamped by an instance that has already heard of a
 * change this one has not: it must catch up before judging, or the session would
 * be refreshed back and forth between the two.
 */
export function isAhead (session: SessionFields, rule: StaleRule, version: number, users: UserVersions): boolean {
  const stamp = session.get(STAMP)
  if (typeof stamp === 'number' && stamp > version) return true
  const user = users.get(session.get(rule.identityField))
  return user !== undefined && userStamp(session) > user.version
}

function userStamp (session: SessionFields): number {
  return (session.get(USER_STAMP) as number | undefined) ?? 0
}
