// One user: refreshUser, logoutUser (with keep), the SQL functions, lifetimes,
// missed notifications and catch-ups. Long: one subject, on one database.
import postgres from 'postgres'
import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { API, PAGE, buildApp, login, type TestApp } from './helpers/app.js'
import { terminateListeners } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { pgSessionStore } from './helpers/pg-store.js'
import { readServerInfo } from './setup/server.js'

const db = await createDatabase(t)

async function userVersion (userId: string): Promise<number> {
  const [row] = await db.sql`select version from session_user_versions where user_id = ${userId}`
  return Number(row?.version ?? 0)
}

/** Waits until `app` tracks more per-user changes than `before`, as its status() tells. */
async function knows (app: TestApp['app'], before: number): Promise<void> {
  await eventually('the per-user change', () => app.sessionRefresh.status().userVersions > before)
}

t.test("refreshing user A refreshes A's sessions only", async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  const a = await login(app, 101)
  const b = await login(app, 102)
  const before = app.sessionRefresh.status().userVersions
  await db.sql`select session_refresh_user('101')`
  await knows(app, before)
  for (const cookie of [a, b, a, b]) {
    t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 200)
  }
  t.same(refreshCalls, [101], 'A was refreshed once, B never')
})

t.test("logging user A out reaches A's sessions on all 4 instances: pages 302, APIs 401", async (t) => {
  const store = pgSessionStore(t, db.url)
  const apps: TestApp[] = []
  for (let i = 0; i < 4; i++) apps.push(await buildApp(t, { url: db.url, sessionOptions: { store } }))
  const sessionsOfA = await Promise.all(apps.map(({ app }) => login(app, 201)))
  const sessionOfB = await login(apps[0]!.app, 202)

  const before = apps.map(({ app }) => app.sessionRefresh.status().userVersions)
  const version = await apps[0]!.app.sessionRefresh.logoutUser(201)
  t.equal(version, await userVersion('201'))
  for (const [i, { app }] of apps.entries()) await knows(app, before[i]!)

  for (const [i, { app }] of apps.entries()) {
    const headers = i % 2 === 0 ? PAGE : API
    const res = await app.inject({ url: '/me', headers: { cookie: sessionsOfA[i]!, ...headers } })
    if (i % 2 === 0) {
      t.equal(res.statusCode, 302, `page on instance ${i}`)
      t.match(res.headers.location, /reason=user-logout$/)
    } else {
      t.equal(res.statusCode, 401, `API on instance ${i}`)
      t.match(res.json(), { reason: 'user-logout', message: 'You were logged out; please log in again' })
    }
  }
  for (const { app } of apps) {
    t.equal((await app.inject({ url: '/me', headers: { cookie: sessionOfB, ...API } })).statusCode, 200, 'B stays logged in')
  }
  t.equal(apps.reduce((n, a) => n + a.refreshCalls.length, 0), 0, 'a logout is not a refresh')
  // A fresh login after the logout is stamped with the new version and stays in.
  const again = await login(apps[3]!.app, 201)
  t.equal((await apps[1]!.app.inject({ url: '/me', headers: { cookie: again, ...API } })).statusCode, 200)
})

t.test('a later refresh never undoes an earlier logout', async (t) => {
  const store = pgSessionStore(t, db.url)
  const { app } = await buildApp(t, { url: db.url, sessionOptions: { store } })
  const cookie = await login(app, 301)
  const before = app.sessionRefresh.status().userVersions
  await db.sql.begin(async (tx) => {
    await tx`select session_logout_user('301')`
    await tx`select session_refresh_user('301')`
  })
  await knows(app, before)
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 401)
  const [row] = await db.sql`select logout_seq::text, logout_at from session_user_versions where user_id = '301'`
  t.ok(Number(row!.logout_seq) > 0 && row!.logout_at !== null, 'the stored row still holds the logout')
  // A fresh instance knows only what the table says.
  const { app: fresh } = await buildApp(t, { url: db.url, sessionOptions: { store } })
  const old = await login(app, 301)
  await db.sql`select session_logout_user('301')`
  // Polled until the instance has read the second logout; a login there is then after it.
  await eventually('a fresh instance to log out a session older than the second logout', async () =>
    (await fresh.inject({ url: '/me', headers: { cookie: old, ...API } })).statusCode === 401)
  const again = await login(fresh, 301)
  t.equal((await fresh.inject({ url: '/me', headers: { cookie: again, ...API } })).statusCode, 200, 'but not a login made after the logout')
})

t.test('a password change logs the user out elsewhere and keeps the session that made it', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  app.post('/password', { config: { loginRequired: true } }, async (request) => {
    // … store the new password hash …
    const version = await app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request })
    return { version }
  })
  app.post('/admin/logout/:id', async (request) => {
    return { version: await app.sessionRefresh.logoutUser((request.params as { id: string }).id, { keep: request }) }
  })
  app.post('/admin/refresh/:id', async (request) => {
    return { version: await app.sessionRefresh.refreshUser((request.params as { id: string }).id) }
  })
  const here = await login(app, 401)
  const elsewhere = await login(app, 401)
  const other = await login(app, 402)

  const changed = await app.inject({ method: 'POST', url: '/password', headers: { cookie: here, ...API } })
  t.equal(changed.statusCode, 200)
  t.equal(changed.json().version, await userVersion('401'))
  t.equal((await app.inject({ url: '/me', headers: { cookie: here, ...API } })).statusCode, 200, 'the changing session stays in')
  t.equal((await app.inject({ url: '/me', headers: { cookie: elsewhere, ...API } })).statusCode, 401, 'the others are out')

  // keep only protects a session of that same user: an admin logging user 401 out stays in, and 401 is out.
  const again = await login(app, 401)
  t.equal((await app.inject({ method: 'POST', url: '/admin/logout/401', headers: { cookie: other, ...API } })).statusCode, 200)
  t.equal((await app.inject({ url: '/me', headers: { cookie: other, ...API } })).statusCode, 200, 'the admin (402) stays in')
  t.equal((await app.inject({ url: '/me', headers: { cookie: again, ...API } })).statusCode, 401, 'user 401 is out')
  t.same(refreshCalls, [], 'nobody was refreshed so far')
  const here2 = await login(app, 401)

  const refreshed = await app.inject({ method: 'POST', url: '/admin/refresh/401', headers: { cookie: other, ...API } })
  t.equal(refreshed.json().version, await userVersion('401'))
  await app.inject({ url: '/me', headers: { cookie: here2, ...API } })
  t.same(refreshCalls, [401], 'refreshUser refreshed the user on the next request')
})

t.test('a per-user change made while the listener is disconnected is applied after the reconnect, also for a user who already has a row', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  // A row from an earlier change: the missed change below is an UPDATE, found only by its changed_xid.
  await app.sessionRefresh.refreshUser('501')
  const cookie = await login(app, 501)
  const before = app.sessionRefresh.status().reconnects
  // No NOTIFY at all for this change: only the catch-up after the reconnect can find it.
  await db.sql.begin(async (tx) => {
    await tx`alter table session_user_versions disable trigger session_user_version_notify`
    await tx`select session_refresh_user('501')`
    await tx`alter table session_user_versions enable trigger session_user_version_notify`
  })
  t.equal(await terminateListeners(db.sql), 1)
  await eventually('the reconnect', () => app.sessionRefresh.status().reconnects > before && app.sessionRefresh.status().listening)
  await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.same(refreshCalls, [501])
})

t.test('the map is pruned after one session lifetime', async (t) => {
  const { app } = await buildApp(t, { url: db.url, plugin: { sessionLifetime: 300, pollInterval: 50 } })
  await app.sessionRefresh.refreshUser('601')
  t.ok(app.sessionRefresh.status().userVersions >= 1, 'the change is tracked')
  await eventually('the prune', () => app.sessionRefresh.status().userVersions === 0)
})

t.test('10,000 per-user changes in one transaction arrive as one notification and are all applied', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { sessionLifetime: 60_000 } })
  const payloads: string[] = []
  const { unlisten } = await db.sql.listen('session_refresh', (p) => { if (!p.startsWith('heartbeat:')) payloads.push(p) })
  t.teardown(() => unlisten())
  const cookie = await login(app, 9999)
  const before = app.sessionRefresh.status().userVersions
  await db.sql.begin(async (tx) => {
    await tx`select session_refresh_user('bulk-' || g) from generate_series(1, 9999) g`
    await tx`select session_refresh_user('9999')`
    await tx`select session_refresh_user(${'x'.repeat(200)})`
  })
  await eventually('all 10,001 changes', () => app.sessionRefresh.status().userVersions >= before + 10_001, 20_000)
  // A bump after it arrives after it (commit order): then no other notification of that transaction can follow.
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump', () => payloads.includes(`version:${bumped}`))
  t.same(payloads, ['users', `version:${bumped}`], 'the same payload for every change: PostgreSQL folds them into one')
  await t.rejects(db.sql`select session_refresh_user(${'y'.repeat(201)})`, /check/, 'a longer id is refused')
  await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.same(refreshCalls, [9999], 'user 9999 was among them')
})

t.test('a login after a change is stamped with it and not refreshed', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  await app.sessionRefresh.refreshUser(701)
  const cookie = await login(app, 701)
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 200)
  t.same(refreshCalls, [])
})

t.test('keep re-stamps only the user version: a session stale for another reason is still refreshed', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  app.post('/password-unchecked', { config: { sessionRefresh: false } }, async (request) => {
    return { version: await app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request }) }
  })
  const cookie = await login(app, 801)
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump', () => app.sessionRefresh.version === bumped)
  t.equal((await app.inject({ method: 'POST', url: '/password-unchecked', headers: { cookie, ...API } })).statusCode, 200)
  const res = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(res.statusCode, 200, 'kept logged in')
  t.equal(res.json().sessionVersion, bumped)
  t.same(refreshCalls, [801], 'and refreshed for the bump')
})

t.test('a logout older than one session lifetime does not log out a later login', async (t) => {
  // Two apps: one that tracked the logout, one started a lifetime later that never saw it.
  const { app: early } = await buildApp(t, { url: db.url, plugin: { sessionLifetime: 400, pollInterval: 50 } })
  await early.sessionRefresh.logoutUser(901)
  // The early app forgets the logout once it is a lifetime old (it prunes at each poll).
  await eventually('the logout to be a lifetime old', () => early.sessionRefresh.status().userVersions === 0)
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { sessionLifetime: 400 } })
  t.equal(app.sessionRefresh.status().userVersions, 0, 'the old logout is outside the lifetime')
  const cookie = await login(app, 901) // stamped 0: no change known
  await app.sessionRefresh.refreshUser(901)
  const res = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(res.statusCode, 200, 'refreshed, not logged out')
  t.same(refreshCalls, [901])
})

t.test('a forced logout holds on routes with sessionRefresh: false too', async (t) => {
  const { app } = await buildApp(t, { url: db.url })
  app.get('/open-but-mine', { config: { sessionRefresh: false, loginRequired: true } }, async () => 'mine')
  const cookie = await login(app, 902)
  const stale = await login(app, 903)
  await app.sessionRefresh.logoutUser(902)
  await bumpSessionVersion(db.sql)
  t.equal((await app.inject({ url: '/open-but-mine', headers: { cookie, ...API } })).statusCode, 401)
  t.equal((await app.inject({ url: '/open-but-mine', headers: { cookie: stale, ...API } })).statusCode, 200, 'but nothing is refreshed there')
})

t.test('a user stamp ahead of this instance makes it catch up, not refresh', async (t) => {
  const store = pgSessionStore(t, db.url)
  const behind = await buildApp(t, { url: db.url, sessionOptions: { store } })
  await behind.app.sessionRefresh.refreshUser(904)
  // A change this instance does not hear of (no NOTIFY), as if its notification were still on the way.
  await db.sql.begin(async (tx) => {
    await tx`alter table session_user_versions disable trigger session_user_version_notify`
    await tx`select session_refresh_user('904')`
    await tx`alter table session_user_versions enable trigger session_user_version_notify`
  })
  // An instance started now reads the change, and stamps a login with it.
  const ahead = await buildApp(t, { url: db.url, sessionOptions: { store } })
  const cookie = await login(ahead.app, 904)
  const res = await behind.app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(res.statusCode, 200)
  t.same(behind.refreshCalls, [], 'the lagging instance caught up instead of refreshing')
  await behind.app.inject({ url: '/me', headers: { cookie, ...API } })
  t.same(behind.refreshCalls, [], 'and stays caught up')
})

t.test('a refresh that moves the session to another user id stamps it with that user', async (t) => {
  // 905 becomes 906, whose version this instance knows; 910 becomes 911, of whom it knows nothing.
  const { app, refreshCalls } = await buildApp(t, { url: db.url, refresh: (s) => ({ id: s.get('id') === 905 ? 906 : 911 }) })
  await app.sessionRefresh.refreshUser(906)
  const known = await login(app, 905)
  const unknown = await login(app, 910)
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump', () => app.sessionRefresh.version === bumped)
  t.equal((await app.inject({ url: '/me', headers: { cookie: known, ...API } })).json().id, 906)
  t.equal((await app.inject({ url: '/me', headers: { cookie: unknown, ...API } })).json().id, 911)
  t.equal((await app.inject({ url: '/me', headers: { cookie: known, ...API } })).statusCode, 200)
  t.equal((await app.inject({ url: '/me', headers: { cookie: unknown, ...API } })).statusCode, 200)
  t.same(refreshCalls, [905, 910], 'once each: the new ids were stamped with their own user versions')
})

t.test('a session of a login that skipped stamp() is stamped at its next request and refreshed once', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  await app.sessionRefresh.refreshUser(912)
  // Stamped with the global version only, as by a version of the plugin before per-user versions.
  const cookie = await login(app, 912, { stamp: false, sessionVersion: app.sessionRefresh.version })
  await app.inject({ url: '/me', headers: { cookie, ...API } })
  await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.same(refreshCalls, [912])
})

t.test('when the catch-up for a session from a newer instance fails, the session is served as it is', async (t) => {
  const own = await createDatabase(t)
  const { app, refreshCalls, logs } = await buildApp(t, { url: own.url })
  const cookie = await login(app, 913, { sessionVersion: app.sessionRefresh.version + 1 })
  await own.sql`alter table system_settings rename to system_settings_away`
  const res = await app.inject({ url: '/me', headers: { cookie, ...API } })
  await own.sql`alter table system_settings_away rename to system_settings`
  t.equal(res.statusCode, 200)
  t.equal(res.json().sessionVersion, app.sessionRefresh.version + 1, 'not stamped backwards')
  t.same(refreshCalls, [])
  t.ok(logs.some((l) => l.level === 50 && l.msg.startsWith('Could not re-read session_version')))
})

t.test('a per-user change committed by a long transaction while the listener is down is not lost', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { pollInterval: 100 } })
  const cookie = await login(app, 907)
  const database = new URL(db.url).pathname.slice(1)
  const admin = postgres((await readServerInfo()).url, { max: 1, onnotice: () => {} })
  t.teardown(async () => {
    await admin.unsafe(`alter database ${database} allow_connections true`)
    await admin.end()
  })
  const etl = await db.sql.reserve()
  t.teardown(() => etl.release())
  await etl`begin`
  await etl`select session_refresh_user('907')` // dated now, committed much later
  // A later transaction that commits first: the long one is then among those a
  // snapshot lists as still open (below its xmax), not above them.
  await db.sql`select pg_current_xact_id()`
  // Polls run meanwhile, each well after this row's date: a clock-based catch-up would move past it.
  const polls = new Set<string | null>()
  const from = Date.now()
  await eventually('30 polls after the change', () => {
    const { lastSyncAt } = app.sessionRefresh.status()
    if (lastSyncAt !== null && Date.parse(lastSyncAt) > from) polls.add(lastSyncAt)
    return polls.size >= 30
  }, 30_000)
  await admin.unsafe(`alter database ${database} allow_connections false`)
  const terminated = await admin`
    select pg_terminate_backend(pid) from pg_stat_activity
    where application_name = 'fastify-session-refresh' and datname = ${database} and query ilike 'listen%'`
  t.equal(terminated.length, 1, 'the listener is down and cannot come back yet')
  await etl`commit` // its NOTIFY reaches nobody
  const before = app.sessionRefresh.status().userVersions
  await eventually('a poll to find the change', () => app.sessionRefresh.status().userVersions > before)
  await admin.unsafe(`alter database ${database} allow_connections true`)
  await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.same(refreshCalls, [907])
})

t.test('6,000 changes of a transaction that was open at the last read come in page by page, all of them', async (t) => {
  const own = await createDatabase(t)
  const { app } = await buildApp(t, { url: own.url })
  const etl = await own.sql.reserve()
  t.teardown(() => etl.release())
  await etl`begin`
  await etl`select session_refresh_user('page-0')`
  await own.sql`select pg_current_xact_id()` // a later transaction commits first: the ETL's is among the open ones
  t.equal(await app.sessionRefresh.catchUp(), true, 'a read while the ETL is open')
  await etl`select session_refresh_user('page-' || n) from generate_series(1, 6000) n`
  await etl`commit`
  await eventually('all 6,001 users', () => app.sessionRefresh.status().userVersions === 6001, 20_000)
})

t.test('a refresh that never settles fails after refreshTimeout', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url, plugin: { refreshTimeout: 100 }, refresh: () => new Promise(() => {}) })
  const cookie = await login(app, 908)
  await app.sessionRefresh.refreshUser(908)
  const res = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(res.statusCode, 401)
  t.match(res.json(), { reason: 'refresh-error' })
  t.match(logs.find((l) => l.level === 50), { err: { code: 'FST_SESSION_REFRESH_TIMEOUT', message: 'refresh() did not settle within 100 ms' } })
})
