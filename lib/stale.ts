import { STAMP, type SessionFields } from './session-fields.js'

/** Why a session needs a refresh; these words also appear in the logs. */
export type StaleReason = 'no-stamp' | 'version' | 'missing-field'

export interface StaleRule {
  identityField: string
  requiredFields: readonly string[]
}

export function isLoggedIn (session: SessionFields, rule: StaleRule): boolean {
  return session.get(rule.identityField) != null
}

/**
 * The one place that decides whether a session is stale: a few property reads
 * and one integer compare, no I/O. A logged-out session is never stale.
 * The stamp differing from the version, in either direction, makes it stale,
 * so a restore that lowers the version refreshes sessions too.
 */
export function staleReason (session: SessionFields, rule: StaleRule, version: number): StaleReason | null {
  if (!isLoggedIn(session, rule)) return null
  const stamp = session.get(STAMP)
  if (stamp === undefined) return 'no-stamp'
  if (stamp !== version) return 'version'
  for (const field of rule.requiredFields) {
    if (session.get(field) == null) return 'missing-field'
  }
  return null
}
