import { readFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'

/** One week's export of the league feed, as it sits in `data/<week>/*.json`. Everything refers to players by email. */
export interface DataSet {
  dir: string
  leagues: Array<{ id: string, name: string, season: string }>
  players: Array<{ email: string, name: string, league: string, rating: number }>
  matches: Array<{ league: string, playedOn: string, home: string, away: string, winner: string, score: string }>
  standings: Array<{ email: string, league: string, played: number, won: number, lost: number, points: number }>
}

export const DATA_DIR = new URL('../data/', import.meta.url)

type Shape = Record<string, 'string' | 'number'>

/**
 * Reads and shape-checks the four files. References between them (a player's
 * league, a match's players) are left to the database's foreign keys, inside
 * the import transaction: one place enforces them, and a bad file rolls back.
 */
export async function readDataSet (dir: string): Promise<DataSet> {
  const path = resolve(dir)
  return {
    dir: path,
    leagues: await readList(path, 'leagues', { id: 'string', name: 'string', season: 'string' }),
    players: await readList(path, 'players', { email: 'string', name: 'string', league: 'string', rating: 'number' }),
    matches: await readList(path, 'matches', { league: 'string', playedOn: 'string', home: 'string', away: 'string', winner: 'string', score: 'string' }),
    standings: await readList(path, 'standings', { email: 'string', league: 'string', played: 'number', won: 'number', lost: 'number', points: 'number' })
  }
}

async function readList<T> (dir: string, name: string, shape: Shape): Promise<T[]> {
  const file = join(dir, `${name}.json`)
  const list: unknown = JSON.parse(await readFile(file, 'utf8'))
  if (!Array.isArray(list)) throw new Error(`${file}: expected a JSON array`)
  list.forEach((item: unknown, index) => {
    for (const [field, type] of Object.entries(shape)) {
      const value = typeof item === 'object' && item !== null ? (item as Record<string, unknown>)[field] : undefined
      if (typeof value !== type) throw new Error(`${file}[${index}].${field}: expected a ${type}, got ${JSON.stringify(value)}`)
    }
  })
  return list as T[]
}
