// The league example (examples/league) against a real database: login, the
// ETL's re-import, refresh by email, the removed player, and sessions in PostgreSQL.
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { readSessionVersion } from '../lib/index.js'
import { buildApp } from '../examples/league/app.js'
import type { SessionKind } from '../examples/league/sessions.js'
import { DATA_DIR, readDataSet } from '../examples/league/db/data-set.js'
import { DEMO_PASSWORD, importDataSet } from '../examples/league/db/import.js'
import { migrateLeague } from '../examples/league/db/schema.js'
import { createDatabase, eventually, type TestDatabase } from './helpers/database.js'

const WEEK1 = fileURLToPath(new URL('week1', DATA_DIR))
const WEEK2 = fileURLToPath(new URL('week2', DATA_DIR))
const SECRET = 'a league test secret of at least 32 characters'
const PAGE = { accept: 'text/html' }
const API = { accept: 'application/json' }

interface Teardown { teardown (fn: () => unknown): void }

// Each test imports a real week of data, which hashes 60 passwords with scrypt;
// on a busy machine the file needs more than tap's default 30 s.
t.setTimeout(180_000)

const KINDS: SessionKind[] = ['store', 'secure']

async function leagueDatabase (t: Teardown): Promise<TestDatabase> {
  const db = await createDatabase(t)
  await migrateLeague(db.sql)
  await importDataSet(db.sql, await readDataSet(WEEK1))
  return db
}

async function start (t: Teardown, db: TestDatabase, { close = true, session = 'store' as SessionKind } = {}): Promise<FastifyInstance> {
  const app = await buildApp({ databaseUrl: db.url, sessionSecret: SECRET, logger: false, session })
  if (close) t.teardown(() => app.close())
  return app
}

/** The session cookie as sent (still URL-encoded: a secure-session value may hold a ';' once decoded). */
function cookieOf (response: LightMyRequestResponse): string {
  const found = ([] as string[]).concat(response.headers['set-cookie'] ?? []).map((h) => h.split(';', 1)[0]!).find((pair) => pair.startsWith('league.sid='))
  if (found === undefined) throw new Error(`no session cookie in ${response.statusCode} ${response.body}`)
  return found
}

async function login (app: FastifyInstance, email: string, next = '/me'): Promise<string> {
  const response = await app.inject({ method: 'POST', url: '/login', payload: new URLSearchParams({ email, password: DEMO_PASSWORD, next }).toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } })
  if (response.statusCode !== 303) throw new Error(`login failed: ${response.statusCode}`)
  return cookieOf(response)
}

async function me (app: FastifyInstance, cookie: string): Promise<Record<string, unknown>> {
  const response = await app.inject({ url: '/api/me', headers: { cookie, ...API } })
  if (response.statusCode !== 200) throw new Error(`/api/me: ${response.statusCode} ${response.body}`)
  return response.json()
}

async function playerId (db: TestDatabase, email: string): Promise<number | undefined> {
  const [row] = await db.sql<{ id: number }[]>`select id from players where email = ${email}`
  return row?.id
}

async function runEtl (db: TestDatabase, app: FastifyInstance, dir = WEEK2): Promise<number> {
  const report = await importDataSet(db.sql, await readDataSet(dir))
  await eventually('the app to hear the new version', () => app.sessionRefresh.version === report!.sessionVersion)
  return report!.sessionVersion
}

for (const session of KINDS) t.test(`after the ETL the session holds the new player id and falls back from a league that is gone (sessions: ${session})`, async (t) => {
  const db = await leagueDatabase(t)
  const app = await start(t, db, { session })
  const cookie = await login(app, 'alex.moreno@example.com')
  const before = await me(app, cookie)
  t.equal(before.playerId, await playerId(db, 'alex.moreno@example.com'))
  t.equal(before.leagueId, 'summer-ladder')

  const version = await runEtl(db, app)
  const after = await me(app, cookie)
  t.equal(after.playerId, await playerId(db, 'alex.moreno@example.com'), 'the id the re-import gave the same email')
  t.not(after.playerId, before.playerId)
  t.equal(after.leagueId, 'championship', 'summer-ladder is gone, so the player\'s own league')
  t.equal(after.sessionVersion, version)
})

for (const session of KINDS) t.test(`a league the user switched to is kept when it still exists (sessions: ${session})`, async (t) => {
  const db = await leagueDatabase(t)
  const app = await start(t, db, { session })
  let cookie = await login(app, 'alex.moreno@example.com')
  const switched = await app.inject({ method: 'POST', url: '/league', payload: { leagueId: 'premier' }, headers: { cookie } })
  t.equal(switched.statusCode, 303)
  // A stateless session's change travels in the reply's cookie, as a browser keeps it.
  if (session === 'secure') cookie = cookieOf(switched)
  t.equal((await me(app, cookie)).leagueId, 'premier')
  const bad = await app.inject({ method: 'POST', url: '/league', payload: { leagueId: 'nope' }, headers: { cookie } })
  t.equal(bad.statusCode, 400)

  await runEtl(db, app)
  const after = await me(app, cookie)
  t.equal(after.leagueId, 'premier')
  t.equal(after.playerId, await playerId(db, 'alex.moreno@example.com'))
})

for (const session of KINDS) t.test(`a removed player is sent to log in with a message, and cannot log in again (sessions: ${session})`, async (t) => {
  const db = await leagueDatabase(t)
  const app = await start(t, db, { session })
  const cookie = await login(app, 'jordan.blake@example.com')
  await runEtl(db, app)

  const page = await app.inject({ url: '/me', headers: { cookie, ...PAGE } })
  t.equal(page.statusCode, 302)
  t.equal(page.headers.location, '/login?next=%2Fme&reason=user-gone')
  const loginPage = await app.inject({ url: page.headers.location, headers: PAGE })
  t.match(loginPage.body, /data-testid="login-message">Your player record is no longer in the league data/)

  const api = await app.inject({ url: '/api/me', headers: { cookie, ...API } })
  t.equal(api.statusCode, 401)

  const again = await app.inject({ method: 'POST', url: '/login', payload: { email: 'jordan.blake@example.com', password: DEMO_PASSWORD } })
  t.equal(again.statusCode, 401)
  t.match(again.body, /No player in the current league data uses this email/)
})

t.test('login checks the password and only redirects within the site', async (t) => {
  const db = await leagueDatabase(t)
  const app = await start(t, db)
  const wrong = await app.inject({ method: 'POST', url: '/login', payload: { email: 'alex.moreno@example.com', password: 'nope' } })
  t.equal(wrong.statusCode, 401)
  t.match(wrong.body, /Wrong email or password/)
  t.equal(wrong.cookies.length, 0, 'no session for a failed login')

  const response = await app.inject({ method: 'POST', url: '/login', payload: { email: 'alex.moreno@example.com', password: DEMO_PASSWORD, next: '//evil.example' } })
  t.equal(response.headers.location, '/')

  const anonymous = await app.inject({ url: '/league', headers: PAGE })
  t.equal(anonymous.headers.location, '/login?next=%2Fleague&reason=not-logged-in')
})

for (const session of KINDS) t.test(`sessions (${session}) survive a restart and are shared by two app processes`, async (t) => {
  const db = await leagueDatabase(t)
  const first = await start(t, db, { close: false, session })
  const cookie = await login(first, 'alex.moreno@example.com')
  const second = await start(t, db, { session })
  t.equal((await me(second, cookie)).email, 'alex.moreno@example.com', 'the other app reads the same session')
  await first.close()
  const restarted = await start(t, db, { session })
  t.equal((await me(restarted, cookie)).email, 'alex.moreno@example.com', 'still logged in after a restart')

  const logout = await restarted.inject({ method: 'POST', url: '/logout', headers: { cookie } })
  t.equal(logout.statusCode, 303)
  if (session === 'store') {
    const after = await second.inject({ url: '/api/me', headers: { cookie, ...API } })
    t.equal(after.statusCode, 401, 'logging out in one process logs out in all')
  } else {
    // A stateless session lives in the cookie: logging out clears the browser's
    // copy; a copy kept elsewhere is ended with logoutUser.
    t.match(logout.headers['set-cookie'], /^league\.sid=;/, 'the cookie is cleared')
    await restarted.sessionRefresh.logoutUser((await me(second, cookie)).id as number)
    await second.sessionRefresh.catchUp()
    t.equal((await second.inject({ url: '/api/me', headers: { cookie, ...API } })).statusCode, 401, 'a replayed copy is refused after logoutUser')
  }
})

t.test('a failing import rolls back everything, the version included', async (t) => {
  const db = await leagueDatabase(t)
  const dir = await mkdtemp(join(tmpdir(), 'league-bad-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await cp(WEEK2, dir, { recursive: true })
  // A match naming a player who is not in players.json fails after the truncate and the re-insert.
  const matches = JSON.parse(await readFile(join(dir, 'matches.json'), 'utf8')) as Array<{ home: string }>
  matches[matches.length - 1]!.home = 'nobody@example.com'
  await writeFile(join(dir, 'matches.json'), JSON.stringify(matches))

  const version = await readSessionVersion(db.sql)
  const ids = await db.sql`select id, email, league_id from players order by id`
  await t.rejects(importDataSet(db.sql, await readDataSet(dir)), /nobody@example.com/)
  t.equal(await readSessionVersion(db.sql), version)
  t.same(await db.sql`select id, email, league_id from players order by id`, ids)
})
