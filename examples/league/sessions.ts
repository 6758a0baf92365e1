// Where the league keeps its sessions: in PostgreSQL through @fastify/session
// and connect-pg-simple (the default), or in an encrypted cookie through
// @fastify/secure-session (`SESSION=secure npm start`), with no store at all.
// The plugin works the same on both; only starting and ending a session differ.
import { createHash } from 'node:crypto'
import fastifyCookie from '@fastify/cookie'
import fastifySecureSession from '@fastify/secure-session'
import fastifySession, { type SessionStore } from '@fastify/session'
import connectPgSimple from 'connect-pg-simple'
import type { FastifyInstance, FastifyRequest } from 'fastify'

export type SessionKind = 'store' | 'secure'

// connect-pg-simple is written for express-session and only reads `.Store` from
// the module it is given; @fastify/session exports a compatible one.
const PgStore = connectPgSimple(fastifySession as unknown as Parameters<typeof connectPgSimple>[0])

export const SESSION_SECONDS = 7 * 24 * 60 * 60
const COOKIE = { secure: 'auto' as const, httpOnly: true, sameSite: 'lax' as const, path: '/' }

export async function registerSessions (app: FastifyInstance, kind: SessionKind, databaseUrl: string, secret: string): Promise<void> {
  if (kind === 'secure') {
    // A 32-byte key from the secret: every process that shares the sessions derives the same one.
    await app.register(fastifySecureSession, {
      key: createHash('sha256').update(secret).digest(),
      cookieName: 'league.sid',
      expiry: SESSION_SECONDS,
      cookie: { ...COOKIE, maxAge: SESSION_SECONDS }
    })
    return
  }
  const store = new PgStore({
    conString: databaseUrl,
    tableName: 'session',
    ttl: SESSION_SECONDS,
    errorLog: (...args: unknown[]) => app.log.error({ args }, 'Session store error')
  })
  app.addHook('onClose', () => store.close())
  await app.register(fastifyCookie)
  await app.register(fastifySession, {
    secret,
    cookieName: 'league.sid',
    store: store as unknown as SessionStore,
    // Anonymous visitors get no session row; only a login creates one.
    saveUninitialized: false,
    cookie: { ...COOKIE, maxAge: SESSION_SECONDS * 1000 }
  })
}

interface AnySession {
  regenerate (): unknown
  destroy?: () => Promise<void>
  delete?: () => void
}

/** A new session at login, so an id (or cookie) planted before it is worthless after it. */
export async function startSession (request: FastifyRequest): Promise<void> {
  await (request.session as unknown as AnySession).regenerate()
}

/** The user logs out: the stored session is destroyed, or the cookie cleared. */
export async function endSession (request: FastifyRequest): Promise<void> {
  const session = request.session as unknown as AnySession
  if (session.destroy !== undefined) await session.destroy()
  else session.delete!()
}
