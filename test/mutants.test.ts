// Tests that kill the mutants that survived the mutation passes after the fifth
// and sixth reviews: each names the promise that the planted bug broke (the last
// three: a logout that keeps this very session, read while it waited, must not end it).
import t from 'tap'
import { jitter, MAX_TIMER_MS } from '../lib/timeout.js'
import { API, buildApp, bumpAndWait, failingRefresh, gate, getMe, login } from './helpers/app.js'
import { lockTable } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { openEvents } from './helpers/sse.js'

const db = await createDatabase(t)
const EVENTS = '/session-refresh/events'

t.test('once every slot is held by a timed-out call, a stale session is answered at once, also after ordinary refreshes settled before', async (t) => {
  let hang = false
  const test = await buildApp(t, {
    url: db.url,
    plugin: { maxConcurrentRefreshes: 2, refreshTimeout: 2_000 },
    refresh: (s) => hang ? new Promise(() => {}) : ({ email: `user${String(s.get('id'))}@example.com`, playerId: 1 })
  })
  // Refreshes that settle: none of them may count as a timed-out call later.
  const early = [await login(test.app, 401), await login(test.app, 402), await login(test.app, 403)]
  await bumpAndWait(db.sql, test)
  for (const cookie of early) t.equal((await getMe(test.app, cookie)).statusCode, 200, 'an ordinary refresh')
  hang = true
  const stuck = [await login(test.app, 404), await login(test.app, 405)]
  await bumpAndWait(db.sql, test)
  for (const response of await Promise.all(stuck.map((cookie) => getMe(test.app, cookie)))) t.match(response.json(), { reason: 'refresh-error' })

  const more = await login(test.app, 406)
  await bumpAndWait(db.sql, test)
  let answered = false
  let queued = false
  const pending = getMe(test.app, more).then((response) => { answered = true; return response })
  await eventually('the request to be answered, or queued', () => {
    queued ||= test.app.sessionRefresh.status().refreshesQueued > 0
    return answered || queued
  }, 20_000)
  t.equal(queued, false, 'never queued behind the calls that hold every slot')
  t.match((await pending).json(), { reason: 'refresh-error' })
  t.match(test.app.sessionRefresh.status(), { refreshesRunning: 2, refreshesQueued: 0 })
})

t.test('a restore of session_refresh_state to a lower logout clock does not log out a login made after an earlier logout', async (t) => {
  const test = await buildApp(t, { url: db.url })
  await test.app.sessionRefresh.logoutUser(501)
  await db.sql`update session_refresh_state set logout_seq = 1` // the state row restored (by its owner)
  t.equal(await test.app.sessionRefresh.catchUp(), true)
  const cookie = await login(test.app, 501)
  t.equal((await getMe(test.app, cookie)).statusCode, 200, 'a login after the logout stays logged in')
})

t.test('a password change keeps its session when that session logged in after an earlier logout of its user', async (t) => {
  const test = await buildApp(t, { url: db.url })
  test.app.post('/password', async (request) => ({ version: await test.app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request }) }))
  await test.app.sessionRefresh.logoutUser(601)
  // Stamped with the clock of that logout: the logout is not after it, and the keep must see that.
  const cookie = await login(test.app, 601)
  t.equal((await test.app.inject({ method: 'POST', url: '/password', headers: { cookie, ...API } })).statusCode, 200)
  t.equal((await getMe(test.app, cookie)).statusCode, 200, 'the session that changed the password stays in')
})

t.test('jitter never draws a delay above what Node\'s timers take, or the timer would fire after 1 ms', async (t) => {
  const draws = Array.from({ length: 1000 }, () => jitter(MAX_TIMER_MS))
  t.ok(draws.every((ms) => ms <= MAX_TIMER_MS), 'every draw at most 2^31 - 1 ms')
  t.ok(draws.some((ms) => ms < MAX_TIMER_MS * 0.99), 'and still spread below it')
})

t.test('onRefreshError \'keep\': a logout that keeps this very session, read while its refresh ran, does not end it', async (t) => {
  const { started, failing, refresh } = failingRefresh(801)
  const { app } = await buildApp(t, { url: db.url, plugin: { onRefreshError: 'keep' }, refresh })
  // A password change: logs the user out everywhere but here.
  app.post('/password', { config: { sessionRefresh: false } }, async (request) =>
    ({ version: await app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request }) }))
  const cookie = await login(app, 801)
  await bumpAndWait(db.sql, { app })
  const pending = getMe(app, cookie)
  await started.wait
  t.equal((await app.inject({ method: 'POST', url: '/password', headers: { cookie, ...API } })).statusCode, 200)
  failing.open()
  const response = await pending
  t.equal(response.statusCode, 200, 'kept, as the failed refresh keeps it: the logout kept this session')
  t.match(response.json(), { id: 801 })
})

t.test('an event stream of a session kept by a logout read while an app hook ran (a password change in another tab) opens', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { events: EVENTS } })
  test.app.post('/password', { config: { sessionRefresh: false } }, async (request) =>
    ({ version: await test.app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request }) }))
  const inHook = gate()
  const hold = gate()
  test.app.addHook('preHandler', async (request) => {
    if (request.url !== EVENTS) return
    inHook.open()
    await hold.wait
  })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}`
  const cookie = await login(test.app, 802)
  const opening = openEvents(url, cookie)
  await inHook.wait
  t.equal((await test.app.inject({ method: 'POST', url: '/password', headers: { cookie, ...API } })).statusCode, 200)
  hold.open()
  const reader = await opening
  t.teardown(() => reader.close())
  t.equal(reader.status, 200)
  await eventually('the first event', () => reader.events.some((e) => e.event === 'version' || e.event === 'logout'), 20_000)
  t.notOk(reader.events.some((e) => e.event === 'logout'), 'not told to log out: the logout kept this session')
  t.ok(reader.events.some((e) => e.event === 'version'))
  t.equal((await getMe(test.app, cookie)).statusCode, 200, 'the session is in, as the stream said')
})

t.test('a logout that keeps this very session, read while its request waited for its catch-up, does not end it', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url, plugin: { catchUpTimeout: 15_000, queryTimeout: 60_000, pollInterval: 60_000 } })
  app.post('/password', { config: { sessionRefresh: false } }, async (request) =>
    ({ version: await app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request }) }))
  // Stamped by an instance that has read a bump this one has not.
  const cookie = await login(app, 803, { sessionVersion: app.sessionRefresh.version + 1 })
  const lock = await lockTable(t, db.sql)
  const answer = getMe(app, cookie)
  await eventually('the request to wait for its catch-up', () => logs.some((line) => /catching up/.test(line.msg) && line.userId === '803'), 20_000)
  // A password change in another tab: it commits, and is read by the same read as the catch-up's.
  const changed = app.inject({ method: 'POST', url: '/password', headers: { cookie, ...API } })
  await eventually('the logout to commit', async () =>
    (await db.sql`select 1 from session_user_versions where user_id = '803' and logout_seq > 0`).length === 1, 20_000)
  await lock.release()
  t.equal((await changed).statusCode, 200)
  const response = await answer
  t.equal(response.statusCode, 200, 'the session that changed the password stays in')
  t.match(response.json(), { id: 803 })
})
