// Behaviours at the edges of the request path and the database side: ids of
// every kind, routes registered before the plugin, login pages elsewhere, a
// store that fails mid-logout, reads that hang, several hosts. Long: each is
// one short test, and none has a theme of its own.
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import { RedisStore } from 'connect-redis'
import Fastify from 'fastify'
import { createClient } from 'redis'
import t from 'tap'
import sessionRefresh, { bumpSessionVersion } from '../lib/index.js'
import { API, PAGE, SECRET, buildApp, bumpAndWait, gate, getMe, login, sessionCookie, type TestApp } from './helpers/app.js'
import { lockTable } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { freePort } from './helpers/free-port.js'

const db = await createDatabase(t)

const bump = (...apps: TestApp[]): Promise<number> => bumpAndWait(db.sql, ...apps)

const me = getMe

t.test('user ids: strings, safe integers and bigints are users; anything else is refused with a message that says what it got', async (t) => {
  const test = await buildApp(t, { url: db.url })
  for (const [id, got] of [
    ['', 'a string of 0 characters'],
    ['x'.repeat(201), 'a string of 201 characters'],
    [1.5, 'the number 1.5'],
    [null, 'null'],
    [[9], 'an array'],
    [{ id: 9 }, 'an object'],
    [true, 'boolean']
  ] as const) {
    await t.rejects(test.app.sessionRefresh.logoutUser(id as unknown as string), {
      code: 'FST_SESSION_REFRESH_INVALID_IDENTITY',
      message: `fastify-session-refresh: a user id must be a non-empty string of at most 200 characters, a safe integer or a bigint, got ${got}; pass \`identify\` to say how to read it from the session`
    }, JSON.stringify(id))
  }
  t.equal(await test.app.sessionRefresh.logoutUser(12_345_678_901_234_567_890n) > 0, true, 'a bigint beyond 2^53 is a user id')
})

t.test('a bigint id from identify() is one user with its digits: stamped, served without a refresh, logged out by either form', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { identify: (s) => s.get('id') == null ? undefined : BigInt(s.get('id') as number) } })
  const cookie = await login(test.app, 131)
  for (let i = 0; i < 3; i++) t.equal((await me(test.app, cookie)).statusCode, 200)
  t.same(test.refreshCalls, [], 'the stamp matched the bigint id every time')
  await test.app.sessionRefresh.logoutUser('131')
  t.match((await me(test.app, cookie)).json(), { reason: 'user-logout' })
})

t.test('a stamp that is not one (garbage in the stamp field) counts as none: the session is authenticated anew and read', async (t) => {
  const test = await buildApp(t, { url: db.url })
  test.app.post('/garble', async (request) => {
    (request.session as unknown as { set: (k: string, v: unknown) => void }).set('sessionRefresh', { v: 'x', a: 1 })
    return 'ok'
  })
  const cookie = await login(test.app, 132)
  await test.app.inject({ method: 'POST', url: '/garble', headers: { cookie } })
  const res = await me(test.app, cookie)
  t.equal(res.statusCode, 200)
  t.equal(res.json().sessionVersion, test.app.sessionRefresh.version, 'stamped with real values')
  t.same(test.refreshCalls, [132])
})

t.test('a refresh that returns an id that is not one is a failed refresh, logged with the coded error', async (t) => {
  const test = await buildApp(t, { url: db.url, refresh: () => ({ id: { id: 5 } as unknown as number }) })
  const cookie = await login(test.app, 133)
  await bump(test)
  t.match((await me(test.app, cookie)).json(), { statusCode: 401, reason: 'refresh-error' })
  t.match(test.logs.find((l) => l.level === 50), { userId: '133', err: { code: 'FST_SESSION_REFRESH_INVALID_IDENTITY' } })
})

t.test('keep never keeps a session that a logout already ended, nor a request without a session', async (t) => {
  const test = await buildApp(t, { url: db.url })
  test.app.post('/password-unchecked', { config: { sessionRefresh: false, loginRoute: true } }, async (request) => {
    return { version: await test.app.sessionRefresh.logoutUser(134, { keep: request }) }
  })
  test.app.post('/password-nosession', { config: { sessionRefresh: false } }, async (request) => {
    (request as { session: unknown }).session = null
    return { version: await test.app.sessionRefresh.logoutUser(134, { keep: request }) }
  })
  const ended = await login(test.app, 134)
  // Ended by this logout, before the request below asks to be kept (the login route lets it reach the handler).
  await test.app.sessionRefresh.logoutUser(134)
  const other = await login(test.app, 134)
  const out = await test.app.inject({ method: 'POST', url: '/password-unchecked', headers: { cookie: ended, ...API } })
  t.equal(out.statusCode, 200, 'the login route let the request through, with its session emptied')
  t.match((await me(test.app, sessionCookie(out))).json(), { reason: 'not-logged-in' }, 'the emptied session was not kept')
  t.match((await me(test.app, other)).json(), { reason: 'user-logout' }, 'and the logout ended the others')
  t.equal((await test.app.inject({ method: 'POST', url: '/password-nosession', headers: API })).statusCode, 200)
})

t.test('routes registered before the plugin are still covered, through a global hook, with a warning', async (t) => {
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { warnings.push(JSON.parse(line) as { msg: string }) } } } })
  const warnings: Array<{ msg: string }> = []
  t.teardown(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: SECRET, cookie: { secure: false } })
  app.post('/login', async (request) => { request.session.set('id', 135); app.sessionRefresh.stamp(request); return 'ok' })
  app.get('/me', { config: { loginRequired: true } }, async (request) => ({ id: request.session.get('id') ?? null }))
  app.get('/open', { config: { sessionRefresh: false } }, async () => 'open')
  app.register(sessionRefresh, { connection: db.url, refresh: () => ({ id: 136 }), events: '/events' })
  await app.ready()
  t.match(warnings.find((w) => w.msg.startsWith('fastify-session-refresh was registered after some routes')), { msg: /Register it before your routes/ })
  const cookieHeader = sessionCookie(await app.inject({ method: 'POST', url: '/login' }))
  await bumpSessionVersion(db.sql)
  await eventually('the bump', async () => (await app.inject({ url: '/me', headers: { cookie: cookieHeader, ...API } })).json().id === 136)
  t.equal((await app.inject({ url: '/me', headers: API })).statusCode, 401, 'loginRequired is read from the route config')
  await app.sessionRefresh.logoutUser(136)
  // The event stream's script is never checked, through the global hook too: the logout is left for the next request.
  const script = await app.inject({ url: '/events/client.js', headers: { cookie: cookieHeader } })
  t.equal(script.statusCode, 200, 'the script, to a session that must log in again')
  t.equal(script.headers['set-cookie'], undefined)
  // A page at the login path that this app does not serve: a 404 here, never a redirect to itself (a loop).
  const toLogin = await app.inject({ url: '/login?next=%2Fme', headers: { cookie: cookieHeader, ...PAGE } })
  t.equal(toLogin.statusCode, 404, 'the login path is never sent to log in')
  t.match((await app.inject({ url: '/me', headers: { cookie: cookieHeader, ...API } })).json(), { statusCode: 401 }, 'and the session was ended there')
})

t.test('a login page on another site gets a full URL, and the route\'s own onRequest hooks see the refreshed session', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { loginUrl: 'https://auth.example.com/login' }, refresh: () => ({ playerId: 999 }) })
  const seen: unknown[] = []
  test.app.get('/hooked', { onRequest: async (request) => { seen.push(request.session.get('playerId')) } }, async () => 'hooked')
  test.app.get('/hooked-twice', { onRequest: [async (request) => { seen.push(request.session.get('playerId')) }] }, async () => 'twice')
  const cookie = await login(test.app, 137)
  await bump(test)
  await test.app.inject({ url: '/hooked', headers: { cookie } })
  await test.app.inject({ url: '/hooked-twice', headers: { cookie } })
  t.same(seen, [999, 999], 'the plugin ran first')
  const page = await test.app.inject({ url: '/me?x=1', headers: PAGE })
  t.equal(page.headers.location, 'https://auth.example.com/login?next=%2Fme%3Fx%3D1&reason=not-logged-in')
})

/** A Redis server of this test's own, that the test can stop, and a client of it. */
async function ownRedis (t: Parameters<typeof buildApp>[0]): Promise<ReturnType<typeof createClient>> {
  const port = await freePort()
  const dir = await mkdtemp(join(tmpdir(), 'fsr-redis-'))
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' })
  t.teardown(async () => {
    server.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
  })
  const client = createClient({ url: `redis://127.0.0.1:${port}`, disableOfflineQueue: true, socket: { reconnectStrategy: false } })
  client.on('error', () => {})
  await eventually('redis to answer', async () => client.connect().then(() => true, () => false), 10_000)
  t.teardown(() => client.isOpen ? client.destroy() : undefined)
  return client
}

t.test('a store that fails while a session is being logged out: nothing is saved, and the request is still answered', async (t) => {
  const client = await ownRedis(t)
  let stopRedis = (): void => {}
  const test = await buildApp(t, {
    url: db.url,
    sessionOptions: { store: new RedisStore({ client, prefix: 'fsr:' }) },
    // The user is gone; the store dies just before the plugin ends the session.
    refresh: async () => { stopRedis(); return null }
  })
  const cookieHeader = await login(test.app, 138)
  await bump(test)
  stopRedis = () => { client.destroy() }
  const res = await me(test.app, cookieHeader)
  t.match(res.json(), { statusCode: 401, reason: 'user-gone' }, 'answered all the same')
  t.equal(res.headers['set-cookie'], undefined, 'nothing was saved, no cookie was sent')
  t.match(test.logs.find((l) => l.msg === 'Could not end the session of user 138'), { level: 50, userId: '138' })
})

t.test('a store that fails while the plugin checks that a refreshed session still exists: an error answer, and nothing of the refresh is written', async (t) => {
  const client = await ownRedis(t)
  let stopRedis = (): void => {}
  const test = await buildApp(t, {
    url: db.url,
    sessionOptions: { store: new RedisStore({ client, prefix: 'fsr:' }) },
    refresh: async () => { stopRedis(); return { email: 'new@example.com' } }
  })
  const cookieHeader = await login(test.app, 139)
  await bump(test)
  stopRedis = () => { client.destroy() }
  const res = await me(test.app, cookieHeader)
  t.equal(res.statusCode, 500, 'the store cannot say whether the session still exists')
  t.equal(res.headers['set-cookie'], undefined, 'nothing was saved, no cookie was sent')
  t.notMatch(res.body, /new@example.com/, 'the refreshed fields reached nobody')
})

t.test('a read that hangs fails after queryTimeout, drops its connection, and the next read works', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { queryTimeout: 300 } })
  const lock = await lockTable(t, db.sql)
  t.equal(await test.app.sessionRefresh.catchUp(), false)
  await eventually('the read to time out', () => test.app.sessionRefresh.status().lastSyncError !== null)
  t.match(test.app.sessionRefresh.status(), {
    listening: false,
    lastSyncError: { code: 'FST_SESSION_REFRESH_QUERY_TIMEOUT', message: 'fastify-session-refresh: reading the session versions did not settle within 300 ms; its connection was dropped' }
  })
  await lock.release()
  await eventually('a read that works', async () => await test.app.sessionRefresh.catchUp(), 10_000)
  t.match(test.app.sessionRefresh.status(), { listening: true, lastSyncError: null })
})

t.test('a connection with several hosts settles on one that answers, as a primary', async (t) => {
  const url = new URL(db.url)
  const refused = await freePort()
  const several = `postgres://${url.username}:${url.password}@127.0.0.1:${refused},${url.hostname}:${url.port}${url.pathname}`
  const test = await buildApp(t, { url: several })
  t.equal(test.app.sessionRefresh.status().listening, true)
  const { app } = await buildApp(t, {
    url: db.url,
    // postgres.js takes arrays of hosts and ports, though its types say one.
    plugin: { connection: { host: ['127.0.0.1', url.hostname] as unknown as string, port: [refused, Number(url.port)] as unknown as number, user: url.username, password: decodeURIComponent(url.password), database: url.pathname.slice(1) } }
  })
  const bumped = await bump(test, { app } as TestApp)
  t.equal(app.sessionRefresh.version, bumped)
})

t.test('keep never keeps a session whose user was logged out while its request ran', async (t) => {
  const test = await buildApp(t, { url: db.url })
  test.app.post('/password', { config: { loginRequired: true } }, async (request) => {
    // Another admin logs the user out while this request runs.
    await db.sql`select session_logout_user('139')`
    await test.app.sessionRefresh.catchUp()
    return { version: await test.app.sessionRefresh.logoutUser(139, { keep: request }) }
  })
  const cookie = await login(test.app, 139)
  t.equal((await test.app.inject({ method: 'POST', url: '/password', headers: { cookie, ...API } })).statusCode, 200)
  t.match((await me(test.app, cookie)).json(), { reason: 'user-logout' }, 'the session was not kept')
})

t.test('refreshUser fails with a coded error once the app is closing', async (t) => {
  const { app } = await buildApp(t, { url: db.url })
  await app.close()
  await t.rejects(app.sessionRefresh.refreshUser(140), { code: 'FST_SESSION_REFRESH_CLOSED', message: 'fastify-session-refresh: the app is closing; the refresh was not made' })
})

t.test('with pluginTimeout off, connectTimeout alone bounds registration', async (t) => {
  const app = Fastify({ pluginTimeout: 0 })
  t.teardown(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: SECRET, cookie: { secure: false } })
  const port = await freePort()
  await t.rejects(async () => { await app.register(sessionRefresh, { connection: `postgres://postgres@127.0.0.1:${port}/x`, connectTimeout: 300, refresh: () => null }) }, {
    code: 'FST_SESSION_REFRESH_DATABASE_UNAVAILABLE',
    message: /within 300 ms/
  })
})

t.test('a login that skipped stamp() is stamped on a route with sessionRefresh: false too, without a refresh', async (t) => {
  const test = await buildApp(t, { url: db.url })
  const cookie = await login(test.app, 141, { stamp: false })
  t.equal((await test.app.inject({ url: '/unchecked', headers: { cookie, ...API } })).json().sessionVersion, -1, 'stamped, its data marked as not read yet')
  t.same(test.refreshCalls, [], 'no refresh there')
  t.equal((await me(test.app, cookie)).json().sessionVersion, test.app.sessionRefresh.version, 'read at the next checked request')
  t.same(test.refreshCalls, [141])
})

t.test('a session stamped ahead, whose user the catch-up shows logged out, is logged out', async (t) => {
  const test = await buildApp(t, { url: db.url })
  const current = test.app.sessionRefresh.version
  const cookie = await login(test.app, 142, { sessionVersion: current + 1 }) // another instance already read more
  // What that other instance read, and a logout this one has not heard of (no notification).
  await db.sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`
    await tx`update system_settings set value = ${String(current + 1)} where key = 'session_version'`
  })
  await db.sql.begin(async (tx) => {
    await tx`alter table session_user_versions disable trigger session_user_version_notify`
    await tx`select session_logout_user('142')`
    await tx`alter table session_user_versions enable trigger session_user_version_notify`
  })
  t.match((await me(test.app, cookie)).json(), { statusCode: 401, reason: 'user-logout' })
  t.same(test.refreshCalls, [], 'not refreshed first')
})

t.test('an id that changes while a refresh moves the session to it is refreshed again on the next request', async (t) => {
  let during = async (): Promise<void> => {}
  const test = await buildApp(t, {
    url: db.url,
    refresh: async (s) => {
      await during()
      return { id: s.get('id') === 143 ? 144 : s.get('id') }
    }
  })
  const cookie = await login(test.app, 143)
  await bump(test)
  // While the refresh reads, user 144 changes (a role, say): the stamp must not claim to have read it.
  during = async () => { await test.app.sessionRefresh.refreshUser(144) }
  t.equal((await me(test.app, cookie)).json().id, 144)
  during = async () => {}
  t.equal((await me(test.app, cookie)).json().id, 144)
  t.same(test.refreshCalls, [143, 144], 'refreshed again, as 144')
  t.equal((await me(test.app, cookie)).statusCode, 200)
  t.same(test.refreshCalls, [143, 144], 'then fresh')
})

t.test('sessions stamped by 0.1.0 with the global version only follow 0.1.0\'s rule for logouts, then get a stamp of their own', async (t) => {
  const test = await buildApp(t, { url: db.url })
  test.app.post('/login-010', async (request) => {
    // What 0.1.0 kept: the fields at the top of the session, without a user stamp (0.1.0 before per-user versions).
    const s = request.session as unknown as { set: (k: string, v: unknown) => void }
    s.set('id', (request.body as { id: number }).id)
    s.set('sessionVersion', 1)
    return 'ok'
  })
  const loggedOut = sessionCookie(await test.app.inject({ method: 'POST', url: '/login-010', payload: { id: 145 } }))
  const unknown = sessionCookie(await test.app.inject({ method: 'POST', url: '/login-010', payload: { id: 146 } }))
  await test.app.sessionRefresh.logoutUser(145)
  t.match((await me(test.app, loggedOut)).json(), { reason: 'user-logout' }, 'a logout after its stamp ends it')
  t.equal((await me(test.app, unknown)).statusCode, 200, 'a user with no change is stamped anew')
  t.equal((await me(test.app, unknown)).json().sessionVersion, test.app.sessionRefresh.version)
})

t.test('refreshUser on a dead link fails with a coded error after queryTimeout, and works again once its connections are new', async (t) => {
  const { FaultyProxy } = await import('./helpers/proxy.js')
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const { app } = await buildApp(t, { url: proxy.url(db.url), plugin: { queryTimeout: 1000 } })
  await app.sessionRefresh.refreshUser(147) // the writer's connection is open
  proxy.blackHole()
  await t.rejects(app.sessionRefresh.refreshUser(147), {
    code: 'FST_SESSION_REFRESH_QUERY_TIMEOUT',
    message: 'fastify-session-refresh: refreshUser did not settle within 1000 ms; its connection was dropped'
  })
  const [before] = await db.sql<[{ version: string }]>`select version::text from session_user_versions where user_id = '147'`
  // The writer is on a new link now; the reads are not, yet: the change is made, and not read back.
  await t.rejects(app.sessionRefresh.refreshUser(147), {
    code: 'FST_SESSION_REFRESH_NOT_APPLIED',
    message: 'fastify-session-refresh: refreshUser was committed, but this instance could not read it back within 1000 ms, so its sessions may not follow it yet (retrying is harmless)'
  })
  const [after] = await db.sql<[{ version: string }]>`select version::text from session_user_versions where user_id = '147'`
  t.ok(BigInt(after!.version) > BigInt(before!.version), 'that change was committed')
  t.ok(await app.sessionRefresh.refreshUser(147) > 0, 'both connections are new, through new links')
  t.equal(app.sessionRefresh.status().lastSyncError, null, 'and read back')
})

t.test("a notice from the app's own trigger on the plugin's tables stays off the console", async (t) => {
  await db.sql.unsafe(`
    create or replace function audit_user_change() returns trigger language plpgsql as $$
    begin raise notice 'user % changed', new.user_id; return new; end $$;
    create trigger audit_user_change after update or insert on session_user_versions for each row execute function audit_user_change()`)
  t.teardown(() => db.sql.unsafe('drop trigger audit_user_change on session_user_versions'))
  const { app } = await buildApp(t, { url: db.url })
  const printed: unknown[] = []
  const log = console.log
  console.log = (...args: unknown[]) => { printed.push(args) }
  try {
    await app.sessionRefresh.refreshUser(148)
  } finally {
    console.log = log
  }
  t.same(printed, [])
})
