// Issue 13: one scenario suite, run in every cell of the matrix of session
// stacks (test/matrix/cell.ts), with real stores: memory, connect-pg-simple
// on PostgreSQL, connect-redis on Redis, and @fastify/secure-session's
// encrypted cookie; each with and without @fastify/passport.
import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { PAGE } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { buildCell, cookieOf, type Cell, type Stack } from './matrix/cell.js'

const db = await createDatabase(t)
const STACKS: Stack[] = ['memory', 'pg', 'redis', 'secure']
let nextId = 1000

async function bump (cell: Cell): Promise<number> {
  const version = await bumpSessionVersion(db.sql)
  for (const app of cell.apps) await eventually(`version ${version}`, () => app.sessionRefresh.version === version)
  return version
}

/** A user of the cell's directory, with an id of its own. */
function user (cell: Cell): number {
  const id = nextId++
  cell.users.set(id, { id, playerId: id * 10, deleted: false })
  return id
}

for (const stack of STACKS) {
  for (const passport of [false, true]) {
    // Long: one cell, and one subtest per scenario of the suite, all on the cell built here.
    t.test(`${stack}${passport ? ' + passport' : ''}`, async (t) => {
      const cell = await buildCell(t, { stack, passport }, db.url)
      t.comment(cell.name)

      t.test('login, then a bump: refreshed once, with the fresh data, on either instance', async (t) => {
        const id = user(cell)
        const cookie = await cell.login(0, id)
        const before = cell.refreshCalls.length
        t.equal((await cell.get(1, cookie, '/me')).statusCode, 200)
        t.equal(cell.refreshCalls.length, before, 'the login\'s stamp survived the session\'s regeneration: no refresh')
        cell.users.get(id)!.playerId = 77
        await bump(cell)
        const calls = cell.refreshCalls.length
        const first = await cell.get(1, cookie, '/me')
        t.same(first.json(), { id, playerId: 77, authenticated: true })
        // A stateless session's new stamp travels in the new cookie.
        const next = stack === 'secure' ? cookieOf(first) : cookie
        t.same((await cell.get(0, next, '/me')).json(), { id, playerId: 77, authenticated: true })
        t.equal(cell.refreshCalls.length - calls, 1, 'one refresh in all')
      })

      t.test('parallel requests after a bump: one refresh per session, never one shared by two users or two logins', async (t) => {
        const [ann, bob] = [user(cell), user(cell)]
        const sessions = [[ann, await cell.login(0, ann)], [ann, await cell.login(0, ann)], [bob, await cell.login(0, bob)]] as const
        await bump(cell)
        const before = cell.refreshCalls.length
        const asking = (): number => cell.logs.filter((l) => l.msg.startsWith('Refreshing stale session')).length
        const askedBefore = asking()
        let release = (): void => {}
        cell.refreshesHeld = new Promise((resolve) => { release = resolve })
        const pending = sessions.flatMap(([id, cookie]) => Array.from({ length: 4 }, async () => ({ id, response: await cell.get(0, cookie, '/me') })))
        // Every request has loaded its session (a store may take a while) and waits for a refresh.
        await eventually('all 12 requests to wait for a refresh', () => asking() - askedBefore === 12)
        t.equal(cell.refreshCalls.length - before, 3, 'one refresh per session started')
        release()
        cell.refreshesHeld = Promise.resolve()
        for (const { id, response } of await Promise.all(pending)) t.same(response.json(), { id, playerId: id * 10, authenticated: true }, `user ${id} got their own data`)
        t.same(cell.refreshCalls.slice(before).sort(), [ann, ann, bob].sort(), 'three refreshes: one for each login, none shared')
      })

      t.test('login regenerates the session: an id planted before it is worthless after it', async (t) => {
        if (stack === 'secure') {
          // Not a scenario this cell has: secure-session has no session id to plant,
          // the whole session is the cookie, which every login replaces.
          t.comment('not applicable: secure-session has no session id (the README says so)')
          return
        }
        const planted = cookieOf(await cell.get(0, undefined, '/public'))
        const id = user(cell)
        const response = await cell.apps[0]!.inject({ method: 'POST', url: '/login', payload: { id, password: 'secret' }, headers: { cookie: planted } })
        t.not(cookieOf(response), planted, 'a new session id')
        t.match((await cell.get(1, planted, '/me')).json(), { reason: 'not-logged-in' }, 'the planted id is not logged in')
      })

      t.test('a deleted user: a page gets a 302, an API a 401, and a login page sees nobody logged in', async (t) => {
        const page = user(cell)
        const api = user(cell)
        const loginPage = user(cell)
        const cookies = [await cell.login(0, page), await cell.login(0, api), await cell.login(0, loginPage)]
        for (const id of [page, api, loginPage]) cell.users.get(id)!.deleted = true
        await bump(cell)
        const redirected = await cell.get(1, cookies[0], '/me', PAGE)
        t.equal(redirected.statusCode, 302)
        t.equal(redirected.headers.location, '/login?next=%2Fme&reason=user-gone')
        t.match((await cell.get(1, cookies[1], '/me')).json(), { statusCode: 401, reason: 'user-gone' })
        // The login route goes on with the emptied session: passport, too, sees no user.
        t.same((await cell.get(1, cookies[2], '/login')).json(), { id: null, playerId: null, authenticated: false, user: null })
      })

      t.test('session_logout_user on one instance is seen on the other', async (t) => {
        const id = user(cell)
        const cookie = await cell.login(0, id)
        t.equal((await cell.get(1, cookie, '/me')).statusCode, 200)
        await db.sql`select session_logout_user(${String(id)})`
        await eventually('instance 1 to log the session out', async () => (await cell.get(1, cookie, '/me')).statusCode === 401)
        // Instance 0 heard the same notification; a read makes sure it has applied it.
        t.equal(await cell.apps[0]!.sessionRefresh.catchUp(), true)
        t.match((await cell.get(0, cookie, '/me')).json(), { reason: stack === 'secure' ? 'user-logout' : 'not-logged-in' },
          stack === 'secure' ? 'the cookie still says who it was: logged out again' : 'the store no longer has the session')
      })

      t.test('refreshUser refreshes that user only, on the other instance too', async (t) => {
        const id = user(cell)
        const other = user(cell)
        const cookies = [await cell.login(0, id), await cell.login(0, other)]
        cell.users.get(id)!.playerId = 55
        cell.users.get(other)!.playerId = 66
        const calls = cell.refreshCalls.length
        await cell.apps[0]!.sessionRefresh.refreshUser(id)
        await cell.apps[1]!.sessionRefresh.catchUp()
        t.equal((await cell.get(1, cookies[0], '/me')).json().playerId, 55)
        t.equal((await cell.get(1, cookies[1], '/me')).json().playerId, other * 10, 'the other user is not refreshed')
        t.same(cell.refreshCalls.slice(calls), [id])
      })

      t.test('logoutUser with keep: the session that asked stays in, on both instances; the others are out', async (t) => {
        const id = user(cell)
        const kept = await cell.login(0, id)
        const elsewhere = await cell.login(1, id)
        const changed = await cell.post(0, kept, '/password')
        t.equal(changed.statusCode, 200)
        await cell.apps[1]!.sessionRefresh.catchUp()
        const keptNow = stack === 'secure' ? cookieOf(changed) : kept
        t.equal((await cell.get(1, keptNow, '/me')).statusCode, 200)
        t.equal((await cell.get(0, keptNow, '/me')).statusCode, 200)
        t.match((await cell.get(1, elsewhere, '/me')).json(), { reason: 'user-logout' })
      })

      t.test('a tampered cookie is a logged-out session, not a crash', async (t) => {
        const id = user(cell)
        const cookie = await cell.login(0, id)
        const tampered = `${cookie.slice(0, -4)}${cookie.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`
        t.match((await cell.get(1, tampered, '/me')).json(), { statusCode: 401, reason: 'not-logged-in' })
        t.same((await cell.get(1, tampered, '/public')).json(), { id: null, playerId: null, authenticated: false })
      })

      t.test('sessionRefresh: false skips the refresh; loginRequired sends logged-out requests to log in', async (t) => {
        const id = user(cell)
        const cookie = await cell.login(0, id)
        cell.users.get(id)!.playerId = 88
        await bump(cell)
        const calls = cell.refreshCalls.length
        t.same((await cell.get(1, cookie, '/unchecked')).json(), { id, playerId: id * 10, authenticated: true })
        t.equal(cell.refreshCalls.length, calls, 'no refresh there')
        t.equal((await cell.get(1, undefined, '/me', PAGE)).headers.location, '/login?next=%2Fme&reason=not-logged-in')
      })

      t.test('a cookie captured before a logout and replayed after it is logged out; one from before a bump is refreshed, not trusted', async (t) => {
        const id = user(cell)
        const captured = await cell.login(0, id)
        cell.users.get(id)!.playerId = 99
        await bump(cell)
        const calls = cell.refreshCalls.length
        t.equal((await cell.get(1, captured, '/me')).json().playerId, 99)
        if (stack === 'secure') {
          // The old cookie still holds the old stamp: replayed, it is read again.
          t.equal((await cell.get(0, captured, '/me')).json().playerId, 99)
          t.equal(cell.refreshCalls.length - calls, 2, 'refreshed each time the old cookie came back')
        }
        await cell.apps[0]!.sessionRefresh.logoutUser(id)
        await cell.apps[1]!.sessionRefresh.catchUp()
        t.equal((await cell.get(1, captured, '/me')).statusCode, 401, 'the replayed cookie is refused')
      })

      t.test('a login that skipped stamp(): its first overlapping requests share one refresh, and its login cookie, replayed after logoutUser, is logged out', async (t) => {
        const id = user(cell)
        const captured = await cell.login(0, id, { stamp: false }) // a thief keeps this copy
        const before = cell.refreshCalls.length
        let release = (): void => {}
        cell.refreshesHeld = new Promise((resolve) => { release = resolve })
        const asking = (): number => cell.logs.filter((l) => l.msg.startsWith('Refreshing stale session')).length
        const askedBefore = asking()
        const first = Array.from({ length: 6 }, () => cell.get(1, captured, '/me'))
        // Every request has loaded its session (a store may take a while) and waits for a refresh.
        await eventually('all 6 requests to wait for a refresh', () => asking() - askedBefore === 6)
        release()
        cell.refreshesHeld = Promise.resolve()
        const answers = await Promise.all(first)
        t.same(answers.map((r) => r.statusCode), Array(6).fill(200))
        t.same(cell.refreshCalls.slice(before), [id], 'one refresh for the six requests of one login')
        await cell.apps[0]!.sessionRefresh.logoutUser(id)
        await cell.apps[1]!.sessionRefresh.catchUp()
        for (const instance of [0, 1]) {
          t.match((await cell.get(instance, captured, '/me')).json(), { statusCode: 401 }, `the login cookie replayed on instance ${instance} is refused`)
        }
        // A login after the logout stays in. (Without stamp(), a secure-session login
        // is dated by the second it was written: within that second it counts as before.)
        const later = await cell.login(1, id, { stamp: stack === 'secure' })
        t.equal((await cell.get(0, later, '/me')).statusCode, 200, 'a later login is not ended by the earlier logout')
      })

      t.test('a login that skipped stamp() while a logout of its user waited 3 s in an ETL\'s open transaction is ended when that transaction commits, its cookie replayed too', async (t) => {
        const id = user(cell)
        const etl = await db.sql.reserve()
        t.teardown(() => etl.release())
        await etl`begin`
        await etl`select session_logout_user(${String(id)})` // its clock is taken now; it commits later
        // The ETL goes on for three seconds before it commits: the login's clock says so (no sleep).
        // (Past secure-session's margin of 5 s, a logout is ordered when it ran: see the README.)
        const now = Date.now
        Date.now = () => now() + 3000
        const captured = await cell.login(0, id, { stamp: false }).finally(() => { Date.now = now })
        const first = await cell.get(1, captured, '/me')
        t.equal(first.statusCode, 200, 'logged in while the logout is not committed')
        await etl`commit`
        for (const app of cell.apps) t.equal(await app.sessionRefresh.catchUp(), true)
        const seen = stack === 'secure' ? cookieOf(first) : captured
        t.match((await cell.get(0, seen, '/me')).json(), { statusCode: 401 }, 'the session is ended')
        t.match((await cell.get(1, captured, '/me')).json(), { statusCode: 401 }, 'and so is its login cookie, replayed')
      })

      t.test('a login that skipped stamp() on an instance whose clock runs 3 s ahead, replayed after a logout: still logged out', async (t) => {
        const id = user(cell)
        const now = Date.now
        Date.now = () => now() + 3000
        const captured = await cell.login(0, id, { stamp: false }).finally(() => { Date.now = now })
        await cell.apps[1]!.sessionRefresh.logoutUser(id)
        await cell.apps[0]!.sessionRefresh.catchUp()
        // @fastify/session: a logout before such a login's first request does not end it (the README says so).
        for (const instance of [1, 0]) {
          t.equal((await cell.get(instance, captured, '/me')).statusCode, stack === 'secure' ? 401 : 200,
            stack === 'secure' ? `refused on instance ${instance}` : `authenticated at its first request, on instance ${instance}`)
        }
      })

      t.test('logoutUser with keep: a copy of the kept session from before the change is kept too, since every copy is the same session (the README says so)', async (t) => {
        const id = user(cell)
        const kept = await cell.login(0, id)
        const stolen = (await cell.get(0, kept, '/me')).statusCode === 200 ? kept : ''
        const changed = await cell.post(0, kept, '/password')
        t.equal(changed.statusCode, 200)
        await cell.apps[1]!.sessionRefresh.catchUp()
        const keptNow = stack === 'secure' ? cookieOf(changed) : kept
        t.equal((await cell.get(1, keptNow, '/me')).statusCode, 200, 'the session that changed the password stays in')
        // @fastify/session: the thief's cookie is the same session id (Django keeps it too).
        // secure-session: a copy of a cookie cannot be told from the cookie, nor the open pages'
        // streams of the kept session from a thief's: a new login key would log those pages out.
        t.equal((await cell.get(1, stolen, '/me')).statusCode, 200, 'kept: log out without keep, then in again, to end every copy')
      })
    })
  }
}
