// Memory: the heap of server A and of server B after N logins and one request
// from each session (on B each refreshes, after a bump), and once the store is cleared.
import { bumpSessionVersion } from '../../lib/index.js'
import type { Bench } from '../shared/bench.js'
import { Client, eachLimited } from '../shared/http.js'
import { log } from '../shared/log.js'
import { startAppServer, stop, waitForVersion } from '../shared/processes.js'
import { collect, mb, yes, type Row } from '../shared/report.js'
import { SERVER_NAMES, type Counters, type ServerKind } from '../shared/server-kinds.js'

export interface Memory { kind: ServerKind, sessions: number, start: number, after: number, cleared: number, refreshCalls: number, inFlight: number }

export async function measureMemory (bench: Bench): Promise<Memory[]> {
  return [await measureKind(bench, 'A'), await measureKind(bench, 'B')]
}

async function measureKind ({ config, db }: Bench, kind: ServerKind): Promise<Memory> {
  const { child, port } = await startAppServer(kind, db.url)
  const client = new Client(port, 64)
  try {
    // Warm up JIT and pools on one session, so "start" is a steady state, not a cold process.
    const warm = await client.login(config.memory + 1)
    await eachLimited(Array.from({ length: 2000 }), 64, () => client.request('GET', '/me', warm))
    await child.call('warmPool')
    const start = await child.call<number>('heap')
    log(`memory ${kind}: ${config.memory} logins, then one request from each session`)
    const ids = Array.from({ length: config.memory }, (_, i) => i + 1)
    const cookies = await eachLimited(ids, 64, (id) => client.login(id))
    // On B every one of those requests then finds its session stale and refreshes it.
    if (kind === 'B') await waitForVersion(child, await bumpSessionVersion(db.sql))
    const before = await child.call<Counters>('counters')
    await eachLimited(cookies, 64, async (cookie) => {
      const response = await client.request('GET', '/me', cookie)
      if (response.status !== 200) throw new Error(`memory ${kind}: ${response.status} ${response.body}`)
    })
    const counters = await child.call<Counters>('counters')
    const after = await child.call<number>('heap')
    await child.call('clearSessions')
    const cleared = await child.call<number>('heap')
    return { kind, sessions: counters.sessions, start, after, cleared, refreshCalls: counters.refreshCalls - before.refreshCalls, inFlight: counters.refreshRunning }
  } finally {
    client.close()
    await stop(child)
  }
}

export function memoryRows (list: Memory[]): Row[] {
  const { rows, add } = collect()
  for (const m of list) {
    add(`memory ${SERVER_NAMES[m.kind]}: heap start → after ${m.sessions} sessions → store cleared (MB)`,
      `${mb(m.start)} → ${mb(m.after)} → ${mb(m.cleared)}`)
    add(`memory ${SERVER_NAMES[m.kind]}: growth per session`, `${Math.round((m.after - m.start) / m.sessions)} bytes`)
  }
  const a = list.find((m) => m.kind === 'A')
  const b = list.find((m) => m.kind === 'B')
  if (a && b) {
    const extra = ((b.after - b.start) - (a.after - a.start)) / b.sessions
    add('memory: B − A growth per session (the stamp field in each stored session)', `${Math.round(extra)} bytes`)
    const retained = b.cleared - b.start
    add('memory B: heap retained once the session store is cleared', `${mb(retained)} MB (refreshes in flight: ${b.inFlight}, refresh calls: ${b.refreshCalls})`,
      '< 2 MB, 0 in flight', yes(retained < 2 * 1024 * 1024 && b.inFlight === 0))
  }
  return rows
}

export const memorySetup = `- Memory: heap after two forced GCs (\`--expose-gc\`) at start, after N logins plus one request from each of the N sessions
  (on B each of those requests refreshes, after a bump), and after the session store is cleared.`
