// One N of the scale bench: N idle instances, then propagation, then two write workloads.
import { randomBytes } from 'node:crypto'
import os from 'node:os'
import postgres from 'postgres'
import { databaseUrl } from '../../shared/database.js'
import { sleep } from '../../shared/log.js'
import { percentile } from '../../shared/stats.js'
import { BENCH_APPLICATION_NAME, CLK_TCK, SCALE_ROWS, log, type Config } from './config.js'
import { pluginConnections, queryRates, readCounters, type QueryRates } from './counters.js'
import { classify, clusterPrivateMemory, coresBetween, coresByClass, processTicks, sampleCpu } from './cpu.js'
import { measurePropagation, type Propagation } from './propagation.js'
import type { PluginModule, Target } from './target.js'
import { startWorkers, status, stopWorkers, type Status, type Workers } from './workers.js'

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
  plain?: Workload
  user?: Workload
  idleStatus?: { listening: number, heartbeatMisses: number, reconnects: number }
  endStatus?: Status
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
async function measureIdle (config: Config, target: Target, database: string, workers: Workers, n: number): Promise<Idle> {
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
Promise<Required<Pick<ScaleRow, 'propagation' | 'plain' | 'user'>>> {
  log(`N=${n}: propagation, ${config.bumps} bumps`)
  const propagation = await measurePropagation(config, plugin, url, workers)
  log(`N=${n}: propagation p50 ${propagation.p50.toFixed(2)} ms, p99 ${propagation.p99.toFixed(2)} ms, max ${propagation.max.toFixed(2)} ms` +
    `${propagation.timeouts ? `, ${propagation.timeouts} timed out` : ''}${propagation.unverified ? `, ${propagation.unverified} reports not verified` : ''}` +
    `, ${propagation.early} held everywhere before the COMMIT returned; bump UPDATE+COMMIT p50 ${propagation.commitP50.toFixed(2)} ms`)
  const plain = await measureWorkload(config, target, database, url, 'plain')
  log(`N=${n}: plain writes ${plain.tps.toFixed(0)} TPS (p50 ${plain.p50.toFixed(2)} ms), DB ${plain.cores.toFixed(2)} cores`)
  const user = await measureWorkload(config, target, database, url, 'user')
  log(`N=${n}: session_refresh_user ${user.tps.toFixed(0)} TPS (p50 ${user.p50.toFixed(2)} ms), DB ${user.cores.toFixed(2)} cores`)
  return { propagation, plain, user }
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
    const endStatus = await status(workers)
    return { n, load, workers: workers.children.length, startSeconds: started.seconds, startRetries: retries, ...idle, ...loaded, endStatus }
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
