import type { ListenerOptions } from '../../lib/listener.js'
import { UserVersions } from '../../lib/user-versions.js'
import { testLogger } from './app.js'

/** Options for a VersionListener of a test's own: slow timers, so nothing runs unless the test asks. */
export function listenerOptions (connection: ListenerOptions['connection'], overrides: Partial<ListenerOptions> = {}): ListenerOptions {
  return {
    connection,
    connectTimeout: 5000,
    heartbeatInterval: 60_000,
    heartbeatTimeout: 5000,
    pollInterval: 60_000,
    log: testLogger().log,
    users: new UserVersions(86_400_000),
    ...overrides
  }
}
