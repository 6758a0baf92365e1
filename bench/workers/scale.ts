// One listener process of the scale bench (bench/scenarios/scale.ts), driven over IPC.
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
import { pathToFileURL } from 'node:url'
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyPluginAsync } from 'fastify'
import { openFileLimit, sendEvent, serveCommands } from '../shared/child.js'

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
}

const apps: FastifyInstance[] = []
const apis: PublicApi[] = []
let closing = false

// ---------------------------------------------------------------- propagation watch

let round: number | null = null
/** Instance index -> the version it held when armed, for those that still hold it. */
const pending = new Map<number, number>()
let poll: NodeJS.Timeout | undefined

function check (index: number): void {
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
  disarm()
  const versions = new Set(apis.filter(Boolean).map((api) => api.version))
  sendEvent({ event: 'propagated', round: armed, version: versions.size === 1 ? [...versions][0]! : null, at: at.toString() })
}

function arm (next: number): void {
  disarm()
  round = next
  apis.forEach((api, index) => { pending.set(index, api.version) })
  poll = setInterval(checkAll, 1)
}

function disarm (): void {
  round = null
  pending.clear()
  clearInterval(poll)
  poll = undefined
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
  // Fastify's own limit on a plugin's registration (10 s by default) would otherwise cut in before the
  // plugin's connectTimeout on a loaded database, and leave the cut-off instance's listener running.
  const connectTimeout = typeof args.options.connectTimeout === 'number' ? args.options.connectTimeout : 10_000
  const app = Fastify({ loggerInstance: hintLogger(index), pluginTimeout: connectTimeout + 30_000 })
  try {
    await app.register(cookie)
    await app.register(session, { secret: 'a bench secret that is at least 32 characters long', cookie: { secure: false } })
    await app.register(plugin, { connection: args.url, refresh: () => ({}), ...args.options })
    await app.ready()
    return app
  } catch (err) {
    await app.close().catch(() => {})
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
  const num = (value: unknown): number => typeof value === 'number' && Number.isFinite(value) ? value : 0
  for (const api of apis) {
    if (api === undefined) continue
    const s = api.status()
    if (s.listening === true) listening++
    heartbeatMisses += num(s.heartbeatMisses)
    reconnects += num(s.reconnects)
    minVersion = Math.min(minVersion, api.version)
    maxVersion = Math.max(maxVersion, api.version)
  }
  return { instances: apis.filter(Boolean).length, listening, heartbeatMisses, reconnects, minVersion, maxVersion, rss: process.memoryUsage().rss }
}

serveCommands({
  start: (args) => start(args as StartArgs),
  status,
  arm: (next) => { arm(next as number) },
  disarm
}, async () => {
  closing = true
  disarm()
  await Promise.allSettled(apps.map((app) => app.close()))
})

sendEvent({ event: 'ready', pid: process.pid })
