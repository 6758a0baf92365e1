import type { FastifyReply, FastifyRequest } from 'fastify'
import { LoginRequiredError } from './errors.js'
import { STAMP, USER_STAMP, type SessionFields } from './session-fields.js'
import type { StaleRule } from './stale.js'

/** Why a request is sent to log in; also the `reason` in the 401 body and the logs. */
export type LoginReason = 'not-logged-in' | 'user-gone' | 'refresh-error' | 'user-logout'

const MESSAGES: Record<LoginReason, string> = {
  'not-logged-in': 'Please log in',
  'user-gone': 'Your account changed; please log in again',
  'refresh-error': 'Your session could not be refreshed; please log in again',
  'user-logout': 'You were logged out; please log in again'
}

/**
 * Returns `value` when it is a path on this site, else '/'.
 * Use it for any redirect target that came from a request, such as `?next=`:
 * '//evil.example', '/\\evil.example' and 'https://evil.example' all become '/'.
 */
export function safeRedirectPath (value: unknown): string {
  if (typeof value !== 'string' || !value.startsWith('/')) return '/'
  // Browsers read '//' and '/\' as the start of another host; control characters can hide either.
  if (value[1] === '/' || value[1] === '\\' || /[\u0000-\u001f\u007f]/.test(value)) return '/'
  return value
}

/** Pages (a browser that accepts HTML) are redirected; APIs, XHR and fetch() get JSON. */
export function wantsPage (request: FastifyRequest): boolean {
  if (request.headers['x-requested-with'] === 'XMLHttpRequest') return false
  return request.headers.accept?.includes('text/html') === true
}

/** Removes what makes the session logged in, and nothing else the app keeps there. */
export function clearLogin (session: SessionFields, rule: StaleRule): void {
  for (const field of [rule.identityField, ...rule.requiredFields, STAMP, USER_STAMP]) session.set(field, undefined)
}

/** The one place that answers a request that must log in: 302 for pages, 401 JSON for APIs. */
export function sendToLogin (request: FastifyRequest, reply: FastifyReply, loginUrl: string, reason: LoginReason): FastifyReply {
  if (wantsPage(request)) {
    const separator = loginUrl.includes('?') ? '&' : '?'
    const next = encodeURIComponent(safeRedirectPath(request.url))
    return reply.redirect(`${loginUrl}${separator}next=${next}&reason=${reason}`, 302)
  }
  const error = new LoginRequiredError(MESSAGES[reason])
  return reply.code(401).send({
    statusCode: 401,
    code: error.code,
    error: 'Unauthorized',
    message: error.message,
    reason
  })
}
