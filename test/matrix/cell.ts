// One cell of the "works with" matrix: two app instances on one database,
// sharing their sessions through one session stack: @fastify/session with a
// memory, connect-pg-simple or connect-redis store, or @fastify/secure-session
// (no store: the session is the encrypted cookie), each with or without
// @fastify/passport. test/session-stacks.test.ts runs the same scenarios in every cell.
import cookie from '@fastify/cookie'
import { Authenticator, Strategy } from '@fastify/passport'
import secureSession from '@fastify/secure-session'
import session from '@fastify/session'
import { RedisStore } from 'connect-redis'
import Fastify, { type FastifyInstance, type FastifyRequest, type LightMyRequestResponse } from 'fastify'
import sessionRefresh from '../../lib/index.js'
import { SECRET, logCapture, type LogLine } from '../helpers/app.js'
import { pgSessionStore } from '../helpers/pg-store.js'
import { createRedis } from '../helpers/redis.js'

export type Stack = 'memory' | 'pg' | 'redis' | 'secure'

export interface CellSpec {
  stack: Stack
  passport: boolean
}

/** The app's own user directory, which `refresh` reads: the ETL changes player ids, or removes users. */
export interface User { id: number, playerId: number, deleted: boolean }

interface Teardown { teardown (fn: () => unknown): void }

// One key for both instances: the same app, deployed twice.
const SECURE_KEY = Buffer.alloc(32, 7)

/** A local-style strategy with no dependency beyond @fastify/passport (which copies strategies: no private fields). */
function passwordStrategy (users: Map<number, User>): InstanceType<typeof Strategy> {
  return new (class extends Strategy {
    constructor () { super('password') }
    override authenticate (request: FastifyRequest): void {
      const { id, password } = (request.body ?? {}) as { id?: number, password?: string }
      const user = id === undefined ? undefined : users.get(id)
      if (user !== undefined && !user.deleted && password === 'secret') this.success({ id: user.id })
      else this.fail(401)
    }
  })()
}

export interface Cell {
  name: string
  spec: CellSpec
  apps: FastifyInstance[]
  users: Map<number, User>
  logs: LogLine[]
  /** The user ids `refresh` was called for, on any instance. */
  refreshCalls: number[]
  /** What every `refresh` waits for before it answers; resolved unless a test holds refreshes. */
  refreshesHeld: Promise<void>
  /** Logs in on one instance; `stamp: false` is a login path that skips stamp() (an OAuth callback, say). */
  login (instance: number, id: number, options?: { stamp?: boolean }): Promise<string>
  get (instance: number, cookie: string | undefined, url: string, headers?: Record<string, string>): Promise<LightMyRequestResponse>
  post (instance: number, cookie: string, url: string): Promise<LightMyRequestResponse>
}

/**
 * The session cookie of a response, as a `cookie` header value. Taken as sent
 * (still URL-encoded): secure-session's value can hold a ';' once decoded.
 */
export function cookieOf (response: LightMyRequestResponse): string {
  const sent = ([] as string[]).concat(response.headers['set-cookie'] ?? [])
  const found = sent.map((header) => header.split(';', 1)[0]!).find((pair) => /^(sessionId|session)=./.test(pair))
  if (found === undefined) throw new Error(`no session cookie in response ${response.statusCode}: ${response.body}`)
  return found
}

/**
 * Passport keeps what its serializer returns under `passport`: here an id in
 * the memory and Redis cells, an object in the others, as apps do both.
 */
function passportIdentity (stored: unknown): unknown {
  return typeof stored === 'object' && stored !== null ? (stored as { id?: unknown }).id : stored
}

// Long: the two instances of a cell are built the same way, in one loop, from its spec.
export async function buildCell (t: Teardown, spec: CellSpec, url: string): Promise<Cell> {
  const users = new Map<number, User>()
  const refreshCalls: number[] = []
  const { stream, logs } = logCapture()
  const serializeAsObject = spec.stack === 'pg' || spec.stack === 'secure'
  const store = spec.stack === 'memory'
    ? new session.MemoryStore()
    : spec.stack === 'pg'
      ? pgSessionStore(t, url)
      : spec.stack === 'redis'
        ? await (async () => { const redis = await createRedis(t); return new RedisStore({ client: redis.client, prefix: redis.prefix }) })()
        : null
  const apps: FastifyInstance[] = []
  // Filled in below; the refresh of either instance reads cell.refreshesHeld when it runs.
  const cell = { refreshesHeld: Promise.resolve() } as Cell
  for (let i = 0; i < 2; i++) {
    const app = Fastify({ logger: { level: 'debug', stream } })
    t.teardown(() => app.close())
    if (spec.stack === 'secure') {
      await app.register(secureSession, { key: SECURE_KEY, cookie: { path: '/', httpOnly: true } })
    } else {
      await app.register(cookie)
      await app.register(session, { secret: SECRET, cookie: { secure: false }, store: store as never })
    }
    const identify = spec.passport ? (s: { get (k: string): unknown }) => passportIdentity(s.get('passport')) : undefined
    await app.register(sessionRefresh, {
      connection: url,
      ...(identify === undefined ? {} : { identify }),
      refresh: async (s) => {
        const id = Number(identify === undefined ? s.get('id') : identify(s as never))
        refreshCalls.push(id)
        await cell.refreshesHeld
        const user = users.get(id)
        return user === undefined || user.deleted ? null : { playerId: user.playerId }
      }
    })
    const passport = spec.passport ? new Authenticator() : null
    if (passport !== null) {
      passport.use(passwordStrategy(users))
      passport.registerUserSerializer(async (user: { id: number }) => serializeAsObject ? { id: user.id } : user.id)
      passport.registerUserDeserializer(async (stored: unknown) => {
        const user = users.get(Number(passportIdentity(stored)))
        return user === undefined || user.deleted ? null : { id: user.id }
      })
      await app.register(passport.initialize())
      await app.register(passport.secureSession())
    }
    addRoutes(app, spec, passport)
    apps.push(app)
  }
  Object.assign(cell, {
    name: `${spec.stack === 'secure' ? '@fastify/secure-session' : `@fastify/session + ${spec.stack} store`}${spec.passport ? ' + @fastify/passport' : ''}`,
    spec,
    apps,
    users,
    logs,
    refreshCalls,
    async login (instance, id, { stamp = true } = {}) {
      const response = await apps[instance]!.inject({ method: 'POST', url: '/login', payload: { id, password: 'secret', stamp } })
      if (response.statusCode !== 200) throw new Error(`login failed: ${response.statusCode} ${response.body}`)
      return cookieOf(response)
    },
    get: (instance, cookie, url, headers = { accept: 'application/json' }) =>
      apps[instance]!.inject({ url, headers: { ...headers, ...(cookie === undefined ? {} : { cookie }) } }),
    post: (instance: number, cookie: string, url: string) => apps[instance]!.inject({ method: 'POST', url, headers: { cookie, accept: 'application/json' } })
  } satisfies Omit<Cell, 'refreshesHeld'>)
  return cell
}

interface CellSession {
  get (key: string): unknown
  set (key: string, value: unknown): void
  regenerate (): unknown
}

function addRoutes (app: FastifyInstance, spec: CellSpec, passport: InstanceType<typeof Authenticator> | null): void {
  const s = (request: FastifyRequest) => request.session as unknown as CellSession
  const identity = (request: FastifyRequest): unknown =>
    spec.passport ? passportIdentity(s(request).get('passport')) : s(request).get('id')

  if (passport === null) {
    app.post<{ Body: { id: number, stamp: boolean } }>('/login', async (request) => {
      await s(request).regenerate() // a new session id at login, like passport does
      s(request).set('id', request.body.id)
      s(request).set('playerId', request.body.id * 10)
      if (request.body.stamp) app.sessionRefresh.stamp(request)
      return { ok: true }
    })
  } else {
    app.post<{ Body: { id: number, stamp: boolean } }>('/login', { preValidation: passport.authenticate('password') }, async (request) => {
      // passport's logIn regenerated the session: the stamp goes in after it.
      s(request).set('playerId', request.body.id * 10)
      if (request.body.stamp) app.sessionRefresh.stamp(request)
      return { ok: true }
    })
  }
  const me = async (request: FastifyRequest) => ({
    id: identity(request) ?? null,
    playerId: s(request).get('playerId') ?? null,
    authenticated: passport === null ? identity(request) != null : request.isAuthenticated()
  })
  app.get('/me', { config: { loginRequired: true } }, me)
  app.get('/unchecked', { config: { sessionRefresh: false } }, me)
  app.get('/public', me)
  // A login page: a session that cannot stay logged in arrives here emptied.
  app.get('/login', async (request) => ({ ...await me(request), user: request.user ?? null }))
  app.post('/password', { config: { loginRequired: true } }, async (request) => ({
    version: await app.sessionRefresh.logoutUser(identity(request) as number, { keep: request })
  }))
}
