// The connection that writes per-user changes (refreshUser, logoutUser): bounded, and ended with the app.
import t from 'tap'
import { buildApp } from './helpers/app.js'
import { pluginBackends } from './helpers/backends.js'
import { createDatabase, eventually } from './helpers/database.js'
import { FaultyProxy } from './helpers/proxy.js'

const db = await createDatabase(t)

/** What the table says of one user: their version, or undefined when they have no row. */
async function userVersion (userId: string): Promise<number | undefined> {
  const [row] = await db.sql<Array<{ version: string }>>`select version::text from session_user_versions where user_id = ${userId}`
  return row === undefined ? undefined : Number(row.version)
}

/** How `promise` settled, or a failure naming `what` once `ms` have passed. */
async function settled<T> (promise: Promise<T>, ms: number, what: string): Promise<{ value: T } | { error: unknown }> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)
  })
  const outcome = promise.then((value) => ({ value }), (error: unknown) => ({ error }))
  return Promise.race([outcome, late]).finally(() => clearTimeout(timer))
}

t.test('logoutUser on a black-holed connection fails with a coded error within queryTimeout, and the next call reconnects (issue 10.13)', async (t) => {
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  const { app } = await buildApp(t, { url: proxy.url(db.url), plugin: { queryTimeout: 1000 } })
  // A change opens the connection if none is open, within the same bound: on a
  // loaded machine that can take longer, and the call then fails; try again.
  const change = async (userId: string): Promise<number> => {
    for (let attempt = 1; ; attempt++) {
      const outcome = await settled(app.sessionRefresh.logoutUser(userId), 10_000, `logoutUser('${userId}')`)
      if ('value' in outcome) return outcome.value
      if (attempt === 5 || (outcome.error as { code?: unknown }).code !== 'FST_SESSION_REFRESH_QUERY_TIMEOUT') throw outcome.error
    }
  }
  t.equal(await change('10.13-first'), await userVersion('10.13-first'))
  const writers = (await db.sql<Array<{ pid: number }>>`
    select pid from pg_stat_activity where datname = current_database() and query like '%session_change_user%'`).map((row) => row.pid)
  const links = await Promise.all(proxy.links.filter((link) => !link.clientClosed).map(async (link) => ({ link, pid: await link.backendPid(db.sql) })))
  const writer = links.find(({ pid }) => pid !== undefined && writers.includes(pid))!.link
  proxy.blackHole(writer)

  // queryTimeout is 1 s; 10 s is the bound of a call that was left to hang.
  const outcome = await settled(app.sessionRefresh.logoutUser('10.13-second'), 10_000, 'logoutUser on a black hole')
  t.match(outcome, { error: { code: 'FST_SESSION_REFRESH_QUERY_TIMEOUT', message: /logoutUser did not settle within 1000 ms/ } })
  await eventually('the plugin to destroy the black-holed socket', () => writer.clientClosed, 10_000)
  t.equal(await userVersion('10.13-second'), undefined, 'the change never reached the server')

  t.equal(await change('10.13-second'), await userVersion('10.13-second'), 'a new connection made the change')
})

t.test('logoutUser after app.close() fails with FST_SESSION_REFRESH_CLOSED and opens no connection (issue 10.13)', async (t) => {
  const { app } = await buildApp(t, { url: db.url })
  // No per-user change before: the 0.1 plugin opened the writer at the first call, even one after onClose.
  const closing = app.close()
  // Called before onClose runs: it goes through, and close() ends the connection after it.
  const during = settled(app.sessionRefresh.logoutUser('10.13-during'), 10_000, 'logoutUser during close()')
  await closing
  const after = await settled(app.sessionRefresh.logoutUser('10.13-after'), 10_000, 'logoutUser after close()')
  t.match(after, { error: { code: 'FST_SESSION_REFRESH_CLOSED', statusCode: 503 } })
  t.same(await during, { value: await userVersion('10.13-during') }, 'the call made during close() was made')
  t.equal(await userVersion('10.13-after'), undefined, 'the call after close() changed nothing')
  await eventually('no backend of the plugin in this database', async () => await pluginBackends(db.sql) === 0, 10_000)
})
