// `npm start` of the league example and its embedded PostgreSQL, run the way a
// user runs it: npm in a process group (and session) of its own, like a
// terminal's foreground job, so that "Ctrl-C" is SIGINT to that whole group.
// However the app is told to stop, or even killed, the server must be gone
// afterwards, and no process of the run may be left. Real processes only: npm,
// sh, tsx, the app and PostgreSQL. Each run gets a free port and a temporary
// data directory (LEAGUE_PG_PORT, LEAGUE_PG_DATA), so runs never collide.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { PASSWORD, USER, clusterRunning, initCluster, startCluster, stopCluster } from '../examples/embedded-postgres.js'
import { childEnv } from './helpers/child-env.js'
import { freePort } from './helpers/free-port.js'

const run = promisify(execFile)
const ROOT = fileURLToPath(new URL('../', import.meta.url))
// Bounds for things that do happen, generous for a busy 2-core machine; not what is tested.
const START_MS = 90_000
const STOP_MS = 30_000

// About 13 starts of the app, one after another.
t.setTimeout(600_000)

type Target = 'group' | 'npm' | 'tsx' | 'app'

interface League {
  /** npm's pid, which is also the id of its process group and session. */
  pgid: number
  /** The app: the node process that runs examples/league/start.ts under tsx. */
  appPid: number
  tsxPid: number
  output (): string
  exit: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

interface Teardown { teardown (fn: () => unknown): void }

const parent = await mkdtemp(join(tmpdir(), 'league-start-'))
// As root the server runs as the postgres user, which must reach the data directory.
await chmod(parent, 0o755)
const dataDir = join(parent, 'league-pg')
const pgPort = await freePort()
/** Every npm started here; each leads a process group and session of its own. */
const npms: ChildProcess[] = []

// Whatever happens in the tests, nothing of theirs keeps running: each test kills
// its process groups at its end, and this catches anything a test left behind.
t.teardown(async () => {
  for (const npm of npms) await killGroup(npm)
  if (await clusterRunning(dataDir)) await stopCluster(dataDir).catch(() => {})
  await waitUntil('the server to be stopped at teardown', async () => !await clusterRunning(dataDir), STOP_MS)
  await rm(parent, { recursive: true, force: true })
})

/** `npm start` in a new session and process group; resolves once it serves pages. */
async function startLeague (t: Teardown, env: Record<string, string> = {}): Promise<League> {
  const { npm, output, exit } = spawnNpmStart(t, env)
  const port = env.PORT!
  await waitForOutput(npm, output, new RegExp(`Tennis league on http://localhost:${port}`), START_MS)
  // The app's pid, from its JSON log lines (Fastify's "Server listening" at the latest).
  const pidLine = /"pid":(\d+)/
  await waitForOutput(npm, output, pidLine, START_MS)
  const appPid = Number(pidLine.exec(output())![1])
  const tsxPid = Number((await run('ps', ['-o', 'ppid=', '-p', String(appPid)])).stdout.trim())
  return { pgid: npm.pid!, appPid, tsxPid, output, exit }
}

function spawnNpmStart (t: Teardown, env: Record<string, string>) {
  // LOG_LEVEL info: the app's JSON log lines carry its pid.
  const childEnvironment = childEnv({ LOG_LEVEL: 'info', LEAGUE_PG_PORT: String(pgPort), LEAGUE_PG_DATA: dataDir, ...env })
  // The embedded server is what is tested, not a database given from outside.
  delete childEnvironment.DATABASE_URL
  // detached: setsid(), so npm leads a new session and process group, as in a terminal.
  const npm = spawn('npm', ['start'], { cwd: ROOT, env: childEnvironment, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  npms.push(npm)
  // A test that failed half-way leaves nothing running (a server it started is
  // then stopped by its guard, or by the teardown above).
  t.teardown(() => killGroup(npm))
  let text = ''
  npm.stdout.on('data', (chunk: Buffer) => { text += String(chunk) })
  npm.stderr.on('data', (chunk: Buffer) => { text += String(chunk) })
  const exit = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    npm.once('exit', (code, signal) => resolve({ code, signal }))
  })
  return { npm, output: () => text, exit }
}

/** SIGKILL to npm's whole group, if anything of it still lives. */
async function killGroup (npm: ChildProcess): Promise<void> {
  // Once npm has exited (and been reaped) its pid may be reused, but not while
  // a process of its group or session still lives: only then is the group still ours.
  const npmAlive = npm.exitCode === null && npm.signalCode === null
  if (!npmAlive && (await sessionMembers(npm.pid!)).length === 0) return
  try {
    process.kill(-npm.pid!, 'SIGKILL')
  } catch {
    // Gone in the meantime.
  }
}

function signal (league: League, target: Target, name: NodeJS.Signals): void {
  const pid = { group: -league.pgid, npm: league.pgid, tsx: league.tsxPid, app: league.appPid }[target]
  process.kill(pid, name)
}

/** Waits until `pattern` appears in the output; fails at once if npm exits first. */
async function waitForOutput (npm: ChildProcess, output: () => string, pattern: RegExp, ms: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const check = () => {
      if (!pattern.test(output())) return
      done()
      resolve()
    }
    const exited = (code: number | null) => {
      done()
      reject(new Error(`npm start exited (${code}) before printing ${pattern}:\n${output()}`))
    }
    const timer = setTimeout(() => {
      done()
      reject(new Error(`no ${pattern} within ${ms} ms:\n${output()}`))
    }, ms)
    const done = () => {
      clearTimeout(timer)
      npm.stdout!.off('data', check)
      npm.off('exit', exited)
    }
    npm.stdout!.on('data', check)
    npm.once('exit', exited)
    check()
  })
}

/** Polls `check` until it holds; fails with `what` after `ms`. */
async function waitUntil (what: string, check: () => boolean | Promise<boolean>, ms: number): Promise<void> {
  const until = Date.now() + ms
  while (!await check()) {
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

async function withTimeout<T> (what: string, promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

function portRefuses (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(false) })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'))
  })
}

/** Live processes whose command line names the data directory: the postmaster, the guard. */
async function processesUsing (dir: string): Promise<string[]> {
  const { stdout } = await run('ps', ['-e', '-o', 'stat=,args='])
  return stdout.split('\n').filter((line) => !line.trimStart().startsWith('Z') && line.includes(dir))
}

/** Live (not zombie) processes left in the run's session. */
async function sessionMembers (sid: number): Promise<string[]> {
  const { stdout } = await run('ps', ['-e', '-o', 'sid=,stat=,pid=,args='])
  return stdout.split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([session, stat]) => Number(session) === sid && stat !== undefined && !stat.startsWith('Z'))
    .map((fields) => fields.slice(2).join(' '))
}

/**
 * npm exits, its session empties, and no process uses the data directory (the
 * postmaster, the guard); then the server is down: no postmaster.pid, port closed.
 */
async function assertAllGone (t: Test, league: League): Promise<void> {
  await withTimeout('npm to exit', league.exit, STOP_MS)
  await waitUntil('the session to empty', async () => (await sessionMembers(league.pgid)).length === 0, STOP_MS)
  await waitUntil('the processes on the data directory to end', async () => (await processesUsing(dataDir)).length === 0, STOP_MS)
  t.notOk(existsSync(join(dataDir, 'postmaster.pid')), 'no postmaster.pid')
  t.ok(await portRefuses(pgPort), 'nothing listens on the PostgreSQL port')
}

async function appPort (): Promise<string> {
  return String(await freePort())
}

const stopCases: Array<{ target: Target, signal: NodeJS.Signals, why: string, env?: Record<string, string> }> = [
  { target: 'group', signal: 'SIGINT', why: 'Ctrl-C in a terminal' },
  { target: 'tsx', signal: 'SIGINT', why: 'tsx relays it to the app' },
  { target: 'app', signal: 'SIGINT', why: 'the app alone' },
  // npm relays SIGINT and SIGTERM to the shell that runs the script. Debian's dash
  // would keep SIGINT until its command ends, and die of SIGTERM without passing it
  // on; the script `exec`s tsx, so the signal goes straight to tsx.
  { target: 'npm', signal: 'SIGINT', why: 'npm relays it to tsx' },
  { target: 'group', signal: 'SIGTERM', why: 'kill -TERM of the whole job' },
  { target: 'npm', signal: 'SIGTERM', why: 'npm relays it to tsx' },
  // Nothing handles SIGHUP: npm, tsx and the app die of it, and the guard stops the server.
  { target: 'group', signal: 'SIGHUP', why: 'the terminal closed' }
]

for (const { target, signal: name, why, env } of stopCases) {
  t.test(`${name} to ${target === 'group' ? 'the whole process group' : `${target} alone`} (${why}) stops the embedded PostgreSQL`, async (t) => {
    const league = await startLeague(t, { PORT: await appPort(), ...env })
    t.match(league.output(), `Started embedded PostgreSQL on port ${pgPort}`, 'this run started the server')
    signal(league, target, name)
    await assertAllGone(t, league)
    if (target === 'app') t.match(league.output(), /Shutting down[\s\S]*Stopped embedded PostgreSQL/, 'the app closed, then stopped the server')
  })
}

t.test('a second signal during the shutdown waits for it, and the server is still stopped by the app', async (t) => {
  const league = await startLeague(t, { PORT: await appPort() })
  // Two different signals, so the kernel cannot merge them into one; the second
  // stands for the copy that tsx relays when the app is slow to acknowledge the first.
  signal(league, 'app', 'SIGINT')
  signal(league, 'app', 'SIGTERM')
  await assertAllGone(t, league)
  t.match(league.output(), /Shutting down[\s\S]*Stopped embedded PostgreSQL/, 'the app did not exit before the server stopped')
})

t.test('SIGKILL to the app, which can run no code: its guard still stops the server', async (t) => {
  const league = await startLeague(t, { PORT: await appPort() })
  signal(league, 'app', 'SIGKILL')
  await assertAllGone(t, league)
  t.notMatch(league.output(), /Stopped embedded PostgreSQL/, 'the app itself did not stop it')
})

t.test('a second npm start of the same checkout reuses the server and leaves stopping it to the first', async (t) => {
  const first = await startLeague(t, { PORT: await appPort() })
  const secondPort = await appPort()
  const second = await startLeague(t, { PORT: secondPort })
  t.match(second.output(), `Using the embedded PostgreSQL already running on port ${pgPort}`)
  t.notMatch(second.output(), /Started embedded PostgreSQL/)

  signal(second, 'group', 'SIGINT')
  await withTimeout('the second npm to exit', second.exit, STOP_MS)
  t.ok(await clusterRunning(dataDir), 'the server still runs after the second app stopped')
  const admin = postgres(`postgres://${USER}:${PASSWORD}@127.0.0.1:${pgPort}/league`, { max: 1, onnotice: () => {} })
  try {
    t.same(await admin`select 1 as one`, [{ one: 1 }], 'and answers')
  } finally {
    await admin.end({ timeout: 1 })
  }

  signal(first, 'group', 'SIGINT')
  await assertAllGone(t, first)
})

t.test('a server on the port whose data directory is elsewhere (another clone) is not reused: npm start fails with one line', async (t) => {
  const otherParent = await mkdtemp(join(tmpdir(), 'league-other-clone-'))
  await chmod(otherParent, 0o755)
  const otherDir = join(otherParent, 'league-pg')
  const otherPort = await freePort()
  const other = await initCluster(otherDir, otherPort)
  await startCluster(otherDir)
  t.teardown(async () => {
    await stopCluster(otherDir)
    await rm(otherParent, { recursive: true, force: true })
  })
  const ownDir = join(parent, 'never-created')

  const { output, exit } = spawnNpmStart(t, { PORT: await appPort(), LEAGUE_PG_PORT: String(otherPort), LEAGUE_PG_DATA: ownDir })
  const { code } = await withTimeout('npm start to give up', exit, START_MS)
  t.equal(code, 1, 'exit code 1')
  const lines = output().split('\n').filter((line) => line.startsWith('[league]'))
  t.equal(lines.length, 1, 'one line from the app', { output: output() })
  t.match(lines[0], `Port ${otherPort} is taken by another PostgreSQL, whose data is in ${otherDir}`)
  t.notMatch(output(), /^\s+at /m, 'no stack trace')

  t.ok(await clusterRunning(otherDir), 'the other server still runs')
  const admin = postgres(other.url, { max: 1, onnotice: () => {} })
  try {
    t.same(await admin`select datname from pg_database where datname = 'league'`, [], 'no league database was created in it')
  } finally {
    await admin.end({ timeout: 1 })
  }
  t.notOk(existsSync(ownDir), 'no data directory of its own was created')
})
