// One app server of the bench, in its own process: `tsx bench/workers/server.ts <kind> <database url> [events]`.
//   A  bare @fastify/session, no version check
//   B  fastify-session-refresh: the in-memory version check
//   C  pull: SELECT the session_version row on every request (the seed's first design)
//   D  pull: re-read the user's row on every request (Django, Laravel, Devise)
// Every kind has the same cookie, session store, login route and trivial JSON route.
// `events` (B only) also registers the plugin's event stream for open pages.
// The parent drives it through IPC commands (bench/shared/child.ts).
import cookie from '@fastify/cookie'
import session, { MemoryStore } from '@fastify/session'
import Fastify, { type FastifyRequest, type Session } from 'fastify'
import postgres from 'postgres'
import sessionRefresh, { readSessionVersion } from '../../lib/index.js'
import { heapAfterGc, sendEvent, serveCommands } from '../shared/child.js'
import {
  EVENTS_PATH, MAX_CONCURRENT_REFRESHES, MAX_EVENT_STREAMS, POOL_SIZE, SERVER_KINDS, type Counters, type ServerKind
} from '../shared/server-kinds.js'

declare module 'fastify' {
  interface Session {
    id?: number | null
    name?: string
    /** Server C's own stamp: the version it read at the last refresh. */
    sessionVersion?: number
  }
}

const [kindArg, url, extra] = process.argv.slice(2)
if (!url || !SERVER_KINDS.includes(kindArg as ServerKind) || (extra !== undefined && (extra !== 'events' || kindArg !== 'B'))) {
  throw new Error('usage: workers/server.ts <A|B|C|D> <database url> [events (with B)]')
}
const kind = kindArg as ServerKind
const events = extra === 'events'

const counters = {
  hookQueries: 0, pluginQueries: 0, pluginHeartbeats: 0, pluginReads: 0,
  refreshCalls: 0, refreshPeak: 0, refreshRunning: 0, refreshMs: 0, refreshMaxMs: 0
}
const pool = postgres(url, { max: POOL_SIZE, onnotice: () => {} })
const sessions = new Map<string, Session>()

const app = Fastify({ logger: false })
await app.register(cookie)
await app.register(session, {
  secret: 'a bench secret that is at least 32 characters long',
  cookie: { secure: false },
  store: new MemoryStore(sessions)
})

interface UserRow { id: number, name: string }

/** Reads the user's row: B's refresh and D's per-request check. */
async function readUser (id: unknown): Promise<UserRow | undefined> {
  const [row] = await pool<UserRow[]>`select id, name from bench_users where id = ${Number(id)}`
  return row
}

if (kind === 'B') {
  const target = new URL(url)
  await app.register(sessionRefresh, {
    // Options rather than the URL, so the `debug` callback can count every
    // query the plugin's own connections send.
    connection: {
      host: target.hostname,
      port: Number(target.port),
      database: target.pathname.slice(1),
      username: decodeURIComponent(target.username),
      password: decodeURIComponent(target.password),
      debug: (_connection: number, query: string) => {
        counters.pluginQueries++
        if (query.includes('pg_notify')) counters.pluginHeartbeats++
        else if (/system_settings|pg_notification_queue_usage|pg_stat_activity|session_user_versions/.test(query)) counters.pluginReads++
      }
    },
    maxConcurrentRefreshes: MAX_CONCURRENT_REFRESHES,
    ...(events ? { events: EVENTS_PATH, maxEventStreams: MAX_EVENT_STREAMS } : {}),
    refresh: async (s) => {
      counters.refreshCalls++
      counters.refreshRunning++
      counters.refreshPeak = Math.max(counters.refreshPeak, counters.refreshRunning)
      const started = performance.now()
      try {
        const user = await readUser(s.get('id'))
        return user ? { name: user.name } : null
      } finally {
        counters.refreshRunning--
        const ms = performance.now() - started
        counters.refreshMs += ms
        counters.refreshMaxMs = Math.max(counters.refreshMaxMs, ms)
      }
    }
  })
}

if (kind === 'C') {
  app.addHook('onRequest', async (request) => {
    if (request.session.get('id') == null) return
    counters.hookQueries++
    const version = await readSessionVersion(pool)
    if (request.session.get('sessionVersion') === version) return
    counters.hookQueries++
    const user = await readUser(request.session.get('id'))
    setIfChanged(request, 'name', user?.name)
    request.session.set('sessionVersion', version)
  })
}

if (kind === 'D') {
  app.addHook('onRequest', async (request) => {
    if (request.session.get('id') == null) return
    counters.hookQueries++
    const user = await readUser(request.session.get('id'))
    setIfChanged(request, 'name', user?.name)
  })
}

function cpuMicros (): number {
  const { user, system } = process.cpuUsage()
  return user + system
}

function setIfChanged (request: FastifyRequest, key: 'name', value: string | undefined): void {
  if (request.session.get(key) !== value) request.session.set(key, value)
}

app.post<{ Body: { id: number } }>('/login', async (request) => {
  request.session.set('id', request.body.id)
  request.session.set('name', `user ${request.body.id}`)
  if (kind === 'B') app.sessionRefresh.stamp(request)
  if (kind === 'C') request.session.set('sessionVersion', await readSessionVersion(pool))
  return { ok: true }
})

// The route under load: as trivial as a JSON route gets.
app.get('/hello', async () => ({ hello: 'world' }))

// What the session holds, so the storm can check every session was refreshed.
app.get('/me', async (request) => ({
  id: request.session.get('id') ?? null,
  name: request.session.get('name') ?? null,
  sessionVersion: request.session.get('sessionRefresh')?.v ?? request.session.get('sessionVersion') ?? null
}))

await app.listen({ host: '127.0.0.1', port: 0 })
const address = app.server.address()
if (address === null || typeof address === 'string') throw new Error('no TCP address')

serveCommands({
  counters: (): Counters => ({
    ...counters,
    version: kind === 'B' ? app.sessionRefresh.version : null,
    pluginRefreshes: kind === 'B' ? app.sessionRefresh.status().refreshes : null,
    userVersions: kind === 'B' ? app.sessionRefresh.status().userVersions : null,
    sessions: sessions.size,
    cpuMicros: cpuMicros()
  }),
  resetPeak: () => {
    counters.refreshPeak = counters.refreshRunning
    counters.refreshMaxMs = 0
  },
  heap: () => heapAfterGc(),
  // A running app's pool is already connected; open every connection before measuring.
  warmPool: async () => { await Promise.all(Array.from({ length: POOL_SIZE }, () => pool`select pg_sleep(0.01)`)) },
  clearSessions: () => { sessions.clear() },
  // Open TCP connections: with `events`, the open streams once other clients have gone.
  connections: () => new Promise<number>((resolve, reject) => { app.server.getConnections((err, n) => { if (err) reject(err); else resolve(n) }) })
}, async () => {
  await app.close()
  await pool.end({ timeout: 1 })
})

sendEvent({ event: 'ready', port: address.port, pid: process.pid })
