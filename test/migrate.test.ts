// migrate(): fresh schemas, re-runs, dropped tables and rows, live databases
// (locks), and least-privilege roles. Long: one subject, and its role setup shared.
import { readdir } from 'node:fs/promises'
import postgres, { type Sql, type TransactionSql } from 'postgres'
import t from 'tap'
import { bumpSessionVersion, migrate, readSessionVersion } from '../lib/index.js'
import { buildApp } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { appGrants, createRole, etlGrants } from './helpers/roles.js'

// A bound for waits: far above what they take, on a loaded 2-core machine.
const WAIT = 30_000
// This file creates many databases (and processes); on a loaded machine that can take minutes.
t.setTimeout(300_000)

// The README's ETL step, word for word.
const ETL_UPDATE = "UPDATE system_settings SET value = (value::bigint + 1)::text WHERE key = 'session_version'"
const MAX_SAFE = 9_007_199_254_740_991

/** Every file in sql/, in name order: what migrate applies to a fresh schema. */
async function sqlFiles (): Promise<string[]> {
  return (await readdir(new URL('../sql/', import.meta.url))).filter((name) => name.endsWith('.sql')).sort()
}

/** The server's clock in microseconds, as the trigger reads it. */
async function serverMicros (sql: Sql): Promise<number> {
  const [row] = await sql<[{ now: string }]>`select (extract(epoch from clock_timestamp()) * 1000000)::bigint::text as now`
  return Number(row.now)
}

async function storedValue (sql: Sql): Promise<string | undefined> {
  const [row] = await sql<Array<{ value: string }>>`select value from system_settings where key = 'session_version'`
  return row?.value
}

/** Writes a value the way a restore or a hand edit does: with the table's triggers off. */
async function restoreValue (sql: Sql, value: string): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`alter table system_settings disable trigger user`
    await tx`update system_settings set value = ${value} where key = 'session_version'`
    await tx`alter table system_settings enable trigger user`
  })
}

interface Teardown { teardown (fn: () => unknown): void }

interface OpenTransaction {
  /** Commits, and resolves once the commit is done. */
  commit (): Promise<void>
}

/** Runs `work` in a transaction on a connection of its own and leaves the transaction open. */
async function openTransaction (t: Teardown, url: string, work: (tx: TransactionSql) => Promise<unknown>): Promise<OpenTransaction> {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 1 }))
  let release = (): void => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  let worked = (): void => {}
  const ready = new Promise<void>((resolve) => { worked = resolve })
  const done = sql.begin(async (tx) => {
    await work(tx)
    worked()
    await released
  })
  await Promise.race([ready, done])
  return { commit: async () => { release(); await done } }
}

/**
 * `promise`, or a failure naming `what` if it has not settled after `ms`: a bound
 * far above what it takes, so that a call that waits for a lock fails the test
 * with a message instead of hanging it.
 */
async function settles<T> (what: string, promise: Promise<T>, ms = WAIT): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, bound])
  } finally {
    clearTimeout(timer)
  }
}

/** Collects the payloads of the public schema's channel. */
async function listen (sql: Sql): Promise<string[]> {
  const payloads: string[] = []
  await sql.listen('session_refresh', (payload) => payloads.push(payload))
  return payloads
}

t.test('migrate creates the tables, the row and the triggers; run again it applies nothing and keeps the version', async (t) => {
  const { sql } = await createDatabase(t, { migrated: false })
  const files = await sqlFiles()
  t.same(await migrate(sql), files, 'a fresh database gets every file')
  t.same((await sql`select name from session_refresh_migrations order by name`).map((row) => row.name), files, 'and records them')
  const [row] = await sql`select key, value, description from system_settings`
  t.same(row, { key: 'session_version', value: '1', description: 'Version number incremented after each ETL run' })
  const columns = await sql`
    select column_name from information_schema.columns
    where table_schema = 'public' and table_name = 'system_settings' order by ordinal_position`
  t.same(columns.map((c) => c.column_name), ['id', 'key', 'value', 'description', 'created_at', 'updated_at'])
  const [state] = await sql`select logout_seq::int, users_epoch::int from session_refresh_state`
  t.same(state, { logout_seq: 0, users_epoch: 0 }, 'the logout clock starts at 0')

  await bumpSessionVersion(sql)
  const kept = await bumpSessionVersion(sql)
  const [before] = await sql`select updated_at from system_settings where key = 'session_version'`
  const payloads = await listen(sql)
  t.same(await migrate(sql), [], 'an up-to-date database gets nothing')
  t.equal(await readSessionVersion(sql), kept, 'running migrate again keeps the current version')
  const [after] = await sql`select updated_at from system_settings where key = 'session_version'`
  t.same(after, before, 'and does not touch the row')
  const next = await bumpSessionVersion(sql)
  await eventually('the bump after the migration', () => payloads.length > 0, WAIT)
  t.same(payloads, [`version:${next}`], 'migrating again notifies nothing: running apps never see a version go back')
  const [{ count }] = await sql`select count(*)::int as count from system_settings` as unknown as [{ count: number }]
  t.equal(count, 1)
})

t.test('concurrent migrations of a fresh database: one applies the files, the others find them applied', async (t) => {
  const { sql } = await createDatabase(t, { migrated: false })
  const results = await Promise.all([migrate(sql), migrate(sql), migrate(sql)])
  const files = await sqlFiles()
  t.same(results.map((applied) => applied.length).sort(), [0, 0, files.length])
  t.same(results.find((applied) => applied.length > 0), files)
  t.equal(await readSessionVersion(sql), 1)
})

t.test('a bump returns at least the old value + 1 and at least the server clock in microseconds', async (t) => {
  const { sql } = await createDatabase(t)
  const from = await serverMicros(sql)
  const bumped = await bumpSessionVersion(sql)
  const to = await serverMicros(sql)
  t.ok(bumped >= from && bumped <= to, `the clock at the bump: ${from} <= ${bumped} <= ${to}`)
  t.equal(await readSessionVersion(sql), bumped)
  t.equal(await storedValue(sql), String(bumped))

  // Above the clock, old + 1 decides.
  await sql`update system_settings set value = '9000000000000000' where key = 'session_version'`
  t.equal(await readSessionVersion(sql), 9_000_000_000_000_000, 'a value above the clock is kept as written')
  t.equal(await bumpSessionVersion(sql), 9_000_000_000_000_001)
  t.equal(await bumpSessionVersion(sql), 9_000_000_000_000_002)
})

t.test('a version never repeats, even after a restore brings back an older value', async (t) => {
  const { sql } = await createDatabase(t)
  const first = await bumpSessionVersion(sql)
  await restoreValue(sql, '1')
  t.equal(await readSessionVersion(sql), 1, 'the restore brought back the old row')
  const from = await serverMicros(sql)
  const second = await bumpSessionVersion(sql)
  const to = await serverMicros(sql)
  t.ok(second > first, `the bump after the restore (${second}) is not the one before it (${first})`)
  t.ok(second >= from && second <= to, 'it is the clock, not the restored value + 1')

  // A hand-written lower value is raised the same way.
  await sql`update system_settings set value = '7' where key = 'session_version'`
  t.ok(await readSessionVersion(sql) > second, 'writing 7 gives a fresh value, never 7')
})

t.test('the trigger checks the value, stamps updated_at and notifies `version:<n>` on session_refresh', async (t) => {
  const { sql } = await createDatabase(t)
  const payloads = await listen(sql)
  const [before] = await sql`select updated_at from system_settings where key = 'session_version'`

  await sql.unsafe(ETL_UPDATE)
  const etl = await readSessionVersion(sql)
  await t.rejects(sql`update system_settings set value = 'abc' where key = 'session_version'`, {
    code: '23514', message: "session_version must be a non-negative integer, got 'abc'"
  })
  await t.rejects(sql`update system_settings set value = '-4' where key = 'session_version'`, { code: '23514', message: /got '-4'$/ })
  await t.rejects(sql`update system_settings set value = '1e3' where key = 'session_version'`, { code: '23514', message: /got '1e3'$/ })
  await t.rejects(sql`update system_settings set value = '9007199254740992' where key = 'session_version'`, {
    code: '23514', message: /got '9007199254740992'$/
  }, 'one above 2^53 - 1')
  await t.rejects(sql`update system_settings set value = '12345678901234567' where key = 'session_version'`, {
    code: '23514', message: /got '12345678901234567'$/
  }, '17 digits')
  t.equal(await readSessionVersion(sql), etl, 'a refused value changes nothing')
  await sql`update system_settings set value = '9000000000000000' where key = 'session_version'`
  t.equal(await storedValue(sql), '9000000000000000', 'a value above the clock is stored as written')
  await sql`update system_settings set value = '007' where key = 'session_version'`
  t.equal(await storedValue(sql), '9000000000000001', "'007' is accepted, and becomes old + 1")
  const [after] = await sql`select updated_at from system_settings where key = 'session_version'`
  t.ok(after!.updated_at > before!.updated_at, 'updated_at is set')

  // Other settings are none of the trigger's business.
  await sql`insert into system_settings (key, value) values ('theme', 'dark')`
  await sql`update system_settings set value = 'light' where key = 'theme'`
  t.equal((await sql`select value from system_settings where key = 'theme'`)[0]!.value, 'light')

  // A marker sent after everything else: once it is here, every earlier notification is too.
  await sql`select pg_notify('session_refresh', 'marker')`
  await eventually('the marker', () => payloads.includes('marker'), WAIT)
  t.same(payloads, [`version:${etl}`, 'version:9000000000000000', 'version:9000000000000001', 'marker'], 'only committed, valid versions are notified')
})

t.test('a write never stores a version above 2^53 - 1, which no reader could read', async (t) => {
  const { sql } = await createDatabase(t)
  await sql`update system_settings set value = ${String(MAX_SAFE)} where key = 'session_version'`
  t.equal(await readSessionVersion(sql), MAX_SAFE, 'the largest safe integer is a valid version')
  await t.rejects(sql.unsafe(ETL_UPDATE), { code: '23514' }, 'the ETL step cannot go past it')
  // A lower value asks for old + 1 too, through the never-repeat rule.
  await t.rejects(sql`update system_settings set value = '5' where key = 'session_version'`, { code: '23514' },
    'nor can a write of a lower value')
  t.equal(await storedValue(sql), String(MAX_SAFE), 'the stored value stays readable')
  t.equal(await readSessionVersion(sql), MAX_SAFE)
})

t.test('a bump in a rolled-back transaction changes nothing', async (t) => {
  const { sql } = await createDatabase(t)
  await t.rejects(sql.begin(async (tx) => {
    await tx.unsafe(ETL_UPDATE)
    throw new Error('ETL failed')
  }), /ETL failed/)
  t.equal(await readSessionVersion(sql), 1)
})

t.test('read and bump say clearly when the table is missing or malformed', async (t) => {
  const { sql, url } = await createDatabase(t, { migrated: false })
  const notMigrated = { code: 'FST_SESSION_REFRESH_NOT_MIGRATED', message: /run migrate\(sql\)/ }
  await t.rejects(readSessionVersion(sql), notMigrated)
  await t.rejects(bumpSessionVersion(sql), notMigrated)

  await migrate(sql)
  await sql`truncate system_settings`
  await t.rejects(readSessionVersion(sql), notMigrated, 'a missing row')
  await t.rejects(bumpSessionVersion(sql), notMigrated, 'a missing row')

  await sql`alter table system_settings disable trigger user`
  await sql`insert into system_settings (key, value) values ('session_version', 'twelve')`
  await sql`alter table system_settings enable trigger user`
  await t.rejects(readSessionVersion(sql), { code: 'FST_SESSION_REFRESH_MALFORMED_VERSION', message: 'session_version must be a non-negative integer, got "twelve"' })
  await restoreValue(sql, '9007199254740992')
  await t.rejects(readSessionVersion(sql), { code: 'FST_SESSION_REFRESH_MALFORMED_VERSION', message: 'session_version must be a non-negative integer, got "9007199254740992"' },
    'digits, but beyond a safe integer')

  const ended = postgres(url, { onnotice: () => {} })
  await ended.end()
  await t.rejects(readSessionVersion(ended), { code: 'CONNECTION_ENDED' }, 'other errors pass through')
})

t.test('11.7: a missing session_version row makes the ETL fail loudly', async (t) => {
  const missingRow = {
    code: 'P0002',
    message: 'system_settings has no session_version row: run migrate (npx session-refresh migrate) to create it again',
    hint: 'Run migrate(sql) or `npx session-refresh migrate` to create it again.'
  }
  const notMigrated = { code: 'FST_SESSION_REFRESH_NOT_MIGRATED', message: /run migrate\(sql\)/ }

  t.test('after a TRUNCATE', async (t) => {
    const { sql } = await createDatabase(t)
    await sql`truncate system_settings`
    await t.rejects(sql.unsafe(ETL_UPDATE), missingRow, "the README's UPDATE fails instead of matching 0 rows")
    await t.rejects(bumpSessionVersion(sql), notMigrated)
    await t.rejects(sql`update system_settings set value = 'light' where key = 'theme'`, missingRow,
      'so does any UPDATE of the table: the row is what every instance reads')
  })

  t.test('after a DELETE with the triggers off', async (t) => {
    const { sql, url } = await createDatabase(t)
    await sql.begin(async (tx) => {
      await tx`alter table system_settings disable trigger user`
      await tx`delete from system_settings where key = 'session_version'`
      await tx`alter table system_settings enable trigger user`
    })
    await t.rejects(sql.unsafe(ETL_UPDATE), missingRow)
    await t.rejects(bumpSessionVersion(sql), notMigrated)
    // A restore runs with the triggers off: there the UPDATE matches 0 rows, and bumpSessionVersion still says so.
    const restoring = postgres(url, { max: 1, onnotice: () => {}, connection: { session_replication_role: 'replica' } })
    t.teardown(() => restoring.end({ timeout: 1 }))
    t.same(await restoring.unsafe(ETL_UPDATE), [], 'no trigger, no row')
    await t.rejects(bumpSessionVersion(restoring), notMigrated)
  })

  t.test('a plain DELETE of the row is refused', async (t) => {
    const { sql } = await createDatabase(t)
    const version = await bumpSessionVersion(sql)
    await t.rejects(sql`delete from system_settings where key = 'session_version'`, missingRow)
    await t.rejects(sql`delete from system_settings`, missingRow)
    t.equal(await readSessionVersion(sql), version, 'the row is still there')
    // Other rows may come and go.
    await sql`insert into system_settings (key, value) values ('theme', 'dark')`
    await sql`delete from system_settings where key = 'theme'`
    t.equal((await sql`select count(*)::int as count from system_settings`)[0]!.count, 1)
  })

  t.test('migrate creates the row again, as the error says, with a version never given out before', async (t) => {
    const { sql } = await createDatabase(t)
    const last = await bumpSessionVersion(sql)
    await sql`truncate system_settings`
    t.same(await migrate(sql), [], 'no file to apply: only the row is made again')
    const restored = await readSessionVersion(sql)
    t.ok(restored > last, `the new row's version (${restored}) is above the last one given out (${last})`)
    t.ok(await bumpSessionVersion(sql) > restored, 'and the ETL works again')
  })
})

t.test('migrate makes a dropped table again, with every file, and keeps what the other tables hold', async (t) => {
  const { sql } = await createDatabase(t)
  const version = await bumpSessionVersion(sql)
  await sql`select session_logout_user('1')`
  await sql`drop table session_refresh_state`
  await t.rejects(readSessionVersion(sql).then(() => sql`select logout_seq from session_refresh_state`), { code: '42P01' })
  t.same(await migrate(sql), await sqlFiles(), 'the files are idempotent: all of them run again')
  t.same(await migrate(sql), [])
  t.equal(await readSessionVersion(sql), version)
  const [state] = await sql`select logout_seq::int, users_epoch::int from session_refresh_state`
  t.same(state, { logout_seq: 0, users_epoch: 0 }, 'the logout clock starts again')
  const [user] = await sql`select logout_seq > 0 as logged_out from session_user_versions where user_id = '1'`
  t.same(user, { logged_out: true }, "the user's logout is kept")
  const [next] = await sql<[{ seq: string }]>`select logout_seq::text as seq from session_change_user('2', true, null, null, null)`
  t.ok(BigInt(next.seq) > 0n, 'and the next logout takes the clock')
})

t.test('migrate of a fresh schema, for one tenant', async (t) => {
  const { sql } = await createDatabase(t)
  const files = await sqlFiles()
  t.same(await migrate(sql, { schema: 'tenant "x"' }), files, 'any schema name, quoted as needed')
  t.same(await migrate(sql, { schema: 'tenant "x"' }), [])
  t.equal(await readSessionVersion(sql, { schema: 'tenant "x"' }), 1)
  const [{ count }] = await sql`select count(*)::int as count from "tenant ""x""".session_refresh_migrations` as unknown as [{ count: number }]
  t.equal(count, files.length)
})

t.test('11.9: migrate on an up-to-date database waits for no open transaction of the app or the ETL, and blocks nobody', async (t) => {
  const { sql, url } = await createDatabase(t)
  const before = await readSessionVersion(sql)

  // An ETL that has bumped and not committed, and an app instance in the middle of a logout.
  const etl = await openTransaction(t, url, (tx) => tx.unsafe(ETL_UPDATE))
  const logout = await openTransaction(t, url, (tx) => tx`select session_logout_user('1')`)
  t.same(await settles('migrate beside an open bump and an open logout', migrate(sql)), [],
    'migrate returned while both transactions are still open')
  await logout.commit()

  // A transaction that wrote session_user_versions, and a logout from another instance meanwhile.
  const refresh = await openTransaction(t, url, (tx) => tx`select session_refresh_user('2')`)
  const other = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => other.end({ timeout: 1 }))
  const migrating = migrate(sql)
  const otherLogout = other`select session_logout_user('3')`.then(() => 'done')
  t.same(await settles('migrate beside an open bump and an open refresh', migrating), [])
  t.equal(await settles("another instance's logout while migrate ran", otherLogout), 'done',
    'a logout from a third connection went through while the bump and the refresh are still open')

  await etl.commit()
  await refresh.commit()
  t.ok(await readSessionVersion(sql) > before, 'the ETL committed its bump')
  const users = await sql`select user_id, logout_seq > 0 as logged_out from session_user_versions order by user_id`
  t.same(users.map((row) => [row.user_id, row.logged_out]), [['1', true], ['2', false], ['3', true]])
})

// Long: the three roles and their rights are one setup, checked right by right.
t.test('11.10: each role needs only its documented rights; migrate of an up-to-date schema needs no CREATE', async (t) => {
  const db = await createDatabase(t, { migrated: false })
  const owner = await createRole(t, db, 'owner')
  const app = await createRole(t, db, 'app')
  const etl = await createRole(t, db, 'etl')
  const files = await sqlFiles()
  const denied = { code: '42501' }

  // Once, as an administrator. Since PostgreSQL 15, PUBLIC has no CREATE on public.
  await db.sql.unsafe(`GRANT CREATE ON SCHEMA public TO ${owner.name}`)
  for (const role of [app.name, etl.name]) {
    const [rights] = await db.sql`
      select has_schema_privilege(${role}, 'public', 'CREATE') as schema, has_database_privilege(${role}, current_database(), 'CREATE') as database`
    t.same(rights, { schema: false, database: false }, `${role} may create nothing`)
  }

  t.test('the owner migrates a fresh schema and grants the rights', async (t) => {
    const sql = owner.connect(t)
    t.same(await migrate(sql), files)
    for (const statement of [...appGrants('public', app.name), ...etlGrants('public', etl.name)]) await sql.unsafe(statement)
    const [table] = await db.sql`select tableowner from pg_tables where schemaname = 'public' and tablename = 'session_user_versions'`
    t.equal(table!.tableowner, owner.name)
  })

  t.test('the app migrates the up-to-date schema (a no-op), reads, and changes users', async (t) => {
    const sql = app.connect(t)
    t.same(await migrate(sql), [], 'nothing to apply, and no right missing')
    t.equal(await readSessionVersion(sql), 1)
    const [logout] = await sql<[{ version: string }]>`select session_logout_user('1')::text as version`
    const [refresh] = await sql<[{ version: string }]>`select session_refresh_user('1')::text as version`
    t.ok(BigInt(refresh.version) > BigInt(logout.version), 'the refresh after the logout raised the version')
    const [row] = await sql`
      select u.version::text, u.logout_seq > 0 as logged_out, u.logout_seq = s.logout_seq as latest
      from session_user_versions u, session_refresh_state s where u.user_id = '1'`
    t.same(row, { version: refresh.version, logged_out: true, latest: true }, 'the app reads what it wrote; the logout holds')
    await t.rejects(sql`update session_user_versions set version = version + 1 where user_id = '1'`, denied,
      'no direct write: the functions are the way in')
    await t.rejects(sql`update session_refresh_state set logout_seq = 0`, denied)

    const { app: server } = await buildApp(t, { url: app.url })
    t.equal(server.sessionRefresh.version, await readSessionVersion(sql), 'the plugin registers as the app: LISTEN needs no right')
    const version = await server.sessionRefresh.logoutUser(4)
    const [written] = await sql`select version::text from session_user_versions where user_id = '4'`
    t.equal(String(version), written!.version, "and logs a user out through the app's rights")
  })

  t.test("the ETL runs the README's UPDATE, and nothing else", async (t) => {
    const sql = etl.connect(t)
    const before = await readSessionVersion(db.sql)
    await sql.unsafe(ETL_UPDATE)
    t.ok(await readSessionVersion(db.sql) > before, 'the ETL bumped')
    await t.rejects(sql`insert into session_user_versions (user_id) values ('2')`, denied)
    await t.rejects(sql`update session_user_versions set version = version + 1`, denied)
    await t.rejects(sql`update session_refresh_state set logout_seq = logout_seq + 1`, denied)
    await t.rejects(sql`select session_logout_user('2')`, denied,
      'nor through the functions, which run with their owner\'s rights: only the roles granted EXECUTE may call them')
    await t.rejects(sql`select session_change_user('2', true, null, null, null)`, denied)
    t.same(await db.sql`select user_id from session_user_versions where user_id = '2'`, [], 'user 2 was never written')
  })

  t.test('a role that may not read the tables is told so by migrate, not sent to create them', async (t) => {
    const monitor = await createRole(t, db, 'monitor')
    await db.sql.unsafe(`GRANT SELECT ON session_refresh_migrations TO ${monitor.name}`)
    await t.rejects(migrate(monitor.connect(t)), { code: '42501', message: 'permission denied for table system_settings' })
  })
})
