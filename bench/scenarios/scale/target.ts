// The scale bench's database servers (a fresh embedded cluster, or DATABASE_URL's)
// and the plugin under test, loaded from a path so an older checkout can be measured.
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import postgres, { type Sql } from 'postgres'
import { initCluster, startCluster, stopCluster } from '../../../examples/embedded-postgres.js'
import { freePort } from '../../../test/helpers/free-port.js'
import { sleep } from '../../shared/log.js'
import { BENCH_APPLICATION_NAME, log } from './config.js'
import { readStat } from './cpu.js'

const run = promisify(execFile)

/** `fn` runs at most once; later calls get the first call's promise. */
function once (fn: () => Promise<void>): () => Promise<void> {
  let promise: Promise<void> | undefined
  return () => { promise ??= fn(); return promise }
}

export interface PluginModule {
  migrate: (sql: Sql) => Promise<unknown>
  bumpSessionVersion?: (sql: Sql) => Promise<number>
}

export interface PluginInfo { path: string, commit: string, dirty: boolean, module: PluginModule }

export async function loadPlugin (path: string): Promise<PluginInfo> {
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

export async function bump (plugin: PluginModule, sql: Sql): Promise<number> {
  if (plugin.bumpSessionVersion) return plugin.bumpSessionVersion(sql)
  const [row] = await sql<{ value: string }[]>`
    update system_settings set value = (value::bigint + 1)::text where key = 'session_version' returning value`
  return Number(row!.value)
}

export interface Target {
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

export async function startEmbedded (maxN: number, cleanups: Array<() => Promise<void>>): Promise<Target> {
  // Two connections per instance, one per bare listener, and the bench's own.
  const maxConnections = Math.max(2600, maxN * 3 + 200)
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

export async function connectEnv (url: string): Promise<Target> {
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
