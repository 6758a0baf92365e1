// Refuses cross-site requests that change state: a foreign page's form that posts
// to /login (login CSRF: the victim ends up logged in as the attacker), /logout
// or /league. `SameSite=lax` cookies do not stop the first: it needs no cookie.
//
// The rule is the one Go's net/http CrossOriginProtection uses, with no token
// and no dependency: browsers say where a request comes from, and every browser
// that can run the attacker's page does.
// 1. GET, HEAD and OPTIONS change nothing and always pass.
// 2. `Sec-Fetch-Site` (all current browsers): `same-origin`, or `none` (the user
//    typed or bookmarked it), passes; `same-site` and `cross-site` do not.
// 3. Else `Origin` (older browsers send it on cross-origin POSTs): it must name
//    this host. `Origin: null` (a sandboxed frame, a privacy redirect) does not.
// 4. Neither header: not a browser, or one too old to send either on a same-origin
//    post. curl, scripts and `app.inject` send neither, and a forged cross-site
//    request cannot drop both, so these pass.
import type { FastifyReply, FastifyRequest } from 'fastify'

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])

/** An `onRequest` hook; register it before @fastify/session, so a refused request never loads or saves a session. */
export async function refuseCrossSiteWrites (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> {
  if (SAFE_METHODS.has(request.method) || isSameOrigin(request)) return undefined
  request.log.warn({ method: request.method, url: request.url, origin: request.headers.origin, secFetchSite: request.headers['sec-fetch-site'] },
    'Refused a cross-site request')
  // Returning the reply tells Fastify that this hook answered the request.
  return reply.code(403).type('text/plain').send('Cross-site requests that change state are refused')
}

function isSameOrigin (request: FastifyRequest): boolean {
  const site = request.headers['sec-fetch-site']
  if (site !== undefined) return site === 'same-origin' || site === 'none'
  const origin = request.headers.origin
  if (origin === undefined) return true
  return originNamesHost(origin, request.host)
}

/**
 * Compares hosts, not schemes: behind a proxy that ends TLS the app sees http
 * while the browser says https. The Host header is read with the origin's
 * scheme, so a default port written out (`localhost:80`) still matches.
 */
function originNamesHost (origin: string, host: string): boolean {
  try {
    const from = new URL(origin)
    return from.host === new URL(`${from.protocol}//${host}`).host
  } catch {
    return false // `null`, or not a URL at all
  }
}
