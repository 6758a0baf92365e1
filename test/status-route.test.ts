import postgres from 'postgres'
import t from 'tap'
import { errors } from '../lib/index.js'
import { APPLICATION_NAME } from '../lib/listener.js'
import { API, buildApp, login } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { readServerInfo } from './setup/server.js'

const ROUTE = '/health/session-refresh'

t.test('statusRoute must be a path or false', async (t) => {
  const db = await createDatabase(t)
  for (const statusRoute of ['health', '', 42, true, null]) {
    await t.rejects(buildApp(t, { url: db.url, plugin: { statusRoute: statusRoute as string } }), {
      code: 'FST_SESSION_REFRESH_INVALID_OPTION',
      message: /expected `statusRoute` to be a path starting with '\/', or false/
    }, String(statusRoute))
  }
  t.type(errors.InvalidOptionError, 'function')
})

t.test('no route unless asked for', async (t) => {
  const db = await createDatabase(t)
  for (const plugin of [{}, { statusRoute: false as const }, { statusRoute: undefined }]) {
    const { app } = await buildApp(t, { url: db.url, plugin })
    t.equal((await app.inject({ url: ROUTE })).statusCode, 404, JSON.stringify(plugin))
  }
})

t.test('serves status() as JSON, 200 while listening, without refreshing the session', async (t) => {
  const db = await createDatabase(t)
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { statusRoute: ROUTE } })
  const cookie = await login(app, 3)
  await db.sql`update system_settings set value = '2' where key = 'session_version'`
  await eventually('version 2', () => app.sessionRefresh.version === 2)

  const response = await app.inject({ url: ROUTE, headers: { cookie, ...API } })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['cache-control'], 'no-store')
  const body = response.json<Record<string, unknown>>()
  // The schema lists every field of status(): a field missing there would be dropped silently.
  t.same(Object.keys(body).sort(), Object.keys(app.sessionRefresh.status()).sort())
  t.match(body, { listening: true, version: 2, reconnects: 0, refreshes: 0, lastSyncAt: String })
  t.same(refreshCalls, [], 'config.sessionRefresh is false on the route')

  const poll = await app.inject({ url: ROUTE })
  t.equal(poll.statusCode, 200)
  t.equal(poll.headers['set-cookie'], undefined, 'a poll without a cookie creates no session')
  t.equal((await app.inject({ url: '/public' })).headers['set-cookie'] !== undefined, true, 'other routes still do')
})

t.test('503 once the LISTEN backend is terminated, 200 again once it is back', async (t) => {
  const db = await createDatabase(t)
  const { app } = await buildApp(t, { url: db.url, plugin: { statusRoute: ROUTE } })
  t.equal((await app.inject({ url: ROUTE })).statusCode, 200)

  // Keep the listener from reconnecting until the 503 has been seen, so the
  // test does not depend on catching a reconnect window of a few milliseconds.
  const database = new URL(db.url).pathname.slice(1)
  const admin = postgres((await readServerInfo()).url, { max: 1, onnotice: () => {} })
  t.teardown(async () => {
    await admin.unsafe(`alter database ${database} allow_connections true`)
    await admin.end()
  })
  await admin.unsafe(`alter database ${database} allow_connections false`)
  const terminated = await admin`
    select pg_terminate_backend(pid) from pg_stat_activity
    where application_name = ${APPLICATION_NAME} and datname = ${database} and query ilike 'listen %'`
  t.equal(terminated.length, 1, 'the one LISTEN backend')

  let down: { statusCode: number, body: Record<string, unknown> } | undefined
  await eventually('a 503', async () => {
    const response = await app.inject({ url: ROUTE })
    down = { statusCode: response.statusCode, body: response.json() }
    return response.statusCode !== 200
  })
  t.equal(down!.statusCode, 503)
  t.match(down!.body, { listening: false, version: 1 })

  await admin.unsafe(`alter database ${database} allow_connections true`)
  await eventually('a 200', async () => (await app.inject({ url: ROUTE })).statusCode === 200, 10_000)
  const up = (await app.inject({ url: ROUTE })).json<Record<string, unknown>>()
  t.match(up, { listening: true, reconnects: 1 })
})
