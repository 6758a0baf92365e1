// Issue 10, "A logout is never lost": the request-path scenarios, one test each,
// named after the scenario. Each of them passed 0.1.0's suite and failed against 0.1.0.
import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { API, buildApp, bumpAndWait, gate, getMe, login, sessionCookie, type TestApp } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { pgSessionStore } from './helpers/pg-store.js'

const db = await createDatabase(t)

const bump = (...apps: TestApp[]): Promise<number> => bumpAndWait(db.sql, ...apps)

const me = getMe

t.test('10.1 renumbered id bypasses a logout: a session refreshed to a new id is logged out by that id\'s later logout', async (t) => {
  // The ETL renumbers 1001 to 1061; the app's refresh returns the new id.
  const renumbered = await buildApp(t, { url: db.url, refresh: (s) => ({ id: s.get('id') === 1001 ? 1061 : s.get('id') }) })
  const moved = await login(renumbered.app, 1001)
  const held = await login(renumbered.app, 1061)
  await bump(renumbered)
  await renumbered.app.sessionRefresh.logoutUser(1061)
  t.match((await me(renumbered.app, moved)).json(), { statusCode: 401, reason: 'user-logout' }, 'the session that logged in as 1001 is out')
  t.match((await me(renumbered.app, held)).json(), { statusCode: 401, reason: 'user-logout' }, 'as is the one that held 1061')

  // The same when only the type changes: postgres.js returns int8 as a string.
  const retyped = await buildApp(t, { url: db.url, refresh: (s) => ({ id: String(s.get('id')) as unknown as number }) })
  const numeric = await login(retyped.app, 1062)
  await bump(retyped)
  await retyped.app.sessionRefresh.logoutUser('1062')
  t.match((await me(retyped.app, numeric)).json(), { statusCode: 401, reason: 'user-logout' }, '1062 and \'1062\' are the same user')
})

t.test('10.1 renumbered id: a logout of the id the session held before the ETL still ends it', async (t) => {
  const { app } = await buildApp(t, { url: db.url, refresh: (s) => ({ id: s.get('id') === 1101 ? 1161 : s.get('id') }) })
  const cookie = await login(app, 1101)
  await bump({ app } as TestApp)
  t.equal((await me(app, cookie)).json().id, 1161, 'refreshed to the new id')
  await app.sessionRefresh.logoutUser(1101)
  t.match((await me(app, cookie)).json(), { statusCode: 401, reason: 'user-logout' })
})

t.test('10.1 renumbered twice (1201 to 1261 to 1271): a logout of the first id still ends the session', async (t) => {
  const next: Record<string, number> = { 1201: 1261, 1261: 1271 }
  const { app } = await buildApp(t, { url: db.url, refresh: (s) => ({ id: next[String(s.get('id'))] ?? s.get('id') }) })
  const cookie = await login(app, 1201)
  await bump({ app } as TestApp)
  t.equal((await me(app, cookie)).json().id, 1261)
  await bump({ app } as TestApp)
  t.equal((await me(app, cookie)).json().id, 1271, 'renumbered twice')
  await app.sessionRefresh.logoutUser(1201)
  t.match((await me(app, cookie)).json(), { statusCode: 401, reason: 'user-logout' }, 'the id it held two ETLs ago')
})

t.test('10.2 a logout that lands while a refresh waits for a slot is not lost', async (t) => {
  const held = gate()
  const test = await buildApp(t, {
    url: db.url,
    plugin: { maxConcurrentRefreshes: 1 },
    refresh: async (s) => {
      if (s.get('id') === 65) await held.wait
      return {}
    }
  })
  const blocker = await login(test.app, 65)
  const victim = await login(test.app, 66)
  await bump(test)
  const first = me(test.app, blocker)
  await eventually('65 to hold the only slot', () => test.refreshCalls.length === 1)
  const queued = me(test.app, victim)
  await test.app.sessionRefresh.logoutUser(66) // committed and read while 66 waits for the slot
  held.open()
  t.equal((await first).statusCode, 200)
  t.match((await queued).json(), { statusCode: 401, reason: 'user-logout' })
  t.same(test.refreshCalls, [65, 66])
})

t.test('10.2 a logout that lands while the refresh runs is not lost either', async (t) => {
  const held = gate()
  const test = await buildApp(t, { url: db.url, refresh: async () => { await held.wait; return {} } })
  const cookie = await login(test.app, 67)
  await bump(test)
  const pending = me(test.app, cookie)
  await eventually('the refresh to start', () => test.refreshCalls.length === 1)
  await test.app.sessionRefresh.logoutUser(67)
  held.open()
  t.match((await pending).json(), { statusCode: 401, reason: 'user-logout' })
})

/**
 * Replaces session_user_versions as a restore of an older dump would: triggers
 * off, older rows back, each with the transaction id it had then (long since
 * committed, so no read of "what changed since" would find it).
 */
async function restoreUsers (rows: Array<{ userId: string, version: number, logoutSeq: number }>): Promise<void> {
  await db.sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`
    await tx`truncate session_user_versions`
    for (const row of rows) {
      await tx`insert into session_user_versions (user_id, version, logout_seq, changed_xid) values (${row.userId}, ${row.version}, ${row.logoutSeq}, '3')`
    }
  })
}

t.test('10.3 the per-user table going back in time does not disable logouts', async (t) => {
  const store = pgSessionStore(t, db.url)
  const running = await buildApp(t, { url: db.url, sessionOptions: { store }, plugin: { pollInterval: 100 } })
  const cookie = await login(running.app, 71)
  await running.app.sessionRefresh.refreshUser(71)
  await running.app.sessionRefresh.refreshUser(71)
  t.equal((await me(running.app, cookie)).statusCode, 200)
  // A restore (or a DELETE, or a row re-created at version 1) takes the user back.
  await restoreUsers([{ userId: '71', version: 1, logoutSeq: 0 }])
  await eventually('the running instance to read the restored table', async () => {
    const [row] = await db.sql`select version::text from session_user_versions where user_id = '71'`
    return row?.version === '1' && (await me(running.app, cookie)).statusCode === 200
  })
  await running.app.sessionRefresh.logoutUser(71)
  t.match((await me(running.app, cookie)).json(), { statusCode: 401, reason: 'user-logout' }, 'the next logout ends a session from before the restore')

  // A row re-created at version 1 with its trigger on gets a fresh version, not 1.
  await db.sql`delete from session_user_versions where user_id = '72'`
  await db.sql`insert into session_user_versions (user_id, version) values ('72', 1)`
  const [recreated] = await db.sql`select version::text from session_user_versions where user_id = '72'`
  t.ok(Number(recreated!.version) > 1_000_000, `a re-created row gets a version that never repeats (${recreated!.version})`)
})

t.test('10.7 maxConcurrentRefreshes still limits once refreshes time out, and a timed-out call is never made twice', async (t) => {
  const held = gate()
  let running = 0
  let peak = 0
  const test = await buildApp(t, {
    url: db.url,
    // 'keep': a failed refresh serves the stale session, so the same session can ask again.
    plugin: { maxConcurrentRefreshes: 2, refreshTimeout: 200, onRefreshError: 'keep' },
    refresh: async () => {
      peak = Math.max(peak, ++running)
      await held.wait
      running--
      return {}
    }
  })
  const cookies = [await login(test.app, 81), await login(test.app, 82), await login(test.app, 83), await login(test.app, 84)]
  await bump(test)
  const answers = await Promise.all(cookies.map((cookie) => me(test.app, cookie)))
  t.same(answers.map((r) => r.statusCode), Array(4).fill(200), 'every request is answered at the timeout, queued ones too')
  const timeouts = (): number => test.logs.filter((l) => (l.err as { code?: string } | undefined)?.code === 'FST_SESSION_REFRESH_TIMEOUT').length
  t.equal(timeouts(), 4)
  t.equal(test.refreshCalls.length, 2, 'the queued sessions were never refreshed: nobody waited for them any more')
  t.equal(test.app.sessionRefresh.status().refreshesRunning, 2, 'the timed-out calls still hold their slots')
  t.equal((await me(test.app, cookies[0]!)).statusCode, 200)
  t.equal(timeouts(), 5, 'a session whose call still runs gets the timed-out answer')
  t.equal(test.refreshCalls.length, 2, 'without a second call')
  held.open()
  await eventually('the slots to free', () => test.app.sessionRefresh.status().refreshesRunning === 0)
  t.equal(peak, 2, 'never more than maxConcurrentRefreshes calls at once')
  t.match(test.app.sessionRefresh.status(), { refreshFailures: 4, refreshes: 0 })
})

t.test('10.7 after a storm of 300 stale sessions every slot is free again', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { maxConcurrentRefreshes: 4 } })
  const cookies = await Promise.all(Array.from({ length: 300 }, (_, i) => login(test.app, 10_000 + i)))
  await bump(test)
  const answers = await Promise.all(cookies.map((cookie) => me(test.app, cookie)))
  t.ok(answers.every((r) => r.statusCode === 200), 'every request was refreshed')
  t.match(test.app.sessionRefresh.status(), { refreshesRunning: 0, refreshes: 300, refreshFailures: 0 })
})

t.test('10.9 logoutUser(id, { keep }) survives an overlapping request that saves the old session back', async (t) => {
  const held = gate()
  const test = await buildApp(t, { url: db.url }) // @fastify/session's default rolling: true
  let entered = false
  test.app.get('/slow', async () => { entered = true; await held.wait; return 'slow' })
  test.app.post('/password', async (request) => {
    return { version: await test.app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request }) }
  })
  const cookie = await login(test.app, 91)
  const elsewhere = await login(test.app, 91)
  const slow = test.app.inject({ url: '/slow', headers: { cookie } }) // loaded the session before the password change
  await eventually('the slow request to hold its copy of the session', () => entered)
  t.equal((await test.app.inject({ method: 'POST', url: '/password', headers: { cookie, ...API } })).statusCode, 200)
  held.open()
  t.equal((await slow).statusCode, 200, 'the overlapping request saved its older copy last')
  t.equal((await me(test.app, cookie)).statusCode, 200, 'the session that changed the password stays in')
  t.equal((await me(test.app, cookie)).statusCode, 200, 'and stays in')
  t.match((await me(test.app, elsewhere)).json(), { reason: 'user-logout' }, 'every other session of the user is out')
})

t.test('10.10 per-user versions agree between instances after the table goes back: no refresh back and forth', async (t) => {
  const store = pgSessionStore(t, db.url)
  const a = await buildApp(t, { url: db.url, sessionOptions: { store }, plugin: { pollInterval: 100 } })
  const cookie = await login(a.app, 101)
  await a.app.sessionRefresh.refreshUser(101)
  t.equal((await me(a.app, cookie)).statusCode, 200)
  await restoreUsers([{ userId: '101', version: 5, logoutSeq: 0 }])
  const b = await buildApp(t, { url: db.url, sessionOptions: { store }, plugin: { pollInterval: 100 } })
  // Both instances read the restored table (the truth), whichever was running during the restore.
  await eventually('instance a to read the restore', async () => {
    const before = a.refreshCalls.length
    await me(a.app, cookie)
    return a.refreshCalls.length > before
  })
  const calls = (): number => a.refreshCalls.length + b.refreshCalls.length
  const settled = calls()
  for (let i = 0; i < 10; i++) t.equal((await me(i % 2 === 0 ? a.app : b.app, cookie)).statusCode, 200)
  t.equal(calls(), settled, 'requests alternating between the instances refresh nothing')
})

t.test('10.11 an identity that is not a string, number or bigint is refused with a coded error, never keyed as [object Object]', async (t) => {
  const test = await buildApp(t, { url: db.url })
  test.app.post('/login-object', async (request) => {
    request.session.set('id', { id: 9 } as unknown as number)
    return { ok: true }
  })
  const objectSession = sessionCookie(await test.app.inject({ method: 'POST', url: '/login-object' }))
  const nine = await login(test.app, 9)
  const res = await me(test.app, objectSession)
  t.equal(res.statusCode, 500)
  t.match(res.json(), { code: 'FST_SESSION_REFRESH_INVALID_IDENTITY', message: /got an object; pass `identify`/ })
  await t.rejects(test.app.sessionRefresh.logoutUser({ id: 9 } as unknown as number), { code: 'FST_SESSION_REFRESH_INVALID_IDENTITY' })
  await db.sql`select session_logout_user('[object Object]')`
  t.equal((await me(test.app, nine)).statusCode, 200, 'a logout of "[object Object]" ends nobody\'s session')
  t.equal(test.refreshCalls.length, 0)

  // identify() reads an object the app stores, such as passport's serialized user.
  const passportLike = await buildApp(t, { url: db.url, plugin: { identify: (s) => (s.get('user') as { id?: number } | undefined)?.id } })
  passportLike.app.post('/login-user', async (request) => {
    (request.session as unknown as { set: (k: string, v: unknown) => void }).set('user', { id: 10, name: 'alex' })
    passportLike.app.sessionRefresh.stamp(request)
    return { ok: true }
  })
  const user = sessionCookie(await passportLike.app.inject({ method: 'POST', url: '/login-user' }))
  t.equal((await passportLike.app.inject({ url: '/public', headers: { cookie: user, ...API } })).statusCode, 200)
  await passportLike.app.sessionRefresh.logoutUser(10)
  t.match((await passportLike.app.inject({ url: '/me', headers: { cookie: user, ...API } })).json(), { reason: 'user-logout' })
})

t.test('10.12 a forced logout for user-logout leaves no field of the old user behind', async (t) => {
  const test = await buildApp(t, { url: db.url })
  test.app.post('/flags', async (request) => {
    (request.session as unknown as { set: (k: string, v: unknown) => void }).set('roles', ['admin'])
    return { ok: true }
  })
  test.app.get('/flags', async (request) => ({ roles: (request.session as unknown as { get: (k: string) => unknown }).get('roles') ?? null }))
  const cookie = await login(test.app, 121)
  await test.app.inject({ method: 'POST', url: '/flags', headers: { cookie } })
  await test.app.sessionRefresh.logoutUser(121)
  const out = await me(test.app, cookie)
  t.equal(out.json().reason, 'user-logout')
  t.not(sessionCookie(out), cookie, 'a new session id')
  for (const which of [cookie, sessionCookie(out)]) {
    t.same((await test.app.inject({ url: '/flags', headers: { cookie: which } })).json(), { roles: null })
    t.same((await test.app.inject({ url: '/public', headers: { cookie: which, ...API } })).json(), { id: null, email: null, playerId: null, sessionVersion: null })
  }
})
