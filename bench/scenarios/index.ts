// The scenarios in the order they run and report: each measures, then says what it
// measured (rows for the Results table, a Setup bullet, a table by round).
import type { Bench } from '../shared/bench.js'
import type { BenchConfig } from '../shared/config.js'
import type { Parts } from '../shared/report.js'
import { eventsByRound, eventsRows, eventsSetup, measureEvents, type Events } from './events.js'
import { measureMemory, memoryRows, memorySetup, type Memory } from './memory.js'
import { measurePerUser, perUserByRound, perUserRows, perUserSetup, type Invalidation } from './per-user.js'
import { measurePropagation, propagationRows, propagationRuns, propagationSetup, type Propagations } from './propagation.js'
import { FRESH_SESSIONS, measureStorm, stormRows, stormSetup, type Storm } from './storm.js'
import { measureThroughput, throughputByRound, throughputRows, throughputSetup, type ServerFigures } from './throughput.js'

/** `--only` names. `scale` (bench/scenarios/scale.ts) runs only when named, with clusters of its own. */
export const SECTIONS = ['throughput', 'per-user', 'propagation', 'storm', 'memory', 'events', 'scale'] as const
export type Section = typeof SECTIONS[number]
/** Earlier names still understood. */
export const ALIASES: Record<string, Section> = { invalidation: 'per-user' }

export interface Measured {
  throughput: ServerFigures[], perUser: Invalidation | null, propagation: Propagations, storm: Storm | null, memory: Memory[], events: Events | null
}

/** Rows bench_users must hold: every user a scenario logs in. */
export const usersNeeded = (config: BenchConfig): number =>
  Math.max(config.storm + FRESH_SESSIONS, config.memory, config.invalidation.users, config.events.streams + 1) + 10

export async function measure (bench: Bench, runs: (section: Section) => boolean): Promise<Measured> {
  const throughput = runs('throughput') ? await measureThroughput(bench) : []
  // Before propagation and the storm, while nothing has changed in db yet.
  const perUser = runs('per-user') ? await measurePerUser(bench) : null
  const propagation = runs('propagation') ? await measurePropagation(bench) : { results: [], skipped: [] }
  const storm = runs('storm') ? await measureStorm(bench) : null
  const memory = runs('memory') ? await measureMemory(bench) : []
  const events = runs('events') ? await measureEvents(bench) : null
  return { throughput, perUser, propagation, storm, memory, events }
}

/** What the report says of it, in the report's order. Only a full run writes RESULTS.md, so every scenario is there then. */
export function compose (m: Measured, config: BenchConfig): Parts {
  const setup = [
    throughputSetup(config),
    ...(m.perUser ? [perUserSetup(m.perUser, config)] : []),
    propagationSetup, stormSetup(config), memorySetup,
    ...(m.events ? [eventsSetup(m.events, config)] : [])
  ]
  const rows = [
    ...throughputRows(m.throughput), ...(m.perUser ? perUserRows(m.perUser) : []), ...propagationRows(m.propagation),
    ...(m.storm ? stormRows(m.storm) : []), ...memoryRows(m.memory), ...(m.events ? eventsRows(m.events) : [])
  ]
  const sections = [
    ...(m.throughput.length > 0 ? [throughputByRound(m.throughput)] : []),
    ...(m.perUser ? [perUserByRound(m.perUser)] : []),
    propagationRuns(m.propagation),
    ...(m.events ? [eventsByRound(m.events)] : [])
  ]
  return { setup, rows, sections }
}
