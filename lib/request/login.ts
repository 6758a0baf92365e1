import type { FastifyReply, FastifyRequest } from 'fastify'
import { LoginRequiredError } from '../errors.js'

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

/** Where a login page is, and the path its routes have (null when it is on another site). */
export interface LoginPage {
  url: string
  path: string | null
}

export function loginPage (loginUrl: string): LoginPage {
  return { url: loginUrl, path: loginUrl.startsWith('/') ? loginUrl.split(/[?#]/, 1)[0]! : null }
}

/** The one place that answers a request that must log in: 302 for pages, 401 JSON for APIs. */
export function sendToLogin (request: FastifyRequest, reply: FastifyReply, login: LoginPage, reason: LoginReason): FastifyReply {
  if (wantsPage(request)) {
    const separator = login.url.includes('?') ? '&' : '?'
    // After logging in, come back here. Never the login page itself: a request
    // for it is never sent to log in (see atLogin in hook.ts).
    const next = safeRedirectPath(request.url)
    return reply.redirect(`${login.url}${separator}next=${encodeURIComponent(next)}&reason=${reason}`, 302)
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
