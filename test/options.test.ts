import cookie from '@fastify/cookie'
import secureSession from '@fastify/secure-session'
import session from '@fastify/session'
import Fastify from 'fastify'
import t from 'tap'
import sessionRefresh, { errors, type SessionRefreshOptions } from '../lib/index.js'
import { resolveOptions } from '../lib/options.js'
import { API, SECRET, buildApp, login } from './helpers/app.js'
import { createDatabase } from './helpers/database.js'
import { FaultyProxy } from './helpers/proxy.js'

const valid = { connection: 'postgres://localhost/none', refresh: () => null }

const MAX_TIMER = 2 ** 31 - 1
const TIMERS = ['refreshTimeout', 'connectTimeout', 'queryTimeout', 'catchUpTimeout', 'heartbeatInterval', 'heartbeatTimeout', 'pollInterval'] as const

const db = await createDatabase(t)

t.test('defaults are filled in, and undefined means default', async (t) => {
  const { identify, ...resolved } = resolveOptions({ ...valid, loginUrl: undefined })
  t.same(resolved, {
    ...valid,
    identityField: 'id',
    requiredFields: [],
    stampField: 'sessionRefresh',
    loginUrl: '/login',
    onRefreshError: 'logout',
    maxConcurrentRefreshes: 16,
    refreshTimeout: 10_000,
    connectTimeout: 10_000,
    queryTimeout: 5_000,
    catchUpTimeout: 1_000,
    heartbeatInterval: 10_000,
    heartbeatTimeout: 5_000,
    pollInterval: 30_000,
    userPollInterval: 1_000,
    statusRoute: false,
    events: false,
    eventsKeepAlive: 25_000,
    maxEventStreamsPerSession: 4,
    maxEventStreamsPerUser: 16,
    maxEventStreams: 10_000,
    sessionLifetime: 86_400_000,
    schema: 'public'
  })
  const fields: Record<string, unknown> = { id: 7, uid: 8 }
  const session = { get: (key: string) => fields[key] }
  t.equal(identify(session as never, {} as never), 7, 'the user id is read from identityField')
  t.equal(resolveOptions({ ...valid, identityField: 'uid' }).identify(session as never, {} as never), 8)
})

t.test('postgres.js options and URL objects are accepted as the connection', async (t) => {
  t.same(resolveOptions({ ...valid, connection: { host: 'db' } }).connection, { host: 'db' })
  const url = new URL('postgres://db.example/app')
  t.equal(resolveOptions({ ...valid, connection: url }).connection, url)
})

t.test('bad options fail with a precise, coded message', async (t) => {
  const timer = 'a whole number of milliseconds from 1 to 2147483647 \\(the longest timer Node runs\\)'
  const cases: Array<[Partial<SessionRefreshOptions> & Record<string, unknown>, RegExp]> = [
    [{ refresh: valid.refresh }, /the `connection` option is required/],
    [{ connection: valid.connection }, /the `refresh` option is required/],
    [{ ...valid, connection: '' }, /expected `connection` to be a connection URL \(string or URL\) or postgres.js options, got '' \(string\)/],
    [{ ...valid, connection: ['x'] as unknown as string }, /got \[ 'x' \] \(object\)/],
    [{ ...valid, refresh: 'nope' as unknown as () => null }, /expected `refresh` to be a function/],
    [{ ...valid, identityField: '' }, /expected `identityField` to be a non-empty string/],
    [{ ...valid, identityField: 'uid', identify: () => 1 }, /give `identityField` or `identify`, not both/],
    [{ ...valid, identify: 'passport.id' as unknown as () => unknown }, /expected `identify` to be a function \(session, request\) => user id, got 'passport.id' \(string\)/],
    [{ ...valid, requiredFields: ['email', ''] }, /expected `requiredFields` to be an array of non-empty strings/],
    [{ ...valid, requiredFields: 'email' as unknown as string[] }, /got 'email' \(string\)/],
    [{ ...valid, loginUrl: null as unknown as string }, /expected `loginUrl` to be a non-empty string, got null \(null\)/],
    [{ ...valid, onRefreshError: 'ignore' as 'keep' }, /expected `onRefreshError` to be 'logout' or 'keep', got 'ignore'/],
    [{ ...valid, maxConcurrentRefreshes: 0 }, /expected `maxConcurrentRefreshes` to be a whole number from 1 up, got 0 \(number\)/],
    [{ ...valid, heartbeatInterval: 1.5 }, new RegExp(`expected \`heartbeatInterval\` to be ${timer}, got 1.5 \\(number\\)`)],
    [{ ...valid, pollInterval: '30000' as unknown as number }, new RegExp(`expected \`pollInterval\` to be ${timer}, got '30000' \\(string\\)`)],
    [{ ...valid, connectTimeout: 10n as unknown as number }, /got 10n \(bigint\)/],
    [{ ...valid, sessionLifetime: 0 }, /expected `sessionLifetime` to be a whole number from 1 up, got 0/],
    [{ ...valid, schema: 'x'.repeat(48) }, /expected `schema` to be a schema name of 1 to 47 bytes/],
    [{ ...valid, refesh: () => null }, /unknown option `refesh`; known options are connection, sql, refresh, identityField/]
  ]
  for (const [options, message] of cases) {
    t.throws(() => resolveOptions(options), { code: 'FST_SESSION_REFRESH_INVALID_OPTION', message }, message.source)
  }
  const error = (() => { try { resolveOptions({}) } catch (err) { return err } })()
  t.ok(error instanceof TypeError, 'a bad option is a TypeError')
  t.ok(error instanceof errors.InvalidOptionError, 'of the exported class')
})

t.test('a stampField that is the identity field, a required field or a key of the session plugin is refused: stamp() would overwrite it', async (t) => {
  const own = 'expected `stampField` to be a session field of its own'
  const cases: Array<[Partial<SessionRefreshOptions>, string]> = [
    // The review's case: with the default identityField, the first stamp() replaced the user id, and every request then answered 500.
    [{ stampField: 'id' }, `${own}, got 'id', which is the \`identityField\`: stamp() would overwrite the user id`],
    [{ identityField: 'uid', stampField: 'uid' }, `${own}, got 'uid', which is the \`identityField\`: stamp() would overwrite the user id`],
    [{ requiredFields: ['email', 'playerId'], stampField: 'playerId' }, `${own}, got 'playerId', which is in \`requiredFields\`: stamp() would overwrite it`],
    [{ identify: () => 1, requiredFields: ['email'], stampField: 'email' }, `${own}, got 'email', which is in \`requiredFields\`: stamp() would overwrite it`]
  ]
  // @fastify/session keeps fields as properties of its session object, next to its own;
  // @fastify/secure-session keeps the cookie's date with them.
  for (const key of ['cookie', 'sessionId', 'encryptedSessionId', '__ts', 'save', 'regenerate', '__proto__', 'constructor']) {
    cases.push([{ stampField: key }, `${own}, got '${key}', which the session plugin keeps for itself`])
  }
  for (const [options, message] of cases) {
    t.throws(() => resolveOptions({ ...valid, ...options }), { code: 'FST_SESSION_REFRESH_INVALID_OPTION', message: `fastify-session-refresh: ${message}` }, message)
  }
  // With `identify`, no field name is known to compare with: passport's id lives in `passport`.
  t.equal(resolveOptions({ ...valid, identify: () => 1, stampField: 'id' }).stampField, 'id')
  t.equal(resolveOptions({ ...valid, identityField: 'uid', stampField: 'id' }).stampField, 'id')
  t.equal(resolveOptions({ ...valid, requiredFields: ['email'], stampField: 'shopStamp' }).stampField, 'shopStamp')
})

t.test('stampField: \'id\' with the default identityField fails register, before any connection is made', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: SECRET })
  app.register(sessionRefresh, { ...valid, connection: 'postgres://127.0.0.1:1/x', stampField: 'id' })
  await t.rejects(async () => { await app.ready() }, {
    code: 'FST_SESSION_REFRESH_INVALID_OPTION',
    message: /expected `stampField` to be a session field of its own, got 'id', which is the `identityField`/
  })
})

t.test('every key a real @fastify/session or @fastify/secure-session session holds before any field is set is refused as stampField', async (t) => {
  const keys = new Set<string>()
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: SECRET, cookie: { secure: false } })
  app.get('/', async (request) => {
    // What `session.get(key)` reads and `session.set(key)` overwrites: the object's properties, inherited ones too.
    for (let object: object | null = request.session; object !== null; object = Object.getPrototypeOf(object)) {
      for (const key of Object.getOwnPropertyNames(object)) keys.add(key)
    }
    return 'ok'
  })
  t.equal((await app.inject('/')).statusCode, 200)

  const stateless = Fastify()
  t.teardown(() => stateless.close())
  await stateless.register(secureSession, { key: Buffer.alloc(32, 7), cookie: { path: '/' } })
  stateless.get('/', async (request) => {
    // secure-session reads and writes one plain object, kept under a symbol.
    const store = Object.getOwnPropertySymbols(request.session).map((symbol) => (request.session as unknown as Record<symbol, unknown>)[symbol])
      .find((value): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value))
    for (const key of Object.keys(store ?? {})) keys.add(key)
    return 'ok'
  })
  t.equal((await stateless.inject('/')).statusCode, 200)

  t.ok(keys.has('cookie') && keys.has('sessionId') && keys.has('__ts'), `the keys found: ${[...keys].join(', ')}`)
  for (const key of keys) {
    t.throws(() => resolveOptions({ ...valid, stampField: key }), { code: 'FST_SESSION_REFRESH_INVALID_OPTION' }, key)
  }
})

t.test('timer options above 2^31-1 ms are refused with a message that names the limit (issue 11.12)', async (t) => {
  for (const name of TIMERS) {
    t.throws(() => resolveOptions({ ...valid, [name]: MAX_TIMER + 1 }), {
      code: 'FST_SESSION_REFRESH_INVALID_OPTION',
      message: `fastify-session-refresh: expected \`${name}\` to be a whole number of milliseconds from 1 to 2147483647 (the longest timer Node runs), got 2147483648 (number)`
    }, `${name}: 2^31`)
    t.throws(() => resolveOptions({ ...valid, [name]: 30 * 86_400_000 }), { code: 'FST_SESSION_REFRESH_INVALID_OPTION' }, `${name}: 30 days`)
    t.equal(resolveOptions({ ...valid, [name]: MAX_TIMER })[name], MAX_TIMER, `${name}: 2^31-1 is the longest accepted`)
  }
  // Not a timer: a session can live longer than Node can wait.
  t.equal(resolveOptions({ ...valid, sessionLifetime: 30 * 86_400_000 }).sessionLifetime, 30 * 86_400_000, 'sessionLifetime may be 30 days')
})

t.test('a timer option above the limit fails register, before any connection is made (issue 11.12)', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: SECRET })
  app.register(sessionRefresh, { ...valid, connection: 'postgres://127.0.0.1:1/x', pollInterval: 30 * 86_400_000 })
  await t.rejects(async () => { await app.ready() }, {
    code: 'FST_SESSION_REFRESH_INVALID_OPTION',
    message: /expected `pollInterval` to be a whole number of milliseconds from 1 to 2147483647/
  })
})

t.test('timers at the limit and a 30-day sessionLifetime run as given: nothing fires early (issue 11.12)', async (t) => {
  // connectTimeout has a test of its own, below.
  const limits = Object.fromEntries(TIMERS.filter((name) => name !== 'connectTimeout').map((name) => [name, MAX_TIMER]))
  const { app, refreshCalls } = await buildApp(t, {
    url: db.url,
    // A refresh that takes a while: a refreshTimeout that Node ran as a 1 ms timer would fail it.
    refresh: async (s) => {
      await new Promise((resolve) => setTimeout(resolve, 50))
      return { email: `user${String(s.get('id'))}@example.com`, playerId: 1 }
    },
    plugin: { ...limits, sessionLifetime: 30 * 86_400_000 }
  })
  const cookie = await login(app, 5, { stamp: false })
  const response = await app.inject({ url: '/me', headers: { cookie, ...API } })
  t.equal(response.statusCode, 200)
  t.match(response.json(), { id: 5, playerId: 1 })
  t.same(refreshCalls, [5], 'refreshed once, and the refresh was not cut short')
  t.match(app.sessionRefresh.status(), { refreshes: 1, refreshFailures: 0, heartbeatMisses: 0, listening: true })
})

t.test('connectTimeout at the limit (2^31-1 ms) connects: no connect timer fires early (issue 11.12)', async (t) => {
  // postgres.js takes its connect_timeout in whole seconds; 2^31-1 ms rounded up
  // to seconds is more than Node's longest timer. A link with 20 ms of latency
  // makes every connection take longer than the 1 ms such a timer really waits.
  const proxy = await FaultyProxy.start(db.url)
  t.teardown(() => proxy.close())
  proxy.latency = 20
  const { app } = await buildApp(t, { url: proxy.url(db.url), plugin: { connectTimeout: MAX_TIMER } })
  t.equal(app.sessionRefresh.status().listening, true)
  t.equal(await app.sessionRefresh.refreshUser('11.12'), Number((await db.sql`select version::text from session_user_versions where user_id = '11.12'`)[0]!.version),
    'and so does the connection for per-user changes')
})

t.test('a bad option fails register, before any connection is made', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cookie)
  await app.register(session, { secret: SECRET })
  app.register(sessionRefresh, { connection: 'postgres://127.0.0.1:1/x' } as SessionRefreshOptions)
  await t.rejects(async () => { await app.ready() }, {
    code: 'FST_SESSION_REFRESH_INVALID_OPTION',
    message: /the `refresh` option is required/
  })
})

t.test('registering without a session plugin fails with a clear message', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(sessionRefresh, valid)
  await t.rejects(async () => { await app.ready() }, {
    code: 'FST_SESSION_REFRESH_NO_SESSION_PLUGIN',
    message: /needs @fastify\/session or @fastify\/secure-session/
  })
})
