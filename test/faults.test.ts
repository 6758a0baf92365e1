import postgres from 'postgres'
import t from 'tap'
import { bumpSessionVersion, readSessionVersion } from '../lib/index.js'
import { API, buildApp, login, type TestApp } from './helpers/app.js'
import { idleListenBackends, terminateBackend, terminateListeners } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { pgSessionStore } from './helpers/pg-store.js'
import { FaultyProxy } from './helpers/proxy.js'

const db = await createDatabase(t)

// Issue 10.14. The old version of this test killed the LISTEN backend again as
// soon as the instance had counted the reconnect and held the bump. With the
// 0.1 listener that moment came while the new connection was still sending its
// LISTENs for the per-user and heartbeat channels; a backend terminated with a
// query in flight leaves postgres.js 3.4.9 holding the server's FATAL error, and
// it fails the next connection's first query with it: the re-LISTEN of
// session_version. The instance then never listened again (no reconnect counted,
// no notification), and the wait for "version 6 after kill 5" timed out. The
// test now waits for the right event before each kill: the bump landed, the
// instance is listening again (a read made since the new LISTEN succeeded), and
// the one LISTEN backend left is a new one, idle, its LISTEN done.
t.test('the LISTEN backend killed 5 times while idle, with a bump in each gap: one reconnect per kill, and every bump lands', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url })
  let [pid] = await idleListenBackends(db.sql)
  for (let i = 1; i <= 5; i++) {
    t.equal(await terminateBackend(db.sql, pid!), true, `kill ${i}`)
    const bumped = await bumpSessionVersion(db.sql)
    let next: number | undefined
    await eventually(`the bump made after kill ${i}, and a new idle LISTEN backend`, async () => {
      if (app.sessionRefresh.version !== bumped || !app.sessionRefresh.status().listening) return false
      const pids = await idleListenBackends(db.sql)
      next = pids[0]
      return pids.length === 1 && next !== pid
    }, 20_000)
    t.equal(app.sessionRefresh.status().reconnects, i, `kill ${i} cost one reconnect`)
    pid = next
  }
  t.match(app.sessionRefresh.status(), { reconnects: 5, listening: true, lastSyncError: null, version: await readSessionVersion(db.sql) })
  t.equal(logs.filter((l) => l.msg === 'session_version listener reconnected, catching up').length, 5)
})

t.test('the LISTEN backend killed while the reconnect\'s LISTEN is in flight: the instance listens again', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const { app } = await buildApp(t, { url: proxy.url(db.url), plugin: { heartbeatInterval: 200, heartbeatTimeout: 500 } })
  // The next LISTEN sent (the reconnect's) is kept from the server, so the kill
  // below lands while the client waits for its answer.
  const holding = proxy.holdWhenClientSends('listen "session_refresh"', 'request')
  t.equal(await terminateListeners(db.sql), 1, 'the first kill, while idle')
  const link = await holding
  const pid = await link.backendPid(db.sql)
  t.equal(await terminateBackend(db.sql, pid!), true, 'the second kill, with the LISTEN in flight')
  await eventually('the client to see the connection close', () => link.clientClosed, 10_000)
  const bumped = await bumpSessionVersion(db.sql)
  // Neither a poll (30 s) nor anything else but a LISTEN that works brings both.
  await eventually('the bump, and listening again', () => app.sessionRefresh.version === bumped && app.sessionRefresh.status().listening, 20_000)
  t.ok(app.sessionRefresh.status().reconnects >= 1, 'the listener reconnected')
})

t.test('black hole: a bump during a silent network failure lands within the heartbeat bound', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const interval = 100
  const timeout = 200
  const { app, logs } = await buildApp(t, {
    url: proxy.url(db.url),
    plugin: { heartbeatInterval: interval, heartbeatTimeout: timeout }
  })
  await eventually('a heartbeat', () => app.sessionRefresh.status().lastHeartbeatAt !== null, 10_000)
  proxy.blackHole()
  const bumped = await bumpSessionVersion(db.sql)
  // The bound: a heartbeat goes out once one to two intervals passed with
  // nothing heard, at the next tick of a timer that runs every quarter interval,
  // jittered by ±20%: within 2 + 0.3 intervals of the last thing heard. It
  // misses after `timeout`; the reconnect backoff is at most 2 s. 5 s more for a
  // loaded 2-core machine; a listener that never noticed would wait for the poll (30 s).
  const bound = 2.3 * interval + timeout + 2000 + 5000
  await eventually('the bump, within the heartbeat bound', () => app.sessionRefresh.version === bumped, bound)
  const status = app.sessionRefresh.status()
  t.ok(status.heartbeatMisses >= 1, `heartbeatMisses counts the miss (${status.heartbeatMisses})`)
  t.ok(status.reconnects >= 1, 'the listener reconnected')
  t.ok(logs.some((l) => l.level === 40 && l.msg === 'session_version heartbeat did not come back; reconnecting the listener'))
  await eventually('listening again', () => app.sessionRefresh.status().listening, 10_000)
  await eventually('both black-holed sockets to be destroyed', () => proxy.links.every((link) => !link.holed || link.clientClosed), 10_000)
})

t.test('catch-up race: a notification during an in-flight re-read starts another read after it', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const { app } = await buildApp(t, { url: proxy.url(db.url) })
  const old = app.sessionRefresh.version
  const [listenPid] = await idleListenBackends(db.sql)
  const links = await Promise.all(proxy.links.map(async (link) => ({ link, pid: await link.backendPid(db.sql) })))
  const readLink = links.find(({ pid }) => pid !== listenPid)!.link
  // The reconnect's catch-up read runs on the server, but its answer is kept:
  // from its BindComplete on, so that a statement the connection has not run
  // before still gets the description postgres.js asks for first.
  readLink.holdResponses('2')
  t.equal(await terminateBackend(db.sql, listenPid!), true)
  await eventually('the catch-up read to be answered', () => readLink.answered, 10_000)
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump\'s notification', () => app.sessionRefresh.status().lastNotificationAt !== null, 10_000)
  t.equal(app.sessionRefresh.version, old, 'the catch-up read, answered before the bump, is not applied yet')
  readLink.release()
  await eventually('the read the notification asked for', () => app.sessionRefresh.version === bumped, 10_000)
  t.match(app.sessionRefresh.status(), { listening: true, reconnects: 1, lastSyncError: null })
})

t.test('1,000 bumps from 10 connections, some rolled back: every instance ends on the table value', async (t) => {
  const apps = [await buildApp(t, { url: db.url }), await buildApp(t, { url: db.url }), await buildApp(t, { url: db.url })]
  const writers = postgres(db.url, { max: 10, onnotice: () => {} })
  t.teardown(() => writers.end())
  let committed = 0
  let rolledBack = 0
  await Promise.all(Array.from({ length: 10 }, async (_, worker) => {
    for (let i = 0; i < 100; i++) {
      await writers.begin(async (tx) => {
        await tx`update system_settings set value = (value::bigint + 1)::text where key = 'session_version'`
        if ((worker + i) % 7 === 0) throw new Error('rolled back')
      }).then(() => { committed++ }, (err: Error) => { if (err.message === 'rolled back') rolledBack++ })
    }
  }))
  const expectedRollbacks = Array.from({ length: 1000 }, (_, n) => (Math.floor(n / 100) + n % 100) % 7 === 0).filter(Boolean).length
  t.same({ committed, rolledBack }, { committed: 1000 - expectedRollbacks, rolledBack: expectedRollbacks }, 'every bump committed but those rolled back on purpose')
  const final = await readSessionVersion(db.sql)
  for (const [i, { app }] of apps.entries()) {
    await eventually(`instance ${i} on ${final}`, () => app.sessionRefresh.version === final, 20_000)
  }
  t.same(apps.map(({ app }) => app.sessionRefresh.status().lastSyncError), [null, null, null], 'no read failed')
})

t.test('multi-instance: 4 apps, one shared session store, each stale session refreshed exactly once', async (t) => {
  const store = pgSessionStore(t, db.url)
  const apps: TestApp[] = []
  // No polls: which instance knows what must depend on the test alone.
  for (let i = 0; i < 4; i++) apps.push(await buildApp(t, { url: db.url, sessionOptions: { store }, plugin: { pollInterval: 600_000 } }))
  const calls = (): number => apps.reduce((sum, a) => sum + a.refreshCalls.length, 0)
  const cookie = await login(apps[0]!.app, 42)

  // No waiting after the bump: the requests run through the window in which
  // some instances know the new version and others do not yet.
  const bumped = await bumpSessionVersion(db.sql)
  for (let i = 0; i < 12; i++) {
    const res = await apps[i % 4]!.app.inject({ url: '/me', headers: { cookie, ...API } })
    t.equal(res.statusCode, 200, `request ${i} on app ${i % 4}`)
  }
  for (const { app } of apps) await eventually('every instance on the bump', () => app.sessionRefresh.version === bumped, 10_000)
  for (let i = 0; i < 8; i++) {
    const res = await apps[i % 4]!.app.inject({ url: '/me', headers: { cookie, ...API } })
    t.same(res.json(), { id: 42, email: 'user42@example.com', playerId: 4200, sessionVersion: bumped })
  }
  t.equal(calls(), 1, 'refreshed exactly once across all instances, with no back and forth')

  // Now a skew that does not depend on timing: a change no instance hears of
  // (no NOTIFY), which only app 0 learns, through a session stamped by a newer instance.
  const ahead = await db.sql.begin(async (tx) => {
    await tx`alter table system_settings disable trigger session_version_notify`
    const [row] = await tx<[{ value: string }]>`
      update system_settings set value = (value::bigint + 1)::text where key = 'session_version' returning value`
    await tx`alter table system_settings enable trigger session_version_notify`
    return Number(row.value)
  })
  const fromNewer = await login(apps[0]!.app, 43, { sessionVersion: ahead })
  await apps[0]!.app.inject({ url: '/me', headers: { cookie: fromNewer, ...API } })
  t.equal(apps[0]!.app.sessionRefresh.version, ahead, 'app 0 caught up')
  t.same(apps.slice(1).map(({ app }) => app.sessionRefresh.version), [bumped, bumped, bumped], 'apps 1 to 3 still hold the old version')
  for (let i = 0; i < 8; i++) {
    const res = await apps[i % 4]!.app.inject({ url: '/me', headers: { cookie, ...API } })
    t.equal(res.statusCode, 200)
    t.equal(res.json().sessionVersion, ahead, `request ${i} on app ${i % 4}`)
  }
  t.equal(calls(), 2, 'one more refresh, on app 0; the lagging apps caught up instead of refreshing back')
})

t.test('storm: 500 stale sessions at once, refreshed exactly once each, never more than maxConcurrentRefreshes', async (t) => {
  let running = 0
  let peak = 0
  const { app } = await buildApp(t, {
    url: db.url,
    plugin: { maxConcurrentRefreshes: 16 },
    refresh: async (s) => {
      running++
      peak = Math.max(peak, running)
      try {
        const [row] = await db.sql`select ${Number(s.get('id'))}::int * 100 as player_id, pg_sleep(0.001)`
        return { playerId: row!.player_id as number }
      } finally {
        running--
      }
    }
  })
  const cookies = await Promise.all(Array.from({ length: 500 }, (_, i) => login(app, 1000 + i)))
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump', () => app.sessionRefresh.version === bumped, 10_000)
  const responses = await Promise.all(cookies.map((cookie) => app.inject({ url: '/me', headers: { cookie, ...API } })))
  t.same(responses.filter((r) => r.statusCode !== 200).map((r) => r.statusCode), [], 'every response is 200')
  t.same(responses.filter((r, i) => r.json().playerId !== (1000 + i) * 100).length, 0, 'each got its own data')
  t.equal(app.sessionRefresh.status().refreshes, 500, 'refresh ran exactly 500 times')
  t.ok(peak <= 16, `peak concurrency ${peak} stays within 16`)
  t.ok(peak > 1, 'refreshes did run side by side')
})

t.test('reads that fail make listening false and say why; the next poll that succeeds makes it true again (issue 10.5)', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url, plugin: { pollInterval: 100 } })
  const before = app.sessionRefresh.version
  await db.sql`alter table system_settings rename to system_settings_away`
  t.teardown(() => db.sql`alter table if exists system_settings_away rename to system_settings`)
  await eventually('a poll that fails', () => app.sessionRefresh.status().lastSyncError !== null, 10_000)
  t.match(app.sessionRefresh.status(), {
    listening: false,
    version: before,
    lastSyncError: { code: 'FST_SESSION_REFRESH_NOT_MIGRATED', message: /system_settings/ }
  })
  t.ok(logs.some((l) => l.level === 50 && l.msg === `Could not re-read session_version; keeping version ${before}`), 'the failure is logged')

  await db.sql`alter table system_settings_away rename to system_settings`
  await eventually('a poll that succeeds', () => app.sessionRefresh.status().lastSyncError === null, 10_000)
  t.match(app.sessionRefresh.status(), { listening: true, version: await readSessionVersion(db.sql), reconnects: 0 })
})
