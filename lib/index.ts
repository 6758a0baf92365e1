import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { createHook } from './hook.js'
import { VersionListener, type ListenerStatus } from './listener.js'
import { resolveOptions, type SessionRefreshOptions } from './options.js'
import { Refresher } from './refresher.js'
import { USER_STAMP, sessionOf, writeStamp, type SessionFields, type Stamp } from './session-fields.js'
import { addStatusRoute } from './status-route.js'
import { UserVersions } from './user-versions.js'
import { openConnection } from './connection.js'
import type { Sql } from 'postgres'

export interface SessionRefreshStatus extends ListenerStatus {
  /** Calls of `refresh` that returned session fields. */
  refreshes: number
  /** Calls of `refresh` that threw or returned something unusable. */
  refreshFailures: number
  /** Requests sent to log in because their session could not be refreshed. */
  logouts: number
  /** Calls of `refresh` running right now. */
  refreshesRunning: number
}

export interface SessionRefreshDecorator {
  /** The latest committed session version, kept in memory. */
  readonly version: number
  /** How the listener and the refreshes are doing. */
  status (): SessionRefreshStatus
  /** Stamps the request's session with the current versions; call it when a user logs in. */
  stamp (request: FastifyRequest): void
  /**
   * Refreshes every session of one user, on every instance, on their next request.
   * Resolves to the user's new version.
   */
  refreshUser (userId: string | number): Promise<number>
  /**
   * Logs every session of one user out, on every instance (after a password change, say).
   * `keep`: a request whose session belongs to that user stays logged in and is re-stamped,
   * like Django's update_session_auth_hash. Resolves to the user's new version.
   */
  logoutUser (userId: string | number, options?: { keep?: FastifyRequest }): Promise<number>
}

declare module 'fastify' {
  interface FastifyInstance {
    sessionRefresh: SessionRefreshDecorator
  }
  interface FastifyContextConfig {
    /** `false` skips the session version check on this route. */
    sessionRefresh?: boolean
    /** `true` sends requests without a logged-in session to log in (302 for pages, 401 for APIs). */
    loginRequired?: boolean
  }
  interface Session {
    /** The session version this session was last refreshed or logged in at. Set by fastify-session-refresh. */
    sessionVersion?: number
    /** The user's own version at that time. Set by fastify-session-refresh. */
    sessionUserVersion?: number
  }
}

async function sessionRefreshPlugin (fastify: FastifyInstance, rawOptions: SessionRefreshOptions): Promise<void> {
  const options = resolveOptions(rawOptions)
  const users = new UserVersions(options.sessionLifetime)
  const listener = new VersionListener({ ...options, users, log: fastify.log })
  await listener.start()
  // Per-user changes get a connection of their own, opened on first use: on the
  // listener's, a change waiting for a row lock would hold up the heartbeat.
  let writer: Sql | undefined
  const changeUser = (userId: string | number, logout: boolean): Promise<number> => {
    writer ??= openConnection(options.connection, { max: 1, idle_timeout: 30, connect_timeout: Math.ceil(options.connectTimeout / 1000) })
    return users.change(writer, String(userId), logout)
  }
  fastify.addHook('onClose', () => Promise.all([listener.close(), writer?.end({ timeout: 1 })]))

  const refresher = new Refresher({
    refresh: (request) => options.refresh(request.session, request),
    currentStamp: (request) => currentStamp(sessionOf(request)!),
    requiredFields: options.requiredFields,
    maxConcurrent: options.maxConcurrentRefreshes,
    timeout: options.refreshTimeout
  })
  let logouts = 0

  function currentStamp (session: SessionFields): Stamp {
    const userId = session.get(options.identityField)
    return { version: listener.version, userVersion: users.get(userId)?.version ?? 0 }
  }

  fastify.decorate('sessionRefresh', {
    get version () {
      return listener.version
    },
    status: () => ({
      ...listener.status(),
      refreshes: refresher.refreshes,
      refreshFailures: refresher.failures,
      logouts,
      refreshesRunning: refresher.running
    }),
    stamp (request: FastifyRequest) {
      const session = sessionOf(request)
      if (session !== null) writeStamp(session, currentStamp(session))
    },
    refreshUser: (userId) => changeUser(userId, false),
    async logoutUser (userId, { keep } = {}) {
      const version = await changeUser(userId, true)
      const session = keep === undefined ? null : sessionOf(keep)
      if (session !== null && String(session.get(options.identityField)) === String(userId)) {
        // Only the user stamp: a session that is stale for another reason stays stale.
        session.set(USER_STAMP, version)
      }
      return version
    }
  } satisfies SessionRefreshDecorator)
  if (options.statusRoute !== false) addStatusRoute(fastify, options.statusRoute)

  fastify.addHook('onRequest', createHook({ options, listener, users, refresher, onLogout: () => { logouts++ } }))
}

export const sessionRefresh = fp(sessionRefreshPlugin, {
  fastify: '5.x',
  name: 'fastify-session-refresh',
  dependencies: ['@fastify/session']
})
export default sessionRefresh

export { migrate, readSessionVersion, bumpSessionVersion } from './migrate.js'
export { safeRedirectPath } from './login.js'
export type { LoginReason } from './login.js'
export type { StaleReason } from './stale.js'
export type { SessionRefreshOptions } from './options.js'
export type { ListenerStatus } from './listener.js'
export * as errors from './errors.js'
