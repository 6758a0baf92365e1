// Propagation at scale: from the bumping COMMIT until every instance in every worker holds the new version,
// and, in the same rounds, until every bare postgres.js listener has heard the bump's notification.
import postgres from 'postgres'
import { sleep } from '../../shared/log.js'
import { percentile } from '../../shared/stats.js'
import { BENCH_APPLICATION_NAME, log, type Config } from './config.js'
import { bump, type PluginModule } from './target.js'
import type { Workers } from './workers.js'

export interface BareFigures { bumps: number, timeouts: number, p50: number, p99: number, max: number, listeners: number }

export interface Propagation {
  bumps: number, timeouts: number, p50: number, p99: number, max: number, early: number, unverified: number, commitP50: number, commitMax: number
  /** N bare postgres.js listeners in the same workers, heard in the same rounds; null when they were not started. */
  bare: BareFigures | null
}

interface Report { at: bigint, version: number | null }

/** The workers' reports by round: worker index -> when its last instance (or bare listener) held a new version, and which. */
class Arrivals {
  readonly #rounds = new Map<number, Map<number, Report>>()
  #wake: (() => void) | null = null
  readonly workers: number

  constructor (workers: Workers, kind: 'plugin' | 'bare') {
    workers.children.forEach((child, i) => child.onEvent((event) => {
      if (event.event !== 'propagated' || (event.kind ?? 'plugin') !== kind) return
      const round = event.round as number
      if (!this.#rounds.has(round)) this.#rounds.set(round, new Map())
      this.#rounds.get(round)!.set(i, { at: BigInt(event.at as string), version: event.version as number | null })
      this.#wake?.()
    }))
    this.workers = workers.children.length
  }

  complete (round: number): boolean {
    return (this.#rounds.get(round)?.size ?? 0) === this.workers
  }

  /** Until every worker has reported `round`, or `deadline` (performance.now()) has passed. */
  async wait (round: number, deadline: number): Promise<void> {
    while (!this.complete(round) && performance.now() < deadline) {
      let timer: NodeJS.Timeout | undefined
      await new Promise<void>((resolve) => {
        this.#wake = resolve
        timer = setTimeout(resolve, Math.max(1, deadline - performance.now()))
      })
      clearTimeout(timer)
      this.#wake = null
    }
  }

  /** The reports of `round`, forgotten once taken. */
  take (round: number): Report[] {
    const reports = [...(this.#rounds.get(round)?.values() ?? [])]
    this.#rounds.delete(round)
    return reports
  }
}

// Long: the bump loop, with its arming, timing and checks, reads best in one piece.
export async function measurePropagation (config: Config, plugin: PluginModule, url: string, workers: Workers, bareListeners = 0): Promise<Propagation> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  const arrivals = new Arrivals(workers, 'plugin')
  const bareArrivals = bareListeners > 0 ? new Arrivals(workers, 'bare') : null
  try {
    const latencies: number[] = []
    const bareLatencies: number[] = []
    let bareTimeouts = 0
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
      await arrivals.wait(round, deadline)
      const counted = round >= config.warmupBumps
      if (bareArrivals !== null) {
        await bareArrivals.wait(round, deadline)
        const bareComplete = bareArrivals.complete(round)
        const bareReports = bareArrivals.take(round)
        if (counted && !bareComplete) bareTimeouts++
        if (counted && bareComplete) bareLatencies.push(Math.max(0, Number(bareReports.reduce((a, b) => a.at > b.at ? a : b).at - committed) / 1e6))
      }
      const complete = arrivals.complete(round)
      const reports = arrivals.take(round)
      if (!complete) {
        await Promise.all(workers.children.map((child) => child.call('disarm')))
        if (counted) timeouts++
        log(`propagation: version ${version} did not reach every instance within ${config.bumpTimeoutMs / 1000} s`)
      } else {
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
      commitMax: commits.length ? Math.max(...commits) : NaN,
      bare: bareArrivals === null
        ? null
        : {
            bumps: bareLatencies.length,
            timeouts: bareTimeouts,
            p50: percentile(bareLatencies, 50),
            p99: percentile(bareLatencies, 99),
            max: bareLatencies.length ? Math.max(...bareLatencies) : NaN,
            listeners: bareListeners
          }
    }
  } finally {
    await sql.end({ timeout: 1 })
  }
}
