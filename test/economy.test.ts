// Issue 12, item 2: what many instances cost the database. Per-user changes
// without a NOTIFY each, the app's own postgres.js instance for reads and
// writes, and what reaches the database while nothing happens.
import postgres from 'postgres'
import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { API, buildApp, login } from './helpers/app.js'
import { pluginBackends } from './helpers/backends.js'
import { runCli } from './helpers/cli.js'
import { createDatabase, eventually } from './helpers/database.js'

t.test("user-changes poll: per-user changes notify nobody, every instance reads them within userPollInterval, and status says so", async (t) => {
  const db = await createDatabase(t)
  const apps = [await buildApp(t, { url: db.url, plugin: { userPollInterval: 100 } }), await buildApp(t, { url: db.url, plugin: { userPollInterval: 100 } })]
  const cookie = await login(apps[1]!.app, 151)
  const switched = await runCli(['user-changes', 'poll'], { DATABASE_URL: db.url })
  t.equal(switched.stdout, 'per-user changes in schema public: poll (every instance reads them every userPollInterval)\n')
  // The switch is a value in the table: instances see it at their next read.
  for (const { app } of apps) await app.sessionRefresh.catchUp()
  t.same(apps.map(({ app }) => app.sessionRefresh.status().userChanges), ['poll', 'poll'])

  const payloads: string[] = []
  const { unlisten } = await db.sql.listen('session_refresh', (payload) => { if (!payload.startsWith('heartbeat:')) payloads.push(payload) })
  t.teardown(() => unlisten())
  await db.sql`select session_logout_user('151')`
  await eventually('instance 1 to read the logout by polling', async () =>
    (await apps[1]!.app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode === 401, 10_000)
  // A bump after the logout is delivered after its notification, if there had been one.
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump', () => payloads.includes(`version:${bumped}`))
  t.same(payloads, [`version:${bumped}`], 'the per-user change notified nobody; the bump still does')

  t.equal((await runCli(['user-changes'], { DATABASE_URL: db.url })).stdout, 'per-user changes in schema public: poll (every instance reads them every userPollInterval)\n')
  t.equal((await runCli(['user-changes', 'notify'], { DATABASE_URL: db.url })).stdout, 'per-user changes in schema public: notify (each change notifies every instance at once)\n')
  const wrong = await runCli(['user-changes', 'sometimes'], { DATABASE_URL: db.url })
  t.same({ code: wrong.code, stderr: wrong.stderr }, { code: 2, stderr: 'session-refresh: user-changes takes notify or poll, got `sometimes` (see session-refresh --help)\n' })
})

t.test("with the app's own postgres.js instance, the plugin holds only its LISTEN connection, and never ends the app's", async (t) => {
  const db = await createDatabase(t)
  const appSql = postgres(db.url, { max: 2, onnotice: () => {} })
  t.teardown(() => appSql.end())
  const { app, refreshCalls } = await buildApp(t, { url: db.url, plugin: { sql: appSql } })
  t.equal(await pluginBackends(db.sql), 1, 'one connection of its own: LISTEN')
  const cookie = await login(app, 152)
  const other = await login(app, 153)
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump, read through the app\'s instance', () => app.sessionRefresh.version === bumped)
  await app.sessionRefresh.logoutUser(153)
  t.equal((await app.inject({ url: '/me', headers: { cookie, ...API } })).statusCode, 200)
  t.match((await app.inject({ url: '/me', headers: { cookie: other, ...API } })).json(), { reason: 'user-logout' })
  t.same(refreshCalls, [152])
  t.equal(await pluginBackends(db.sql), 1, 'the logout went through the app\'s instance too')
  await app.close()
  t.same([...await appSql`select 1 as one`], [{ one: 1 }], 'the app\'s instance still works after the app closed')
  t.equal(await pluginBackends(db.sql), 0)
})

t.test("an instance that transforms rows (postgres.camel) is refused at registration, with a coded error", async (t) => {
  const db = await createDatabase(t)
  const camel = postgres(db.url, { transform: postgres.camel, onnotice: () => {} })
  t.teardown(() => camel.end())
  await t.rejects(buildApp(t, { url: db.url, plugin: { sql: camel } }), {
    code: 'FST_SESSION_REFRESH_INVALID_OPTION',
    message: /expected `sql` to return rows as the server sends them; it has a transform/
  })
  await t.rejects(buildApp(t, { url: db.url, plugin: { sql: 'postgres://x' as never } }), {
    code: 'FST_SESSION_REFRESH_INVALID_OPTION',
    message: /expected `sql` to be a postgres.js instance, as postgres\(url\) returns/
  })
})
