import type { Sql, TransactionSql } from 'postgres'
import type { DataSet } from './data-set.js'
import { hashPassword } from './passwords.js'

/** Every account the import creates gets this password; it is a demo. */
export const DEMO_PASSWORD = 'tennis'

// Serialises two ETL runs; the second one waits and then imports on top.
const IMPORT_LOCK = 4_242_102

export interface ImportReport {
  source: string
  players: number
  leagues: number
  matches: number
  added: string[]
  removed: string[]
  /** Players whose league changed: email, from, to. */
  moved: Array<{ email: string, from: string, to: string }>
  leaguesAdded: string[]
  leaguesRemoved: string[]
  /** Lowest and highest player id handed out by this import. */
  idRange: [number, number] | null
  sessionVersion: number
}

interface PlayerRow { id: number, email: string, league_id: string }

/**
 * Replaces the league data with `data` in one transaction: truncate, re-insert
 * (so every player gets a fresh id), then raise `session_version` with the plain
 * UPDATE an ETL would run. Any failure rolls all of it back, the version included,
 * and the trigger's NOTIFY is only delivered on commit.
 */
export async function importDataSet (sql: Sql, data: DataSet, options: { onlyIfEmpty?: boolean } = {}): Promise<ImportReport | null> {
  const source = data.dir
  return await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${IMPORT_LOCK})`
    // Checked under the lock, so two app processes starting at once load the first data set once.
    if (options.onlyIfEmpty === true && (await tx`select 1 from leagues limit 1`).length > 0) return null
    const before = await tx<PlayerRow[]>`select id, email, league_id from players`
    const leaguesBefore = (await tx<{ id: string }[]>`select id from leagues`).map((row) => row.id)

    await tx`truncate standings, matches, players, leagues`
    await insertLeagues(tx, data)
    const after = await insertPlayers(tx, data)
    const ids = new Map(after.map((row) => [row.email, row.id]))
    await insertMatches(tx, data, ids)
    await insertStandings(tx, data, ids)
    await createMissingAccounts(tx, data)

    const [setting] = await tx<{ value: string }[]>`
      UPDATE system_settings SET value = (value::bigint + 1)::text WHERE key = 'session_version' RETURNING value`
    if (setting === undefined) throw new Error('system_settings has no session_version row; run the migration first')
    await tx`insert into imports (source, players, session_version) values (${source}, ${after.length}, ${setting.value})`

    return report(source, data, before, after, leaguesBefore, Number(setting.value))
  })
}

async function insertLeagues (tx: TransactionSql, data: DataSet): Promise<void> {
  // Each row object holds exactly the columns to insert.
  if (data.leagues.length === 0) return
  const rows = data.leagues.map((league) => ({ id: league.id, name: league.name, season: league.season }))
  await tx`insert into leagues ${tx(rows)}`
}

async function insertPlayers (tx: TransactionSql, data: DataSet): Promise<PlayerRow[]> {
  if (data.players.length === 0) return []
  const rows = data.players.map((player) => ({ email: player.email, name: player.name, league_id: player.league, rating: player.rating }))
  return await tx<PlayerRow[]>`
    insert into players ${tx(rows)} returning id, email, league_id`
}

function idOf (ids: Map<string, number>, email: string, where: string): number {
  const id = ids.get(email)
  if (id === undefined) throw new Error(`${where} refers to ${email}, who is not in players.json`)
  return id
}

async function insertMatches (tx: TransactionSql, data: DataSet, ids: Map<string, number>): Promise<void> {
  if (data.matches.length === 0) return
  const rows = data.matches.map((match, index) => ({
    league_id: match.league,
    played_on: match.playedOn,
    home_player_id: idOf(ids, match.home, `matches[${index}]`),
    away_player_id: idOf(ids, match.away, `matches[${index}]`),
    winner_player_id: idOf(ids, match.winner, `matches[${index}]`),
    score: match.score
  }))
  await tx`insert into matches ${tx(rows)}`
}

async function insertStandings (tx: TransactionSql, data: DataSet, ids: Map<string, number>): Promise<void> {
  if (data.standings.length === 0) return
  const rows = data.standings.map((row, index) => ({
    league_id: row.league,
    player_id: idOf(ids, row.email, `standings[${index}]`),
    played: row.played,
    won: row.won,
    lost: row.lost,
    points: row.points
  }))
  await tx`insert into standings ${tx(rows)}`
}

/** Accounts outlive imports: a player who leaves keeps an account that no longer finds a player. */
async function createMissingAccounts (tx: TransactionSql, data: DataSet): Promise<void> {
  const emails = data.players.map((player) => player.email)
  if (emails.length === 0) return
  const existing = new Set((await tx<{ email: string }[]>`select email from accounts where email in ${tx(emails)}`).map((row) => row.email))
  const missing = emails.filter((email) => !existing.has(email))
  if (missing.length === 0) return
  const rows = await Promise.all(missing.map(async (email) => ({ email, password_hash: await hashPassword(DEMO_PASSWORD) })))
  await tx`insert into accounts ${tx(rows)} on conflict (email) do nothing`
}

function report (
  source: string, data: DataSet, before: PlayerRow[], after: PlayerRow[], leaguesBefore: string[], sessionVersion: number
): ImportReport {
  const old = new Map(before.map((row) => [row.email, row]))
  const now = new Map(after.map((row) => [row.email, row]))
  const leaguesAfter = data.leagues.map((league) => league.id)
  const afterIds = after.map((row) => row.id)
  return {
    source,
    players: after.length,
    leagues: data.leagues.length,
    matches: data.matches.length,
    added: after.filter((row) => !old.has(row.email)).map((row) => row.email),
    removed: before.filter((row) => !now.has(row.email)).map((row) => row.email),
    moved: after.flatMap((row) => {
      const was = old.get(row.email)
      return was !== undefined && was.league_id !== row.league_id ? [{ email: row.email, from: was.league_id, to: row.league_id }] : []
    }),
    leaguesAdded: leaguesAfter.filter((id) => !leaguesBefore.includes(id)),
    leaguesRemoved: leaguesBefore.filter((id) => !leaguesAfter.includes(id)),
    idRange: afterIds.length > 0 ? [Math.min(...afterIds), Math.max(...afterIds)] : null,
    sessionVersion
  }
}

/** The report as the lines the ETL prints. */
export function describeImport (report: ImportReport): string[] {
  const lines = [
    `Imported ${report.source}: ${report.leagues} leagues, ${report.players} players, ${report.matches} matches`,
    report.idRange === null ? 'No players' : `Player ids are now ${report.idRange[0]}–${report.idRange[1]} (every player got a fresh id)`
  ]
  for (const id of report.leaguesAdded) lines.push(`League added: ${id}`)
  for (const id of report.leaguesRemoved) lines.push(`League removed: ${id}`)
  // A first import adds everyone; a list of 60 names says less than the count.
  if (report.added.length > 10) lines.push(`${report.added.length} players added`)
  else for (const email of report.added) lines.push(`Player added: ${email}`)
  for (const email of report.removed) lines.push(`Player removed: ${email}`)
  for (const move of report.moved) lines.push(`Player moved: ${move.email} ${move.from} → ${move.to}`)
  lines.push(`session_version is now ${report.sessionVersion}`)
  return lines
}
