import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ResolvedOptions } from '../options.js'
import { identityKey } from './identity.js'
import { sendToLogin, type LoginPage, type LoginReason } from './login.js'
import type { RefreshOutcome, Refresher } from './refresher.js'
import type { RouteFlags } from './routes.js'
import type { SessionAdapter, SessionFields } from './sessions.js'
import { HELD_IDS, asStamp, storedIdentity, type SessionStamp } from './stamp.js'
import { UNREAD, isAhead, logoutOf, staleReason } from './verdict.js'
import type { VersionView } from '../view.js'

export interface HookDeps {
  options: ResolvedOptions
  view: VersionView
  adapter: SessionAdapter
  refresher: Refresher
  login: LoginPage
  /** Counts requests sent to log in because their session could not stay logged in. */
  onLogout: () => void
}

export type SessionHook = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void, route: RouteFlags) => void

/** One request's session on the slow path. */
interface Visit {
  request: FastifyRequest
  reply: FastifyReply
  route: RouteFlags
  session: SessionFields
  identity: string | number | bigint
  key: string
}

/**
 * The `onRequest` check. For a fresh or logged-out session it is a few
 * property reads and compares: no I/O and no promise. Everything
 * else (a stale session, a forced logout, a login without stamp()) goes the
 * slow way.
 */
export function createHook (deps: HookDeps): SessionHook {
  const { options, view, adapter } = deps
  const { identify, stampField, requiredFields } = options

  return function sessionRefreshHook (request, reply, done, route) {
    const session = adapter.sessionOf(request)
    const identity = session === null ? null : identify(session, request)
    if (identity == null) {
      if (route.loginRequired && !atLogin(route, request, deps.login)) sendToLogin(request, reply, deps.login, 'not-logged-in')
      else done()
      return
    }
    const stamp = asStamp(session!.get(stampField))
    if (stamp !== null && sameIdentity(stamp.i, identity)) {
      // The map key is only built when some user changed within one session lifetime.
      const key = view.userCount === 0 ? '' : identityKey(identity)
      if (logoutOf(stamp, key, view) === null && (!route.check || staleReason(session!, stamp, key, requiredFields, view) === null)) {
        done()
        return
      }
    }
    new SlowPath(deps).run(request, reply, route, session!, identity, stamp).then((answered) => { if (!answered) done() }, done)
  }
}

/**
 * A login route, or a request for the login page served by another route (a
 * single-page app's catch-all, say): sending it to log in would send it to
 * itself, again and again. It goes on, with the session emptied if need be.
 */
function atLogin (route: RouteFlags, request: FastifyRequest, login: LoginPage): boolean {
  return route.loginRoute || (login.path !== null && request.url.split(/[?#]/, 1)[0] === login.path)
}

// Where 0.1.0 kept its stamp: the global version and the user's version.
const LEGACY_FIELDS = ['sessionVersion', 'sessionUserVersion']

/**
 * A session stamped by 0.1.0 (before an upgrade) whose user was logged out
 * after it, by 0.1.0's rule: its user version is below the user's last logout.
 */
function loggedOutUnder010 (session: SessionFields, key: string, view: VersionView): boolean {
  if (session.get(LEGACY_FIELDS[0]!) === undefined || view.userCount === 0) return false
  const stamped = session.get(LEGACY_FIELDS[1]!)
  return (view.user(key)?.legacyLogoutVersion ?? 0) > (typeof stamped === 'number' ? stamped : 0)
}

// Requests whose session the check ended, and why: a login route goes on to
// its handler, which may want to know (the event stream tells the page).
const loggedOutRequests = new WeakMap<FastifyRequest, LoginReason>()

/** Why the check ended this request's session, or null when it did not. */
export function forcedLogoutOf (request: FastifyRequest): LoginReason | null {
  return loggedOutRequests.get(request) ?? null
}

/** A stamp keeps the identity as JSON can: a bigint id as its digits. */
function sameIdentity (stamped: string | number, identity: unknown): boolean {
  return stamped === identity || (typeof identity === 'bigint' && stamped === String(identity))
}

/** The session is stale, must log out, or has no stamp yet. Resolves true when it answered the request itself. */
class SlowPath {
  readonly #deps: HookDeps

  constructor (deps: HookDeps) {
    this.#deps = deps
  }

  async run (request: FastifyRequest, reply: FastifyReply, route: RouteFlags, session: SessionFields, identity: unknown, found: SessionStamp | null): Promise<boolean> {
    const { view, options } = this.#deps
    // Throws the coded error for an id that is not one (an object): a 500, never a shared key.
    const visit: Visit = { request, reply, route, session, identity: identity as Visit['identity'], key: identityKey(identity) }
    let stamp = found !== null && sameIdentity(found.i, identity) ? found : null
    // The same user under another type (1061 for '1061': postgres.js reads int8
    // as a string): the same login, not a new one.
    if (stamp === null && found !== null && String(found.i) === visit.key) stamp = this.#write(session, { ...found, i: storedIdentity(visit.identity) })
    if (stamp === null) {
      if (loggedOutUnder010(session, visit.key, view)) return this.#logOut(visit, 'user-logout')
      stamp = this.#authenticateNow(visit)
    }
    const logout = logoutOf(stamp, visit.key, view)
    if (logout?.out === true) return this.#logOut(visit, 'user-logout')
    if (logout !== null) stamp = this.#write(session, { ...stamp, a: logout.kept })
    if (!route.check) return this.#finish(visit)

    if (isAhead(stamp, visit.key, view)) {
      // Another instance has read a change this one has not. If the catch-up
      // fails, serve the session as it is rather than stamp it backwards.
      request.log.debug({ userId: visit.key }, `Session of user ${visit.key} was stamped by an instance ahead of this one: catching up`)
      const caughtUp = await view.catchUp(options.catchUpTimeout)
      // A logout read while it waited counts, whether or not the catch-up itself finished.
      if (logoutOf(stamp, visit.key, view)?.out === true) return this.#logOut(visit, 'user-logout')
      if (!caughtUp) return this.#finish(visit)
    }
    const reason = staleReason(session, stamp, visit.key, options.requiredFields, view)
    if (reason === null) return this.#finish(visit)

    request.log.info({ userId: visit.key, reason }, `Refreshing stale session for user: ${visit.key}`)
    const outcome = await this.#deps.refresher.run(`${visit.key}\u0000${stamp.k}`, {
      request,
      session,
      snapshot: () => ({ version: view.version, userVersion: view.user(visit.key)?.version ?? 0, mark: view.mark() }),
      refresh: () => options.refresh(request.session, request)
    })
    return this.#apply(visit, stamp, reason, outcome)
  }

  /**
   * A session whose identity has no stamp of its own: a login that did not
   * call stamp(), or a session from before the plugin. It authenticated when
   * its session plugin can tell (a cookie session dates its writes), else now,
   * at the logout clock this instance has read; its data is read first. Every
   * copy of it gets the same login key, so that overlapping requests share one
   * refresh.
   */
  #authenticateNow (visit: Visit): SessionStamp {
    const { view, adapter } = this.#deps
    visit.request.log.debug({ userId: visit.key }, 'Stamping a logged-in session that has no stamp')
    for (const field of LEGACY_FIELDS) if (visit.session.get(field) !== undefined) visit.session.set(field, undefined)
    const { loginKey, at } = adapter.firstLogin(visit.session, visit.key)
    // Never above the clock read so far: a logout still in its transaction when
    // the session was written commits with a clock below that date, and must end it.
    const a = at === null ? view.logoutClock : Math.min(view.logoutClock, view.clockAt(at))
    return this.#write(visit.session, { v: UNREAD, u: 0, a, k: loginKey, i: storedIdentity(visit.identity), h: [] })
  }

  async #apply (visit: Visit, stamp: SessionStamp, reason: string, outcome: RefreshOutcome): Promise<boolean> {
    const { request, session, key } = visit
    const { adapter, view, options } = this.#deps
    if (!outcome.ok) {
      if (outcome.reason === 'refresh-error') {
        request.log.error({ userId: key, reason: outcome.reason, err: outcome.error }, `Could not refresh session for user: ${key}`)
        if (options.onRefreshError === 'keep') {
          // Kept as it was, unless a logout of its user was read while the refresh ran.
          return logoutOf(stamp, key, view)?.out === true ? this.#logOut(visit, 'user-logout') : this.#finish(visit)
        }
      }
      return this.#logOut(visit, outcome.reason)
    }
    // Never write into a session that the refresh replaced, or that another
    // request (an app logout) destroyed meanwhile: saving it would bring it back.
    if (adapter.sessionOf(request) !== session) return this.#failed(visit, new Error('refresh() replaced or destroyed the session'))
    if (!await adapter.stillStored(request, session)) {
      request.log.info({ userId: key }, `Session of user ${key} was logged out while it was refreshed`)
      await this.#empty(visit)
      return this.#finish(visit)
    }
    for (const [field, value] of Object.entries(outcome.fields)) session.set(field, value)
    // The handler runs next: a logout by another request meanwhile must not be undone by this save.
    adapter.saveOnlyIfStored(request, session)
    const identity = options.identify(session, request)
    // A refresh that leaves no user behind has failed, whatever it returned.
    if (identity == null) return this.#failed(visit, new Error('refresh() left the session without a user'))
    let newKey: string
    try {
      newKey = identityKey(identity)
    } catch (err) {
      return this.#failed(visit, err)
    }
    const { snapshot } = outcome
    // The user stamp belongs to the user the session now holds. For another id
    // (an ETL renumbered the user), its version is the one known before the
    // read, unless it moved during the read: then 0, and the next request refreshes again.
    const userVersion = newKey === key
      ? snapshot.userVersion
      : view.changedSince(newKey, snapshot.mark) ? 0 : view.user(newKey)?.version ?? 0
    const refreshed = this.#write(session, {
      ...stamp,
      v: snapshot.version,
      u: userVersion,
      i: storedIdentity(identity as Visit['identity']),
      h: newKey === key ? stamp.h : [...stamp.h.filter((held) => held !== newKey && held !== key), key].slice(-HELD_IDS)
    })
    // A logout that landed while the refresh ran, of the old id or the new one.
    if (logoutOf(refreshed, newKey, view)?.out === true) return this.#logOut({ ...visit, key: newKey }, 'user-logout')
    request.log.info({ userId: key, reason }, `Successfully refreshed session for ${key}`)
    return this.#finish(visit)
  }

  #failed (visit: Visit, err: unknown): Promise<boolean> {
    visit.request.log.error({ userId: visit.key, reason: 'refresh-error', err }, `Could not refresh session for user: ${visit.key}`)
    return this.#logOut(visit, 'refresh-error')
  }

  /** `loginRequired` is decided on the session as it is now, after any refresh. */
  #finish ({ request, reply, route }: Visit): boolean {
    if (!route.loginRequired || atLogin(route, request, this.#deps.login)) return false
    const session = this.#deps.adapter.sessionOf(request)
    if (session !== null && this.#deps.options.identify(session, request) != null) return false
    sendToLogin(request, reply, this.#deps.login, 'not-logged-in')
    return true
  }

  /**
   * The one place that decides what a session that cannot stay logged in gets:
   * nothing of it survives, and pages go to log in (302), APIs get a 401. A
   * login route goes on with the empty session: it must work whatever the old
   * session held.
   */
  async #logOut (visit: Visit, reason: LoginReason): Promise<boolean> {
    visit.request.log.info({ userId: visit.key, reason }, `Falling back to login for user: ${visit.key}`)
    this.#deps.onLogout()
    await this.#empty(visit)
    loggedOutRequests.set(visit.request, reason)
    if (atLogin(visit.route, visit.request, this.#deps.login)) return false
    // The reply may still be on its way (the session store saves in onSend), so
    // the handler must be skipped on our word, not on reply.sent.
    sendToLogin(visit.request, visit.reply, this.#deps.login, reason)
    return true
  }

  async #empty ({ request, key }: Visit): Promise<void> {
    try {
      await this.#deps.adapter.logOut(request)
    } catch (err) {
      // The store failed: save nothing at all. The old session stays where it
      // was, and the next request is judged, and logged out, again.
      request.log.error({ userId: key, err }, `Could not end the session of user ${key}`);
      (request as { session: unknown }).session = null
    }
  }

  #write (session: SessionFields, stamp: SessionStamp): SessionStamp {
    session.set(this.#deps.options.stampField, stamp)
    return stamp
  }
}
