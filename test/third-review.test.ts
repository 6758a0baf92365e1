// Findings of the third adversarial review (request path), each a test named
// after its scenario, written against the code that had the defect: orders of
// events (a logout this instance has not read yet, a logout while a handler
// runs), ids that change only in type, sessions without a stamp on the event
// stream, and refreshes that never settle.
import { runInNewContext } from 'node:vm'
import v8 from 'node:v8'
import session from '@fastify/session'
import t from 'tap'
import { API, buildApp, bumpAndWait, gate, getMe, login } from './helpers/app.js'
import { createDatabase } from './helpers/database.js'
import { pgSessionStore } from './helpers/pg-store.js'
import { openEvents } from './helpers/sse.js'

const db = await createDatabase(t)

t.test('a keep does not bring back a session that a logout this instance has not read yet ended already', async (t) => {
  // This instance reads per-user changes only every 60 s: a logout made elsewhere is not read yet.
  await db.sql`update session_refresh_state set user_notify = false`
  t.teardown(() => db.sql`update session_refresh_state set user_notify = true`)
  const { app } = await buildApp(t, { url: db.url, plugin: { userPollInterval: 60_000, pollInterval: 60_000 } })
  app.post('/password', async (request) => ({ version: await app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request }) }))
  const cookie = await login(app, 301)
  t.equal((await getMe(app, cookie)).statusCode, 200)
  await db.sql`select session_logout_user('301')` // an admin, or another instance
  const changed = await app.inject({ method: 'POST', url: '/password', headers: { cookie, ...API } })
  t.equal(changed.statusCode, 200, 'the password change went through')
  t.match((await getMe(app, cookie)).json(), { statusCode: 401, reason: 'user-logout' }, 'the session the earlier logout ended stays ended')
  const [row] = await db.sql<[{ keep_key: string | null }]>`select keep_key from session_user_versions where user_id = '301'`
  t.equal(row!.keep_key, null, 'the table kept no session')

  // The control: a keep with no logout in between keeps the session.
  const other = await login(app, 302)
  t.equal((await app.inject({ method: 'POST', url: '/password', headers: { cookie: other, ...API } })).statusCode, 200)
  t.equal((await getMe(app, other)).statusCode, 200, 'kept')
})

t.test('an id that the app sets again under another type (\'7\' then 7) is the same login: a later logout still ends it', async (t) => {
  const test = await buildApp(t, { url: db.url })
  const { app } = test
  app.post('/as-number', async (request) => { request.session.set('id', Number(request.session.get('id'))); return 'ok' })
  const cookie = await login(app, '303' as unknown as number) // int8 read as a string, as postgres.js does
  t.equal((await getMe(app, cookie)).statusCode, 200)
  await app.inject({ method: 'POST', url: '/as-number', headers: { cookie } })
  // No request between the change of type and the logout: the next one sees both at once.
  await app.sessionRefresh.logoutUser('303')
  t.match((await getMe(app, cookie)).json(), { statusCode: 401, reason: 'user-logout' })

  // And a change of type alone changes nothing: no refresh, the same login.
  const other = await login(app, '342' as unknown as number)
  t.equal((await getMe(app, other)).statusCode, 200)
  const calls = test.refreshCalls.length
  await app.inject({ method: 'POST', url: '/as-number', headers: { cookie: other } })
  t.match((await getMe(app, other)).json(), { id: 342 }, 'the session holds the number')
  t.equal(test.refreshCalls.length, calls, 'not a new login, so no refresh')
})

t.test('an app logout (session.destroy()) while the handler of a refreshed request runs is not undone by that request\'s save', async (t) => {
  for (const rolling of [false, true]) {
    const slow = gate()
    let entered = (): void => {}
    const inHandler = new Promise<void>((resolve) => { entered = resolve })
    const test = await buildApp(t, { url: db.url, sessionOptions: { rolling, store: pgSessionStore(t, db.url) } })
    test.app.post('/logout', { config: { sessionRefresh: false } }, async (request) => { await request.session.destroy(); return 'ok' })
    test.app.get('/report', { config: { loginRequired: true } }, async (request) => {
      entered()
      await slow.wait
      // An app may save the session itself, too.
      if (rolling) await request.session.save()
      return { id: request.session.get('id') }
    })
    const cookie = await login(test.app, rolling ? 304 : 305)
    await bumpAndWait(db.sql, test)
    const pending = test.app.inject({ url: '/report', headers: { cookie, ...API } }) // stale: refreshed, then a slow handler
    await inHandler
    t.equal((await test.app.inject({ method: 'POST', url: '/logout', headers: { cookie } })).statusCode, 200)
    slow.open()
    t.equal((await pending).statusCode, 200, `rolling ${rolling}: the slow request is answered`)
    t.match((await getMe(test.app, cookie)).json(), { statusCode: 401, reason: 'not-logged-in' }, `rolling ${rolling}: the old cookie stays logged out`)
    t.ok(test.logs.some((l) => l.msg === 'Not saving a refreshed session that was logged out meanwhile'))
  }
})

t.test('a session without a stamp yet (a login that skipped stamp()) is held to the per-session limit of event streams', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { events: '/events', maxEventStreamsPerSession: 2 } })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}/events`
  const cookie = await login(test.app, 306, { stamp: false })
  const statuses: number[] = []
  for (let i = 0; i < 4; i++) {
    const stream = await openEvents(url, cookie)
    t.teardown(() => stream.close())
    statuses.push(stream.status)
  }
  t.same(statuses, [200, 200, 429, 429])
})

t.test('the event stream\'s refusals (401, 429) store no session and send no cookie', async (t) => {
  const store = new session.MemoryStore()
  const test = await buildApp(t, { url: db.url, sessionOptions: { store }, plugin: { events: '/events', maxEventStreamsPerSession: 1 } })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}/events`
  const cookie = await login(test.app, 307)
  const stored = (): number => (store as unknown as { store: Map<string, unknown> }).store.size
  const before = stored()
  const open = await openEvents(url, cookie)
  t.teardown(() => open.close())
  for (const [who, expected] of [[undefined, 401], [cookie, 429]] as const) {
    for (let i = 0; i < 3; i++) {
      const refused = await openEvents(url, who)
      await refused.ended
      t.equal(refused.status, expected)
      t.equal(refused.setCookie, null, `${expected}: no cookie`)
    }
  }
  t.equal(stored(), before, 'no session was stored')
})

t.test('refreshes that never settle: requests answered by the timeout are not held in memory, and once every slot is held by such a call, the next ones are answered at once', async (t) => {
  v8.setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const held = new Set<WeakRef<object>>()
  const test = await buildApp(t, {
    url: db.url,
    sessionOptions: { store: pgSessionStore(t, db.url) }, // it holds no request (a memory store keeps the session, and its request)
    plugin: { maxConcurrentRefreshes: 2, refreshTimeout: 200 },
    refresh: () => new Promise(() => {}) // a database call that never comes back
  })
  test.app.addHook('onRequest', async (request) => { held.add(new WeakRef(request)) })
  const cookies = []
  for (let id = 310; id < 340; id++) cookies.push(await login(test.app, id))
  await bumpAndWait(db.sql, test)
  held.clear()
  // Two take the slots and hang; the 28 others queue behind them, and are answered at their timeout.
  const answers = await Promise.all(cookies.map((cookie) => getMe(test.app, cookie)))
  t.same(new Set(answers.map((r) => r.json().reason)), new Set(['refresh-error']))
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
  const reachable = [...held].filter((ref) => ref.deref() !== undefined).length
  t.ok(reachable <= 2, `at most the two running calls hold their requests (${reachable} of ${held.size} still reachable)`)
  t.match(test.app.sessionRefresh.status(), { refreshesRunning: 2 })

  const more = await login(test.app, 340)
  await bumpAndWait(db.sql, test)
  const answer = await getMe(test.app, more)
  t.match(answer.json(), { statusCode: 401, reason: 'refresh-error' })
  t.match(test.app.sessionRefresh.status(), { refreshesRunning: 2, refreshesQueued: 28 },
    'not queued: every slot is held by a call that outlived its timeout (the 28 stay until a slot frees, holding nothing)')
  t.match(test.logs.find((l) => l.userId === '340' && l.level === 50), {
    err: { code: 'FST_SESSION_REFRESH_TIMEOUT', message: 'refresh() was not called: each of the 2 refresh slots is held by a call that did not settle within 200 ms' }
  })
})

t.test('the status route answers a session that must log in again with the status, not a 401', async (t) => {
  const { app } = await buildApp(t, { url: db.url, plugin: { statusRoute: '/health' } })
  const cookie = await login(app, 341)
  await app.sessionRefresh.logoutUser(341)
  const health = await app.inject({ url: '/health', headers: { cookie, ...API } })
  t.equal(health.statusCode, 200)
  t.match(health.json(), { listening: true })
  t.match((await getMe(app, cookie)).json(), { statusCode: 401 }, 'and the session is ended')
})
