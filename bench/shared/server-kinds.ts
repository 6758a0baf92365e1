// What the scenarios and bench/workers/server.ts agree on; importing the server itself would start one.

/** A bare, B this plugin, C pull session_version per request, D pull the user's row per request. */
export type ServerKind = 'A' | 'B' | 'C' | 'D'
export const SERVER_KINDS: readonly ServerKind[] = ['A', 'B', 'C', 'D']
/** How the report names each kind. */
export const SERVER_NAMES: Record<ServerKind, string> = { A: 'A bare', B: 'B plugin', C: 'C pull version', D: 'D pull user' }
export const MAX_CONCURRENT_REFRESHES = 16
/** The app's own pool: the pull hooks (C, D) and B's refresh use it. */
export const POOL_SIZE = 16
/** B with the event stream (`server.ts B <url> events`): its path and the instance's limit on streams. */
export const EVENTS_PATH = '/session-refresh/events'
export const MAX_EVENT_STREAMS = 20_000

export interface Counters {
  /** Queries the C/D hooks sent. */
  hookQueries: number
  /** Queries B's plugin sent on its own connections (postgres.js `debug` callback), by kind. */
  pluginQueries: number
  /** ...of which heartbeats (`pg_notify` to its own channel), sent every `heartbeatInterval`. */
  pluginHeartbeats: number
  /** ...of which re-reads (version, queue usage, per-user versions: four queries), every `pollInterval` or on catch-up. */
  pluginReads: number
  /** Calls of B's refresh function. */
  refreshCalls: number
  /** Most refresh calls running at once since the last reset. */
  refreshPeak: number
  refreshRunning: number
  /** Total and longest time spent inside B's refresh function, ms. */
  refreshMs: number
  refreshMaxMs: number
  /** The version B holds in memory, else null. */
  version: number | null
  /** B's status().refreshes, else null. */
  pluginRefreshes: number | null
  /** B's status().userVersions (users changed within one session lifetime it tracks), else null. */
  userVersions: number | null
  /** Sessions in the in-memory store. */
  sessions: number
  /** CPU time this process has used, user plus system, µs (process.cpuUsage()). */
  cpuMicros: number
}
