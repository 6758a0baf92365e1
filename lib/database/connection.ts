import postgres, { type Options, type PostgresType, type Sql } from 'postgres'
import type { TrackedSockets } from './sockets.js'

/** How every connection of the plugin shows in pg_stat_activity. */
export const APPLICATION_NAME = 'fastify-session-refresh'

export type PostgresOptions = Options<Record<string, PostgresType>>

/** The `connection` option: a URL (string or URL object) or postgres.js options. */
export type Connection = string | URL | PostgresOptions

/**
 * Opens a postgres.js instance on the app's `connection` option, with the
 * plugin's own settings on top.
 *
 * Options that change the shape of rows (`transform`, such as postgres.camel,
 * and custom `types`) are dropped: the plugin's reads expect rows as the server
 * sends them. The app's `socket` factory (a tunnel, a cloud connector) is kept,
 * and the plugin's tracked sockets wrap it.
 */
export function openConnection (connection: Connection, settings: PostgresOptions, sockets?: TrackedSockets): Sql {
  const given: PostgresOptions = typeof connection === 'object' && !(connection instanceof URL) ? connection : {}
  const { transform: _transform, types: _types, ...kept } = given
  const options: PostgresOptions = {
    // Notices (from a trigger of the app's own, say) are the app's business:
    // postgres.js would print them on the console.
    onnotice: ignoreNotice,
    ...kept,
    ...settings,
    connection: { ...kept.connection, ...settings.connection, application_name: APPLICATION_NAME }
  }
  if (sockets !== undefined) Object.assign(options, { socket: sockets.wrap(socketFactory(given)) })
  return typeof connection === 'string' || connection instanceof URL
    ? postgres(String(connection), options)
    : postgres(options)
}

/**
 * postgres.js takes whole seconds and runs the timer in milliseconds: at most
 * 2147483 s, or Node fires the timer at once and every connect fails.
 */
export function connectTimeoutSeconds (ms: number): number {
  return Math.min(Math.ceil(ms / 1000), Math.floor((2 ** 31 - 1) / 1000))
}

function ignoreNotice (): void {}

/** postgres.js reads `socket` from its options, but its types leave it out. */
export type SocketFactory = (options: unknown) => unknown

function socketFactory (options: PostgresOptions): SocketFactory | undefined {
  const factory = (options as { socket?: unknown }).socket
  return typeof factory === 'function' ? factory as SocketFactory : undefined
}

/** Reconnect quickly: a listener that is down is a listener that misses changes. */
export function backoff (attempt: number): number {
  return Math.min(0.05 * 2 ** attempt, 2) * (0.5 + Math.random() / 2)
}

/** Several hosts (a failover list) must settle on the primary; a single host says itself what it is. */
export function hasSeveralHosts (connection: Connection): boolean {
  if (typeof connection === 'object' && !(connection instanceof URL)) {
    const host = connection.host ?? (connection as { hostname?: unknown }).hostname
    return Array.isArray(host) ? host.length > 1 : typeof host === 'string' && host.includes(',')
  }
  const url = String(connection)
  return url.slice(url.indexOf('://') + 3).split(/[/?]/)[0]!.includes(',')
}

/**
 * Ends a statement that timed out, on a connection of the plugin's own whose
 * socket was just dropped, on the server too. Dropping the socket is not enough:
 * a backend waiting on a lock (an ETL's TRUNCATE) notices its closed socket only
 * when it next sends, so each timed-out statement would leave a backend waiting
 * (and a change would commit after the caller was told it failed).
 *
 * Never on the app's pool (the `sql` option): a cancel names a backend, not a
 * statement, and that backend may be running the app's next query by the time
 * it lands; postgres.js also mismatches answers when it cancels a query still
 * queued behind another. postgres.js sends the cancel request on a connection
 * of its own; its types say void, but it returns a promise, which fails on a dead link.
 */
export function cancelOnServer (query: { cancel: () => void }): void {
  Promise.resolve(query.cancel() as unknown).catch(() => {})
}
