import type { FastifyRequest } from 'fastify'

/** The session key that holds the version a session was last refreshed at. */
export const STAMP = 'sessionVersion'

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
