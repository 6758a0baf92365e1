import type { Sql } from 'postgres'
import { migrate } from '../../../lib/index.js'

// Any number the league example's instances agree on; it serialises two
// `npm start` processes migrating the same database at once.
const SCHEMA_LOCK = 4_242_101

/**
 * The league's own tables. Player ids come from a sequence that an import never
 * resets, so every re-import hands out fresh ids, as the real upstream feed does.
 * Accounts (logins) are keyed by email and outlive imports; the session table is
 * connect-pg-simple's, created here so the app needs no file from node_modules.
 */
export const LEAGUE_SCHEMA = `
CREATE SEQUENCE IF NOT EXISTS player_id_seq START WITH 1001;

CREATE TABLE IF NOT EXISTS leagues (
  id     TEXT PRIMARY KEY,
  name   TEXT NOT NULL,
  season TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS players (
  id        INTEGER PRIMARY KEY DEFAULT nextval('player_id_seq'),
  email     TEXT NOT NULL UNIQUE,
  name      TEXT NOT NULL,
  league_id TEXT NOT NULL REFERENCES leagues (id),
  rating    NUMERIC(3, 1) NOT NULL
);

CREATE TABLE IF NOT EXISTS matches (
  id               SERIAL PRIMARY KEY,
  league_id        TEXT NOT NULL REFERENCES leagues (id),
  played_on        DATE NOT NULL,
  home_player_id   INTEGER NOT NULL REFERENCES players (id),
  away_player_id   INTEGER NOT NULL REFERENCES players (id),
  winner_player_id INTEGER NOT NULL REFERENCES players (id),
  score            TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS standings (
  league_id TEXT NOT NULL REFERENCES leagues (id),
  player_id INTEGER NOT NULL REFERENCES players (id),
  played    INTEGER NOT NULL,
  won       INTEGER NOT NULL,
  lost      INTEGER NOT NULL,
  points    INTEGER NOT NULL,
  PRIMARY KEY (league_id, player_id)
);

CREATE TABLE IF NOT EXISTS accounts (
  id            SERIAL PRIMARY KEY,
  email         TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  created_at    TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS imports (
  id              SERIAL PRIMARY KEY,
  source          TEXT NOT NULL,
  players         INTEGER NOT NULL,
  session_version TEXT NOT NULL,
  imported_at     TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS session (
  sid    VARCHAR NOT NULL PRIMARY KEY,
  sess   JSON NOT NULL,
  expire TIMESTAMP(6) NOT NULL
);
CREATE INDEX IF NOT EXISTS "IDX_session_expire" ON session (expire);
`

/** Applies the plugin's migration, then the league's tables. Safe to run again and from two processes at once. */
export async function migrateLeague (sql: Sql): Promise<void> {
  await migrate(sql)
  await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${SCHEMA_LOCK})`
    await tx.unsafe(LEAGUE_SCHEMA)
  })
}

/** True when no data set has been imported yet. */
export async function isEmpty (sql: Sql): Promise<boolean> {
  const [row] = await sql<{ count: number }[]>`select count(*)::int as count from leagues`
  return row?.count === 0
}
