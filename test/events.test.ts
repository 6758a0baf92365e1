// Issue 14: open pages are told at once, over server-sent events from the
// same listener. Real HTTP servers, read as EventSource reads them.
import session from '@fastify/session'
import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { buildApp, bumpAndWait, getMe, login, type TestApp } from './helpers/app.js'
import { createDatabase, eventually } from './helpers/database.js'
import { openEvents, type EventReader } from './helpers/sse.js'

const db = await createDatabase(t)
const EVENTS = '/session-refresh/events'

interface Served extends TestApp { url: string }

/** An app with the event stream, listening on a real port. */
async function serve (t: Parameters<typeof buildApp>[0], store: unknown, plugin: Record<string, unknown> = {}): Promise<Served> {
  const test = await buildApp(t, { url: db.url, sessionOptions: { store }, plugin: { events: EVENTS, ...plugin } })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const address = test.app.server.address() as { port: number }
  return { ...test, url: `http://127.0.0.1:${address.port}${EVENTS}` }
}

async function open (t: { teardown (fn: () => unknown): void }, url: string, cookie?: string): Promise<EventReader> {
  const reader = await openEvents(url, cookie)
  t.teardown(() => reader.close())
  return reader
}

const named = (reader: EventReader, event: string) => reader.events.filter((e) => e.event === event)

t.test('a stream only ever gets its own user\'s events, across two instances', async (t) => {
  const store = new session.MemoryStore()
  const [a, b] = [await serve(t, store), await serve(t, store)]
  const annCookie = await login(a.app, 171)
  const bobCookie = await login(a.app, 172)
  const ann = await open(t, a.url, annCookie)
  const bob = await open(t, b.url, bobCookie)
  t.equal(ann.status, 200)
  t.equal(ann.contentType, 'text/event-stream')
  await eventually('the opening version events', () => named(ann, 'version').length === 1 && named(bob, 'version').length === 1)
  t.same(JSON.parse(named(ann, 'version')[0]!.data), { version: a.app.sessionRefresh.version }, 'the version when the stream opened')

  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump on both streams', () => named(ann, 'version').length === 2 && named(bob, 'version').length === 2)
  t.same(JSON.parse(named(bob, 'version')[1]!.data), { version: bumped })

  await b.app.sessionRefresh.refreshUser(171)
  await eventually('ann\'s refresh', () => named(ann, 'refresh').length === 1)

  await a.app.sessionRefresh.logoutUser(172)
  await eventually('bob\'s logout', () => named(bob, 'logout').length === 1)
  t.same(JSON.parse(named(bob, 'logout')[0]!.data), { reason: 'user-logout', loginUrl: '/login' })
  // Resolves only when the server ends the stream: the wait is the check.
  await bob.ended

  // Ann's stream still runs; a bump after all of the above proves nothing else was on its way to her.
  const last = await bumpSessionVersion(db.sql)
  await eventually('the last bump', () => named(ann, 'version').length === 3)
  t.same(ann.events.filter((e) => e.event !== ':').map((e) => e.event), ['version', 'version', 'refresh', 'version'])
  t.same(JSON.parse(named(ann, 'version')[2]!.data), { version: last })
  t.same(bob.events.filter((e) => e.event !== ':').map((e) => e.event), ['version', 'version', 'logout'], 'bob never got ann\'s refresh')
})

t.test('a page of a session that an ETL renumbered hears the logout of its old id, and only its own user\'s refreshes', async (t) => {
  const test = await buildApp(t, {
    url: db.url,
    sessionOptions: { store: new session.MemoryStore() },
    plugin: { events: EVENTS },
    refresh: (s) => ({ id: s.get('id') === 184 ? 185 : s.get('id') })
  })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}`
  const cookie = await login(test.app, 184)
  await bumpAndWait(db.sql, test)
  t.equal((await getMe(test.app, cookie)).json().id, 185, 'renumbered from 184')
  const stream = await open(t, url, cookie)
  await eventually('the opening version', () => named(stream, 'version').length === 1)
  await test.app.sessionRefresh.refreshUser(185)
  await eventually('the refresh of 185', () => named(stream, 'refresh').length === 1)
  // The old id, now another user's: its change reaches the stream (filed under
  // it too) but is not this user's, whose version the stream has already told.
  await test.app.sessionRefresh.refreshUser(184)
  await test.app.sessionRefresh.logoutUser(184)
  await eventually('the logout of the id it held', () => named(stream, 'logout').length === 1)
  await stream.ended
  t.same(stream.events.filter((e) => e.event !== ':').map((e) => e.event), ['version', 'refresh', 'logout'], 'one refresh: 185\'s, not 184\'s')
})

t.test('without a logged-in session: 401 and no stream', async (t) => {
  const a = await serve(t, new session.MemoryStore())
  const anonymous = await open(t, a.url)
  t.equal(anonymous.status, 401)
  t.equal(anonymous.contentType, 'application/json; charset=utf-8')
  await anonymous.ended
  t.same(anonymous.events, [])
})

t.test('outside the session cookie\'s path there is no session: 401 and no stream, whatever cookie comes', async (t) => {
  // @fastify/session loads no session for a path outside cookie.path.
  const test = await buildApp(t, { url: db.url, sessionOptions: { store: new session.MemoryStore(), cookie: { secure: false, path: '/login' } }, plugin: { events: EVENTS } })
  await test.app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(test.app.server.address() as { port: number }).port}${EVENTS}`
  const stream = await open(t, url, await login(test.app, 180))
  t.equal(stream.status, 401)
  await stream.ended
  t.same(stream.events, [])
})

t.test('a page whose user changed before its stream opened is told at once: version, then refresh', async (t) => {
  const a = await serve(t, new session.MemoryStore())
  const cookie = await login(a.app, 181)
  await a.app.sessionRefresh.refreshUser(181)
  await a.app.sessionRefresh.refreshUser(182) // another user's change is not this page's
  const stream = await open(t, a.url, cookie)
  await eventually('the opening events', () => stream.events.filter((e) => e.event !== ':').length === 2)
  t.same(stream.events.filter((e) => e.event !== ':').map((e) => e.event), ['version', 'refresh'])
  const fresh = await open(t, a.url, await login(a.app, 183))
  await eventually('the other page\'s opening event', () => named(fresh, 'version').length === 1)
  await a.app.sessionRefresh.refreshUser(183)
  await eventually('its refresh', () => named(fresh, 'refresh').length === 1)
  t.same(fresh.events.filter((e) => e.event !== ':').map((e) => e.event), ['version', 'refresh'], 'a page stamped at the current user version gets no refresh at opening, only at the change')
})

t.test('a session logged out before its stream opens is told so at once, and the stream ends', async (t) => {
  const a = await serve(t, new session.MemoryStore())
  const cookie = await login(a.app, 173)
  await a.app.sessionRefresh.logoutUser(173)
  const stream = await open(t, a.url, cookie)
  await stream.ended
  t.same(stream.events.filter((e) => e.event !== ':'), [{ event: 'logout', data: JSON.stringify({ reason: 'user-logout', loginUrl: '/login' }) }])
})

t.test('a stream never writes the session nor rolls its cookie', async (t) => {
  const store = new session.MemoryStore()
  const a = await serve(t, store)
  const cookie = await login(a.app, 174)
  const sessionId = decodeURIComponent(cookie.split('=')[1]!).split('.')[0]!
  const stored = () => new Promise<unknown>((resolve) => store.get(sessionId, (_err, value) => resolve(JSON.stringify(value))))
  const before = await stored()
  const stream = await open(t, a.url, cookie)
  await eventually('the stream to open', () => stream.events.length > 0)
  t.equal(stream.setCookie, null, 'no cookie sent (rolling: true would otherwise re-send it)')
  t.equal(await stored(), before, 'the stored session is untouched')
})

t.test('a comment line keeps an idle stream open through proxies', async (t) => {
  const a = await serve(t, new session.MemoryStore(), { eventsKeepAlive: 100 })
  const stream = await open(t, a.url, await login(a.app, 175))
  await eventually('two comment lines', () => named(stream, ':').length >= 2)
  t.equal(named(stream, ':')[0]!.data, 'heartbeat')
})

t.test('limits: a few streams per session, a bounded number per instance; beyond, 429', async (t) => {
  const a = await serve(t, new session.MemoryStore(), { maxEventStreamsPerSession: 2, maxEventStreams: 3 })
  const one = await login(a.app, 176)
  const two = await login(a.app, 177)
  const streams = [await open(t, a.url, one), await open(t, a.url, one)]
  t.same(streams.map((s) => s.status), [200, 200])
  const third = await open(t, a.url, one)
  t.equal(third.status, 429, 'a third tab of the same session')
  t.equal((await open(t, a.url, two)).status, 200)
  t.equal((await open(t, a.url, two)).status, 429, 'the instance holds 3 at most')
  streams[0]!.close()
  await eventually('a closed stream to free its place', async () => {
    const again = await openEvents(a.url, one)
    again.close()
    return again.status === 200
  })
})

t.test('closing the app ends every stream', async (t) => {
  const a = await serve(t, new session.MemoryStore())
  const streams = [await open(t, a.url, await login(a.app, 178)), await open(t, a.url, await login(a.app, 179))]
  await eventually('both streams to open', () => streams.every((s) => s.events.length > 0))
  await a.app.close()
  // Resolve only when the server ends the streams: the wait is the check.
  await Promise.all(streams.map((s) => s.ended))
  t.equal(a.app.server.listening, false, 'close() returned with the streams open, and stopped the server')
})

t.test('the browser client is served beside the stream', async (t) => {
  const a = await serve(t, new session.MemoryStore())
  const response = await fetch(`${a.url}/client.js`)
  t.equal(response.status, 200)
  t.equal(response.headers.get('content-type'), 'text/javascript; charset=utf-8')
  t.match(await response.text(), /export function start \(options = \{\}\)/)
  t.equal(response.headers.get('set-cookie'), null, 'no session for a script')
})
