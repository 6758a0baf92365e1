import { randomBytes } from 'node:crypto'
import { readdir } from 'node:fs/promises'
import type { Sql } from 'postgres'
import t, { type Test } from 'tap'
import { describeError, EXIT_FAILED, EXIT_OK, EXIT_USAGE, HELP, main, processIo } from '../lib/cli.js'
import { formatAge, formatStatus, type DatabaseStatus } from '../lib/cli-status.js'
import { readSessionVersion } from '../lib/index.js'
import { APPLICATION_NAME } from '../lib/listener.js'
import { buildApp } from './helpers/app.js'
import { captureIo, runCli, startCli, waitForOutput, type CliResult } from './helpers/cli.js'
import { createDatabase, eventually } from './helpers/database.js'
import { freePort } from './helpers/free-port.js'

/** One line on stderr, nothing that looks like a stack frame. */
function assertOneLineError (t: Test, result: { stderr: string }, pattern: RegExp): void {
  t.match(result.stderr, pattern)
  t.notMatch(result.stderr, /^\s+at /m, 'no stack trace')
  t.equal(result.stderr.trimEnd().split('\n').filter((line) => !line.startsWith('Run `session-refresh --help`')).length, 1, 'one line')
}

/** What migrate applies: every file in sql/, in name order. */
async function sqlFiles (): Promise<string[]> {
  return (await readdir(new URL('../sql/', import.meta.url))).filter((name) => name.endsWith('.sql')).sort()
}


/** Ends the backends of `applicationName` on `sql`'s database that LISTEN; returns how many. */
async function terminateListeners (sql: Sql, applicationName: string): Promise<number> {
  const rows = await sql`
    select pg_terminate_backend(pid) from pg_stat_activity
    where application_name = ${applicationName} and datname = current_database() and query ilike 'listen %'`
  return rows.length
}

async function setMalformedVersion (sql: Sql, value: string): Promise<void> {
  // The trigger refuses such a value; a restore or a hand edit with the trigger off does not.
  await sql.begin(async (tx) => {
    await tx`alter table system_settings disable trigger user`
    await tx`update system_settings set value = ${value} where key = 'session_version'`
    await tx`alter table system_settings enable trigger user`
  })
}

t.test('as a real process', async (t) => {
  t.test('--help lists every command with an example, exit 0', async (t) => {
    const result = await runCli(['--help'])
    t.equal(result.code, 0)
    t.equal(result.stderr, '')
    for (const example of ['session-refresh migrate --url', 'session-refresh bump', 'session-refresh status --json', 'session-refresh watch']) {
      t.match(result.stdout, example)
    }
  })

  t.test('an unknown command: one line, exit 2', async (t) => {
    const result = await runCli(['frobnicate'], { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' })
    t.equal(result.code, 2)
    t.equal(result.stdout, '')
    assertOneLineError(t, result, /^session-refresh: unknown command `frobnicate`; the commands are migrate, bump, status, watch\n/)
  })

  t.test('an unreachable server: one line, exit 1', async (t) => {
    const url = `postgres://postgres:postgres@127.0.0.1:${await freePort()}/postgres`
    const result = await runCli(['status', '--url', url])
    t.equal(result.code, 1)
    t.equal(result.stdout, '')
    assertOneLineError(t, result, /^session-refresh: cannot reach the database: .*ECONNREFUSED/)
  })

  t.test('a missing table suggests migrate, exit 1; migrate creates it and says so', async (t) => {
    const db = await createDatabase(t, { migrated: false })
    for (const command of ['status', 'bump', 'watch']) {
      const result = await runCli([command, '--url', db.url])
      t.equal(result.code, 1, command)
      assertOneLineError(t, result, /^session-refresh: the system_settings table .* is missing: run `session-refresh migrate` first\n$/)
    }

    const first = await runCli(['migrate'], { DATABASE_URL: db.url })
    t.equal(first.code, 0)
    const applied = (await sqlFiles()).map((file) => `applied ${file}\n`).join('')
    t.equal(first.stdout, `${applied}created system_settings; session_version is 1\n`)
    t.equal(await readSessionVersion(db.sql), 1)
    await db.sql`update system_settings set value = '5' where key = 'session_version'`
    const again = await runCli(['migrate'], { DATABASE_URL: db.url })
    t.equal(again.code, 0)
    t.equal(again.stdout, `${applied}system_settings was already there; session_version stays 5\n`)
  })

  t.test('bump raises the version by one and prints it', async (t) => {
    const db = await createDatabase(t)
    const result = await runCli(['bump'], { DATABASE_URL: db.url })
    t.equal(result.code, 0)
    t.equal(result.stderr, '')
    t.equal(result.stdout, 'session_version is now 2\n')
    t.equal(await readSessionVersion(db.sql), 2)
  })

  t.test('a value that is not an integer: one line, exit 1', async (t) => {
    const db = await createDatabase(t)
    await setMalformedVersion(db.sql, 'twelve')
    for (const command of ['status', 'bump']) {
      const result = await runCli([command, '--url', db.url])
      t.equal(result.code, 1, command)
      assertOneLineError(t, result, /^session-refresh: session_version in system_settings is not a non-negative integer \(.*twelve.*\); set it with: UPDATE/)
    }
  })

  t.test('status sees the listening instance of a running app, and not after it closes', async (t) => {
    const db = await createDatabase(t)
    const { app } = await buildApp(t, { url: db.url })
    const appBackends = await db.sql<{ pid: number }[]>`
      select pid from pg_stat_activity where application_name = ${APPLICATION_NAME} and datname = current_database()`
    t.equal(appBackends.length, 2, 'the app holds a LISTEN backend and a query backend')

    const json = await runCli(['status', '--json', '--url', db.url])
    t.equal(json.code, 0, json.stderr)
    const status = JSON.parse(json.stdout) as DatabaseStatus
    t.equal(status.version, 1)
    t.equal(status.listening.length, 1, 'one row per instance')
    t.equal(status.listening[0]!.address, '127.0.0.1')
    t.type(status.listening[0]!.port, 'number')
    t.ok(appBackends.some((backend) => backend.pid === status.listening[0]!.pid), 'one of the app backends')
    t.ok(Date.parse(status.listening[0]!.since) <= Date.now())
    t.equal(status.hiddenBackends, 0)
    t.type(status.queueUsage, 'number')
    t.ok(Date.parse(status.updatedAt) > 0)

    const text = await runCli(['status', '--url', db.url])
    t.equal(text.code, 0)
    t.match(text.stdout, /^session_version {2}1\n/)
    t.match(text.stdout, /\nlistening {8}1 instance\n {2}127\.0\.0\.1:\d+ {2}since \S+ {2}pid \d+\n/)
    t.match(text.stdout, /\nnotify queue {5}\d+\.\d\d% used\n$/)

    await app.close()
    const after = JSON.parse((await runCli(['status', '--json', '--url', db.url])).stdout) as DatabaseStatus
    t.same(after.listening, [])
  })

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    t.test(`watch prints a bump made from another connection, and ${signal} ends it with exit 0`, async (t) => {
      const db = await createDatabase(t)
      const cli = startCli(['watch', '--url', db.url])
      t.teardown(() => { cli.child.kill('SIGKILL') })
      await waitForOutput(cli, /^watching session_version, now 1 \(.+ since updated_at\); Ctrl-C to stop\n/)
      await db.sql`update system_settings set value = (value::bigint + 1)::text where key = 'session_version'`
      await waitForOutput(cli, /\n\d{4}-\d\d-\d\dT\S+Z {2}session_version 1 -> 2 {2}\(\d+ (ms|s) since updated_at\)\n$/)
      cli.child.kill(signal)
      const result: CliResult = await cli.exited
      t.equal(result.code, 0)
      t.equal(result.signal, null)
      t.equal(result.stderr, '')
    })
  }
})

t.test('in-process, for every path', async (t) => {
  t.test('help, and wrong usage exits 2', async (t) => {
    for (const argv of [['--help'], ['-h'], ['help'], ['status', '--help']]) {
      const io = captureIo()
      t.equal(await main(argv, io), EXIT_OK, argv.join(' '))
      t.equal(io.stdout, HELP)
    }
    const cases: Array<[string[], RegExp]> = [
      [[], /missing a command: migrate, bump, status, watch/],
      [['frobnicate'], /unknown command `frobnicate`; the commands are migrate, bump, status, watch/],
      [['status', 'now'], /unexpected argument `now`/],
      [['bump', '--json'], /--json applies to `status` only/],
      [['status'], /no database: pass --url <postgres url> or set DATABASE_URL/],
      [['status', '--verbose'], /Unknown option '--verbose'/],
      [['status', '--url', 'not a url'], /the database URL cannot be parsed \(Invalid URL\)/]
    ]
    for (const [argv, pattern] of cases) {
      const io = captureIo()
      t.equal(await main(argv, io), EXIT_USAGE, argv.join(' '))
      t.match(io.stderr, pattern)
      t.match(io.stderr, /\nRun `session-refresh --help` for the commands\.\n$/)
      t.equal(io.stdout, '')
    }
  })

  t.test('the database refusing is one line, exit 1', async (t) => {
    const db = await createDatabase(t)
    const url = new URL(db.url)
    url.pathname = '/fsr_no_such_database'
    const io = captureIo({ DATABASE_URL: url.toString() })
    t.equal(await main(['status'], io), EXIT_FAILED)
    t.equal(io.stderr, 'session-refresh: the database said: database "fsr_no_such_database" does not exist\n')
  })

  t.test('migrate, bump and status', async (t) => {
    const db = await createDatabase(t, { migrated: false })
    const io = captureIo({ DATABASE_URL: db.url })
    t.equal(await main(['migrate'], io), EXIT_OK)
    t.equal(await main(['bump'], io), EXIT_OK)
    t.equal(await main(['migrate'], io), EXIT_OK)
    t.equal(await main(['status', '--json'], io), EXIT_OK)
    const json = io.stdout.slice(io.stdout.indexOf('{'))
    t.match(io.stdout, /created system_settings; session_version is 1\nsession_version is now 2\n(applied .*\n)+system_settings was already there; session_version stays 2\n/)
    t.match(JSON.parse(json), { version: 2, listening: [], hiddenBackends: 0 })
    t.equal(io.stderr, '')

    // The table is there, the row is not.
    await db.sql`delete from system_settings where key = 'session_version'`
    const missing = captureIo({ DATABASE_URL: db.url })
    t.equal(await main(['status'], missing), EXIT_FAILED)
    t.match(missing.stderr, /run `session-refresh migrate` first\n$/)
  })

  t.test('status lists a listening app; a malformed value fails status and bump', async (t) => {
    const db = await createDatabase(t)
    await buildApp(t, { url: db.url })
    const io = captureIo({ DATABASE_URL: db.url })
    t.equal(await main(['status'], io), EXIT_OK, io.stderr)
    t.match(io.stdout, /\nlistening {8}1 instance\n {2}127\.0\.0\.1:\d+ {2}since /)

    await setMalformedVersion(db.sql, '1.5')
    for (const command of ['status', 'bump']) {
      const failed = captureIo({ DATABASE_URL: db.url })
      t.equal(await main([command], failed), EXIT_FAILED, command)
      t.match(failed.stderr, /^session-refresh: session_version in system_settings is not a non-negative integer \(.*1\.5.*\); set it with: UPDATE system_settings SET value = '<n>' WHERE key = 'session_version'\n$/)
    }
  })

  t.test('status counts backends it may not see as hidden, not as listening', async (t) => {
    const db = await createDatabase(t)
    await buildApp(t, { url: db.url })
    const role = `fsr_viewer_${randomBytes(4).toString('hex')}`
    await db.sql.unsafe(`create role ${role} login password 'viewer'`)
    await db.sql.unsafe(`grant select on system_settings to ${role}`)
    t.teardown(async () => {
      await db.sql.unsafe(`drop owned by ${role}`)
      await db.sql.unsafe(`drop role ${role}`)
    })
    const url = new URL(db.url)
    url.username = role
    url.password = 'viewer'
    const io = captureIo()
    t.equal(await main(['status', '--url', url.toString()], io), EXIT_OK, io.stderr)
    t.match(io.stdout, /\nlistening {8}none: no app instance is listening on this database\n {2}\(2 backends of another role are hidden: connect as the app's role or one with pg_read_all_stats\)\n/)
  })

  t.test('watch: changes, odd payloads, reconnects, read errors, stop', async (t) => {
    const db = await createDatabase(t)
    const io = captureIo({ DATABASE_URL: db.url })
    const exit = main(['watch'], io)
    await waitForOutput(io, /^watching session_version, now 1 /)

    await db.sql`update system_settings set value = '2' where key = 'session_version'`
    await waitForOutput(io, /session_version 1 -> 2 {2}\(\d+ (ms|s) since updated_at\)\n$/)
    await db.sql`select pg_notify('session_version', 'not-a-version')`
    await waitForOutput(io, /ignored a session_version notification that is not a version: "not-a-version"\n$/)
    // A payload that disagrees with the table, as when a later bump lands before the read.
    await db.sql`select pg_notify('session_version', '999')`
    await waitForOutput(io, /session_version 2 -> 999 {2}\(the table already says 2\)\n$/)

    t.equal(await terminateListeners(db.sql, 'session-refresh-cli'), 1)
    await waitForOutput(io, /reconnected; session_version is 2 \(was 999\)\n$/)
    t.equal(await terminateListeners(db.sql, 'session-refresh-cli'), 1)
    await waitForOutput(io, /\n\S+ {2}reconnected; session_version is 2\n$/)

    // Reads that fail are reported and watching goes on.
    await db.sql`alter table system_settings rename to system_settings_away`
    await db.sql`select pg_notify('session_version', '3')`
    await eventually('a read error', () => io.stderr.split('\n').length === 2)
    t.equal(await terminateListeners(db.sql, 'session-refresh-cli'), 1)
    await eventually('a second read error', () => io.stderr.split('\n').length === 3)
    t.equal(io.stderr, 'session-refresh: the system_settings table or its session_version row is missing: run `session-refresh migrate` first\n'.repeat(2))
    await db.sql`alter table system_settings_away rename to system_settings`
    await db.sql`update system_settings set value = '4' where key = 'session_version'`
    await waitForOutput(io, /session_version 2 -> 4 /)

    io.stop()
    t.equal(await exit, EXIT_OK)
  })

  t.test('errors become one line', async (t) => {
    const unreachable = Object.assign(new AggregateError([], ''), { code: 'ECONNREFUSED' })
    t.equal(describeError(unreachable), 'cannot reach the database: ECONNREFUSED')
    t.equal(describeError(Object.assign(new Error('write CONNECT_TIMEOUT db:5432'), { code: 'CONNECT_TIMEOUT' })),
      'cannot reach the database: write CONNECT_TIMEOUT db:5432')
    t.equal(describeError(new Error('first line\n    second line')), 'first line second line')
    t.equal(describeError('a thrown string'), 'a thrown string')
    t.equal(describeError(null), 'null')
  })

  t.test('the real process io: stdout, stderr, env, and a signal ends watching', async (t) => {
    const io = processIo()
    io.out('')
    io.err('')
    t.equal(io.env, process.env)
    const before = { SIGINT: process.listenerCount('SIGINT'), SIGTERM: process.listenerCount('SIGTERM') }
    const stopped = io.stopped()
    t.equal(process.listenerCount('SIGINT'), before.SIGINT + 1)
    t.equal(process.listenerCount('SIGTERM'), before.SIGTERM + 1)
    // Emitted, not sent: only the listeners run, the test process stays up.
    process.emit('SIGTERM', 'SIGTERM')
    await stopped
    t.equal(process.listenerCount('SIGINT'), before.SIGINT, 'handlers removed')
    t.equal(process.listenerCount('SIGTERM'), before.SIGTERM, 'handlers removed')
  })
})

t.test('formatting', async (t) => {
  const ages: Array<[number, string]> = [
    [0, '0 ms'], [999.4, '999 ms'], [1000, '1 s'], [119_000, '119 s'], [120_000, '2 min'],
    [7_199_000, '120 min'], [7_200_000, '2 h'], [172_799_000, '48 h'], [172_800_000, '2 d']
  ]
  for (const [ms, text] of ages) t.equal(formatAge(ms), text, String(ms))

  const status: DatabaseStatus = {
    version: 7,
    updatedAt: '2026-01-01T00:00:00.000Z',
    updatedMsAgo: 1500,
    listening: [
      { pid: 11, address: '10.0.0.5', port: 5000, since: '2026-01-01T00:00:01.000Z' },
      { pid: 12, address: 'local', port: null, since: '2026-01-01T00:00:02.000Z' }
    ],
    hiddenBackends: 0,
    queueUsage: 0.0123
  }
  t.equal(formatStatus(status), [
    'session_version  7',
    'updated_at       2026-01-01T00:00:00.000Z (2 s ago)',
    'listening        2 instances',
    '  10.0.0.5:5000  since 2026-01-01T00:00:01.000Z  pid 11',
    '  local  since 2026-01-01T00:00:02.000Z  pid 12',
    'notify queue     1.23% used',
    ''
  ].join('\n'))
})
