// Browser test of the league example: `npm run test:e2e`.
// Two app processes share one database; Debian's Chromium (never a downloaded
// browser) logs in, the ETL runs as a separate process, and the next click
// shows the new player id, or the login page for the player the ETL removed.
// Then the browser client's own behaviours, on an app of their own (./client.ts).
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, rm, stat, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { chromium, type Browser, type Page } from 'playwright-core'
import postgres from 'postgres'
import { databaseUrl } from '../helpers/database.js'
import { startServer, stopServer, type ServerInfo } from '../setup/server.js'
import { freePort } from '../helpers/free-port.js'
import { clientSteps } from './client.js'

const run = promisify(execFile)
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const ARTIFACTS = fileURLToPath(new URL('artifacts/', import.meta.url))
const TSX = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url))
const WEEK2 = fileURLToPath(new URL('../../examples/league/data/week2', import.meta.url))
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
// Generous: it bounds waits for things that do happen, it is not what is tested.
const WAIT_MS = 30_000
// A cleanup (closing the browser, stopping an app or the server) that takes longer hangs.
const CLEANUP_MS = 60_000
// A step waits for at most a few WAIT_MS; one that takes longer hangs.
const STEP_MS = 120_000

const DEMO = 'alex.moreno@example.com'
const OTHER = 'ada.lund@example.com'
const REMOVED = 'jordan.blake@example.com'
const PASSWORD = 'tennis'

interface Step { name: string, run: () => Promise<void> }

const cleanups: Array<() => Promise<unknown>> = []
let passed = 0
let failed = 0

try {
  // Fresh each run, so the logs and screenshots there are this run's.
  await rm(ARTIFACTS, { recursive: true, force: true })
  await mkdir(ARTIFACTS, { recursive: true })
  const server = await testServer()
  // The same flow with sessions in PostgreSQL, then in an encrypted cookie.
  for (const kind of ['store', 'secure'] as const) await flow(server, kind)
  await clientFlow(server)
} catch (err) {
  failed++
  console.log(`not ok - setup\n  ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
} finally {
  for (const cleanup of cleanups.reverse()) {
    await bounded(cleanup(), CLEANUP_MS).catch((err: unknown) => {
      failed++
      console.log(`not ok - cleanup\n  ${String(err)}`)
    })
  }
}
console.log(`${passed} passed, ${failed} failed`)
// Exit now: a handle that a cleanup could not close must not keep CI waiting.
process.exit(failed === 0 && passed > 0 ? 0 : 1)

/** `promise`, or a rejection after `ms`: a cleanup that hangs fails the run instead of holding it. */
async function bounded (promise: Promise<unknown>, ms: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`did not finish within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

function expect (actual: string, wanted: string | RegExp, what: string): void {
  const ok = typeof wanted === 'string' ? actual === wanted : wanted.test(actual)
  if (!ok) throw new Error(`${what}: expected ${String(wanted)}, got ${JSON.stringify(actual)}`)
}

async function text (page: Page, testId: string): Promise<string> {
  return (await page.getByTestId(testId).innerText({ timeout: WAIT_MS })).trim()
}

async function logIn (page: Page, origin: string, email: string): Promise<void> {
  await page.goto(`${origin}/`)
  await page.getByLabel('Email').fill(email)
  await page.getByLabel('Password').fill(PASSWORD)
  await Promise.all([page.waitForURL(`${origin}/me`), page.getByRole('button', { name: 'Log in' }).click()])
}

/** DATABASE_URL's server, or an embedded one started (and stopped) here, once for the whole run. */
async function testServer (): Promise<ServerInfo> {
  if (process.env.DATABASE_URL !== undefined && process.env.DATABASE_URL !== '') return { kind: 'env', url: process.env.DATABASE_URL }
  const server = await startServer()
  cleanups.push(() => stopServer(server))
  return server
}

/** A database of this flow's own on the run's server. */
async function freshDatabase (server: ServerInfo): Promise<string> {
  const name = `league_e2e_${randomBytes(5).toString('hex')}`
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database ${name}`)
  await admin.end()
  cleanups.push(async () => {
    const cleanup = postgres(server.url, { max: 1, onnotice: () => {} })
    await cleanup.unsafe(`drop database if exists ${name} with (force)`)
    await cleanup.end()
  })
  return databaseUrl(server.url, name)
}

/** `npm start`'s script with DATABASE_URL, PORT and SESSION; resolves once it prints its URL. */
async function startApp (url: string, port: number, kind: 'store' | 'secure'): Promise<{ origin: string, child: ChildProcess }> {
  const child = spawn(TSX, ['examples/league/start.ts'], {
    cwd: ROOT,
    env: { ...process.env, DATABASE_URL: url, PORT: String(port), SESSION: kind },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  cleanups.push(() => stopChild(child))
  const log = createWriteStream(`${ARTIFACTS}app-${port}.log`)
  child.stderr.pipe(log)
  let output = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`app on port ${port} did not start:\n${output}`)), WAIT_MS)
    child.stdout.on('data', (chunk: Buffer) => {
      output += String(chunk)
      log.write(chunk)
      if (output.includes(`Tennis league on http://localhost:${port}`)) { clearTimeout(timer); resolve() }
    })
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`app on port ${port} exited (${code}):\n${output}`)) })
  })
  return { origin: `http://localhost:${port}`, child }
}

/** SIGTERM, the app's own shutdown; SIGKILL if it has not exited within WAIT_MS. */
async function stopChild (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const killer = setTimeout(() => child.kill('SIGKILL'), WAIT_MS)
  await exited
  clearTimeout(killer)
  if (child.signalCode === 'SIGKILL') throw new Error(`app process ${child.pid} did not stop on SIGTERM within ${WAIT_MS} ms`)
}

/** Polls the app's public /status until its in-memory version is `version`. */
async function waitForVersion (origin: string, version: number): Promise<void> {
  const until = Date.now() + WAIT_MS
  for (;;) {
    const status = await (await fetch(`${origin}/status`)).json() as { version: number }
    if (status.version === version) return
    if (Date.now() > until) throw new Error(`${origin} still has version ${status.version}, not ${version}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** The browser client's own behaviours (test/e2e/client.ts), on a database of their own. */
async function clientFlow (server: ServerInfo): Promise<void> {
  const browser = await launchChromium()
  for (const step of await clientSteps(await freshDatabase(server), browser, cleanups)) await runStep('client', step)
}

async function launchChromium (): Promise<Browser> {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
  cleanups.push(() => browser.close())
  return browser
}

async function runStep (what: string, step: Step): Promise<void> {
  try {
    // A step that hangs (seen once, in the client steps) fails by name instead of holding the run.
    await bounded(step.run(), STEP_MS)
    passed++
    console.log(`ok - ${what}: ${step.name}`)
  } catch (err) {
    failed++
    console.log(`not ok - ${what}: ${step.name}\n  ${err instanceof Error ? err.message : String(err)}`.replaceAll('\n', '\n  '))
  }
}

/**
 * Two app processes on one fresh database, sessions of `kind`, driven in Chromium
 * step by step. Long: the steps share the browser pages and what earlier steps saw.
 */
async function flow (server: ServerInfo, kind: 'store' | 'secure'): Promise<void> {
  const url = await freshDatabase(server)
  const sql = postgres(url, { max: 2, onnotice: () => {} })
  cleanups.push(() => sql.end({ timeout: 5 }))
  const ports = [await freePort(), await freePort()] as const
  const apps = await Promise.all(ports.map((port) => startApp(url, port, kind)))
  const [first, second] = apps.map((app) => app.origin) as [string, string]

  const browser = await launchChromium()
  // One browser profile per user, so each has its own session cookie.
  const demoContext = await browser.newContext({ viewport: { width: 1000, height: 760 } })
  const demo = await demoContext.newPage()
  // A second tab of the same user, on the other app process, left open on the League page.
  const demoLeague = await demoContext.newPage()
  const removed = await (await browser.newContext()).newPage()
  // Another player, whose open tab must hear nothing of the demo player's logout.
  const other = await (await browser.newContext()).newPage()
  let etlDoneAt = 0

  const playerIdOf = async (email: string): Promise<string> => {
    const [row] = await sql<{ id: number }[]>`select id from players where email = ${email}`
    if (row === undefined) throw new Error(`no player ${email} in the database`)
    return String(row.id)
  }
  let oldId = ''
  let version = 0

  const steps: Step[] = [
    {
      name: 'logs in and reads the player id on the page',
      run: async () => {
        await logIn(demo, first, DEMO)
        oldId = await text(demo, 'player-id')
        expect(oldId, await playerIdOf(DEMO), 'player id on /me')
        expect(await text(demo, 'player-league'), 'Summer Ladder', 'league on /me')
        await logIn(removed, first, REMOVED)
        await logIn(other, second, OTHER)
        await demoLeague.goto(`${second}/league`)
        await other.goto(`${second}/league`)
        expect(await text(demoLeague, 'league-name'), /^Summer Ladder/, 'league in the open tab')
      }
    },
    {
      name: 'runs the ETL with the second data set as a separate process',
      run: async () => {
        const { stdout } = await run(TSX, ['examples/league/etl.ts', '--data', WEEK2], { cwd: ROOT, env: { ...process.env, DATABASE_URL: url } })
        await writeFile(`${ARTIFACTS}etl-${kind}.log`, stdout)
        const match = /session_version is now (\d+)/.exec(stdout)
        if (match === null) throw new Error(`the ETL did not print the new version:\n${stdout}`)
        version = Number(match[1])
        etlDoneAt = Date.now()
        // The NOTIFY reaches each app process on its own; wait until both have it.
        for (const app of apps) await waitForVersion(app.origin, version)
      }
    },
    {
      name: 'open tabs show the "new data" banner by themselves, on the other app process too; Reload shows the new standings',
      run: async () => {
        for (const tab of [demoLeague, other]) await tab.locator('#session-refresh-banner').waitFor({ timeout: WAIT_MS })
        console.log(`# ${kind}: the banner showed ${Date.now() - etlDoneAt} ms after the ETL returned`)
        expect(await demoLeague.locator('#session-refresh-banner').innerText(), /This page has new data\.\s*Reload/, 'banner text')
        await demoLeague.screenshot({ path: `${ARTIFACTS}league-banner-${kind}.png` })
        await Promise.all([demoLeague.waitForEvent('load'), demoLeague.getByRole('button', { name: 'Reload' }).click()])
        expect(await text(demoLeague, 'league-name'), /^Championship/, 'the reloaded tab shows the new standings')
        if (await demoLeague.locator('#session-refresh-banner').count() !== 0) throw new Error('the banner is still there after the reload')
      }
    },
    {
      name: 'a click shows the new player id and league, still logged in, in both app processes',
      run: async () => {
        await Promise.all([demo.waitForURL(`${first}/league`), demo.getByRole('link', { name: 'League', exact: true }).click()])
        const newId = await playerIdOf(DEMO)
        if (newId === oldId) throw new Error(`the ETL did not change the player id (${oldId})`)
        expect(await text(demo, 'header-player-id'), newId, 'player id in the header')
        expect(await text(demo, 'league-name'), /^Championship/, 'league in view (Summer Ladder is gone)')
        expect(await text(demo, 'session-version'), String(version), 'session version in the footer')
        await Promise.all([demo.waitForURL(`${first}/me`), demo.getByRole('link', { name: 'My player', exact: true }).click()])
        expect(await text(demo, 'player-id'), newId, 'player id on /me')
        expect(await text(demo, 'player-league'), 'Championship', 'league on /me')
        // Same cookie on the other port (cookies ignore ports), same session in PostgreSQL.
        await demo.goto(`${second}/api/me`)
        const api = JSON.parse(await demo.locator('body').innerText()) as { playerId: number, leagueId: string }
        expect(String(api.playerId), newId, 'player id from the second app process')
        expect(api.leagueId, 'championship', 'league from the second app process')
        await demo.goto(`${first}/me`)
        expect(await text(demo, 'player-id'), newId, 'player id on /me after the round trip')
      }
    },
    {
      name: 'the removed player lands on the login page with the message',
      run: async () => {
        await Promise.all([removed.waitForURL(/\/login\?/), removed.getByRole('link', { name: 'League', exact: true }).click()])
        const landed = new URL(removed.url())
        expect(landed.pathname, '/login', 'path')
        expect(landed.searchParams.get('reason') ?? '', 'user-gone', 'reason')
        expect(await text(removed, 'login-message'), /no longer in the league data/, 'message')
        await removed.screenshot({ path: `${ARTIFACTS}league-removed-${kind}.png` })
      }
    },
    {
      name: 'saves a screenshot of the refreshed page',
      run: async () => {
        const path = `${ARTIFACTS}league-refreshed-${kind}.png`
        await demo.screenshot({ path, fullPage: false })
        if ((await stat(path)).size < 10_000) throw new Error(`${path} is suspiciously small`)
      }
    },
    {
      name: 'a player logged out everywhere else: their open tabs, on both app processes, go to the login page by themselves; another player\'s tab stays',
      run: async () => {
        const elsewhere = await (await browser.newContext()).newPage()
        await logIn(elsewhere, second, DEMO)
        const otherUrl = other.url()
        await Promise.all([elsewhere.waitForURL(`${second}/me`), elsewhere.getByTestId('logout-others').click()])
        for (const tab of [demo, demoLeague]) await tab.waitForURL(/\/login\?.*reason=user-logout/, { timeout: WAIT_MS })
        expect(await text(demoLeague, 'login-message'), /logged out everywhere/, 'message')
        expect(await text(elsewhere, 'player-name'), /.+/, 'the session that asked stays in')
        // The other player's stream got nothing: a bump now reaches it, and its page is where it was.
        const bumped = await run(TSX, ['examples/league/etl.ts', '--data', WEEK2], { cwd: ROOT, env: { ...process.env, DATABASE_URL: url } })
        await writeFile(`${ARTIFACTS}etl2-${kind}.log`, bumped.stdout)
        expect(other.url(), otherUrl, 'the other player\'s tab did not move')
      }
    }
  ]

  for (const step of steps) await runStep(`${kind} sessions`, step)
}
