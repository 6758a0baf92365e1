import { MalformedVersionError } from '../errors.js'

/**
 * The one place that turns text from the table into a version: digits only,
 * and a safe JavaScript integer (the trigger keeps values at or below 2^53 - 1).
 */
export function parseVersion (text: unknown): number | null {
  if (typeof text !== 'string' || !/^[0-9]{1,16}$/.test(text)) return null
  const version = Number(text)
  return Number.isSafeInteger(version) ? version : null
}

export function parseVersionOrThrow (text: unknown): number {
  const version = parseVersion(text)
  if (version === null) throw new MalformedVersionError(JSON.stringify(text))
  return version
}
