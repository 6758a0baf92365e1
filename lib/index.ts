import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { createHook } from './hook.js'
import { VersionListener, type ListenerStatus } from './listener.js'
import { resolveOptions, type SessionRefreshOptions } from './options.js'
import { Refresher } from './refresher.js'
import { STAMP, sessionOf } from './session-fields.js'
import { addStatusRoute } from './status-route.js'

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
  /** Stamps the request's session with the current version; call it when a user logs in. */
  stamp (request: FastifyRequest): void
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
  }
}

async function sessionRefreshPlugin (fastify: FastifyInstance, rawOptions: SessionRefreshOptions): Promise<void> {
  const options = resolveOptions(rawOptions)
  const listener = new VersionListener({ ...options, log: fastify.log })
  await listener.start()
  fastify.addHook('onClose', () => listener.close())

  const refresher = new Refresher({
    refresh: (request) => options.refresh(request.session, request),
    currentVersion: () => listener.version,
    requiredFields: options.requiredFields,
    maxConcurrent: options.maxConcurrentRefreshes
  })
  let logouts = 0

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
      sessionOf(request)?.set(STAMP, listener.version)
    }
  } satisfies SessionRefreshDecorator)
  if (options.statusRoute !== false) addStatusRoute(fastify, options.statusRoute)

  fastify.addHook('onRequest', createHook({ options, listener, refresher, onLogout: () => { logouts++ } }))
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
