import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { bumpSessionVersion, readSessionVersion } from '../lib/index.js'
import { VersionListener } from '../lib/listener.js'
import { API, buildApp, login } from './helpers/app.js'
import { childEnv } from './helpers/child-env.js'
import { createDatabase, eventually } from './helpers/database.js'
import { listenerOptions } from './helpers/listener.js'
import { FaultyProxy } from './helpers/proxy.js'

const db = await createDatabase(t)

t.test('a plain UPDATE from another connection reaches the app, and status says so', async (t) => {
  const { app } = await buildApp(t, { url: db.url })
  const start = app.sessionRefresh.status()
  t.match(start, { listening: true, version: await readSessionVersion(db.sql), lastNotificationAt: null, reconnects: 0 })
  t.type(start.lastSyncAt, 'string')
  t.type(start.queueUsage, 'number')
  await db.sql`update system_settings set value = (value::bigint + 1)::text where key = 'session_version'`
  const expected = await readSessionVersion(db.sql)
  await eventually('the notification', () => app.sessionRefresh.version === expected)
  t.type(app.sessionRefresh.status().lastNotificationAt, 'string')
})

t.test('a rolled-back bump and a malformed value change nothing, and the app keeps serving', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url })
  const cookie = await login(app, 1)
  const before = app.sessionRefresh.version
  await t.rejects(db.sql.begin(async (tx) => {
    await bumpSessionVersion(tx as never)
    throw new Error('ETL failed half way')
  }))
  await t.rejects(db.sql`update system_settings set value = 'oops' where key = 'session_version'`, { message: /got 'oops'/ })
  const after = await bumpSessionVersion(db.sql)
  await eventually('the committed bump', () => app.sessionRefresh.version === after)
  t.equal(after, before + 1, 'only the committed bump counts')
  const changes = logs.filter((l) => l.source === 'notification').map((l) => l.to)
  t.same(changes, [after], 'the app never saw the rolled-back value')
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 200)
})

t.test('a bump between LISTEN and the first read is not missed', async (t) => {
  let listener: VersionListener | undefined
  let bumped = 0
  listener = new VersionListener(listenerOptions(db.url, {
    // The read sees the old value, and the bump commits while it is in flight.
    read: async (sql) => {
      const old = await readSessionVersion(sql)
      bumped = await bumpSessionVersion(db.sql)
      await eventually('the notification during start', () => listener!.version === bumped)
      return old
    }
  }))
  t.teardown(() => listener!.close())
  await listener.start()
  t.equal(listener.version, bumped, 'the older read does not overwrite the newer notification')
  t.equal(await readSessionVersion(db.sql), bumped)
})

t.test('a notification that is not a version is logged and ignored', async (t) => {
  const { app, logs } = await buildApp(t, { url: db.url })
  const before = app.sessionRefresh.version
  await db.sql`select pg_notify('session_version', 'abc')`
  await eventually('the warning', () => logs.some((l) => l.msg === 'Ignoring a session_version notification that is not a version'))
  t.match(logs.find((l) => l.level === 40), { payload: 'abc' })
  t.equal(app.sessionRefresh.version, before)
  const next = await bumpSessionVersion(db.sql)
  await eventually('the next real bump', () => app.sessionRefresh.version === next)
})

t.test('postgres.js options work as the connection', async (t) => {
  const url = new URL(db.url)
  const listener = new VersionListener(listenerOptions({
    host: url.hostname,
    port: Number(url.port),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    database: url.pathname.slice(1),
    connection: { search_path: 'public' }
  }))
  t.teardown(() => listener.close())
  await listener.start()
  t.equal(listener.version, await readSessionVersion(db.sql))
})

t.test('registration fails with a coded error, and never hangs', async (t) => {
  const unavailable = { code: 'FST_SESSION_REFRESH_DATABASE_UNAVAILABLE' }

  const refused = new VersionListener(listenerOptions('postgres://postgres@127.0.0.1:1/none'))
  await t.rejects(refused.start(), { ...unavailable, message: /within 5000 ms: .*ECONNREFUSED/ }, 'nothing listens on the port')

  const noSocket = new VersionListener(listenerOptions({ path: '/nonexistent/.s.PGSQL.5432', database: 'x' }))
  await t.rejects(noSocket.start(), { ...unavailable, message: /ENOENT/ }, 'a unix socket that is not there')

  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  proxy.swallow = true
  const swallowed = new VersionListener(listenerOptions(proxy.url(db.url), { connectTimeout: 300 }))
  await t.rejects(swallowed.start(), { ...unavailable, message: 'fastify-session-refresh could not listen for session_version changes within 300 ms: timed out' },
    'a server that accepts the connection and never answers')

  const bare = await createDatabase(t, { migrated: false })
  const unmigrated = new VersionListener(listenerOptions(bare.url))
  await t.rejects(unmigrated.start(), { code: 'FST_SESSION_REFRESH_NOT_MIGRATED' }, 'the table is missing')
})

t.test('close() ends the connections, and a closed app lets the process exit', async (t) => {
  const run = promisify(execFile)
  const started = Date.now()
  const fixture = new URL('./fixtures/close-and-exit.ts', import.meta.url).pathname
  const { stdout } = await run(process.execPath, ['--import', 'tsx', fixture, db.url], { timeout: 20_000, env: childEnv() })
  t.match(stdout, /closed with version \d+/)
  t.ok(Date.now() - started < 20_000, 'the process exited by itself')
  const [{ count }] = await db.sql`
    select count(*)::int as count from pg_stat_activity
    where application_name = 'fastify-session-refresh' and datname = current_database()` as unknown as [{ count: number }]
  t.equal(count, 0, 'no backend of the plugin is left')
})

t.test('a stray payload on the heartbeat channel is not taken for a heartbeat', async (t) => {
  const { app } = await buildApp(t, { url: db.url })
  // The channel is private to the instance, but anyone who reads pg_stat_activity can find it.
  const [listen] = await db.sql`
    select query from pg_stat_activity
    where application_name = 'fastify-session-refresh' and datname = current_database() and query ilike 'listen "session_refresh_hb_%'`
  const channel = String(listen!.query).match(/"(session_refresh_hb_[0-9a-f]+)"/)![1]!
  await db.sql`select pg_notify(${channel}, '1')`
  await bumpSessionVersion(db.sql) // delivered after the stray payload, in commit order
  await eventually('the bump', async () => app.sessionRefresh.version === await readSessionVersion(db.sql))
  t.equal(app.sessionRefresh.status().lastHeartbeatAt, null, 'no heartbeat was sent, so none came back')
})
