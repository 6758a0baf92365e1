// Event streams (`--only=events`): N streams open on one B instance registered with
// `events`: the heap each costs, the time from a bump's COMMIT until each stream has
// read its `event: version`, and `GET /hello` throughput with the N streams open
// against none. The streams are held by a few client processes (bench/workers/event-streams.ts).
import { bumpSessionVersion } from '../../lib/index.js'
import type { Bench } from '../shared/bench.js'
import type { Child } from '../shared/child.js'
import type { BenchConfig } from '../shared/config.js'
import { Client, eachLimited } from '../shared/http.js'
import { alternate, loadRound, type Round, type Target } from '../shared/load.js'
import { hrMs, log, sleep, withTimeout } from '../shared/log.js'
import { fork, startAppServer, stop } from '../shared/processes.js'
import { byRound, collect, mb, ms2, yes, type Row } from '../shared/report.js'
import { EVENTS_PATH, MAX_EVENT_STREAMS } from '../shared/server-kinds.js'
import { percentile, ratios, summarize } from '../shared/stats.js'
import type { Arrivals } from '../workers/event-streams.js'

const CLIENT_FILE = new URL('../workers/event-streams.ts', import.meta.url)
/** Streams each client process opens at once. */
const OPEN_CONCURRENCY = 50
/** Streams opened and closed before the heap with none is taken (the route's first use, lazy modules). */
const WARM_STREAMS = 200
/** How long a bump may take to reach every stream. */
const ARRIVAL_TIMEOUT_MS = 15_000

type Side = 'none' | 'open'
const SIDES: readonly Side[] = ['none', 'open']

interface LoadSide { rounds: Round[], rps: number, p99: number, cpuPerRequest: number }

export interface Events {
  streams: number, clients: number, bumps: number, openSeconds: number
  /** The server's open connections with every stream open; streams that ended unasked. */
  connections: number, lost: number
  /** Heap after forced GCs: with no stream open, with all open, once all have closed. */
  heapNone: number, heapOpen: number, heapClosed: number
  /** Per stream and bump: ms from the COMMIT returning to the stream reading the event. */
  p50: number, p99: number, max: number
  /** Per bump: ms until the last stream had read it. */
  lastP50: number, lastMax: number
  delivered: number, expected: number
  none: LoadSide, open: LoadSide
}

interface Server extends Target { cookies: string[] }

/** A B server with `events`, with `streams` sessions for streams and one more for the load. */
async function startServer ({ db }: Bench, streams: number, started: Child[]): Promise<Server> {
  const { child, port } = await startAppServer('B', db.url, ['events'])
  started.push(child)
  const client = new Client(port, 32)
  const cookies = await eachLimited(Array.from({ length: streams }, (_, i) => i + 1), 32, (id) => client.login(id))
  const cookie = await client.login(streams + 1)
  client.close()
  await child.call('warmPool')
  return { child, port, cookie, cookies }
}

/** Until the server has `n` open connections (10 s at most); the last count seen. */
async function waitForConnections (child: Child, n: number): Promise<number> {
  let seen = -1
  for (let i = 0; i < 200 && seen !== n; i++) {
    if (i > 0) await sleep(50)
    seen = await child.call<number>('connections')
  }
  return seen
}

/** `cookies` spread over the clients, a stream each; resolves once every stream has read its first event. */
async function openStreams (clients: Child[], port: number, cookies: string[]): Promise<number> {
  const per = Math.ceil(cookies.length / clients.length)
  const counts = await withTimeout(Promise.all(clients.map((client, i) =>
    client.call<number>('open', { port, cookies: cookies.slice(i * per, (i + 1) * per), concurrency: OPEN_CONCURRENCY }))), 120_000, 'opening event streams')
  return counts.reduce((a, b) => a + b, 0)
}

async function closeStreams (clients: Child[]): Promise<void> {
  await Promise.all(clients.map((client) => client.call('end')))
}

/** Bumps, one at a time: from each COMMIT returning until each stream has read the new version. */
async function measureArrivals ({ config, db }: Bench, clients: Child[]): Promise<Pick<Events, 'p50' | 'p99' | 'max' | 'lastP50' | 'lastMax' | 'delivered' | 'expected'>> {
  const { bumps, warmupBumps } = config.events
  const latencies: number[] = []
  const lasts: number[] = []
  let delivered = 0
  let expected = 0
  for (let i = 0; i < warmupBumps + bumps; i++) {
    const version = await bumpSessionVersion(db.sql)
    // The bumping COMMIT (the UPDATE's autocommit) has returned.
    const committed = hrMs()
    const reports = await Promise.all(clients.map((client) => client.call<Arrivals>('arrivals', { version, timeoutMs: ARRIVAL_TIMEOUT_MS })))
    const times = reports.flatMap((r) => r.times)
    if (i >= warmupBumps) {
      // A stream may read it before this process sees its own COMMIT return: that counts as 0.
      latencies.push(...times.map((at) => Math.max(0, at - committed)))
      lasts.push(Math.max(0, Math.max(...times) - committed))
      delivered += times.length
      expected += reports.reduce((sum, r) => sum + r.open, 0)
      log(`events: bump ${i - warmupBumps + 1}/${bumps}: ${times.length} streams, the last ${lasts.at(-1)!.toFixed(1)} ms after COMMIT`)
    }
    // Every stream's write done and the server idle again before the next bump.
    await sleep(300)
  }
  return {
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    max: Math.max(...latencies),
    lastP50: percentile(lasts, 50),
    lastMax: Math.max(...lasts),
    delivered,
    expected
  }
}

/** `GET /hello` on the server with no stream and on the one with them all, in alternating rounds. */
async function measureLoad ({ config }: Bench, servers: Record<Side, Server>): Promise<Record<Side, LoadSide>> {
  const run = (side: Side, seconds: number): Promise<Round> => loadRound(`events ${side}`, servers[side], seconds, config.connections)
  log(`events: throughput, warming up (${config.warmupSeconds} s each)`)
  for (const side of SIDES) await run(side, config.warmupSeconds)
  const rounds = await alternate(SIDES, config.rounds, async (side, round) => {
    const figures = await run(side, config.seconds)
    log(`events round ${round}/${config.rounds} ${side === 'none' ? 'no streams' : `${config.events.streams} streams`}: ${Math.round(figures.rps)} req/s, p99 ${figures.p99} ms, ${figures.cpuPerRequest.toFixed(0)} µs CPU`)
    return figures
  })
  const side = (list: Round[]): LoadSide => ({ rounds: list, ...summarize(list, ['rps', 'p99', 'cpuPerRequest'], []) })
  return { none: side(rounds.none), open: side(rounds.open) }
}

export async function measureEvents (bench: Bench): Promise<Events> {
  const { streams, clients: k } = bench.config.events
  const started: Child[] = []
  try {
    log(`events: two B servers with ${streams + 1} sessions each; ${streams} streams on one, from ${k} client processes`)
    const servers: Record<Side, Server> = { none: await startServer(bench, streams, started), open: await startServer(bench, streams, started) }
    const clients = await Promise.all(Array.from({ length: k }, async () => (await fork(CLIENT_FILE, [])).child))
    started.push(...clients)
    const { child, port, cookies } = servers.open
    await openStreams(clients, port, cookies.slice(0, WARM_STREAMS))
    await closeStreams(clients)
    await waitForConnections(child, 0)
    const heapNone = await child.call<number>('heap')
    const t0 = performance.now()
    const opened = await openStreams(clients, port, cookies)
    const openSeconds = (performance.now() - t0) / 1000
    const connections = await waitForConnections(child, streams)
    const heapOpen = await child.call<number>('heap')
    log(`events: ${opened} streams open in ${openSeconds.toFixed(1)} s (${connections} connections), heap ${mb(heapNone)} → ${mb(heapOpen)} MB`)
    const arrivals = await measureArrivals(bench, clients)
    const load = await measureLoad(bench, servers)
    const lost = (await Promise.all(clients.map((client) => client.call<number>('lost')))).reduce((a, b) => a + b, 0)
    await closeStreams(clients)
    await waitForConnections(child, 0)
    const heapClosed = await child.call<number>('heap')
    return { streams, clients: k, bumps: bench.config.events.bumps, openSeconds, connections, lost, heapNone, heapOpen, heapClosed, ...arrivals, ...load }
  } finally {
    for (const child of started.reverse()) await stop(child)
  }
}

export function eventsRows (ev: Events): Row[] {
  const { rows, add } = collect()
  const n = ev.streams
  add(`events: heap with no stream → ${n} streams open → all closed (MB)`, `${mb(ev.heapNone)} → ${mb(ev.heapOpen)} → ${mb(ev.heapClosed)}`)
  add('events: heap per open stream', `${Math.round((ev.heapOpen - ev.heapNone) / n)} bytes`)
  add('events: streams open on the server (its open connections); ended unasked', `${ev.connections}; ${ev.lost}`, `= ${n}; 0`, yes(ev.connections === n && ev.lost === 0))
  add(`events, ${n} streams: COMMIT → a stream reads \`event: version\`, p50 / p99 / max ms (${ev.bumps} bumps)`, `${ms2(ev.p50)} / ${ms2(ev.p99)} / ${ms2(ev.max)}`)
  add(`events, ${n} streams: COMMIT → the last stream has read it, median / max ms over ${ev.bumps} bumps`, `${ms2(ev.lastP50)} / ${ms2(ev.lastMax)}`)
  add('events: every open stream read every bump\'s version', `${ev.delivered} of ${ev.expected}`, `= ${n * ev.bumps}`, yes(ev.delivered === n * ev.bumps && ev.expected === n * ev.bumps))
  for (const side of SIDES) {
    const f = ev[side]
    add(`events, ${side === 'none' ? 'no stream open' : `${n} streams open`}: GET /hello req/s (median of ${f.rounds.length}); p99 ms; app server CPU per request, µs`,
      `${Math.round(f.rps)}; ${f.p99}; ${f.cpuPerRequest.toFixed(1)}`)
  }
  const { ofMedians, paired } = ratios(ev.open.rounds.map((r) => r.rps), ev.none.rounds.map((r) => r.rps))
  add(`events: throughput with ${n} streams open / with none: median of per-round ratios (ratio of medians)`, `${paired.toFixed(3)} (${ofMedians.toFixed(3)})`)
  add(`events: app server CPU per request with ${n} streams open / with none`, (ev.open.cpuPerRequest / ev.none.cpuPerRequest).toFixed(3))
  return rows
}

export function eventsSetup (ev: Events, config: BenchConfig): string {
  return `- Event streams: two B servers registered with \`events: '${EVENTS_PATH}'\` and \`maxEventStreams: ${MAX_EVENT_STREAMS}\`,
  each with ${ev.streams + 1} logged-in sessions. On one, ${ev.streams} streams (one per session) are held by ${ev.clients} client
  processes over raw \`http\` (opened in ${ev.openSeconds.toFixed(1)} s, each counted open once it has read its first \`event: version\`).
  Heap: after two forced GCs with no stream open (after ${WARM_STREAMS} were opened and closed), with all open, and once
  all have closed; per stream = (open − none) / N. Delivery: ${ev.bumps} bumps (after ${config.events.warmupBumps} not counted),
  each by \`bumpSessionVersion\` on the load generator's own connection; from the moment its COMMIT returns until each
  client process reads the chunk that holds that version's \`event: version\`, on the machine's monotonic clock
  (\`process.hrtime.bigint()\` in every process). Throughput: autocannon on \`GET /hello\` with a logged-in cookie
  (${config.connections} connections), ${config.rounds} rounds of ${config.seconds} s alternating the server with no stream and the one with
  the ${ev.streams} open, after a ${config.warmupSeconds} s warm-up each.`
}

export function eventsByRound (ev: Events): string {
  return `## Event streams: throughput by round (req/s)

${byRound('Server', SIDES.map((side) => [side === 'none' ? 'no stream' : `${ev.streams} streams`, ev[side].rounds] as const),
  (x) => `${Math.round(x.rps)} (p99 ${x.p99} ms, ${x.cpuPerRequest.toFixed(0)} µs CPU)`)}`
}
