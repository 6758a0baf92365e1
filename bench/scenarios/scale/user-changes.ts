// Per-user changes at scale: `--scale-user-rate` (100) changes a second of distinct users for
// `--scale-user-seconds` (10 s), from one connection, each one autocommit
// `select session_refresh_user(<id>)`, against the N instances; in each mode (notify, poll).
//
// Exact, and cheap for the instances: the changes are of users that never changed before,
// sent one after another on one connection (postgres.js queues them in order), so they
// commit in the order sent and every snapshot holds a prefix of them. An instance therefore
// holds the k-th change exactly when the users it tracks (status().userVersions) number at
// least base + k, base being the rows of session_user_versions before the first change
// (every instance must hold exactly that many before it starts). See bench/workers/scale.ts.
import os from 'node:os'
import postgres from 'postgres'
import { sleep } from '../../shared/log.js'
import { percentile } from '../../shared/stats.js'
import { BENCH_APPLICATION_NAME, CLK_TCK, log, type Config } from './config.js'
import { queryRates, readCounters, type QueryRates } from './counters.js'
import { coresBetween, processTicks, sampleCpu } from './cpu.js'
import type { Target } from './target.js'
import { armUsers, status, usersProgress, usersReports, type Workers } from './workers.js'

export type UserMode = 'notify' | 'poll'

export interface UserChangesRun {
  mode: UserMode
  /** Changes planned (rate × seconds), sent, and skipped because the database was a whole backlog behind. */
  planned: number
  sent: number
  skipped: number
  /** Changes whose COMMIT returned within the send window, per second of it: the rate achieved. */
  rate: number
  /** Changes that did not commit within the drain allowance after the window. */
  uncommitted: number
  /** From each change's COMMIT (as the bench saw it return) until every instance held it, ms. */
  reachP50: number
  reachP99: number
  reachMax: number
  /** Changes that some instance did not hold within `--scale-user-deadline` (10 s) of their COMMIT. */
  late: number
  /** COMMIT returned, from the moment the change was due to be sent, ms (includes waiting behind earlier ones). */
  commitP50: number
  commitP99: number
  /** DB CPU over the send window, cores. */
  cores: number
  /** The instances' processes' CPU over the send window, cores: on this machine they share the cores with the database. */
  workerCores: number
  /** The machine's 1-minute load average when the run started. */
  load: number
  /** The plugin's queries over the send window (the bench's own session_refresh_user calls left out). */
  queries: QueryRates
  /** Reaches first seen by the 50 ms backstop, not right after bytes arrived (a measure of the method's slack). */
  byBackstop: number
}

const stateTable = async (sql: postgres.Sql): Promise<{ modes: boolean, rows: number }> => {
  const [row] = await sql<Array<{ modes: boolean, rows: number }>>`
    select exists (select 1 from information_schema.columns where table_name = 'session_refresh_state' and column_name = 'user_notify' and table_schema = current_schema()) as modes,
           (select count(*)::int from session_user_versions) as rows`
  return row!
}

/** Whether the plugin under test has the two modes (the `user_notify` column of 0.2's session_refresh_state). */
export async function hasUserModes (url: string): Promise<boolean> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  try {
    return (await stateTable(sql)).modes
  } finally {
    await sql.end({ timeout: 1 })
  }
}

/**
 * Sets the mode as `npx session-refresh user-changes notify|poll` does, then makes every
 * instance read (a bump: the one notification every instance hears in both modes) and
 * waits until they all say so.
 */
export async function setUserMode (url: string, workers: Workers, mode: UserMode, bump: (sql: postgres.Sql) => Promise<unknown>): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  try {
    await sql`update session_refresh_state set user_notify = ${mode === 'notify'}`
    await bump(sql)
    const until = performance.now() + 120_000
    for (;;) {
      const s = await status(workers)
      const want = mode === 'poll' ? s.instances : 0
      if (s.polling === want) return
      if (performance.now() > until) throw new Error(`after 120 s, ${s.polling} of ${s.instances} instances poll (wanted ${want})`)
      await sleep(500)
    }
  } finally {
    await sql.end({ timeout: 1 })
  }
}

/** Until every instance tracks exactly `rows` users, or `ms` has passed; the counts seen. */
async function settleUsers (workers: Workers, rows: number, ms: number): Promise<{ minUsers: number, maxUsers: number }> {
  const until = performance.now() + ms
  for (;;) {
    const s = await status(workers)
    if ((s.minUsers === rows && s.maxUsers === rows) || performance.now() > until) return s
    await sleep(200)
  }
}

// Long: one measured run in the order it happens (arm the workers, send the changes at their
// rate, wait for every instance, sample the database), which reads best in one piece.
export async function measureUserChanges (config: Config, target: Target, database: string, url: string, workers: Workers, n: number, mode: UserMode): Promise<UserChangesRun> {
  const { rate, seconds, deadlineMs } = config.userChanges
  const planned = Math.round(rate * seconds)
  const sql = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: BENCH_APPLICATION_NAME } })
  const prefix = `scale-${mode}-${Date.now().toString(36)}`
  try {
    // The statement prepared and the connection made before the clock starts, then every instance
    // holding every row there is: the count each change is measured against.
    await sql`select session_refresh_user(${`${prefix}-warm-up`})`
    const { rows } = await stateTable(sql)
    const settled = await settleUsers(workers, rows, 60_000)
    if (settled.minUsers !== rows || settled.maxUsers !== rows) {
      throw new Error(`the instances track ${settled.minUsers}–${settled.maxUsers} users, the table holds ${rows}: a count cannot say which change they hold`)
    }
    await armUsers(workers, rows, planned)

    const interval = 1000 / rate
    // A backlog of more than half a second of changes means the database cannot keep this rate:
    // changes due then are skipped (and counted), so the run ends in bounded time.
    const maxOutstanding = Math.max(1, Math.ceil(rate / 2))
    const commits: Array<bigint | null> = []
    const commitMs: number[] = []
    let outstanding = 0
    let skipped = 0
    let failed = 0
    const load = os.loadavg()[0]!
    const cpuA = await sampleCpu(target, database)
    const countersA = await readCounters(target, database)
    const workerTicksA = await Promise.all(workers.pids.map(processTicks))
    const t0 = performance.now()
    const windowEnd = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9))
    for (let i = 0; i < planned; i++) {
      const due = t0 + i * interval
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait)
      if (outstanding >= maxOutstanding) {
        skipped++
        continue
      }
      const k = commits.length
      commits.push(null)
      outstanding++
      sql`select session_refresh_user(${`${prefix}-${i}`})`.then(() => {
        commits[k] = process.hrtime.bigint()
        commitMs.push(performance.now() - due)
      }, (err: unknown) => {
        if (failed++ === 0) log(`N=${n}: per-user ${mode}: ${String(err)}`)
      }).finally(() => { outstanding-- })
    }
    await sleep(Math.max(0, t0 + seconds * 1000 - performance.now()))
    const workerTicksB = await Promise.all(workers.pids.map(processTicks))
    const countersB = await readCounters(target, database)
    const cpuB = await sampleCpu(target, database)
    const sum = (list: number[]): number => list.reduce((a, b) => a + b, 0)
    const workerCores = (sum(workerTicksB) - sum(workerTicksA)) / CLK_TCK / ((cpuB.at - cpuA.at) / 1000)
    const inWindow = commits.filter((at) => at !== null && at <= windowEnd).length
    const sent = commits.length

    // Every change committed (bounded), then until every instance holds the last one, or the deadline after it.
    const drainUntil = performance.now() + 60_000
    while (outstanding > 0 && performance.now() < drainUntil) await sleep(20)
    const lastCommit = commits.reduce<bigint>((a, b) => b !== null && b > a ? b : a, 0n)
    const reachUntil = lastCommit === 0n ? 0 : Number(lastCommit / 1_000_000n) + deadlineMs
    while (Number(process.hrtime.bigint() / 1_000_000n) < reachUntil && (await usersProgress(workers)) < sent - failed) await sleep(50)
    const reports = await usersReports(workers)

    // The j-th change that committed is the one an instance holds once it tracks base + j users.
    const committed = commits.filter((at): at is bigint => at !== null)
    const reach: number[] = []
    let late = 0
    committed.forEach((at, j) => {
      const times = reports.map((r) => r.complete[j])
      if (times.some((t) => t === null || t === undefined)) { late++; return }
      const last = times.reduce<bigint>((a, b) => BigInt(b!) > a ? BigInt(b!) : a, 0n)
      const ms = Math.max(0, Number(last - at) / 1e6)
      if (ms > deadlineMs) late++
      reach.push(ms)
    })
    const run: UserChangesRun = {
      mode,
      planned,
      sent,
      skipped,
      rate: inWindow / seconds,
      uncommitted: sent - committed.length,
      reachP50: percentile(reach, 50),
      reachP99: percentile(reach, 99),
      reachMax: reach.length ? Math.max(...reach) : NaN,
      late,
      commitP50: percentile(commitMs, 50),
      commitP99: percentile(commitMs, 99),
      cores: coresBetween(cpuA, cpuB, target.ownsCluster),
      workerCores,
      load,
      queries: queryRates(countersA, countersB, /session_refresh_user/),
      byBackstop: reports.reduce((sum, r) => sum + r.byBackstop, 0)
    }
    log(`N=${n}: per-user ${mode}: ${sent} of ${planned} sent (${skipped} skipped), ${run.rate.toFixed(1)} commits/s, ` +
      `reach p50 ${run.reachP50.toFixed(1)} / p99 ${run.reachP99.toFixed(1)} / max ${run.reachMax.toFixed(1)} ms, ${late} not everywhere within ${deadlineMs / 1000} s, ` +
      `${run.uncommitted} uncommitted, DB ${run.cores.toFixed(2)} cores, instances ${workerCores.toFixed(2)} cores, ` +
      `plugin queries/s ${run.queries.total.toFixed(1)} (heartbeat ${run.queries.heartbeat.toFixed(1)}), ${run.byBackstop} seen by the backstop`)
    for (const q of run.queries.byQuery.slice(0, 4)) log(`N=${n}:   ${q.perSecond.toFixed(1)}/s, mean ${q.meanMs.toFixed(3)} ms  ${q.query}`)
    return run
  } finally {
    await sql.end({ timeout: 5 }).catch(() => {})
  }
}
