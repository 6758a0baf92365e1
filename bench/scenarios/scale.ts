// The scale bench (issue 12): `npm run bench -- --only=scale`.
//
// For each N in --scale-n (default 1, 16, 64, 256, 1000) it starts N plugin
// instances, spread over a few worker processes (bench/workers/scale.ts), against
// a fresh embedded PostgreSQL 18 with max_connections raised, and also against
// the server at DATABASE_URL when that is set. With the N instances idle it
// measures the database's CPU (from /proc), the plugin's queries that reach the
// database (pg_stat_statements, else pg_stat_database.xact_commit) and the
// connections it holds; then propagation of 100 bumps from COMMIT to every
// instance, then more bumps beside N bare postgres.js listeners heard in the same
// rounds; then the TPS
// of a plain write workload and of a session_refresh_user workload; then per-user
// changes at a steady rate (100/s for 10 s) in notify mode, the idle load in poll
// mode, the same changes in poll mode; then N fresh instances with the `sql`
// option (an app pool of one connection each), idle. Results replace this label's
// table in the "## Scale" section of bench/RESULTS.md.
//
// Flags (all optional):
//   --plugin=/path/to/lib/index.ts  the plugin to measure (default: this checkout's lib/index.ts)
//   --label=before                  the table's name; a run replaces only the table with its label and server
//   --scale-n=1,16,64               the instance counts
//   --scale-workers=8               listener processes (each holds N/k instances)
//   --scale-bumps=100 --scale-idle=30 --scale-tps-seconds=10 --scale-clients=4
//   --scale-heartbeat-interval=, --scale-heartbeat-timeout=, --scale-poll-interval=, --scale-user-poll-interval=
//                                   (ms; default: the plugin's defaults)
//   --scale-connect-timeout=120000  the plugin's connectTimeout (startup only)
//   --scale-bump-timeout=35000      how long one bump may take to reach every instance (ms)
//   --scale-user-rate=100 --scale-user-seconds=10 --scale-user-deadline=10 (s)  the per-user workload
//   --scale-variant-idle=20         the idle window (s) of the poll mode and of the sql option
//   --scale-bare-bumps=50           bumps beside N bare listeners; --scale-no-bare skips them
//   --scale-no-sql                  skip the instances with the sql option
//   --scale-no-embedded             only the server at DATABASE_URL
//   --scale-results=<file>          write the section there instead of bench/RESULTS.md
//
// `npx tsx bench/scenarios/scale.ts [flags]` runs the same without bench/run.ts, which loads
// this checkout's lib/ when it starts (useful while lib/ is being rewritten): nothing
// under scenarios/scale/ imports lib/. Its parts: scale/config.ts (flags), scale/target.ts
// (database servers, the plugin under test), scale/workers.ts, scale/cpu.ts and
// scale/counters.ts (what the database spends), scale/propagation.ts,
// scale/user-changes.ts (the per-user workload), scale/measure.ts (one N),
// scale/report.ts (the section of RESULTS.md).
import os from 'node:os'
import { pathToFileURL } from 'node:url'
import { sleep } from '../shared/log.js'
import { log, parseConfig, type Config } from './scale/config.js'
import { usedConnections } from './scale/counters.js'
import { measureN, type ScaleRow } from './scale/measure.js'
import { block, writeReport, type Report, type TargetResult } from './scale/report.js'
import { connectEnv, loadPlugin, startEmbedded, type PluginModule, type Target } from './scale/target.js'
import { liveChildren, stopChild } from './scale/workers.js'

export { withScaleSection } from './scale/report.js'

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

/** Each N in turn on one server; a failed N is a row of its own, unless the bench is being stopped. */
async function measureSizes (config: Config, plugin: PluginModule, target: Target, stopping: () => boolean): Promise<ScaleRow[]> {
  const rows: ScaleRow[] = []
  // At the peak, with the bare listeners of the propagation phase: the plugin's connections and one more.
  const bare = config.bare ? 1 : 0
  let perInstance = 2 + bare
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
      const row = await measureN(config, plugin, target, n)
      rows.push(row)
      if (row.connections! > 0) perInstance = Math.max(perInstance, row.connections! / n + bare)
    } catch (err) {
      if (stopping()) throw err
      log(`N=${n} failed: ${String((err as Error).stack ?? err)}`)
      rows.push({ n, error: String((err as Error).message ?? err) })
    }
  }
  return rows
}

async function measureTarget (config: Config, plugin: PluginModule, kind: Target['kind'], cleanups: Array<() => Promise<void>>, stopping: () => boolean): Promise<TargetResult> {
  const t0 = Date.now()
  const loadBefore = os.loadavg()
  // Each stop is idempotent and registered for the cleanup as soon as there is something to stop.
  const target = kind === 'embedded' ? await startEmbedded(Math.max(...config.sizes), cleanups) : await connectEnv(process.env.DATABASE_URL!)
  cleanups.push(target.stop)
  log(`PostgreSQL ${target.version} (${kind}), max_connections ${target.maxConnections}, pg_stat_statements ${target.statements ? 'on' : 'off'}, postmaster ${target.postmaster}`)
  let rows: ScaleRow[]
  try {
    rows = await measureSizes(config, plugin, target, stopping)
  } finally {
    await target.stop()
  }
  return { kind, version: target.version, maxConnections: target.maxConnections, settings: target.settings, statements: target.statements, rows, seconds: (Date.now() - t0) / 1000, loadBefore, loadAfter: os.loadavg() }
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
      report.targets.push(await measureTarget(config, plugin.module, kind, cleanups, () => cleaning !== undefined))
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