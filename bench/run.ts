// `npm run bench` (full) and `npm run bench:quick` (reduced, under a minute): the entry.
//
// This process is the load generator. Every app server runs in its own Node
// process (bench/workers/server.ts), and the listeners and stream holders in others
// (bench/workers/): on a 2-core machine a load generator in the server's own event
// loop would steal the very CPU it is measuring, and an in-process autocannon would
// add its own GC pauses to the server's latencies. Only one server is under load at
// a time; the others sit idle.
//
// Each scenario is a module of bench/scenarios/, which measures and then says what
// it measured (its rows, its Setup bullet, its tables by round); bench/shared/ holds
// what they share (statistics, the report's frame, the database, child processes,
// HTTP load). This file picks the scenarios, runs them, and writes RESULTS.md.
//
// `--only=storm,memory` runs some, for profiling; it prints the table but leaves
// RESULTS.md alone. Names: throughput, per-user (or invalidation), propagation,
// storm, memory, events, scale. `scale` (bench/scenarios/scale.ts) runs only when
// named, with clusters of its own, and writes its own section of RESULTS.md.
//
// Environment: DATABASE_URL to use an existing server (else an embedded
// PostgreSQL is started and stopped), BENCH_CPU_PROF=<dir> to run the app
// servers with `node --cpu-prof`.
import { writeFile } from 'node:fs/promises'
import os from 'node:os'
import { startServer, stopServer, type ServerInfo } from '../test/setup/server.js'
import { benchConfig } from './shared/config.js'
import { createDatabase, dropDatabase, extraDatabases, type Database } from './shared/database.js'
import { elapsedSeconds, log } from './shared/log.js'
import { stopAll } from './shared/processes.js'
import { markdown, table, type RunInfo } from './shared/report.js'
import { ALIASES, SECTIONS, compose, measure, usersNeeded, type Section } from './scenarios/index.js'
import { runScale, withScaleSection } from './scenarios/scale.js'

const RESULTS_FILE = new URL('./RESULTS.md', import.meta.url)
const quick = process.argv.includes('--quick')
const config = benchConfig(quick)
const only = process.argv.find((arg) => arg.startsWith('--only='))?.slice('--only='.length).split(',').map((name) => {
  const section = ALIASES[name] ?? name
  if (!(SECTIONS as readonly string[]).includes(section)) throw new Error(`--only: unknown section ${name}; known: ${SECTIONS.join(', ')} (invalidation = per-user)`)
  return section as Section
})
const runs = (section: Section): boolean => only === undefined ? section !== 'scale' : only.includes(section)

function runInfo (db: Database, server: ServerInfo, loadBefore: number[]): RunInfo {
  return {
    quick,
    date: new Date().toISOString(),
    node: process.version,
    postgres: db.postgresVersion,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
    databaseKind: server.kind,
    loadBefore,
    loadAfter: os.loadavg(),
    seconds: elapsedSeconds()
  }
}

async function main (): Promise<void> {
  if (only?.includes('scale')) {
    await runScale(process.argv.slice(2))
    if (only.length === 1) return
  }
  const loadBefore = os.loadavg()
  log(process.env.DATABASE_URL ? 'using DATABASE_URL' : 'starting PostgreSQL')
  const server = await startServer()
  let db: Database | undefined
  let cleaning: Promise<void> | undefined
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      await stopAll()
      for (const open of [...(db ? [db] : []), ...extraDatabases]) {
        await dropDatabase(server, open).catch((err: unknown) => log(`could not drop ${open.name}: ${String(err)}`))
      }
      await stopServer(server).catch((err: unknown) => log(`could not stop PostgreSQL: ${String(err)}`))
    })()
    return cleaning
  }
  const interrupted = (): void => { void cleanup().finally(() => process.exit(130)) }
  process.once('SIGINT', interrupted)
  process.once('SIGTERM', interrupted)
  try {
    const users = usersNeeded(config)
    db = await createDatabase(server, users)
    log(`database ${db.name} on PostgreSQL ${db.postgresVersion} (${server.kind}), max_connections ${db.maxConnections}`)
    const parts = compose(await measure({ config, db, server, users }, runs), config)
    console.log(table(parts.rows))
    if (only === undefined) {
      await writeFile(RESULTS_FILE, await withScaleSection(markdown(runInfo(db, server, loadBefore), parts)))
      log(`wrote ${RESULTS_FILE.pathname}`)
    }
  } finally {
    await cleanup()
  }
}

main().catch((err: unknown) => {
  console.error(err)
  process.exitCode = 1
})
