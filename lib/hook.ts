import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import type { VersionListener } from './listener.js'
import { clearLogin, sendToLogin, type LoginReason } from './login.js'
import type { ResolvedOptions } from './options.js'
import type { Refresher } from './refresher.js'
import { sessionOf, writeStamp, type SessionFields } from './session-fields.js'
import { isAhead, isLoggedIn, mustLogOut, staleReason, type Verdict } from './stale.js'
import type { UserVersions } from './user-versions.js'

export interface HookDeps {
  options: ResolvedOptions
  listener: VersionListener
  users: UserVersions
  refresher: Refresher
  /** Counts requests sent to log in after a failed refresh. */
  onLogout: () => void
}

/**
 * The `onRequest` hook. For a fresh or logged-out session it is a few property
 * reads and one integer compare: no I/O, no promise. Only a stale session goes
 * the slow way, through the app's `refresh`.
 */
export function createHook (deps: HookDeps): onRequestHookHandler {
  const { options, listener, users } = deps

  return function sessionRefreshHook (request, reply, done) {
    const config = request.routeOptions.config
    const session = sessionOf(request)
    const verdict = session === null
      ? null
      : config.sessionRefresh !== false
        ? staleReason(session, options, listener.version, users)
        : forcedLogout(session, deps)
    if (verdict !== null) {
      refreshStale(request, reply, session!, verdict, deps).then((answered) => { if (!answered) done() }, done)
      return
    }
    if (config.loginRequired === true && (session === null || !isLoggedIn(session, options))) {
      sendToLogin(request, reply, options.loginUrl, 'not-logged-in')
      return
    }
    done()
  }
}

/** On a route with `sessionRefresh: false` nothing is refreshed, but a forced logout still holds. */
function forcedLogout (session: SessionFields, { options, users }: HookDeps): Verdict {
  const userId = session.get(options.identityField)
  return userId != null && mustLogOut(session, userId, users) ? 'user-logout' : null
}

/** Refreshes the session, or answers the request itself (login) and says so. */
async function refreshStale (
  request: FastifyRequest, reply: FastifyReply, session: SessionFields, reason: NonNullable<Verdict>, deps: HookDeps
): Promise<boolean> {
  const { options, listener, refresher, users } = deps
  const userId = session.get(options.identityField)
  let verdict: Verdict = reason
  if (isAhead(session, options, listener.version, users)) {
    // Another instance has seen a change this one has not heard of yet. If the
    // catch-up fails, serve the session as it is rather than stamp it backwards.
    if (!await listener.catchUp()) return false
    verdict = staleReason(session, options, listener.version, users)
    if (verdict === null) return false
  }
  if (verdict === 'user-logout') return logOut(request, reply, session, userId, verdict, deps)

  request.log.info({ userId, reason: verdict }, `Refreshing stale session for user: ${userId}`)
  const outcome = await refresher.run(request.session.sessionId, request)

  if (outcome.ok) {
    for (const [field, value] of Object.entries(outcome.fields)) session.set(field, value)
    const newId = session.get(options.identityField)
    // A refresh may move the session to another id (an ETL renumbers users): its
    // user stamp must then be that user's, or the next request would judge wrongly.
    writeStamp(session, newId === userId ? outcome.stamp : { ...outcome.stamp, userVersion: users.get(newId)?.version ?? 0 })
    request.log.info({ userId, reason: verdict }, `Successfully refreshed session for ${userId}`)
    return false
  }
  if (outcome.reason === 'refresh-error') {
    request.log.error({ userId, reason: outcome.reason, err: outcome.error }, `Could not refresh session for user: ${userId}`)
    if (options.onRefreshError === 'keep') return false
  }
  return logOut(request, reply, session, userId, outcome.reason, deps)
}

/** The one place that decides what a session that cannot stay logged in gets. */
function logOut (
  request: FastifyRequest, reply: FastifyReply, session: SessionFields, userId: unknown, reason: LoginReason, deps: HookDeps
): true {
  request.log.info({ userId, reason }, `Falling back to login for user: ${userId}`)
  clearLogin(session, deps.options)
  deps.onLogout()
  // The reply may still be on its way (the session store saves in onSend), so
  // the handler must be skipped on our word, not on reply.sent.
  sendToLogin(request, reply, deps.options.loginUrl, reason)
  return true
}
