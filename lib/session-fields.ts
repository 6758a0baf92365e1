import type { FastifyRequest } from 'fastify'

/** The session key that holds the global version a session was last refreshed at. */
export const STAMP = 'sessionVersion'
/** The session key that holds the user's own version at that time (0: no change known). */
export const USER_STAMP = 'sessionUserVersion'

/** The two versions a session is stamped with. */
export interface Stamp {
  version: number
  userVersion: number
}

/**
 * The session, seen as plain keys and values. The app types its own fields by
 * declaration merging; the plugin only knows their names at run time.
 */
export interface SessionFields {
  get (key: string): unknown
  set (key: string, value: unknown): void
}

/** `request.session` when @fastify/session has loaded one, or null (outside `cookie.path` it is `{}`, after destroy() null). */
export function sessionOf (request: FastifyRequest): SessionFields | null {
  const session = request.session as unknown as Partial<SessionFields> | null
  return typeof session?.get === 'function' ? session as SessionFields : null
}

export function writeStamp (session: SessionFields, stamp: Stamp): void {
  session.set(STAMP, stamp.version)
  session.set(USER_STAMP, stamp.userVersion)
}
