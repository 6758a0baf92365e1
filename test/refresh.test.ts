// The request path's designed behaviour: fresh, stale, refreshed, logged out,
// 302 or 401, route flags, identity fields. Long: one test per behaviour of the
// README's "When is a session stale?" and "Route config", on one database.
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify from 'fastify'
import t from 'tap'
import sessionRefresh, { bumpSessionVersion, safeRedirectPath } from '../lib/index.js'
import { API, PAGE, SECRET, buildApp, login, sessionCookie } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { pgSessionStore } from './helpers/pg-store.js'

const db = await createDatabase(t)

/** Raises the version from another connection and waits until `app` has it. */
async function bump (app: { sessionRefresh: { version: number } }): Promise<number> {
  const version = await bumpSessionVersion(db.sql)
  await eventually(`version ${version}`, () => app.sessionRefresh.version === version)
  return version
}

t.test('a fresh session is served without calling refresh', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  const cookie = await login(app, 1)
  const res = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { id: 1, email: 'user1@example.com', playerId: 1, sessionVersion: app.sessionRefresh.version })
  t.same(refreshCalls, [])
})

t.test('a stale session is refreshed, re-stamped and logged, once', async (t) => {
  const { app, refreshCalls, logs } = await buildApp(t, { url: db.url })
  const cookie = await login(app, 7)
  const version = await bump(app)

  const first = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(first.statusCode, 200)
  t.same(first.json(), { id: 7, email: 'user7@example.com', playerId: 700, sessionVersion: version })
  const second = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(second.json().playerId, 700, 'the refreshed fields were saved')
  t.same(refreshCalls, [7], 'refreshed once, then fresh')

  const refreshing = logs.find((l) => l.msg === 'Refreshing stale session for user: 7')
  t.match(refreshing, { level: 30, userId: '7', reason: 'version' })
  t.match(logs.find((l) => l.msg === 'Successfully refreshed session for 7'), { level: 30, userId: '7' })
  t.notOk(JSON.stringify(logs).includes(SECRET), 'the session secret is never logged')
  t.match(app.sessionRefresh.status(), { refreshes: 1, refreshFailures: 0, logouts: 0, refreshesRunning: 0 })
})

/** Sets the stored version as a restore would: no trigger, no notification. */
async function restoreVersion (value: number): Promise<void> {
  await db.sql.begin(async (tx) => {
    await tx`alter table system_settings disable trigger user`
    await tx`update system_settings set value = ${String(value)} where key = 'session_version'`
    await tx`alter table system_settings enable trigger user`
  })
}

t.test('a restore that lowers the version makes sessions stale, and the next bump never repeats a stamp', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { pollInterval: 50 } })
  const before = app.sessionRefresh.version
  const cookie = await login(app, 2)
  await restoreVersion(before - 1000)
  await eventually('the restored version', () => app.sessionRefresh.version === before - 1000)
  const res = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(res.json().sessionVersion, before - 1000, 'the table is the truth, even when it went back')
  t.same(refreshCalls, [2])
  const bumped = await bump(app)
  t.ok(bumped > before, `the next bump (${bumped}) is above every value given out before the restore (${before})`)
})

t.test('a logged-in session without a stamp, or without a required field, is stale', async (t) => {
  const { app, refreshCalls, logs } = await buildApp(t, { url: db.url, plugin: { requiredFields: ['email', 'playerId'] } })
  const unstamped = await login(app, 3, { stamp: false })
  const res = await app.inject({ url: '/me', headers: { cookie: unstamped, ...API } })
  t.equal(res.json().sessionVersion, app.sessionRefresh.version)
  t.match(logs.find((l) => l.userId === '3' && l.msg.startsWith('Refreshing')), { reason: 'no-stamp' })

  const incomplete = await login(app, 4, { playerId: null })
  const filled = await app.inject({ url: '/me', headers: { cookie: incomplete, ...API } })
  t.equal(filled.json().playerId, 400)
  t.match(logs.find((l) => l.userId === '4' && l.msg.startsWith('Refreshing')), { reason: 'missing-field' })
  t.same(refreshCalls, [3, 4])
})

t.test('a logged-out session is never refreshed', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  const res = await app.inject({ url: '/public', headers: API })
  t.equal(res.statusCode, 200)
  t.equal(res.json().id, null)
  t.same(refreshCalls, [])
})

t.test('20 parallel requests of one stale session share one refresh', async (t) => {
  let release = (): void => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const { app, refreshCalls } = await buildApp(t, {
    url: db.url,
    refresh: async (s) => {
      await gate
      return { playerId: Number(s.get('id')) * 10 }
    }
  })
  const cookie = await login(app, 5)
  const version = await bump(app)
  const pending = Array.from({ length: 20 }, () => app.inject({ url: '/me', headers: { cookie, ...API } }))
  await eventually('the refresh to start', () => refreshCalls.length === 1)
  release()
  const responses = await Promise.all(pending)
  t.same(responses.map((r) => r.statusCode), Array(20).fill(200))
  t.ok(responses.every((r) => r.json().playerId === 50 && r.json().sessionVersion === version))
  t.same(refreshCalls, [5], 'exactly one refresh call')
})

t.test('a user who is gone is sent to log in: pages get 302, APIs get 401', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url, refresh: () => null, plugin: { requiredFields: ['email', 'playerId'] } })
  const pageCookie = await login(app, 8)
  const apiCookie = await login(app, 9)
  await bump(app)

  const page = await app.inject({ url: '/me?tab=2', headers: { cookie: pageCookie, ...PAGE } })
  t.equal(page.statusCode, 302)
  t.equal(page.headers.location, '/login?next=%2Fme%3Ftab%3D2&reason=user-gone')

  const api = await app.inject({ url: '/me', headers: { cookie: apiCookie, ...API } })
  t.equal(api.statusCode, 401)
  t.same(api.json(), {
    statusCode: 401,
    code: 'FST_SESSION_REFRESH_LOGIN_REQUIRED',
    error: 'Unauthorized',
    message: 'Your account changed; please log in again',
    reason: 'user-gone'
  })

  const after = await app.inject({ url: '/public', headers: { cookie: apiCookie, ...API } })
  t.same(after.json(), { id: null, email: null, playerId: null, sessionVersion: null }, 'the identity, required fields and stamp are cleared')
  t.match(logs.find((l) => l.userId === '9' && l.reason === 'user-gone'), { level: 30, msg: 'Falling back to login for user: 9' })
  t.match(app.sessionRefresh.status(), { logouts: 2, refreshes: 0, refreshFailures: 0 })
})

t.test('a forced logout leaves nothing of the old session: a new session id, and no field of the old user', async (t) => {
  const { app } = await buildApp(t, { url: db.url, refresh: () => null })
  const session = (request: { session: unknown }) => request.session as { get: (k: string) => unknown, set: (k: string, v: unknown) => void }
  app.post('/cart', async (request) => {
    session(request).set('cart', ['ball'])
    session(request).set('roles', ['admin'])
    return { ok: true }
  })
  app.get('/cart', async (request) => ({ cart: session(request).get('cart') ?? null, roles: session(request).get('roles') ?? null }))
  const cookie = await login(app, 10)
  await app.inject({ method: 'POST', url: '/cart', headers: { cookie } })
  t.same((await app.inject({ url: '/cart', headers: { cookie } })).json(), { cart: ['ball'], roles: ['admin'] })
  await bump(app)
  const out = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(out.statusCode, 401)
  const fresh = sessionCookie(out)
  t.not(fresh, cookie, 'the logged-out request got a new session id')
  t.same((await app.inject({ url: '/cart', headers: { cookie: fresh } })).json(), { cart: null, roles: null }, 'the new session holds nothing of the old one')
  t.same((await app.inject({ url: '/cart', headers: { cookie } })).json(), { cart: null, roles: null }, 'the old session id is gone from the store')
})

t.test('a refresh that throws logs an error with the user id and falls back to login', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url, refresh: () => { throw new Error('users table is locked') } })
  const cookie = await login(app, 11)
  await bump(app)
  const res = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(res.statusCode, 401)
  t.match(res.json(), { reason: 'refresh-error', message: 'Your session could not be refreshed; please log in again' })
  const error = logs.find((l) => l.level === 50)
  t.match(error, { userId: '11', reason: 'refresh-error', msg: 'Could not refresh session for user: 11', err: { message: 'users table is locked' } })
  t.match(app.sessionRefresh.status(), { refreshFailures: 1, logouts: 1 })
})

t.test("onRefreshError: 'keep' serves the stale session and retries next time", async (t) => {
  let fail = true
  const { app, refreshCalls } = await buildApp(t, {
    url: db.url,
    plugin: { onRefreshError: 'keep' },
    refresh: async (s) => {
      if (fail) throw new Error('database is busy')
      return { playerId: Number(s.get('id')) + 1 }
    }
  })
  const cookie = await login(app, 12)
  const before = app.sessionRefresh.version
  const version = await bump(app)
  const kept = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(kept.statusCode, 200)
  t.same(kept.json(), { id: 12, email: 'user12@example.com', playerId: 12, sessionVersion: before })
  fail = false
  const refreshed = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.same(refreshed.json(), { id: 12, email: 'user12@example.com', playerId: 13, sessionVersion: version })
  t.same(refreshCalls, [12, 12])
})

t.test('a refresh result that cannot be used is a failed refresh', async (t) => {
  const results: unknown[] = ['id=5', [1, 2], { email: 'x@example.com', playerId: null }]
  const { app, logs } = await buildApp(t, {
    url: db.url,
    plugin: { requiredFields: ['playerId'] },
    refresh: (() => results.shift()) as () => null
  })
  const cookies = [await login(app, 13), await login(app, 14), await login(app, 15)]
  await bump(app)
  for (const cookie of cookies) {
    t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 401)
  }
  const messages = logs.filter((l) => l.level === 50).map((l) => (l.err as { message: string }).message)
  t.same(messages, [
    'refresh() must return an object of session fields or null, got string',
    'refresh() must return an object of session fields or null, got an array',
    'refresh() left the required session field "playerId" empty'
  ])
})

t.test('a refresh result may leave a required field out when the session already holds it; out and not held is a failed refresh', async (t) => {
  const { app, logs } = await buildApp(t, {
    url: db.url,
    plugin: { requiredFields: ['email', 'playerId'] },
    // Only the email is reloaded: playerId stays as the session holds it.
    refresh: () => ({ email: 'reloaded@example.com' })
  })
  const held = await login(app, 16, { playerId: 1600 })
  const missing = await login(app, 17, { playerId: null }) // stale for the missing field, and nothing to keep
  await bump(app)
  const kept = await app.inject({ url: '/me', headers: { cookie: held, ...API } })
  t.equal(kept.statusCode, 200)
  t.match(kept.json(), { id: 16, email: 'reloaded@example.com', playerId: 1600 }, 'refreshed, the field it left out kept')
  t.equal((await app.inject({ url: '/me', headers: { cookie: missing, ...API } })).statusCode, 401)
  t.match(logs.filter((l) => l.level === 50).map((l) => (l.err as { message: string }).message), ['refresh() left the required session field "playerId" empty'])
})

t.test('loginRequired sends logged-out requests to log in', async (t) => {
  const { app } = await buildApp(t, { url: db.url, plugin: { loginUrl: '/auth?via=session' } })
  const page = await app.inject({ url: '/me', headers: PAGE })
  t.equal(page.statusCode, 302)
  t.equal(page.headers.location, '/auth?via=session&next=%2Fme&reason=not-logged-in')
  const xhr = await app.inject({ url: '/me', headers: { ...PAGE, 'x-requested-with': 'XMLHttpRequest' } })
  t.equal(xhr.statusCode, 401, 'XHR is an API request even if it accepts HTML')
  t.match(xhr.json(), { code: 'FST_SESSION_REFRESH_LOGIN_REQUIRED', reason: 'not-logged-in', message: 'Please log in' })
  const bare = await app.inject({ url: '/me' })
  t.equal(bare.statusCode, 401, 'a client that does not ask for HTML gets JSON')
  t.equal((await app.inject({ url: '/public', headers: PAGE })).statusCode, 200, 'other routes stay open')
})

t.test('routes with sessionRefresh: false are not checked', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  const cookie = await login(app, 16)
  const stamped = app.sessionRefresh.version
  await bump(app)
  const res = await app.inject({ url: '/unchecked', headers: { cookie, ...API } })
  t.equal(res.json().sessionVersion, stamped)
  t.same(refreshCalls, [])
})

t.test('no open redirect: next is always a path on this site', async (t) => {
  const { app: gone } = await buildApp(t, { url: db.url, refresh: () => null })
  // A catch-all route, so that these paths reach a route (the check runs on routes, not on 404s).
  gone.get('*', async () => 'anything')
  const urls = ['//evil.example', '//evil.example/me', '/\\evil.example']
  const cookies = await Promise.all(urls.map(() => login(gone, 17)))
  await bump(gone)
  for (const [i, url] of urls.entries()) {
    const res = await gone.inject({ url, headers: { cookie: cookies[i]!, ...PAGE } })
    t.equal(res.statusCode, 302)
    t.equal(res.headers.location, '/login?next=%2F&reason=user-gone', `${url} never becomes the target`)
  }

  t.equal(safeRedirectPath('/me?tab=1'), '/me?tab=1')
  for (const bad of ['//evil.example', 'https://evil.example', '/\\evil.example', 'evil.example', '/\t/evil.example', '', undefined, 42]) {
    t.equal(safeRedirectPath(bad), '/', `${String(bad)} is not a redirect target`)
  }
})

t.test('a tampered cookie yields a logged-out session, not a crash', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  const cookie = await login(app, 18)
  const [name, value] = cookie.split('=') as [string, string]
  const tampered = `${name}=${value.slice(0, -3)}abc`
  const res = await app.inject({ url: '/public', headers: { cookie: tampered, ...API } })
  t.equal(res.statusCode, 200)
  t.equal(res.json().id, null)
  t.equal((await app.inject({ url: '/me', headers: { cookie: tampered, ...API } })).statusCode, 401)
  const forged = await app.inject({ url: '/me', headers: { cookie: 'sessionId=forged.sessionVersion-999', ...API } })
  t.equal(forged.statusCode, 401, 'a client cannot send a version of its own')
  t.same(refreshCalls, [])
})

t.test('outside cookie.path the session is {} and nothing breaks', async (t) => {
  const { app } = await buildApp(t, { url: db.url, sessionOptions: { cookie: { secure: false, path: '/app' } } })
  app.get('/stamp', async (request) => {
    app.sessionRefresh.stamp(request)
    return { session: request.session }
  })
  const stamped = await app.inject({ url: '/stamp', headers: API })
  t.same(stamped.json(), { session: {} }, 'stamp() without a session is a no-op')
  t.equal((await app.inject({ url: '/me', headers: API })).statusCode, 401)
})

t.test('a session set to null before the hook is treated as logged out', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: SECRET, cookie: { secure: false } })
  app.addHook('onRequest', async (request) => { (request as { session: unknown }).session = null })
  await app.register(sessionRefresh, { connection: db.url, refresh: () => null })
  app.get('/open', async () => 'ok')
  app.get('/closed', { config: { loginRequired: true } }, async () => 'ok')
  t.equal((await app.inject({ url: '/open' })).statusCode, 200)
  t.equal((await app.inject({ url: '/closed' })).statusCode, 401)
})

t.test('a custom identity field decides who is logged in', async (t) => {
  const refreshedFor: unknown[] = []
  const { app } = await buildApp(t, {
    url: db.url,
    plugin: { identityField: 'email' },
    refresh: (s) => { refreshedFor.push(s.get('email')); return {} }
  })
  app.post<{ Body: { email?: string, id?: number } }>('/login-partly', async (request) => {
    if (request.body.email !== undefined) request.session.set('email', request.body.email)
    if (request.body.id !== undefined) request.session.set('id', request.body.id)
    app.sessionRefresh.stamp(request)
    return { ok: true }
  })
  const byEmail = sessionCookie(await app.inject({ method: 'POST', url: '/login-partly', payload: { email: 'only@example.com' } }))
  const byId = sessionCookie(await app.inject({ method: 'POST', url: '/login-partly', payload: { id: 19 } }))
  t.equal((await app.inject({ url: '/me', headers: { cookie: byEmail, ...API } })).statusCode, 200, 'an email alone is logged in')
  t.match((await app.inject({ url: '/me', headers: { cookie: byId, ...API } })).json(), { statusCode: 401, reason: 'not-logged-in' }, 'an id alone is not')
  await bump(app)
  await app.inject({ url: '/me', headers: { cookie: byEmail, ...API } })
  await app.inject({ url: '/public', headers: { cookie: byId, ...API } })
  t.same(refreshedFor, ['only@example.com'], 'only the session logged in by email is refreshed')
})

t.test('a stamp newer than this instance knows triggers a catch-up read, not a refresh', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  const current = app.sessionRefresh.version
  // Another instance already saw current + 1; this one has not heard of it yet.
  await db.sql`alter table system_settings disable trigger user`
  await db.sql`update system_settings set value = ${String(current + 1)} where key = 'session_version'`
  await db.sql`alter table system_settings enable trigger user`
  const ahead = await login(app, 20, { sessionVersion: current + 1 })
  t.equal(app.sessionRefresh.version, current)
  const res = await app.inject({ url: '/me', headers: { cookie: ahead, ...API } })
  t.equal(res.statusCode, 200)
  t.equal(app.sessionRefresh.version, current + 1, 'the instance caught up')
  t.same(refreshCalls, [], 'the session was already fresh')

  // After a restore that lowered the version, the catch-up confirms it and the session is refreshed.
  const restored = await login(app, 21, { sessionVersion: current + 50 })
  const refreshed = await app.inject({ url: '/me', headers: { cookie: restored, ...API } })
  t.equal(refreshed.json().sessionVersion, current + 1)
  t.same(refreshCalls, [21])
})

t.test('after a forced logout the protected handler never runs, with a real asynchronous store', async (t) => {
  const { app } = await buildApp(t, { url: db.url, refresh: () => null, sessionOptions: { store: pgSessionStore(t, db.url) } })
  let handled = 0
  app.get('/count', { config: { loginRequired: true } }, async () => { handled++; return 'handled' })
  const cookie = await login(app, 22)
  await bump(app)
  const res = await app.inject({ url: '/count', headers: { cookie, ...API } })
  t.equal(res.statusCode, 401)
  t.equal(handled, 0, 'the protected handler did not run')
})
