// CPU and memory of the database's processes, read from /proc: what N idle instances cost the server.
import { readdirSync, readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { hrMs } from '../../shared/log.js'
import { CLK_TCK, PLUGIN_APPLICATION_NAME } from './config.js'
import type { Target } from './target.js'

interface Stat { ppid: number, ticks: number, childTicks: number }

export async function readStat (pid: number): Promise<Stat | null> {
  return readStatSync(pid)
}

function readStatSync (pid: number): Stat | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
    return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]), childTicks: Number(fields[13]) + Number(fields[14]) }
  } catch {
    return null
  }
}

export interface CpuSample { at: number, ticks: Map<number, number>, reaped: number, excluded: Set<number> }

/** CPU ticks of the postmaster and its children, but not of client backends in other databases. */
export async function sampleCpu (target: Target, database: string): Promise<CpuSample> {
  const others = await target.monitor<{ pid: number }[]>`
    select pid from pg_stat_activity where backend_type = 'client backend' and datname is distinct from ${database}`
  const excluded = new Set(others.map((row) => row.pid))
  const ticks = new Map<number, number>()
  let reaped = 0
  // Synchronous reads, in one go: a few thousand of them take a while on a loaded machine,
  // and the sample is stamped with the middle of that while.
  const t0 = hrMs()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    const stat = readStatSync(pid)
    if (stat === null) continue
    if (pid === target.postmaster) {
      ticks.set(pid, stat.ticks)
      reaped = stat.childTicks
    } else if (stat.ppid === target.postmaster) {
      ticks.set(pid, stat.ticks)
    }
  }
  return { at: (t0 + hrMs()) / 2, ticks, reaped, excluded }
}

/** Cores used between two samples. */
export function coresBetween (a: CpuSample, b: CpuSample, ownsCluster: boolean): number {
  const skip = (pid: number): boolean => a.excluded.has(pid) || b.excluded.has(pid)
  let ticks = 0
  for (const [pid, now] of b.ticks) if (!skip(pid)) ticks += now - (a.ticks.get(pid) ?? 0)
  if (ownsCluster) {
    // A process that exited in between: its whole CPU time moved into the postmaster's
    // reaped-children count, so take that and remove what it had used before `a`.
    ticks += b.reaped - a.reaped
    for (const [pid, before] of a.ticks) if (!b.ticks.has(pid)) ticks -= before
  }
  return ticks / CLK_TCK / ((b.at - a.at) / 1000)
}

/**
 * Which kind of process each pid of the cluster is, from pg_stat_activity: the plugin's
 * connections told apart by their last statement (a LISTEN or not), the background
 * processes by backend_type. A diagnostic of where the idle CPU goes.
 */
export async function classify (target: Target, database: string): Promise<Map<number, string>> {
  const rows = await target.monitor<{ pid: number, type: string | null, app: string | null, query: string | null }[]>`
    select pid, backend_type as type, application_name as app, query
    from pg_stat_activity where datname = ${database} or backend_type <> 'client backend'`
  const classes = new Map<number, string>([[target.postmaster, 'postmaster']])
  for (const row of rows) {
    if (row.type !== 'client backend') classes.set(row.pid, row.type ?? 'other')
    else if (row.app !== PLUGIN_APPLICATION_NAME) classes.set(row.pid, 'other clients')
    else classes.set(row.pid, /^\s*listen\b/i.test(row.query ?? '') ? 'plugin, last statement LISTEN' : 'plugin, other')
  }
  return classes
}

/** Cores used between two samples, by class; pids not classified count as 'unknown', exited ones as 'exited'. */
export function coresByClass (a: CpuSample, b: CpuSample, classes: Map<number, string>, ownsCluster: boolean): Array<{ name: string, cores: number, processes: number }> {
  const seconds = (b.at - a.at) / 1000
  const by = new Map<string, { ticks: number, processes: number }>()
  const add = (name: string, ticks: number): void => {
    const entry = by.get(name) ?? { ticks: 0, processes: 0 }
    entry.ticks += ticks
    entry.processes++
    by.set(name, entry)
  }
  for (const [pid, now] of b.ticks) {
    if (a.excluded.has(pid) || b.excluded.has(pid)) continue
    add(classes.get(pid) ?? 'unknown', now - (a.ticks.get(pid) ?? 0))
  }
  if (ownsCluster) {
    let exited = b.reaped - a.reaped
    for (const [pid, before] of a.ticks) if (!b.ticks.has(pid)) exited -= before
    if (exited !== 0) add('exited', exited)
  }
  return [...by].map(([name, { ticks, processes }]) => ({ name, cores: ticks / CLK_TCK / seconds, processes }))
    .sort((x, y) => y.cores - x.cores)
}

export async function processTicks (pid: number): Promise<number> {
  return (await readStat(pid))?.ticks ?? 0
}

/** Private memory (RssAnon) of the cluster's processes, bytes. */
export async function clusterPrivateMemory (sample: CpuSample): Promise<number> {
  let total = 0
  await Promise.all([...sample.ticks.keys()].map(async (pid) => {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
    const kb = /RssAnon:\s+(\d+)/.exec(status)?.[1]
    if (kb) total += Number(kb) * 1024
  }))
  return total
}
