// `npm run soak -- --minutes 10`: the model of test/invariants.test.ts, run
// for minutes instead of a dozen runs, with network faults injected through a
// proxy in front of PostgreSQL (black-holed links that only the heartbeat
// detects). Prints the commands run, the faults and the invariant violations.
// Uses DATABASE_URL, else starts an embedded PostgreSQL of its own.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import fc from 'fast-check'
import { bumpSessionVersion } from '../../lib/index.js'
import { createDatabase, eventually } from '../helpers/database.js'
import { FaultyProxy } from '../helpers/proxy.js'
import { commands, executed, newModel, Step, type Model, type Real } from '../model/commands.js'
import { System } from '../model/system.js'

const { values } = parseArgs({ options: { minutes: { type: 'string', default: '10' }, seed: { type: 'string' } } })
const minutes = Number(values.minutes)
if (!(minutes > 0)) throw new Error(`--minutes takes a positive number, got ${values.minutes}`)

const stateDir = await mkdtemp(join(tmpdir(), 'fsr-soak-'))
process.env.FSR_TEST_DB_STATE = join(stateDir, 'server.json')
const { startServer, stopServer } = await import('../setup/server.js')
const server = await startServer()
const closers: Array<() => unknown> = []
let faults = 0

/** A network fault: every open link to PostgreSQL stops forwarding, and closes nothing. */
class BlackHole extends Step {
  constructor (readonly proxy: FaultyProxy) { super() }
  async act (_model: Model, real: Real): Promise<void> {
    const apps = real.system.apps.map(({ app }) => app)
    const before = apps.map((app) => app.sessionRefresh.status().heartbeatMisses)
    this.proxy.blackHole()
    faults++
    // Only a missed heartbeat tells an instance; it then reconnects through new links.
    await eventually('every instance to miss a heartbeat', () =>
      apps.every((app, i) => app.sessionRefresh.status().heartbeatMisses > before[i]!), 60_000)
  }

  toString (): string { return 'BlackHole()' }
}

let violation: unknown = null
let runs = 0
const started = Date.now()
try {
  const db = await createDatabase({ teardown: (fn) => { closers.push(fn) } })
  await bumpSessionVersion(db.sql)
  const proxy = await FaultyProxy.start(db.url)
  closers.push(() => proxy.close())
  const result = await fc.check(
    fc.asyncProperty(fc.scheduler(), fc.commands(commands([fc.constant(new BlackHole(proxy))]), { maxCommands: 60, size: 'max' }), async (scheduler, steps) => {
      const system = await System.start({
        url: proxy.url(db.url),
        sql: db.sql,
        plugin: { heartbeatInterval: 200, heartbeatTimeout: 300, queryTimeout: 2000 }
      }, 1_000_000 * ++runs)
      try {
        await fc.asyncModelRun(() => ({ model: newModel(system), real: { system, scheduler } }), steps)
      } finally {
        await system.close()
      }
    }),
    { numRuns: Number.MAX_SAFE_INTEGER, interruptAfterTimeLimit: minutes * 60_000, endOnFailure: true, ...(values.seed === undefined ? {} : { seed: Number(values.seed) }) }
  )
  if (result.failed) violation = result.counterexample === null ? result.errorInstance : { counterexample: String(result.counterexample), seed: result.seed, error: String(result.errorInstance) }
} finally {
  for (const close of closers.reverse()) await close()
  await stopServer(server)
  await rm(stateDir, { recursive: true, force: true })
}

const operations = [...executed.values()].reduce((a, b) => a + b, 0)
console.log(`soak: ${((Date.now() - started) / 60_000).toFixed(1)} min on ${server.kind} PostgreSQL, ${runs} runs`)
console.log(`operations: ${operations} (${[...executed].map(([name, n]) => `${name} ${n}`).join(', ')})`)
console.log(`faults: ${faults} black holes, ${executed.get('KillListeners') ?? 0} listener kills, ${executed.get('Forge') ?? 0} forged notifications`)
console.log(`invariant violations: ${violation === null ? 0 : 1}`)
if (violation !== null) {
  console.log(violation)
  process.exitCode = 1
}
