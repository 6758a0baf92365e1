import { inspect } from 'node:util'
import type { FastifyRequest, Session } from 'fastify'
import type { FastifySessionObject } from '@fastify/session'
import { MAX_SCHEMA_BYTES } from './database/channel.js'
import type { Sql } from 'postgres'
import type { Connection } from './database/connection.js'
import { InvalidOptionError } from './errors.js'
import type { SessionFields } from './request/sessions.js'
import { MAX_TIMER_MS } from './timeout.js'

export interface SessionRefreshOptions {
  /**
   * The plugin's own database connection: a URL (string or URL) or postgres.js
   * options. It needs a direct connection to the primary (or a PgBouncer pool
   * in session mode); LISTEN does not work through transaction pooling nor on a standby.
   */
  connection: Connection
  /**
   * A postgres.js instance of the app's, for the plugin's reads and writes:
   * the plugin then opens only its LISTEN connection (on `connection`). It must
   * not transform rows (no `postgres.camel`). Never ended by the plugin.
   */
  sql?: Sql
  /**
   * Reloads what a stale session holds. Returns the fields to write into the
   * session, or `null` when the user is gone (the session is then logged out).
   * A throw counts as a failed refresh; see `onRefreshError`.
   */
  refresh: (session: FastifySessionObject, request: FastifyRequest) => Promise<Partial<Session> | null> | Partial<Session> | null
  /**
   * The session field that holds the user id; its presence means "logged in".
   * @default 'id'
   */
  identityField?: string
  /**
   * Reads the user id from the session, instead of `identityField`: for
   * @fastify/passport, `(session) => session.get('passport')?.id`. Return a
   * string, a safe integer or a bigint, or null/undefined for "logged out".
   */
  identify?: (session: SessionFields, request: FastifyRequest) => unknown
  /**
   * Fields a logged-in session must hold; a session missing one is refreshed.
   * @default []
   */
  requiredFields?: string[]
  /**
   * The session field the plugin keeps its stamp in. Two registrations that
   * share one session (an app with a shop and an admin login) need one each.
   * @default 'sessionRefresh'
   */
  stampField?: string
  /**
   * Where pages go when they must log in; `?next=<path>&reason=<reason>` is
   * appended. A route with this path is a login route (see `config.loginRoute`).
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
   * Milliseconds after which a `refresh` call that has not settled counts as
   * failed (`refresh-error`). It keeps its slot until it settles.
   * @default 10000
   */
  refreshTimeout?: number
  /**
   * Milliseconds within which registration must have connected, listened and read the versions.
   * @default 10000
   */
  connectTimeout?: number
  /**
   * Milliseconds any one query of the plugin may take (a read, a heartbeat,
   * `logoutUser`) before its connection is dropped and the call fails.
   * @default 5000
   */
  queryTimeout?: number
  /**
   * Milliseconds a request waits for a re-read when its session was stamped by
   * an instance that knows more; after that it is served as it is.
   * @default 1000
   */
  catchUpTimeout?: number
  /**
   * Milliseconds of silence on the LISTEN connection after which a heartbeat is sent.
   * @default 10000
   */
  heartbeatInterval?: number
  /**
   * Milliseconds a heartbeat may take to come back before the listener reconnects.
   * @default 5000
   */
  heartbeatTimeout?: number
  /**
   * Milliseconds between re-reads of the tables, a backstop for lost notifications (±20%).
   * @default 30000
   */
  pollInterval?: number
  /**
   * Milliseconds between reads of per-user changes (±20%) while the database
   * does not notify them (`session-refresh user-changes poll`, for hundreds of instances).
   * @default 1000
   */
  userPollInterval?: number
  /**
   * A path such as `'/health/session-refresh'` that serves `status()` as JSON:
   * 200 while listening, 503 while not, for load balancers and uptime checks.
   * @default false
   */
  statusRoute?: string | false
  /**
   * A path such as `'/session-refresh/events'` for a `text/event-stream` that
   * tells open pages of new data and of a logout; the browser client is served
   * at `<path>/client.js`. `false`: no stream.
   * @default false
   */
  events?: string | false
  /**
   * Milliseconds between the comment lines that keep idle event streams open
   * through proxies.
   * @default 25000
   */
  eventsKeepAlive?: number
  /**
   * Event streams one session may have open at once (its tabs); more get 429.
   * @default 4
   */
  maxEventStreamsPerSession?: number
  /**
   * Event streams one user may have open at once on one instance, over all
   * their sessions: logging in again and again gets no more; more get 429.
   * @default 16
   */
  maxEventStreamsPerUser?: number
  /**
   * Event streams one instance holds at most; more get 429.
   * @default 10000
   */
  maxEventStreams?: number
  /**
   * Milliseconds a session can live (your cookie's maxAge, or secure-session's
   * expiry): a logout is enforced for this long after it was made.
   * @default 86400000 (one day)
   */
  sessionLifetime?: number
  /**
   * The schema that holds the plugin's tables: one per tenant in one database.
   * @default 'public'
   */
  schema?: string
}

export interface ResolvedOptions extends Required<Omit<SessionRefreshOptions, 'identify' | 'sql'>> {
  identify: (session: SessionFields, request: FastifyRequest) => unknown
  sql: Sql | undefined
}

const DEFAULTS = {
  identityField: 'id',
  requiredFields: [],
  stampField: 'sessionRefresh',
  loginUrl: '/login',
  onRefreshError: 'logout',
  maxConcurrentRefreshes: 16,
  refreshTimeout: 10_000,
  connectTimeout: 10_000,
  queryTimeout: 5_000,
  catchUpTimeout: 1_000,
  heartbeatInterval: 10_000,
  heartbeatTimeout: 5_000,
  pollInterval: 30_000,
  userPollInterval: 1_000,
  statusRoute: false,
  events: false,
  eventsKeepAlive: 25_000,
  maxEventStreamsPerSession: 4,
  maxEventStreamsPerUser: 16,
  maxEventStreams: 10_000,
  sessionLifetime: 86_400_000,
  schema: 'public'
} satisfies Omit<SessionRefreshOptions, 'connection' | 'refresh' | 'identify'>

type Check = (value: unknown) => string | null

const positiveInteger: Check = (value) =>
  Number.isSafeInteger(value) && (value as number) >= 1 ? null : 'a whole number from 1 up'
// Node fires a longer timer after 1 ms: a 30-day refreshTimeout would fail every refresh at once.
const timer: Check = (value) =>
  Number.isSafeInteger(value) && (value as number) >= 1 && (value as number) <= MAX_TIMER_MS
    ? null
    : `a whole number of milliseconds from 1 to ${MAX_TIMER_MS} (the longest timer Node runs)`
const path: Check = (value) =>
  value === false || (typeof value === 'string' && value.startsWith('/')) ? null : "a path starting with '/', or false"
const nonEmptyString: Check = (value) =>
  typeof value === 'string' && value.length > 0 ? null : 'a non-empty string'

const CHECKS: Record<keyof SessionRefreshOptions, Check> = {
  connection: (value) =>
    (typeof value === 'string' && value.length > 0) || value instanceof URL || (typeof value === 'object' && value !== null && !Array.isArray(value))
      ? null
      : 'a connection URL (string or URL) or postgres.js options',
  sql: (value) => value === undefined || isPostgres(value) ? null : 'a postgres.js instance, as postgres(url) returns',
  refresh: (value) => typeof value === 'function' ? null : 'a function (session, request) => fields | null',
  identityField: nonEmptyString,
  identify: (value) => value === undefined || typeof value === 'function' ? null : 'a function (session, request) => user id',
  requiredFields: (value) =>
    Array.isArray(value) && value.every((field) => nonEmptyString(field) === null) ? null : 'an array of non-empty strings',
  stampField: nonEmptyString,
  loginUrl: nonEmptyString,
  onRefreshError: (value) => value === 'logout' || value === 'keep' ? null : "'logout' or 'keep'",
  maxConcurrentRefreshes: positiveInteger,
  refreshTimeout: timer,
  connectTimeout: timer,
  queryTimeout: timer,
  catchUpTimeout: timer,
  heartbeatInterval: timer,
  heartbeatTimeout: timer,
  pollInterval: timer,
  userPollInterval: timer,
  sessionLifetime: positiveInteger,
  statusRoute: path,
  events: path,
  eventsKeepAlive: timer,
  maxEventStreamsPerSession: positiveInteger,
  maxEventStreamsPerUser: positiveInteger,
  maxEventStreams: positiveInteger,
  schema: (value) =>
    typeof value === 'string' && value.length > 0 && Buffer.byteLength(value) <= MAX_SCHEMA_BYTES
      ? null
      : `a schema name of 1 to ${MAX_SCHEMA_BYTES} bytes`
}

// What the session plugins keep for themselves where `session.set` writes:
// @fastify/session keeps fields as properties of its session object, next to its
// `cookie`, its `sessionId` and `encryptedSessionId` getters and its methods (and
// what every object inherits, such as `__proto__`); @fastify/secure-session keeps
// its cookie's date, `__ts`, with the fields. A stamp there would replace one of them.
const SESSION_PLUGIN_KEYS: ReadonlySet<string> = new Set([
  'cookie', 'sessionId', 'encryptedSessionId', 'get', 'set', 'save', 'reload', 'destroy', 'regenerate',
  'touch', 'options', 'isModified', 'isSaved', '__ts'
])

/**
 * Why `stampField` cannot hold the stamp, or null. stamp() writes it into the
 * session after the user's fields: on one of them it would replace it (the
 * user id, and every later request would answer 500). The identity field is
 * known only without `identify`, which reads the id from wherever it likes.
 */
function stampFieldClash (stampField: string, identityField: string | null, requiredFields: readonly string[]): string | null {
  if (stampField === identityField) return 'which is the `identityField`: stamp() would overwrite the user id'
  if (requiredFields.includes(stampField)) return 'which is in `requiredFields`: stamp() would overwrite it'
  if (SESSION_PLUGIN_KEYS.has(stampField) || stampField in Object.prototype) return 'which the session plugin keeps for itself'
  return null
}

function isPostgres (value: unknown): value is Sql {
  return typeof value === 'function' && typeof (value as Partial<Sql>).begin === 'function' && typeof (value as Partial<Sql>).options === 'object'
}

/** postgres.js keeps its transform parsed: a function on any `from` changes the rows the plugin reads. */
function transforms (sql: Sql): boolean {
  const { column, value, row } = sql.options.transform as unknown as Record<'column' | 'value' | 'row', { from?: unknown }>
  return [column, value, row].some((part) => part.from !== undefined)
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
  const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as Partial<SessionRefreshOptions>
  for (const name of ['connection', 'refresh'] as const) {
    if (!(name in given)) throw new InvalidOptionError(`the \`${name}\` option is required`)
  }
  if (given.identify !== undefined && given.identityField !== undefined) {
    throw new InvalidOptionError('give `identityField` or `identify`, not both')
  }
  const merged = { ...DEFAULTS, ...given }
  for (const [name, check] of Object.entries(CHECKS)) {
    const value = merged[name as keyof typeof merged]
    const expected = check(value)
    if (expected !== null) throw new InvalidOptionError(`expected \`${name}\` to be ${expected}, got ${describe(value)}`)
  }
  if (given.sql !== undefined && transforms(given.sql)) {
    throw new InvalidOptionError('expected `sql` to return rows as the server sends them; it has a transform (postgres.camel, say): pass a postgres.js instance without one')
  }
  const clash = stampFieldClash(merged.stampField, given.identify === undefined ? merged.identityField : null, merged.requiredFields)
  if (clash !== null) throw new InvalidOptionError(`expected \`stampField\` to be a session field of its own, got ${inspect(merged.stampField)}, ${clash}`)
  const field = merged.identityField
  return { sql: undefined, ...merged, identify: given.identify ?? ((session) => session.get(field)) } as ResolvedOptions
}
