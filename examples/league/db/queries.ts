import type { Sql } from 'postgres'

export interface Account { id: number, email: string, passwordHash: string }
export interface Player { id: number, email: string, name: string, leagueId: string, leagueName: string, rating: string }
export interface League { id: string, name: string, season: string }
export interface StandingRow { position: number, playerId: number, name: string, played: number, won: number, lost: number, points: number }
export interface MatchRow { playedOn: string, home: string, away: string, winner: string, score: string }

/** The few reads the app makes; every one takes the stable key it has (email, league id). */
export function leagueQueries (sql: Sql) {
  return {
    async account (email: string): Promise<Account | null> {
      const [row] = await sql<Account[]>`
        select id, email, password_hash as "passwordHash" from accounts where email = ${email}`
      return row ?? null
    },

    /** The player behind an email in the current data, or null when the last import dropped them. */
    async playerByEmail (email: string): Promise<Player | null> {
      const [row] = await sql<Player[]>`
        select p.id, p.email, p.name, p.league_id as "leagueId", l.name as "leagueName", p.rating::text as rating
        from players p join leagues l on l.id = p.league_id
        where p.email = ${email}`
      return row ?? null
    },

    async league (id: string): Promise<League | null> {
      const [row] = await sql<League[]>`select id, name, season from leagues where id = ${id}`
      return row ?? null
    },

    async leagues (): Promise<League[]> {
      return await sql<League[]>`select id, name, season from leagues order by name`
    },

    async standings (leagueId: string): Promise<StandingRow[]> {
      return await sql<StandingRow[]>`
        select (row_number() over (order by s.points desc, s.won desc, p.name))::int as position,
               p.id as "playerId", p.name, s.played, s.won, s.lost, s.points
        from standings s join players p on p.id = s.player_id
        where s.league_id = ${leagueId}
        order by position`
    },

    async matchesOf (playerId: number): Promise<MatchRow[]> {
      return await sql<MatchRow[]>`
        select to_char(m.played_on, 'YYYY-MM-DD') as "playedOn", h.name as home, a.name as away, w.name as winner, m.score
        from matches m
        join players h on h.id = m.home_player_id
        join players a on a.id = m.away_player_id
        join players w on w.id = m.winner_player_id
        where ${playerId} in (m.home_player_id, m.away_player_id)
        order by m.played_on desc, m.id desc`
    }
  }
}

export type LeagueQueries = ReturnType<typeof leagueQueries>
