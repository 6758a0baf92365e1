// Issue 10's invariants as model-based properties against real PostgreSQL:
// two instances share one session store, and random sequences of logins,
// requests, bumps (rolled back, renumbering, restored lower), per-user
// refreshes and logouts (by API, by SQL, of old ids, keeping a session),
// table restores, listener kills, forged notifications and races run against
// them. test/model/commands.ts states the invariants; `npm run soak` runs the
// same model for longer, with network faults.
import fc from 'fast-check'
import t from 'tap'
import { bumpSessionVersion } from '../lib/index.js'
import { commands, executed, newModel } from './model/commands.js'
import { System } from './model/system.js'
import { createDatabase } from './helpers/database.js'

const db = await createDatabase(t)
// A version from the clock, as every version after the first bump is; RestoreVersion goes back from it.
await bumpSessionVersion(db.sql)
// Bounded for CI; the soak runs the same model for minutes.
const RUNS = Number(process.env.FSR_MODEL_RUNS ?? 12)

t.test('I1-I4 hold under random orders of logins, requests, bumps, logouts, restores, kills and forged notifications', async (t) => {
  let run = 0
  await fc.assert(
    fc.asyncProperty(fc.scheduler(), fc.commands(commands(), { maxCommands: 30, size: 'max' }), async (scheduler, steps) => {
      const system = await System.start({ url: db.url, sql: db.sql }, 1_000_000 * ++run)
      try {
        await fc.asyncModelRun(() => ({ model: newModel(system), real: { system, scheduler } }), steps)
      } finally {
        await system.close()
      }
    }),
    // FSR_MODEL_SEED and FSR_MODEL_PATH replay a failure that fast-check reported.
    { numRuns: RUNS, endOnFailure: true, ...replay() }
  )
  const ran = [...executed].map(([name, n]) => `${name} ${n}`).join(', ')
  t.comment(`${run} runs: ${ran}`)
  t.ok(run >= RUNS && executed.size >= 10, `every run passed, and most kinds of command ran: ${ran}`)
})

function replay (): { seed?: number, path?: string } {
  const seed = process.env.FSR_MODEL_SEED
  return seed === undefined ? {} : { seed: Number(seed), path: process.env.FSR_MODEL_PATH }
}
