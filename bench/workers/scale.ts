// One listener process of the scale bench (bench/scenarios/scale.ts), driven over IPC.
// (Long: every command the bench sends a worker is here, so that one file says what
// a worker does; each is a short function.)
//
// `start` registers `count` plugin instances, each a Fastify app with
// @fastify/cookie, @fastify/session and the plugin loaded from `plugin` (a path,
// so that an older checkout can be measured with the same bench). Only the
// plugin's public API is used: `app.sessionRefresh.version` and `.status()`.
//
// Propagation: `arm(round)` is sent just before a bump. The worker notes the
// version each instance holds, then checks `.version` of every instance that
// still holds that one, every millisecond and also right after any log line an
// instance writes (today the plugin logs each change of version; a plugin that
// does not is still caught by the poll). Nothing is assumed about how versions
// are numbered, only that a bump changes them. When the last instance has
// changed it sends { event: 'propagated', round, version, at }: `version` is the
// one they all hold (null if they differ), `at` is process.hrtime.bigint(),
// CLOCK_MONOTONIC, the same clock as the bumping process's.
//
// Bare listeners (`startBare`, `stopBare`): plain postgres.js instances that only
// LISTEN on the plugin's channel, the floor the plugin is compared with in the same
// rounds. Armed with the instances, they report { event: 'propagated', kind: 'bare' }
// when the last of them has heard the bump's notification.
//
// Per-user changes (`armUsers`, `usersReport`): the bench makes changes of distinct
// users that never changed before, one after another on one connection, so they
// commit in the order sent and any snapshot holds a prefix of them. An instance
// holds the k-th change exactly when `status().userVersions` (the users it tracks)
// is at least base + k. Counts are checked right after any bytes arrive on one of
// the instance's sockets (the reads' answers, the notifications), through a
// `socket` factory in the `connection` options, and every 50 ms as a backstop.
import net from 'node:net'
import { pathToFileURL } from 'node:url'
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyPluginAsync } from 'fastify'
import postgres, { type Sql } from 'postgres'
import { openFileLimit, sendEvent, serveCommands } from '../shared/child.js'

/** The channels a bare listener listens on: today's plugin's, and 0.1's (which notified the bare version). */
const BARE_CHANNELS = ['session_refresh', 'session_version']

/** The part of the plugin's decorator the bench reads. */
interface PublicApi { readonly version: number, status (): Record<string, unknown> }

export interface StartArgs {
  url: string
  count: number
  /** Absolute path of the plugin's entry (lib/index.ts). */
  plugin: string
  /** Plugin options besides `connection` and `refresh`. */
  options: Record<string, unknown>
  /** Instances registering at once in this process. */
  concurrency: number
  /** Tries per instance before giving up. */
  attempts: number
  /** Give each instance an app-level postgres.js pool of one connection, with this application_name, as the plugin's `sql` option. */
  sql?: { applicationName: string }
}

export interface StartResult { started: number, retries: number, ms: number, errors: string[] }

export interface WorkerStatus {
  instances: number
  listening: number
  heartbeatMisses: number
  reconnects: number
  minVersion: number
  maxVersion: number
  rss: number
  /** The fewest and most users an instance tracks (status().userVersions); -1 when the plugin does not say. */
  minUsers: number
  maxUsers: number
  /** Instances that say per-user changes reach them by polling (status().userChanges === 'poll'). */
  polling: number
}

const apps: FastifyInstance[] = []
const apis: PublicApi[] = []
const appSqls: Sql[] = []
let closing = false

// ---------------------------------------------------------------- propagation watch

let round: number | null = null
/** Instance index -> the version it held when armed, for those that still hold it. */
const pending = new Map<number, number>()
let poll: NodeJS.Timeout | undefined

function check (index: number): void {
  checkUsers(index)
  if (round === null) return
  const from = pending.get(index)
  const api = apis[index]
  if (from === undefined || api === undefined || api.version === from) return
  pending.delete(index)
  if (pending.size === 0) finish()
}

function checkAll (): void {
  for (const index of [...pending.keys()]) check(index)
}

function finish (): void {
  const at = process.hrtime.bigint()
  const armed = round!
  round = null
  pending.clear()
  clearInterval(poll)
  poll = undefined
  const versions = new Set(apis.filter(Boolean).map((api) => api.version))
  sendEvent({ event: 'propagated', kind: 'plugin', round: armed, version: versions.size === 1 ? [...versions][0]! : null, at: at.toString() })
}

function arm (next: number): void {
  disarm()
  round = next
  apis.forEach((api, index) => { pending.set(index, api.version) })
  poll = setInterval(checkAll, 1)
  bareRound = bare.length > 0 ? next : null
  bare.forEach((listener, index) => { barePending.set(index, listener.version) })
}

function disarm (): void {
  round = null
  pending.clear()
  clearInterval(poll)
  poll = undefined
  bareRound = null
  barePending.clear()
}

// ---------------------------------------------------------------- bare listeners

interface BareListener { sql: Sql, version: number | null }
const bare: BareListener[] = []
let bareRound: number | null = null
const barePending = new Map<number, number | null>()

function bareHeard (index: number, payload: string): void {
  const listener = bare[index]
  const match = /^(?:version:)?(\d+)$/.exec(payload)
  if (listener === undefined || match === null) return
  listener.version = Number(match[1])
  if (bareRound === null || !barePending.has(index) || barePending.get(index) === listener.version) return
  barePending.delete(index)
  if (barePending.size > 0) return
  const at = process.hrtime.bigint()
  const armed = bareRound
  bareRound = null
  const versions = new Set(bare.map((b) => b.version))
  sendEvent({ event: 'propagated', kind: 'bare', round: armed, version: versions.size === 1 ? [...versions][0]! : null, at: at.toString() })
}

export interface BareArgs { url: string, count: number, applicationName: string }

async function startBare (args: BareArgs): Promise<{ started: number, ms: number }> {
  const t0 = performance.now()
  let next = 0
  const runner = async (): Promise<void> => {
    while (!closing && next < args.count) {
      const index = bare.length
      next++
      const listener: BareListener = { sql: postgres(args.url, { max: 1, onnotice: () => {}, connection: { application_name: args.applicationName } }), version: null }
      bare.push(listener)
      for (const channel of BARE_CHANNELS) await listener.sql.listen(channel, (payload) => bareHeard(index, payload))
    }
  }
  await Promise.all(Array.from({ length: Math.min(8, args.count) }, runner))
  return { started: bare.length, ms: performance.now() - t0 }
}

async function stopBare (): Promise<void> {
  bareRound = null
  barePending.clear()
  const all = bare.splice(0)
  await Promise.allSettled(all.map((listener) => listener.sql.end({ timeout: 1 })))
}

// ---------------------------------------------------------------- per-user reach watch

interface UserWatch {
  base: number
  count: number
  /** Per instance: how many of the changes it holds. */
  seen: number[]
  /** Per change: how many instances hold it, and when the latest of them was seen to. */
  holders: number[]
  latest: bigint[]
  /** Per change: when every instance of this process held it. */
  complete: Array<bigint | null>
  byBackstop: number
  checks: number
  backstop: NodeJS.Timeout
}

let users: UserWatch | null = null

function userCount (api: PublicApi): number {
  const value = api.status().userVersions
  return typeof value === 'number' ? value : -1
}

function checkUsers (index: number, backstop = false): void {
  const watch = users
  const api = apis[index]
  if (watch === null || api === undefined) return
  const from = watch.seen[index]!
  if (from >= watch.count) return
  watch.checks++
  const held = Math.min(watch.count, userCount(api) - watch.base)
  if (held <= from) return
  const at = process.hrtime.bigint()
  const instances = apis.filter(Boolean).length
  for (let k = from; k < held; k++) {
    watch.holders[k]!++
    if (at > watch.latest[k]!) watch.latest[k] = at
    if (watch.holders[k] === instances) watch.complete[k] = watch.latest[k]!
  }
  if (backstop) watch.byBackstop += held - from
  watch.seen[index] = held
}

/** Bytes came in on one of the instance's sockets: once postgres.js and the plugin are done with them, look. */
function socketHint (index: number): void {
  if (users !== null || round !== null) setImmediate(() => check(index))
}

function armUsers (args: { base: number, count: number }): void {
  disarmUsers()
  const watch: UserWatch = {
    base: args.base,
    count: args.count,
    seen: apis.map(() => 0),
    holders: Array.from({ length: args.count }, () => 0),
    latest: Array.from({ length: args.count }, () => 0n),
    complete: Array.from({ length: args.count }, () => null),
    byBackstop: 0,
    checks: 0,
    backstop: setInterval(() => { for (let i = 0; i < apis.length; i++) checkUsers(i, true) }, 50)
  }
  users = watch
  for (let i = 0; i < apis.length; i++) checkUsers(i)
}

function disarmUsers (): void {
  if (users !== null) clearInterval(users.backstop)
  users = null
}

export interface UsersReport {
  /** Per change: when every instance of this process held it (process.hrtime.bigint() as text), or null. */
  complete: Array<string | null>
  /** The fewest changes any instance of this process holds. */
  minHeld: number
  byBackstop: number
  checks: number
}

function usersReport (): UsersReport {
  const watch = users
  if (watch === null) return { complete: [], minHeld: 0, byBackstop: 0, checks: 0 }
  for (let i = 0; i < apis.length; i++) checkUsers(i)
  return {
    complete: watch.complete.map((at) => at === null ? null : at.toString()),
    minHeld: Math.min(...watch.seen),
    byBackstop: watch.byBackstop,
    checks: watch.checks
  }
}

/** How far the instances are: the fewest changes any holds (cheap, for waiting). */
function usersProgress (): number {
  const watch = users
  if (watch === null) return 0
  return Math.min(...watch.seen)
}

/** A `socket` factory for postgres.js that tells `socketHint` when bytes arrive. */
function hintingSocket (index: number): (target: { host: string[], port: number[], path?: string | false }) => net.Socket {
  return (target) => {
    const host = target.host[0]!
    const socket = target.path ? net.connect(target.path) : net.connect(target.port[0]!, host)
    socket.on('data', () => socketHint(index))
    // postgres.js reads `host` for the TLS server name.
    return Object.assign(socket, { host })
  }
}

/** postgres.js options for `url`, with a hinting socket factory. */
function connectionOptions (url: string, index: number): Record<string, unknown> {
  const u = new URL(url)
  return {
    host: decodeURIComponent(u.hostname),
    port: Number(u.port || 5432),
    database: decodeURIComponent(u.pathname.slice(1)),
    username: decodeURIComponent(u.username),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    socket: hintingSocket(index)
  }
}

/** A logger that writes nothing; any line an instance logs prompts a look at that instance's version. */
function hintLogger (index: number): FastifyBaseLogger {
  const hint = (): void => { if (round !== null) queueMicrotask(() => check(index)) }
  const logger = {
    level: 'info',
    fatal: hint,
    error: hint,
    warn: hint,
    info: hint,
    debug: hint,
    trace: hint,
    silent: () => {},
    child: () => logger
  }
  return logger as unknown as FastifyBaseLogger
}

// ---------------------------------------------------------------- instances

async function loadPlugin (path: string): Promise<FastifyPluginAsync<Record<string, unknown>>> {
  const mod = await import(pathToFileURL(path).href) as { default?: unknown }
  if (typeof mod.default !== 'function') throw new Error(`${path} has no default export to register`)
  return mod.default as FastifyPluginAsync<Record<string, unknown>>
}

async function startInstance (plugin: FastifyPluginAsync<Record<string, unknown>>, args: StartArgs, index: number): Promise<FastifyInstance> {
  // The app's own pool, when measuring the `sql` option: one connection, made on the plugin's first read.
  const appSql = args.sql !== undefined
    ? postgres({ ...connectionOptions(args.url, index), max: 1, onnotice: () => {}, connection: { application_name: args.sql.applicationName } } as postgres.Options<Record<string, postgres.PostgresType>>)
    : undefined
  // Fastify's own limit on a plugin's registration (10 s by default) would otherwise cut in before the
  // plugin's connectTimeout on a loaded database, and leave the cut-off instance's listener running.
  const connectTimeout = typeof args.options.connectTimeout === 'number' ? args.options.connectTimeout : 10_000
  const app = Fastify({ loggerInstance: hintLogger(index), pluginTimeout: connectTimeout + 30_000 })
  try {
    await app.register(cookie)
    await app.register(session, { secret: 'a bench secret that is at least 32 characters long', cookie: { secure: false } })
    await app.register(plugin, { connection: connectionOptions(args.url, index), refresh: () => ({}), ...args.options, ...(appSql ? { sql: appSql } : {}) })
    await app.ready()
    if (appSql) appSqls.push(appSql)
    return app
  } catch (err) {
    await app.close().catch(() => {})
    await appSql?.end({ timeout: 1 })
    throw err
  }
}

async function start (args: StartArgs): Promise<StartResult> {
  const t0 = performance.now()
  const limit = openFileLimit()
  // Two or three sockets per instance, plus what Node holds itself.
  if (limit !== null && limit < args.count * 3 + 100) {
    throw new Error(`open-file limit ${limit} is too low for ${args.count} instances in one process (raise ulimit -n)`)
  }
  const plugin = await loadPlugin(args.plugin)
  let retries = 0
  const errors: string[] = []
  let next = 0
  let lastReport = performance.now()
  const runner = async (): Promise<void> => {
    while (!closing) {
      const index = next++
      if (index >= args.count) return
      for (let attempt = 1; ; attempt++) {
        try {
          const app = await startInstance(plugin, args, index)
          apps[index] = app
          apis[index] = (app as unknown as { sessionRefresh: PublicApi }).sessionRefresh
          break
        } catch (err) {
          const message = String((err as Error).message ?? err)
          if (errors.length < 5) errors.push(message)
          if (attempt >= args.attempts || closing) throw new Error(`instance ${index}: ${message}`)
          retries++
          await new Promise((resolve) => setTimeout(resolve, 500 * attempt))
        }
      }
      if (performance.now() - lastReport > 5000) {
        lastReport = performance.now()
        sendEvent({ event: 'progress', started: apis.filter(Boolean).length })
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(args.concurrency, args.count) }, runner))
  return { started: apis.filter(Boolean).length, retries, ms: performance.now() - t0, errors }
}

function status (): WorkerStatus {
  let listening = 0
  let heartbeatMisses = 0
  let reconnects = 0
  let minVersion = Infinity
  let maxVersion = -Infinity
  let minUsers = Infinity
  let maxUsers = -Infinity
  let polling = 0
  const num = (value: unknown): number => typeof value === 'number' && Number.isFinite(value) ? value : 0
  for (const api of apis) {
    if (api === undefined) continue
    const s = api.status()
    if (s.listening === true) listening++
    heartbeatMisses += num(s.heartbeatMisses)
    reconnects += num(s.reconnects)
    minVersion = Math.min(minVersion, api.version)
    maxVersion = Math.max(maxVersion, api.version)
    const tracked = typeof s.userVersions === 'number' ? s.userVersions : -1
    minUsers = Math.min(minUsers, tracked)
    maxUsers = Math.max(maxUsers, tracked)
    if (s.userChanges === 'poll') polling++
  }
  return { instances: apis.filter(Boolean).length, listening, heartbeatMisses, reconnects, minVersion, maxVersion, rss: process.memoryUsage().rss, minUsers, maxUsers, polling }
}

serveCommands({
  start: (args) => start(args as StartArgs),
  status,
  arm: (next) => { arm(next as number) },
  disarm,
  startBare: (args) => startBare(args as BareArgs),
  stopBare,
  armUsers: (args) => { armUsers(args as { base: number, count: number }) },
  usersReport,
  usersProgress,
  disarmUsers
}, async () => {
  closing = true
  disarm()
  disarmUsers()
  await Promise.allSettled([...apps.map((app) => app.close()), stopBare()])
  await Promise.allSettled(appSqls.map((sql) => sql.end({ timeout: 1 })))
})

sendEvent({ event: 'ready', pid: process.pid })
