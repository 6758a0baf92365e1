// Issue 10.4: PostgreSQL checks no privilege for NOTIFY, so any role that can
// connect can send one. Payloads are hints to read the tables, never values.
import postgres from 'postgres'
import t from 'tap'
import { readSessionVersion } from '../lib/index.js'
import { API, buildApp, login, type TestApp } from './helpers/app.js'
import { lockTable } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { connectionOptions } from './helpers/listener.js'

const db = await createDatabase(t)

const MAX_SAFE = Number.MAX_SAFE_INTEGER

/**
 * An app whose reads of the tables are counted at the source: postgres.js calls
 * `debug` for every query the plugin's connections send. No poll in the way.
 */
async function countingReads (t: Parameters<typeof buildApp>[0]): Promise<{ built: TestApp, reads: () => number }> {
  let reads = 0
  const connection = {
    ...connectionOptions(db.url),
    debug: (_connection: number, query: string) => { if (query.includes('session_refresh_state')) reads++ }
  }
  const built = await buildApp(t, { url: db.url, plugin: { connection: connection as never, pollInterval: 600_000 } })
  return { built, reads: () => reads }
}

/**
 * A real per-user change, made after whatever the test sent before: once the
 * app has read it, it has handled every notification sent before it, since
 * notifications arrive in commit order and each starts a read that starts after it.
 */
async function marker ({ app }: TestApp, name: string): Promise<void> {
  const tracked = app.sessionRefresh.status().userVersions
  await db.sql`select session_refresh_user(${name})`
  await eventually(`the marker ${name} to be read`, () => app.sessionRefresh.status().userVersions === tracked + 1, 10_000)
}

t.test('forged notifications never give a version no table holds, and refresh no session (issue 10.4)', async (t) => {
  const built = await buildApp(t, { url: db.url, plugin: { pollInterval: 600_000 } })
  const { app, refreshCalls } = built
  await marker(built, '7')
  const seven = await login(app, 7)
  const eight = await login(app, 8)
  const forged: Array<[channel: string, payload: string]> = [
    // The current channel: version hints, per-user hints, heartbeats and garbage.
    ['session_refresh', 'version:999999999'],
    ['session_refresh', `version:${app.sessionRefresh.version}`], // the real value again
    ['session_refresh', `version:${MAX_SAFE}`],
    ['session_refresh', 'version:-1'],
    ['session_refresh', 'version:1e999'],
    ['session_refresh', 'users'],
    ['session_refresh', JSON.stringify({ u: '7', v: MAX_SAFE, l: MAX_SAFE, a: Date.now() })],
    ['session_refresh', 'heartbeat:forged:1'],
    ['session_refresh', ''],
    ['session_refresh', `version:${'9'.repeat(7000)}`],
    ['session_refresh', 'x'.repeat(7999)], // NOTIFY takes payloads shorter than 8000 bytes
    // The channels and payloads of 0.1, which applied them as they came.
    ['session_version', '999999999'],
    ['session_version', String(MAX_SAFE)],
    ['session_user_version', JSON.stringify({ u: '7', v: MAX_SAFE, l: 0, a: null })],
    ['session_user_version', JSON.stringify({ u: '8', v: MAX_SAFE, l: MAX_SAFE, a: Date.now() })]
  ]
  for (const [i, [channel, payload]] of forged.entries()) {
    const what = `${channel} '${payload.length > 30 ? `${payload.slice(0, 30)}…` : payload}'`
    await db.sql`select pg_notify(${channel}, ${payload})`
    await marker(built, `marker-${i}`)
    t.equal(app.sessionRefresh.version, await readSessionVersion(db.sql), `${what}: the version is the table's`)
    const answers = []
    for (const cookie of [seven, eight]) answers.push((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode)
    t.same(answers, [200, 200], `${what}: users 7 and 8 are served`)
    t.same(refreshCalls, [], `${what}: no session was refreshed`)
  }

  // User 7's real logout still holds: no forged version hid it.
  await db.sql`select session_logout_user('7')`
  await marker(built, 'marker-logout')
  const out = await app.inject({ url: '/me', headers: { cookie: seven, ...API } })
  t.equal(out.statusCode, 401)
  t.equal(out.json().reason, 'user-logout')
  t.equal((await app.inject({ url: '/me', headers: { cookie: eight, ...API } })).statusCode, 200, 'user 8 stays in')
  t.same(refreshCalls, [])
})

t.test('a forged version hint changes nothing even while no read can run to correct it (issue 10.4)', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { pollInterval: 600_000, queryTimeout: 60_000 } })
  const cookie = await login(app, 10)
  const version = app.sessionRefresh.version
  const lock = await lockTable(t, db.sql) // the read the hint starts waits for it
  const before = app.sessionRefresh.status().lastNotificationAt
  await db.sql`select pg_notify('session_refresh', 'version:999999999')`
  await eventually('the hint to arrive', () => app.sessionRefresh.status().lastNotificationAt !== before)
  t.equal(app.sessionRefresh.version, version, 'the version is still the one read from the table')
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 200)
  t.same(refreshCalls, [], 'the session is still fresh: nothing was refreshed')
  await lock.release()
})

t.test('a flood of 1,000 forged hints costs a bounded number of reads (issue 10.4)', async (t) => {
  const { built, reads } = await countingReads(t)
  const { app, refreshCalls } = built
  const cookie = await login(app, 9)
  t.equal(reads(), 1, 'start() read the tables once')

  // A burst: 1,000 different hints in one transaction, delivered together at its commit.
  let before = reads()
  await db.sql`select pg_notify('session_refresh', 'version:' || g) from generate_series(1, 1000) g`
  await marker(built, 'after-burst')
  const burst = reads() - before
  // Reads run one at a time, and every hint that comes while one runs shares the
  // one read queued behind it, which starts at least 20 ms after the previous
  // one started. So a burst delivered within D ms costs at most the read it
  // starts, the queued one, one more per 20 ms of D, and the marker's: 10 allows
  // D up to 140 ms, far more than 1,000 notifications take to arrive.
  t.ok(burst >= 1 && burst <= 10, `a burst of 1,000 hints cost ${burst} reads`)

  // A stream: 1,000 hints in as many transactions, as fast as one connection sends them.
  const sender = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => sender.end({ timeout: 1 }))
  before = reads()
  const from = performance.now()
  await Promise.all(Array.from({ length: 1000 }, (_, i) => sender`select pg_notify('session_refresh', ${`version:${i + 2000}`})`))
  await marker(built, 'after-stream')
  const took = performance.now() - from
  const stream = reads() - before
  // The same bound: the read running, the one queued, and one more per 20 ms
  // during which hints kept coming (the stream and the marker).
  const most = 2 + Math.ceil(took / 20)
  t.ok(stream >= 1 && stream <= most, `a stream of 1,000 hints over ${Math.round(took)} ms cost ${stream} reads, at most ${most}`)

  t.equal(app.sessionRefresh.version, await readSessionVersion(db.sql), 'the version is still the table\'s')
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 200)
  t.same(refreshCalls, [], 'no session was refreshed')
})

t.test('hints that trickle in, each after the previous read ended, still cost at most one read per 20 ms (issue 10.4)', async (t) => {
  const { built, reads } = await countingReads(t)
  const sender = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => sender.end({ timeout: 1 }))
  const before = reads()
  const from = performance.now()
  // One hint every 5 ms or so: slower than a read of these small tables takes,
  // so each comes when no read runs, and none has a read to share.
  for (let i = 0; i < 300; i++) {
    await sender`select pg_notify('session_refresh', ${`version:${i + 5000}`})`
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  await marker(built, 'after-trickle')
  const took = performance.now() - from
  const trickle = reads() - before
  // The least time between the starts of two reads is 20 ms, whether a read
  // was running when the hint came or not: over `took` ms, at most one read per
  // 20 ms, and the marker's.
  const most = 2 + Math.ceil(took / 20)
  t.ok(trickle <= most, `300 hints over ${Math.round(took)} ms cost ${trickle} reads, at most ${most}`)
  t.equal(built.app.sessionRefresh.version, await readSessionVersion(db.sql))
})
