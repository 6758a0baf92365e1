// Tests that kill the mutants that survived the mutation pass after the fifth
// review: each names the promise that the planted bug broke.
import t from 'tap'
import { jitter, MAX_TIMER_MS } from '../lib/timeout.js'
import { API, buildApp, bumpAndWait, getMe, login } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'

const db = await createDatabase(t)

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
