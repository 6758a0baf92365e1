// The league example refuses cross-site posts (examples/league/same-origin.ts):
// a foreign form cannot log a victim in as another account (login CSRF), log
// them out, or switch their league. Same-origin posts, and clients that send
// neither Origin nor Sec-Fetch-Site (curl), still work. The real app, with its
// sessions in a real database.
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { fileURLToPath } from 'node:url'
import { buildApp } from '../examples/league/app.js'
import { DATA_DIR, readDataSet } from '../examples/league/db/data-set.js'
import { DEMO_PASSWORD, importDataSet } from '../examples/league/db/import.js'
import { migrateLeague } from '../examples/league/db/schema.js'
import { createDatabase, type TestDatabase } from './helpers/database.js'

// Importing a week of data hashes 60 passwords with scrypt: slow on a busy machine.
t.setTimeout(120_000)

const HOST = 'league.test:3000'
const OWN_ORIGIN = `http://${HOST}`
const FORM = { 'content-type': 'application/x-www-form-urlencoded' }

/** What each kind of client sends with a form post to the app. */
const SAME_ORIGIN: Record<string, Record<string, string>> = {
  'a current browser (Origin and Sec-Fetch-Site: same-origin)': { origin: OWN_ORIGIN, 'sec-fetch-site': 'same-origin' },
  'a browser that sends only Sec-Fetch-Site: same-origin': { 'sec-fetch-site': 'same-origin' },
  'an older browser that sends only Origin': { origin: OWN_ORIGIN },
  'curl or a script (neither header)': {}
}
const CROSS_SITE: Record<string, Record<string, string>> = {
  'a current browser on a foreign site': { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' },
  'a sibling site (same-site is not same-origin)': { origin: 'http://other.league.test:3000', 'sec-fetch-site': 'same-site' },
  'an older browser on a foreign site (Origin only)': { origin: 'https://evil.example' },
  'the same host name on another port (Origin only)': { origin: 'http://league.test:4000' },
  'a sandboxed frame (Origin: null)': { origin: 'null' }
}

interface Teardown { teardown (fn: () => unknown): void }

async function leagueApp (t: Teardown): Promise<{ app: FastifyInstance, db: TestDatabase }> {
  const db = await createDatabase(t)
  await migrateLeague(db.sql)
  await importDataSet(db.sql, await readDataSet(fileURLToPath(new URL('week1', DATA_DIR))))
  const app = await buildApp({ databaseUrl: db.url, sessionSecret: 'a league test secret of at least 32 characters', logger: false })
  t.teardown(() => app.close())
  return { app, db }
}

function post (app: FastifyInstance, url: string, form: Record<string, string>, headers: Record<string, string>, cookie?: string) {
  return app.inject({
    method: 'POST',
    url,
    payload: new URLSearchParams(form).toString(),
    headers: { host: HOST, ...FORM, ...headers, ...(cookie === undefined ? {} : { cookie }) }
  })
}

function logIn (app: FastifyInstance, email: string, headers: Record<string, string>) {
  return post(app, '/login', { email, password: DEMO_PASSWORD, next: '/me' }, headers)
}

function sessionCookie (response: LightMyRequestResponse): string | undefined {
  const found = response.cookies.find((c) => c.name === 'league.sid')
  return found === undefined ? undefined : `league.sid=${found.value}`
}

async function me (app: FastifyInstance, cookie: string): Promise<{ statusCode: number, email?: string, leagueId?: string }> {
  const response = await app.inject({ url: '/api/me', headers: { host: HOST, accept: 'application/json', cookie } })
  return { statusCode: response.statusCode, ...(response.statusCode === 200 ? response.json() : {}) }
}

/** Every stored session, as the store holds it. */
async function sessionRows (db: TestDatabase): Promise<Array<{ sid: string, sess: unknown, expire: Date }>> {
  return db.sql<Array<{ sid: string, sess: unknown, expire: Date }>>`select sid, sess, expire from session order by sid`
}

t.test('a cross-site POST /login is refused and creates no session', async (t) => {
  const { app, db } = await leagueApp(t)
  for (const [who, headers] of Object.entries(CROSS_SITE)) {
    const response = await logIn(app, 'alex.moreno@example.com', headers)
    t.equal(response.statusCode, 403, who)
    t.equal(sessionCookie(response), undefined, `${who}: no session cookie`)
  }
  t.same(await sessionRows(db), [], 'no session was stored')
})

t.test('a cross-site POST /logout or POST /league is refused and changes nothing in the session', async (t) => {
  const { app, db } = await leagueApp(t)
  const cookie = sessionCookie(await logIn(app, 'alex.moreno@example.com', {}))!
  const before = await sessionRows(db)
  t.equal(before.length, 1)
  for (const [who, headers] of Object.entries(CROSS_SITE)) {
    t.equal((await post(app, '/logout', {}, headers, cookie)).statusCode, 403, `${who}: /logout`)
    t.equal((await post(app, '/league', { leagueId: 'premier' }, headers, cookie)).statusCode, 403, `${who}: /league`)
  }
  t.same(await sessionRows(db), before, 'the stored session is untouched, expiry included')
  const after = await me(app, cookie)
  t.equal(after.statusCode, 200, 'still logged in')
  t.equal(after.leagueId, 'summer-ladder', 'still looking at the same league')
})

t.test('same-origin form posts log in, switch the league and log out', async (t) => {
  const { app } = await leagueApp(t)
  for (const [who, headers] of Object.entries(SAME_ORIGIN)) {
    const login = await logIn(app, 'alex.moreno@example.com', headers)
    t.equal(login.statusCode, 303, `${who}: login`)
    const cookie = sessionCookie(login)!
    t.equal((await me(app, cookie)).email, 'alex.moreno@example.com', `${who}: logged in`)

    t.equal((await post(app, '/league', { leagueId: 'premier' }, headers, cookie)).statusCode, 303, `${who}: switch league`)
    t.equal((await me(app, cookie)).leagueId, 'premier', `${who}: league switched`)

    t.equal((await post(app, '/logout', {}, headers, cookie)).statusCode, 303, `${who}: logout`)
    t.equal((await me(app, cookie)).statusCode, 401, `${who}: logged out`)
  }
})

t.test('a cross-site link still opens pages: only state-changing methods are checked', async (t) => {
  const { app } = await leagueApp(t)
  const response = await app.inject({ url: '/login', headers: { host: HOST, accept: 'text/html', ...CROSS_SITE['a current browser on a foreign site'] } })
  t.equal(response.statusCode, 200)
})
