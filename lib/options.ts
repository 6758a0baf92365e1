import { inspect } from 'node:util'
import type { FastifyRequest, Session } from 'fastify'
import type { FastifySessionObject } from '@fastify/session'
import type { Options as PostgresOptions, PostgresType } from 'postgres'
import { InvalidOptionError } from './errors.js'

export interface SessionRefreshOptions {
  /**
   * The plugin's own database connection: a URL or postgres.js options. It needs
   * a direct connection to the primary; LISTEN does not work through PgBouncer's
   * transaction pooling nor on a standby.
   */
  connection: string | PostgresOptions<Record<string, PostgresType>>
  /**
   * Reloads what a stale session holds. Returns the fields to write into the
   * session, or `null` when the user is gone (the session is then logged out).
   * A throw counts as a failed refresh; see `onRefreshError`.
   */
  refresh: (session: FastifySessionObject, request: FastifyRequest) => Promise<Partial<Session> | null> | Partial<Session> | null
  /**
   * The session field whose presence means "logged in".
   * @default 'id'
   */
  identityField?: string
  /**
   * Fields a logged-in session must hold; a session missing one is refreshed.
   * @default []
   */
  requiredFields?: string[]
  /**
   * Where pages go when they must log in; `?next=<path>&reason=<reason>` is appended.
   * @default '/login'
   */
  loginUrl?: string
  /**
   * What a thrown `refresh` does: `'logout'` sends the request to log in,
   * `'keep'` serves it with the stale session and retries on the next request.
   * @default 'logout'
   */
  onRefreshError?: 'logout' | 'keep'
  /**
   * How many `refresh` calls one instance runs at once; the rest wait their turn.
   * @default 16
   */
  maxConcurrentRefreshes?: number
  /**
   * Milliseconds after which a `refresh` call that has not settled counts as failed (`refresh-error`).
   * @default 10000
   */
  refreshTimeout?: number
  /**
   * Milliseconds within which registration must have connected, listened and read the version.
   * @default 10000
   */
  connectTimeout?: number
  /**
   * Milliseconds between heartbeats sent through the database to the listener.
   * @default 10000
   */
  heartbeatInterval?: number
  /**
   * Milliseconds a heartbeat may take to come back before the listener reconnects.
   * @default 5000
   */
  heartbeatTimeout?: number
  /**
   * Milliseconds between re-reads of the version, a backstop for lost notifications.
   * @default 30000
   */
  pollInterval?: number
  /**
   * A path such as `'/health/session-refresh'` that serves `status()` as JSON:
   * 200 while listening, 503 while not, for load balancers and uptime checks.
   * `false` or left out: no route.
   * @default false
   */
  statusRoute?: string | false
  /**
   * Milliseconds a session can live (your cookie's maxAge). Per-user changes
   * older than this cannot concern a live session and are forgotten.
   * @default 86400000 (one day)
   */
  sessionLifetime?: number
}

export type ResolvedOptions = Required<SessionRefreshOptions>

const DEFAULTS = {
  identityField: 'id',
  requiredFields: [],
  loginUrl: '/login',
  onRefreshError: 'logout',
  maxConcurrentRefreshes: 16,
  refreshTimeout: 10_000,
  connectTimeout: 10_000,
  heartbeatInterval: 10_000,
  heartbeatTimeout: 5_000,
  pollInterval: 30_000,
  statusRoute: false,
  sessionLifetime: 86_400_000
} satisfies Omit<ResolvedOptions, 'connection' | 'refresh'>

type Check = (value: unknown) => string | null

const positiveInteger: Check = (value) =>
  Number.isSafeInteger(value) && (value as number) >= 1 ? null : 'a whole number from 1 up'
const nonEmptyString: Check = (value) =>
  typeof value === 'string' && value.length > 0 ? null : 'a non-empty string'

const CHECKS: Record<keyof SessionRefreshOptions, Check> = {
  connection: (value) =>
    (typeof value === 'string' && value.length > 0) || (typeof value === 'object' && value !== null && !Array.isArray(value))
      ? null
      : 'a connection URL or postgres.js options',
  refresh: (value) => typeof value === 'function' ? null : 'a function (session, request) => fields | null',
  identityField: nonEmptyString,
  requiredFields: (value) =>
    Array.isArray(value) && value.every((field) => nonEmptyString(field) === null) ? null : 'an array of non-empty strings',
  loginUrl: nonEmptyString,
  onRefreshError: (value) => value === 'logout' || value === 'keep' ? null : "'logout' or 'keep'",
  maxConcurrentRefreshes: positiveInteger,
  refreshTimeout: positiveInteger,
  connectTimeout: positiveInteger,
  heartbeatInterval: positiveInteger,
  heartbeatTimeout: positiveInteger,
  pollInterval: positiveInteger,
  sessionLifetime: positiveInteger,
  statusRoute: (value) =>
    value === false || (typeof value === 'string' && value.startsWith('/')) ? null : "a path starting with '/', or false"
}

function describe (value: unknown): string {
  return `${inspect(value)} (${value === null ? 'null' : typeof value})`
}

/** Checks every option and fills in defaults, so a bad option fails `register`, never a request. */
export function resolveOptions (options: Partial<SessionRefreshOptions>): ResolvedOptions {
  for (const name of Object.keys(options)) {
    if (!(name in CHECKS)) throw new InvalidOptionError(`unknown option \`${name}\`; known options are ${Object.keys(CHECKS).join(', ')}`)
  }
  // An option set to undefined takes its default, as if it were left out.
  const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined))
  for (const name of ['connection', 'refresh']) {
    if (!(name in given)) throw new InvalidOptionError(`the \`${name}\` option is required`)
  }
  const resolved = { ...DEFAULTS, ...given } as unknown as ResolvedOptions
  for (const [name, check] of Object.entries(CHECKS)) {
    const value = resolved[name as keyof ResolvedOptions]
    const expected = check(value)
    if (expected !== null) throw new InvalidOptionError(`expected \`${name}\` to be ${expected}, got ${describe(value)}`)
  }
  return resolved
}
