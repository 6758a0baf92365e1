import { MalformedVersionError } from './errors.js'

/** The one place that turns text from the table or a NOTIFY payload into a version. */
export function parseVersion (text: unknown): number | null {
  if (typeof text !== 'string' || !/^[0-9]{1,15}$/.test(text)) return null
  return Number(text)
}

export function parseVersionOrThrow (text: unknown): number {
  const version = parseVersion(text)
  if (version === null) throw new MalformedVersionError(JSON.stringify(text))
  return version
}
