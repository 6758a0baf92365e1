// Refresh storm: server B, N logged-in sessions, one bump, then one request from
// each, while sessions logged in after the bump keep sending requests.
import { bumpSessionVersion } from '../../lib/index.js'
import type { Bench } from '../shared/bench.js'
import type { BenchConfig } from '../shared/config.js'
import { Client, eachLimited } from '../shared/http.js'
import { log } from '../shared/log.js'
import { startAppServer, stop, waitForVersion } from '../shared/processes.js'
import { collect, ms2, yes, type Row } from '../shared/report.js'
import { MAX_CONCURRENT_REFRESHES, type Counters } from '../shared/server-kinds.js'
import { percentile } from '../shared/stats.js'

const STORM_CONCURRENCY = 200
/** Sessions logged in after the bump, requesting throughout the storm; their users come after the storm's. */
export const FRESH_SESSIONS = 100
const FRESH_CONCURRENCY = 8

export interface Storm {
  sessions: number, ms: number, refreshCalls: number, pluginRefreshes: number, peak: number, refreshMeanMs: number, refreshMaxMs: number,
  p50: number, p99: number, freshRequests: number, freshP50: number, freshP99: number, allRefreshed: boolean
}

/** Requests from sessions that are already at the new version, until `over()`; their latencies. */
async function freshTraffic (client: Client, fresh: string[], over: () => boolean): Promise<number[]> {
  const latencies: number[] = []
  await Promise.all(Array.from({ length: FRESH_CONCURRENCY }, async (_, worker) => {
    for (let i = worker; !over() && i < 10_000_000; i += FRESH_CONCURRENCY) {
      const response = await client.request('GET', '/me', fresh[i % fresh.length]!)
      if (response.status !== 200) throw new Error(`fresh session: ${response.status} ${response.body}`)
      latencies.push(response.ms)
    }
  }))
  return latencies
}

export async function measureStorm ({ config, db }: Bench): Promise<Storm> {
  const { child, port } = await startAppServer('B', db.url)
  const client = new Client(port, STORM_CONCURRENCY)
  const freshClient = new Client(port, FRESH_CONCURRENCY)
  try {
    const ids = Array.from({ length: config.storm }, (_, i) => i + 1)
    // As many at once as the storm will use, so its sockets are open already.
    const stale = await eachLimited(ids, STORM_CONCURRENCY, (id) => client.login(id))
    await child.call('warmPool')
    const version = await bumpSessionVersion(db.sql)
    await waitForVersion(child, version)
    const freshIds = Array.from({ length: FRESH_SESSIONS }, (_, i) => config.storm + i + 1)
    const fresh = await eachLimited(freshIds, 20, (id) => freshClient.login(id))
    const before = await child.call<Counters>('counters')
    await child.call('resetPeak')

    let stormOver = false
    const freshLatencies = freshTraffic(freshClient, fresh, () => stormOver)
    log(`storm: ${config.storm} stale sessions, ${STORM_CONCURRENCY} at a time`)
    const t0 = performance.now()
    let allRefreshed = true
    const latencies = await eachLimited(stale, STORM_CONCURRENCY, async (cookie) => {
      const response = await client.request('GET', '/me', cookie)
      const body = JSON.parse(response.body) as { sessionVersion?: unknown }
      if (response.status !== 200 || body.sessionVersion !== version) allRefreshed = false
      return response.ms
    })
    const ms = performance.now() - t0
    stormOver = true
    const freshMs = await freshLatencies
    const after = await child.call<Counters>('counters')
    return {
      sessions: config.storm,
      ms,
      refreshCalls: after.refreshCalls - before.refreshCalls,
      pluginRefreshes: after.pluginRefreshes! - before.pluginRefreshes!,
      peak: after.refreshPeak,
      refreshMeanMs: (after.refreshMs - before.refreshMs) / (after.refreshCalls - before.refreshCalls),
      refreshMaxMs: after.refreshMaxMs,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      freshRequests: freshMs.length,
      freshP50: percentile(freshMs, 50),
      freshP99: percentile(freshMs, 99),
      allRefreshed
    }
  } finally {
    client.close()
    freshClient.close()
    await stop(child)
  }
}

export function stormRows (st: Storm): Row[] {
  const { rows, add } = collect()
  add(`storm: time until all ${st.sessions} stale sessions refreshed`, `${Math.round(st.ms)} ms (${Math.round(st.sessions / (st.ms / 1000))} refreshes/s)`)
  add('storm: refresh calls (counted in refresh; plugin status)', `${st.refreshCalls}; ${st.pluginRefreshes}`, `= ${st.sessions}`, yes(st.refreshCalls === st.sessions && st.pluginRefreshes === st.sessions))
  add('storm: every stale request served with the new version', st.allRefreshed ? 'yes' : 'no', 'yes', yes(st.allRefreshed))
  add('storm: peak concurrent refreshes', String(st.peak), `≤ ${MAX_CONCURRENT_REFRESHES}`, yes(st.peak <= MAX_CONCURRENT_REFRESHES))
  add('storm: time inside refresh (one user-row SELECT) mean / max ms', `${ms2(st.refreshMeanMs)} / ${ms2(st.refreshMaxMs)}`)
  add('storm: stale sessions\' requests p50 / p99 ms', `${ms2(st.p50)} / ${ms2(st.p99)}`)
  add('storm: fresh sessions\' requests during the storm p50 / p99 ms', `${ms2(st.freshP50)} / ${ms2(st.freshP99)} (${st.freshRequests} requests)`)
  return rows
}

export function stormSetup (config: BenchConfig): string {
  return `- Storm: server B, \`maxConcurrentRefreshes: ${MAX_CONCURRENT_REFRESHES}\`, \`refresh\` reads the user's row through the pool.
  ${config.storm} sessions log in, one bump, then each sends one request, ${STORM_CONCURRENCY} at a time, while
  ${FRESH_SESSIONS} sessions that logged in after the bump send requests ${FRESH_CONCURRENCY} at a time.`
}
