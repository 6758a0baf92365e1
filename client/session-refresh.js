// The browser side of fastify-session-refresh's event stream: no dependency,
// no build step. Either
//   <script type="module" src="/session-refresh/events/client.js?start"></script>
// (served by the plugin beside the stream; `?start` connects at once), or
//   import { start } from 'fastify-session-refresh/client'
//   start({ url: '/session-refresh/events', autoReload: true })
// It listens to the stream and:
// - on `logout`, sends the page to the login page;
// - on `version` (new data for everyone) or `refresh` (new data for this user),
//   dispatches `session-refresh:stale` on window; unless a listener calls
//   preventDefault(), it shows a small "Reload" banner, or, with `autoReload`,
//   reloads after a random delay of up to `reloadSpread` ms, so that many open
//   tabs do not reload in the same second;
// - reconnects with backoff, stops while the page has been hidden for
//   `hiddenTimeout` ms, and resumes when it is shown again;
// - when the stream is refused with 401: sends the page to log in if it tells a
//   logout of the user, or if the server had let the page in before (its
//   session ended: expired, or logged out in another tab); a page never let in
//   stops trying (until it is shown again) and dispatches `session-refresh:logged-out`.

/**
 * @typedef {object} StartOptions
 * @property {string} [url] The stream's path. Default: this script's own path without `/client.js`.
 * @property {number} [version] The session version the page was built with. Default: the content of
 *   `<meta name="session-version">`, else the version the stream says when it opens.
 * @property {boolean} [banner] Show the banner on new data. Default: true.
 * @property {string} [bannerText] Default: 'This page has new data.'
 * @property {boolean} [autoReload] Reload by itself on new data, after a random delay. Default: false.
 * @property {number} [reloadSpread] The most that delay can be, in ms. Default: 30000.
 * @property {number} [hiddenTimeout] Stop after the page was hidden this long, in ms. Default: 300000.
 */

const STALE = 'session-refresh:stale'
const LOGGED_OUT = 'session-refresh:logged-out'
const CHECK_TIMEOUT_MS = 10_000
const BANNER_ID = 'session-refresh-banner'

/**
 * Connects to the event stream. Returns a function that stops it.
 * @param {StartOptions} [options]
 * @returns {() => void}
 */
export function start (options = {}) {
  const settings = {
    url: options.url ?? new URL(import.meta.url).pathname.replace(/\/client\.js$/, ''),
    banner: options.banner ?? true,
    bannerText: options.bannerText ?? 'This page has new data.',
    autoReload: options.autoReload ?? false,
    reloadSpread: options.reloadSpread ?? 30_000,
    hiddenTimeout: options.hiddenTimeout ?? 300_000
  }
  /** @type {EventSource | null} */
  let source = null
  /** @type {AbortController | null} */
  let probing = null
  let attempt = 0
  // The server let this page past its login check once (a stream opened, a
  // check got 204, or the plugin's own 429 or 503): a 401 after that means the
  // page's session ended.
  let loggedIn = false
  const meta = document.querySelector('meta[name="session-version"]')?.getAttribute('content')
  let firstVersion = /** @type {number | null} */ (options.version ?? (meta ? Number(meta) : null))
  let retry = /** @type {ReturnType<typeof setTimeout> | undefined} */ (undefined)
  let sleep = /** @type {ReturnType<typeof setTimeout> | undefined} */ (undefined)
  let stopped = false

  const connect = () => {
    if (stopped || source !== null || probing !== null) return
    // Shown again while a check waited: the stream now, and no check beside it.
    clearTimeout(retry)
    source = new EventSource(settings.url, { withCredentials: true })
    source.addEventListener('open', () => {
      attempt = 0
      loggedIn = true
    })
    source.addEventListener('version', (event) => {
      const { version } = JSON.parse(event.data)
      // Without the page's own version, the first one tells it; any other one is news.
      if (firstVersion === null) firstVersion = version
      else if (version !== firstVersion) stale('version')
    })
    source.addEventListener('refresh', () => stale('refresh'))
    source.addEventListener('logout', (event) => {
      const { loginUrl, reason } = JSON.parse(event.data)
      toLogin(loginUrl, reason)
    })
    source.addEventListener('error', () => {
      // EventSource retries a dropped connection by itself (after the delay the
      // stream told it), but gives up on an HTTP error (401, 429, 503), whose
      // status it does not tell: then ask again here, with backoff.
      if (source?.readyState !== EventSource.CLOSED) return
      disconnect()
      later(probe)
    })
  }

  const later = (next) => {
    const delay = Math.min(60_000, 1000 * 2 ** attempt++) * (0.5 + Math.random() / 2)
    retry = setTimeout(next, delay)
  }

  // Asks the stream's route with fetch(), which tells the status, whether it
  // would open a stream now (`?check`: 204 instead of a stream, so it takes no
  // place): if so, opens it again; 401 means no login (see loggedOut).
  const probe = () => {
    const controller = new AbortController()
    probing = controller
    const url = new URL(settings.url, location.href)
    url.searchParams.set('check', '')
    // A check that gets no answer (a connection gone dark) is given up.
    const timeout = setTimeout(() => controller.abort(), CHECK_TIMEOUT_MS)
    fetch(url, { headers: { accept: 'text/event-stream' }, credentials: 'include', signal: controller.signal })
      .then(async (response) => {
        const json = response.headers.get('content-type')?.startsWith('application/json') === true
        const body = json ? await response.json().catch(() => null) : null
        // Nothing more is read (a server without `?check` would send a stream).
        clearTimeout(timeout)
        controller.abort()
        if (probing !== controller) return
        probing = null
        if (response.status === 401) return loggedOut(body)
        if (response.status === 204 || body?.loggedIn === true) loggedIn = true
        if (response.ok) connect()
        else later(probe)
      }, () => {
        clearTimeout(timeout)
        // Stopped meanwhile (disconnect() aborted it), or the network failed or timed out: then try again.
        if (probing !== controller) return
        probing = null
        later(probe)
      })
  }

  // A 401: this user was logged out (logoutUser), or a page that was let in
  // lost its session; either goes to log in. A page never let in stays, and says so.
  const loggedOut = (body) => {
    const loginUrl = typeof body?.loginUrl === 'string' ? body.loginUrl : null
    const reason = typeof body?.reason === 'string' ? body.reason : 'not-logged-in'
    if (loginUrl !== null && (reason !== 'not-logged-in' || loggedIn)) return toLogin(loginUrl, reason)
    // Until it is shown again; then from the first delay.
    attempt = 0
    window.dispatchEvent(new CustomEvent(LOGGED_OUT))
  }

  const toLogin = (loginUrl, reason) => {
    disconnect()
    stopped = true
    const separator = loginUrl.includes('?') ? '&' : '?'
    location.assign(`${loginUrl}${separator}next=${encodeURIComponent(location.pathname + location.search)}&reason=${encodeURIComponent(reason)}`)
  }

  const disconnect = () => {
    clearTimeout(retry)
    probing?.abort()
    probing = null
    source?.close()
    source = null
  }

  const stale = (reason) => {
    const event = new CustomEvent(STALE, { cancelable: true, detail: { reason } })
    if (!window.dispatchEvent(event)) return
    if (settings.autoReload) setTimeout(() => location.reload(), Math.random() * settings.reloadSpread)
    else if (settings.banner) showBanner(settings.bannerText)
  }

  const onVisibility = () => {
    clearTimeout(sleep)
    if (document.visibilityState === 'hidden') sleep = setTimeout(disconnect, settings.hiddenTimeout)
    else connect()
  }

  document.addEventListener('visibilitychange', onVisibility)
  connect()
  return () => {
    stopped = true
    document.removeEventListener('visibilitychange', onVisibility)
    clearTimeout(sleep)
    disconnect()
  }
}

function showBanner (text) {
  if (document.getElementById(BANNER_ID) !== null) return
  const banner = document.createElement('div')
  banner.id = BANNER_ID
  banner.setAttribute('role', 'status')
  banner.style.cssText = 'position:fixed;left:50%;bottom:1rem;transform:translateX(-50%);z-index:2147483647;' +
    'background:#1d2a20;color:#fff;padding:.6rem 1rem;border-radius:.5rem;font:15px system-ui,sans-serif;' +
    'box-shadow:0 2px 10px rgba(0,0,0,.3)'
  const button = document.createElement('button')
  button.type = 'button'
  button.textContent = 'Reload'
  button.style.cssText = 'margin-left:.8rem;font:inherit;cursor:pointer'
  button.addEventListener('click', () => location.reload())
  banner.append(text, button)
  document.body.append(banner)
}

// Loaded as <script type="module" src=".../client.js?start">: connect now.
if (new URL(import.meta.url).searchParams.has('start')) start()
