// The test infrastructure against real servers: the run's Redis, PgBouncer in
// both pool modes, a hot standby. Raw clients only (postgres.js, redis), so this
// file tests the harness whatever state the plugin is in.
import { randomBytes } from 'node:crypto'
import { access } from 'node:fs/promises'
import { RedisStore } from 'connect-redis'
import postgres, { type Sql } from 'postgres'
import t from 'tap'
import { startPgBouncer } from './helpers/pgbouncer.js'
import { createRedis } from './helpers/redis.js'
import { startStandby } from './helpers/standby.js'
import { readServerInfo } from './setup/server.js'

interface Teardown { teardown (fn: () => unknown): void }
const WAIT_MS = 30_000
const channel = `harness_${randomBytes(4).toString('hex')}`
const db = await scratchDatabase(t)

t.test('redis: each test gets its own key prefix, emptied at teardown', async (t) => {
  let prefix = ''
  await t.test('set and get under the prefix, through the client and through connect-redis', async (t) => {
    const redis = await createRedis(t)
    const neighbour = await createRedis(t)
    prefix = redis.prefix
    t.not(redis.prefix, neighbour.prefix)
    await redis.client.set(`${redis.prefix}greeting`, 'hello')
    t.equal(await redis.client.get(`${redis.prefix}greeting`), 'hello')
    t.equal(await neighbour.client.get(`${neighbour.prefix}greeting`), null, 'another prefix does not see it')
    const store = new RedisStore({ client: redis.client, prefix: redis.prefix })
    await store.set('sid', { cookie: { originalMaxAge: 60_000 } } as never)
    t.match(await store.get('sid'), { cookie: { originalMaxAge: 60_000 } })
    t.equal(await redis.client.exists(`${redis.prefix}sid`), 1, 'the store writes under the prefix')
  })
  const after = await createRedis(t)
  t.equal(await after.client.exists([`${prefix}greeting`, `${prefix}sid`]), 0, 'teardown deleted the keys')
})

t.test('pgbouncer, session mode: a LISTEN through it gets the NOTIFY', async (t) => {
  let url = ''
  await t.test('through pgbouncer', async (t) => {
    const bouncer = await startPgBouncer(t, { databaseUrl: db.url, poolMode: 'session' })
    url = bouncer.url
    const got: string[] = []
    await client(t, bouncer.url).listen(channel, (payload) => got.push(payload))
    await db.sql`select pg_notify(${channel}, 'hello')`
    await waitFor('the notification', () => got.length > 0)
    t.same(got, ['hello'])
    t.same(await listeningChannels(client(t, bouncer.url)), [], 'another client has a server connection of its own')
  })
  await t.rejects(postgres(url, { max: 1, connect_timeout: 5 })`select 1`, { code: 'ECONNREFUSED' }, 'teardown stopped pgbouncer')
})

t.test('pgbouncer, transaction mode: LISTEN succeeds, and the notifications go astray', async (t) => {
  // One server connection for all clients: where a notification lands is then certain.
  const bouncer = await startPgBouncer(t, { databaseUrl: db.url, poolMode: 'transaction', poolSize: 1 })
  const got: string[] = []
  await client(t, bouncer.url).listen(channel, (payload) => got.push(payload))
  t.pass('LISTEN "succeeded"')
  const strayed: string[] = []
  // postgres.js's own hook for notifications on any connection (its listen() uses it); not in its types.
  const other = client(t, bouncer.url, { onnotify: (_: string, payload: string) => strayed.push(payload) } as postgres.Options<{}>)
  t.same(await listeningChannels(other), [channel], 'the LISTEN stayed on the pooled server connection, which another client now uses')

  await other.begin((tx) => tx`select pg_notify(${channel}, 'from another client')`)
  await waitFor('the notification on the other client', () => strayed.length > 0)
  t.same(strayed, ['from another client'], 'the backend delivers it to whichever client holds it, one that never listened')
  t.same(got, [], 'so the listener never gets it')

  const dropped = (): number => bouncer.log().split("got packet 'A' from server when not linked").length - 1
  await db.sql`select pg_notify(${channel}, 'while idle')`
  await waitFor('pgbouncer to drop it', () => dropped() === 1)
  t.same(got, [], 'a NOTIFY while no client holds the backend is dropped by pgbouncer')
  t.same(strayed, ['from another client'])
})

t.test('standby: in recovery, reads work, LISTEN is refused', async (t) => {
  await db.sql`create table harness_rows (note text)`
  await db.sql`insert into harness_rows values ('written before the standby was made')`
  let standby = { url: '', dataDir: '' }
  await t.test('a hot standby of the test server', async (t) => {
    standby = await startStandby(t, { databaseUrl: db.url })
    const sql = client(t, standby.url)
    t.same(await sql`select pg_is_in_recovery() as recovery`, [{ recovery: true }])
    t.same(await sql`select note from harness_rows`, [{ note: 'written before the standby was made' }], 'it holds the database')
    await t.rejects(sql.listen(channel, () => {}), { code: '25006', message: 'cannot execute LISTEN during recovery' })
    t.same(await db.sql`select pg_is_in_recovery() as recovery`, [{ recovery: false }], 'the test server is still the primary')
  })
  t.notOk(await access(standby.dataDir).then(() => true, () => false), 'teardown removed its files')
  await t.rejects(postgres(standby.url, { max: 1, connect_timeout: 5 })`select 1`, { code: 'ECONNREFUSED' }, 'teardown stopped it')
})

/** A database of this file's own. Not createDatabase: that one migrates through the plugin, which this file must not need. */
async function scratchDatabase (t: Teardown): Promise<{ url: string, sql: Sql }> {
  const server = await readServerInfo()
  const name = `fsr_harness_${randomBytes(6).toString('hex')}`
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database ${name}`)
  await admin.end()
  const url = new URL(server.url)
  url.pathname = `/${name}`
  const sql = postgres(url.toString(), { max: 2, onnotice: () => {} })
  t.teardown(async () => {
    await sql.end({ timeout: 1 })
    const cleanup = postgres(server.url, { max: 1, onnotice: () => {} })
    await cleanup.unsafe(`drop database if exists ${name} with (force)`)
    await cleanup.end()
  })
  return { url: url.toString(), sql }
}

/** A one-connection client, ended at teardown. No prepared statements: PgBouncer 1.18 cannot pool them. */
function client (t: Teardown, url: string, options: postgres.Options<{}> = {}): Sql {
  const sql = postgres(url, { max: 1, prepare: false, onnotice: () => {}, ...options })
  t.teardown(() => sql.end({ timeout: 1 }))
  return sql
}

async function listeningChannels (sql: Sql): Promise<string[]> {
  const [row] = await sql<[{ channels: string[] }]>`select array(select pg_listening_channels()) as channels`
  return row.channels
}

/** Waits for state, never for time: the machine is noisy, so the bound is generous. */
async function waitFor (what: string, check: () => boolean): Promise<void> {
  const until = Date.now() + WAIT_MS
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}
