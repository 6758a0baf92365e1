// The browser client of the event stream (client/session-refresh.js) in Chromium,
// against an app of this test's own: it reloads by itself after new data
// (autoReload), stops while the page is hidden and comes back when it is shown,
// and retries a refused stream with growing delays.
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify from 'fastify'
import type { FastifyRequest } from 'fastify'
import type { Browser, Page } from 'playwright-core'
import postgres from 'postgres'
import sessionRefresh, { bumpSessionVersion, migrate } from '../../lib/index.js'

const WAIT_MS = 30_000

export interface ClientStep { name: string, run: () => Promise<void> }

/** Every request for the stream: when it came, whether it was refused, whether its connection is gone. */
interface Attempt { at: number, refused: boolean, closed: boolean, cookie: string }

class Streams {
  readonly attempts: Attempt[] = []
  /** Streams open now: requests not refused whose connection is still there. */
  get open (): number {
    return this.attempts.filter((a) => !a.refused && !a.closed).length
  }
}

/** What the app saw, kept across a restart of it: page loads and streams. */
interface Seen {
  loads: number[]
  streams: Streams
  store: session.MemoryStore
  /** When set, a stream request waits for it before its handler: to order pages' requests. */
  hold?: (request: FastifyRequest) => Promise<void>
  /** When set and true for a request, it is answered 429 before the plugin sees it, as a rate limiter would. */
  limit?: (request: FastifyRequest) => boolean
}

/**
 * The app: a login, a page that starts the client with `options`, and the
 * stream; it records what it sees in `seen`. On `port` (0: any free one), so
 * that a new app can take the place of one that stopped.
 */
async function clientApp (url: string, cleanups: Array<() => Promise<unknown>>, seen: Seen, port = 0) {
  const app = Fastify()
  cleanups.push(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: 'a test secret that is at least 32 characters long', cookie: { secure: false }, store: seen.store })
  await app.register(sessionRefresh, { connection: url, refresh: () => ({}), events: '/events', maxEventStreams: 1 })
  const { loads, streams } = seen
  const attemptOf = new WeakMap<object, Attempt>()
  app.addHook('onRequest', async (request) => {
    // The stream, and the client's checks after a refusal (/events?check).
    if (request.url.split('?')[0] !== '/events') return
    const attempt: Attempt = { at: Date.now(), refused: false, closed: false, cookie: request.headers.cookie ?? '' }
    streams.attempts.push(attempt)
    attemptOf.set(request, attempt)
    // A stream ends with its connection (EventSource.close() drops it).
    request.raw.socket.once('close', () => { attempt.closed = true })
  })
  app.addHook('preHandler', async (request, reply) => {
    if (request.url.split('?')[0] !== '/events') return
    await seen.hold?.(request)
    if (seen.limit?.(request) === true) return reply.code(429).send({ statusCode: 429, error: 'Too Many Requests', message: 'Rate limit exceeded' })
  })
  // Pages of another origin on this site (another port of localhost) may use
  // the stream and the script, with the user's cookie.
  app.addHook('onRequest', async (request, reply) => {
    const origin = request.headers.origin
    if (origin !== undefined && /^http:\/\/localhost:\d+$/.test(origin)) {
      reply.header('access-control-allow-origin', origin).header('access-control-allow-credentials', 'true').header('vary', 'origin')
    }
  })
  app.addHook('onSend', async (request, reply) => {
    const attempt = attemptOf.get(request)
    if (attempt !== undefined && reply.statusCode !== 200) attempt.refused = true
  })
  app.get('/login', async (request) => {
    request.session.set('id', 1)
    app.sessionRefresh.stamp(request)
    return 'ok'
  })
  app.get('/logout', async (request) => {
    await request.session.destroy()
    return 'logged out'
  })
  app.get<{ Querystring: { options?: string } }>('/page', async (request, reply) => {
    loads.push(Date.now())
    const options = request.query.options ?? '{}'
    // The version the page was built with: any other one the stream tells is news.
    return reply.type('text/html').send(`<!doctype html><title>page</title>
      <meta name="session-version" content="${app.sessionRefresh.version}">
      <script type="module">
        window.stale = []
        addEventListener('session-refresh:stale', (event) => window.stale.push(event.detail.reason))
        window.loggedOut = 0
        addEventListener('session-refresh:logged-out', () => window.loggedOut++)
        import { start } from '/events/client.js'
        window.stopStream = start(${options})
      </script>`)
  })
  await app.listen({ port, host: '127.0.0.1' })
  return { app, port: (app.server.address() as { port: number }).port }
}

async function until (what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  const end = Date.now() + WAIT_MS
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** The steps, on a fresh database at `url`, in `browser`. */
export async function clientSteps (url: string, browser: Browser, cleanups: Array<() => Promise<unknown>>): Promise<ClientStep[]> {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  cleanups.push(() => sql.end({ timeout: 5 }))
  await migrate(sql)
  const seen: Seen = { loads: [], streams: new Streams(), store: new session.MemoryStore() }
  const { loads, streams } = seen
  let { app, port } = await clientApp(url, cleanups, seen)
  const origin = `http://127.0.0.1:${port}`
  const pages: Page[] = []
  const cookieOf = async (page: Page) => (await page.context().cookies()).map((c) => `${c.name}=${c.value}`).join('; ')
  const pageUrl = (options: object) => `${origin}/page?options=${encodeURIComponent(JSON.stringify(options))}`
  /** A page in a browser context of its own, not logged in, not loaded. */
  const newPage = async (): Promise<Page> => {
    const page = await (await browser.newContext()).newPage()
    pages.push(page)
    return page
  }
  /** A page that holds the instance's one stream (maxEventStreams: 1). */
  const holdTheOnePlace = async (): Promise<Page> => {
    const holder = await open({ banner: false })
    await until('the first page to hold the one stream', () => streams.open === 1)
    return holder
  }
  /** A logged-in page whose timers the test runs (page.clock), and the checks it makes; not loaded yet. */
  const clockedPage = async () => {
    const page = await newPage()
    await page.clock.install()
    const checks: number[] = []
    page.on('request', (request) => { if (request.url().includes('/events?check')) checks.push(Date.now()) })
    await page.goto(`${origin}/login`)
    return { page, cookie: await cookieOf(page), checks }
  }
  /** A logged-in page that starts the client with `options`. */
  const open = async (options: object): Promise<Page> => {
    const page = await newPage()
    await page.goto(`${origin}/login`)
    await page.goto(pageUrl(options))
    return page
  }
  const steps: ClientStep[] = [
    {
      name: 'autoReload: new data reloads the page by itself, after a random delay within reloadSpread',
      run: async () => {
        const page = await open({ autoReload: true, reloadSpread: 500 })
        await until('the stream to open', () => streams.open === 1)
        const attempts = streams.attempts.length
        const before = loads.length
        const bumpedAt = Date.now()
        await bumpSessionVersion(sql)
        await until('the page to reload', () => loads.length > before)
        const delay = loads[loads.length - 1]! - bumpedAt
        if (delay > 500 + 5000) throw new Error(`reloaded ${delay} ms after the bump, long after reloadSpread`)
        // Closing the page while it still loads can stall Chromium for a minute and a half
        // (seen here): let the reloaded page open its own stream first.
        await until('the reloaded page to open its stream', () => streams.open === 1 && streams.attempts.length > attempts)
        await page.context().close()
        await until('the stream to close', () => streams.open === 0)
      }
    },
    {
      name: 'new data shows one banner, whatever comes after it: a change of this user alone (refresh), then of everyone (version)',
      run: async () => {
        const page = await open({})
        await until('the stream to open', () => streams.open === 1)
        await app.sessionRefresh.refreshUser(1)
        await page.locator('#session-refresh-banner').waitFor({ timeout: WAIT_MS })
        await bumpSessionVersion(sql)
        await app.sessionRefresh.refreshUser(1)
        await until('the page to hear all three', async () => (await page.evaluate('window.stale.length')) === 3)
        const reasons = await page.evaluate('window.stale')
        if (JSON.stringify(reasons) !== '["refresh","version","refresh"]') throw new Error(`the page heard ${JSON.stringify(reasons)}`)
        const banners = await page.locator('#session-refresh-banner').count()
        if (banners !== 1) throw new Error(`${banners} banners`)
        await page.context().close()
        await until('the stream to close', () => streams.open === 0)
      }
    },
    {
      name: 'an instance that stops: its page comes back, after the delay its stream told it (1 to 11 s), to the instance that takes its place',
      run: async () => {
        const page = await open({ banner: false })
        await until('the stream to open', () => streams.open === 1)
        const attempts = streams.attempts.length
        await app.close()
        const stoppedAt = Date.now()
        ;({ app } = await clientApp(url, cleanups, seen, port))
        await until('the page to reconnect', () => streams.open === 1 && streams.attempts.length > attempts)
        const gap = streams.attempts[attempts]!.at - stoppedAt
        // The browser's own reconnect, after the stream's `retry`; the client's backoff (0.5 to 1 s) is only for refusals.
        if (gap < 1000 || gap > 11_000 + 2000) throw new Error(`reconnected ${gap} ms after the stop`)
        if (streams.attempts.length !== attempts + 1) throw new Error('more than one attempt')
        await page.context().close()
        await until('the stream to close', () => streams.open === 0)
      }
    },
    {
      name: 'a page whose session ended while its stream was open (the app\'s logout in another tab) goes to log in when the stream comes back refused (401)',
      run: async () => {
        const page = await open({ banner: false })
        await until('the stream to open', () => streams.open === 1)
        // The app's own logout, in another tab of the same browser.
        const other = await page.context().newPage()
        await other.goto(`${origin}/logout`)
        await other.close()
        // The stream was authorised when it opened; it stays until it drops, here with the instance.
        await app.close()
        ;({ app } = await clientApp(url, cleanups, seen, port))
        await page.waitForURL(/\/login\?next=%2Fpage%3Foptions%3D.*&reason=not-logged-in$/, { timeout: WAIT_MS })
      }
    },
    {
      name: 'a page that never had a login stops asking after a 401, tells the app, and asks again when it is shown',
      run: async () => {
        const page = await newPage()
        const from = streams.attempts.length
        await page.goto(pageUrl({ banner: false }))
        const told = (times: number) => until(`the page to be told ${times} time(s)`, async () => (await page.evaluate('window.loggedOut')) === times)
        await told(1)
        // The stream, then the check that told the 401: nothing more.
        if (streams.attempts.length - from !== 2) throw new Error(`${streams.attempts.length - from} requests, not 2`)
        await page.evaluate(`document.dispatchEvent(new Event('visibilitychange'))`)
        await told(2)
        if (streams.attempts.length - from !== 4) throw new Error(`${streams.attempts.length - from} requests after it was shown again, not 4`)
        if (!page.url().startsWith(`${origin}/page?`)) throw new Error(`sent to ${page.url()}`)
      }
    },
    {
      name: 'a page refused (429) whose user is then logged out everywhere goes to log in, told by the check after the refusal',
      run: async () => {
        const holder = await holdTheOnePlace()
        const from = streams.attempts.length
        const refused = await open({ banner: false })
        const refusedCookie = await cookieOf(refused)
        await until('the page to be refused', () => streams.attempts.slice(from).some((a) => a.cookie === refusedCookie && a.refused))
        await app.sessionRefresh.logoutUser(1)
        for (const page of [refused, holder]) await page.waitForURL(/\/login\?next=%2Fpage%3Foptions%3D.*&reason=user-logout$/, { timeout: WAIT_MS })
      }
    },
    {
      name: 'a page refused (429) since it loaded, whose session then ended (the app\'s logout in another tab), goes to log in: the check had let it past the login',
      run: async () => {
        const holder = await holdTheOnePlace()
        const from = streams.attempts.length
        const refused = await open({ banner: false })
        const refusedCookie = await cookieOf(refused)
        await until('the page\'s check (a 429)', () => streams.attempts.slice(from).filter((a) => a.cookie === refusedCookie).length >= 2)
        const other = await refused.context().newPage()
        await other.goto(`${origin}/logout`)
        await other.close()
        await refused.waitForURL(/\/login\?next=%2Fpage%3Foptions%3D.*&reason=not-logged-in$/, { timeout: WAIT_MS })
        await holder.context().close()
      }
    },
    {
      name: 'a page on another origin of the site (the stream on another port) keeps its login through a refusal: its check sends the cookie',
      run: async () => {
        const holder = await holdTheOnePlace()
        const pageHost = Fastify()
        cleanups.push(() => pageHost.close())
        pageHost.get('/page', async (_request, reply) => reply.type('text/html').send(`<!doctype html><title>elsewhere</title>
          <script type="module">
            window.loggedOut = 0
            addEventListener('session-refresh:logged-out', () => window.loggedOut++)
            import { start } from 'http://localhost:${port}/events/client.js'
            start({ url: 'http://localhost:${port}/events', banner: false })
          </script>`))
        await pageHost.listen({ port: 0, host: '127.0.0.1' })
        const page = await newPage()
        await page.goto(`http://localhost:${port}/login`)
        const cookie = await cookieOf(page)
        const from = streams.attempts.length
        await page.goto(`http://localhost:${(pageHost.server.address() as { port: number }).port}/page`)
        // Refused, then checked with the cookie (429, not 401): still waiting for a place.
        await until('the page\'s check', () => streams.attempts.slice(from).filter((a) => a.cookie === cookie).length >= 2)
        await holder.context().close()
        await until('the page to get the stream', () => streams.open === 1 && streams.attempts.at(-1)!.cookie === cookie && !streams.attempts.at(-1)!.refused)
        if (await page.evaluate('window.loggedOut') !== 0) throw new Error('the page took itself for logged out')
        await pageHost.close()
      }
    },
    {
      name: 'a refused page shown again opens its stream, and the check it was waiting to make is not made',
      run: async () => {
        const holder = await holdTheOnePlace()
        // The page's timers are the test's: its backoff waits until told.
        const { page, cookie, checks } = await clockedPage()
        const from = streams.attempts.length
        await page.goto(pageUrl({ banner: false }))
        await until('the page to be refused', () => streams.attempts.slice(from).some((a) => a.cookie === cookie && a.refused))
        await holder.context().close()
        await until('the holder\'s stream to close', () => streams.open === 0)
        await page.evaluate(`document.dispatchEvent(new Event('visibilitychange'))`)
        await until('the page to get the stream', () => streams.open === 1 && streams.attempts.at(-1)!.cookie === cookie)
        // Every delay the backoff could have been waiting for, and more.
        await page.clock.runFor(120_000)
        if (checks.length !== 0) throw new Error(`${checks.length} checks made beside an open stream`)
      }
    },
    {
      name: 'a 429 from something else than the plugin (a rate limiter) tells nothing of the login: a page never logged in still stays, and says so',
      run: async () => {
        const page = await newPage()
        let limited = 0
        // Its first check is answered by "a rate limiter"; the next one by the plugin (401).
        seen.limit = (request) => request.url.includes('check') && limited++ === 0
        await page.goto(pageUrl({ banner: false }))
        await until('the page to be told', async () => (await page.evaluate('window.loggedOut')) === 1)
        seen.limit = undefined
        if (limited < 2) throw new Error('the limited check was not followed by another')
        if (!page.url().startsWith(`${origin}/page?`)) throw new Error(`sent to ${page.url()}`)
      }
    },
    {
      name: 'a check that gets no answer is given up after 10 s and asked again',
      run: async () => {
        const holder = await holdTheOnePlace()
        const { page, cookie, checks } = await clockedPage()
        // Its first check never gets an answer (a connection gone dark).
        let release = (): void => {}
        const dark = new Promise<void>((resolve) => { release = resolve })
        let held = 0
        seen.hold = async (request) => { if (request.url.includes('check') && request.headers.cookie === cookie && held++ === 0) await dark }
        const from = streams.attempts.length
        await page.goto(pageUrl({ banner: false }))
        await until('the page to be refused', () => streams.attempts.slice(from).some((a) => a.cookie === cookie && a.refused))
        await page.clock.runFor(1_000) // the first delay: the check goes out, and hangs
        await until('the check that hangs', () => held === 1)
        await page.clock.runFor(10_000 + 2_000) // its timeout, then the next delay
        await until('a second check', () => checks.length >= 2)
        seen.hold = undefined
        release()
        await holder.context().close()
      }
    },
    {
      name: 'a page hidden for hiddenTimeout closes its stream, and opens it again when shown',
      run: async () => {
        const page = await open({ hiddenTimeout: 200, banner: false })
        await until('the stream to open', () => streams.open === 1)
        const attempts = streams.attempts.length
        // Headless Chromium has no window to hide: the page says it is hidden, as a browser would on a tab switch.
        const setVisibility = (state: string): Promise<unknown> => page.evaluate(`
          Object.defineProperty(document, 'visibilityState', { value: '${state}', configurable: true })
          document.dispatchEvent(new Event('visibilitychange'))`)
        await setVisibility('hidden')
        await until('the hidden page to close its stream', () => streams.open === 0)
        if (streams.attempts.length !== attempts) throw new Error('the hidden page asked for the stream again')
        await setVisibility('visible')
        await until('the shown page to open it again', () => streams.open === 1 && streams.attempts.length === attempts + 1)
        await page.context().close()
        await until('the stream to close', () => streams.open === 0)
      }
    },
    {
      name: 'a refused stream (429: the instance holds its most) is retried with growing delays, and opens once there is room',
      run: async () => {
        const holder = await holdTheOnePlace()
        const from = streams.attempts.length
        const refused = await open({ banner: false })
        await until('three retries', () => streams.attempts.length >= from + 4)
        const times = streams.attempts.slice(from, from + 4).map((a) => a.at)
        const gaps = times.slice(1).map((time, i) => time - times[i]!)
        // Delays of 1, 2 and 4 s, each between half and all of it.
        if (!(gaps[0]! < 1100 && gaps[1]! >= 950 && gaps[2]! >= 1950 && gaps[1]! < gaps[2]!)) throw new Error(`retry gaps ${gaps.join(', ')} ms do not grow as 1, 2, 4 s`)
        await holder.context().close()
        await until('the refused page to get the stream', () => streams.open === 1 && streams.attempts.at(-1)!.refused === false)
        // Once open, a refusal starts from 1 s again: the instance stops, a new
        // page takes the new one's one place, and this page is refused again.
        const before = streams.attempts.length
        const refusedCookie = await cookieOf(refused)
        // The new instance holds this page's first request until the new page has the place.
        let taken = (): void => {}
        const place = new Promise<void>((resolve) => { taken = resolve })
        seen.hold = async (request) => { if (request.headers.cookie === refusedCookie) await place }
        await app.close()
        ;({ app } = await clientApp(url, cleanups, seen, port))
        const taker = await open({ banner: false })
        await until('the new page to hold the new instance\'s place', () => streams.open === 1 && streams.attempts.slice(before).some((a) => a.cookie !== refusedCookie && !a.refused))
        taken()
        const own = () => streams.attempts.slice(before).filter((a) => a.cookie === refusedCookie)
        await until('the page to be refused, then to retry', () => own().length >= 2)
        seen.hold = undefined
        const [first, second] = own()
        if (!first!.refused || second!.at - first!.at > 1100) throw new Error(`retried ${second!.at - first!.at} ms after a refusal that followed an open stream, not within 1 s`)
        await taker.context().close()
        await until('the refused page to get the stream again', () => streams.open === 1 && streams.attempts.at(-1)!.refused === false)
        await refused.context().close()
        await until('the stream to close', () => streams.open === 0)
      }
    }
  ]
  // Each step starts with no page of an earlier one open, even one that failed.
  return steps.map((step) => ({
    name: step.name,
    run: async () => {
      for (const page of pages.splice(0)) await page.context().close()
      await until('the earlier steps\' streams to close', () => streams.open === 0)
      await step.run()
    }
  }))
}
