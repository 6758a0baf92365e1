// 11.8: one schema per tenant in one database. Each schema has its own tables,
// functions and NOTIFY channel; a change in one never reaches another.
import { readdir } from 'node:fs/promises'
import postgres, { type Sql } from 'postgres'
import t from 'tap'
import { bumpSessionVersion, migrate, readSessionVersion } from '../lib/index.js'
import type { DatabaseStatus } from '../lib/cli/status.js'
import { buildApp } from './helpers/app.js'
import { runCli, startCli, waitForOutput } from './helpers/cli.js'
import { createDatabase, eventually, type TestDatabase } from './helpers/database.js'

// A bound for waits: far above what they take, on a loaded 2-core machine.
const WAIT = 30_000
// This file creates many databases (and processes); on a loaded machine that can take minutes.
t.setTimeout(300_000)

interface Teardown { teardown (fn: () => unknown): void }

const CHANNELS = ['session_refresh', 'session_refresh.tenant_a', 'session_refresh.tenant_b'] as const
type Channel = typeof CHANNELS[number]

/** Every file in sql/, in name order. */
async function sqlFiles (): Promise<string[]> {
  return (await readdir(new URL('../sql/', import.meta.url))).filter((name) => name.endsWith('.sql')).sort()
}

/** A database whose public schema, tenant_a and tenant_b are migrated. */
async function tenantDatabase (t: Teardown): Promise<TestDatabase> {
  const db = await createDatabase(t)
  await migrate(db.sql, { schema: 'tenant_a' })
  await migrate(db.sql, { schema: 'tenant_b' })
  return db
}

interface Channels {
  /**
   * What each channel received since the last call. A marker sent on every
   * channel in one transaction, after everything else, comes last on the one
   * LISTEN connection: once it is in, everything committed before it is too.
   */
  received (): Promise<Record<Channel, string[]>>
}

/** LISTENs with raw postgres.js on the public channel and both tenants' channels. */
async function listenAll (t: Teardown, db: TestDatabase): Promise<Channels> {
  const sql = postgres(db.url, { onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 1 }))
  const got = Object.fromEntries(CHANNELS.map((channel) => [channel, [] as string[]])) as Record<Channel, string[]>
  for (const channel of CHANNELS) await sql.listen(channel, (payload) => got[channel].push(payload))
  let markers = 0
  return {
    received: async () => {
      const marker = `marker:${++markers}`
      await db.sql.begin(async (tx) => {
        for (const channel of CHANNELS) await tx`select pg_notify(${channel}, ${marker})`
      })
      await eventually(`${marker} on every channel`, () => CHANNELS.every((channel) => got[channel].includes(marker)), WAIT)
      const before = Object.fromEntries(CHANNELS.map((channel) => {
        const at = got[channel].indexOf(marker)
        return [channel, got[channel].splice(0, at + 1).slice(0, at)]
      })) as Record<Channel, string[]>
      return before
    }
  }
}

async function userRows (sql: Sql, schema: string): Promise<Array<{ user_id: string, logged_out: boolean }>> {
  return sql`select user_id, logout_seq > 0 as logged_out from ${sql(schema)}.session_user_versions order by user_id`
}

async function logoutClock (sql: Sql, schema: string): Promise<number> {
  const [row] = await sql<[{ seq: string }]>`select logout_seq::text as seq from ${sql(schema)}.session_refresh_state`
  return Number(row.seq)
}

t.test('migrate with { schema } creates a set of tables per schema, and knows what each one has', async (t) => {
  const db = await createDatabase(t)
  const files = await sqlFiles()
  t.same(await migrate(db.sql, { schema: 'tenant_a' }), files, 'the schema is created and migrated')
  t.same(await migrate(db.sql, { schema: 'tenant_b' }), files, 'another schema is migrated in full, whatever public and tenant_a hold')
  t.same(await migrate(db.sql, { schema: 'tenant_a' }), [])
  t.same(await migrate(db.sql, { schema: 'tenant_b' }), [])
  for (const schema of ['public', 'tenant_a', 'tenant_b']) {
    t.equal(await readSessionVersion(db.sql, { schema }), 1, schema)
    const applied = await db.sql`select name from ${db.sql(schema)}.session_refresh_migrations order by name`
    t.same(applied.map((row) => row.name), files, schema)
  }
  // Every function keeps the search path it was created with: its own schema.
  const functions = await db.sql<Array<{ config: string[] | null }>>`
    select proconfig as config from pg_proc where pronamespace = 'tenant_b'::regnamespace`
  t.ok(functions.length >= 10)
  t.same([...new Set(functions.map((f) => String(f.config)))], ['search_path="tenant_b", pg_temp'])

  await t.rejects(readSessionVersion(db.sql, { schema: 'tenant_c' }), { code: 'FST_SESSION_REFRESH_NOT_MIGRATED' })
  await t.rejects(bumpSessionVersion(db.sql, { schema: 'tenant_c' }), { code: 'FST_SESSION_REFRESH_NOT_MIGRATED' })
})

t.test("a bump in tenant_a notifies only tenant_a's channel and changes only its version", async (t) => {
  const db = await tenantDatabase(t)
  const channels = await listenAll(t, db)
  const a = await bumpSessionVersion(db.sql, { schema: 'tenant_a' })
  t.same(await channels.received(), {
    session_refresh: [],
    'session_refresh.tenant_a': [`version:${a}`],
    'session_refresh.tenant_b': []
  })
  t.equal(await readSessionVersion(db.sql, { schema: 'tenant_a' }), a)
  t.equal(await readSessionVersion(db.sql, { schema: 'tenant_b' }), 1)
  t.equal(await readSessionVersion(db.sql), 1)

  // The README's ETL step, in tenant_b.
  await db.sql.begin(async (tx) => {
    await tx`set local search_path = tenant_b`
    await tx.unsafe("UPDATE system_settings SET value = (value::bigint + 1)::text WHERE key = 'session_version'")
  })
  const b = await readSessionVersion(db.sql, { schema: 'tenant_b' })
  t.same(await channels.received(), {
    session_refresh: [],
    'session_refresh.tenant_a': [],
    'session_refresh.tenant_b': [`version:${b}`]
  })
  const p = await bumpSessionVersion(db.sql)
  t.same(await channels.received(), {
    session_refresh: [`version:${p}`],
    'session_refresh.tenant_a': [],
    'session_refresh.tenant_b': []
  }, 'public keeps the channel `session_refresh`')
})

t.test("tenant_a.session_logout_user('42') changes only tenant_a's rows and logout clock", async (t) => {
  const db = await tenantDatabase(t)
  const channels = await listenAll(t, db)
  await db.sql`select tenant_a.session_logout_user('42')`
  t.same(await userRows(db.sql, 'tenant_a'), [{ user_id: '42', logged_out: true }])
  t.same(await userRows(db.sql, 'tenant_b'), [])
  t.same(await userRows(db.sql, 'public'), [])
  const [row] = await db.sql`select logout_seq::text from tenant_a.session_user_versions where user_id = '42'`
  t.equal(Number(row!.logout_seq), await logoutClock(db.sql, 'tenant_a'), "the logout took tenant_a's clock")
  t.equal(await logoutClock(db.sql, 'tenant_b'), 0)
  t.equal(await logoutClock(db.sql, 'public'), 0)
  t.same(await channels.received(), {
    session_refresh: [],
    'session_refresh.tenant_a': ['users'],
    'session_refresh.tenant_b': []
  })
})

t.test("functions and triggers keep their schema whatever the caller's search_path", async (t) => {
  const db = await tenantDatabase(t)
  const channels = await listenAll(t, db)
  // tenant_a holds functions and tables of the same names: they must not be the ones used.
  await db.sql.begin(async (tx) => {
    await tx`set local search_path = tenant_a`
    await tx`select tenant_b.session_refresh_user('7')`
    await tx`select tenant_b.session_logout_user('8')`
  })
  t.same(await userRows(db.sql, 'tenant_b'), [{ user_id: '7', logged_out: false }, { user_id: '8', logged_out: true }])
  t.same(await userRows(db.sql, 'tenant_a'), [], 'tenant_a was not written')
  t.ok(await logoutClock(db.sql, 'tenant_b') > 0)
  t.equal(await logoutClock(db.sql, 'tenant_a'), 0)
  t.same(await channels.received(), {
    session_refresh: [],
    'session_refresh.tenant_a': [],
    'session_refresh.tenant_b': ['users']
  })

  // tenant_a has lost its row: an UPDATE of tenant_b's table must check tenant_b's row, not the caller's.
  await db.sql`truncate tenant_a.system_settings`
  await db.sql.begin(async (tx) => {
    await tx`set local search_path = tenant_a`
    await tx`update tenant_b.system_settings set value = (value::bigint + 1)::text where key = 'session_version'`
  })
  const b = await readSessionVersion(db.sql, { schema: 'tenant_b' })
  t.ok(b > 1)
  t.same(await channels.received(), {
    session_refresh: [],
    'session_refresh.tenant_a': [],
    'session_refresh.tenant_b': [`version:${b}`]
  })
  await t.rejects(db.sql`update tenant_a.system_settings set value = '2' where key = 'session_version'`, { code: 'P0002' },
    "and tenant_a's own check still sees that its row is gone")
})

t.test('the command with --schema tenant_a: bump, status and watch use tenant_a only', async (t) => {
  const db = await tenantDatabase(t)
  const watching = startCli(['watch', '--schema', 'tenant_a', '--url', db.url])
  t.teardown(() => { watching.child.kill('SIGKILL') })
  await waitForOutput(watching, /^watching session_version, now 1 \(.+ since updated_at\); Ctrl-C to stop\n/, WAIT)

  const bumped = await runCli(['bump', '--schema', 'tenant_a'], { DATABASE_URL: db.url })
  t.equal(bumped.code, 0, bumped.stderr)
  const a = await readSessionVersion(db.sql, { schema: 'tenant_a' })
  t.equal(bumped.stdout, `session_version is now ${a}\n`)
  t.equal(await readSessionVersion(db.sql, { schema: 'tenant_b' }), 1)
  t.equal(await readSessionVersion(db.sql), 1)
  await waitForOutput(watching, new RegExp(`\\n\\S+ {2}session_version 1 -> ${a} {2}\\(\\d+ (ms|s) since updated_at\\)\\n$`), WAIT)

  // Bumps elsewhere are not tenant_a's: the next line watch prints is tenant_a's next bump.
  await bumpSessionVersion(db.sql, { schema: 'tenant_b' })
  await bumpSessionVersion(db.sql)
  const next = await bumpSessionVersion(db.sql, { schema: 'tenant_a' })
  await waitForOutput(watching, new RegExp(`session_version ${a} -> ${next} `), WAIT)
  t.equal(watching.stdout.split('\n').length, 4, `three lines: ${watching.stdout}`)

  const json = await runCli(['status', '--json', '--schema', 'tenant_a', '--url', db.url])
  t.equal(json.code, 0, json.stderr)
  t.match(JSON.parse(json.stdout) as DatabaseStatus, { schema: 'tenant_a', version: next })
  const text = await runCli(['status', '--schema', 'tenant_a', '--url', db.url])
  t.match(text.stdout, new RegExp(`^schema {11}tenant_a\\nsession_version {2}${next}\\n`))

  const missing = await runCli(['bump', '--schema', 'tenant_c', '--url', db.url])
  t.equal(missing.code, 1)
  t.equal(missing.stderr, 'session-refresh: the system_settings table or its session_version row is missing: run `session-refresh migrate` first\n')
})

t.test('two apps on two schemas of one database: a bump in one leaves the other alone', async (t) => {
  const db = await tenantDatabase(t)
  const { app: a } = await buildApp(t, { url: db.url, plugin: { schema: 'tenant_a' } })
  const { app: b } = await buildApp(t, { url: db.url, plugin: { schema: 'tenant_b' } })
  t.equal(a.sessionRefresh.version, 1)
  t.equal(b.sessionRefresh.version, 1)

  const va = await bumpSessionVersion(db.sql, { schema: 'tenant_a' })
  await eventually('app a has the bump', () => a.sessionRefresh.version === va, WAIT)
  t.equal(b.sessionRefresh.version, 1, "b still holds tenant_b's version")
  const vb = await bumpSessionVersion(db.sql, { schema: 'tenant_b' })
  await eventually('app b has its own bump', () => b.sessionRefresh.version === vb, WAIT)
  t.equal(a.sessionRefresh.version, va, "a still holds tenant_a's version")
})

t.test("status --schema counts the instances listening on that schema's channel only", async (t) => {
  const db = await tenantDatabase(t)
  await buildApp(t, { url: db.url, plugin: { schema: 'tenant_a' } })
  await buildApp(t, { url: db.url, plugin: { schema: 'tenant_b' } })
  await buildApp(t, { url: db.url, plugin: { schema: 'tenant_b' } })
  for (const [schema, instances] of [['tenant_a', 1], ['tenant_b', 2], ['public', 0]] as const) {
    const json = await runCli(['status', '--json', '--schema', schema, '--url', db.url])
    t.equal(json.code, 0, json.stderr)
    const status = JSON.parse(json.stdout) as DatabaseStatus
    t.equal(status.schema, schema)
    t.equal(status.listening.length, instances, `${schema}: ${instances} listening`)
  }
})
