import cookie from '@fastify/cookie'
import session from '@fastify/session'
import Fastify from 'fastify'
import t from 'tap'
import sessionRefresh, { type SessionRefreshOptions } from '../lib/index.js'
import { resolveOptions } from '../lib/options.js'
import { SECRET } from './helpers/app.js'

const valid = { connection: 'postgres://localhost/none', refresh: () => null }

t.test('defaults are filled in, and undefined means default', async (t) => {
  const resolved = resolveOptions({ ...valid, loginUrl: undefined })
  t.equal(resolved.identityField, 'id')
  t.same(resolved.requiredFields, [])
  t.equal(resolved.loginUrl, '/login')
  t.equal(resolved.onRefreshError, 'logout')
  t.equal(resolved.maxConcurrentRefreshes, 16)
  t.equal(resolved.heartbeatInterval, 10_000)
  t.equal(resolved.pollInterval, 30_000)
})

t.test('postgres.js options are accepted as the connection', async (t) => {
  t.same(resolveOptions({ ...valid, connection: { host: 'db' } }).connection, { host: 'db' })
})

t.test('bad options fail with a precise, coded message', async (t) => {
  const cases: Array<[Partial<SessionRefreshOptions> & Record<string, unknown>, RegExp]> = [
    [{ refresh: valid.refresh }, /the `connection` option is required/],
    [{ connection: valid.connection }, /the `refresh` option is required/],
    [{ ...valid, connection: '' }, /expected `connection` to be a connection URL or postgres.js options, got '' \(string\)/],
    [{ ...valid, connection: ['x'] as unknown as string }, /got \[ 'x' \] \(object\)/],
    [{ ...valid, refresh: 'nope' as unknown as () => null }, /expected `refresh` to be a function/],
    [{ ...valid, identityField: '' }, /expected `identityField` to be a non-empty string/],
    [{ ...valid, requiredFields: ['email', ''] }, /expected `requiredFields` to be an array of non-empty strings/],
    [{ ...valid, requiredFields: 'email' as unknown as string[] }, /got 'email' \(string\)/],
    [{ ...valid, loginUrl: null as unknown as string }, /expected `loginUrl` to be a non-empty string, got null \(null\)/],
    [{ ...valid, onRefreshError: 'ignore' as 'keep' }, /expected `onRefreshError` to be 'logout' or 'keep', got 'ignore'/],
    [{ ...valid, maxConcurrentRefreshes: 0 }, /expected `maxConcurrentRefreshes` to be a whole number from 1 up, got 0 \(number\)/],
    [{ ...valid, heartbeatInterval: 1.5 }, /expected `heartbeatInterval` to be a whole number from 1 up, got 1.5/],
    [{ ...valid, pollInterval: '30000' as unknown as number }, /expected `pollInterval` to be a whole number from 1 up, got '30000' \(string\)/],
    [{ ...valid, connectTimeout: 10n as unknown as number }, /got 10n \(bigint\)/],
    [{ ...valid, refesh: () => null }, /unknown option `refesh`; known options are connection, refresh/]
  ]
  for (const [options, message] of cases) {
    t.throws(() => resolveOptions(options), { code: 'FST_SESSION_REFRESH_INVALID_OPTION', message }, message.source)
  }
  const error = (() => { try { resolveOptions({}) } catch (err) { return err } })()
  t.ok(error instanceof TypeError, 'a bad option is a TypeError')
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

t.test('registering without @fastify/session fails with a clear message', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(sessionRefresh, valid)
  await t.rejects(async () => { await app.ready() }, /@fastify\/session/)
})
