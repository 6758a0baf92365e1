import postgres from 'postgres'
import t from 'tap'
import { bumpSessionVersion, migrate, readSessionVersion } from '../lib/index.js'
import { createDatabase, eventually } from './helpers/database.js'

t.test('migrate creates the table, the row and the trigger, and is idempotent', async (t) => {
  const { sql } = await createDatabase(t, { migrated: false })
  t.same(await migrate(sql), ['001_session_version.sql', '002_user_versions.sql'])
  const [row] = await sql`select key, value, description from system_settings`
  t.same(row, { key: 'session_version', value: '1', description: 'Version number incremented after each ETL run' })
  const columns = await sql`
    select column_name, data_type, is_nullable from information_schema.columns
    where table_name = 'system_settings' order by ordinal_position`
  t.same(columns.map((c) => c.column_name), ['id', 'key', 'value', 'description', 'created_at', 'updated_at'])

  await bumpSessionVersion(sql)
  await bumpSessionVersion(sql)
  const payloads: string[] = []
  await sql.listen('session_version', (payload) => payloads.push(payload))
  await migrate(sql)
  t.equal(await readSessionVersion(sql), 3, 'running migrate again keeps the current version')
  await bumpSessionVersion(sql)
  await eventually('the bump after the migration', () => payloads.length > 0)
  t.same(payloads, ['4'], 'migrating again notifies nothing: running apps never see a version of 1')
  const [{ count }] = await sql`select count(*)::int as count from system_settings` as unknown as [{ count: number }]
  t.equal(count, 1)
})

t.test('concurrent migrations of a fresh database do not collide', async (t) => {
  const { sql } = await createDatabase(t, { migrated: false })
  await Promise.all([migrate(sql), migrate(sql), migrate(sql)])
  t.equal(await readSessionVersion(sql), 1)
})

t.test('the trigger checks, normalises, stamps and notifies', async (t) => {
  const { sql } = await createDatabase(t)
  const payloads: string[] = []
  await sql.listen('session_version', (payload) => payloads.push(payload))
  const [before] = await sql`select updated_at from system_settings where key = 'session_version'`

  await sql`update system_settings set value = (value::bigint + 1)::text where key = 'session_version'`
  await t.rejects(sql`update system_settings set value = 'abc' where key = 'session_version'`, {
    message: "session_version must be a non-negative integer, got 'abc'"
  })
  await t.rejects(sql`update system_settings set value = '-4' where key = 'session_version'`, { message: /got '-4'/ })
  await t.rejects(sql`update system_settings set value = '1e3' where key = 'session_version'`, { message: /got '1e3'/ })
  await t.rejects(sql`update system_settings set value = '9999999999999999' where key = 'session_version'`, {
    message: /got '9999999999999999'/
  })
  await sql`update system_settings set value = '007' where key = 'session_version'`
  t.equal(await readSessionVersion(sql), 7, "'007' is stored as 7")
  const [after] = await sql`select updated_at from system_settings where key = 'session_version'`
  t.ok(after!.updated_at > before!.updated_at, 'updated_at is set')

  // Other settings are none of the trigger's business.
  await sql`insert into system_settings (key, value) values ('theme', 'dark')`
  await sql`update system_settings set value = 'light' where key = 'theme'`

  await sql`select pg_sleep(0.05)`
  t.same(payloads, ['2', '7'], 'only committed, valid versions are notified')
})

t.test('a bump in a rolled-back transaction changes nothing', async (t) => {
  const { sql } = await createDatabase(t)
  await t.rejects(sql.begin(async (tx) => {
    await tx`update system_settings set value = (value::bigint + 1)::text where key = 'session_version'`
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
  await sql`delete from system_settings`
  await t.rejects(readSessionVersion(sql), notMigrated, 'a missing row')
  await t.rejects(bumpSessionVersion(sql), notMigrated, 'a missing row')

  await sql`alter table system_settings disable trigger user`
  await sql`insert into system_settings (key, value) values ('session_version', 'twelve')`
  await t.rejects(readSessionVersion(sql), { code: 'FST_SESSION_REFRESH_MALFORMED_VERSION', message: 'session_version must be a non-negative integer, got "twelve"' })

  const ended = postgres(url, { onnotice: () => {} })
  await ended.end()
  await t.rejects(readSessionVersion(ended), { code: 'CONNECTION_ENDED' }, 'other errors pass through')
})
