// `session-refresh watch` and forged notifications. PostgreSQL checks no
// privilege for NOTIFY: any role that can connect can send `version:<anything>`
// on the channel. A payload is a hint to read the table, and the table is the truth.
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { EXIT_OK, main } from '../lib/cli/cli.js'
import { watch } from '../lib/cli/watch.js'
import { bumpSessionVersion } from '../lib/index.js'
import { gate } from './helpers/app.js'
import { captureIo, waitForOutput } from './helpers/cli.js'
import { createDatabase, eventually } from './helpers/database.js'

// A bound for waits: far above what they take, on a loaded 2-core machine.
const WAIT = 30_000
const FLOOD = 2000
const APPLICATION_NAME = 'session-refresh-watch-test'

/**
 * `watch` on a client of its own whose reads of the version are counted at the
 * source (postgres.js calls `debug` for every query it sends), with a second
 * listener on the same channel registered after watch's: postgres.js calls a
 * channel's listeners in order, so once `heard` holds a payload, watch was
 * given it and every notification before it.
 */
async function startWatch (t: Test, url: string) {
  let reads = 0
  const sql = postgres(url, {
    max: 1,
    onnotice: () => {},
    connection: { application_name: APPLICATION_NAME },
    debug: (_connection: number, query: string) => { if (query.includes('system_settings')) reads++ }
  })
  t.teardown(() => sql.end({ timeout: 1 }))
  const lines: string[] = []
  const errors: unknown[] = []
  let stop = (): void => {}
  const stopped = new Promise<void>((resolve) => { stop = resolve })
  const watching = watch(sql, 'public', { out: (text) => lines.push(text), error: (err) => errors.push(err), stopped: () => stopped })
  await eventually('watch to start', () => lines.length === 1, WAIT)
  const heard: string[] = []
  await sql.listen('session_refresh', (payload) => { heard.push(payload) })
  return { lines, errors, heard, reads: () => reads, stop: async () => { stop(); await watching } }
}

t.test('forged version payloads (huge, lower, malformed) print nothing; a real bump prints one line with the table\'s value', async (t) => {
  const db = await createDatabase(t)
  const io = captureIo({ DATABASE_URL: db.url })
  const exit = main(['watch'], io)
  await waitForOutput(io, /^watching session_version, now 1 /, WAIT)

  // Any role that can connect; the table says 1 throughout.
  for (const payload of ['version:9007199254740991', 'version:0', 'version:99999999999999999999', 'version:not-a-version', 'version:', 'version:1']) {
    await db.sql`select pg_notify('session_refresh', ${payload})`
  }
  const bumped = await bumpSessionVersion(db.sql)
  await waitForOutput(io, new RegExp(`session_version 1 -> ${bumped} `), WAIT)
  io.stop()
  t.equal(await exit, EXIT_OK)

  t.equal(io.stderr, '')
  const [header, ...changes] = io.stdout.split('\n').slice(0, -1)
  t.match(header, /^watching session_version, now 1 /)
  t.equal(changes.length, 1, `one line, for the bump only: ${JSON.stringify(changes)}`)
  t.match(changes[0], new RegExp(`^\\S+Z {2}session_version 1 -> ${bumped} {2}\\(\\d+ (ms|s) since updated_at\\)$`))
})

t.test(`a flood of ${FLOOD} forged version notifications costs a few reads, not one each, and prints nothing`, async (t) => {
  const db = await createDatabase(t)
  const watching = await startWatch(t, db.url)
  const before = watching.reads()

  // One statement: the notifications (distinct payloads, so none is folded
  // into another) arrive together, as a flood from a script would.
  await db.sql`select pg_notify('session_refresh', 'version:' || n) from generate_series(1, ${FLOOD}) n`
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump to be heard and shown', () =>
    watching.heard.includes(`version:${bumped}`) && watching.lines.some((line) => line.includes(` -> ${bumped} `)), WAIT)
  // What is still queued runs before watch returns.
  await watching.stop()

  t.equal(watching.heard.length, FLOOD + 1, 'watch was given every notification')
  const reads = watching.reads() - before
  t.ok(reads >= 1 && reads <= FLOOD / 20, `${reads} reads for ${FLOOD + 1} notifications`)
  t.same(watching.lines.slice(1).map((line) => line.trimEnd().replace(/^\S+ {2}/, '').replace(/ {2}\(.*/, '')), [`session_version 1 -> ${bumped}`],
    'one line, for the bump only')
  t.same(watching.errors, [])
})

t.test('a notification that comes once watch is stopped starts no read (on a connection about to end)', async (t) => {
  const db = await createDatabase(t)
  const watching = await startWatch(t, db.url)
  await watching.stop()
  const reads = watching.reads()
  const bumped = await bumpSessionVersion(db.sql)
  await eventually('the bump to be heard', () => watching.heard.includes(`version:${bumped}`), WAIT)
  t.equal(watching.reads(), reads, 'no read')
  t.equal(watching.lines.length, 1, 'nothing printed after the first line')
})

t.test('a change that notified nobody (a restore with the trigger off) is shown at the next reconnect, with what it replaced', async (t) => {
  const db = await createDatabase(t)
  const watching = await startWatch(t, db.url)
  await db.sql.begin(async (tx) => {
    await tx`alter table system_settings disable trigger user`
    await tx`update system_settings set value = '1000' where key = 'session_version'`
    await tx`alter table system_settings enable trigger user`
  })
  const ended = await db.sql`
    select pg_terminate_backend(pid) from pg_stat_activity
    where application_name = ${APPLICATION_NAME} and datname = current_database() and query ilike 'listen %'`
  t.equal(ended.length, 1, 'the LISTEN connection was ended')
  await eventually('the reconnect to be shown', () => watching.lines.length === 2, WAIT)
  t.match(watching.lines[1], /^\S+Z {2}reconnected; session_version is 1000 \(was 1\)\n$/)
  await watching.stop()
  t.same(watching.errors, [])
})

t.test('a bump notified while a read is under way (a read that saw the table before it) is shown, by one more read', async (t) => {
  const db3 = await createDatabase(t)
  const name = 'session-refresh-watch-held'
  const sql = postgres(db3.url, { max: 1, onnotice: () => {}, connection: { application_name: name } })
  t.teardown(() => sql.end({ timeout: 1 }))
  // A read whose answer is held back once `hold` is set: it is sent at once (its
  // snapshot is taken now), and its rows come back when the gate opens.
  let hold: ReturnType<typeof gate> | null = null
  let held = 0
  const slow = new Proxy(sql, {
    apply (target, thisArg, args) {
      const query = Reflect.apply(target, thisArg, args) as ReturnType<typeof sql>
      if (hold === null || !Array.isArray(args[0])) return query
      held++
      query.execute()
      const wait = hold.wait
      return wait.then(() => query)
    }
  })
  const lines: string[] = []
  const errors: unknown[] = []
  let stop = (): void => {}
  const stopped = new Promise<void>((resolve) => { stop = resolve })
  const watching = watch(slow, 'public', { out: (text) => lines.push(text), error: (err) => errors.push(err), stopped: () => stopped })
  await eventually('watch to start', () => lines.length === 1, WAIT)
  const heard: string[] = []
  await sql.listen('session_refresh', (payload) => { heard.push(payload) }) // after watch's own: watch was given every payload before it

  const lastRead = async () => (await db3.sql<[{ at: Date }]>`select query_start as at from pg_stat_activity where application_name = ${name} and query like '%system_settings%'`)[0]!.at.getTime()
  const before = await lastRead()
  const release = gate()
  hold = release
  await db3.sql`select pg_notify('session_refresh', 'version:1')` // a forged hint: a read starts, and sees version 1
  await eventually('the read to be under way', () => held === 1 && heard.includes('version:1'), WAIT)
  // Its statement has run on the server (its snapshot saw version 1); only its rows are held back here.
  await eventually('the held read to have run', async () =>
    (await db3.sql`select 1 from pg_stat_activity where application_name = ${name} and state = 'idle' and query like '%system_settings%'`).length === 1 &&
    await lastRead() > before, WAIT)
  const bumped = await bumpSessionVersion(db3.sql)
  await eventually('the bump to reach watch while that read is held', () => heard.includes(`version:${bumped}`), WAIT)
  hold = null
  release.open()
  await eventually('the bump to be shown', () => lines.some((line) => line.includes(`session_version 1 -> ${bumped} `)), 15_000)
  stop()
  await watching
  t.same(errors, [])
})
