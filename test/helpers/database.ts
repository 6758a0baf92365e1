import { randomBytes } from 'node:crypto'
import postgres, { type Sql } from 'postgres'
import { migrate } from '../../lib/index.js'
import { readServerInfo } from '../setup/server.js'

interface Teardown { teardown (fn: () => unknown): void }

export interface TestDatabase {
  /** URL of a database of this test's own, migrated. */
  url: string
  /** A client on it, ended at teardown. */
  sql: Sql
}

export function databaseUrl (serverUrl: string, database: string): string {
  const url = new URL(serverUrl)
  url.pathname = `/${database}`
  return url.toString()
}

/** Creates a fresh, migrated database for one test file, so files can run in parallel. */
export async function createDatabase (t: Teardown, { migrated = true } = {}): Promise<TestDatabase> {
  const server = await readServerInfo()
  const name = `fsr_test_${randomBytes(6).toString('hex')}`
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database ${name}`)
  await admin.end()
  const url = databaseUrl(server.url, name)
  const sql = postgres(url, { onnotice: () => {} })
  if (migrated) await migrate(sql)
  t.teardown(async () => {
    await sql.end({ timeout: 1 })
    const cleanup = postgres(server.url, { max: 1, onnotice: () => {} })
    await cleanup.unsafe(`drop database if exists ${name} with (force)`)
    await cleanup.end()
  })
  return { url, sql }
}

/** Waits until `check` holds, polling; fails with `what` after `ms`. */
export async function eventually (what: string, check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const until = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}
