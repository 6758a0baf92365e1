// Reads held in flight by real database means: a table lock that another
// transaction holds until the test commits it.
import t from 'tap'
import { readSessionVersion } from '../lib/index.js'
import { API, buildApp, login } from './helpers/app.js'
import { idleListenBackends, lockTable, pluginBackendsWaitingForLock, queueTableLock, terminateBackend } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { FaultyProxy } from './helpers/proxy.js'

const db = await createDatabase(t)
// What a loaded 2-core machine may add to a bound: generous, and still far below
// the tens of seconds that an unbounded wait would take.
const SLACK_MS = 3000

/** `promise`, or a failure naming `what` once `ms` have passed. */
async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

t.test('the LISTEN connection lost while start()\'s first read waits: listening only once a read made since the new LISTEN succeeded (issue 10.5)', async (t) => {
  const tableVersion = await readSessionVersion(db.sql)
  const first = await lockTable(t, db.sql)
  const building = buildApp(t, { url: db.url, plugin: { connectTimeout: 60_000, queryTimeout: 60_000 } })
  building.catch(() => {}) // awaited below; a failure shows there
  await eventually('start()\'s first read to wait for the lock', async () => await pluginBackendsWaitingForLock(db.sql) === 1, 20_000)
  const [listenPid] = await idleListenBackends(db.sql)
  t.equal(await terminateBackend(db.sql, listenPid!), true, 'the LISTEN backend, killed during the read')
  await eventually('a new LISTEN backend, its LISTEN done', async () => {
    const pids = await idleListenBackends(db.sql)
    return pids.length === 1 && pids[0] !== listenPid
  }, 20_000)

  // A second lock, queued behind the first read: it is granted as soon as that
  // read is done, so the read that the new LISTEN asked for waits for it.
  const second = await queueTableLock(t, db.sql)
  await eventually('the second lock to queue', async () => await pluginBackendsWaitingForLock(db.sql) === 1 &&
    (await db.sql`select 1 from pg_stat_activity where pid = ${second.pid} and wait_event_type = 'Lock'`).length === 1, 20_000)
  await first.release()
  await second.held
  const { app } = await building
  t.match(app.sessionRefresh.status(), { listening: false, lastSyncError: null, version: tableVersion },
    'start() succeeded with a read made before the new LISTEN, which does not make it listening')

  await second.release()
  await eventually('the read made since the new LISTEN', () => app.sessionRefresh.status().listening, 20_000)
  t.match(app.sessionRefresh.status(), { reconnects: 1, lastSyncError: null, version: tableVersion })
})

t.test('a session stamped ahead of this instance is served as it is when the catch-up runs out of catchUpTimeout (issue 10.6)', async (t) => {
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { catchUpTimeout: 300, queryTimeout: 60_000 } })
  // Stamped by an instance that knows a version this one has not read.
  const ahead = app.sessionRefresh.version + 1
  const cookie = await login(app, 106, { sessionVersion: ahead })
  const lock = await lockTable(t, db.sql)
  // A read already in flight, waiting for the lock: the catch-up may not wait for it either.
  await db.sql`select pg_notify('session_refresh', 'users')`
  await eventually('a read waiting for the lock', async () => await pluginBackendsWaitingForLock(db.sql) === 1, 20_000)

  // The lock is held until the end: without the bound the request would wait for it.
  const response = await within(app.inject({ url: '/me', headers: { cookie, ...API } }), 300 + SLACK_MS, 'the request, while the lock is held')
  t.equal(response.statusCode, 200)
  t.same(response.json(), { id: 106, email: 'user106@example.com', playerId: 106, sessionVersion: ahead }, 'served as it is, its stamp unchanged')
  t.same(refreshCalls, [], 'not refreshed')
  await lock.release()
})

t.test('I4: with the database unreachable (every link black-holed, new ones swallowed), the plugin adds a bounded wait to a request, and its calls fail in bounded time with a coded error', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const catchUpTimeout = 300
  const queryTimeout = 800
  const { app } = await buildApp(t, { url: proxy.url(db.url), plugin: { catchUpTimeout, queryTimeout } })
  const fresh = await login(app, 107)
  const ahead = await login(app, 108, { sessionVersion: app.sessionRefresh.version + 1 })
  await app.sessionRefresh.refreshUser(109) // the writer's connection is open, and goes silent too
  proxy.swallow = true
  proxy.blackHole()

  const freshAnswer = await within(app.inject({ url: '/me', headers: { cookie: fresh, ...API } }), SLACK_MS, 'a fresh session')
  t.equal(freshAnswer.statusCode, 200, 'a fresh session needs no database')
  const aheadAnswer = await within(app.inject({ url: '/me', headers: { cookie: ahead, ...API } }), catchUpTimeout + SLACK_MS, 'a session stamped ahead')
  t.equal(aheadAnswer.statusCode, 200, 'a session stamped ahead is served as it is once the catch-up runs out')
  t.equal(await within(app.sessionRefresh.catchUp(), queryTimeout + SLACK_MS, 'catchUp()'), false, 'catchUp() says it could not')
  await t.rejects(within(app.sessionRefresh.logoutUser(107), 2 * queryTimeout + SLACK_MS, 'logoutUser'), { code: 'FST_SESSION_REFRESH_QUERY_TIMEOUT' },
    'logoutUser fails with the coded error (after its one retry on a new connection)')
})
