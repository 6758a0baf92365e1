// Propagation: N listeners in one worker process (bench/workers/propagation.ts),
// plugin instances or bare postgres.js listeners; the bench bumps and measures
// from its COMMIT returning until the worker reports every listener holds it.
import { bumpSessionVersion } from '../../lib/index.js'
import type { Bench } from '../shared/bench.js'
import type { Database } from '../shared/database.js'
import { log, sleep } from '../shared/log.js'

// Between bumps: an instance starts its reads at least 20 ms apart (so that a
// flood of notifications costs a bounded number of reads, issue 10.4), and a
// bump sooner than that after the last read would be measured waiting for it.
// An ETL bumps minutes apart.
const BUMP_GAP_MS = 25
import { fork, stop } from '../shared/processes.js'
import { collect, ms2, yes, type Row } from '../shared/report.js'
import { percentile } from '../shared/stats.js'

const WORKER_FILE = new URL('../workers/propagation.ts', import.meta.url)

export interface Propagation { mode: 'bare' | 'plugin', instances: number, bumps: number, p50: number, p99: number, max: number, beforeCommitReturned: number }
export interface Propagations { results: Propagation[], skipped: string[] }

export async function measurePropagation ({ config, db }: Bench): Promise<Propagations> {
  const results: Propagation[] = []
  const skipped: string[] = []
  for (const instances of config.sizes) {
    for (const mode of ['bare', 'plugin'] as const) {
      const [used] = await db.sql<{ n: number }[]>`select count(*)::int as n from pg_stat_activity`
      // The plugin opens two connections per instance: LISTEN, and reads plus heartbeat.
      const needed = instances * (mode === 'plugin' ? 2 : 1)
      const free = db.maxConnections - used!.n - 10
      if (needed > free) {
        skipped.push(`${instances} ${mode} instances need ${needed} connections; max_connections ${db.maxConnections} leaves ${free}`)
        continue
      }
      results.push(await propagateWith(db, instances, mode, config.bumps))
      const last = results.at(-1)!
      log(`propagation ${mode} × ${instances}: p50 ${last.p50.toFixed(2)} ms, p99 ${last.p99.toFixed(2)} ms, max ${last.max.toFixed(2)} ms`)
    }
  }
  return { results, skipped }
}

async function propagateWith (db: Database, instances: number, mode: 'bare' | 'plugin', bumps: number): Promise<Propagation> {
  const { child } = await fork(WORKER_FILE, [db.url, String(instances), mode])
  try {
    const arrived = new Map<number, bigint>()
    const waiting: { current: { version: number, resolve: () => void } | null } = { current: null }
    let unverified: unknown = null
    child.onEvent((event) => {
      if (event.event !== 'propagated') return
      if (event.verified !== true) unverified = event.version
      arrived.set(event.version as number, BigInt(event.at as string))
      const current = waiting.current
      if (current !== null && current.version === event.version) current.resolve()
    })
    const bumpOnce = async (): Promise<number> => {
      const version = await bumpSessionVersion(db.sql)
      // The bumping COMMIT (the UPDATE's autocommit) has returned.
      const committed = process.hrtime.bigint()
      if (!arrived.has(version)) {
        let timer: NodeJS.Timeout | undefined
        await Promise.race([
          new Promise<void>((resolve) => { waiting.current = { version, resolve } }),
          new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`version ${version} did not reach all ${instances} ${mode} listeners within 5 s`)), 5000) })
        ]).finally(() => { clearTimeout(timer); waiting.current = null })
      }
      if (unverified !== null) throw new Error(`propagation: version ${String(unverified)} reported but not held by every ${mode} listener`)
      const at = arrived.get(version)!
      arrived.clear()
      return Number(at - committed) / 1e6
    }
    for (let i = 0; i < 5; i++) { await bumpOnce(); await sleep(BUMP_GAP_MS) } // warm-up, not counted
    const latencies: number[] = []
    let early = 0
    for (let i = 0; i < bumps; i++) {
      const ms = await bumpOnce()
      // Every listener may already hold it before this process sees its own COMMIT return.
      if (ms < 0) early++
      latencies.push(Math.max(0, ms))
      await sleep(BUMP_GAP_MS)
    }
    return { mode, instances, bumps, p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: Math.max(...latencies), beforeCommitReturned: early }
  } finally {
    await stop(child)
  }
}

export function propagationRows ({ results, skipped }: Propagations): Row[] {
  const { rows, add } = collect()
  for (const p of results) {
    const target = p.mode === 'plugin' && p.instances === 16 ? 3 : p.mode === 'plugin' && p.instances === 64 ? 5 : null
    add(`propagation, ${p.instances} ${p.mode === 'plugin' ? 'plugin instances' : 'bare postgres.js listeners'}: p50 / p99 / max ms (${p.bumps} bumps)`,
      `${ms2(p.p50)} / ${ms2(p.p99)} / ${ms2(p.max)}`,
      target === null ? '' : `p99 < ${target}`, target === null ? '' : yes(p.p99 < target))
  }
  for (const s of skipped) add('propagation skipped', s)
  return rows
}

export const propagationSetup = `- Propagation: N listeners in one worker process; a separate process bumps with \`UPDATE\` (autocommit) and
  measures from the moment its COMMIT returns until the worker reports that every listener holds the new version
  (the plugin's "Session version is now" log line, then a check of every \`.version\`), on a shared monotonic clock.
  Bumps are ${BUMP_GAP_MS} ms apart once the previous one reached everyone: an instance starts its reads at least
  20 ms apart, so that forged hints cost a bounded number of them. "bare" is N plain postgres.js \`sql.listen\`
  connections, the floor.`

export function propagationRuns ({ results }: Propagations): string {
  return `## Propagation, all runs

| Listeners | Kind | Bumps | p50 ms | p99 ms | max ms | all held before the bumper saw its COMMIT return |
|---|---|---|---|---|---|---|
${results.map((p) => `| ${p.instances} | ${p.mode} | ${p.bumps} | ${ms2(p.p50)} | ${ms2(p.p99)} | ${ms2(p.max)} | ${p.beforeCommitReturned} |`).join('\n')}`
}
