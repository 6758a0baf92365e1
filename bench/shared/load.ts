// HTTP load on an app server: autocannon from the bench's own process on
// `GET /hello` with one logged-in session's cookie, and rounds that alternate
// the servers compared so that a load drifting over a round favours none.
import autocannon from 'autocannon'
import type { Child } from './child.js'
import type { Counters } from './server-kinds.js'

/** One autocannon run against one server. */
export interface Round { rps: number, p50: number, p99: number, p999: number, requests: number, queries: number, heartbeats: number, reads: number, seconds: number, cpuPerRequest: number }

/** An app server under load: its process, its port, and the cookie of a session logged in on it. */
export interface Target { child: Child, port: number, cookie: string }

/** `GET /hello` for `seconds` over `connections`, with the server's own counters read before and after. */
export async function loadRound (name: string, { child, port, cookie }: Target, seconds: number, connections: number): Promise<Round> {
  const before = await child.call<Counters>('counters')
  const result = await autocannon({
    url: `http://127.0.0.1:${port}/hello`,
    connections,
    duration: seconds,
    headers: { cookie, accept: 'application/json' }
  })
  const after = await child.call<Counters>('counters')
  if (result.errors > 0 || result.non2xx > 0) throw new Error(`server ${name}: ${result.errors} errors, ${result.non2xx} non-2xx responses`)
  const requests = result.requests.total
  const queries = (after.hookQueries - before.hookQueries) + (after.pluginQueries - before.pluginQueries)
  return {
    rps: requests / result.duration,
    p50: result.latency.p50,
    p99: result.latency.p99,
    p999: result.latency.p99_9,
    requests,
    queries,
    heartbeats: after.pluginHeartbeats - before.pluginHeartbeats,
    reads: after.pluginReads - before.pluginReads,
    seconds: result.duration,
    cpuPerRequest: (after.cpuMicros - before.cpuMicros) / requests
  }
}

/**
 * `rounds` rounds over `sides`: in their order on odd rounds, reversed on even ones
 * (A B C D, then D C B A), so that every side sits next to every other in turn.
 * Rounds are numbered from `first`.
 */
export async function alternate<S extends string, R> (
  sides: readonly S[], rounds: number, run: (side: S, round: number) => Promise<R>, first = 1
): Promise<Record<S, R[]>> {
  const out = Object.fromEntries(sides.map((side) => [side, [] as R[]])) as Record<S, R[]>
  for (let round = first; round < first + rounds; round++) {
    const order = round % 2 === 1 ? sides : [...sides].reverse()
    for (const side of order) out[side].push(await run(side, round))
  }
  return out
}
