// One N of the scale bench: N idle instances, then propagation (beside N bare listeners), then two
// write workloads, then per-user changes at a steady rate in each mode (notify, then poll, with the
// poll mode's idle load), then the N instances again with the `sql` option, idle.
import { randomBytes } from 'node:crypto'
import os from 'node:os'
import postgres from 'postgres'
import { databaseUrl } from '../../shared/database.js'
import { sleep } from '../../shared/log.js'
import { percentile } from '../../shared/stats.js'
import { APP_APPLICATION_NAME, BENCH_APPLICATION_NAME, CLK_TCK, SCALE_ROWS, log, type Config } from './config.js'
import { applicationConnections, pluginConnections, queryRates, readCounters, type QueryRates } from './counters.js'
import { classify, clusterPrivateMemory, coresBetween, coresByClass, processTicks, sampleCpu } from './cpu.js'
import { measurePropagation, type Propagation } from './propagation.js'
import { bump, type PluginModule, type Target } from './target.js'
import { hasUserModes, measureUserChanges, setUserMode, type UserChangesRun } from './user-changes.js'
import { startBare, startWorkers, status, stopBare, stopWorkers, type Status, type Workers } from './workers.js'

export interface Workload { tps: number, transactions: number, p50: number, p99: number, cores: number, errors: number }

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
  /** Propagation again, beside N bare postgres.js listeners heard in the same rounds. */
  besideBare?: Propagation
  plain?: Workload
  user?: Workload
  idleStatus?: { listening: number, heartbeatMisses: number, reconnects: number }
  endStatus?: Status
  /** Per-user changes at a steady rate, in each mode measured (or why not). */
  userRuns?: Array<UserChangesRun | { mode: string, error: string }>
  /** Idle again with per-user changes in poll mode. */
  pollIdle?: VariantIdle | { error: string }
  /** Idle with N fresh instances given the `sql` option (an app pool of one connection each). */
  sqlIdle?: VariantIdle | { error: string }
}

/** Idle figures of a variant: what the plugin holds and costs the database. */
export interface VariantIdle {
  connections: number
  /** Connections of the app's own pools (the `sql` option), not the plugin's. */
  appConnections: number
  idleCores: number
  queries: QueryRates
  listening: number
  heartbeatMisses: number
  reconnects: number
}

async function prepareDatabase (plugin: PluginModule, url: string): Promise<void> {
  const setup = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  try {
    await plugin.migrate(setup)
    await setup`create table scale_rows (id integer primary key, n bigint not null default 0)`
    await setup`insert into scale_rows (id) select generate_series(1, ${SCALE_ROWS}::int)`
    await setup`vacuum analyze scale_rows`
  } finally {
    await setup.end({ timeout: 1 })
  }
}

type Idle = Required<Pick<ScaleRow, 'connections' | 'idleCores' | 'idleByClass' | 'workerCores' | 'dbMemory' | 'workerMemory' | 'queries' | 'idleStatus'>>

/** Idle: the steady load of N instances' heartbeats and polls. */
async function measureIdle (config: Config, target: Target, database: string, workers: Workers, n: number, seconds = config.idleSeconds, what = 'idle'): Promise<Idle> {
  const statusA = await status(workers)
  const cpuA = await sampleCpu(target, database)
  const countersA = await readCounters(target, database)
  const workerTicksA = await Promise.all(workers.pids.map(processTicks))
  await sleep(seconds * 1000)
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
  log(`N=${n}: ${what} ${seconds} s: DB ${idleCores.toFixed(3)} cores, instances ${workerCores.toFixed(3)} cores, ${connections} plugin connections, ` +
    `plugin queries/s ${queries.total.toFixed(1)} (heartbeat ${queries.heartbeat.toFixed(1)}, poll ${queries.poll.toFixed(1)}), ${queries.transactions.toFixed(1)} tx/s; ` +
    `listening ${statusB.listening}/${statusB.instances}, heartbeat misses +${statusB.heartbeatMisses - statusA.heartbeatMisses}, reconnects +${statusB.reconnects - statusA.reconnects}`)
  for (const q of queries.byQuery.slice(0, 8)) log(`N=${n}:   ${q.perSecond.toFixed(2)}/s, mean ${q.meanMs.toFixed(3)} ms  ${q.query}`)
  log(`N=${n}: ${what} DB CPU by process: ${idleByClass.map((c) => `${c.name} ×${c.processes} ${c.cores.toFixed(3)}`).join(', ')}`)
  return {
    connections,
    idleCores,
    idleByClass,
    workerCores,
    dbMemory,
    workerMemory: statusB.rss,
    queries,
    idleStatus: {
      listening: statusB.listening,
      heartbeatMisses: statusB.heartbeatMisses - statusA.heartbeatMisses,
      reconnects: statusB.reconnects - statusA.reconnects
    }
  }
}

/** Then bumps, and the two write workloads. */
async function measureLoad (config: Config, plugin: PluginModule, target: Target, database: string, url: string, workers: Workers, n: number):
Promise<Required<Pick<ScaleRow, 'propagation' | 'plain' | 'user'>> & Pick<ScaleRow, 'besideBare'>> {
  log(`N=${n}: propagation, ${config.bumps} bumps`)
  const propagation = await measurePropagation(config, plugin, url, workers)
  let besideBare: Propagation | undefined
  if (config.bare) {
    // Then again beside N bare listeners, in the same rounds: each NOTIFY now wakes 2N backends,
    // so these figures are apart from the ones above, which compare with runs that had no bare listeners.
    const t0 = performance.now()
    const bare = await startBare(workers, url)
    log(`N=${n}: ${bare} bare listeners started in ${((performance.now() - t0) / 1000).toFixed(1)} s; ${config.bareBumps} bumps beside them`)
    try {
      besideBare = await measurePropagation({ ...config, bumps: config.bareBumps }, plugin, url, workers, bare)
    } finally {
      await stopBare(workers)
    }
    const b = besideBare.bare!
    log(`N=${n}: beside bare listeners: plugin p50 ${besideBare.p50.toFixed(2)} / p99 ${besideBare.p99.toFixed(2)} ms, bare p50 ${b.p50.toFixed(2)} / p99 ${b.p99.toFixed(2)} / max ${b.max.toFixed(2)} ms${b.timeouts ? `, ${b.timeouts} timed out` : ''}`)
  }
  log(`N=${n}: propagation p50 ${propagation.p50.toFixed(2)} ms, p99 ${propagation.p99.toFixed(2)} ms, max ${propagation.max.toFixed(2)} ms` +
    `${propagation.timeouts ? `, ${propagation.timeouts} timed out` : ''}${propagation.unverified ? `, ${propagation.unverified} reports not verified` : ''}` +
    `, ${propagation.early} held everywhere before the COMMIT returned; bump UPDATE+COMMIT p50 ${propagation.commitP50.toFixed(2)} ms`)
  const plain = await measureWorkload(config, target, database, url, 'plain')
  log(`N=${n}: plain writes ${plain.tps.toFixed(0)} TPS (p50 ${plain.p50.toFixed(2)} ms), DB ${plain.cores.toFixed(2)} cores`)
  const user = await measureWorkload(config, target, database, url, 'user')
  log(`N=${n}: session_refresh_user ${user.tps.toFixed(0)} TPS (p50 ${user.p50.toFixed(2)} ms), DB ${user.cores.toFixed(2)} cores`)
  return { propagation, plain, user, ...(besideBare ? { besideBare } : {}) }
}

/** Per-user changes in each mode, and the poll mode's idle load; the mode is left at notify. */
async function measureUserModes (config: Config, plugin: PluginModule, target: Target, database: string, url: string, workers: Workers, n: number):
Promise<Pick<ScaleRow, 'userRuns' | 'pollIdle'>> {
  const userRuns: NonNullable<ScaleRow['userRuns']> = []
  const tracked = await status(workers)
  if (tracked.minUsers < 0) return { userRuns: [{ mode: 'notify', error: 'the plugin does not report status().userVersions' }] }
  const run = async (mode: 'notify' | 'poll'): Promise<void> => {
    log(`N=${n}: per-user changes, ${mode} mode, ${config.userChanges.rate}/s for ${config.userChanges.seconds} s`)
    try {
      userRuns.push(await measureUserChanges(config, target, database, url, workers, n, mode))
    } catch (err) {
      log(`N=${n}: per-user ${mode} failed: ${String((err as Error).stack ?? err)}`)
      userRuns.push({ mode, error: String((err as Error).message ?? err) })
    }
  }
  await run('notify')
  if (!await hasUserModes(url)) return { userRuns, pollIdle: { error: 'the plugin has no poll mode (no session_refresh_state.user_notify)' } }
  let pollIdle: ScaleRow['pollIdle']
  try {
    await setUserMode(url, workers, 'poll', (sql) => bump(plugin, sql))
    const idle = await measureIdle(config, target, database, workers, n, config.variantIdleSeconds, 'idle, poll mode')
    pollIdle = variant(idle, 0)
    await run('poll')
  } catch (err) {
    log(`N=${n}: poll mode failed: ${String((err as Error).stack ?? err)}`)
    pollIdle ??= { error: String((err as Error).message ?? err) }
  } finally {
    await setUserMode(url, workers, 'notify', (sql) => bump(plugin, sql)).catch((err: unknown) => log(`N=${n}: could not go back to notify: ${String(err)}`))
  }
  return { userRuns, pollIdle }
}

function variant (idle: Idle, appConnections: number): VariantIdle {
  return { connections: idle.connections, appConnections, idleCores: idle.idleCores, queries: idle.queries, ...idle.idleStatus }
}

/** N fresh instances with the `sql` option: the connections they hold, and their idle load. */
async function measureSqlVariant (config: Config, target: Target, database: string, url: string, n: number): Promise<VariantIdle | { error: string }> {
  let workers: Workers | undefined
  try {
    log(`N=${n}: the sql option: starting ${n} instances, each with an app pool of one connection`)
    const started = await startWorkers(config, url, n, { sql: true })
    workers = started.workers
    log(`N=${n}: started in ${started.seconds.toFixed(1)} s; settling ${config.settleSeconds} s`)
    await sleep(config.settleSeconds * 1000)
    const idle = await measureIdle(config, target, database, workers, n, config.variantIdleSeconds, 'idle, sql option')
    const app = await applicationConnections(target, database, APP_APPLICATION_NAME)
    log(`N=${n}: with the sql option: ${idle.connections} plugin connections + ${app} of the app's pools`)
    return variant(idle, app)
  } catch (err) {
    log(`N=${n}: the sql option failed: ${String((err as Error).stack ?? err)}`)
    return { error: String((err as Error).message ?? err) }
  } finally {
    if (workers) await stopWorkers(workers)
    await waitForNoPluginConnections(target, database)
  }
}

async function waitForNoPluginConnections (target: Target, database: string): Promise<void> {
  for (let i = 0; i < 120 && (await pluginConnections(target, database).catch(() => 0)) > 0; i++) await sleep(500)
}

export async function measureN (config: Config, plugin: PluginModule, target: Target, n: number): Promise<ScaleRow> {
  const load = os.loadavg()[0]!
  const database = `fsr_scale_${randomBytes(6).toString('hex')}`
  const url = databaseUrl(target.url, database)
  await target.monitor.unsafe(`create database ${database}`)
  let workers: Workers | undefined
  try {
    await prepareDatabase(plugin, url)
    log(`N=${n}: starting ${n} instances in ${Math.min(n, config.workers)} processes`)
    const started = await startWorkers(config, url, n)
    workers = started.workers
    const retries = started.start.reduce((sum, s) => sum + s.retries, 0)
    log(`N=${n}: started in ${started.seconds.toFixed(1)} s (${retries} retries${retries ? `: ${started.start.flatMap((s) => s.errors).slice(0, 3).join('; ')}` : ''}); settling ${config.settleSeconds} s`)
    await sleep(config.settleSeconds * 1000)
    const idle = await measureIdle(config, target, database, workers, n)
    const loaded = await measureLoad(config, plugin, target, database, url, workers, n)
    const modes = await measureUserModes(config, plugin, target, database, url, workers, n)
    const endStatus = await status(workers)
    log(`N=${n}: stopping the instances`)
    await stopWorkers(workers)
    workers = undefined
    await waitForNoPluginConnections(target, database)
    const sqlIdle = config.sqlVariant ? await measureSqlVariant(config, target, database, url, n) : undefined
    return { n, load, workers: started.workers.children.length, startSeconds: started.seconds, startRetries: retries, ...idle, ...loaded, ...modes, endStatus, ...(sqlIdle ? { sqlIdle } : {}) }
  } finally {
    if (workers) {
      log(`N=${n}: stopping the instances`)
      await stopWorkers(workers)
    }
    // Every plugin connection gone before the next N, then the database.
    await waitForNoPluginConnections(target, database)
    await target.monitor.unsafe(`drop database if exists ${database} with (force)`).catch((err: unknown) => log(`could not drop ${database}: ${String(err)}`))
  }
}
