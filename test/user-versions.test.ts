import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { API, PAGE, buildApp, login, type TestApp } from './helpers/app.js'
import { terminateListeners } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { pgSessionStore } from './helpers/pg-store.js'

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
  const { app } = await buildApp(t, { url: db.url })
  const cookie = await login(app, 301)
  const before = app.sessionRefresh.status().userVersions
  await db.sql.begin(async (tx) => {
    await tx`select session_logout_user('301')`
    await tx`select session_refresh_user('301')`
  })
  await knows(app, before)
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 401)
})

t.test('a password change logs the user out elsewhere and keeps the session that made it', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  app.post('/password', { config: { loginRequired: true } }, async (request) => {
    // … store the new password hash …
    const version = await app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request })
    return { version }
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

  // keep only protects a session of that same user
  await app.inject({ method: 'POST', url: '/admin/refresh/999', headers: { cookie: other } })
  const notMine = await app.inject({ method: 'POST', url: '/password', headers: { cookie: other, ...API } })
  t.equal(notMine.statusCode, 200)
  t.same(refreshCalls, [], 'nobody was refreshed so far')

  const refreshed = await app.inject({ method: 'POST', url: '/admin/refresh/401', headers: { cookie: here, ...API } })
  t.equal(refreshed.json().version, await userVersion('401'))
  await app.inject({ url: '/me', headers: { cookie: here, ...API } })
  t.same(refreshCalls, [401], 'refreshUser refreshed the user on the next request')
})

t.test('a per-user change made while the listener is disconnected is applied after the reconnect', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
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
  t.equal(app.sessionRefresh.status().userVersions, 0)
})

t.test('10,000 per-user changes in one transaction stay under the payload limit and are all applied', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { sessionLifetime: 60_000 } })
  const longest = 'x'.repeat(200)
  const payloads: string[] = []
  const { unlisten } = await db.sql.listen('session_user_version', (p) => { if (p.includes(longest)) payloads.push(p) })
  t.teardown(() => unlisten())
  const cookie = await login(app, 9999)
  const before = app.sessionRefresh.status().userVersions
  await db.sql.begin(async (tx) => {
    await tx`select session_refresh_user('bulk-' || g) from generate_series(1, 9999) g`
    await tx`select session_refresh_user('9999')`
    await tx`select session_refresh_user(${longest})`
  })
  await eventually('all 10,001 changes', () => app.sessionRefresh.status().userVersions >= before + 10_001, 20_000)
  await eventually('the longest payload', () => payloads.length === 1)
  t.ok(Buffer.byteLength(payloads[0]!) < 300, `the largest payload is ${Buffer.byteLength(payloads[0]!)} bytes`)
  t.rejects(db.sql`select session_refresh_user(${'y'.repeat(201)})`, /check/, 'a longer id is refused')
  await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.same(refreshCalls, [9999], 'user 9999 was among them')
})

t.test('a per-user notification that is not ours is logged and ignored', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url })
  const before = app.sessionRefresh.status().userVersions
  for (const payload of ['not json', 'null', '{"u":1,"v":2,"l":0}', '{"u":"1","v":"2","l":0}', '{"u":"1","v":2}']) {
    await db.sql`select pg_notify('session_user_version', ${payload})`
  }
  await eventually('five warnings', () => logs.filter((l) => l.msg === 'Ignoring a session_user_version notification that is not a user version').length === 5)
  t.equal(app.sessionRefresh.status().userVersions, before)
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
