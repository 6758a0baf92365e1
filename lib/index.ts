import { readFile } from 'node:fs/promises'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { VersionListener, type ListenerStatus } from './database/listener.js'
import { UserChanges } from './database/user-changes.js'
import { InvalidOptionError, NotAppliedError } from './errors.js'
import { resolveOptions, type ResolvedOptions, type SessionRefreshOptions } from './options.js'
import { EventStreams } from './request/events.js'
import { createHook } from './request/hook.js'
import { identityKey, type Identity } from './request/identity.js'
import { loginPage } from './request/login.js'
import { Refresher } from './request/refresher.js'
import { installHook } from './request/routes.js'
import { detectSessionPlugin, type SessionAdapter } from './request/sessions.js'
import { asStamp, keepHash, newLoginKey, storedIdentity, type SessionStamp } from './request/stamp.js'
import { addStatusRoute } from './request/status-route.js'
import { logoutOf } from './request/verdict.js'

export interface SessionRefreshStatus extends ListenerStatus {
  /** Calls of `refresh` that returned session fields. */
  refreshes: number
  /** Calls of `refresh` that threw, timed out or returned something unusable. */
  refreshFailures: number
  /** Requests sent to log in because their session could not stay logged in. */
  logouts: number
  /** Calls of `refresh` running right now, timed-out ones included until they settle. */
  refreshesRunning: number
  /** Requests waiting for a free slot to call `refresh`. */
  refreshesQueued: number
}

export interface SessionRefreshDecorator {
  /** The latest committed session version, kept in memory. */
  readonly version: number
  /** How the listener and the refreshes are doing. */
  status (): SessionRefreshStatus
  /**
   * Reads the tables now, and resolves once this instance holds what they say
   * (true), or once that failed or took longer than `queryTimeout` (false).
   * For code that changed versions with its own SQL and must see the change
   * applied here before it goes on.
   */
  catchUp (): Promise<boolean>
  /**
   * Marks the request's session as authenticated now, with fresh data. Call it
   * in every login handler, after the user id is set (and after passport's
   * `request.logIn()`). A session whose user id has no stamp is stamped at its
   * next request instead, so a logout between the login and that request would
   * not end it.
   */
  stamp (request: FastifyRequest): void
  /**
   * Refreshes every session of one user, on every instance, on their next
   * request. Resolves to the user's new version once this instance has read it.
   */
  refreshUser (userId: Identity): Promise<number>
  /**
   * Logs every session of one user out, on every instance (after a password
   * change, say). `keep`: a request whose session belongs to that user stays
   * logged in, like Django's update_session_auth_hash, even if an overlapping
   * request saves an older copy of it. Resolves to the user's new version.
   */
  logoutUser (userId: Identity, options?: { keep?: FastifyRequest }): Promise<number>
}

declare module 'fastify' {
  interface FastifyInstance {
    sessionRefresh: SessionRefreshDecorator
  }
  interface FastifyContextConfig {
    /** `false` skips the refresh on this route; a forced logout still holds. */
    sessionRefresh?: boolean
    /** `true` sends requests without a logged-in session to log in (302 for pages, 401 for APIs). */
    loginRequired?: boolean
    /** `true` marks a login route: a session that cannot stay logged in is emptied and the request goes on. */
    loginRoute?: boolean
  }
  interface Session {
    /** What fastify-session-refresh keeps in the session (the default `stampField`). */
    sessionRefresh?: SessionStamp
  }
}

// One registration per stamp field and server: two that shared one would
// satisfy each other's checks.
const claimedStampFields = new WeakMap<object, Set<string>>()

function claimStampField (fastify: FastifyInstance, field: string): void {
  const claimed = claimedStampFields.get(fastify.server) ?? new Set()
  if (claimed.has(field)) {
    throw new InvalidOptionError(`another registration on this server already keeps its stamp in the session field \`${field}\`; give each registration its own \`stampField\``)
  }
  claimedStampFields.set(fastify.server, claimed.add(field))
}

async function sessionRefreshPlugin (fastify: FastifyInstance, rawOptions: SessionRefreshOptions): Promise<void> {
  const options = resolveOptions(rawOptions)
  const adapter = detectSessionPlugin(fastify)
  claimStampField(fastify, options.stampField)
  const changes = new UserChanges(options)
  const listener = new VersionListener({
    ...options,
    // Fastify gives up on a plugin after its pluginTimeout (10 s by default, like
    // connectTimeout), and then never runs the plugin's onClose: give up first,
    // and close what was opened.
    startTimeout: Math.min(options.connectTimeout, Math.floor(0.9 * (fastify.initialConfig.pluginTimeout || Infinity))),
    log: fastify.log,
    onLinkDead: () => changes.dropConnection()
  })
  await listener.start()
  fastify.addHook('onClose', () => Promise.all([listener.close(), changes.close()]))

  const refresher = new Refresher({
    maxConcurrent: options.maxConcurrentRefreshes,
    timeout: options.refreshTimeout,
    requiredFields: options.requiredFields
  })
  let logouts = 0
  const login = loginPage(options.loginUrl)

  fastify.decorate('sessionRefresh', decorator({ options, adapter, listener, changes, refresher, logouts: () => logouts }))
  installHook(fastify, createHook({ options, view: listener, adapter, refresher, login, onLogout: () => { logouts++ } }), login)
  if (options.statusRoute !== false) addStatusRoute(fastify, options.statusRoute)
  if (options.events !== false) await addEventStream(fastify, options, options.events, adapter, listener)
}

interface Parts {
  options: ResolvedOptions
  adapter: SessionAdapter
  listener: VersionListener
  changes: UserChanges
  refresher: Refresher
  logouts: () => number
}

/** `fastify.sessionRefresh`: the versions, status, and the per-user verbs. */
function decorator ({ options, adapter, listener, changes, refresher, logouts }: Parts): SessionRefreshDecorator {
  // Applied here from the table, like every other change, before the caller
  // goes on; an app that is closing serves no new request, and reads no more.
  const applied = async (what: string): Promise<void> => {
    if (!await listener.catchUp(options.queryTimeout) && !listener.closed) throw new NotAppliedError(what, options.queryTimeout)
  }
  return {
    get version () {
      return listener.version
    },
    status: () => ({
      ...listener.status(),
      refreshes: refresher.refreshes,
      refreshFailures: refresher.failures,
      logouts: logouts(),
      refreshesRunning: refresher.running,
      refreshesQueued: refresher.queued
    }),
    catchUp: () => listener.catchUp(options.queryTimeout),
    stamp: (request) => stampLogin(request, adapter, options, listener),
    async refreshUser (userId) {
      const { version } = await changes.change(identityKey(userId), false, null)
      await applied('refreshUser')
      return version
    },
    async logoutUser (userId, { keep } = {}) {
      const key = identityKey(userId)
      const kept = keep === undefined ? null : keptSession(keep, key, adapter, options, listener)
      // Kept by its login key: the same in every copy of the session, and in its open pages' streams.
      const change = await changes.change(key, true, kept === null ? null : { hash: keepHash(kept.stamp.k), since: kept.stamp.a, held: kept.stamp.h })
      // The kept session authenticated at this logout: it stays in, here and on every instance.
      if (kept !== null && change.kept) kept.write({ ...kept.stamp, a: Math.max(kept.stamp.a, change.logoutSeq), u: change.version })
      await applied('logoutUser')
      return change.version
    }
  }
}

async function addEventStream (fastify: FastifyInstance, options: ResolvedOptions, path: string, adapter: SessionAdapter, listener: VersionListener): Promise<void> {
  await new EventStreams({
    path,
    keepAlive: options.eventsKeepAlive,
    maxStreams: options.maxEventStreams,
    maxStreamsPerSession: options.maxEventStreamsPerSession,
    maxStreamsPerUser: options.maxEventStreamsPerUser,
    loginUrl: options.loginUrl,
    stampField: options.stampField,
    identify: options.identify,
    adapter,
    view: listener,
    clientScript: await readFile(new URL('../client/session-refresh.js', import.meta.url), 'utf8')
  }).register(fastify)
}

type Versions = Pick<VersionListener, 'version' | 'logoutClock' | 'user' | 'userCount'>

/** A fresh login: authenticated at the logout clock read so far, data read now. */
function stampLogin (request: FastifyRequest, adapter: SessionAdapter, options: ResolvedOptions, versions: Versions): void {
  const session = adapter.sessionOf(request)
  const identity = session === null ? null : options.identify(session, request)
  if (identity == null) return
  const key = identityKey(identity)
  session!.set(options.stampField, {
    v: versions.version,
    u: versions.user(key)?.version ?? 0,
    a: versions.logoutClock,
    k: newLoginKey(),
    i: storedIdentity(identity as Identity),
    h: []
  } satisfies SessionStamp)
}

/** The session a logout keeps: only one of that user, and only if it is not logged out already. */
function keptSession (request: FastifyRequest, key: string, adapter: SessionAdapter, options: ResolvedOptions, listener: VersionListener) {
  const session = adapter.sessionOf(request)
  const identity = session === null ? null : options.identify(session, request)
  const stamp = asStamp(session?.get(options.stampField))
  if (identity == null || stamp === null || stamp.i !== storedIdentity(identity as Identity) || identityKey(identity) !== key) return null
  if (logoutOf(stamp, key, listener)?.out === true) return null
  return { stamp, write: (next: SessionStamp) => session!.set(options.stampField, next) }
}

export const sessionRefresh = fp(sessionRefreshPlugin, {
  fastify: '5.x',
  name: 'fastify-session-refresh'
})
export default sessionRefresh

export { migrate, readSessionVersion, bumpSessionVersion } from './database/migrate.js'
export type { SchemaOption } from './database/migrate.js'
export { safeRedirectPath } from './request/login.js'
export type { LoginReason } from './request/login.js'
export type { StaleReason } from './request/verdict.js'
export type { SessionRefreshOptions } from './options.js'
export type { ListenerStatus } from './database/listener.js'
export type { SessionStamp } from './request/stamp.js'
export type { Identity } from './request/identity.js'
export * as errors from './errors.js'
