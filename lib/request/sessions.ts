import type { FastifyInstance, FastifyRequest } from 'fastify'
import { NoSessionPluginError } from '../errors.js'

/**
 * The session, seen as plain keys and values. The app types its own fields by
 * declaration merging; the plugin only knows their names at run time.
 */
export interface SessionFields {
  get (key: string): unknown
  set (key: string, value: unknown): void
}

/** What the plugin needs from a session plugin; one adapter for each that it supports. */
export interface SessionAdapter {
  readonly plugin: '@fastify/session' | '@fastify/secure-session'
  /** The request's session, or null when there is none (outside `cookie.path`, after destroy()). */
  sessionOf (request: FastifyRequest): SessionFields | null
  /** Ends the session for good: the request goes on with an empty one, and nothing of the old one is readable. */
  logOut (request: FastifyRequest): Promise<void>
  /** Whether the session still exists where it is kept: another request may have destroyed it meanwhile. */
  stillStored (request: FastifyRequest, session: SessionFields): Promise<boolean>
}

/** `request.session` when it is a loaded session, else null. */
function sessionOf (request: FastifyRequest): SessionFields | null {
  const session = (request as { session?: unknown }).session as Partial<SessionFields> | null | undefined
  return typeof session?.get === 'function' ? session as SessionFields : null
}

interface StoredSession extends SessionFields {
  sessionId: string
  regenerate (): Promise<void>
}

interface SessionStore {
  get (id: string, callback: (err: unknown, session?: unknown) => void): void
}

/** @fastify/session: a session id in the cookie, the data in a store. */
const fastifySession: SessionAdapter = {
  plugin: '@fastify/session',
  sessionOf,
  async logOut (request) {
    // A new id, an empty session, and the old id destroyed in the store (11.1.3 and up).
    await (request.session as unknown as StoredSession).regenerate()
  },
  stillStored (request, session) {
    const store = (request as unknown as { sessionStore: SessionStore }).sessionStore
    return new Promise((resolve, reject) => {
      store.get((session as StoredSession).sessionId, (err, stored) => {
        // Stores answer a missing session with nothing, or with ENOENT.
        if (err != null && (err as { code?: unknown }).code !== 'ENOENT') reject(err)
        else resolve(err == null && stored != null)
      })
    })
  }
}

interface CookieSession extends SessionFields {
  regenerate (keep?: string[]): void
}

/** @fastify/secure-session: the whole session in an encrypted cookie, no store. */
const secureSession: SessionAdapter = {
  plugin: '@fastify/secure-session',
  sessionOf,
  async logOut (request) {
    // Clears every field in place; the cookie is rewritten empty when the reply is sent.
    (request.session as unknown as CookieSession).regenerate()
  },
  // Nothing is stored: no other request can destroy this copy.
  stillStored: async () => true
}

/** The session plugin registered before this one; registration fails with a coded error when there is none. */
export function detectSessionPlugin (fastify: FastifyInstance): SessionAdapter {
  if (fastify.hasRequestDecorator('sessionStore')) return fastifySession
  if (fastify.hasDecorator('decodeSecureSession')) return secureSession
  throw new NoSessionPluginError()
}
