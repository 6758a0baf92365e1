// The scale bench (issue 12): `npm run bench -- --only=scale`.
//
// For each N in --scale-n (default 1, 16, 64, 256, 1000) it starts N plugin
// instances, spread over a few worker processes (bench/scale-worker.ts), against
// a fresh embedded PostgreSQL 18 with max_connections raised, and also against
// the server at DATABASE_URL when that is set. With the N instances idle it
// measures the database's CPU (from /proc), the plugin's queries that reach the
// database (pg_stat_statements, else pg_stat_database.xact_commit) and the
// connections it holds; then propagation of 100 bumps from COMMIT to every
// instance; then the TPS of a plain write workload and of a session_refresh_user
// workload. Results replace this label's table in the "## Scale" section of
// bench/RESULTS.md.
//
// Flags (all optional):
//   --plugin=/path/to/lib/index.ts  the plugin to measure (default: this checkout's lib/index.ts)
//   --label=before                  the table's name; a run replaces only the table with its label and server
//   --scale-n=1,16,64               the instance counts
//   --scale-workers=8               listener processes (each holds N/k instances)
//   --scale-bumps=100 --scale-idle=30 --scale-tps-seconds=10 --scale-clients=4
//   --scale-heartbeat-interval=, --scale-heartbeat-timeout=, --scale-poll-interval= (ms; default: the plugin's defaults)
//   --scale-connect-timeout=120000  the plugin's connectTimeout (startup only)
//   --scale-bump-timeout=35000      how long one bump may take to reach every instance (ms)
//   --scale-no-embedded             only the server at DATABASE_URL
//   --scale-results=<file>          write the section there instead of bench/RESULTS.md
//
// `npx tsx bench/scale.ts [flags]` runs the same without bench/run.ts, which loads
// this checkout's lib/ when it starts (useful while lib/ is being rewritten).
import { execFile, execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { readFile, rm, mkdtemp, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import postgres, { type Sql } from 'postgres'
import { initCluster, startCluster, stopCluster } from '../examples/embedded-postgres.js'
import { freePort } from '../test/helpers/free-port.js'
import { forkChild, type Child } from './child.js'
import { percentile } from './http.js'
import type { StartArgs, StartResult, WorkerStatus } from './scale-worker.js'

const run = promisify(execFile)
const WORKER_FILE = new URL('./scale-worker.ts', import.meta.url)
const RESULTS_FILE = new URL('./RESULTS.md', import.meta.url)
const DEFAULT_PLUGIN = fileURLToPath(new URL('../lib/index.ts', import.meta.url))
const PLUGIN_APPLICATION_NAME = 'fastify-session-refresh'
const BENCH_APPLICATION_NAME = 'fsr-scale-bench'
const CLK_TCK = (() => { try { return Number(execFileSync('getconf', ['CLK_TCK']).toString()) || 100 } catch { return 100 } })()

// ---------------------------------------------------------------- options

interface Config {
  plugin: string
  label: string
  sizes: number[]
  workers: number
  bumps: number
  warmupBumps: number
  idleSeconds: number
  settleSeconds: number
  tpsSeconds: number
  clients: number
  bumpTimeoutMs: number
  propagationCapMs: number
  startTimeoutMs: number
  connectTimeout: number
  pluginOptions: Record<string, unknown>
  embedded: boolean
  results: string
}

function parseConfig (argv: string[]): Config {
  const flag = (name: string): string | undefined => argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3)
  const int = (name: string, fallback: number): number => {
    const raw = flag(name)
    if (raw === undefined) return fallback
    const value = Number(raw)
    if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name}: expected a positive number, got ${raw}`)
    return value
  }
  const sizes = (flag('scale-n') ?? '1,16,64,256,1000').split(',').map((s) => {
    const n = Number(s.trim())
    if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--scale-n: ${s} is not a positive integer`)
    return n
  })
  const pluginOptions: Record<string, unknown> = { connectTimeout: int('scale-connect-timeout', 120_000) }
  for (const [name, option] of [['scale-heartbeat-interval', 'heartbeatInterval'], ['scale-heartbeat-timeout', 'heartbeatTimeout'], ['scale-poll-interval', 'pollInterval']] as const) {
    if (flag(name) !== undefined) pluginOptions[option] = int(name, 0)
  }
  const label = flag('label') ?? 'current'
  if (!/^[\w.-]+$/.test(label)) throw new Error(`--label: letters, digits, '.', '_' and '-' only, got ${label}`)
  return {
    plugin: resolve(flag('plugin') ?? DEFAULT_PLUGIN),
    label,
    sizes: [...new Set(sizes)].sort((a, b) => a - b),
    workers: int('scale-workers', 8),
    bumps: int('scale-bumps', 100),
    warmupBumps: 3,
    idleSeconds: int('scale-idle', 30),
    settleSeconds: int('scale-settle', 10),
    tpsSeconds: int('scale-tps-seconds', 10),
    clients: int('scale-clients', 4),
    bumpTimeoutMs: int('scale-bump-timeout', 35_000),
    propagationCapMs: 150_000,
    startTimeoutMs: 600_000,
    connectTimeout: pluginOptions.connectTimeout as number,
    pluginOptions,
    embedded: !argv.includes('--scale-no-embedded'),
    results: resolve(flag('scale-results') ?? fileURLToPath(RESULTS_FILE))
  }
}

// ---------------------------------------------------------------- logging and small helpers

const started = Date.now()
const log = (message: string): void => { console.error(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] scale: ${message}`) }
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const hrMs = (): number => Number(process.hrtime.bigint()) / 1e6

function withTimeout<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise,
    new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${Math.round(ms / 1000)} s`)), ms) })
  ]).finally(() => clearTimeout(timer))
}

/** `fn` runs at most once; later calls get the first call's promise. */
function once (fn: () => Promise<void>): () => Promise<void> {
  let promise: Promise<void> | undefined
  return () => { promise ??= fn(); return promise }
}

function databaseUrl (serverUrl: string, database: string): string {
  const url = new URL(serverUrl)
  url.pathname = `/${database}`
  return url.toString()
}

// ---------------------------------------------------------------- the plugin under test

interface PluginModule {
  migrate: (sql: Sql) => Promise<unknown>
  bumpSessionVersion?: (sql: Sql) => Promise<number>
}

interface PluginInfo { path: string, commit: string, dirty: boolean, module: PluginModule }

async function loadPlugin (path: string): Promise<PluginInfo> {
  const module = await import(pathToFileURL(path).href) as Partial<PluginModule> & { default?: unknown }
  if (typeof module.default !== 'function') throw new Error(`--plugin ${path}: no default export (the plugin) found`)
  if (typeof module.migrate !== 'function') throw new Error(`--plugin ${path}: no migrate export found`)
  const dir = dirname(path)
  const git = (args: string[]): Promise<string> => run('git', ['-C', dir, ...args]).then(({ stdout }) => stdout.trim(), () => '')
  const commit = await git(['rev-parse', '--short', 'HEAD']) || 'unknown'
  // lib/ and sql/ beside it: what the bench loads.
  const dirty = (await git(['status', '--porcelain', '--', '.', '../sql'])) !== ''
  return { path, commit, dirty, module: module as PluginModule }
}

async function bump (plugin: PluginModule, sql: Sql): Promise<number> {
  if (plugin.bumpSessionVersion) return plugin.bumpSessionVersion(sql)
  const [row] = await sql<{ value: string }[]>`
    update system_settings set value = (value::bigint + 1)::text where key = 'session_version' returning value`
  return Number(row!.value)
}

// ---------------------------------------------------------------- database servers

interface Target {
  kind: 'embedded' | 'env'
  /** A URL of the server, as a user that may create databases. */
  url: string
  /** A connection to the server's maintenance database: never the bench database, so its queries are not the plugin's. */
  monitor: Sql
  version: string
  maxConnections: number
  postmaster: number
  /** Whether the postmaster's reaped-children CPU belongs to this bench alone (a cluster of its own). */
  ownsCluster: boolean
  statements: boolean
  settings: string[]
  stop: () => Promise<void>
}

async function postmasterOf (sql: Sql): Promise<number> {
  const [row] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`
  const stat = await readStat(row!.pid)
  if (stat === null) throw new Error(`cannot read /proc/${row!.pid}/stat: is the database on another machine?`)
  return stat.ppid
}

async function describe (sql: Sql): Promise<{ version: string, maxConnections: number, statements: boolean }> {
  const [info] = await sql<{ version: string, max: string, preload: string }[]>`
    select current_setting('server_version') as version, current_setting('max_connections') as max,
           current_setting('shared_preload_libraries') as preload`
  let statements = false
  if (info!.preload.includes('pg_stat_statements')) {
    statements = await sql`create extension if not exists pg_stat_statements`.then(() => true, (err: unknown) => {
      log(`pg_stat_statements is loaded but cannot be created here: ${String(err)}`)
      return false
    })
  }
  return { version: info!.version, maxConnections: Number(info!.max), statements }
}

const EMBEDDED_SETTINGS = (maxConnections: number): string[] => [
  `max_connections = ${maxConnections}`,
  "shared_preload_libraries = 'pg_stat_statements'",
  'pg_stat_statements.max = 20000',
  'pg_stat_statements.track_utility = on',
  // As the test server: speed over durability, so that disk flushes do not hide CPU costs.
  'fsync = off',
  'synchronous_commit = off',
  'full_page_writes = off'
]

async function startEmbedded (maxN: number, cleanups: Array<() => Promise<void>>): Promise<Target> {
  const maxConnections = Math.max(2600, maxN * 3 + 100)
  const dataDir = await mkdtemp(join(os.tmpdir(), 'fsr-scale-pg-'))
  let running = false
  const stop = once(async (): Promise<void> => {
    if (running) {
      await stopCluster(dataDir).catch(async (err: unknown) => {
        log(`pg_ctl stop failed (${String(err)}); sending SIGQUIT to the postmaster`)
        const pid = Number((await readFile(join(dataDir, 'postmaster.pid'), 'utf8').catch(() => '')).split('\n')[0])
        if (pid > 0) { try { process.kill(pid, 'SIGQUIT') } catch {} }
        await sleep(2000)
      })
      running = false
    }
    await rm(dataDir, { recursive: true, force: true })
  })
  cleanups.push(stop)
  const settings = EMBEDDED_SETTINGS(maxConnections)
  const cluster = await initCluster(dataDir, await freePort(), settings)
  await startCluster(dataDir)
  running = true
  const monitor = postgres(cluster.url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  const { version, maxConnections: max, statements } = await describe(monitor)
  return {
    kind: 'embedded',
    url: cluster.url,
    monitor,
    version,
    maxConnections: max,
    postmaster: Number((await readFile(join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]),
    ownsCluster: true,
    statements,
    settings,
    stop: once(async () => {
      await monitor.end({ timeout: 1 })
      await stop()
    })
  }
}

async function connectEnv (url: string): Promise<Target> {
  const monitor = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  const { version, maxConnections, statements } = await describe(monitor)
  const [settings] = await monitor<{ fsync: string, sync: string }[]>`
    select current_setting('fsync') as fsync, current_setting('synchronous_commit') as sync`
  return {
    kind: 'env',
    url,
    monitor,
    version,
    maxConnections,
    postmaster: await postmasterOf(monitor),
    ownsCluster: false,
    statements,
    settings: [`max_connections = ${maxConnections}`, `fsync = ${settings!.fsync}`, `synchronous_commit = ${settings!.sync}`],
    stop: once(() => monitor.end({ timeout: 1 }))
  }
}

// ---------------------------------------------------------------- /proc

interface Stat { ppid: number, ticks: number, childTicks: number }

async function readStat (pid: number): Promise<Stat | null> {
  return readStatSync(pid)
}

function readStatSync (pid: number): Stat | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
    return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]), childTicks: Number(fields[13]) + Number(fields[14]) }
  } catch {
    return null
  }
}

interface CpuSample { at: number, ticks: Map<number, number>, reaped: number, excluded: Set<number> }

/** CPU ticks of the postmaster and its children, but not of client backends in other databases. */
async function sampleCpu (target: Target, database: string): Promise<CpuSample> {
  const others = await target.monitor<{ pid: number }[]>`
    select pid from pg_stat_activity where backend_type = 'client backend' and datname is distinct from ${database}`
  const excluded = new Set(others.map((row) => row.pid))
  const ticks = new Map<number, number>()
  let reaped = 0
  // Synchronous reads, in one go: a few thousand of them take a while on a loaded machine,
  // and the sample is stamped with the middle of that while.
  const t0 = hrMs()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    const stat = readStatSync(pid)
    if (stat === null) continue
    if (pid === target.postmaster) {
      ticks.set(pid, stat.ticks)
      reaped = stat.childTicks
    } else if (stat.ppid === target.postmaster) {
      ticks.set(pid, stat.ticks)
    }
  }
  return { at: (t0 + hrMs()) / 2, ticks, reaped, excluded }
}

/** Cores used between two samples. */
function coresBetween (a: CpuSample, b: CpuSample, ownsCluster: boolean): number {
  const skip = (pid: number): boolean => a.excluded.has(pid) || b.excluded.has(pid)
  let ticks = 0
  for (const [pid, now] of b.ticks) if (!skip(pid)) ticks += now - (a.ticks.get(pid) ?? 0)
  if (ownsCluster) {
    // A process that exited in between: its whole CPU time moved into the postmaster's
    // reaped-children count, so take that and remove what it had used before `a`.
    ticks += b.reaped - a.reaped
    for (const [pid, before] of a.ticks) if (!b.ticks.has(pid)) ticks -= before
  }
  return ticks / CLK_TCK / ((b.at - a.at) / 1000)
}

/**
 * Which kind of process each pid of the cluster is, from pg_stat_activity: the plugin's
 * connections told apart by their last statement (a LISTEN or not), the background
 * processes by backend_type. A diagnostic of where the idle CPU goes.
 */
async function classify (target: Target, database: string): Promise<Map<number, string>> {
  const rows = await target.monitor<{ pid: number, type: string | null, app: string | null, query: string | null }[]>`
    select pid, backend_type as type, application_name as app, query
    from pg_stat_activity where datname = ${database} or backend_type <> 'client backend'`
  const classes = new Map<number, string>([[target.postmaster, 'postmaster']])
  for (const row of rows) {
    if (row.type !== 'client backend') classes.set(row.pid, row.type ?? 'other')
    else if (row.app !== PLUGIN_APPLICATION_NAME) classes.set(row.pid, 'other clients')
    else classes.set(row.pid, /^\s*listen\b/i.test(row.query ?? '') ? 'plugin, last statement LISTEN' : 'plugin, other')
  }
  return classes
}

/** Cores used between two samples, by class; pids not classified count as 'unknown', exited ones as 'exited'. */
function coresByClass (a: CpuSample, b: CpuSample, classes: Map<number, string>, ownsCluster: boolean): Array<{ name: string, cores: number, processes: number }> {
  const seconds = (b.at - a.at) / 1000
  const by = new Map<string, { ticks: number, processes: number }>()
  const add = (name: string, ticks: number): void => {
    const entry = by.get(name) ?? { ticks: 0, processes: 0 }
    entry.ticks += ticks
    entry.processes++
    by.set(name, entry)
  }
  for (const [pid, now] of b.ticks) {
    if (a.excluded.has(pid) || b.excluded.has(pid)) continue
    add(classes.get(pid) ?? 'unknown', now - (a.ticks.get(pid) ?? 0))
  }
  if (ownsCluster) {
    let exited = b.reaped - a.reaped
    for (const [pid, before] of a.ticks) if (!b.ticks.has(pid)) exited -= before
    if (exited !== 0) add('exited', exited)
  }
  return [...by].map(([name, { ticks, processes }]) => ({ name, cores: ticks / CLK_TCK / seconds, processes }))
    .sort((x, y) => y.cores - x.cores)
}

async function processTicks (pid: number): Promise<number> {
  return (await readStat(pid))?.ticks ?? 0
}

/** Private memory (RssAnon) of the cluster's processes, bytes. */
async function clusterPrivateMemory (sample: CpuSample): Promise<number> {
  let total = 0
  await Promise.all([...sample.ticks.keys()].map(async (pid) => {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
    const kb = /RssAnon:\s+(\d+)/.exec(status)?.[1]
    if (kb) total += Number(kb) * 1024
  }))
  return total
}

// ---------------------------------------------------------------- database counters

interface Counters { at: number, statements: Map<string, { query: string, calls: number }>, commits: number }

async function readCounters (target: Target, database: string): Promise<Counters> {
  const statements = new Map<string, { query: string, calls: number }>()
  if (target.statements) {
    const rows = await target.monitor<{ id: string, query: string, calls: string }[]>`
      select s.queryid::text as id, s.query, s.calls::text as calls
      from pg_stat_statements s join pg_database d on d.oid = s.dbid
      where d.datname = ${database}`
    for (const row of rows) statements.set(row.id, { query: row.query, calls: Number(row.calls) })
  }
  const [row] = await target.monitor<{ commits: string }[]>`
    select xact_commit::text as commits from pg_stat_database where datname = ${database}`
  return { at: hrMs(), statements, commits: Number(row?.commits ?? 0) }
}

interface QueryRates { heartbeat: number, poll: number, total: number, transactions: number, byQuery: Array<{ query: string, perSecond: number }> }

/**
 * The plugin's queries between two readings, per second. Heartbeats are told apart
 * by their text (a NOTIFY or pg_notify); everything else the plugin sends while
 * idle (re-reads of the version and of per-user changes, the queue usage, any
 * LISTEN after a reconnect) counts as poll.
 */
function queryRates (a: Counters, b: Counters): QueryRates {
  const seconds = (b.at - a.at) / 1000
  let heartbeat = 0
  let poll = 0
  const byQuery: Array<{ query: string, perSecond: number }> = []
  for (const [id, { query, calls }] of b.statements) {
    const delta = calls - (a.statements.get(id)?.calls ?? 0)
    if (delta <= 0) continue
    if (/pg_notify|^\s*notify\b/i.test(query)) heartbeat += delta
    else poll += delta
    byQuery.push({ query: query.replace(/\s+/g, ' ').slice(0, 120), perSecond: delta / seconds })
  }
  byQuery.sort((x, y) => y.perSecond - x.perSecond)
  return { heartbeat: heartbeat / seconds, poll: poll / seconds, total: (heartbeat + poll) / seconds, transactions: (b.commits - a.commits) / seconds, byQuery }
}

async function pluginConnections (target: Target, database: string): Promise<number> {
  const [row] = await target.monitor<{ n: number }[]>`
    select count(*)::int as n from pg_stat_activity where application_name = ${PLUGIN_APPLICATION_NAME} and datname = ${database}`
  return row!.n
}

async function usedConnections (target: Target): Promise<number> {
  const [row] = await target.monitor<{ n: number }[]>`select count(*)::int as n from pg_stat_activity where backend_type = 'client backend'`
  return row!.n
}

// ---------------------------------------------------------------- workers

interface Workers { children: Child[], pids: number[], counts: number[] }

/** Every worker ever started, stopped by whoever started it or, on an interrupt, by the cleanup. */
const liveChildren = new Set<Child>()

async function stopChild (child: Child, ms: number): Promise<void> {
  liveChildren.delete(child)
  await child.stop(ms).catch(() => { child.process.kill('SIGKILL') })
}

async function startWorkers (config: Config, url: string, n: number): Promise<{ workers: Workers, start: StartResult[], seconds: number }> {
  const k = Math.min(n, config.workers)
  const counts = Array.from({ length: k }, (_, i) => Math.floor(n / k) + (i < n % k ? 1 : 0))
  const t0 = performance.now()
  const forked = await Promise.all(counts.map(async () => {
    const { child, ready } = await forkChild(WORKER_FILE, [])
    liveChildren.add(child)
    return { child, pid: ready.pid as number }
  }))
  const workers: Workers = { children: forked.map((f) => f.child), pids: forked.map((f) => f.pid), counts }
  const progress = new Map<number, number>()
  workers.children.forEach((child, i) => child.onEvent((event) => { if (event.event === 'progress') progress.set(i, event.started as number) }))
  const ticker = setInterval(() => {
    const sum = [...progress.values()].reduce((a, b) => a + b, 0)
    log(`N=${n}: ${sum} of ${n} instances started`)
  }, 15_000)
  try {
    const start = await withTimeout(Promise.all(workers.children.map((child, i) => child.call<StartResult>('start', {
      url,
      count: counts[i]!,
      plugin: config.plugin,
      options: config.pluginOptions,
      concurrency: 4,
      attempts: 5
    } satisfies StartArgs))), config.startTimeoutMs, `starting ${n} instances`)
    return { workers, start, seconds: (performance.now() - t0) / 1000 }
  } catch (err) {
    await stopWorkers(workers)
    throw err
  } finally {
    clearInterval(ticker)
  }
}

async function stopWorkers (workers: Workers): Promise<void> {
  await Promise.all(workers.children.map((child) => stopChild(child, 60_000)))
}

interface Status { instances: number, listening: number, heartbeatMisses: number, reconnects: number, minVersion: number, maxVersion: number, rss: number }

async function status (workers: Workers): Promise<Status> {
  const all = await Promise.all(workers.children.map((child) => withTimeout(child.call<WorkerStatus>('status'), 60_000, 'worker status')))
  return {
    instances: all.reduce((sum, s) => sum + s.instances, 0),
    listening: all.reduce((sum, s) => sum + s.listening, 0),
    heartbeatMisses: all.reduce((sum, s) => sum + s.heartbeatMisses, 0),
    reconnects: all.reduce((sum, s) => sum + s.reconnects, 0),
    minVersion: Math.min(...all.map((s) => s.minVersion)),
    maxVersion: Math.max(...all.map((s) => s.maxVersion)),
    rss: all.reduce((sum, s) => sum + s.rss, 0)
  }
}

// ---------------------------------------------------------------- propagation

interface Propagation { bumps: number, timeouts: number, p50: number, p99: number, max: number, early: number, unverified: number, commitP50: number, commitMax: number }

async function measurePropagation (config: Config, plugin: PluginModule, url: string, workers: Workers): Promise<Propagation> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  // round -> worker index -> when its last instance held a new version, and which
  const arrivals = new Map<number, Map<number, { at: bigint, version: number | null }>>()
  let wake: (() => void) | null = null
  workers.children.forEach((child, i) => child.onEvent((event) => {
    if (event.event !== 'propagated') return
    const round = event.round as number
    if (!arrivals.has(round)) arrivals.set(round, new Map())
    arrivals.get(round)!.set(i, { at: BigInt(event.at as string), version: event.version as number | null })
    wake?.()
  }))
  const complete = (round: number): boolean => (arrivals.get(round)?.size ?? 0) === workers.children.length
  try {
    const latencies: number[] = []
    // How long the bumping UPDATE took, its COMMIT included (the NOTIFY's cost to the writer).
    const commits: number[] = []
    let timeouts = 0
    let early = 0
    let unverified = 0
    const phaseStart = performance.now()
    for (let round = 0; round < config.warmupBumps + config.bumps; round++) {
      if (performance.now() - phaseStart > config.propagationCapMs) {
        log(`propagation: stopping after ${latencies.length + timeouts} bumps (${config.propagationCapMs / 1000} s cap)`)
        break
      }
      await Promise.all(workers.children.map((child) => child.call('arm', round)))
      const sent = performance.now()
      const version = await bump(plugin, sql)
      // The bumping COMMIT (the UPDATE's autocommit) has returned.
      const committed = process.hrtime.bigint()
      commits.push(performance.now() - sent)
      const deadline = performance.now() + config.bumpTimeoutMs
      while (!complete(round) && performance.now() < deadline) {
        let timer: NodeJS.Timeout | undefined
        await new Promise<void>((resolve) => {
          wake = resolve
          timer = setTimeout(resolve, Math.max(1, deadline - performance.now()))
        })
        clearTimeout(timer)
        wake = null
      }
      const counted = round >= config.warmupBumps
      if (!complete(round)) {
        await Promise.all(workers.children.map((child) => child.call('disarm')))
        if (counted) timeouts++
        log(`propagation: version ${version} did not reach every instance within ${config.bumpTimeoutMs / 1000} s`)
      } else {
        const reports = [...arrivals.get(round)!.values()]
        // Every instance must hold the version the bump returned, not merely another one.
        if (reports.some((r) => r.version !== version)) {
          if (unverified++ === 0) log(`propagation: after bumping to ${version} the instances hold ${[...new Set(reports.map((r) => r.version))].join(', ')}`)
        }
        if (counted) {
          const last = reports.reduce((a, b) => a.at > b.at ? a : b).at
          const ms = Number(last - committed) / 1e6
          // Every instance may hold it before this process sees its own COMMIT return.
          if (ms < 0) early++
          latencies.push(Math.max(0, ms))
        }
      }
      arrivals.delete(round)
      // Spaced so that bumps never overlap, with jitter so they do not lock into step with the timers.
      await sleep(150 + Math.random() * 150)
    }
    return {
      bumps: latencies.length,
      timeouts,
      p50: latencies.length ? percentile(latencies, 50) : NaN,
      p99: latencies.length ? percentile(latencies, 99) : NaN,
      max: latencies.length ? Math.max(...latencies) : NaN,
      early,
      unverified,
      commitP50: percentile(commits, 50),
      commitMax: commits.length ? Math.max(...commits) : NaN
    }
  } finally {
    await sql.end({ timeout: 1 })
  }
}

// ---------------------------------------------------------------- write workloads

interface Workload { tps: number, transactions: number, p50: number, p99: number, cores: number, errors: number }

async function measureWorkload (config: Config, target: Target, database: string, url: string, kind: 'plain' | 'user'): Promise<Workload> {
  const sql = postgres(url, { max: config.clients, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  const once = (): Promise<unknown> => kind === 'plain'
    ? sql.begin((tx) => tx`update scale_rows set n = n + 1 where id = ${1 + Math.floor(Math.random() * SCALE_ROWS)}`)
    : sql.begin((tx) => tx`select session_refresh_user(${String(1 + Math.floor(Math.random() * 100_000))})`)
  try {
    // Every client connected and its statements prepared before the clock starts.
    await Promise.all(Array.from({ length: config.clients }, once))
    const latencies: number[] = []
    let errors = 0
    const before = await sampleCpu(target, database)
    const t0 = performance.now()
    const until = t0 + config.tpsSeconds * 1000
    await Promise.all(Array.from({ length: config.clients }, async () => {
      while (performance.now() < until) {
        const t = performance.now()
        try {
          await once()
          latencies.push(performance.now() - t)
        } catch (err) {
          if (errors++ === 0) log(`${kind} workload: ${String(err)}`)
        }
      }
    }))
    const seconds = (performance.now() - t0) / 1000
    const after = await sampleCpu(target, database)
    return {
      tps: latencies.length / seconds,
      transactions: latencies.length,
      p50: latencies.length ? percentile(latencies, 50) : NaN,
      p99: latencies.length ? percentile(latencies, 99) : NaN,
      cores: coresBetween(before, after, target.ownsCluster),
      errors
    }
  } finally {
    await sql.end({ timeout: 1 })
  }
}

// ---------------------------------------------------------------- one N

const SCALE_ROWS = 10_000

export interface ScaleRow {
  n: number
  error?: string
  skipped?: string
  workers?: number
  /** The machine's 1-minute load average when this N started. */
  load?: number
  startSeconds?: number
  startRetries?: number
  connections?: number
  idleCores?: number
  idleByClass?: Array<{ name: string, cores: number, processes: number }>
  workerCores?: number
  dbMemory?: number
  workerMemory?: number
  queries?: QueryRates
  propagation?: Propagation
  plain?: Workload
  user?: Workload
  idleStatus?: { listening: number, heartbeatMisses: number, reconnects: number }
  endStatus?: Status
}

async function measureN (config: Config, plugin: PluginModule, target: Target, n: number): Promise<ScaleRow> {
  const load = os.loadavg()[0]!
  const database = `fsr_scale_${randomBytes(6).toString('hex')}`
  const url = databaseUrl(target.url, database)
  await target.monitor.unsafe(`create database ${database}`)
  let workers: Workers | undefined
  try {
    const setup = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
    try {
      await plugin.migrate(setup)
      await setup`create table scale_rows (id integer primary key, n bigint not null default 0)`
      await setup`insert into scale_rows (id) select generate_series(1, ${SCALE_ROWS}::int)`
      await setup`vacuum analyze scale_rows`
    } finally {
      await setup.end({ timeout: 1 })
    }
    log(`N=${n}: starting ${n} instances in ${Math.min(n, config.workers)} processes`)
    const started = await startWorkers(config, url, n)
    workers = started.workers
    const retries = started.start.reduce((sum, s) => sum + s.retries, 0)
    log(`N=${n}: started in ${started.seconds.toFixed(1)} s (${retries} retries${retries ? `: ${started.start.flatMap((s) => s.errors).slice(0, 3).join('; ')}` : ''}); settling ${config.settleSeconds} s`)
    await sleep(config.settleSeconds * 1000)

    // Idle: the steady load of N instances' heartbeats and polls.
    const statusA = await status(workers)
    const cpuA = await sampleCpu(target, database)
    const countersA = await readCounters(target, database)
    const workerTicksA = await Promise.all(workers.pids.map(processTicks))
    await sleep(config.idleSeconds * 1000)
    const workerTicksB = await Promise.all(workers.pids.map(processTicks))
    const countersB = await readCounters(target, database)
    const cpuB = await sampleCpu(target, database)
    const statusB = await status(workers)
    const connections = await pluginConnections(target, database)
    const idleByClass = coresByClass(cpuA, cpuB, await classify(target, database), target.ownsCluster)
    const dbMemory = await clusterPrivateMemory(cpuB)
    const idleCores = coresBetween(cpuA, cpuB, target.ownsCluster)
    const workerCores = (workerTicksB.reduce((a, b) => a + b, 0) - workerTicksA.reduce((a, b) => a + b, 0)) / CLK_TCK / ((cpuB.at - cpuA.at) / 1000)
    const queries = queryRates(countersA, countersB)
    log(`N=${n}: idle ${config.idleSeconds} s: DB ${idleCores.toFixed(3)} cores, instances ${workerCores.toFixed(3)} cores, ${connections} plugin connections, ` +
      `plugin queries/s ${queries.total.toFixed(1)} (heartbeat ${queries.heartbeat.toFixed(1)}, poll ${queries.poll.toFixed(1)}), ${queries.transactions.toFixed(1)} tx/s; ` +
      `listening ${statusB.listening}/${statusB.instances}, heartbeat misses +${statusB.heartbeatMisses - statusA.heartbeatMisses}, reconnects +${statusB.reconnects - statusA.reconnects}`)
    for (const q of queries.byQuery.slice(0, 8)) log(`N=${n}:   ${q.perSecond.toFixed(2)}/s  ${q.query}`)
    log(`N=${n}: idle DB CPU by process: ${idleByClass.map((c) => `${c.name} ×${c.processes} ${c.cores.toFixed(3)}`).join(', ')}`)

    log(`N=${n}: propagation, ${config.bumps} bumps`)
    const propagation = await measurePropagation(config, plugin, url, workers)
    log(`N=${n}: propagation p50 ${propagation.p50.toFixed(2)} ms, p99 ${propagation.p99.toFixed(2)} ms, max ${propagation.max.toFixed(2)} ms` +
      `${propagation.timeouts ? `, ${propagation.timeouts} timed out` : ''}${propagation.unverified ? `, ${propagation.unverified} reports not verified` : ''}` +
      `, ${propagation.early} held everywhere before the COMMIT returned; bump UPDATE+COMMIT p50 ${propagation.commitP50.toFixed(2)} ms`)
    const plain = await measureWorkload(config, target, database, url, 'plain')
    log(`N=${n}: plain writes ${plain.tps.toFixed(0)} TPS (p50 ${plain.p50.toFixed(2)} ms), DB ${plain.cores.toFixed(2)} cores`)
    const user = await measureWorkload(config, target, database, url, 'user')
    log(`N=${n}: session_refresh_user ${user.tps.toFixed(0)} TPS (p50 ${user.p50.toFixed(2)} ms), DB ${user.cores.toFixed(2)} cores`)
    const endStatus = await status(workers)
    return {
      n,
      load,
      workers: workers.children.length,
      startSeconds: started.seconds,
      startRetries: retries,
      connections,
      idleCores,
      idleByClass,
      workerCores,
      dbMemory,
      workerMemory: statusB.rss,
      queries,
      propagation,
      plain,
      user,
      idleStatus: {
        listening: statusB.listening,
        heartbeatMisses: statusB.heartbeatMisses - statusA.heartbeatMisses,
        reconnects: statusB.reconnects - statusA.reconnects
      },
      endStatus
    }
  } finally {
    if (workers) {
      log(`N=${n}: stopping the instances`)
      await stopWorkers(workers)
    }
    // Every plugin connection gone before the next N, then the database.
    for (let i = 0; i < 120 && (await pluginConnections(target, database).catch(() => 0)) > 0; i++) await sleep(500)
    await target.monitor.unsafe(`drop database if exists ${database} with (force)`).catch((err: unknown) => log(`could not drop ${database}: ${String(err)}`))
  }
}

// ---------------------------------------------------------------- report

interface TargetResult {
  kind: Target['kind']
  version: string
  maxConnections: number
  settings: string[]
  statements: boolean
  rows: ScaleRow[]
  seconds: number
  loadBefore: number[]
  loadAfter: number[]
}

interface Report { config: Config, plugin: PluginInfo, date: string, targets: TargetResult[] }

const f = (value: number | undefined, digits: number): string => value === undefined || !Number.isFinite(value) ? 'n/a' : value.toFixed(digits)
const gib = (bytes: number | undefined): string => bytes === undefined ? 'n/a' : (bytes / 2 ** 30).toFixed(2)

function mainTable (target: TargetResult, config: Config): string {
  const header = '| N | connections held | idle DB CPU (cores) | plugin queries/s at the DB: heartbeat + poll = total | propagation p50 / p99 / max ms | plain-write TPS | session_refresh_user TPS |\n|---|---|---|---|---|---|---|'
  const lines = target.rows.map((r) => {
    if (r.skipped) return `| ${r.n} | skipped: ${r.skipped} | | | | | |`
    if (r.error) return `| ${r.n} | failed: ${r.error.replace(/\|/g, '/').replace(/\s+/g, ' ').slice(0, 200)} | | | | | |`
    const q = r.queries!
    const queries = target.statements
      ? `${f(q.heartbeat, 1)} + ${f(q.poll, 1)} = ${f(q.total, 1)}`
      : `${f(q.transactions, 1)} transactions/s (no pg_stat_statements)`
    const p = r.propagation!
    const notes = [
      ...(p.bumps + p.timeouts < config.bumps ? [`${p.bumps + p.timeouts} bumps in the ${config.propagationCapMs / 1000} s allowed`] : []),
      ...(p.timeouts ? [`${p.timeouts} not everywhere within ${f(config.bumpTimeoutMs / 1000, 0)} s`] : [])
    ]
    const propagation = `${f(p.p50, 2)} / ${f(p.p99, 2)} / ${f(p.max, 2)}${notes.length ? ` (${notes.join('; ')})` : ''}`
    return `| ${r.n} | ${r.connections} (${f(r.connections! / r.n, 2)} per instance) | ${f(r.idleCores, 3)} | ${queries} | ${propagation} | ${f(r.plain!.tps, 0)} | ${f(r.user!.tps, 0)} |`
  })
  return [header, ...lines].join('\n')
}

function detailTable (target: TargetResult): string {
  const header = '| N | load avg at start | processes × instances | start s (retries) | instances\' CPU idle (cores) | transactions/s at the DB, idle | plain writes: DB CPU cores, p50 / p99 ms | session_refresh_user: DB CPU cores, p50 / p99 ms | bump UPDATE+COMMIT ms p50 / max | idle DB CPU by process (cores) | idle: listening, heartbeat misses, reconnects | whole run: heartbeat misses, reconnects | DB private memory GiB (RssAnon) | workers\' RSS GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|'
  const lines = target.rows.filter((r) => !r.skipped && !r.error).map((r) => {
    const per = Math.ceil(r.n / r.workers!)
    return `| ${r.n} | ${f(r.load, 2)} | ${r.workers} × ${per === Math.floor(r.n / r.workers!) ? per : `≤${per}`} | ${f(r.startSeconds, 1)} (${r.startRetries}) | ${f(r.workerCores, 3)} | ${f(r.queries!.transactions, 1)} | ` +
      `${f(r.plain!.cores, 2)}, ${f(r.plain!.p50, 2)} / ${f(r.plain!.p99, 2)} | ${f(r.user!.cores, 2)}, ${f(r.user!.p50, 2)} / ${f(r.user!.p99, 2)} | ` +
      `${f(r.propagation!.commitP50, 2)} / ${f(r.propagation!.commitMax, 2)} | ${r.idleByClass!.filter((c) => c.cores >= 0.0005).map((c) => `${c.name} ×${c.processes}: ${f(c.cores, 3)}`).join('; ')} | ` +
      `${r.idleStatus!.listening}/${r.n}, ${r.idleStatus!.heartbeatMisses}, ${r.idleStatus!.reconnects} | ${r.endStatus!.heartbeatMisses}, ${r.endStatus!.reconnects} | ${gib(r.dbMemory)} | ${gib(r.workerMemory)} |`
  })
  return [header, ...lines].join('\n')
}

function targetName (kind: Target['kind']): string {
  return kind === 'embedded' ? 'embedded' : 'DATABASE_URL'
}

function block (report: Report, target: TargetResult): string {
  const { config, plugin } = report
  const cpus = os.cpus()
  const options = Object.entries(config.pluginOptions).map(([k, v]) => `${k}: ${String(v)}`).join(', ')
  return `### ${config.label}: PostgreSQL ${target.version} (${targetName(target.kind)})
<!-- scale-table label=${config.label} server=${target.kind} -->

- Date: ${report.date}; run time ${Math.round(target.seconds)} s; load average (1, 5, 15 min) before / after: ${target.loadBefore.map((x) => x.toFixed(2)).join(', ')} / ${target.loadAfter.map((x) => x.toFixed(2)).join(', ')}
- Machine: ${cpus[0]?.model.trim() ?? 'unknown'}, ${cpus.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, Linux ${os.release()}, Node ${process.version}
- PostgreSQL ${target.version} (${target.kind === 'embedded' ? 'embedded-postgres, a fresh cluster of the bench\'s own' : 'the server at DATABASE_URL'}): ${target.settings.filter((s) => !s.startsWith('pg_stat_statements.')).join(', ')}
- Plugin: \`${plugin.path}\` at commit ${plugin.commit}${plugin.dirty ? ' **with uncommitted changes in lib/ or sql/**' : ''}; options: plugin defaults${options ? ` but ${options}` : ''}
- ${config.idleSeconds} s idle window after ${config.settleSeconds} s settling; ${config.bumps} bumps (+${config.warmupBumps} warm-up); TPS: ${config.clients} clients × ${config.tpsSeconds} s

${mainTable(target, config)}

${detailTable(target)}
`
}

const PREAMBLE = `## Scale

Generated by \`npm run bench -- --only=scale [--plugin=<path to lib/index.ts>] [--label=<name>] [--scale-n=1,16,64]\`
(bench/scale.ts). A run replaces only the table with its own label and server; the rest of this file is left alone.

- N plugin instances, each a Fastify app with \`@fastify/cookie\`, \`@fastify/session\` and the plugin (loaded from
  \`--plugin\`, with its default heartbeat and poll intervals), spread over up to 8 worker processes. They serve no
  requests: the load measured is what idle instances cost. A fresh database per N, migrated by that plugin's \`migrate\`.
- Connections held: \`pg_stat_activity\` rows with \`application_name = 'fastify-session-refresh'\` in the bench
  database, at the end of the idle window.
- Idle DB CPU: user + system time of the postmaster and every child process (\`/proc/<pid>/stat\`; client backends
  of other databases left out; on a cluster of the bench's own, CPU of processes that exited meanwhile is taken
  from the postmaster's reaped-children time) over the idle window, divided by its length: cores kept busy by N
  idle instances' heartbeats and polls.
- Plugin queries/s at the DB: calls in \`pg_stat_statements\` for the bench database over the idle window (nothing
  else runs there then; the bench's own queries go to another database). Heartbeat: statements whose text is a
  NOTIFY or \`pg_notify\`; poll: all the others (re-reads of the version and of per-user changes, queue usage).
  Where \`pg_stat_statements\` is not loaded, the delta of \`pg_stat_database.xact_commit\` instead.
- Propagation: before each bump every worker notes the version each of its instances holds; the bench process
  bumps with \`bumpSessionVersion\` (an autocommit \`UPDATE\`) and takes the time its COMMIT returns; each worker
  checks \`app.sessionRefresh.version\` of its instances every millisecond and after each line an instance logs, and
  reports when its last instance holds a new version, on the same monotonic clock (the bench then checks that it is
  the version the bump returned). Per bump, the latest worker
  counts: from COMMIT to every instance holding the version. Bumps are 150–300 ms apart once the previous one has
  reached everyone (or after 35 s, \`--scale-bump-timeout\`). A value of 0 means every instance held it before the bumper saw its COMMIT return.
- TPS: ${'`'}--scale-clients${'`'} (4) connections for ${'`'}--scale-tps-seconds${'`'} (10 s) each, with the N instances idle:
  plain writes are \`BEGIN; UPDATE scale_rows SET n = n + 1 WHERE id = <random of 10,000>; COMMIT\` (no NOTIFY);
  session_refresh_user is \`BEGIN; SELECT session_refresh_user('<random of 100,000>'); COMMIT\` (one NOTIFY each,
  heard by every instance). DB CPU during each workload is in the second table.
- Second table: "transactions/s at the DB" is the delta of \`pg_stat_database.xact_commit\` over the idle window, a
  cross-check of the query count (it can also hold transactions that LISTEN backends run to read the queue, counted
  whenever those backends report their statistics). "Idle DB CPU by process" splits the idle CPU by
  \`pg_stat_activity\` (the plugin's connections by whether their last statement was a LISTEN).
  Heartbeat misses and reconnects come from \`app.sessionRefresh.status()\`, summed over instances. "Bump
  UPDATE+COMMIT" is how long the bumping autocommit \`UPDATE\` took, as the bench process saw it.
- The database, the instances and the bench share the machine's cores, with whatever else runs there (see the load
  average at the start of each N): at small N, TPS can move by 2–5× between runs. CPU below about 0.01 cores is
  at the resolution of \`/proc\` accounting.
`

/** RESULTS.md's "## Scale" section: from its heading to the next "## " heading or the end. */
function splitScale (text: string): { before: string, section: string | null, after: string } {
  const start = text.search(/^## Scale\s*$/m)
  if (start < 0) return { before: text, section: null, after: '' }
  const rest = text.slice(start + 1)
  const next = rest.search(/^## /m)
  const end = next < 0 ? text.length : start + 1 + next
  return { before: text.slice(0, start), section: text.slice(start, end), after: text.slice(end) }
}

/** The "### " blocks of the Scale section, keyed by their marker comment. */
function scaleBlocks (section: string): Array<{ key: string, text: string }> {
  const parts = section.split(/^(?=### )/m).slice(1)
  return parts.map((text) => ({ key: /<!-- scale-table (label=\S+ server=\S+) -->/.exec(text)?.[1] ?? text.split('\n')[0]!, text: text.trimEnd() + '\n' }))
}

async function writeReport (report: Report): Promise<void> {
  const text = await readFile(report.config.results, 'utf8').catch(() => '# Benchmark results\n')
  const { before, section, after } = splitScale(text)
  const blocks = section ? scaleBlocks(section) : []
  for (const target of report.targets) {
    const key = `label=${report.config.label} server=${target.kind}`
    const fresh = { key, text: block(report, target) }
    const at = blocks.findIndex((b) => b.key === key)
    if (at >= 0) blocks[at] = fresh
    else blocks.push(fresh)
  }
  const newSection = `${PREAMBLE}\n${blocks.map((b) => b.text).join('\n')}`
  const head = before.endsWith('\n\n') || before === '' ? before : before.endsWith('\n') ? `${before}\n` : `${before}\n\n`
  await writeFile(report.config.results, `${head}${newSection}${after ? `\n${after}` : ''}`)
}

/** For the full bench, which rewrites RESULTS.md: keeps the Scale section from the file as it is. */
export async function withScaleSection (markdown: string): Promise<string> {
  const text = await readFile(RESULTS_FILE, 'utf8').catch(() => '')
  const { section } = splitScale(text)
  if (section === null) return markdown
  return `${markdown.trimEnd()}\n\n${section.trimEnd()}\n`
}

// ---------------------------------------------------------------- main

/**
 * After a large N the machine stays loaded for a while (backends exiting, the load average
 * decaying): wait until the 1-minute load average is below 4, for 60 s at most.
 */
let lastN = 0

async function coolDown (): Promise<void> {
  // Only after a large N: other work on a shared machine can keep the load above 4 on its own.
  if (lastN < 256) return
  lastN = 0
  const until = Date.now() + 60_000
  if (os.loadavg()[0]! < 4) return
  log(`waiting for the load average (${os.loadavg()[0]!.toFixed(1)}) to fall below 4, 60 s at most`)
  while (os.loadavg()[0]! >= 4 && Date.now() < until) await sleep(2000)
}

export async function runScale (argv: string[]): Promise<void> {
  const config = parseConfig(argv)
  const plugin = await loadPlugin(config.plugin)
  log(`plugin ${config.plugin} (commit ${plugin.commit}${plugin.dirty ? ', with uncommitted changes' : ''}), label ${config.label}, N = ${config.sizes.join(', ')}`)
  const cleanups: Array<() => Promise<void>> = []
  let cleaning: Promise<void> | undefined
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      await Promise.all([...liveChildren].map((child) => stopChild(child, 10_000)))
      for (const fn of cleanups.reverse()) await fn().catch((err: unknown) => log(`cleanup: ${String(err)}`))
    })()
    return cleaning
  }
  const interrupted = (): void => {
    log('interrupted: stopping the workers and the database')
    void cleanup().finally(() => process.exit(130))
  }
  process.once('SIGINT', interrupted)
  process.once('SIGTERM', interrupted)
  const report: Report = { config, plugin, date: new Date().toISOString(), targets: [] }
  try {
    const kinds: Array<Target['kind']> = [...(config.embedded ? ['embedded' as const] : []), ...(process.env.DATABASE_URL ? ['env' as const] : [])]
    if (kinds.length === 0) throw new Error('--scale-no-embedded needs DATABASE_URL')
    for (const kind of kinds) {
      const t0 = Date.now()
      const loadBefore = os.loadavg()
      // Each stop is idempotent and registered for the cleanup as soon as there is something to stop.
      const target = kind === 'embedded' ? await startEmbedded(Math.max(...config.sizes), cleanups) : await connectEnv(process.env.DATABASE_URL!)
      cleanups.push(target.stop)
      log(`PostgreSQL ${target.version} (${kind}), max_connections ${target.maxConnections}, pg_stat_statements ${target.statements ? 'on' : 'off'}, postmaster ${target.postmaster}`)
      const rows: ScaleRow[] = []
      let perInstance = 2
      try {
        for (const n of config.sizes) {
          const free = target.maxConnections - (await usedConnections(target)) - 3 - config.clients - 4
          const needed = Math.ceil(n * perInstance)
          if (needed > free) {
            rows.push({ n, skipped: `needs about ${needed} connections, max_connections ${target.maxConnections} leaves ${free}` })
            log(`N=${n}: skipped, ${rows.at(-1)!.skipped}`)
            continue
          }
          await coolDown()
          try {
            lastN = n
            const row = await measureN(config, plugin.module, target, n)
            rows.push(row)
            if (row.connections! > 0) perInstance = Math.max(perInstance, row.connections! / n)
          } catch (err) {
            if (cleaning) throw err
            log(`N=${n} failed: ${String((err as Error).stack ?? err)}`)
            rows.push({ n, error: String((err as Error).message ?? err) })
          }
        }
      } finally {
        await target.stop()
      }
      report.targets.push({ kind, version: target.version, maxConnections: target.maxConnections, settings: target.settings, statements: target.statements, rows, seconds: (Date.now() - t0) / 1000, loadBefore, loadAfter: os.loadavg() })
      console.log(`\n${block(report, report.targets.at(-1)!)}`)
    }
    await writeReport(report)
    log(`wrote the ${config.label} table(s) to ${config.results}`)
  } finally {
    await cleanup()
    process.off('SIGINT', interrupted)
    process.off('SIGTERM', interrupted)
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runScale(process.argv.slice(2)).catch((err: unknown) => {
    console.error(err)
    process.exitCode = 1
  })
}
