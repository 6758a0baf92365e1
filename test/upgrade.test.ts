// A change to the SQL upgrades an existing database in place through migrate():
// proved here on a database that release 0.1.0 migrated, with the state its apps
// left. test/fixtures/sql-0.1.0 holds 0.1.0's sql/ files, byte for byte.
import { readdir, readFile } from 'node:fs/promises'
import type { Sql } from 'postgres'
import t from 'tap'
import { bumpSessionVersion, migrate, readSessionVersion } from '../lib/index.js'
import { API, buildApp, sessionCookie } from './helpers/app.js'
import { createDatabase, type TestDatabase } from './helpers/database.js'

interface Teardown { teardown (fn: () => unknown): void }

const FIXTURES = new URL('./fixtures/sql-0.1.0/', import.meta.url)

/** Every file in sql/, in name order. */
async function sqlFiles (): Promise<string[]> {
  return (await readdir(new URL('../sql/', import.meta.url))).filter((name) => name.endsWith('.sql')).sort()
}

/** Migrates the way 0.1.0's migrate() did: every file, in one transaction, under its advisory lock. */
async function migrateAs010 (sql: Sql): Promise<void> {
  const files = (await readdir(FIXTURES)).filter((name) => name.endsWith('.sql')).sort()
  await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(4242001)`
    await tx`set local lock_timeout = '10s'`
    for (const file of files) await tx.unsafe(await readFile(new URL(file, FIXTURES), 'utf8'))
  })
}

/** The columns of session_user_versions that 0.1.0 had, for every row. */
async function userRows010 (sql: Sql): Promise<readonly unknown[]> {
  return sql`
    select user_id, version::text, logout, logout_version::text, logout_at, updated_at, changed_xid::text
    from session_user_versions order by user_id`
}

/**
 * A database as 0.1.0 left it: migrated, three ETL bumps, and the per-user calls
 * of its apps: user 1 refreshed; user 2 logged out, then refreshed (the logout
 * holds); user 3 logged out.
 */
async function database010 (t: Teardown): Promise<TestDatabase> {
  const db = await createDatabase(t, { migrated: false })
  await migrateAs010(db.sql)
  for (let i = 0; i < 3; i++) {
    await db.sql`update system_settings set value = (value::bigint + 1)::text where key = 'session_version'`
  }
  await db.sql`select session_refresh_user('1')`
  await db.sql`select session_logout_user('2')`
  await db.sql`select session_refresh_user('2')`
  await db.sql`select session_logout_user('3')`
  return db
}

t.test('the fixtures are 0.1.0 as released: its files, and the state its code made', async (t) => {
  const db = await database010(t)
  const [files] = await db.sql`select to_regclass('session_refresh_migrations') as migrations, to_regclass('session_refresh_state') as state`
  t.same(files, { migrations: null, state: null }, '0.1.0 had neither table')
  t.equal(await readSessionVersion(db.sql), 4, '0.1.0 raised the version by one per bump')
  const rows = await db.sql`select user_id, version::int, logout_version::int, logout_at is not null as logged_out from session_user_versions order by user_id`
  t.same(rows, [
    { user_id: '1', version: 1, logout_version: 0, logged_out: false },
    { user_id: '2', version: 2, logout_version: 1, logged_out: true },
    { user_id: '3', version: 1, logout_version: 1, logged_out: true }
  ])
})

t.test('the new plugin on a database that 0.1.0 migrated fails to register until migrate runs', async (t) => {
  const db = await database010(t)
  await t.rejects(buildApp(t, { url: db.url }), { code: 'FST_SESSION_REFRESH_NOT_MIGRATED' })
  await migrate(db.sql)
  const { app } = await buildApp(t, { url: db.url })
  t.equal(app.sessionRefresh.version, 4, 'after migrate it registers, with the version 0.1.0 left')
})

t.test('migrate upgrades a database that 0.1.0 migrated, in place, keeping its state', async (t) => {
  const db = await database010(t)
  const before = await userRows010(db.sql)

  t.same(await migrate(db.sql), await sqlFiles(), 'no record of what 0.1.0 applied: every file runs, once')
  t.equal(await readSessionVersion(db.sql), 4, 'the current version is kept')
  t.same(await userRows010(db.sql), before, 'every user row is kept: versions, logout_version, logout_at, updated_at')
  const added = await db.sql`select user_id, logout_seq::int, keep_key from session_user_versions order by user_id`
  t.same(added, [
    { user_id: '1', logout_seq: 0, keep_key: null },
    { user_id: '2', logout_seq: 0, keep_key: null },
    { user_id: '3', logout_seq: 0, keep_key: null }
  ], '0.1.0 logouts have no place on the logout clock')
  const [state] = await db.sql`select logout_seq::int, users_epoch::int from session_refresh_state`
  t.same(state, { logout_seq: 0, users_epoch: 0 })
  t.same(await migrate(db.sql), [], 'run again, it applies nothing')
})

t.test('after the upgrade, the new rules hold', async (t) => {
  const db = await database010(t)
  await migrate(db.sql)

  // Global: never repeats, at least the server clock in microseconds.
  const [clock] = await db.sql<[{ now: string }]>`select (extract(epoch from clock_timestamp()) * 1000000)::bigint::text as now`
  const bumped = await bumpSessionVersion(db.sql)
  t.ok(bumped >= Number(clock.now), `a bump gives the clock (${bumped} >= ${clock.now}), not 5`)
  await db.sql.begin(async (tx) => {
    await tx`alter table system_settings disable trigger user`
    await tx`update system_settings set value = '4' where key = 'session_version'`
    await tx`alter table system_settings enable trigger user`
  })
  t.ok(await bumpSessionVersion(db.sql) > bumped, 'after a restore to 4, the next bump gives a value never given before')

  // Per user: a logout takes the logout clock and stores it in the row.
  const [logout] = await db.sql<[{ version: string }]>`select session_logout_user('1')::text as version`
  const [state] = await db.sql<[{ seq: string }]>`select logout_seq::text as seq from session_refresh_state`
  t.ok(Number(state.seq) > 0, 'the logout raised the logout clock')
  const [one] = await db.sql`select version::text, logout_seq::text, logout_version::text from session_user_versions where user_id = '1'`
  t.same(one, { version: logout.version, logout_seq: state.seq, logout_version: logout.version })
  t.ok(BigInt(logout.version) > 1n, "user 1's version rose above 0.1.0's")

  // A refresh after it keeps the logout.
  const [refresh] = await db.sql<[{ version: string }]>`select session_refresh_user('1')::text as version`
  t.ok(BigInt(refresh.version) > BigInt(logout.version))
  const [after] = await db.sql`select version::text, logout_seq::text, logout_version::text from session_user_versions where user_id = '1'`
  t.same(after, { version: refresh.version, logout_seq: state.seq, logout_version: logout.version })

  // An old logout, refreshed by 0.1.0, stays as 0.1.0 recorded it through a new refresh.
  const [two] = await db.sql`select logout_version::int, logout_at from session_user_versions where user_id = '2'`
  await db.sql`select session_refresh_user('2')`
  const [twoAfter] = await db.sql`select logout_version::int, logout_at, logout_seq::int from session_user_versions where user_id = '2'`
  t.same(twoAfter, { ...two, logout_seq: 0 })

  // A second logout takes a later place on the clock.
  await db.sql`select session_logout_user('3')`
  const [three] = await db.sql`select logout_seq::text from session_user_versions where user_id = '3'`
  t.ok(BigInt(three!.logout_seq) > BigInt(state.seq), 'logouts are ordered on the clock')
  t.same(await migrate(db.sql), [])
})

t.test("a logout made under 0.1.0 still logs out the sessions 0.1.0 stamped before it", async (t) => {
  // 0.1.0 stamped a session with the global version and the user's own version
  // (`sessionVersion`, `sessionUserVersion`); a session whose user version was
  // below the user's logout_version had to log in again, on its next request,
  // however late that came (within one session lifetime).
  const db = await database010(t)
  await migrate(db.sql)
  const { app } = await buildApp(t, { url: db.url })
  app.post<{ Body: { id: number } }>('/login-0.1.0', async (request) => {
    const session = request.session as unknown as { set (key: string, value: unknown): void }
    session.set('id', request.body.id)
    session.set('email', `user${request.body.id}@example.com`)
    session.set('playerId', request.body.id)
    // What 0.1.0's stamp() wrote before the logouts: version 4, no change of the user known yet.
    session.set('sessionVersion', 4)
    session.set('sessionUserVersion', 0)
    return { ok: true }
  })
  const loginAs010 = async (id: number): Promise<string> => {
    const response = await app.inject({ method: 'POST', url: '/login-0.1.0', payload: { id } })
    t.equal(response.statusCode, 200)
    return sessionCookie(response)
  }
  const kept = await loginAs010(1)
  const loggedOut = await loginAs010(3)

  const one = await app.inject({ url: '/me', headers: { ...API, cookie: kept } })
  t.equal(one.statusCode, 200, 'user 1 was only refreshed under 0.1.0: the session stays logged in')
  t.match(one.json(), { id: 1, email: 'user1@example.com' })
  const three = await app.inject({ url: '/me', headers: { ...API, cookie: loggedOut } })
  t.equal(three.statusCode, 401, 'user 3 was logged out under 0.1.0, after this session was stamped')
  t.match(three.json(), { code: 'FST_SESSION_REFRESH_LOGIN_REQUIRED', reason: 'user-logout' })
})
