// The bench's databases: one per run (and one more for per-user invalidation), on
// the server test/setup/server.ts gives (DATABASE_URL, else an embedded PostgreSQL).
import { randomBytes } from 'node:crypto'
import postgres, { type Sql } from 'postgres'
import type { ServerInfo } from '../../test/setup/server.js'

export interface Database { url: string, sql: Sql, name: string, postgresVersion: string, maxConnections: number }

export function databaseUrl (serverUrl: string, database: string): string {
  const url = new URL(serverUrl)
  url.pathname = `/${database}`
  return url.toString()
}

/** A fresh database, migrated, with `users` rows in bench_users (the users the app servers log in and refresh). */
export async function createDatabase (server: ServerInfo, users: number): Promise<Database> {
  const name = `fsr_bench_${randomBytes(6).toString('hex')}`
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`create database ${name}`)
  } finally {
    await admin.end()
  }
  const url = databaseUrl(server.url, name)
  const sql = postgres(url, { max: 4, onnotice: () => {} })
  // Loaded here, not at the top: the scale bench uses databaseUrl() and may measure another checkout's lib/.
  const { migrate } = await import('../../lib/index.js')
  await migrate(sql)
  await sql`create table bench_users (id integer primary key, name text not null)`
  await sql`insert into bench_users select i, 'user ' || i from generate_series(1, ${users}::int) as i`
  await sql`analyze bench_users`
  const [info] = await sql<{ version: string, max: string }[]>`
    select current_setting('server_version') as version, current_setting('max_connections') as max`
  return { url, sql, name, postgresVersion: info!.version, maxConnections: Number(info!.max) }
}

/** Databases created besides the main one, dropped by whoever made them or, on an interrupt, by the cleanup. */
export const extraDatabases = new Set<Database>()

export async function dropDatabase (server: ServerInfo, db: Database): Promise<void> {
  extraDatabases.delete(db)
  await db.sql.end({ timeout: 1 })
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`drop database if exists ${db.name} with (force)`)
  } finally {
    await admin.end()
  }
}
