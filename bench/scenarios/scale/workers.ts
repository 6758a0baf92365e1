// The scale bench's listener processes (bench/workers/scale.ts), N instances spread over them.
import { forkChild, type Child } from '../../shared/child.js'
import { withTimeout } from '../../shared/log.js'
import type { StartArgs, StartResult, WorkerStatus } from '../../workers/scale.js'
import { log, type Config } from './config.js'

const WORKER_FILE = new URL('../../workers/scale.ts', import.meta.url)

export interface Workers { children: Child[], pids: number[], counts: number[] }

/** Every worker ever started, stopped by whoever started it or, on an interrupt, by the cleanup. */
export const liveChildren = new Set<Child>()

export async function stopChild (child: Child, ms: number): Promise<void> {
  liveChildren.delete(child)
  await child.stop(ms).catch(() => { child.process.kill('SIGKILL') })
}

export async function startWorkers (config: Config, url: string, n: number): Promise<{ workers: Workers, start: StartResult[], seconds: number }> {
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
      attempts: 5
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

export interface Status { instances: number, listening: number, heartbeatMisses: number, reconnects: number, minVersion: number, maxVersion: number, rss: number }

export async function status (workers: Workers): Promise<Status> {
  const all = await Promise.all(workers.children.map((child) => withTimeout(child.call<WorkerStatus>('status'), 60_000, 'worker status')))
  return {
    instances: all.reduce((sum, s) => sum + s.instances, 0),
    listening: all.reduce((sum, s) => sum + s.listening, 0),
    heartbeatMisses: all.reduce((sum, s) => sum + s.heartbeatMisses, 0),
    reconnects: all.reduce((sum, s) => sum + s.reconnects, 0),
    minVersion: Math.min(...all.map((s) => s.minVersion)),
    maxVersion: Math.max(...all.map((s) => s.maxVersion)),
    rss: all.reduce((sum, s) => sum + s.rss, 0)
  }
}
