import type { FastifyInstance, FastifyRequest, RouteOptions, onRequestHookHandler } from 'fastify'
import type { SessionHook } from './hook.js'
import type { LoginPage } from './login.js'

/** What the check does on one route, read from its config once. */
export interface RouteFlags {
  /** Refresh stale sessions here (`config.sessionRefresh !== false`). A forced logout holds either way. */
  check: boolean
  /** Send requests without a logged-in session to log in (`config.loginRequired`). */
  loginRequired: boolean
  /**
   * A login route (the path of `loginUrl`, or `config.loginRoute`): a session
   * that cannot stay logged in is emptied and the request goes on, so a user
   * can always log in, whatever the old session held.
   */
  loginRoute: boolean
}

/**
 * In a route's config: the route serves nothing of the session (the event
 * stream's script), so the check never runs there, not even a forced logout:
 * that is for the page's next request, or its stream, to meet and tell.
 */
export const NO_SESSION = Symbol('fastify-session-refresh: no session')

interface RouteConfig {
  [NO_SESSION]?: unknown
  sessionRefresh?: unknown
  loginRequired?: unknown
  loginRoute?: unknown
}

export function routeFlags (config: RouteConfig | undefined, url: string | undefined, login: LoginPage): RouteFlags {
  const loginRoute = config?.loginRoute === true || (url !== undefined && url === login.path)
  return {
    check: config?.sessionRefresh !== false,
    loginRequired: config?.loginRequired === true,
    loginRoute
  }
}

/**
 * Installs the check on every route. Registered before the routes (the usual
 * order), it goes on each route through `onRoute`, with the route's flags read
 * once: in Fastify 5 `request.routeOptions` builds a new object at every access.
 * When routes were registered before the plugin, `onRoute` never sees them;
 * the check then runs as one global hook that reads the config per request
 * (cached per route), and a warning says how to avoid that.
 */
export function installHook (fastify: FastifyInstance, hook: SessionHook, login: LoginPage): void {
  // A route's path starts with '/' or '*'; with no route, Fastify prints '(empty tree)'.
  const earlier = fastify.printRoutes({ commonPrefix: false }).trim()
  if (!/[/*]/.test(earlier)) {
    fastify.addHook('onRoute', (route: RouteOptions) => {
      if ((route.config as RouteConfig | undefined)?.[NO_SESSION] === true) return
      const flags = routeFlags(route.config as RouteConfig | undefined, route.url, login)
      const check: onRequestHookHandler = function sessionRefresh (request, reply, done) { hook(request, reply, done, flags) }
      // First among the route's own hooks: they may read what a refresh wrote.
      route.onRequest = [check, ...toArray(route.onRequest)]
    })
    return
  }
  fastify.log.warn({ routes: earlier }, 'fastify-session-refresh was registered after some routes; ' +
    'it covers them with a global hook that reads the route config on each request. Register it before your routes (await app.register(...)) to avoid that')
  const flagsOf = new WeakMap<object, RouteFlags>()
  fastify.addHook('onRequest', function sessionRefresh (request: FastifyRequest, reply, done) {
    const { config, url } = request.routeOptions
    if ((config as RouteConfig)[NO_SESSION] === true) return done()
    let flags = flagsOf.get(config)
    if (flags === undefined) {
      flags = routeFlags(config as RouteConfig, url, login)
      flagsOf.set(config, flags)
    }
    hook(request, reply, done, flags)
  })
}

function toArray<T> (value: T | T[] | undefined): T[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value]
}
