// A real PgBouncer (Debian's package) in front of the test server, one per test
// that asks, on a free port; stopped at the test's teardown.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import postgres from 'postgres'
import { debianBinary } from '../setup/debian-package.js'
import { freePort } from './free-port.js'

const run = promisify(execFile)
const READY_WITHIN_MS = 30_000

interface Teardown { teardown (fn: () => unknown): void }

export interface PgBouncerOptions {
  /** The database to pool, on the test server (createDatabase's `url`); its user and password log PgBouncer in. */
  databaseUrl: string
  poolMode: 'transaction' | 'session'
  /** Server connections per pool (default 10). 1 makes every client share one backend. */
  poolSize?: number
}

export interface PgBouncer {
  /** `databaseUrl` through PgBouncer. In transaction mode, give postgres.js `prepare: false`: PgBouncer 1.18 cannot pool prepared statements. */
  url: string
  port: number
  /** What PgBouncer has logged so far (it logs to stderr). */
  log: () => string
}

export async function startPgBouncer (t: Teardown, options: PgBouncerOptions): Promise<PgBouncer> {
  const binary = await debianBinary('pgbouncer', 'pgbouncer')
  const dir = await mkdtemp(join(tmpdir(), 'fsr-pgbouncer-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const port = await freePort()
  const config = join(dir, 'pgbouncer.ini')
  // PgBouncer refuses to run as root; it then runs as nobody, who must be able to read its config.
  await chmod(dir, 0o755)
  await writeFile(config, configFile(options, port), { mode: 0o644 })
  let output = ''
  const child = spawn(binary, [config], { ...await unprivileged(), stdio: ['ignore', 'pipe', 'pipe'] })
  for (const stream of [child.stdout, child.stderr]) stream.on('data', (chunk: Buffer) => { output += chunk.toString() })
  // A test file that crashes never reaches its teardown; PgBouncer must not outlive it.
  const killOnExit = (): void => { child.kill('SIGKILL') }
  process.once('exit', killOnExit)
  t.teardown(async () => {
    process.removeListener('exit', killOnExit)
    await stop(child)
  })
  const url = through(options.databaseUrl, port)
  await waitUntilServing(url, child, () => output)
  return { url, port, log: () => output }
}

function configFile ({ databaseUrl, poolMode, poolSize = 10 }: PgBouncerOptions, port: number): string {
  const server = new URL(databaseUrl)
  const dbname = decodeURIComponent(server.pathname.slice(1))
  const target = {
    host: server.hostname,
    port: server.port || '5432',
    dbname,
    user: decodeURIComponent(server.username),
    password: decodeURIComponent(server.password)
  }
  const connstring = Object.entries(target).filter(([, value]) => value).map(([key, value]) => `${key}=${quote(value)}`).join(' ')
  return [
    '[databases]',
    `${dbname} = ${connstring}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    // Clients log in as anyone; PgBouncer logs in to PostgreSQL as the URL's user.
    'auth_type = any',
    `pool_mode = ${poolMode}`,
    `default_pool_size = ${poolSize}`,
    'max_client_conn = 500',
    // Sent by some drivers (JDBC, psycopg); PgBouncer refuses unknown startup parameters.
    'ignore_startup_parameters = extra_float_digits',
    // A login that fails (the server busy on a noisy machine) is retried at once, not after 15 s.
    'server_login_retry = 1',
    ''
  ].join('\n')
}

/** PgBouncer's quoting in a connection string: single quotes, a quote doubled. */
function quote (value: string): string {
  return `'${value.replace(/'/g, "''")}'`
}

/** `url` with its host and port replaced by PgBouncer's. */
function through (url: string, port: number): string {
  const via = new URL(url)
  via.hostname = '127.0.0.1'
  via.port = String(port)
  return via.toString()
}

async function unprivileged (): Promise<{ uid?: number, gid?: number }> {
  if (userInfo().uid !== 0) return {}
  const id = async (flag: string): Promise<number> => Number((await run('id', [flag, 'nobody'])).stdout)
  return { uid: await id('-u'), gid: await id('-g') }
}

/** Waits until a query through PgBouncer works: it listens and can log in to the server. */
async function waitUntilServing (url: string, child: ChildProcess, output: () => string): Promise<void> {
  let exit: string | null = null
  child.once('exit', (code, signal) => { exit = signal ?? `code ${code}` })
  child.once('error', (err) => { exit = err.message })
  const until = Date.now() + READY_WITHIN_MS
  for (;;) {
    const sql = postgres(url, { max: 1, prepare: false, connect_timeout: 5, onnotice: () => {} })
    const error = await sql`select 1`.then(() => null, (err: unknown) => err)
    await sql.end({ timeout: 1 })
    if (!error) return
    if (exit) throw new Error(`pgbouncer exited (${exit}) before serving:\n${output()}`)
    if (Date.now() > until) throw new Error(`pgbouncer did not serve a query within ${READY_WITHIN_MS} ms: ${String(error)}\n${output()}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/**
 * Stops PgBouncer at once. SIGKILL because the polite signals changed meaning in
 * PgBouncer 1.23 (SIGTERM now waits for every client to leave) and a test's
 * PgBouncer has nothing to flush; its sockets close with it.
 */
async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGKILL')
  await exited
}
