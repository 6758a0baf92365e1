// Serial: it restarts the shared test server, which no other test file may see.
import t from 'tap'
import { bumpSessionVersion, readSessionVersion } from '../../lib/index.js'
import { buildApp } from '../helpers/app.js'
import { terminatePluginBackends } from '../helpers/backends.js'
import { createDatabase, eventually } from '../helpers/database.js'
import { readServerInfo, restartServer } from '../setup/server.js'

const INTERVAL_MS = 200
const TIMEOUT_MS = 200
// A lost connection is seen at once (its socket closes) and a silent one by the
// heartbeat: within 2.3 intervals (a silence of one to two, and a tick) and a timeout. postgres.js then
// reconnects with a backoff of at most 2 s. 5 s more for a loaded 2-core machine;
// an instance that did not reconnect would wait for its poll (30 s).
const BOUND_MS = 2.3 * INTERVAL_MS + TIMEOUT_MS + 2000 + 5000

t.test('the database goes away and comes back: the app converges on the latest version', async (t) => {
  const db = await createDatabase(t)
  const { app } = await buildApp(t, { url: db.url, plugin: { heartbeatInterval: INTERVAL_MS, heartbeatTimeout: TIMEOUT_MS } })
  const server = await readServerInfo()

  if (server.kind === 'embedded') {
    await restartServer(server, 500)
  } else {
    // A shared server cannot be stopped; cutting every plugin connection is the nearest fault.
    t.equal(await terminatePluginBackends(db.sql), 2, 'both plugin connections were cut')
  }
  const bumped = await bumpSessionVersion(db.sql) // postgres.js reconnects the test's own client
  // Timed from when the server is back and the bump committed.
  await eventually('the bump, and listening again, within the bound', () =>
    app.sessionRefresh.version === bumped && app.sessionRefresh.status().listening, BOUND_MS)
  t.match(app.sessionRefresh.status(), { version: await readSessionVersion(db.sql), lastSyncError: null })
  t.ok(app.sessionRefresh.status().reconnects >= 1, 'it reconnected')
})
