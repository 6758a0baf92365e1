import { randomBytes } from 'node:crypto'
import postgres, { type Sql } from 'postgres'
import type { TestDatabase } from './database.js'

interface Teardown { teardown (fn: () => unknown): void }

export interface TestRole {
  /** A name of this test run's own, such as `fsr_app_3f2a9c1b`. */
  name: string
  /** The test database, logged in as this role (with a password: the embedded server asks for one). */
  url: string
  /** A client logged in as this role, ended at teardown. */
  connect (t: Teardown): Sql
}

/**
 * A login role with no rights beyond PUBLIC's. Roles belong to the whole server,
 * which other test files and other runs share, so the name is random; at
 * teardown, what the role owns or was granted in the database is dropped, then the role.
 */
export async function createRole (t: Teardown, db: TestDatabase, label: string): Promise<TestRole> {
  const name = `fsr_${label}_${randomBytes(4).toString('hex')}`
  const password = randomBytes(12).toString('hex')
  await db.sql.unsafe(`create role ${name} login password '${password}'`)
  // Registered before any client of the role: teardowns run last-in first-out, so its clients end first.
  t.teardown(async () => {
    const admin = postgres(db.url, { max: 1, onnotice: () => {} })
    try {
      await admin.unsafe(`drop owned by ${name} cascade`)
      await admin.unsafe(`drop role ${name}`)
    } finally {
      await admin.end()
    }
  })
  const url = new URL(db.url)
  url.username = name
  url.password = password
  return {
    name,
    url: url.toString(),
    connect: (t) => {
      const sql = postgres(url.toString(), { max: 1, onnotice: () => {} })
      t.teardown(() => sql.end({ timeout: 1 }))
      return sql
    }
  }
}

/**
 * The rights the README documents for an app role, on a schema the owner
 * migrated; run as the owner. The app LISTENs (no right needed), reads the
 * tables (migrate() on an up-to-date schema only reads) and changes users
 * through the functions.
 */
export function appGrants (schema: string, app: string): string[] {
  const s = `"${schema}"`
  return [
    `GRANT USAGE ON SCHEMA ${s} TO ${app}`,
    `GRANT SELECT ON ${s}.system_settings, ${s}.session_user_versions, ${s}.session_refresh_state, ${s}.session_refresh_migrations TO ${app}`,
    `GRANT EXECUTE ON FUNCTION ${s}.session_refresh_user(text), ${s}.session_logout_user(text), ` +
      `${s}.session_change_user(text, boolean), ${s}.session_change_user(text, boolean, text, bigint, text[]) TO ${app}`
  ]
}

/** The rights of an ETL role: the one UPDATE of the README. */
export function etlGrants (schema: string, etl: string): string[] {
  const s = `"${schema}"`
  return [
    `GRANT USAGE ON SCHEMA ${s} TO ${etl}`,
    `GRANT SELECT, UPDATE ON ${s}.system_settings TO ${etl}`
  ]
}
