// Findings of the seventh adversarial review (of the event stream, issue 14),
// each a test named after its scenario, written against the code that had the
// defect: a stream set up while the app closed, reconnects of every page at
// once, answers other than a stream that wrote the session, the client script
// refused to a logged-out session, HEAD, and a keep-alive the app's own
// @fastify/sse registration silenced.
import { fastifySSE } from '@fastify/sse'
import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify from 'fastify'
import t from 'tap'
import sessionRefresh from '../lib/index.js'
import { buildApp, gate, login, SECRET, type TestApp } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { openEvents, type EventReader } from './helpers/sse.js'

const db = await createDatabase(t)
const EVENTS = '/session-refresh/events'

async function serve (t: Parameters<typeof buildApp>[0], store = new session.MemoryStore(), plugin: Record<string, unknown> = {}): Promise<TestApp & { url: string }> {
  const test = await buildApp(t, { url: db.url, sessionOptions: { store }, plugin: { events: EVENTS, ...plugin } })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  return { ...test, url: `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}` }
}

async function open (t: { teardown (fn: () => unknown): void }, url: string, cookie?: string): Promise<EventReader> {
  const reader = await openEvents(url, cookie)
  t.teardown(() => reader.close())
  return reader
}

/** A real memory store that counts its writes. */
class CountingStore extends session.MemoryStore {
  writes = 0
  override set (...args: Parameters<session.MemoryStore['set']>): void {
    this.writes++
    super.set(...args)
  }
}

/** `promise`, or a failure after `ms`: what must not hang. */
async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms) })])
  } finally {
    clearTimeout(timer)
  }
}

t.test('app.close() while a stream request waits in an app hook: the stream is refused (503) and close() returns', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { events: EVENTS } })
  const inHook = gate()
  const hold = gate()
  test.app.addHook('preHandler', async (request) => {
    if (request.url !== EVENTS) return
    inHook.open()
    await hold.wait // a session store's load, a rate limiter: any hook that awaits
  })
  // Registered after the plugin's: runs once the plugin has ended the streams it holds.
  const closeBegan = gate()
  test.app.addHook('preClose', async () => { closeBegan.open() })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}`
  const opening = openEvents(url, await login(test.app, 701))
  await inHook.wait
  const closing = test.app.close()
  await closeBegan.wait
  hold.open()
  const reader = await opening
  t.teardown(() => reader.close())
  t.equal(reader.status, 503, 'refused: the instance is closing (the client retries elsewhere)')
  await within(closing, 20_000, 'app.close()')
  t.equal(test.app.server.listening, false)
})

t.test('every stream gets its own random reconnection delay when it opens, so that the pages of a stopped instance do not all come back at once', async (t) => {
  const a = await serve(t)
  const readers = await Promise.all(Array.from({ length: 20 }, async (_, i) => open(t, a.url, await login(a.app, 710 + i))))
  await eventually('every opening event', () => readers.every((r) => r.events.some((e) => e.event === 'version')))
  const delays = readers.map((r) => r.events.find((e) => e.event === 'version')!.retry)
  t.ok(delays.every((d) => d !== undefined && d >= 1000 && d < 11_000), `each between 1 and 11 s: ${delays.join(', ')}`)
  t.ok(new Set(delays).size > 1, 'not all the same')
})

t.test('answers other than a stream (406 to a client that refuses text/event-stream) never write the session nor roll its cookie', async (t) => {
  const store = new CountingStore()
  const a = await serve(t, store)
  const cookie = await login(a.app, 702)
  const sessionId = decodeURIComponent(cookie.split('=')[1]!).split('.')[0]!
  const stored = () => new Promise<unknown>((resolve) => store.get(sessionId, (_err, value) => resolve(JSON.stringify(value))))
  const before = await stored()
  const writes = store.writes
  for (const accept of ['text/html', 'text/event-stream;q=0']) {
    const loggedIn = await fetch(a.url, { headers: { accept, cookie } })
    t.equal(loggedIn.status, 406, accept)
    t.equal(loggedIn.headers.get('set-cookie'), null, `${accept}: no cookie`)
    const anonymous = await fetch(a.url, { headers: { accept } })
    t.equal(anonymous.status, 406)
    t.equal(anonymous.headers.get('set-cookie'), null, `${accept}, no session: none made`)
  }
  t.equal(await stored(), before, 'the stored session is untouched')
  t.equal(store.writes, writes, 'nothing stored: no session made for the anonymous requests, the logged-in one not rolled')
})

t.test('an error thrown by an app hook on the stream\'s route (a rate limiter, a failure) writes no session and rolls no cookie', async (t) => {
  const store = new CountingStore()
  const test = await buildApp(t, { url: db.url, sessionOptions: { store }, plugin: { events: EVENTS } })
  test.app.addHook('preHandler', async (request) => {
    if (request.url !== EVENTS) return
    const limit = request.headers['x-fail'] === 'limit'
    throw Object.assign(new Error(limit ? 'Rate limit exceeded' : 'broken'), limit ? { statusCode: 429 } : {})
  })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}`
  const cookie = await login(test.app, 706)
  const writes = store.writes
  for (const fail of ['limit', 'error']) {
    for (const headers of [{ cookie }, {}] as Array<Record<string, string>>) {
      const response = await fetch(url, { headers: { accept: 'text/event-stream', 'x-fail': fail, ...headers } })
      t.equal(response.status, fail === 'limit' ? 429 : 500)
      t.equal(response.headers.get('set-cookie'), null, `${fail}, ${'cookie' in headers ? 'logged in' : 'no session'}: no cookie`)
    }
  }
  t.equal(store.writes, writes, 'nothing stored')
})

t.test('the client script is served to a session that logoutUser ended (a page rendered just before it must still load it, to be told)', async (t) => {
  const a = await serve(t)
  const cookie = await login(a.app, 703)
  await a.app.sessionRefresh.logoutUser(703)
  const response = await fetch(`${a.url}/client.js`, { headers: { cookie, accept: '*/*' } })
  t.equal(response.status, 200)
  t.match(await response.text(), /export function start/)
  t.equal(response.headers.get('set-cookie'), null)
  // The page then opens its stream and is sent to log in.
  const reader = await open(t, a.url, cookie)
  await reader.ended
  t.same(reader.events.map((e) => e.event), ['logout'])
})

t.test('HEAD on the stream\'s path opens no stream and takes no place', async (t) => {
  const a = await serve(t, new session.MemoryStore(), { maxEventStreamsPerSession: 1 })
  const cookie = await login(a.app, 704)
  // Bounded: a HEAD that opened a stream would never answer.
  const head = await fetch(a.url, { method: 'HEAD', headers: { cookie, accept: 'text/event-stream' }, signal: AbortSignal.timeout(20_000) })
  t.equal(head.status, 404, 'no HEAD route')
  const reader = await open(t, a.url, cookie)
  t.equal(reader.status, 200, 'the session\'s one place is free')
})

t.test('eventsKeepAlive holds when the app registered @fastify/sse itself, with its own heartbeat', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifySSE, { heartbeatInterval: 60_000 })
  await app.register(cookie)
  await app.register(session, { secret: SECRET, cookie: { secure: false } })
  await app.register(sessionRefresh, { connection: db.url, refresh: () => ({}), events: EVENTS, eventsKeepAlive: 100 })
  app.get('/login', async (request) => {
    request.session.set('id', 705)
    app.sessionRefresh.stamp(request)
    return 'ok'
  })
  app.get('/own', { sse: true }, async (_request, reply) => {
    await reply.sse.send({ data: 'the app\'s own stream works' })
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const origin = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const login705 = await fetch(`${origin}/login`)
  const cookie705 = login705.headers.get('set-cookie')!.split(';')[0]!
  const reader = await open(t, `${origin}${EVENTS}`, cookie705)
  await eventually('two comment lines', () => reader.events.filter((e) => e.event === ':').length >= 2)
  t.equal(reader.events.find((e) => e.event === ':')!.data, 'heartbeat')
  const own = await open(t, `${origin}/own`)
  await own.ended
  t.same(own.events.map((e) => e.data), ['"the app\'s own stream works"'])
})

t.test('a session whose stamp an app hook removed before the stream\'s handler gets 401 and no stream, never a 500', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { events: EVENTS } })
  test.app.addHook('preHandler', async (request) => {
    // An app that rewrites the session on its own, after the check let the request through.
    if (request.url === EVENTS) request.session.set('sessionRefresh', undefined)
  })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const reader = await open(t, `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}`, await login(test.app, 707))
  t.equal(reader.status, 401)
  await reader.ended
  t.same(reader.events, [])
})

t.test('?check answers as the stream would (401 with where to log in, 429), or 204 instead of opening one: it takes no place and writes nothing', async (t) => {
  const store = new CountingStore()
  const a = await serve(t, store, { maxEventStreamsPerSession: 1 })
  const check = (cookie?: string) => fetch(`${a.url}?check`, { headers: { accept: 'text/event-stream', ...(cookie === undefined ? {} : { cookie }) } })
  const anonymous = await check()
  t.equal(anonymous.status, 401)
  t.match(await anonymous.json(), { statusCode: 401, reason: 'not-logged-in', loginUrl: '/login' }, 'the browser client sends a page that was logged in there')
  const cookie = await login(a.app, 708)
  const writes = store.writes
  const fine = await check(cookie)
  t.equal(fine.status, 204)
  t.equal(fine.headers.get('set-cookie'), null)
  const reader = await open(t, a.url, cookie)
  t.equal(reader.status, 200, 'the check took no place: the session\'s one is free')
  const taken = await check(cookie)
  t.equal(taken.status, 429, 'now it is taken')
  t.match(await taken.json(), { loggedIn: true }, 'past the login: the client tells it from a proxy\'s or a rate limiter\'s 429')
  t.notOk('loggedIn' in (await (await check()).json() as object), 'a 401 says no such thing')
  t.equal(store.writes, writes, 'nothing stored')
  // A logout to tell: said in the answer, which the client reads (a stream it would not).
  await a.app.sessionRefresh.logoutUser(708)
  const out = await check(cookie)
  t.equal(out.status, 401)
  t.match(await out.json(), { reason: 'user-logout', loginUrl: '/login' })
})

t.test('?check of a session whose logout was read after the check let it through says so too (401 user-logout)', async (t) => {
  const test = await buildApp(t, { url: db.url, plugin: { events: EVENTS } })
  const inHook = gate()
  const hold = gate()
  test.app.addHook('preHandler', async (request) => {
    if (!request.url.startsWith(`${EVENTS}?`)) return
    inHook.open()
    await hold.wait
  })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const cookie = await login(test.app, 709)
  const checking = fetch(`http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}?check`, { headers: { accept: 'text/event-stream', cookie } })
  await inHook.wait
  await test.app.sessionRefresh.logoutUser(709)
  hold.open()
  const response = await checking
  t.equal(response.status, 401)
  t.match(await response.json(), { reason: 'user-logout' })
})
