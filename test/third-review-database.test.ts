// Findings of the third and fourth adversarial reviews (database side), each a test named
// after its scenario, written against the code that had the defect: a
// transaction that any role holds open, a switch of how per-user changes
// travel, reads that cannot run, the logout clock's row re-created, a table
// dropped, a LISTEN lost while start() waits, and schema names too long for a channel.
import postgres from 'postgres'
import t from 'tap'
import { VersionListener } from '../lib/database/listener.js'
import { bumpSessionVersion, migrate, readSessionVersion } from '../lib/index.js'
import { buildApp, getMe, login } from './helpers/app.js'
import { idleListenBackends, lockTable } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { listenerOptions } from './helpers/listener.js'
import { startStandby } from './helpers/standby.js'
import { FaultyProxy } from './helpers/proxy.js'
import { readServerInfo } from './setup/server.js'

const db = await createDatabase(t)

t.test('a transaction that any role holds open, in any database, does not make every read fetch all the changes since it began', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const { app } = await buildApp(t, { url: proxy.url(db.url) })
  const [listenPid] = await idleListenBackends(db.sql)
  const links = await Promise.all(proxy.links.map(async (link) => ({ link, pid: await link.backendPid(db.sql) })))
  const reads = links.find(({ pid }) => pid !== listenPid)!.link
  // Another database of the server, a role with no right on ours: it only needs a transaction id.
  const other = postgres((await readServerInfo()).url, { max: 1, onnotice: () => {} })
  t.teardown(() => other.end())
  const open = await other.reserve()
  t.teardown(() => open.release())
  await open`begin`
  await open`create temp table held_open (x int)`

  await db.sql`select session_refresh_user('t3-' || n) from generate_series(1, 3000) n`
  await eventually('the 3000 changes to be read', () => app.sessionRefresh.status().userVersions >= 3000)
  const one = async (): Promise<number> => {
    const before = reads.bytesFromServer
    t.equal(await app.sessionRefresh.catchUp(), true)
    return reads.bytesFromServer - before
  }
  const sizes = [await one(), await one()]
  // A read of nothing new is the state row and an empty list: well under 10 kB. The 3000 rows are over 300 kB.
  t.ok(sizes.every((size) => size < 10_000), `reads with nothing new stay small while the transaction is open: ${sizes.join(', ')} bytes`)
  await open`rollback`
})

t.test('a switch to user-changes poll reaches every instance at once, and logouts made right after it are read within userPollInterval', async (t) => {
  const { app } = await buildApp(t, { url: db.url, plugin: { pollInterval: 120_000, userPollInterval: 200 } })
  t.teardown(() => db.sql`update session_refresh_state set user_notify = true`)
  const cookie = await login(app, 350)
  await db.sql`update session_refresh_state set user_notify = false` // what `session-refresh user-changes poll` runs
  // Only a notification can tell it before the next poll, two minutes away.
  await eventually('the instance to follow the switch', () => app.sessionRefresh.status().userChanges === 'poll')
  await db.sql`select session_logout_user('350')` // notifies nobody now
  await eventually('the logout, read by the poll', async () => (await getMe(app, cookie)).statusCode === 401)
})

t.test('logoutUser fails with a coded error when this instance cannot read the change back, rather than resolve while its sessions are still served', async (t) => {
  const { app } = await buildApp(t, { url: db.url, plugin: { queryTimeout: 500 } })
  const cookie = await login(app, 351)
  const lock = await lockTable(t, db.sql) // an ALTER TABLE, a VACUUM FULL: every read waits
  await t.rejects(app.sessionRefresh.logoutUser(351), {
    code: 'FST_SESSION_REFRESH_NOT_APPLIED',
    message: 'fastify-session-refresh: logoutUser was committed, but this instance could not read it back within 500 ms, so its sessions may not follow it yet (retrying is harmless)'
  })
  const [row] = await db.sql<[{ logout: boolean }]>`select logout from session_user_versions where user_id = '351'`
  t.equal(row!.logout, true, 'the logout was committed')
  await lock.release()
  await eventually('the logout, read', async () => (await getMe(app, cookie)).statusCode === 401, 10_000)
})

t.test('the logout clock\'s row deleted and made again by migrate: users logged out before can log in again', async (t) => {
  const own = await createDatabase(t)
  const { app } = await buildApp(t, { url: own.url })
  await app.sessionRefresh.logoutUser(352)
  const [{ seq }] = await own.sql<[{ seq: string }]>`select logout_seq::text as seq from session_refresh_state`
  await own.sql`delete from session_refresh_state`
  await t.rejects(app.sessionRefresh.logoutUser(353), { code: 'FST_SESSION_REFRESH_NOT_MIGRATED' }, 'a logout without the clock says to migrate')
  t.same(await migrate(own.sql), [], 'no file to apply: only the row')
  const [{ seq: again }] = await own.sql<[{ seq: string }]>`select logout_seq::text as seq from session_refresh_state`
  t.ok(BigInt(again) > BigInt(seq), 'the clock goes on above the last logout')
  await eventually('a read that works again', () => app.sessionRefresh.catchUp())
  const cookie = await login(app, 352)
  t.equal((await getMe(app, cookie)).statusCode, 200, 'a login after the logout stays in')
  const fresh = await buildApp(t, { url: own.url })
  t.equal((await getMe(fresh.app, await login(fresh.app, 352))).statusCode, 200, 'on a new instance too')
})

t.test('a dropped session_user_versions is made again by migrate, as the error says', async (t) => {
  const own = await createDatabase(t)
  await own.sql`drop table session_user_versions`
  t.ok((await migrate(own.sql)).length > 0, 'the files ran again')
  const [{ table }] = await own.sql<[{ table: string | null }]>`select to_regclass('session_user_versions')::text as "table"`
  t.equal(table, 'session_user_versions')
  await own.sql`select session_logout_user('354')`
  const { app } = await buildApp(t, { url: own.url })
  t.equal(app.sessionRefresh.status().userVersions, 1, 'an instance reads it')
})

t.test('the LISTEN connection lost between LISTEN and start()\'s own notification: start() succeeds once LISTEN is back', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  // The notification start() sends itself, held until the LISTEN link has been cut.
  const held = proxy.holdWhenClientSends(':start', 'request')
  void held.then((link) => {
    const listenLink = proxy.links.find((other) => other !== link && !other.clientClosed)!
    listenLink.client.destroy()
    listenLink.upstream.destroy()
    link.release() // it runs while no LISTEN is there to hear it
  })
  const listener = new VersionListener(listenerOptions(proxy.url(db.url), { connectTimeout: 10_000 }))
  t.teardown(() => listener.close())
  await listener.start()
  t.match(listener.status(), { listening: true, reconnects: 1 })
})

t.test('a schema name too long for its NOTIFY channel is refused by migrate, bump and read, before anything is made', async (t) => {
  const schema = 's'.repeat(50) // PostgreSQL takes 63 bytes; session_refresh.<schema> would not fit a channel
  const refused = { code: 'FST_SESSION_REFRESH_INVALID_OPTION', message: /schema name of 1 to 47 bytes/ }
  await t.rejects(migrate(db.sql, { schema }), refused)
  await t.rejects(bumpSessionVersion(db.sql, { schema }), refused)
  await t.rejects(readSessionVersion(db.sql, { schema }), refused)
  const [made] = await db.sql`select 1 from pg_namespace where nspname = ${schema}`
  t.equal(made, undefined, 'no schema was made')
  t.ok(await readSessionVersion(db.sql) > 0, 'public is untouched')
})

t.test('a failover to a standby that lagged (transaction ids go back): the running instance reads the whole table again, and a logout made on the new primary holds', async (t) => {
  const own = await createDatabase(t)
  const proxy = await FaultyProxy.start(own.url)
  t.teardown(() => proxy.close())
  // Some role holds a transaction open on the primary: its id stays in every snapshot's list.
  const holder = postgres(own.url, { max: 1, onnotice: () => {} })
  const held = await holder.reserve()
  t.teardown(async () => { await held`rollback`.catch(() => {}); held.release(); await holder.end({ timeout: 1 }) })
  await held`begin`
  await held`select pg_current_xact_id()`
  const { app } = await buildApp(t, { url: proxy.url(own.url) })
  const cookie = await login(app, 360)
  const standby = await startStandby(t, { databaseUrl: own.url })
  // The primary goes on with transactions the standby never receives.
  for (let i = 0; i < 60; i++) await own.sql`select pg_current_xact_id()`
  await own.sql`select session_refresh_user('360-elsewhere')`
  t.equal(await app.sessionRefresh.catchUp(), true)
  await standby.promote()
  const promoted = postgres(standby.url, { max: 1, onnotice: () => {} })
  t.teardown(() => promoted.end({ timeout: 1 }))
  await promoted`select session_logout_user('360')` // on the new primary, before this instance reaches it
  const reconnects = app.sessionRefresh.status().reconnects
  proxy.moveTo(standby.port)
  await eventually('the instance to reconnect to the new primary and read', async () =>
    app.sessionRefresh.status().reconnects > reconnects && app.sessionRefresh.status().listening && await app.sessionRefresh.catchUp(), 20_000)
  t.match((await getMe(app, cookie)).json(), { statusCode: 401, reason: 'user-logout' })
})

t.test('rows put back with old transaction ids and no TRUNCATE (triggers off) are read after the next reconnect', async (t) => {
  const own = await createDatabase(t)
  const { app } = await buildApp(t, { url: own.url })
  const cookie = await login(app, 361)
  await own.sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`
    await tx`insert into session_user_versions (user_id, version, logout, logout_seq, logout_version, logout_at, changed_xid)
             values ('361', ${Date.now() * 1000}, true, ${Date.now() * 1000 + 1_000_000}, ${Date.now() * 1000}, now(), '3')`
  })
  t.equal(await app.sessionRefresh.catchUp(), true)
  t.equal((await getMe(app, cookie)).statusCode, 200, 'not seen: nothing tells the reads to look there')
  const reconnects = app.sessionRefresh.status().reconnects
  await own.sql`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'fastify-session-refresh' and datname = current_database() and query ilike 'listen%'`
  await eventually('the reconnect and its read', async () => app.sessionRefresh.status().reconnects > reconnects && await app.sessionRefresh.catchUp(), 20_000)
  t.match((await getMe(app, cookie)).json(), { statusCode: 401, reason: 'user-logout' }, 'a reconnect reads the whole table')
})

t.test('logoutUser goes through when an ETL that refreshed the user, then logs another out, deadlocks with it', async (t) => {
  const own = await createDatabase(t)
  const { app } = await buildApp(t, { url: own.url })
  const etl = await own.sql.reserve()
  t.teardown(() => etl.release())
  await etl`begin`
  await etl`select session_refresh_user('362')` // holds user 362's row
  const logout = app.sessionRefresh.logoutUser(362) // takes the logout clock, waits for 362's row
  await eventually('logoutUser to wait for the row', async () =>
    (await own.sql`select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query like '%session_change_user%'`).length === 1)
  // The ETL now wants the logout clock, which logoutUser holds: a deadlock; PostgreSQL aborts one.
  const etlLogout = etl`select session_logout_user('363')`.then(() => 'committed', (err: { code?: string }) => err.code)
  const etlResult = await etlLogout
  await (etlResult === 'committed' ? etl`commit` : etl`rollback`)
  t.ok(await logout > 0, `logoutUser went through (the ETL's statement: ${etlResult})`)
  const [row] = await own.sql<[{ logout: boolean }]>`select logout from session_user_versions where user_id = '362'`
  t.equal(row!.logout, true)
})
