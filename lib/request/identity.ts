import { InvalidIdentityError } from '../errors.js'

/** A user id as the app keeps it: a string, a number (postgres.js int4) or a bigint. */
export type Identity = string | number | bigint

/**
 * The one key a user id is known by: in the per-user map, the table and the
 * logs. 1061, 1061n and '1061' are the same user (postgres.js returns int8 as
 * a string), so a refresh that changes only the type changes nothing.
 * Anything else is refused: String() of an object would be '[object Object]',
 * one key shared by every user.
 */
export function identityKey (identity: unknown): string {
  if (typeof identity === 'string' && identity.length > 0 && identity.length <= 200) return identity
  if (typeof identity === 'number' && Number.isSafeInteger(identity)) return String(identity)
  if (typeof identity === 'bigint') return String(identity)
  throw new InvalidIdentityError(describe(identity))
}

function describe (value: unknown): string {
  if (typeof value === 'string') return `a string of ${value.length} characters`
  if (typeof value === 'number') return `the number ${value}`
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value === 'object' ? 'an object' : typeof value
}
