// The scale bench's flags (see bench/scenarios/scale.ts) and the names and constants its parts share.
import { execFileSync } from 'node:child_process'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { logger } from '../../shared/log.js'

export const RESULTS_FILE = new URL('../../RESULTS.md', import.meta.url)
const DEFAULT_PLUGIN = fileURLToPath(new URL('../../../lib/index.ts', import.meta.url))
export const PLUGIN_APPLICATION_NAME = 'fastify-session-refresh'
export const BENCH_APPLICATION_NAME = 'fsr-scale-bench'
/** The app's own pools of the `sql` variant, and the bare listeners, as pg_stat_activity shows them. */
export const APP_APPLICATION_NAME = 'fsr-scale-app'
export const BARE_APPLICATION_NAME = 'fsr-scale-bare'
export const CLK_TCK = (() => { try { return Number(execFileSync('getconf', ['CLK_TCK']).toString()) || 100 } catch { return 100 } })()
/** Rows of the plain-write workload's table. */
export const SCALE_ROWS = 10_000

export const log = logger('scale: ', 6)

export interface Config {
  plugin: string
  label: string
  sizes: number[]
  workers: number
  bumps: number
  warmupBumps: number
  idleSeconds: number
  settleSeconds: number
  tpsSeconds: number
  clients: number
  bumpTimeoutMs: number
  propagationCapMs: number
  startTimeoutMs: number
  connectTimeout: number
  pluginOptions: Record<string, unknown>
  embedded: boolean
  results: string
  /** A second propagation phase, beside N bare postgres.js listeners, of `bareBumps` bumps. */
  bare: boolean
  bareBumps: number
  /** The per-user workload: changes a second, for how long, and how long after its COMMIT a change may take to reach everyone. */
  userChanges: { rate: number, seconds: number, deadlineMs: number }
  /** After the rest, the N instances again with the `sql` option (an app pool of one connection each). */
  sqlVariant: boolean
  /** The idle window of the poll mode and of the `sql` variant, s. */
  variantIdleSeconds: number
}

export function parseConfig (argv: string[]): Config {
  const flag = (name: string): string | undefined => argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3)
  const int = (name: string, fallback: number): number => {
    const raw = flag(name)
    if (raw === undefined) return fallback
    const value = Number(raw)
    if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name}: expected a positive number, got ${raw}`)
    return value
  }
  const sizes = (flag('scale-n') ?? '1,16,64,256,1000').split(',').map((s) => {
    const n = Number(s.trim())
    if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--scale-n: ${s} is not a positive integer`)
    return n
  })
  const pluginOptions: Record<string, unknown> = { connectTimeout: int('scale-connect-timeout', 120_000) }
  for (const [name, option] of [['scale-heartbeat-interval', 'heartbeatInterval'], ['scale-heartbeat-timeout', 'heartbeatTimeout'], ['scale-poll-interval', 'pollInterval'], ['scale-user-poll-interval', 'userPollInterval']] as const) {
    if (flag(name) !== undefined) pluginOptions[option] = int(name, 0)
  }
  const label = flag('label') ?? 'current'
  if (!/^[\w.-]+$/.test(label)) throw new Error(`--label: letters, digits, '.', '_' and '-' only, got ${label}`)
  return {
    plugin: resolve(flag('plugin') ?? DEFAULT_PLUGIN),
    label,
    sizes: [...new Set(sizes)].sort((a, b) => a - b),
    workers: int('scale-workers', 8),
    bumps: int('scale-bumps', 100),
    warmupBumps: 3,
    idleSeconds: int('scale-idle', 30),
    settleSeconds: int('scale-settle', 10),
    tpsSeconds: int('scale-tps-seconds', 10),
    clients: int('scale-clients', 4),
    bumpTimeoutMs: int('scale-bump-timeout', 35_000),
    propagationCapMs: 150_000,
    startTimeoutMs: 600_000,
    connectTimeout: pluginOptions.connectTimeout as number,
    pluginOptions,
    embedded: !argv.includes('--scale-no-embedded'),
    results: resolve(flag('scale-results') ?? fileURLToPath(RESULTS_FILE)),
    bare: !argv.includes('--scale-no-bare'),
    bareBumps: int('scale-bare-bumps', 50),
    userChanges: { rate: int('scale-user-rate', 100), seconds: int('scale-user-seconds', 10), deadlineMs: int('scale-user-deadline', 10) * 1000 },
    sqlVariant: !argv.includes('--scale-no-sql'),
    variantIdleSeconds: int('scale-variant-idle', 20)
  }
}
