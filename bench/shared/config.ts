// The sizes of a run: `--quick` (under a minute) or full (about 7 minutes).

export interface BenchConfig {
  quick: boolean
  /** Throughput rounds (also per-user invalidation's and the event streams'), their length and warm-up, in s. */
  rounds: number
  seconds: number
  warmupSeconds: number
  /** autocannon's connections. */
  connections: number
  /** Propagation: bumps per run, and the listener counts. */
  bumps: number
  sizes: number[]
  /** Sessions in the refresh storm, and in the memory run. */
  storm: number
  memory: number
  invalidation: { users: number, seconds: number, warmupSeconds: number }
  /** Open event streams on one instance, the processes that hold them, and bumps measured (after warm-up ones). */
  events: { streams: number, clients: number, bumps: number, warmupBumps: number }
}

export function benchConfig (quick: boolean): BenchConfig {
  return quick
    ? {
        quick, rounds: 2, seconds: 1.5, warmupSeconds: 0.5, connections: 32, bumps: 30, sizes: [1, 4, 16, 64], storm: 1_500, memory: 4_000,
        invalidation: { users: 1_000, seconds: 1, warmupSeconds: 0 },
        events: { streams: 1_000, clients: 2, bumps: 5, warmupBumps: 2 }
      }
    : {
        quick, rounds: 8, seconds: 4, warmupSeconds: 2, connections: 32, bumps: 200, sizes: [1, 4, 16, 64], storm: 5_000, memory: 100_000,
        invalidation: { users: 1_000, seconds: 4, warmupSeconds: 2 },
        events: { streams: 10_000, clients: 2, bumps: 10, warmupBumps: 2 }
      }
}
