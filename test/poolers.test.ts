// Issue 12, item 3: behind a pooler or on a standby, registration fails fast
// and says why, instead of a listener that hears nothing. Real PgBouncer
// (Debian's), a real hot standby.
import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { API, buildApp, login } from './helpers/app.js'
import { connectionOptions } from './helpers/listener.js'
import { createDatabase, eventually } from './helpers/database.js'
import { startPgBouncer } from './helpers/pgbouncer.js'
import { startStandby } from './helpers/standby.js'

const db = await createDatabase(t)

t.test('through PgBouncer in transaction mode, registration fails within connectTimeout with a coded error that names the fix', async (t) => {
  const bouncer = await startPgBouncer(t, { databaseUrl: db.url, poolMode: 'transaction' })
  await t.rejects(buildApp(t, { url: db.url, plugin: { connection: { ...connectionOptions(bouncer.url), prepare: false }, connectTimeout: 1500 } }), {
    code: 'FST_SESSION_REFRESH_CANNOT_LISTEN',
    message: /a notification it sent itself did not come back within 1500 ms \(is it a pooler in transaction mode\?\).*direct connection to the primary \(or a PgBouncer pool in session mode\)/
  })
})

t.test('through PgBouncer in session mode, everything works: bumps, per-user logouts, refreshes', async (t) => {
  const bouncer = await startPgBouncer(t, { databaseUrl: db.url, poolMode: 'session' })
  const { app, refreshCalls } = await buildApp(t, { url: bouncer.url })
  t.equal(app.sessionRefresh.status().listening, true)
  const cookie = await login(app, 1)
  const other = await login(app, 2)
  await db.sql`select session_logout_user('2')`
  await eventually('the logout, through the pooler', async () =>
    (await app.inject({ url: '/me', headers: { cookie: other, ...API } })).statusCode === 401, 10_000)
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump, through the pooler', () => app.sessionRefresh.version === bumped, 10_000)
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).json().sessionVersion, bumped)
  t.same(refreshCalls, [1], 'the session was refreshed for the bump')
})

t.test('on a hot standby, registration fails at once with a coded error, not a silent listener', async (t) => {
  const standby = await startStandby(t, { databaseUrl: db.url })
  await t.rejects(buildApp(t, { url: standby.url, plugin: { connectTimeout: 20_000 } }), {
    code: 'FST_SESSION_REFRESH_CANNOT_LISTEN',
    message: /the server is a standby \(in recovery\)/
  })
})
