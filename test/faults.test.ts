import postgres from 'postgres'
import t from 'tap'
import { bumpSessionVersion, readSessionVersion } from '../lib/index.js'
import { VersionListener } from '../lib/listener.js'
import { API, buildApp, login, testLogger, type TestApp } from './helpers/app.js'
import { terminateListeners } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { listenerOptions } from './helpers/listener.js'
import { pgSessionStore } from './helpers/pg-store.js'
import { FaultyProxy } from './helpers/proxy.js'

const db = await createDatabase(t)

t.test('the listener backend killed 5 times, with a bump in each gap: the app ends on the latest version', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url })
  for (let i = 1; i <= 5; i++) {
    t.equal(await terminateListeners(db.sql), 1, `kill ${i}`)
    const bumped = await bumpSessionVersion(db.sql)
    await eventually(`version ${bumped} after kill ${i}`, () =>
      app.sessionRefresh.version === bumped && app.sessionRefresh.status().reconnects === i)
  }
  await eventually('listening again', () => app.sessionRefresh.status().listening)
  t.match(app.sessionRefresh.status(), { reconnects: 5, listening: true, version: await readSessionVersion(db.sql) })
  t.equal(logs.filter((l) => l.msg === 'session_version listener reconnected, catching up').length, 5)
})

t.test('black hole: a bump during a silent network failure lands within the heartbeat bound', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const { app, logs } = await buildApp(t, {
    url: proxy.url(db.url),
    plugin: { heartbeatInterval: 100, heartbeatTimeout: 200 }
  })
  await eventually('a heartbeat', () => app.sessionRefresh.status().lastHeartbeatAt !== null)
  proxy.blackHole()
  const bumped = await bumpSessionVersion(db.sql)
  // The documented bound: a missed heartbeat is seen within interval + timeout,
  // the reconnect backoff is at most 2 s; 1.5 s more for a busy 2-core machine.
  const bound = 2 * 100 + 200 + 2000 + 1500
  await eventually('the bump, within the heartbeat bound', () => app.sessionRefresh.version === bumped, bound)
  const status = app.sessionRefresh.status()
  t.ok(status.heartbeatMisses >= 1, `heartbeatMisses counts the miss (${status.heartbeatMisses})`)
  t.ok(status.reconnects >= 1, 'the listener reconnected')
  t.ok(logs.some((l) => l.level === 40 && l.msg === 'session_version heartbeat did not come back; reconnecting the listener'))
  await eventually('listening again', () => app.sessionRefresh.status().listening)
})

t.test('catch-up race: a notification during an in-flight re-read is not overwritten', async (t) => {
  let holdNextRead = false
  let readHeld = (): void => {}
  let release = (): void => {}
  const held = new Promise<void>((resolve) => { readHeld = resolve })
  const gate = new Promise<void>((resolve) => { release = resolve })
  const listener = new VersionListener(listenerOptions(db.url, {
    read: async (sql) => {
      const version = await readSessionVersion(sql)
      if (holdNextRead) {
        holdNextRead = false
        readHeld()
        await gate // the read has its answer, but it is not applied yet
      }
      return version
    }
  }))
  t.teardown(() => listener.close())
  await listener.start()
  const old = listener.version

  holdNextRead = true
  await terminateListeners(db.sql)
  await held // the reconnect's catch-up read saw `old` and is still in flight
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the notification', () => listener.version === bumped)
  const syncsBefore = listener.status().lastSyncAt
  release()
  await eventually('the held read to finish', () => listener.status().lastSyncAt !== syncsBefore)
  t.not(old, bumped)
  t.equal(listener.version, bumped, 'the older read result did not win')
  t.equal(listener.listening, true)
})

t.test('1,000 bumps from 10 connections, some rolled back: every instance ends on the table value', async (t) => {
  const apps = [await buildApp(t, { url: db.url }), await buildApp(t, { url: db.url }), await buildApp(t, { url: db.url })]
  const writers = postgres(db.url, { max: 10, onnotice: () => {} })
  t.teardown(() => writers.end())
  let committed = 0
  await Promise.all(Array.from({ length: 10 }, async (_, worker) => {
    for (let i = 0; i < 100; i++) {
      await writers.begin(async (tx) => {
        await tx`update system_settings set value = (value::bigint + 1)::text where key = 'session_version'`
        if ((worker + i) % 7 === 0) throw new Error('rolled back')
      }).then(() => { committed++ }, () => {})
    }
  }))
  const final = await readSessionVersion(db.sql)
  t.ok(committed > 800 && committed < 1000, `${committed} committed, the rest rolled back`)
  for (const [i, { app }] of apps.entries()) {
    await eventually(`instance ${i} on ${final}`, () => app.sessionRefresh.version === final)
  }
  t.pass(`all ${apps.length} instances hold ${final}`)
})

t.test('multi-instance: 4 apps, one shared session store, each stale session refreshed exactly once', async (t) => {
  const store = pgSessionStore(t, db.url)
  const apps: TestApp[] = []
  for (let i = 0; i < 4; i++) apps.push(await buildApp(t, { url: db.url, sessionOptions: { store } }))
  const calls = (): number => apps.reduce((sum, a) => sum + a.refreshCalls.length, 0)
  const cookie = await login(apps[0]!.app, 42)

  // No waiting after the bump: the requests run through the window in which
  // some instances know the new version and others do not yet.
  const bumped = await bumpSessionVersion(db.sql)
  for (let i = 0; i < 12; i++) {
    const res = await apps[i % 4]!.app.inject({ url: '/me', headers: { cookie, ...API } })
    t.equal(res.statusCode, 200, `request ${i} on app ${i % 4}`)
  }
  for (const { app } of apps) await eventually('every instance on the bump', () => app.sessionRefresh.version === bumped)
  for (let i = 0; i < 8; i++) {
    const res = await apps[i % 4]!.app.inject({ url: '/me', headers: { cookie, ...API } })
    t.same(res.json(), { id: 42, email: 'user42@example.com', playerId: 4200, sessionVersion: bumped })
  }
  t.equal(calls(), 1, 'refreshed exactly once across all instances, with no back and forth')

  // Now a skew that does not depend on timing: a change no instance hears of
  // (no NOTIFY), which only app 0 learns, through a session stamped by a newer instance.
  const current = bumped
  await db.sql.begin(async (tx) => {
    await tx`alter table system_settings disable trigger session_version_notify`
    await tx`update system_settings set value = ${String(current + 1)} where key = 'session_version'`
    await tx`alter table system_settings enable trigger session_version_notify`
  })
  const fromNewer = await login(apps[0]!.app, 43, { sessionVersion: current + 1 })
  await apps[0]!.app.inject({ url: '/me', headers: { cookie: fromNewer, ...API } })
  t.equal(apps[0]!.app.sessionRefresh.version, current + 1, 'app 0 caught up')
  t.equal(apps[1]!.app.sessionRefresh.version, current, 'apps 1 to 3 still hold the old version')
  for (let i = 0; i < 8; i++) {
    const res = await apps[i % 4]!.app.inject({ url: '/me', headers: { cookie, ...API } })
    t.equal(res.statusCode, 200)
    t.equal(res.json().sessionVersion, current + 1, `request ${i} on app ${i % 4}`)
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
  await eventually('the bump', () => app.sessionRefresh.version === bumped)
  const responses = await Promise.all(cookies.map((cookie) => app.inject({ url: '/me', headers: { cookie, ...API } })))
  t.ok(responses.every((r) => r.statusCode === 200), 'every response is 200')
  t.ok(responses.every((r, i) => r.json().playerId === (1000 + i) * 100), 'each got its own data')
  t.equal(app.sessionRefresh.status().refreshes, 500, 'refresh ran exactly 500 times')
  t.ok(peak <= 16, `peak concurrency ${peak} stays within 16`)
  t.ok(peak > 1, 'refreshes did run side by side')
})

t.test('a failing re-read is logged and the listener keeps going', async (t) => {
  let failReads = false
  const { log, logs } = testLogger()
  const listener = new VersionListener(listenerOptions(db.url, {
    pollInterval: 20,
    log,
    read: async (sql) => {
      if (failReads) throw new Error('read exploded')
      return readSessionVersion(sql)
    }
  }))
  t.teardown(() => listener.close())
  await listener.start()
  failReads = true
  await eventually('the logged failure', () => logs.some((l) => l.level === 50 && l.msg.startsWith('Could not re-read session_version')))
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the next bump', () => listener.version === bumped)
  t.equal(listener.version, bumped, 'notifications still land while reads fail')
  t.equal(await listener.catchUp(), false, 'a failed read says so')
  failReads = false
  t.equal(await listener.catchUp(), true, 'and the next good one too')
})
