// `npm run bench` (full) and `npm run bench:quick` (reduced, under 60 s).
//
// This process is the load generator. Every app server runs in its own Node
// process (bench/server.ts), and the propagation listeners in another
// (bench/propagation-worker.ts): on a 2-core machine a load generator in the
// server's own event loop would steal the very CPU it is measuring, and an
// in-process autocannon would add its own GC pauses to the server's latencies.
// Only one server is under load at a time; the others sit idle.
//
// Environment: DATABASE_URL to use an existing server (else an embedded
// PostgreSQL is started and stopped), BENCH_CPU_PROF=<dir> to run the app
// servers with `node --cpu-prof`.
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import os from 'node:os'
import autocannon from 'autocannon'
import postgres, { type Sql } from 'postgres'
import { bumpSessionVersion, migrate } from '../lib/index.js'
import { startServer, stopServer, type ServerInfo } from '../test/setup/server.js'
import { forkChild, type Child, type ChildEvent } from './child.js'
import { runScale, withScaleSection } from './scale.js'
import { Client, eachLimited, median, percentile } from './http.js'
import { MAX_CONCURRENT_REFRESHES, POOL_SIZE, SERVER_KINDS, type Counters, type ServerKind } from './server-kinds.js'

const quick = process.argv.includes('--quick')
// `--only=storm,memory` runs some sections, for profiling; it prints the table but leaves RESULTS.md alone.
// `scale` (bench/scale.ts) runs only when named, with clusters of its own, and writes its own section of RESULTS.md.
const SECTIONS = ['throughput', 'invalidation', 'propagation', 'storm', 'memory', 'scale'] as const
const onlyArg = process.argv.find((arg) => arg.startsWith('--only='))?.slice('--only='.length).split(',')
for (const name of onlyArg ?? []) if (!(SECTIONS as readonly string[]).includes(name)) throw new Error(`--only: unknown section ${name}; known: ${SECTIONS.join(', ')}`)
const runs = (section: typeof SECTIONS[number]): boolean => onlyArg === undefined || onlyArg.includes(section)
const config = quick
  ? { rounds: 2, seconds: 1.5, warmupSeconds: 0.5, connections: 32, bumps: 30, sizes: [1, 4, 16, 64], storm: 1_500, memory: 4_000, invalidation: { users: 1_000, seconds: 1, warmupSeconds: 0 } }
  : { rounds: 8, seconds: 4, warmupSeconds: 2, connections: 32, bumps: 200, sizes: [1, 4, 16, 64], storm: 5_000, memory: 100_000, invalidation: { users: 1_000, seconds: 4, warmupSeconds: 2 } }
const STORM_CONCURRENCY = 200
const FRESH_SESSIONS = 100
const FRESH_CONCURRENCY = 8
/** The invalidation run: the share of its users invalidated each second. */
const INVALIDATED_PER_SECOND = 0.01
const USERS = Math.max(config.storm + FRESH_SESSIONS, config.memory, config.invalidation.users) + 10

const SERVER_FILE = new URL('./server.ts', import.meta.url)
const WORKER_FILE = new URL('./propagation-worker.ts', import.meta.url)
const RESULTS_FILE = new URL('./RESULTS.md', import.meta.url)
const cpuProfDir = process.env.BENCH_CPU_PROF

const children = new Set<Child>()
const started = Date.now()
const log = (message: string): void => { console.error(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${message}`) }
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

async function fork (file: URL, args: string[]): Promise<{ child: Child, ready: ChildEvent }> {
  const forked = await forkChild(file, args, cpuProfDir ? { cpuProfDir } : {})
  children.add(forked.child)
  return forked
}

async function stop (child: Child): Promise<void> {
  children.delete(child)
  await child.stop()
}

async function startAppServer (kind: ServerKind, url: string): Promise<{ child: Child, port: number }> {
  const { child, ready } = await fork(SERVER_FILE, [kind, url])
  return { child, port: ready.port as number }
}

// ---------------------------------------------------------------- database

interface Database { url: string, sql: Sql, name: string, postgresVersion: string, maxConnections: number }

function databaseUrl (serverUrl: string, database: string): string {
  const url = new URL(serverUrl)
  url.pathname = `/${database}`
  return url.toString()
}

async function createDatabase (server: ServerInfo): Promise<Database> {
  const name = `fsr_bench_${randomBytes(6).toString('hex')}`
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`create database ${name}`)
  } finally {
    await admin.end()
  }
  const url = databaseUrl(server.url, name)
  const sql = postgres(url, { max: 4, onnotice: () => {} })
  await migrate(sql)
  await sql`create table bench_users (id integer primary key, name text not null)`
  await sql`insert into bench_users select i, 'user ' || i from generate_series(1, ${USERS}::int) as i`
  await sql`analyze bench_users`
  const [info] = await sql<{ version: string, max: string }[]>`
    select current_setting('server_version') as version, current_setting('max_connections') as max`
  return { url, sql, name, postgresVersion: info!.version, maxConnections: Number(info!.max) }
}

/** Databases created besides the main one, dropped by whoever made them or, on an interrupt, by the cleanup. */
const extraDatabases = new Set<Database>()

async function dropDatabase (server: ServerInfo, db: Database): Promise<void> {
  extraDatabases.delete(db)
  await db.sql.end({ timeout: 1 })
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`drop database if exists ${db.name} with (force)`)
  } finally {
    await admin.end()
  }
}

// ---------------------------------------------------------------- 1. throughput

interface Round { rps: number, p50: number, p99: number, p999: number, requests: number, queries: number, heartbeats: number, reads: number, seconds: number, cpuPerRequest: number }
interface ServerFigures {
  kind: ServerKind, rounds: Round[], rps: number, p50: number, p99: number, p999: number, cpuPerRequest: number,
  queriesPer1k: number, queries: number, heartbeats: number, reads: number, requests: number, seconds: number
}

async function measureThroughput (db: Database): Promise<ServerFigures[]> {
  const servers = new Map<ServerKind, { child: Child, port: number, cookie: string }>()
  try {
    for (const kind of SERVER_KINDS) {
      const { child, port } = await startAppServer(kind, db.url)
      const client = new Client(port, 1)
      const cookie = await client.login(1)
      client.close()
      servers.set(kind, { child, port, cookie })
    }
    const run = async (kind: ServerKind, seconds: number): Promise<Round> => {
      const { child, port, cookie } = servers.get(kind)!
      const before = await child.call<Counters>('counters')
      const result = await autocannon({
        url: `http://127.0.0.1:${port}/hello`,
        connections: config.connections,
        duration: seconds,
        headers: { cookie, accept: 'application/json' }
      })
      const after = await child.call<Counters>('counters')
      if (result.errors > 0 || result.non2xx > 0) throw new Error(`server ${kind}: ${result.errors} errors, ${result.non2xx} non-2xx responses`)
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
    log(`throughput: warming up A B C D (${config.warmupSeconds} s each)`)
    for (const kind of SERVER_KINDS) await run(kind, config.warmupSeconds)
    const rounds = new Map<ServerKind, Round[]>(SERVER_KINDS.map((kind) => [kind, []]))
    for (let round = 1; round <= config.rounds; round++) {
      // A B C D, then D C B A: a load that drifts over a round (this machine is
      // shared) then favours no server, and every B sits next to A, C and D in turn.
      const order = round % 2 === 1 ? SERVER_KINDS : [...SERVER_KINDS].reverse()
      for (const kind of order) {
        const figures = await run(kind, config.seconds)
        rounds.get(kind)!.push(figures)
        log(`throughput round ${round}/${config.rounds} ${kind}: ${Math.round(figures.rps)} req/s, p99 ${figures.p99} ms, ${figures.queries} queries`)
      }
    }
    return SERVER_KINDS.map((kind) => {
      const list = rounds.get(kind)!
      const requests = list.reduce((sum, r) => sum + r.requests, 0)
      const sum = (pick: (r: Round) => number): number => list.reduce((total, r) => total + pick(r), 0)
      const queries = sum((r) => r.queries)
      return {
        kind,
        rounds: list,
        rps: median(list.map((r) => r.rps)),
        p50: median(list.map((r) => r.p50)),
        p99: median(list.map((r) => r.p99)),
        p999: median(list.map((r) => r.p999)),
        cpuPerRequest: median(list.map((r) => r.cpuPerRequest)),
        queriesPer1k: (queries / requests) * 1000,
        queries,
        heartbeats: sum((r) => r.heartbeats),
        reads: sum((r) => r.reads),
        requests,
        seconds: sum((r) => r.seconds)
      }
    })
  } finally {
    for (const { child } of servers.values()) await stop(child)
  }
}

// ---------------------------------------------------------------- 2. per-user invalidation

// Two B servers, each on its own database so that only one of them ever hears a
// per-user change: "without" keeps an empty user map, as an app that never calls
// session_refresh_user does; "with" gets 1% of its users invalidated per second.
// Both get the same load: N sessions, one per user, round-robin over 32 connections.
interface InvalidationRound {
  rps: number, freshRps: number, p50: number, p99: number, freshP50: number, freshP99: number, requests: number,
  invalidated: number, refreshCalls: number, seconds: number, cpuPerRequest: number
}
interface InvalidationSide {
  rounds: InvalidationRound[], rps: number, freshRps: number, p50: number, p99: number, freshP50: number, freshP99: number, cpuPerRequest: number,
  invalidated: number, refreshCalls: number, requests: number, seconds: number
}
interface Invalidation {
  users: number, perSecond: number, without: InvalidationSide, with: InvalidationSide,
  /** Over the whole section, warm-up included, after one last request from every session. */
  totalInvalidated: number, distinctInvalidated: number, totalRefreshCalls: number, pluginRefreshes: number,
  userVersions: number, userVersionsWithout: number, refreshCallsWithout: number
}

async function measureInvalidation (db: Database, server: ServerInfo): Promise<Invalidation> {
  const { users, seconds: roundSeconds, warmupSeconds } = config.invalidation
  const perSecond = users * INVALIDATED_PER_SECOND
  const ids = Array.from({ length: users }, (_, i) => i + 1)
  // The order users are invalidated in: shuffled, once through before any repeats.
  const order = [...ids]
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!]
  }
  let nextVictim = 0
  let totalInvalidated = 0
  const distinct = new Set<number>()
  const other = await createDatabase(server)
  extraDatabases.add(other)
  const sides = new Map<'without' | 'with', { child: Child, port: number, cookies: string[], db: Database }>()
  try {
    await Promise.all(([['without', db], ['with', other]] as const).map(async ([side, sideDb]) => {
      const { child, port } = await startAppServer('B', sideDb.url)
      sides.set(side, { child, port, cookies: [], db: sideDb })
      const client = new Client(port, 32)
      const cookies = await eachLimited(ids, 32, (id) => client.login(id))
      // One request from each session: the JIT's first look at the route, before any warm-up.
      await eachLimited(cookies, 32, (cookie) => client.request('GET', '/hello', cookie))
      client.close()
      await child.call('warmPool')
      sides.get(side)!.cookies = cookies
    }))
    const run = async (side: 'without' | 'with', seconds: number): Promise<InvalidationRound> => {
      const { child, port, cookies } = sides.get(side)!
      const before = await child.call<Counters>('counters')
      // Per request: which session sent it and how long it took (the load generator's own count).
      const sentBy: number[] = []
      const latencies: number[] = []
      let next = 0
      const invalidatedNow = new Set<number>()
      let loadOver = false
      const load = new Promise<autocannon.Result>((resolve, reject) => {
        const instance = autocannon({
          url: `http://127.0.0.1:${port}/hello`,
          connections: config.connections,
          duration: seconds,
          headers: { accept: 'application/json' },
          requests: [{
            setupRequest: (request, context) => {
              const index = next++ % users
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
      // The invalidator: `perSecond` users a second, spread evenly, each with its own
      // session_refresh_user call (its own transaction and notification), until the load ends.
      const invalidator = side === 'without'
        ? Promise.resolve()
        : (async () => {
            const t0 = performance.now()
            // autocannon ends its run at the first whole-second tick past `seconds`.
            const max = Math.ceil(Math.ceil(seconds) * perSecond)
            for (let i = 0; i < max && !loadOver; i++) {
              const due = t0 + (i * 1000) / perSecond
              const wait = due - performance.now()
              if (wait > 0) await sleep(wait)
              if (loadOver) break
              const id = order[nextVictim++ % order.length]!
              await other.sql`select session_refresh_user(${String(id)})`
              invalidatedNow.add(id - 1)
              distinct.add(id)
              totalInvalidated++
            }
          })()
      const result = await load.finally(() => { loadOver = true })
      await invalidator
      const after = await child.call<Counters>('counters')
      if (result.errors > 0 || result.non2xx > 0) {
        throw new Error(`invalidation ${side}: ${result.errors} errors, ${result.non2xx} non-2xx responses (by status: ${JSON.stringify(result.statusCodeStats)})`)
      }
      const requests = result.requests.total
      const refreshCalls = after.refreshCalls - before.refreshCalls
      // Fresh: requests from sessions whose user was not invalidated during this round.
      const fresh = latencies.filter((_, i) => !invalidatedNow.has(sentBy[i]!))
      return {
        rps: requests / result.duration,
        // Every request but those that ran a refresh (one per invalidated user at most).
        freshRps: (requests - refreshCalls) / result.duration,
        p50: percentile(latencies, 50),
        p99: percentile(latencies, 99),
        freshP50: percentile(fresh, 50),
        freshP99: percentile(fresh, 99),
        requests,
        invalidated: invalidatedNow.size,
        refreshCalls,
        seconds: result.duration,
        cpuPerRequest: (after.cpuMicros - before.cpuMicros) / requests
      }
    }
    log(`invalidation: ${users} sessions each on two B servers, ${perSecond} users/s invalidated on one; warming up (${warmupSeconds} s each)`)
    if (warmupSeconds > 0) {
      await run('without', warmupSeconds)
      await run('with', warmupSeconds)
    }
    const rounds = { without: [] as InvalidationRound[], with: [] as InvalidationRound[] }
    for (let round = 1; round <= config.rounds; round++) {
      const order = round % 2 === 1 ? (['without', 'with'] as const) : (['with', 'without'] as const)
      for (const side of order) {
        const figures = await run(side, roundSeconds)
        rounds[side].push(figures)
        log(`invalidation round ${round}/${config.rounds} ${side}: ${Math.round(figures.rps)} req/s, p99 ${figures.p99.toFixed(1)} ms, ${figures.cpuPerRequest.toFixed(0)} µs CPU, ` +
          `${figures.invalidated} invalidated, ${figures.refreshCalls} refreshes`)
      }
    }
    // One last request from every session of "with", so that every invalidation has been
    // seen by a request: then refresh calls must equal invalidations exactly.
    await sleep(200)
    const { child, port, cookies } = sides.get('with')!
    const client = new Client(port, 32)
    await eachLimited(cookies, 32, async (cookie) => {
      const response = await client.request('GET', '/hello', cookie)
      if (response.status !== 200) throw new Error(`invalidation drain: ${response.status} ${response.body}`)
    })
    client.close()
    const final = await child.call<Counters>('counters')
    const finalWithout = await sides.get('without')!.child.call<Counters>('counters')
    const summary = (list: InvalidationRound[]): InvalidationSide => {
      const sum = (pick: (r: InvalidationRound) => number): number => list.reduce((total, r) => total + pick(r), 0)
      return {
        rounds: list,
        rps: median(list.map((r) => r.rps)),
        freshRps: median(list.map((r) => r.freshRps)),
        p50: median(list.map((r) => r.p50)),
        p99: median(list.map((r) => r.p99)),
        freshP50: median(list.map((r) => r.freshP50)),
        freshP99: median(list.map((r) => r.freshP99)),
        cpuPerRequest: median(list.map((r) => r.cpuPerRequest)),
        invalidated: sum((r) => r.invalidated),
        refreshCalls: sum((r) => r.refreshCalls),
        requests: sum((r) => r.requests),
        seconds: sum((r) => r.seconds)
      }
    }
    return {
      users,
      perSecond,
      without: summary(rounds.without),
      with: summary(rounds.with),
      totalInvalidated,
      distinctInvalidated: distinct.size,
      totalRefreshCalls: final.refreshCalls,
      pluginRefreshes: final.pluginRefreshes!,
      userVersions: final.userVersions!,
      userVersionsWithout: finalWithout.userVersions!,
      refreshCallsWithout: finalWithout.refreshCalls
    }
  } finally {
    for (const { child } of sides.values()) await stop(child)
    await dropDatabase(server, other).catch((err: unknown) => log(`could not drop ${other.name}: ${String(err)}`))
  }
}

// ---------------------------------------------------------------- 3. propagation

interface Propagation { mode: 'bare' | 'plugin', instances: number, bumps: number, p50: number, p99: number, max: number, beforeCommitReturned: number }

async function measurePropagation (db: Database): Promise<{ results: Propagation[], skipped: string[] }> {
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
      results.push(await propagateWith(db, instances, mode))
      const last = results.at(-1)!
      log(`propagation ${mode} × ${instances}: p50 ${last.p50.toFixed(2)} ms, p99 ${last.p99.toFixed(2)} ms, max ${last.max.toFixed(2)} ms`)
    }
  }
  return { results, skipped }
}

async function propagateWith (db: Database, instances: number, mode: 'bare' | 'plugin'): Promise<Propagation> {
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
    for (let i = 0; i < 5; i++) { await bumpOnce(); await sleep(5) } // warm-up, not counted
    const latencies: number[] = []
    let early = 0
    for (let i = 0; i < config.bumps; i++) {
      const ms = await bumpOnce()
      // Every listener may already hold it before this process sees its own COMMIT return.
      if (ms < 0) early++
      latencies.push(Math.max(0, ms))
      await sleep(5)
    }
    return {
      mode,
      instances,
      bumps: config.bumps,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      max: Math.max(...latencies),
      beforeCommitReturned: early
    }
  } finally {
    await stop(child)
  }
}

// ---------------------------------------------------------------- 4. refresh storm

interface Storm {
  sessions: number, ms: number, refreshCalls: number, pluginRefreshes: number, peak: number, refreshMeanMs: number, refreshMaxMs: number,
  p50: number, p99: number, freshRequests: number, freshP50: number, freshP99: number, allRefreshed: boolean
}

async function waitForVersion (child: Child, version: number): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if ((await child.call<Counters>('counters')).version === version) return
    await sleep(5)
  }
  throw new Error(`server B did not reach version ${version}`)
}

async function measureStorm (db: Database): Promise<Storm> {
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

    // Requests from sessions that are already at the new version, for as long as the storm lasts.
    let stormOver = false
    const freshLatencies: number[] = []
    const freshTraffic = Promise.all(Array.from({ length: FRESH_CONCURRENCY }, async (_, worker) => {
      for (let i = worker; !stormOver && i < 10_000_000; i += FRESH_CONCURRENCY) {
        const response = await freshClient.request('GET', '/me', fresh[i % fresh.length]!)
        if (response.status !== 200) throw new Error(`fresh session: ${response.status} ${response.body}`)
        freshLatencies.push(response.ms)
      }
    }))

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
    await freshTraffic
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
      freshRequests: freshLatencies.length,
      freshP50: percentile(freshLatencies, 50),
      freshP99: percentile(freshLatencies, 99),
      allRefreshed
    }
  } finally {
    client.close()
    freshClient.close()
    await stop(child)
  }
}

// ---------------------------------------------------------------- 5. memory

interface Memory { kind: ServerKind, sessions: number, start: number, after: number, cleared: number, refreshCalls: number, inFlight: number }

async function measureMemory (db: Database, kind: ServerKind): Promise<Memory> {
  const { child, port } = await startAppServer(kind, db.url)
  const client = new Client(port, 64)
  try {
    // Warm up JIT and pools on one session, so "start" is a steady state, not a cold process.
    const warm = await client.login(config.memory + 1)
    await eachLimited(Array.from({ length: 2000 }), 64, () => client.request('GET', '/me', warm))
    await child.call('warmPool')
    const start = await child.call<number>('heap')
    log(`memory ${kind}: ${config.memory} logins, then one request from each session`)
    const ids = Array.from({ length: config.memory }, (_, i) => i + 1)
    const cookies = await eachLimited(ids, 64, (id) => client.login(id))
    // On B every one of those requests then finds its session stale and refreshes it.
    if (kind === 'B') await waitForVersion(child, await bumpSessionVersion(db.sql))
    const before = await child.call<Counters>('counters')
    await eachLimited(cookies, 64, async (cookie) => {
      const response = await client.request('GET', '/me', cookie)
      if (response.status !== 200) throw new Error(`memory ${kind}: ${response.status} ${response.body}`)
    })
    const counters = await child.call<Counters>('counters')
    const after = await child.call<number>('heap')
    await child.call('clearSessions')
    const cleared = await child.call<number>('heap')
    return {
      kind,
      sessions: counters.sessions,
      start,
      after,
      cleared,
      refreshCalls: counters.refreshCalls - before.refreshCalls,
      inFlight: counters.refreshRunning
    }
  } finally {
    client.close()
    await stop(child)
  }
}

// ---------------------------------------------------------------- report

interface Results {
  date: string, node: string, postgres: string, cpus: number, cpuModel: string, databaseKind: string, loadBefore: number[], loadAfter: number[],
  throughput: ServerFigures[], invalidation: Invalidation | null, propagation: Propagation[], skipped: string[], storm: Storm | null, memory: Memory[], seconds: number
}

const mb = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1)
const ms2 = (ms: number): string => Number.isFinite(ms) ? ms.toFixed(2) : 'n/a'
const yes = (ok: boolean): string => ok ? 'yes' : '**NO**'

interface Row { figure: string, value: string, target: string, met: string }

function rows (r: Results): Row[] {
  const out: Row[] = []
  const add = (figure: string, value: string, target = '', met = ''): void => { out.push({ figure, value, target, met }) }
  const by = (kind: ServerKind): ServerFigures => r.throughput.find((s) => s.kind === kind)!
  const names: Record<ServerKind, string> = { A: 'A bare', B: 'B plugin', C: 'C pull version', D: 'D pull user' }
  for (const s of r.throughput) {
    add(`${names[s.kind]}: req/s (median of ${s.rounds.length})`, Math.round(s.rps).toString())
    add(`${names[s.kind]}: latency p50 / p99 / p99.9 ms`, `${s.p50} / ${s.p99} / ${s.p999}`)
    add(`${names[s.kind]}: app server CPU per request, µs (median)`, s.cpuPerRequest.toFixed(1))
    if (s.kind !== 'B') {
      add(`${names[s.kind]}: DB queries per 1,000 requests`, `${s.queriesPer1k.toFixed(2)} (${s.queries} in ${s.requests} requests)`)
      continue
    }
    // B's only queries are timer-driven: a heartbeat every 10 s and a re-read
    // (four queries) every 30 s per instance, whatever the load. Anything beyond
    // what the load windows' length allows, or any other query, is per-request work.
    const heartbeatsAllowed = s.rounds.length + Math.ceil(s.seconds / 10)
    const readsAllowed = 4 * (s.rounds.length + Math.ceil(s.seconds / 30))
    const other = s.queries - s.heartbeats - s.reads
    const perRequest = other === 0 && s.heartbeats <= heartbeatsAllowed && s.reads <= readsAllowed
    add(`${names[s.kind]}: DB queries per 1,000 requests`,
      `${s.queriesPer1k.toFixed(2)} (${s.queries} in ${s.requests} requests over ${s.seconds.toFixed(0)} s: ${s.heartbeats} heartbeats, ${s.reads} timed re-reads, ${other} other)`,
      '0 per request', yes(perRequest))
  }
  if (r.throughput.length > 0) {
    const cpu = by('B').cpuPerRequest / by('A').cpuPerRequest
    add('B/A app server CPU per request (less sensitive to other load on the machine)', cpu.toFixed(3))
    for (const [other, target, digits] of [['A', 0.98, 3], ['C', 1.5, 2], ['D', 1.5, 2]] as const) {
      const { ofMedians, paired } = ratios(by('B'), by(other))
      add(`B/${other} throughput: ratio of medians (median of per-round ratios)`, `${ofMedians.toFixed(digits)} (${paired.toFixed(digits)})`,
        `≥ ${target}`, yes(ofMedians >= target))
    }
  }
  const inv = r.invalidation
  if (inv) {
    for (const side of ['without', 'with'] as const) {
      const f = inv[side]
      const label = side === 'without' ? 'invalidation, none' : `invalidation, ${inv.perSecond} of ${inv.users} users/s`
      add(`${label}: fresh sessions' req/s (median of ${f.rounds.length}); all requests`, `${Math.round(f.freshRps)}; ${Math.round(f.rps)}`)
      add(`${label}: fresh sessions' latency p50 / p99 ms; all requests`, `${ms2(f.freshP50)} / ${ms2(f.freshP99)}; ${ms2(f.p50)} / ${ms2(f.p99)}`)
      add(`${label}: app server CPU per request, µs (median)`, f.cpuPerRequest.toFixed(1))
    }
    const paired = median(inv.with.rounds.map((round, i) => round.freshRps / inv.without.rounds[i]!.freshRps))
    const ratio = inv.with.freshRps / inv.without.freshRps
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
  }
  for (const p of r.propagation) {
    const target = p.mode === 'plugin' && p.instances === 16 ? 3 : p.mode === 'plugin' && p.instances === 64 ? 5 : null
    add(`propagation, ${p.instances} ${p.mode === 'plugin' ? 'plugin instances' : 'bare postgres.js listeners'}: p50 / p99 / max ms (${p.bumps} bumps)`,
      `${ms2(p.p50)} / ${ms2(p.p99)} / ${ms2(p.max)}`,
      target === null ? '' : `p99 < ${target}`, target === null ? '' : yes(p.p99 < target))
  }
  for (const s of r.skipped) add('propagation skipped', s)
  const st = r.storm
  if (st) {
    add(`storm: time until all ${st.sessions} stale sessions refreshed`, `${Math.round(st.ms)} ms (${Math.round(st.sessions / (st.ms / 1000))} refreshes/s)`)
    add('storm: refresh calls (counted in refresh; plugin status)', `${st.refreshCalls}; ${st.pluginRefreshes}`, `= ${st.sessions}`, yes(st.refreshCalls === st.sessions && st.pluginRefreshes === st.sessions))
    add('storm: every stale request served with the new version', st.allRefreshed ? 'yes' : 'no', 'yes', yes(st.allRefreshed))
    add('storm: peak concurrent refreshes', String(st.peak), `≤ ${MAX_CONCURRENT_REFRESHES}`, yes(st.peak <= MAX_CONCURRENT_REFRESHES))
    add('storm: time inside refresh (one user-row SELECT) mean / max ms', `${ms2(st.refreshMeanMs)} / ${ms2(st.refreshMaxMs)}`)
    add('storm: stale sessions\' requests p50 / p99 ms', `${ms2(st.p50)} / ${ms2(st.p99)}`)
    add('storm: fresh sessions\' requests during the storm p50 / p99 ms', `${ms2(st.freshP50)} / ${ms2(st.freshP99)} (${st.freshRequests} requests)`)
  }
  for (const m of r.memory) {
    add(`memory ${names[m.kind]}: heap start → after ${m.sessions} sessions → store cleared (MB)`,
      `${mb(m.start)} → ${mb(m.after)} → ${mb(m.cleared)}`)
    add(`memory ${names[m.kind]}: growth per session`, `${Math.round((m.after - m.start) / m.sessions)} bytes`)
  }
  const a = r.memory.find((m) => m.kind === 'A')
  const b = r.memory.find((m) => m.kind === 'B')
  if (a && b) {
    const extra = ((b.after - b.start) - (a.after - a.start)) / b.sessions
    add('memory: B − A growth per session (the stamp field in each stored session)', `${Math.round(extra)} bytes`)
    const retained = b.cleared - b.start
    add('memory B: heap retained once the session store is cleared', `${mb(retained)} MB (refreshes in flight: ${b.inFlight}, refresh calls: ${b.refreshCalls})`,
      '< 2 MB, 0 in flight', yes(retained < 2 * 1024 * 1024 && b.inFlight === 0))
  }
  return out
}

/** B's throughput over another's: of the medians, and the median of each round's ratio (measured seconds apart). */
function ratios (b: ServerFigures, other: ServerFigures): { ofMedians: number, paired: number } {
  return {
    ofMedians: b.rps / other.rps,
    paired: median(b.rounds.map((round, i) => round.rps / other.rounds[i]!.rps))
  }
}

function table (list: Row[]): string {
  const header = ['Figure', 'Value', 'Target', 'Met']
  const cells = list.map((row) => [row.figure, row.value, row.target, row.met])
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)))
  const line = (c: string[]): string => `| ${c.map((v, i) => v.padEnd(widths[i]!)).join(' | ')} |`
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n')
}

function markdown (r: Results, list: Row[]): string {
  const rounds = r.throughput.map((s) =>
    `| ${s.kind} | ${s.rounds.map((x) => `${Math.round(x.rps)} (p99 ${x.p99} ms, ${x.cpuPerRequest.toFixed(0)} µs CPU)`).join(' | ')} |`).join('\n')
  return `# Benchmark results

Generated by \`npm run bench${quick ? ':quick' : ''}\`${quick ? ' (**quick run: reduced sizes; run `npm run bench` for the figures to quote**)' : ''}.

- Date: ${r.date}
- Node: ${r.node}
- PostgreSQL: ${r.postgres} (${r.databaseKind}), on the same machine
- CPUs: ${r.cpus} × ${r.cpuModel}
- Run time: ${Math.round(r.seconds)} s
- Load average (1, 5, 15 min) before / after: ${r.loadBefore.map((l) => l.toFixed(2)).join(', ')} / ${r.loadAfter.map((l) => l.toFixed(2)).join(', ')}
  (anything else running on the machine shows here; the bench itself keeps about 2 busy)

## Setup

- Four app servers, each its own Node process, the same Fastify app with \`@fastify/cookie\`, \`@fastify/session\`
  (in-memory store, \`cookie.secure: false\`) and a \`GET /hello\` route answering \`{"hello":"world"}\`,
  requested with a real logged-in session cookie:
  **A** bare; **B** this plugin; **C** an \`onRequest\` hook that reads \`session_version\` per request;
  **D** an \`onRequest\` hook that re-reads the user's row per request. C and D use a postgres.js pool of ${POOL_SIZE}.
- autocannon runs in the bench's own process (the load generator), ${config.connections} connections, one server at a time,
  ${config.rounds} rounds of ${config.seconds} s alternating A B C D and D C B A after a ${config.warmupSeconds} s warm-up each; medians reported.
- DB queries: C and D count in their hooks; B counts every query its plugin's two connections send
  (the postgres.js \`debug\` callback on the plugin's \`connection\` options), so a per-request query would show up.
${r.invalidation ? `- Per-user invalidation: two B servers, each on its own database, each with ${r.invalidation.users} sessions (one per user)
  requested round-robin on \`GET /hello\` by autocannon (${config.connections} connections), ${config.rounds} rounds of ${config.invalidation.seconds} s
  alternating the two after one request per session and a ${config.invalidation.warmupSeconds} s warm-up each. On one, the load generator calls
  \`SELECT session_refresh_user(id)\` for ${r.invalidation.perSecond} users a second (1%), spread evenly, one transaction each,
  only while that server is under load; the other never hears a per-user change, so its user map stays empty.
  "Fresh sessions' req/s" counts every request but those that ran a refresh (one per invalidated user);
  their latencies are those of users not invalidated in that round. The target is judged on the median of
  the per-round ratios (the two runs of a round are seconds apart), since other load on the machine can move
  throughput by half between the first rounds and the last, which the ratio of medians does not survive. Each invalidated user's session is requested
  again within about ${Math.round(r.invalidation.users / ((r.invalidation.with.requests - r.invalidation.with.refreshCalls) / r.invalidation.with.seconds) * 1000)} ms, so it refreshes once.
` : ''}- Propagation: N listeners in one worker process; a separate process bumps with \`UPDATE\` (autocommit) and
  measures from the moment its COMMIT returns until the worker reports that every listener holds the new version
  (the plugin's "Session version is now" log line, then a check of every \`.version\`), on a shared monotonic clock.
  "bare" is N plain postgres.js \`sql.listen\` connections, the floor.
- Storm: server B, \`maxConcurrentRefreshes: ${MAX_CONCURRENT_REFRESHES}\`, \`refresh\` reads the user's row through the pool.
  ${config.storm} sessions log in, one bump, then each sends one request, ${STORM_CONCURRENCY} at a time, while
  ${FRESH_SESSIONS} sessions that logged in after the bump send requests ${FRESH_CONCURRENCY} at a time.
- Memory: heap after two forced GCs (\`--expose-gc\`) at start, after N logins plus one request from each of the N sessions
  (on B each of those requests refreshes, after a bump), and after the session store is cleared.
- The database, the server under test and the load generator share ${r.cpus} cores.

## Results

${table(list)}

Reading a **NO** on this machine: the database, the app server and the load generator share ${r.cpus} cores, and
anything else running (see the load average) moves throughput by ±20% between rounds. Compare B with the rows
measured next to it: the bare postgres.js listeners for propagation, and the app server's CPU per request for B/A.
To see where time goes, run \`BENCH_CPU_PROF=<dir> npm run bench -- --only=throughput\` and open the \`.cpuprofile\` files.

## Throughput by round (req/s)

| Server | ${r.throughput[0]!.rounds.map((_, i) => `round ${i + 1}`).join(' | ')} |
|---|${r.throughput[0]!.rounds.map(() => '---').join('|')}|
${rounds}

${r.invalidation ? `## Per-user invalidation by round (fresh sessions' req/s)

| Server | ${r.invalidation.with.rounds.map((_, i) => `round ${i + 1}`).join(' | ')} |
|---|${r.invalidation.with.rounds.map(() => '---').join('|')}|
${(['without', 'with'] as const).map((side) => `| ${side} | ${r.invalidation![side].rounds.map((x) =>
  `${Math.round(x.freshRps)} (p99 ${ms2(x.freshP99)} ms, ${x.cpuPerRequest.toFixed(0)} µs CPU${side === 'with' ? `, ${x.invalidated} inv., ${x.refreshCalls} ref.` : ''})`).join(' | ')} |`).join('\n')}

` : ''}## Propagation, all runs

| Listeners | Kind | Bumps | p50 ms | p99 ms | max ms | all held before the bumper saw its COMMIT return |
|---|---|---|---|---|---|---|
${r.propagation.map((p) => `| ${p.instances} | ${p.mode} | ${p.bumps} | ${ms2(p.p50)} | ${ms2(p.p99)} | ${ms2(p.max)} | ${p.beforeCommitReturned} |`).join('\n')}
`
}

// ---------------------------------------------------------------- main

async function main (): Promise<void> {
  if (onlyArg?.includes('scale')) {
    await runScale(process.argv.slice(2))
    if (onlyArg.length === 1) return
  }
  const loadBefore = os.loadavg()
  log(process.env.DATABASE_URL ? 'using DATABASE_URL' : 'starting PostgreSQL')
  const server = await startServer()
  let db: Database | undefined
  let cleaning: Promise<void> | undefined
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      for (const child of [...children]) await stop(child).catch(() => {})
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
    db = await createDatabase(server)
    log(`database ${db.name} on PostgreSQL ${db.postgresVersion} (${server.kind}), max_connections ${db.maxConnections}`)
    const throughput = runs('throughput') ? await measureThroughput(db) : []
    // Before propagation and the storm, while nothing has changed in db yet.
    const invalidation = runs('invalidation') ? await measureInvalidation(db, server) : null
    const propagation = runs('propagation') ? await measurePropagation(db) : { results: [], skipped: [] }
    const storm = runs('storm') ? await measureStorm(db) : null
    const memory = runs('memory') ? [await measureMemory(db, 'A'), await measureMemory(db, 'B')] : []
    const results: Results = {
      date: new Date().toISOString(),
      node: process.version,
      postgres: db.postgresVersion,
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
      databaseKind: server.kind,
      loadBefore,
      loadAfter: os.loadavg(),
      throughput,
      invalidation,
      propagation: propagation.results,
      skipped: propagation.skipped,
      storm,
      memory,
      seconds: (Date.now() - started) / 1000
    }
    const list = rows(results)
    console.log(table(list))
    if (onlyArg === undefined) {
      await writeFile(RESULTS_FILE, await withScaleSection(markdown(results, list)))
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
