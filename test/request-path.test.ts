// Issue 11, "Sessions, schemas, restores and migrations": the request-path
// scenarios, one test each, named after the scenario.
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify from 'fastify'
import t from 'tap'
import sessionRefresh, { bumpSessionVersion } from '../lib/index.js'
import { API, PAGE, SECRET, buildApp, bumpAndWait, gate, getMe, login, sessionCookie, type TestApp } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { fileSessionStore } from './helpers/file-store.js'
import { pgSessionStore } from './helpers/pg-store.js'

const db = await createDatabase(t)

const bump = (...apps: TestApp[]): Promise<number> => bumpAndWait(db.sql, ...apps)

const me = getMe

t.test('11.1 loginRequired is decided after a "successful" refresh: one that leaves no user is a failed refresh', async (t) => {
  let handled = 0
  const emptied = await buildApp(t, { url: db.url, refresh: () => ({ id: null }) })
  emptied.app.get('/secret', { config: { loginRequired: true } }, async () => { handled++; return 'secret' })
  const first = await login(emptied.app, 111)
  await bump(emptied)
  const res = await emptied.app.inject({ url: '/secret', headers: { cookie: first, ...API } })
  t.match(res.json(), { statusCode: 401, reason: 'refresh-error' })
  t.match(emptied.logs.find((l) => l.level === 50), { userId: '111', err: { message: 'refresh() left the session without a user' } })

  const regenerating = await buildApp(t, {
    url: db.url,
    refresh: async (s) => { await s.regenerate(); return {} }
  })
  regenerating.app.get('/secret', { config: { loginRequired: true } }, async () => { handled++; return 'secret' })
  const second = await login(regenerating.app, 112)
  await bump(regenerating)
  t.match((await regenerating.app.inject({ url: '/secret', headers: { cookie: second, ...API } })).json(), { statusCode: 401, reason: 'refresh-error' })
  t.equal(handled, 0, 'the protected handler never ran without a user')
})

t.test('11.2 a logout is not undone by a refresh still in flight, with rolling: true or false, on stores that answer a missing session with nothing or with ENOENT', async (t) => {
  const stores = [['connect-pg-simple', () => pgSessionStore(t, db.url)], ['session-file-store', () => fileSessionStore(t)]] as const
  for (const [rolling, [storeName, store]] of [[true, stores[0]], [false, stores[0]], [true, stores[1]]] as const) {
    const held = gate()
    const test = await buildApp(t, {
      url: db.url,
      sessionOptions: { rolling, store: await store() },
      refresh: async () => { await held.wait; return { email: 'refreshed@example.com' } }
    })
    // A logout needs no fresh data, and must not wait for a refresh.
    test.app.post('/logout', { config: { sessionRefresh: false } }, async (request) => { await request.session.destroy(); return { ok: true } })
    const cookie = await login(test.app, rolling ? 113 : 114)
    await bump(test)
    const pending = me(test.app, cookie)
    await eventually('the refresh to start', () => test.refreshCalls.length === 1)
    t.equal((await test.app.inject({ method: 'POST', url: '/logout', headers: { cookie } })).statusCode, 200)
    held.open()
    t.match((await pending).json(), { statusCode: 401, reason: 'not-logged-in' }, `${storeName}, rolling ${rolling}: the refreshed request is logged out`)
    t.match((await me(test.app, cookie)).json(), { statusCode: 401, reason: 'not-logged-in' }, `${storeName}, rolling ${rolling}: the old cookie stays logged out`)
    t.ok(test.logs.some((l) => l.msg === `Session of user ${rolling ? 113 : 114} was logged out while it was refreshed`), `${storeName}: seen as logged out, not as a failure`)
  }
})

t.test('11.3 a login over a stale session is not swallowed, and next never points at the login page', async (t) => {
  const test = await buildApp(t, { url: db.url, refresh: () => null }) // every stale session's user is gone
  test.app.get('/login', async (request) => ({ page: 'login', id: request.session.get('id') ?? null }))
  const stale = await login(test.app, 115)
  await bump(test)
  // The app's login route is POST /login (test/helpers/app.ts): it must log the new user in.
  const relogin = await test.app.inject({ method: 'POST', url: '/login', payload: { id: 116 }, headers: { cookie: stale, ...PAGE } })
  t.equal(relogin.statusCode, 200, 'the login went through')
  t.equal((await me(test.app, sessionCookie(relogin))).json().id, 116, 'as the new user')

  const stale2 = await login(test.app, 117)
  await bump(test)
  const page = await test.app.inject({ url: '/login?next=%2Fme', headers: { cookie: stale2, ...PAGE } })
  t.same(page.json(), { page: 'login', id: null }, 'the login page is served, with the old user gone')
  const other = await login(test.app, 118)
  await bump(test)
  const redirected = await test.app.inject({ url: '/me', headers: { cookie: other, ...PAGE } })
  t.equal(redirected.headers.location, '/login?next=%2Fme&reason=user-gone')
  const custom = await buildApp(t, { url: db.url, plugin: { loginUrl: '/auth/login?via=app' } })
  custom.app.post('/auth/login', async () => 'ok')
  custom.app.get('/auth/callback', { config: { loginRoute: true, loginRequired: true } }, async () => 'callback')
  t.equal((await custom.app.inject({ method: 'POST', url: '/auth/login', headers: PAGE })).statusCode, 200)
  t.equal((await custom.app.inject({ url: '/auth/callback', headers: PAGE })).statusCode, 200, 'config.loginRoute marks another login route')
  const toLogin = await custom.app.inject({ url: '/auth/login?via=app', headers: PAGE, method: 'GET' })
  t.equal(toLogin.statusCode, 404, 'no route, and no redirect loop to itself')

  // A single-page app serves every path, the login page too, from one protected catch-all route.
  const spa = await buildApp(t, { url: db.url, refresh: () => null })
  spa.app.get('/*', { config: { loginRequired: true } }, async (request) => ({ path: request.url, id: request.session.get('id') ?? null }))
  const gone = await login(spa.app, 123)
  await bump(spa)
  const loginPage = await spa.app.inject({ url: '/login?next=%2Fapp', headers: { cookie: gone, ...PAGE } })
  t.equal(loginPage.statusCode, 200, 'the login page is served, not sent to log in at itself')
  t.same(loginPage.json(), { path: '/login?next=%2Fapp', id: null }, 'with the session emptied')
  t.equal((await spa.app.inject({ url: '/login', headers: PAGE })).statusCode, 200, 'and without a session')
  const elsewhere = await spa.app.inject({ url: '/app/settings', headers: PAGE })
  t.equal(elsewhere.headers.location, '/login?next=%2Fapp%2Fsettings&reason=not-logged-in', 'every other path goes to log in, and comes back')
})

t.test('11.4 a login that skips stamp() is authenticated at its first request, not before an earlier logout', async (t) => {
  const test = await buildApp(t, { url: db.url })
  await test.app.sessionRefresh.logoutUser(119) // a password change, say
  const oauth = await login(test.app, 119, { stamp: false }) // an OAuth callback that never calls stamp()
  for (let i = 0; i < 3; i++) t.equal((await me(test.app, oauth)).statusCode, 200, `request ${i} stays logged in`)
  t.same(test.refreshCalls, [119], 'its data was read once, since no login stamped it')
  await test.app.sessionRefresh.logoutUser(119)
  t.match((await me(test.app, oauth)).json(), { reason: 'user-logout' }, 'a logout after that first request ends it')
})

t.test('11.5 two registrations that share a session each keep their own stamp, and a second one on the same stamp field is refused', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: SECRET, cookie: { secure: false } })
  const refreshed: string[] = []
  await app.register(async (shop) => {
    await shop.register(sessionRefresh, { connection: db.url, refresh: () => { refreshed.push('shop'); return {} } })
    shop.post('/login', async (request) => { request.session.set('id', 42); shop.sessionRefresh.stamp(request); return 'ok' })
    shop.get('/', { config: { loginRequired: true } }, async () => 'shop')
  }, { prefix: '/shop' })
  await app.register(async (admin) => {
    await admin.register(sessionRefresh, {
      connection: db.url,
      identityField: 'adminId',
      stampField: 'adminSessionRefresh',
      refresh: () => { refreshed.push('admin'); return {} }
    })
    admin.post('/login', async (request) => {
      (request.session as unknown as { set: (k: string, v: unknown) => void }).set('adminId', 7)
      admin.sessionRefresh.stamp(request)
      return 'ok'
    })
    admin.get('/', { config: { loginRequired: true } }, async () => 'admin')
  }, { prefix: '/admin' })
  const shopLogin = await app.inject({ method: 'POST', url: '/shop/login' })
  const cookieHeader = sessionCookie(shopLogin)
  await app.inject({ method: 'POST', url: '/admin/login', headers: { cookie: cookieHeader } })
  for (let i = 0; i < 4; i++) {
    t.equal((await app.inject({ url: i % 2 === 0 ? '/shop/' : '/admin/', headers: { cookie: cookieHeader, ...API } })).statusCode, 200)
  }
  t.same(refreshed, [], 'alternating between the two parts refreshes nothing')
  await db.sql`select session_logout_user('42')`
  await eventually('the shop to log user 42 out', async () =>
    (await app.inject({ url: '/shop/', headers: { cookie: cookieHeader, ...API } })).statusCode === 401)

  const twice = Fastify()
  t.teardown(() => twice.close())
  await twice.register(cookie)
  await twice.register(session, { secret: SECRET, cookie: { secure: false } })
  await twice.register(async (a) => { await a.register(sessionRefresh, { connection: db.url, refresh: () => ({}) }) })
  await t.rejects(async () => {
    await twice.register(async (b) => { await b.register(sessionRefresh, { connection: db.url, refresh: () => ({}) }) })
  }, {
    code: 'FST_SESSION_REFRESH_INVALID_OPTION',
    message: /already keeps its stamp in the session field `sessionRefresh`; give each registration its own `stampField`/
  })
})

t.test('11.6 after a restore, a version never repeats: ETL runs never reach a value a session already holds', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { pollInterval: 100 } })
  const before = await bump(test)
  const cookie = await login(test.app, 120)
  // A restore brings back an older row, without its trigger.
  await db.sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`
    await tx`update system_settings set value = ${String(before - 5)} where key = 'session_version'`
  })
  const seen = new Set<number>([before])
  for (let i = 0; i < 10; i++) seen.add(await bumpSessionVersion(db.sql))
  t.equal(seen.size, 11, 'ten ETL runs after the restore gave ten values never given out before')
  await eventually('the last value', async () => test.app.sessionRefresh.version === Math.max(...seen))
  t.equal((await me(test.app, cookie)).statusCode, 200)
  t.same(test.refreshCalls, [120], 'the session stamped before the restore was refreshed, not taken for fresh')
})
