import { readdir, readFile } from 'node:fs/promises'
import type { Sql } from 'postgres'
import { MissingTableError } from './errors.js'
import { parseVersionOrThrow } from './version.js'

const sqlDir = new URL('../sql/', import.meta.url)

// Any number that is the same for every instance; it serialises concurrent migrations.
const MIGRATION_LOCK = 4_242_001

/**
 * Applies every file in `sql/`, in name order, in one transaction.
 * Idempotent: running it again keeps the current version. Returns the files applied.
 */
export async function migrate (sql: Sql): Promise<string[]> {
  const files = (await readdir(sqlDir)).filter((name) => name.endsWith('.sql')).sort()
  await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${MIGRATION_LOCK})`
    // Give up rather than queue behind a long ETL, blocking every reader meanwhile.
    await tx`set local lock_timeout = '10s'`
    for (const file of files) {
      await tx.unsafe(await readFile(new URL(file, sqlDir), 'utf8'))
    }
  })
  return files
}

/** Reads the current session version. Throws a coded error when it is missing or malformed. */
export async function readSessionVersion (sql: Sql): Promise<number> {
  const rows = await withTableCheck(sql<{ value: string }[]>`
    select value from system_settings where key = 'session_version'`)
  if (rows[0] === undefined) throw new MissingTableError()
  return parseVersionOrThrow(rows[0].value)
}

/** Raises the session version by one, as an ETL would, and returns the new version. */
export async function bumpSessionVersion (sql: Sql): Promise<number> {
  const rows = await withTableCheck(sql<{ value: string }[]>`
    update system_settings set value = (value::bigint + 1)::text
    where key = 'session_version' returning value`)
  if (rows[0] === undefined) throw new MissingTableError()
  return parseVersionOrThrow(rows[0].value)
}

/** Turns PostgreSQL's "undefined table" into the coded error that says to migrate. */
export async function withTableCheck<T> (query: PromiseLike<T>): Promise<T> {
  try {
    return await query
  } catch (err) {
    // 42P01: undefined_table
    if ((err as { code?: unknown }).code === '42P01') throw new MissingTableError()
    throw err
  }
}
