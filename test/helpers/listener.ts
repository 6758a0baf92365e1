import type { ListenerOptions } from '../../lib/database/listener.js'
import { testLogger } from './app.js'

/** Options for a VersionListener of a test's own: slow timers, so nothing runs unless the test asks. */
export function listenerOptions (connection: ListenerOptions['connection'], overrides: Partial<ListenerOptions> = {}): ListenerOptions {
  return {
    connection,
    schema: 'public',
    connectTimeout: 5000,
    queryTimeout: 5000,
    heartbeatInterval: 60_000,
    heartbeatTimeout: 5000,
    pollInterval: 60_000,
    userPollInterval: 60_000,
    sessionLifetime: 86_400_000,
    log: testLogger().log,
    ...overrides
  }
}

/** A database URL as postgres.js options, for tests that must pass options (a `debug`, a `socket`, a `transform`). */
export function connectionOptions (url: string): { host: string, port: number, user: string, password: string, database: string } {
  const parsed = new URL(url)
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 5432),
    user: decodeURIComponent(parsed.username),
    password: decodeURIComponent(parsed.password),
    database: decodeURIComponent(parsed.pathname.slice(1))
  }
}
