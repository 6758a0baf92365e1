// Per-user invalidation (`--only=per-user`, or `invalidation`): two B servers, each
// on its own database so that only one of them ever hears a per-user change:
// "without" keeps an empty user map, as an app that never calls
// session_refresh_user does; "with" gets 1% of its users invalidated per second.
// Both get the same load: N sessions, one per user, round-robin over 32 connections.
import autocannon from 'autocannon'
import type { Sql } from 'postgres'
import type { Bench } from '../shared/bench.js'
import type { Child } from '../shared/child.js'
import type { BenchConfig } from '../shared/config.js'
import { createDatabase, dropDatabase, extraDatabases, type Database } from '../shared/database.js'
import { Client, eachLimited } from '../shared/http.js'
import { alternate } from '../shared/load.js'
import { log, sleep } from '../shared/log.js'
import { startAppServer, stop } from '../shared/processes.js'
import { byRound, collect, ms2, yes, type Row } from '../shared/report.js'
import type { Counters } from '../shared/server-kinds.js'
import { percentile, ratios, summarize } from '../shared/stats.js'

/** The share of its users invalidated each second. */
const INVALIDATED_PER_SECOND = 0.01

type Side = 'without' | 'with'
const SIDES: readonly Side[] = ['without', 'with']

interface InvalidationRound {
  rps: number, freshRps: number, p50: number, p99: number, freshP50: number, freshP99: number, requests: number,
  invalidated: number, refreshCalls: number, seconds: number, cpuPerRequest: number
}
interface InvalidationSide {
  rounds: InvalidationRound[], rps: number, freshRps: number, p50: number, p99: number, freshP50: number, freshP99: number, cpuPerRequest: number,
  invalidated: number, refreshCalls: number, requests: number, seconds: number
}
export interface Invalidation {
  users: number, perSecond: number, without: InvalidationSide, with: InvalidationSide,
  /** Over the whole section, warm-up included, after one last request from every session. */
  totalInvalidated: number, distinctInvalidated: number, totalRefreshCalls: number, pluginRefreshes: number,
  userVersions: number, userVersionsWithout: number, refreshCallsWithout: number
}

interface Server { child: Child, port: number, cookies: string[] }

/** Who is invalidated next (the users shuffled, once through before any repeats), and how many were. */
class Invalidator {
  readonly #order: number[]
  #next = 0
  total = 0
  readonly distinct = new Set<number>()

  constructor (ids: number[], readonly sql: Sql, readonly perSecond: number) {
    const order = [...ids]
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!]
    }
    this.#order = order
  }

  /**
   * `perSecond` users a second, spread evenly, each with its own session_refresh_user
   * call (its own transaction and notification), until the load ends; `now` gets the
   * index of each one's session.
   */
  async run (seconds: number, over: () => boolean, now: Set<number>): Promise<void> {
    const t0 = performance.now()
    // autocannon ends its run at the first whole-second tick past `seconds`.
    const max = Math.ceil(Math.ceil(seconds) * this.perSecond)
    for (let i = 0; i < max && !over(); i++) {
      const due = t0 + (i * 1000) / this.perSecond
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait)
      if (over()) break
      const id = this.#order[this.#next++ % this.#order.length]!
      await this.sql`select session_refresh_user(${String(id)})`
      now.add(id - 1)
      this.distinct.add(id)
      this.total++
    }
  }
}

/** autocannon on `GET /hello`, each request with the next session's cookie; per request, which session sent it and how long it took. */
function loadEverySession (port: number, cookies: string[], seconds: number, connections: number):
{ done: Promise<autocannon.Result>, sentBy: number[], latencies: number[] } {
  const sentBy: number[] = []
  const latencies: number[] = []
  let next = 0
  const done = new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon({
      url: `http://127.0.0.1:${port}/hello`,
      connections,
      duration: seconds,
      headers: { accept: 'application/json' },
      requests: [{
        setupRequest: (request, context) => {
          const index = next++ % cookies.length
          ;(context as { index?: number }).index = index
          return { ...request, headers: { ...request.headers, cookie: cookies[index]! } }
        }
      }]
    }, (err, result) => { if (err) reject(err as Error); else resolve(result) })
    instance.on('response', (client, _status, _bytes, ms) => {
      // autocannon builds the next request only after this event, so the context is still this request's.
      sentBy.push((client as unknown as { requestIterator: { context: { index: number } } }).requestIterator.context.index)
      latencies.push(ms)
    })
  })
  return { done, sentBy, latencies }
}

async function runSide (config: BenchConfig, side: Side, { child, port, cookies }: Server, invalidator: Invalidator, seconds: number): Promise<InvalidationRound> {
  const before = await child.call<Counters>('counters')
  const invalidatedNow = new Set<number>()
  let loadOver = false
  const load = loadEverySession(port, cookies, seconds, config.connections)
  const invalidating = side === 'without' ? Promise.resolve() : invalidator.run(seconds, () => loadOver, invalidatedNow)
  const result = await load.done.finally(() => { loadOver = true })
  await invalidating
  const after = await child.call<Counters>('counters')
  if (result.errors > 0 || result.non2xx > 0) {
    throw new Error(`invalidation ${side}: ${result.errors} errors, ${result.non2xx} non-2xx responses (by status: ${JSON.stringify(result.statusCodeStats)})`)
  }
  const requests = result.requests.total
  const refreshCalls = after.refreshCalls - before.refreshCalls
  // Fresh: requests from sessions whose user was not invalidated during this round.
  const fresh = load.latencies.filter((_, i) => !invalidatedNow.has(load.sentBy[i]!))
  return {
    rps: requests / result.duration,
    // Every request but those that ran a refresh (one per invalidated user at most).
    freshRps: (requests - refreshCalls) / result.duration,
    p50: percentile(load.latencies, 50),
    p99: percentile(load.latencies, 99),
    freshP50: percentile(fresh, 50),
    freshP99: percentile(fresh, 99),
    requests,
    invalidated: invalidatedNow.size,
    refreshCalls,
    seconds: result.duration,
    cpuPerRequest: (after.cpuMicros - before.cpuMicros) / requests
  }
}

/** A B server on `db` with one session per user, each requested once. */
async function startServer (db: Database, ids: number[], started: Child[]): Promise<Server> {
  const { child, port } = await startAppServer('B', db.url)
  started.push(child)
  const client = new Client(port, 32)
  const cookies = await eachLimited(ids, 32, (id) => client.login(id))
  // One request from each session: the JIT's first look at the route, before any warm-up.
  await eachLimited(cookies, 32, (cookie) => client.request('GET', '/hello', cookie))
  client.close()
  await child.call('warmPool')
  return { child, port, cookies }
}

/** One last request from every session, so that every invalidation has been seen by a request. */
async function drain ({ port, cookies }: Server): Promise<void> {
  await sleep(200)
  const client = new Client(port, 32)
  await eachLimited(cookies, 32, async (cookie) => {
    const response = await client.request('GET', '/hello', cookie)
    if (response.status !== 200) throw new Error(`invalidation drain: ${response.status} ${response.body}`)
  })
  client.close()
}

const summary = (list: InvalidationRound[]): InvalidationSide => ({
  rounds: list,
  ...summarize(list, ['rps', 'freshRps', 'p50', 'p99', 'freshP50', 'freshP99', 'cpuPerRequest'], ['invalidated', 'refreshCalls', 'requests', 'seconds'])
})

export async function measurePerUser ({ config, db, server, users: rows }: Bench): Promise<Invalidation> {
  const { users, seconds: roundSeconds, warmupSeconds } = config.invalidation
  const perSecond = users * INVALIDATED_PER_SECOND
  const ids = Array.from({ length: users }, (_, i) => i + 1)
  const other = await createDatabase(server, rows)
  extraDatabases.add(other)
  const invalidator = new Invalidator(ids, other.sql, perSecond)
  const started: Child[] = []
  try {
    const [without, withUsers] = await Promise.all([startServer(db, ids, started), startServer(other, ids, started)])
    const sides: Record<Side, Server> = { without: without!, with: withUsers! }
    log(`invalidation: ${users} sessions each on two B servers, ${perSecond} users/s invalidated on one; warming up (${warmupSeconds} s each)`)
    if (warmupSeconds > 0) {
      for (const side of SIDES) await runSide(config, side, sides[side], invalidator, warmupSeconds)
    }
    const rounds = await alternate(SIDES, config.rounds, async (side, round) => {
      const figures = await runSide(config, side, sides[side], invalidator, roundSeconds)
      log(`invalidation round ${round}/${config.rounds} ${side}: ${Math.round(figures.rps)} req/s, p99 ${figures.p99.toFixed(1)} ms, ${figures.cpuPerRequest.toFixed(0)} µs CPU, ` +
        `${figures.invalidated} invalidated, ${figures.refreshCalls} refreshes`)
      return figures
    })
    // Then refresh calls must equal invalidations exactly.
    await drain(sides.with)
    const final = await sides.with.child.call<Counters>('counters')
    const finalWithout = await sides.without.child.call<Counters>('counters')
    return {
      users,
      perSecond,
      without: summary(rounds.without),
      with: summary(rounds.with),
      totalInvalidated: invalidator.total,
      distinctInvalidated: invalidator.distinct.size,
      totalRefreshCalls: final.refreshCalls,
      pluginRefreshes: final.pluginRefreshes!,
      userVersions: final.userVersions!,
      userVersionsWithout: finalWithout.userVersions!,
      refreshCallsWithout: finalWithout.refreshCalls
    }
  } finally {
    for (const child of started) await stop(child)
    await dropDatabase(server, other).catch((err: unknown) => log(`could not drop ${other.name}: ${String(err)}`))
  }
}

export function perUserRows (inv: Invalidation): Row[] {
  const { rows, add } = collect()
  for (const side of SIDES) {
    const f = inv[side]
    const label = side === 'without' ? 'invalidation, none' : `invalidation, ${inv.perSecond} of ${inv.users} users/s`
    add(`${label}: fresh sessions' req/s (median of ${f.rounds.length}); all requests`, `${Math.round(f.freshRps)}; ${Math.round(f.rps)}`)
    add(`${label}: fresh sessions' latency p50 / p99 ms; all requests`, `${ms2(f.freshP50)} / ${ms2(f.freshP99)}; ${ms2(f.p50)} / ${ms2(f.p99)}`)
    add(`${label}: app server CPU per request, µs (median)`, f.cpuPerRequest.toFixed(1))
  }
  const { ofMedians: ratio, paired } = ratios(inv.with.rounds.map((r) => r.freshRps), inv.without.rounds.map((r) => r.freshRps))
  // Judged on the paired ratio: the two runs of a round are seconds apart, while the
  // machine's other load can halve throughput between the first rounds and the last.
  add('invalidation: fresh sessions\' throughput with / without: median of per-round ratios (ratio of medians)',
    `${paired.toFixed(3)} (${ratio.toFixed(3)})`, '≥ 0.97', yes(paired >= 0.97))
  add('invalidation: app server CPU per request with / without', (inv.with.cpuPerRequest / inv.without.cpuPerRequest).toFixed(3))
  add('invalidation: users invalidated / refresh calls in the measured windows',
    `${inv.with.invalidated} / ${inv.with.refreshCalls} over ${inv.with.seconds.toFixed(0)} s (${(inv.with.invalidated / inv.with.seconds).toFixed(1)}/s)`)
  const exact = inv.totalRefreshCalls === inv.totalInvalidated && inv.pluginRefreshes === inv.totalInvalidated
  add('invalidation: refresh calls (counted in refresh; plugin status) after one last request per session',
    `${inv.totalRefreshCalls}; ${inv.pluginRefreshes}`, `= ${inv.totalInvalidated} invalidations`, yes(exact))
  add('invalidation: user map size (status().userVersions) with; without',
    `${inv.userVersions}; ${inv.userVersionsWithout}`, `= ${inv.distinctInvalidated}; 0`,
    yes(inv.userVersions === inv.distinctInvalidated && inv.userVersionsWithout === 0 && inv.refreshCallsWithout === 0))
  return rows
}

export function perUserSetup (inv: Invalidation, config: BenchConfig): string {
  // How long until a session is requested again: sessions over the fresh requests' rate.
  const revisitMs = Math.round(inv.users / ((inv.with.requests - inv.with.refreshCalls) / inv.with.seconds) * 1000)
  return `- Per-user invalidation: two B servers, each on its own database, each with ${inv.users} sessions (one per user)
  requested round-robin on \`GET /hello\` by autocannon (${config.connections} connections), ${config.rounds} rounds of ${config.invalidation.seconds} s
  alternating the two after one request per session and a ${config.invalidation.warmupSeconds} s warm-up each. On one, the load generator calls
  \`SELECT session_refresh_user(id)\` for ${inv.perSecond} users a second (1%), spread evenly, one transaction each,
  only while that server is under load; the other never hears a per-user change, so its user map stays empty.
  "Fresh sessions' req/s" counts every request but those that ran a refresh (one per invalidated user);
  their latencies are those of users not invalidated in that round. The target is judged on the median of
  the per-round ratios (the two runs of a round are seconds apart), since other load on the machine can move
  throughput by half between the first rounds and the last, which the ratio of medians does not survive. Each invalidated user's session is requested
  again within about ${revisitMs} ms, so it refreshes once.`
}

export function perUserByRound (inv: Invalidation): string {
  return `## Per-user invalidation by round (fresh sessions' req/s)

${byRound('Server', SIDES.map((side) => [side, inv[side].rounds] as const), (x, side) =>
  `${Math.round(x.freshRps)} (p99 ${ms2(x.freshP99)} ms, ${x.cpuPerRequest.toFixed(0)} µs CPU${side === 'with' ? `, ${x.invalidated} inv., ${x.refreshCalls} ref.` : ''})`)}`
}
