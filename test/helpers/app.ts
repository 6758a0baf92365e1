import { Writable } from 'node:stream'
import cookie from '@fastify/cookie'
import session, { type FastifySessionObject } from '@fastify/session'
import type { Sql } from 'postgres'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import sessionRefresh, { bumpSessionVersion, type SessionRefreshOptions } from '../../lib/index.js'
import { eventually } from './database.js'

declare module 'fastify' {
  interface Session {
    id?: number | null
    email?: string
    playerId?: number
  }
}

export const SECRET = 'a test secret that is at least 32 characters long'

export interface LogLine { level: number, msg: string, [key: string]: unknown }

export interface TestApp {
  app: FastifyInstance
  logs: LogLine[]
  /** How many times the app's refresh ran, and with which user ids. */
  refreshCalls: unknown[]
}

export interface BuildOptions {
  url: string
  refresh?: SessionRefreshOptions['refresh']
  plugin?: Partial<SessionRefreshOptions>
  sessionOptions?: Record<string, unknown>
}

interface Teardown { teardown (fn: () => unknown): void }

/** A stream for pino that keeps every log line, parsed. */
export function logCapture (): { stream: Writable, logs: LogLine[] } {
  const logs: LogLine[] = []
  const stream = new Writable({
    write (chunk, _encoding, callback) {
      for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line) as LogLine)
      callback()
    }
  })
  return { stream, logs }
}

/** A Fastify logger whose lines land in `logs`. */
export function testLogger (): { log: FastifyBaseLogger, logs: LogLine[] } {
  const { stream, logs } = logCapture()
  return { log: Fastify({ logger: { level: 'debug', stream } }).log, logs }
}

/** A Fastify app with @fastify/session, the plugin, and a few routes; closed at teardown. */
export async function buildApp (t: Teardown, options: BuildOptions): Promise<TestApp> {
  const { stream, logs } = logCapture()
  const app = Fastify({ logger: { level: 'debug', stream } })
  const refreshCalls: unknown[] = []
  await app.register(cookie)
  await app.register(session, { secret: SECRET, cookie: { secure: false }, ...options.sessionOptions })
  await app.register(sessionRefresh, {
    connection: options.url,
    heartbeatInterval: 60_000,
    refresh: async (s, request) => {
      refreshCalls.push(s.get('id'))
      if (options.refresh) return options.refresh(s, request)
      return { email: `user${String(s.get('id'))}@example.com`, playerId: Number(s.get('id')) * 100 }
    },
    ...options.plugin
  })
  t.teardown(() => app.close())

  // `stamp: false` logs in without a stamp; `sessionVersion` and `userVersion` set the stamp as another instance might have.
  app.post<{ Body: { id: number | string, email?: string, playerId?: number | null, stamp?: boolean, sessionVersion?: number, userVersion?: number } }>('/login', async (request) => {
    const { body } = request
    request.session.set('id', body.id as number)
    request.session.set('email', body.email ?? `user${body.id}@example.com`)
    request.session.set('playerId', body.playerId === undefined ? Number(body.id) : body.playerId ?? undefined)
    if (body.stamp !== false) app.sessionRefresh.stamp(request)
    const stamp = request.session.get('sessionRefresh')
    if (stamp !== undefined && body.sessionVersion !== undefined) request.session.set('sessionRefresh', { ...stamp, v: body.sessionVersion })
    if (stamp !== undefined && body.userVersion !== undefined) request.session.set('sessionRefresh', { ...request.session.get('sessionRefresh')!, u: body.userVersion })
    return { ok: true }
  })
  const fields = (request: { session: FastifySessionObject }) => ({
    id: request.session.get('id') ?? null,
    email: request.session.get('email') ?? null,
    playerId: request.session.get('playerId') ?? null,
    sessionVersion: request.session.get('sessionRefresh')?.v ?? null
  })
  app.get('/me', { config: { loginRequired: true } }, async (request) => fields(request))
  app.get('/public', async (request) => fields(request))
  app.get('/unchecked', { config: { sessionRefresh: false } }, async (request) => fields(request))
  return { app, logs, refreshCalls }
}

/** The session cookie from a response, as a `cookie` header value. */
export function sessionCookie (response: LightMyRequestResponse): string {
  const found = response.cookies.find((c) => c.name === 'sessionId')
  if (!found) throw new Error(`no session cookie in response ${response.statusCode}: ${response.body}`)
  return `sessionId=${found.value}`
}

/** Logs user `id` in and returns the session cookie. */
export async function login (app: FastifyInstance, id: number, extra: Record<string, unknown> = {}): Promise<string> {
  const response = await app.inject({ method: 'POST', url: '/login', payload: { id, ...extra } })
  if (response.statusCode !== 200) throw new Error(`login failed: ${response.statusCode} ${response.body}`)
  return sessionCookie(response)
}

export const API = { accept: 'application/json' }
export const PAGE = { accept: 'text/html,application/xhtml+xml' }

/** Bumps the version from `sql`, and waits until every app holds the new one. */
export async function bumpAndWait (sql: Sql, ...apps: Array<{ app: FastifyInstance }>): Promise<number> {
  const version = await bumpSessionVersion(sql)
  for (const { app } of apps) await eventually(`version ${version}`, () => app.sessionRefresh.version === version)
  return version
}

/** A promise to hold something (a refresh, a handler) until open() is called. */
export function gate (): { wait: Promise<void>, open: () => void } {
  let open = (): void => {}
  const wait = new Promise<void>((resolve) => { open = resolve })
  return { wait, open }
}

/** GET /me as an API client, with this session cookie. */
export function getMe (app: FastifyInstance, cookie: string): Promise<LightMyRequestResponse> {
  return app.inject({ url: '/me', headers: { cookie, ...API } })
}

/**
 * A `refresh` that fails, as a users database that is down: for user `id` it
 * first waits until `failing.open()` (`started` opens once it is waiting).
 */
export function failingRefresh (id: number): { started: ReturnType<typeof gate>, failing: ReturnType<typeof gate>, refresh: NonNullable<BuildOptions['refresh']> } {
  const started = gate()
  const failing = gate()
  const refresh: NonNullable<BuildOptions['refresh']> = async (session) => {
    if (session.get('id') === id) {
      started.open()
      await failing.wait
    }
    throw new Error('the users database is down')
  }
  return { started, failing, refresh }
}
