// N listeners in one process: `tsx bench/workers/propagation.ts <database url> <n> <plugin|bare>`.
//   plugin  N Fastify apps, each with @fastify/session and its own fastify-session-refresh
//           (so its own LISTEN connection and query connection)
//   bare    N postgres.js instances that only LISTEN: the floor the plugin is compared with
// When every listener holds version v it sends { event: 'propagated', version: v, at },
// `at` being process.hrtime.bigint(), which is CLOCK_MONOTONIC and so comparable
// with the parent's clock on the same machine.
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import postgres, { type Sql } from 'postgres'
import sessionRefresh from '../../lib/index.js'
import { sendEvent, serveCommands } from '../shared/child.js'

const [url, countArg, mode] = process.argv.slice(2)
const count = Number(countArg)
if (!url || !Number.isSafeInteger(count) || count < 1 || (mode !== 'plugin' && mode !== 'bare')) {
  throw new Error('usage: workers/propagation.ts <database url> <n> <plugin|bare>')
}

// How many listeners hold each version; bounded, old versions are dropped.
const holding = new Map<number, number>()
const held: Array<() => number> = []

function onVersion (version: number): void {
  const at = process.hrtime.bigint()
  const n = (holding.get(version) ?? 0) + 1
  holding.set(version, n)
  if (n === count) {
    holding.delete(version)
    // Checked, not assumed: every listener must really hold it. The plugin logs
    // just before it assigns, so check once the current callback has returned.
    queueMicrotask(() => {
      const all = held.every((read) => read() === version)
      sendEvent({ event: 'propagated', version, at: at.toString(), verified: all })
    })
  }
  if (holding.size > 1000) holding.clear()
}

/**
 * A logger that only watches for the listener's "Session version is now %d" line,
 * which it writes at the moment it changes the in-memory version. Watching the
 * log costs nothing, where a tight poll on `.version` would take a core from
 * PostgreSQL on this 2-core machine.
 */
function versionLogger (): FastifyBaseLogger {
  const noop = (): void => {}
  const logger = {
    level: 'info',
    fatal: noop,
    error: noop,
    warn: noop,
    debug: noop,
    trace: noop,
    silent: noop,
    info (obj: unknown, msg?: string) {
      const to = (obj as { to?: unknown } | null)?.to
      if (typeof to === 'number' && typeof msg === 'string' && msg.startsWith('Session version is now')) onVersion(to)
    },
    child: () => logger
  }
  return logger as unknown as FastifyBaseLogger
}

const apps: FastifyInstance[] = []
const sqls: Sql[] = []

async function startPluginInstance (): Promise<void> {
  const app = Fastify({ loggerInstance: versionLogger() })
  await app.register(cookie)
  await app.register(session, { secret: 'a bench secret that is at least 32 characters long', cookie: { secure: false } })
  await app.register(sessionRefresh, { connection: url!, refresh: () => ({}) })
  await app.ready()
  apps.push(app)
  held.push(() => app.sessionRefresh.version)
}

async function startBareListener (): Promise<void> {
  const sql = postgres(url!, { max: 1, onnotice: () => {} })
  let version = -1
  // The plugin's channel: 'version:<n>' on a bump; 'users' and 'heartbeat:…' are not versions.
  await sql.listen('session_refresh', (payload) => {
    if (!payload.startsWith('version:')) return
    version = Number(payload.slice('version:'.length))
    onVersion(version)
  })
  sqls.push(sql)
  held.push(() => version)
}

// A few at a time: 64 instances opening 128 connections at once would queue on PostgreSQL's accept loop anyway.
for (let started = 0; started < count; started += 8) {
  const batch = Math.min(8, count - started)
  await Promise.all(Array.from({ length: batch }, () => mode === 'plugin' ? startPluginInstance() : startBareListener()))
}

serveCommands({
  versions: () => held.map((read) => read())
}, async () => {
  await Promise.all([...apps.map((app) => app.close()), ...sqls.map((sql) => sql.end({ timeout: 1 }))])
})

sendEvent({ event: 'ready', pid: process.pid })
