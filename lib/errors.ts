import createError from '@fastify/error'

// Stable codes, so applications and operators can match on them.

export const InvalidOptionError = createError('FST_SESSION_REFRESH_INVALID_OPTION', 'fastify-session-refresh: %s', 500, TypeError)

export const DatabaseUnavailableError = createError(
  'FST_SESSION_REFRESH_DATABASE_UNAVAILABLE',
  'fastify-session-refresh could not listen for session changes within %d ms: %s',
  500
)

export const CannotListenError = createError(
  'FST_SESSION_REFRESH_CANNOT_LISTEN',
  'fastify-session-refresh cannot LISTEN through this connection: %s. Give the `connection` option a direct connection to the primary (or a PgBouncer pool in session mode)',
  500
)

export const MissingTableError = createError(
  'FST_SESSION_REFRESH_NOT_MIGRATED',
  'A table of fastify-session-refresh (system_settings with its session_version row, session_user_versions or session_refresh_state) is missing: run migrate(sql) or `npx session-refresh migrate` first',
  500
)

export const MalformedVersionError = createError(
  'FST_SESSION_REFRESH_MALFORMED_VERSION',
  'session_version must be a non-negative integer, got %s',
  500
)

export const LoginRequiredError = createError('FST_SESSION_REFRESH_LOGIN_REQUIRED', '%s', 401)

export const RefreshTimeoutError = createError('FST_SESSION_REFRESH_TIMEOUT', 'refresh() did not settle within %d ms', 500)

/** The same code: the request is answered as if its own refresh had timed out, without making one. */
export const RefreshSlotsHeldError = createError(
  'FST_SESSION_REFRESH_TIMEOUT',
  'refresh() was not called: each of the %d refresh slots is held by a call that did not settle within %d ms',
  500
)

export const QueryTimeoutError = createError(
  'FST_SESSION_REFRESH_QUERY_TIMEOUT',
  'fastify-session-refresh: %s did not settle within %d ms; its connection was dropped',
  503
)

export const InvalidIdentityError = createError(
  'FST_SESSION_REFRESH_INVALID_IDENTITY',
  'fastify-session-refresh: a user id must be a non-empty string of at most 200 characters, a safe integer or a bigint, got %s; pass `identify` to say how to read it from the session',
  500,
  TypeError
)

export const NotAppliedError = createError(
  'FST_SESSION_REFRESH_NOT_APPLIED',
  'fastify-session-refresh: %s was committed, but this instance could not read it back within %d ms, so its sessions may not follow it yet (retrying is harmless)',
  503
)

export const ClosedError = createError('FST_SESSION_REFRESH_CLOSED', 'fastify-session-refresh: the app is closing; %s was not made', 503)

export const NoSessionPluginError = createError(
  'FST_SESSION_REFRESH_NO_SESSION_PLUGIN',
  'fastify-session-refresh needs @fastify/session or @fastify/secure-session: register one of them (and @fastify/cookie) before it',
  500
)
