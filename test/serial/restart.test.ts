// Serial: it restarts the shared test server, which no other test file may see.
import t from 'tap'
import { bumpSessionVersion, readSessionVersion } from '../../lib/index.js'
import { buildApp } from '../helpers/app.js'
import { terminatePluginBackends } from '../helpers/backends.js'
import { createDatabase, eventually } from '../helpers/database.js'
import { readServerInfo, restartServer } from '../setup/server.js'

// Heartbeat 200 ms + timeout 200 ms: the documented bound is about twice the
// heartbeat interval plus the reconnect backoff (at most 2 s).
const BOUND_MS = 2 * 400 + 2000 + 1000

t.test('the database goes away and comes back: the app converges on the latest version', async (t) => {
  const db = await createDatabase(t)
  const { app } = await buildApp(t, { url: db.url, plugin: { heartbeatInterval: 200, heartbeatTimeout: 200 } })
  const server = await readServerInfo()

  if (server.kind === 'embedded') {
    await restartServer(server, 500)
  } else {
    // A shared server cannot be stopped; cutting every plugin connection is the nearest fault.
    t.ok(await terminatePluginBackends(db.sql) >= 2, 'both plugin connections were cut')
  }
  const bumped = await bumpSessionVersion(db.sql) // postgres.js reconnects the test's own client
  // Timed from when the server is back: the bound is the reconnect backoff plus a heartbeat.
  await eventually('the bump, within the bound', () => app.sessionRefresh.version === bumped, BOUND_MS)
  await eventually('listening again', () => app.sessionRefresh.status().listening, BOUND_MS)
  t.equal(app.sessionRefresh.version, await readSessionVersion(db.sql))
  t.ok(app.sessionRefresh.status().reconnects >= 1, 'it reconnected')
})
