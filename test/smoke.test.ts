import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { API, buildApp, login } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'

t.test('a bump reaches the app and the session is refreshed', async (t) => {
  const db = await createDatabase(t)
  const { app, refreshCalls } = await buildApp(t, { url: db.url })
  const cookie = await login(app, 7)
  const version = await bumpSessionVersion(db.sql)
  await eventually('new version', () => app.sessionRefresh.version === version)
  const res = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(res.statusCode, 200)
  t.same(refreshCalls, [7])
  t.equal(res.json().playerId, 700)
})
