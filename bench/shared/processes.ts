// The bench's child processes: every app server (bench/workers/server.ts) and
// every worker runs in a Node process of its own, so that the load generator
// never shares an event loop with what it measures. Each one started here is
// stopped by whoever started it or, on an interrupt, by stopAll().
import { forkChild, type Child, type ChildEvent } from './child.js'
import { sleep } from './log.js'
import type { Counters, ServerKind } from './server-kinds.js'

const SERVER_FILE = new URL('../workers/server.ts', import.meta.url)
/** BENCH_CPU_PROF=<dir>: run the children with `node --cpu-prof`. */
const cpuProfDir = process.env.BENCH_CPU_PROF
const children = new Set<Child>()

export async function fork (file: URL, args: string[]): Promise<{ child: Child, ready: ChildEvent }> {
  const forked = await forkChild(file, args, cpuProfDir ? { cpuProfDir } : {})
  children.add(forked.child)
  return forked
}

export async function stop (child: Child): Promise<void> {
  children.delete(child)
  await child.stop()
}

/** Every child still running. */
export async function stopAll (): Promise<void> {
  for (const child of [...children]) await stop(child).catch(() => {})
}

/** An app server of `kind` on the database at `url`; `extra` arguments after those (`events`). */
export async function startAppServer (kind: ServerKind, url: string, extra: string[] = []): Promise<{ child: Child, port: number }> {
  const { child, ready } = await fork(SERVER_FILE, [kind, url, ...extra])
  return { child, port: ready.port as number }
}

/** Until the B server `child` holds `version` in memory (5 s at most). */
export async function waitForVersion (child: Child, version: number): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if ((await child.call<Counters>('counters')).version === version) return
    await sleep(5)
  }
  throw new Error(`server B did not reach version ${version}`)
}
