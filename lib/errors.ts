import createError from '@fastify/error'

// Stable codes, so applications and operators can match on them.

export const InvalidOptionError = createError('FST_SESSION_REFRESH_INVALID_OPTION', 'fastify-session-refresh: %s', 500, TypeError)

export const DatabaseUnavailableError = createError(
  'FST_SESSION_REFRESH_DATABASE_UNAVAILABLE',
  'fastify-session-refresh could not listen for session_version changes within %d ms: %s',
  500
)

export const MissingTableError = createError(
  'FST_SESSION_REFRESH_NOT_MIGRATED',
  'A table of fastify-session-refresh (system_settings with its session_version row, or session_user_versions) is missing: run migrate(sql) or `npx session-refresh migrate` first',
  500
)

export const MalformedVersionError = createError(
  'FST_SESSION_REFRESH_MALFORMED_VERSION',
  'session_version must be a non-negative integer, got %s',
  500
)

export const LoginRequiredError = createError('FST_SESSION_REFRESH_LOGIN_REQUIRED', '%s', 401)

export const RefreshTimeoutError = createError('FST_SESSION_REFRESH_TIMEOUT', 'refresh() did not settle within %d ms', 500)
