// Findings of the fifth adversarial review, each a test named after its
// scenario, written against the code that had the defect: a logout read while
// a request waited (for its catch-up, for a refresh that then failed, in an app
// hook before the event stream's handler), and statements that timed out on a
// lock but went on waiting on the server.
import http from 'node:http'
import postgres from 'postgres'
import t from 'tap'
import { buildApp, bumpAndWait, failingRefresh, gate, getMe, login } from './helpers/app.js'
import { lockTable, pluginBackendsWaitingForLock, queueTableLock } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { openEvents } from './helpers/sse.js'

const db = await createDatabase(t)
const EVENTS = '/session-refresh/events'

t.test('a logout read while a request waits for its catch-up ends that session, even when the catch-up runs out of catchUpTimeout', async (t) => {
  // Long enough for the logout's read to finish inside it; the catch-up's own read never does.
  const { app, logs } = await buildApp(t, { url: db.url, plugin: { catchUpTimeout: 8_000, queryTimeout: 60_000, pollInterval: 60_000 } })
  // Stamped by an instance that has read a bump this one has not.
  const cookie = await login(app, 501, { sessionVersion: app.sessionRefresh.version + 1 })
  const first = await lockTable(t, db.sql)
  // The logout commits; the read its hint starts waits for the lock.
  await db.sql`select session_logout_user('501')`
  await eventually('the logout\'s read to wait for the lock', async () => await pluginBackendsWaitingForLock(db.sql) === 1, 20_000)
  // A second lock queued behind that read: the catch-up's read, which comes after it, waits for this one.
  const second = await queueTableLock(t, db.sql)
  await eventually('the second lock to queue', async () =>
    (await db.sql`select 1 from pg_stat_activity where pid = ${second.pid} and wait_event_type = 'Lock'`).length === 1, 20_000)

  const answer = getMe(app, cookie)
  await eventually('the request to wait for its catch-up', () => logs.some((line) => /catching up/.test(line.msg) && line.userId === '501'), 20_000)
  await first.release() // the logout's read goes through and is applied; the catch-up's read now waits for the second lock
  await second.held
  const response = await answer
  await second.release()
  t.match(response.json(), { statusCode: 401, reason: 'user-logout' }, 'not served as user 501')
})

t.test('onRefreshError: \'keep\' does not keep a session whose user was logged out while its refresh ran', async (t) => {
  const { started, failing, refresh } = failingRefresh(502)
  const { app } = await buildApp(t, { url: db.url, plugin: { onRefreshError: 'keep' }, refresh })
  const loggedOut = await login(app, 502)
  const kept = await login(app, 503)
  await bumpAndWait(db.sql, { app })
  const pending = getMe(app, loggedOut)
  await started.wait
  await app.sessionRefresh.logoutUser(502) // committed and read by this instance while the refresh runs
  failing.open()
  t.match((await pending).json(), { statusCode: 401, reason: 'user-logout' }, 'logged out, not kept')
  // The control: with no logout, a failed refresh keeps the session.
  const response = await getMe(app, kept)
  t.equal(response.statusCode, 200)
  t.match(response.json(), { id: 503 }, 'kept')
})

t.test('an event stream of a session logged out after the check let it through (while an app preHandler ran) is told logout and ends', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { events: EVENTS } })
  const inHook = gate()
  const hold = gate()
  test.app.addHook('preHandler', async (request) => {
    if (request.url !== EVENTS) return
    inHook.open()
    await hold.wait // a rate limiter, a CSRF check: any app hook that awaits
  })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}`
  const cookie = await login(test.app, 504)

  const opening = openEvents(url, cookie)
  await inHook.wait
  await test.app.sessionRefresh.logoutUser(504)
  hold.open()
  const reader = await opening
  t.teardown(() => reader.close())
  await eventually('the logout event', () => reader.events.some((e) => e.event === 'logout'), 20_000)
  t.same(reader.events.filter((e) => e.event !== ':').map((e) => e.event), ['logout'], 'told nothing but the logout')
  // Resolves only when the server ends the stream: the wait is the check.
  await reader.ended
  t.match((await getMe(test.app, cookie)).json(), { statusCode: 401, reason: 'user-logout' })
})

t.test('reads that time out on a lock (an ETL truncating the per-user table) leave no backend waiting on it', async (t) => {
  const { app } = await buildApp(t, { url: db.url, plugin: { queryTimeout: 500, pollInterval: 60_000 } })
  const lock = await lockTable(t, db.sql, 'session_user_versions')
  for (let read = 1; read <= 3; read++) {
    t.equal(await app.sessionRefresh.catchUp(), false, `read ${read} did not finish`)
  }
  await eventually('a read to time out', () => app.sessionRefresh.status().lastSyncError?.code === 'FST_SESSION_REFRESH_QUERY_TIMEOUT', 20_000)
  // Without a cancel, each timed-out read leaves its backend waiting until the lock goes, and the next read opens another.
  await eventually('no backend of the plugin waiting for the lock', async () => await pluginBackendsWaitingForLock(db.sql) === 0, 20_000)
  await lock.release()
  t.equal(await app.sessionRefresh.catchUp(), true, 'reads work again')
})

t.test('on the app\'s pool (the sql option), a read that times out is never cancelled, and the reads after it wait for it instead of taking more connections', async (t) => {
  const appSql = postgres(db.url, { max: 3, onnotice: () => {} })
  t.teardown(() => appSql.end({ timeout: 1 }))
  const { app } = await buildApp(t, { url: db.url, plugin: { sql: appSql, queryTimeout: 500, pollInterval: 60_000 } })
  const lock = await lockTable(t, db.sql, 'session_user_versions')
  for (let read = 1; read <= 4; read++) t.equal(await app.sessionRefresh.catchUp(), false, `read ${read} did not finish`)
  await eventually('a read to time out', () => app.sessionRefresh.status().lastSyncError?.code === 'FST_SESSION_REFRESH_QUERY_TIMEOUT', 20_000)
  t.equal(await pluginPoolWaiters(), 1, 'one connection of the pool waits for the lock, not one per read')
  // The app's own queries go on, on the pool's other connections, and none is cancelled.
  const answers = await Promise.all([appSql`select 1 as one`, appSql`select pg_sleep(0.2), 2 as two`])
  t.same(answers.map((rows) => rows.length), [1, 1])
  await lock.release()
  t.equal(await app.sessionRefresh.catchUp(), true, 'reads work again once the lock is gone')

  /** Connections of the app's pool (not the plugin's own) waiting for a lock. */
  async function pluginPoolWaiters (): Promise<number> {
    const [row] = await db.sql<[{ count: number }]>`
      select count(*)::int as count from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock' and pid <> ${lock.pid} and application_name <> 'fastify-session-refresh'`
    return row!.count
  }
})

t.test('on the app\'s pool, a plugin read queued behind a slow app query and timed out leaves the app\'s answers intact', async (t) => {
  const appSql = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => appSql.end({ timeout: 1 }))
  const { app } = await buildApp(t, { url: db.url, plugin: { sql: appSql, queryTimeout: 300, pollInterval: 60_000 } })
  const slow = appSql`select pg_sleep(1), 'slow' as answer`.execute() // sent now, not when awaited
  t.equal(await app.sessionRefresh.catchUp(), false, 'the plugin\'s read, queued behind the slow query, timed out')
  const [slowRow] = await slow
  const [next] = await appSql`select 'next' as answer`
  t.same([slowRow?.answer, next?.answer], ['slow', 'next'], 'every app query got its own answer')
})

t.test('a logoutUser that times out on a lock is cancelled on the server: it never commits after the caller was told it failed', async (t) => {
  const { app } = await buildApp(t, { url: db.url, plugin: { queryTimeout: 500, pollInterval: 60_000 } })
  await app.sessionRefresh.refreshUser(505) // the writer's connection is open
  const lock = await lockTable(t, db.sql, 'session_user_versions')
  await t.rejects(app.sessionRefresh.logoutUser(506), { code: 'FST_SESSION_REFRESH_QUERY_TIMEOUT' })
  await eventually('no backend of the plugin waiting for the lock', async () => await pluginBackendsWaitingForLock(db.sql) === 0, 20_000)
  await lock.release()
  await app.sessionRefresh.refreshUser(507) // a change made after: the one that timed out would be in before it
  const rows = await db.sql`select user_id from session_user_versions where user_id in ('506', '507') order by user_id`
  t.same(rows.map((row) => row.user_id), ['507'], 'the logout that failed changed nothing')
  t.equal((await getMe(app, await login(app, 506))).statusCode, 200, 'and logs nobody out')
})

t.test('one account that logs in again and again cannot take every event stream of the instance (maxEventStreamsPerUser)', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { events: EVENTS, maxEventStreams: 12, maxEventStreamsPerSession: 4, maxEventStreamsPerUser: 8 } })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}`
  const open = async (cookie: string) => {
    const reader = await openEvents(url, cookie)
    t.teardown(() => reader.close())
    return reader
  }
  const streams = []
  for (let session = 0; session < 3; session++) {
    const cookie = await login(test.app, 510) // a new session each time: a login key of its own
    for (let tab = 0; tab < 4; tab++) streams.push(await open(cookie))
  }
  t.same(streams.map((reader) => reader.status), [200, 200, 200, 200, 200, 200, 200, 200, 429, 429, 429, 429], 'eight for the user, over its sessions')
  t.equal((await open(await login(test.app, 511))).status, 200, 'another user still gets one')
  streams[0]!.close()
  await eventually('room for the user again', async () => {
    const reader = await open(await login(test.app, 510))
    reader.close()
    return reader.status === 200
  }, 20_000)
})

t.test('a stream whose client left while an app hook ran before its handler holds no place under the limits', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { events: EVENTS, maxEventStreamsPerUser: 1 } })
  const inHook = gate()
  const clientGone = gate()
  let first = true
  test.app.addHook('preHandler', async (request) => {
    if (request.url !== EVENTS || !first) return
    first = false
    request.raw.socket.once('close', () => clientGone.open())
    inHook.open()
    await clientGone.wait // a rate limiter, say, while the page navigates away
  })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const port = (test.app.server.address() as { port: number }).port
  const gone = http.get({ host: '127.0.0.1', port, path: EVENTS, headers: { accept: 'text/event-stream', cookie: await login(test.app, 520) } })
  gone.on('error', () => {}) // it is destroyed on purpose
  await inHook.wait
  gone.destroy()
  await clientGone.wait // its handler runs now, for a client that is gone
  const reader = await openEvents(`http://127.0.0.1:${port}${EVENTS}`, await login(test.app, 520))
  t.teardown(() => reader.close())
  t.equal(reader.status, 200, 'the user\'s one place is free')
})

t.test('on the app\'s pool, a logoutUser that times out on a lock is not cancelled: it fails with the coded error and may still commit, as the README says', async (t) => {
  const appSql = postgres(db.url, { max: 2, onnotice: () => {} })
  t.teardown(() => appSql.end({ timeout: 1 }))
  const { app } = await buildApp(t, { url: db.url, plugin: { sql: appSql, queryTimeout: 500, pollInterval: 60_000 } })
  const lock = await lockTable(t, db.sql, 'session_user_versions')
  await t.rejects(app.sessionRefresh.logoutUser(530), { code: 'FST_SESSION_REFRESH_QUERY_TIMEOUT' })
  await lock.release()
  const committed = async () => (await db.sql`select 1 from session_user_versions where user_id = '530' and logout_seq > 0`).length === 1
  // The wait is the check: it fails if the logout never commits.
  await eventually('the logout, left running on the app\'s pool, to commit', committed, 20_000)
})

t.test('a logoutUser whose backend is terminated while it waits (a restart, a failover) is tried once more on a new connection, and goes through', async (t) => {
  const { app } = await buildApp(t, { url: db.url, plugin: { queryTimeout: 60_000, pollInterval: 60_000 } })
  await app.sessionRefresh.refreshUser(540) // the writer's connection is open
  const lock = await lockTable(t, db.sql, 'session_user_versions')
  const logout = app.sessionRefresh.logoutUser(541)
  logout.catch(() => {}) // awaited below; a failure shows there
  let pid = 0
  await eventually('logoutUser to wait for the lock', async () => {
    const rows = await db.sql<Array<{ pid: number }>>`
      select pid from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query like '%session_change_user%'`
    pid = rows[0]?.pid ?? 0
    return rows.length === 1
  }, 20_000)
  await db.sql`select pg_terminate_backend(${pid})`
  // The retry waits for the lock too, on a backend of its own.
  await eventually('the retry to wait for the lock', async () =>
    (await db.sql`select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and pid <> ${pid} and query like '%session_change_user%'`).length === 1, 20_000)
  await lock.release()
  t.ok(await logout > 0, 'the logout went through')
  t.match((await getMe(app, await login(app, 541))).json(), { id: 541 }, 'and a login after it stays in')
})

t.test('a password change of a session renumbered once (it held one other id), as the first change of a new instance, keeps that session', async (t) => {
  // The ETL renumbered 7000003 to 7000004; the first per-user change opens the instance's writer connection.
  const { app } = await buildApp(t, { url: db.url, refresh: (s) => ({ id: s.get('id') === 7000003 ? 7000004 : s.get('id') }) })
  app.post('/password', async (request) => ({ version: await app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request }) }))
  const cookie = await login(app, 7000003)
  await bumpAndWait(db.sql, { app })
  t.match((await getMe(app, cookie)).json(), { id: 7000004 }, 'refreshed to the new id, holding the old one')
  const changed = await app.inject({ method: 'POST', url: '/password', headers: { cookie, accept: 'application/json' } })
  t.equal(changed.statusCode, 200, changed.body)
  t.match((await getMe(app, cookie)).json(), { id: 7000004 }, 'the session that changed the password stays in')
})
