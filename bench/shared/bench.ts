// What every scenario is handed: the run's sizes, its database and the server it is on.
import type { ServerInfo } from '../../test/setup/server.js'
import type { BenchConfig } from './config.js'
import type { Database } from './database.js'

export interface Bench {
  config: BenchConfig
  /** The database every scenario shares (per-user invalidation makes one more beside it). */
  db: Database
  server: ServerInfo
  /** Rows in bench_users, for a database made beside db. */
  users: number
}
