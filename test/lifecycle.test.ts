// The plugin's connections over the app's life: registered, timed out, closed.
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify from 'fastify'
import t from 'tap'
import sessionRefresh from '../lib/index.js'
import { SECRET } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { FaultyProxy } from './helpers/proxy.js'

const db = await createDatabase(t)

t.test("when Fastify's pluginTimeout is shorter than connectTimeout, registration fails first and leaves no connection open", async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  proxy.swallow = true // every connection is accepted and never answered
  const app = Fastify({ pluginTimeout: 300 })
  await app.register(cookie)
  await app.register(session, { secret: SECRET, cookie: { secure: false } })
  app.register(sessionRefresh, { connection: proxy.url(db.url), connectTimeout: 60_000, refresh: () => ({}) })
  await t.rejects(async () => { await app.ready() }, {
    code: 'FST_SESSION_REFRESH_DATABASE_UNAVAILABLE',
    message: /within 270 ms: timed out connecting and listening/
  }, 'its own coded error, within 90% of pluginTimeout, not Fastify\'s timeout')
  t.ok(proxy.links.length > 0, `the plugin had opened ${proxy.links.length} connections`)
  await eventually('every connection the plugin opened to be closed', () => proxy.connections === 0, 10_000)
  await app.close()
})
