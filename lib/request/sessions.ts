import { createHash } from 'node:crypto'
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
  /**
   * Saves the session at the end of this request only if it is still stored
   * then: a refresh marks it modified, and a logout that another request made
   * while this one's handler ran must not be undone by that save.
   */
  saveOnlyIfStored (request: FastifyRequest, session: SessionFields): void
  /**
   * For a logged-in session that has no stamp yet (a login that skipped
   * stamp()): a login key that every copy of it shares, so overlapping
   * requests share one refresh and one stream limit, and when it logged in, in
   * this process's milliseconds, or null when that cannot be told (then: now).
   */
  firstLogin (session: SessionFields, key: string): { loginKey: string, at: number | null }
}

/** How much earlier than secure-session's date of a write its login is taken to be. */
export const CLOCK_MARGIN_MS = 5000

/** A login key derived from what identifies the session, never the secret itself. */
function derivedKey (...parts: string[]): string {
  return createHash('sha256').update(parts.join('\u0000')).digest('base64url').slice(0, 22)
}

/** `request.session` when it is a loaded session, else null. */
function sessionOf (request: FastifyRequest): SessionFields | null {
  const session = (request as { session?: unknown }).session as Partial<SessionFields> | null | undefined
  return typeof session?.get === 'function' ? session as SessionFields : null
}

interface StoredSession extends SessionFields {
  sessionId: string
  regenerate (): Promise<void>
  save (): Promise<void>
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
  stillStored,
  saveOnlyIfStored (request, session) {
    const save = (session as StoredSession).save
    // @fastify/session saves a modified session in its onSend hook, after the
    // handler, with a callback. Not enumerable: a memory store keeps the object.
    Object.defineProperty(session, 'save', {
      configurable: true,
      writable: true,
      value: function saveIfStillStored (this: StoredSession, callback?: (err?: unknown) => void): Promise<void> | undefined {
        const saving = stillStored(request, this).then((present) => {
          if (present) return save.call(this)
          request.log.info('Not saving a refreshed session that was logged out meanwhile')
        })
        if (callback === undefined) return saving
        saving.then(() => callback(), callback)
      }
    })
  },
  // The session id is the same in every overlapping request; the key is derived, so the id never lands in a stamp.
  firstLogin: (session, key) => ({ loginKey: derivedKey('session', (session as StoredSession).sessionId, key), at: null })
}

function stillStored (request: FastifyRequest, session: SessionFields): Promise<boolean> {
  const store = (request as unknown as { sessionStore: SessionStore }).sessionStore
  return new Promise((resolve, reject) => {
    store.get((session as StoredSession).sessionId, (err, stored) => {
      // Stores answer a missing session with nothing, or with ENOENT.
      if (err != null && (err as { code?: unknown }).code !== 'ENOENT') reject(err)
      else resolve(err == null && stored != null)
    })
  })
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
  stillStored: async () => true,
  saveOnlyIfStored: () => {},
  // The client keeps every cookie it was sent, the unstamped one from the login
  // too, and may send it again after a logout: it must count as the login it
  // was, not as a new one. secure-session dates each write of the session (__ts,
  // in seconds, rounded), by the clock of the instance that wrote it: the login
  // is taken as CLOCK_MARGIN_MS earlier, for the rounding and for app servers
  // whose clocks disagree. It sets __ts on every session it makes or decodes;
  // the replay scenario of test/session-stacks.test.ts fails if it ever stops.
  firstLogin (session, key) {
    const written = session.get('__ts') as number
    return { loginKey: derivedKey('secure', String(written), key), at: written * 1000 - CLOCK_MARGIN_MS }
  }
}

/** The session plugin registered before this one; registration fails with a coded error when there is none. */
export function detectSessionPlugin (fastify: FastifyInstance): SessionAdapter {
  if (fastify.hasRequestDecorator('sessionStore')) return fastifySession
  if (fastify.hasDecorator('decodeSecureSession')) return secureSession
  throw new NoSessionPluginError()
}
