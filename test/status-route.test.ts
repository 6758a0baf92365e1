import postgres from 'postgres'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { bumpSessionVersion, errors, readSessionVersion } from '../lib/index.js'
import { APPLICATION_NAME } from '../lib/database/connection.js'
import { API, buildApp, login } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { readServerInfo } from './setup/server.js'

const ROUTE = '/health/session-refresh'

interface Answer { statusCode: number, body: Record<string, unknown> }

/** Polls the status route, as a load balancer does, until it answers other than 200. */
async function firstNot200 (app: FastifyInstance): Promise<Answer> {
  let answer: Answer | undefined
  await eventually('an answer other than 200', async () => {
    const response = await app.inject({ url: ROUTE })
    answer = { statusCode: response.statusCode, body: response.json() }
    return response.statusCode !== 200
  }, 10_000)
  return answer!
}

t.test('statusRoute must be a path or false', async (t) => {
  const db = await createDatabase(t)
  for (const statusRoute of ['health', '', 42, true, null]) {
    const error = await buildApp(t, { url: db.url, plugin: { statusRoute: statusRoute as string } }).then(() => null, (err: unknown) => err)
    t.ok(error instanceof errors.InvalidOptionError, `${String(statusRoute)}: the exported error class`)
    t.match(error, {
      code: 'FST_SESSION_REFRESH_INVALID_OPTION',
      message: /expected `statusRoute` to be a path starting with '\/', or false/
    }, String(statusRoute))
  }
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
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump', () => app.sessionRefresh.version === bumped, 10_000)

  const response = await app.inject({ url: ROUTE, headers: { cookie, ...API } })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['cache-control'], 'no-store')
  // Every field of status(), as it is: a field missing from the route's schema would be dropped silently.
  t.same(response.json(), app.sessionRefresh.status())
  t.match(response.json(), { listening: true, version: bumped, reconnects: 0, refreshes: 0, lastSyncError: null })
  t.same(refreshCalls, [], 'config.sessionRefresh is false on the route')

  const poll = await app.inject({ url: ROUTE })
  t.equal(poll.statusCode, 200)
  t.equal(poll.headers['set-cookie'], undefined, 'a poll without a cookie creates no session')
  t.not((await app.inject({ url: '/public' })).headers['set-cookie'], undefined, 'other routes still do')
})

t.test('503 once the LISTEN backend is terminated, 200 again once it is back', async (t) => {
  const db = await createDatabase(t)
  const { app } = await buildApp(t, { url: db.url, plugin: { statusRoute: ROUTE } })
  const version = app.sessionRefresh.version
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

  const down = await firstNot200(app)
  t.equal(down.statusCode, 503)
  t.match(down.body, { listening: false, version })

  await admin.unsafe(`alter database ${database} allow_connections true`)
  await eventually('a 200', async () => (await app.inject({ url: ROUTE })).statusCode === 200, 20_000)
  t.match((await app.inject({ url: ROUTE })).json(), { listening: true, reconnects: 1, lastSyncError: null })
})

t.test('a missing session_version row is reported within one pollInterval: 503 until the row is back (issue 11.7)', async (t) => {
  const db = await createDatabase(t)
  const { app } = await buildApp(t, { url: db.url, plugin: { statusRoute: ROUTE, pollInterval: 100 } })
  const version = app.sessionRefresh.version
  t.equal((await app.inject({ url: ROUTE })).statusCode, 200)

  // With the triggers off: neither the ETL guard (deleting the row fails) nor any notification.
  await db.sql.begin(async (tx) => {
    await tx`alter table system_settings disable trigger user`
    await tx`delete from system_settings where key = 'session_version'`
    await tx`alter table system_settings enable trigger user`
  })
  const down = await firstNot200(app)
  t.equal(down.statusCode, 503)
  t.match(down.body, { listening: false, version, lastSyncError: { code: 'FST_SESSION_REFRESH_NOT_MIGRATED', message: /session_version row/ } })
  t.match(app.sessionRefresh.status(), { listening: false, lastSyncError: { code: 'FST_SESSION_REFRESH_NOT_MIGRATED' } })

  await db.sql`insert into system_settings (key, value) values ('session_version', '1')`
  const back = await readSessionVersion(db.sql)
  await eventually('a 200', async () => (await app.inject({ url: ROUTE })).statusCode === 200, 10_000)
  t.match((await app.inject({ url: ROUTE })).json(), { listening: true, version: back, lastSyncError: null })
})
