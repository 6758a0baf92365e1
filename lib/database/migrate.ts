import { readdir, readFile } from 'node:fs/promises'
import type { Sql, TransactionSql } from 'postgres'
import { InvalidOptionError, MissingTableError } from '../errors.js'
import { MAX_SCHEMA_BYTES } from './channel.js'
import { parseVersionOrThrow } from './version.js'

const sqlDir = new URL('../../sql/', import.meta.url)

// Any number that is the same for every instance; with the schema's hash it
// serialises concurrent migrations of one schema.
const MIGRATION_LOCK = 4_242_001

/** Where the plugin's tables live: one schema per tenant, `public` unless told otherwise. */
export interface SchemaOption {
  /** @default 'public' */
  schema?: string
}

export const DEFAULT_SCHEMA = 'public'

/** The SQL files, in the order they apply. */
export async function migrationFiles (): Promise<string[]> {
  return (await readdir(sqlDir)).filter((name) => name.endsWith('.sql')).sort()
}

/**
 * Creates or upgrades the plugin's tables, triggers and functions in `schema`,
 * and returns the files it applied (none when the schema is up to date).
 *
 * An up-to-date schema is only read: no DDL, no lock that a running app or ETL
 * holds, and no right beyond SELECT on `session_refresh_migrations`, so an app
 * role can run it at every start. Otherwise the files not applied yet run in
 * one transaction, which needs the owner's rights.
 */
export async function migrate (sql: Sql, { schema = DEFAULT_SCHEMA }: SchemaOption = {}): Promise<string[]> {
  checkSchema(schema)
  const files = await migrationFiles()
  if ((await pending(sql, schema, files)).length === 0 && await rowsPresent(sql, schema)) return []
  return sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${MIGRATION_LOCK}, hashtext(${schema}))`
    // Give up rather than queue behind a long ETL, blocking every reader meanwhile.
    await tx`set local lock_timeout = '10s'`
    // Only when missing: CREATE SCHEMA needs a right on the database that a schema's owner may lack.
    const [exists] = await tx`select 1 from pg_namespace where nspname = ${schema}`
    if (exists === undefined) await tx`create schema ${tx(schema)}`
    // Every unqualified name below lands in the schema, and every function keeps this path.
    await tx`select set_config('search_path', ${quoteIdentifier(schema) + ', pg_temp'}, true)`
    await tx`create table if not exists session_refresh_migrations (
      name text primary key, applied_at timestamptz not null default now())`
    // Read again under the lock: a concurrent migration may have applied some meanwhile.
    // A table dropped since is made again by every file (they are idempotent).
    const todo = await tablesPresent(tx) ? await pending(tx, schema, files) : files
    for (const file of todo) {
      await tx.unsafe(await readFile(new URL(file, sqlDir), 'utf8'))
      await tx`insert into session_refresh_migrations (name) values (${file}) on conflict (name) do nothing`
    }
    // Rows deleted since (a TRUNCATE, a restore), as the missing-table error
    // says to migrate. The trigger gives the version a value never given out before.
    await tx`insert into system_settings (key, value, description)
             values ('session_version', '1', 'Version number incremented after each ETL run') on conflict (key) do nothing`
    // A logout clock made again from 0 would stamp new logins below the logouts
    // still in session_user_versions, and log them out: it goes on from there.
    await tx`insert into session_refresh_state (logout_seq, users_epoch)
             select session_refresh_next(coalesce(max(logout_seq), 0)), session_refresh_next(0) from session_user_versions
             on conflict do nothing`
    return todo
  })
}

/** Whether the rows every instance reads are there, and the per-user table. */
async function rowsPresent (sql: Sql, schema: string): Promise<boolean> {
  try {
    const [row] = await sql<Array<{ present: boolean }>>`
      select exists (select 1 from ${sql(schema)}.system_settings where key = 'session_version')
         and exists (select 1 from ${sql(schema)}.session_refresh_state)
         and to_regclass(${quoteIdentifier(schema) + '.session_user_versions'}) is not null as present`
    return row!.present
  } catch (err) {
    // 42P01: a table was dropped; the migration makes it again.
    if ((err as { code?: unknown }).code === '42P01') return false
    throw err
  }
}

/** Whether every table is there, in the schema search_path points at. */
async function tablesPresent (tx: TransactionSql): Promise<boolean> {
  const [row] = await tx<Array<{ present: boolean }>>`
    select to_regclass('system_settings') is not null and to_regclass('session_user_versions') is not null
       and to_regclass('session_refresh_state') is not null as present`
  return row!.present
}

/** The files not applied yet to `schema`; every file when nothing was. */
async function pending (sql: Sql | TransactionSql, schema: string, files: string[]): Promise<string[]> {
  const [found] = await sql<{ table: string | null }[]>`
    select to_regclass(${quoteIdentifier(schema) + '.session_refresh_migrations'})::text as table`
  if (found?.table == null) return files
  const applied = await sql<{ name: string }[]>`select name from ${sql(schema)}.session_refresh_migrations`
  const done = new Set(applied.map((row) => row.name))
  return files.filter((file) => !done.has(file))
}

/** Reads the current session version. Throws a coded error when it is missing or malformed. */
export async function readSessionVersion (sql: Sql, { schema = DEFAULT_SCHEMA }: SchemaOption = {}): Promise<number> {
  checkSchema(schema)
  const rows = await withTableCheck(sql<{ value: string }[]>`
    select value from ${sql(schema)}.system_settings where key = 'session_version'`)
  if (rows[0] === undefined) throw new MissingTableError()
  return parseVersionOrThrow(rows[0].value)
}

/**
 * Gives the session version a new value, as an ETL does, and returns it. The
 * trigger makes it at least the old value + 1 and at least the server clock in
 * microseconds, so a value never repeats, even after a restore.
 */
export async function bumpSessionVersion (sql: Sql, { schema = DEFAULT_SCHEMA }: SchemaOption = {}): Promise<number> {
  checkSchema(schema)
  const rows = await withTableCheck(sql<{ value: string }[]>`
    update ${sql(schema)}.system_settings set value = (value::bigint + 1)::text
    where key = 'session_version' returning value`)
  if (rows[0] === undefined) throw new MissingTableError()
  return parseVersionOrThrow(rows[0].value)
}

/** Turns PostgreSQL's "undefined table" and "no session_version row" into the coded error that says to migrate. */
export async function withTableCheck<T> (query: PromiseLike<T>): Promise<T> {
  try {
    return await query
  } catch (err) {
    // 42P01: undefined_table; P0002: the trigger's "system_settings has no session_version row".
    const code = (err as { code?: unknown }).code
    if (code === '42P01' || code === 'P0002') throw new MissingTableError()
    throw err
  }
}

/**
 * The schema names the plugin and the command take: PostgreSQL allows longer
 * ones, but the schema's NOTIFY channel (session_refresh.<schema>) would then
 * pass 63 bytes, and every bump and logout would fail.
 */
function checkSchema (schema: unknown): void {
  if (typeof schema !== 'string' || schema.length === 0 || Buffer.byteLength(schema) > MAX_SCHEMA_BYTES) {
    throw new InvalidOptionError(`expected \`schema\` to be a schema name of 1 to ${MAX_SCHEMA_BYTES} bytes, got ${JSON.stringify(schema)}`)
  }
}

/** A schema name as SQL text, for the few places that take a name as a value (search_path, to_regclass). */
export function quoteIdentifier (name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}
