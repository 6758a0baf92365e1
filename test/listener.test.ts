import { execFile } from 'node:child_process'
import net from 'node:net'
import { promisify } from 'node:util'
import postgres from 'postgres'
import t from 'tap'
import { bumpSessionVersion, readSessionVersion } from '../lib/index.js'
import { VersionListener } from '../lib/database/listener.js'
import { API, buildApp, login } from './helpers/app.js'
import { pluginBackends, terminateListeners } from './helpers/backends.js'
import { childEnv } from './helpers/child-env.js'
import { createDatabase, eventually } from './helpers/database.js'
import { connectionOptions, listenerOptions } from './helpers/listener.js'
import { FaultyProxy } from './helpers/proxy.js'

const db = await createDatabase(t)

/** Every value `read()` returns, sampled every millisecond until stop(): what an app held, transient values included. */
function sampleValues (read: () => number): { values: Set<number>, stop: () => void } {
  const values = new Set<number>([read()])
  const timer = setInterval(() => values.add(read()), 1)
  return {
    values,
    stop: () => {
      clearInterval(timer)
      values.add(read())
    }
  }
}

/** Notifications on `channel` seen by a LISTEN of the test's own, with when they came. */
interface Teardown { teardown (fn: () => unknown): void }

async function rawListen (t: Teardown, channel: string): Promise<Array<{ payload: string, at: number }>> {
  const seen: Array<{ payload: string, at: number }> = []
  const sql = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 1 }))
  await sql.listen(channel, (payload) => seen.push({ payload, at: performance.now() }))
  return seen
}

const isHeartbeat = (payload: string): boolean => payload.startsWith('heartbeat:') && !payload.endsWith(':start')

t.test('a plain UPDATE from another connection reaches the app, and status says so', async (t) => {
  const beforeStart = Date.now()
  const { app } = await buildApp(t, { url: db.url })
  const start = app.sessionRefresh.status()
  t.match(start, { listening: true, version: await readSessionVersion(db.sql), lastNotificationAt: null, lastSyncError: null, reconnects: 0, heartbeatMisses: 0 })
  t.ok(Date.parse(start.lastSyncAt!) >= beforeStart, `start() read the tables just now (${start.lastSyncAt})`)
  t.ok(start.queueUsage >= 0 && start.queueUsage < 0.01, `the NOTIFY queue is about empty (${start.queueUsage})`)
  const beforeUpdate = Date.now()
  const [row] = await db.sql<[{ value: string }]>`
    update system_settings set value = (value::bigint + 1)::text where key = 'session_version' returning value`
  const expected = Number(row.value)
  await eventually('the notification', () => app.sessionRefresh.version === expected, 10_000)
  t.ok(Date.parse(app.sessionRefresh.status().lastNotificationAt!) >= beforeUpdate, 'lastNotificationAt is the bump\'s')
})

t.test('a rolled-back bump and a malformed value change nothing, and the app keeps serving', async (t) => {
  const { app } = await buildApp(t, { url: db.url })
  const cookie = await login(app, 1)
  const before = app.sessionRefresh.version
  const held = sampleValues(() => app.sessionRefresh.version)
  let rolledBack = 0
  await t.rejects(db.sql.begin(async (tx) => {
    rolledBack = await bumpSessionVersion(tx as never)
    throw new Error('ETL failed half way')
  }), { message: 'ETL failed half way' })
  await t.rejects(db.sql`update system_settings set value = 'oops' where key = 'session_version'`, { message: /got 'oops'/ })
  const after = await bumpSessionVersion(db.sql)
  await eventually('the committed bump', () => app.sessionRefresh.version === after, 10_000)
  held.stop()
  t.ok(rolledBack > before, `the rolled-back bump had a value of its own (${rolledBack})`)
  t.same([...held.values].sort((a, b) => a - b), [before, after], 'the app held only committed values, never the rolled-back one')
  t.equal(await readSessionVersion(db.sql), after)
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 200)
})

t.test('a bump committed while start()\'s first read is in flight is read right after it', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const old = await readSessionVersion(db.sql)
  const listener = new VersionListener(listenerOptions(proxy.url(db.url), { connectTimeout: 20_000 }))
  t.teardown(() => listener.close())
  // The first read sends its SQL in full, and has it described before it runs;
  // the answer to the run, from its BindComplete on, is kept by the proxy.
  const holding = proxy.holdWhenClientSends('session_refresh_state', 'response', '2')
  const started = listener.start()
  const link = await holding
  await eventually('the first read to be answered (with the version before the bump)', () => link.answered, 10_000)
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump\'s notification, on the LISTEN connection', () => listener.status().lastNotificationAt !== null, 10_000)
  link.release()
  await started
  t.equal(listener.version, old, 'start() resolved with its read, made before the bump')
  await eventually('the read the notification asked for', () => listener.version === bumped, 10_000)
  t.match(listener.status(), { listening: true, lastSyncError: null })
})

t.test('postgres.js options work as the connection', async (t) => {
  const listener = new VersionListener(listenerOptions({ ...connectionOptions(db.url), connection: { search_path: 'public' } }))
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
  await t.rejects(swallowed.start(), {
    ...unavailable,
    message: 'fastify-session-refresh could not listen for session changes within 300 ms: timed out connecting and listening'
  }, 'a server that accepts the connection and never answers')

  const bare = await createDatabase(t, { migrated: false })
  const unmigrated = new VersionListener(listenerOptions(bare.url))
  await t.rejects(unmigrated.start(), { code: 'FST_SESSION_REFRESH_NOT_MIGRATED' }, 'the tables are missing')
})

t.test('close() ends the connections, and a closed app lets the process exit', async (t) => {
  const run = promisify(execFile)
  const fixture = new URL('./fixtures/close-and-exit.ts', import.meta.url).pathname
  // The timeout kills a child that a handle left open keeps alive; execFile then rejects.
  const { stdout } = await run(process.execPath, ['--import', 'tsx', fixture, db.url], { timeout: 20_000, env: childEnv() })
  t.equal(stdout.trim(), `closed with version ${await readSessionVersion(db.sql)}`)
})

t.test('transform and types in the connection options do not break the plugin\'s reads (issue 10.8)', async (t) => {
  const connection = {
    ...connectionOptions(db.url),
    // The app's own choices for its queries: camelCase columns, and text parsed its own way.
    transform: postgres.camel,
    types: { text: { to: 25, from: [25], serialize: (value: unknown) => String(value), parse: (value: string) => `app:${value}` } }
  }
  const { app } = await buildApp(t, { url: db.url, plugin: { connection: connection as never, pollInterval: 100 } })
  t.equal(app.sessionRefresh.version, await readSessionVersion(db.sql), 'the version is read as the server sends it')
  const tracked = app.sessionRefresh.status().userVersions
  await db.sql`select session_refresh_user('10.8-refreshed')`
  await eventually('the per-user change to be read', () => app.sessionRefresh.status().userVersions === tracked + 1, 10_000)

  // A logout that sends no notification: only the poll's read can find it.
  const cookie = await login(app, 108)
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 200)
  await db.sql.begin(async (tx) => {
    await tx`alter table session_user_versions disable trigger session_user_version_notify`
    await tx`select session_logout_user('108')`
    await tx`alter table session_user_versions enable trigger session_user_version_notify`
  })
  await eventually('the poll to read the logout', () => app.sessionRefresh.status().userVersions === tracked + 2, 10_000)
  const response = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(response.statusCode, 401)
  t.equal(response.json().reason, 'user-logout')
})

t.test('the app\'s socket factory makes the plugin\'s connections, which still drop black-holed sockets (issue 11.13)', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  // The app's own route to the server (a tunnel, say): here, through the proxy.
  let made = 0
  const socket = (): net.Socket => {
    made++
    return net.connect(proxy.port, '127.0.0.1')
  }
  const { app } = await buildApp(t, {
    url: db.url,
    plugin: { connection: { ...connectionOptions(db.url), socket } as never, heartbeatInterval: 100, heartbeatTimeout: 300 }
  })
  t.equal(made, 2, 'the LISTEN connection and the read connection came from the factory')
  t.equal(proxy.links.length, 2, 'and went where it sent them')
  const first = await bumpSessionVersion(db.sql)
  await eventually('a bump through the factory\'s sockets', () => app.sessionRefresh.version === first, 10_000)

  proxy.blackHole()
  const second = await bumpSessionVersion(db.sql)
  await eventually('a bump after the black hole', () => app.sessionRefresh.version === second, 20_000)
  const status = app.sessionRefresh.status()
  t.ok(status.heartbeatMisses >= 1, `the heartbeat missed (${status.heartbeatMisses})`)
  t.ok(made >= 4, `the reconnects made new sockets through the factory (${made})`)
  await eventually('every black-holed socket to be destroyed', () => proxy.links.every((link) => !link.holed || link.clientClosed), 10_000)
})

t.test('an async socket factory works too, for the listener and for per-user changes (issue 11.13)', async (t) => {
  let made = 0
  const target = connectionOptions(db.url)
  const socket = async (): Promise<net.Socket> => {
    made++
    const connected = net.connect(target.port, target.host)
    await new Promise((resolve, reject) => connected.once('connect', resolve).once('error', reject))
    return connected
  }
  const { app } = await buildApp(t, { url: db.url, plugin: { connection: { ...target, socket } as never } })
  t.equal(made, 2)
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump', () => app.sessionRefresh.version === bumped, 10_000)
  const version = await app.sessionRefresh.refreshUser('11.13')
  const [row] = await db.sql<[{ version: string }]>`select version::text from session_user_versions where user_id = '11.13'`
  t.equal(version, Number(row.version))
  t.equal(made, 3, 'the connection for per-user changes came from the factory too')
})

t.test('a URL object as the connection reaches that database (issue 11.13)', async (t) => {
  // A value of this database's own: versions come from the server clock, so no other database holds it.
  const mine = await bumpSessionVersion(db.sql)
  const { app } = await buildApp(t, { url: db.url, plugin: { connection: new URL(db.url) } })
  t.equal(app.sessionRefresh.version, mine)
  t.equal(await pluginBackends(db.sql), 2, 'both connections are in this database')
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('a bump in that database', () => app.sessionRefresh.version === bumped, 10_000)
})

t.test('4 silent instances on one database send about one heartbeat per interval between them, not one each', async (t) => {
  const interval = 200
  const seen = await rawListen(t, 'session_refresh')
  const apps = []
  for (let i = 0; i < 4; i++) apps.push((await buildApp(t, { url: db.url, plugin: { heartbeatInterval: interval, heartbeatTimeout: 2000 } })).app)
  const from = performance.now()
  await new Promise((resolve) => setTimeout(resolve, 3000)) // a window to count in, not a wait for anything
  const elapsed = performance.now() - from
  const heartbeats = seen.filter(({ payload, at }) => at >= from && isHeartbeat(payload))
  // An instance sends one only after a whole interval with no notification at all,
  // and any instance's heartbeat is one for all of them: about one per 200-440 ms
  // (timers are jittered by ±20%) between the four. One each would be four per
  // interval (60 in 3 s). 1.5 per interval leaves room for two instances whose
  // timers fire within one delivery of each other.
  const most = Math.ceil(1.5 * elapsed / interval)
  t.ok(heartbeats.length <= most, `${heartbeats.length} heartbeats in ${Math.round(elapsed)} ms, at most ${most}`)
  t.ok(heartbeats.length >= 2, `heartbeats did go out (${heartbeats.length})`)
  t.same(apps.map((app) => app.sessionRefresh.status().heartbeatMisses), [0, 0, 0, 0], 'no instance missed one')
  t.same(apps.map((app) => app.sessionRefresh.status().lastHeartbeatAt !== null), [true, true, true, true],
    'every instance heard heartbeats, its own or another\'s')
})

t.test('a heartbeat is skipped while other notifications prove the link', async (t) => {
  const interval = 1000
  const seen = await rawListen(t, 'session_refresh')
  const { app } = await buildApp(t, { url: db.url, plugin: { heartbeatInterval: interval, heartbeatTimeout: 2000 } })
  const sender = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => sender.end({ timeout: 1 }))
  // A notification every 20 ms: a hint of the version the app holds, which costs no read.
  const hint = `version:${app.sessionRefresh.version}`
  const from = performance.now()
  while (performance.now() - from < 3 * interval) {
    await sender`select pg_notify('session_refresh', ${hint})`
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  const streamEnd = performance.now()
  t.same(seen.filter(({ payload, at }) => at <= streamEnd && isHeartbeat(payload)).map(({ payload }) => payload), [],
    'no heartbeat while notifications kept coming')
  await eventually('a heartbeat once the channel is silent', () => seen.some(({ payload, at }) => at > streamEnd && isHeartbeat(payload)), 10_000)
  t.equal(app.sessionRefresh.status().heartbeatMisses, 0)
})
