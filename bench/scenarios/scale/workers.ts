// The scale bench's listener processes (bench/workers/scale.ts), N instances spread over them.
import { forkChild, type Child } from '../../shared/child.js'
import { withTimeout } from '../../shared/log.js'
import type { BareArgs, StartArgs, StartResult, UsersReport, WorkerStatus } from '../../workers/scale.js'
import { APP_APPLICATION_NAME, BARE_APPLICATION_NAME, log, type Config } from './config.js'

const WORKER_FILE = new URL('../../workers/scale.ts', import.meta.url)

export interface Workers { children: Child[], pids: number[], counts: number[] }

/** Every worker ever started, stopped by whoever started it or, on an interrupt, by the cleanup. */
export const liveChildren = new Set<Child>()

export async function stopChild (child: Child, ms: number): Promise<void> {
  liveChildren.delete(child)
  await child.stop(ms).catch(() => { child.process.kill('SIGKILL') })
}

/** `sql`: each instance gets an app-level pool of one connection as the plugin's `sql` option. */
export async function startWorkers (config: Config, url: string, n: number, { sql = false }: { sql?: boolean } = {}): Promise<{ workers: Workers, start: StartResult[], seconds: number }> {
  const k = Math.min(n, config.workers)
  const counts = Array.from({ length: k }, (_, i) => Math.floor(n / k) + (i < n % k ? 1 : 0))
  const t0 = performance.now()
  const forked = await Promise.all(counts.map(async () => {
    const { child, ready } = await forkChild(WORKER_FILE, [])
    liveChildren.add(child)
    return { child, pid: ready.pid as number }
  }))
  const workers: Workers = { children: forked.map((f) => f.child), pids: forked.map((f) => f.pid), counts }
  const progress = new Map<number, number>()
  workers.children.forEach((child, i) => child.onEvent((event) => { if (event.event === 'progress') progress.set(i, event.started as number) }))
  const ticker = setInterval(() => {
    const sum = [...progress.values()].reduce((a, b) => a + b, 0)
    log(`N=${n}: ${sum} of ${n} instances started`)
  }, 15_000)
  try {
    const start = await withTimeout(Promise.all(workers.children.map((child, i) => child.call<StartResult>('start', {
      url,
      count: counts[i]!,
      plugin: config.plugin,
      options: config.pluginOptions,
      concurrency: 4,
      attempts: 5,
      ...(sql ? { sql: { applicationName: APP_APPLICATION_NAME } } : {})
    } satisfies StartArgs))), config.startTimeoutMs, `starting ${n} instances`)
    return { workers, start, seconds: (performance.now() - t0) / 1000 }
  } catch (err) {
    await stopWorkers(workers)
    throw err
  } finally {
    clearInterval(ticker)
  }
}

export async function stopWorkers (workers: Workers): Promise<void> {
  await Promise.all(workers.children.map((child) => stopChild(child, 60_000)))
}

export interface Status {
  instances: number, listening: number, heartbeatMisses: number, reconnects: number, minVersion: number, maxVersion: number, rss: number
  /** The fewest and most users an instance tracks (-1: the plugin does not say); how many instances poll for per-user changes. */
  minUsers: number, maxUsers: number, polling: number
}

export async function status (workers: Workers): Promise<Status> {
  const all = await Promise.all(workers.children.map((child) => withTimeout(child.call<WorkerStatus>('status'), 60_000, 'worker status')))
  return {
    instances: all.reduce((sum, s) => sum + s.instances, 0),
    listening: all.reduce((sum, s) => sum + s.listening, 0),
    heartbeatMisses: all.reduce((sum, s) => sum + s.heartbeatMisses, 0),
    reconnects: all.reduce((sum, s) => sum + s.reconnects, 0),
    minVersion: Math.min(...all.map((s) => s.minVersion)),
    maxVersion: Math.max(...all.map((s) => s.maxVersion)),
    rss: all.reduce((sum, s) => sum + s.rss, 0),
    minUsers: Math.min(...all.map((s) => s.minUsers)),
    maxUsers: Math.max(...all.map((s) => s.maxUsers)),
    polling: all.reduce((sum, s) => sum + s.polling, 0)
  }
}

/** As many bare postgres.js listeners as each worker holds instances, in the same processes. */
export async function startBare (workers: Workers, url: string): Promise<number> {
  const started = await withTimeout(Promise.all(workers.children.map((child, i) =>
    child.call<{ started: number }>('startBare', { url, count: workers.counts[i]!, applicationName: BARE_APPLICATION_NAME } satisfies BareArgs))), 300_000, 'starting the bare listeners')
  return started.reduce((sum, s) => sum + s.started, 0)
}

export async function stopBare (workers: Workers): Promise<void> {
  await Promise.all(workers.children.map((child) => withTimeout(child.call('stopBare'), 60_000, 'stopping the bare listeners')))
}

export async function armUsers (workers: Workers, base: number, count: number): Promise<void> {
  await Promise.all(workers.children.map((child) => child.call('armUsers', { base, count })))
}

/** The fewest per-user changes any instance holds. */
export async function usersProgress (workers: Workers): Promise<number> {
  const all = await Promise.all(workers.children.map((child) => withTimeout(child.call<number>('usersProgress'), 60_000, 'worker progress')))
  return Math.min(...all)
}

export async function usersReports (workers: Workers): Promise<UsersReport[]> {
  const all = await Promise.all(workers.children.map((child) => withTimeout(child.call<UsersReport>('usersReport'), 60_000, 'worker report')))
  await Promise.all(workers.children.map((child) => child.call('disarmUsers')))
  return all
}
