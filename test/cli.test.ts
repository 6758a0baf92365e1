// The `session-refresh` command, as a real process and in-process, path by path.
// Long: every command and every error of one small program, on databases set up
// once; split by command, each file would repeat that setup.
import { randomBytes } from 'node:crypto'
import { readdir } from 'node:fs/promises'
import type { Sql } from 'postgres'
import t, { type Test } from 'tap'
import { describeError, EXIT_FAILED, EXIT_OK, EXIT_USAGE, HELP, main, processIo } from '../lib/cli/cli.js'
import { formatAge, formatStatus, type DatabaseStatus } from '../lib/cli/status.js'
import { APPLICATION_NAME } from '../lib/database/connection.js'
import { bumpSessionVersion, readSessionVersion } from '../lib/index.js'
import { buildApp } from './helpers/app.js'
import { captureIo, runCli, startCli, waitForOutput, type CliResult } from './helpers/cli.js'
import { createDatabase, eventually } from './helpers/database.js'
import { freePort } from './helpers/free-port.js'
import { appGrants, createRole } from './helpers/roles.js'

// A bound for waits: far above what they take, on a loaded 2-core machine.
const WAIT = 30_000
// This file creates many databases (and processes); on a loaded machine that can take minutes.
t.setTimeout(300_000)

const ETL_UPDATE = "UPDATE system_settings SET value = (value::bigint + 1)::text WHERE key = 'session_version'"
const NOT_MIGRATED = 'session-refresh: the system_settings table or its session_version row is missing: run `session-refresh migrate` first\n'

/** Exactly one line on stderr, matching `pattern`, and nothing that looks like a stack frame. */
function assertOneLineError (t: Test, result: { stderr: string }, pattern: RegExp): void {
  t.match(result.stderr, pattern)
  t.notMatch(result.stderr, /^\s+at /m, 'no stack trace')
  t.equal(result.stderr.split('\n').length, 2, `one line: ${JSON.stringify(result.stderr)}`)
  t.ok(result.stderr.endsWith('\n'), 'ended by a newline')
}

/** What migrate applies: every file in sql/, in name order. */
async function sqlFiles (): Promise<string[]> {
  return (await readdir(new URL('../sql/', import.meta.url))).filter((name) => name.endsWith('.sql')).sort()
}

/** What `migrate` prints when it applies every file to `schema`. */
async function appliedLines (schema: string): Promise<string> {
  return (await sqlFiles()).map((file) => `applied ${file} to schema ${schema}\n`).join('')
}

/** The server's clock in microseconds, as the trigger reads it. */
async function serverMicros (sql: Sql): Promise<number> {
  const [row] = await sql<[{ now: string }]>`select (extract(epoch from clock_timestamp()) * 1000000)::bigint::text as now`
  return Number(row.now)
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

/** The schema's relations and functions: what a migration would have left there. */
async function objectsIn (sql: Sql, schema: string): Promise<number> {
  const [row] = await sql<[{ count: number }]>`
    select (select count(*) from pg_class where relnamespace = ${schema}::regnamespace)::int
         + (select count(*) from pg_proc where pronamespace = ${schema}::regnamespace)::int as count`
  return row.count
}

// Long: one subtest per command path, sharing the database set up here.
t.test('as a real process', async (t) => {
  t.test('--help lists every command with an example, exit 0', async (t) => {
    const result = await runCli(['--help'])
    t.equal(result.code, 0)
    t.equal(result.stderr, '')
    t.equal(result.stdout, HELP)
    for (const example of ['session-refresh migrate --url', 'session-refresh bump', 'session-refresh status --json', 'session-refresh watch']) {
      t.match(result.stdout, example)
    }
  })

  t.test('11.15: every usage error is one line on stderr, exit 2', async (t) => {
    const db = 'postgres://nobody@127.0.0.1:1/none'
    const cases: Array<[string, string[], Record<string, string>, string]> = [
      ['an unknown command', ['frobnicate'], { DATABASE_URL: db },
        'unknown command `frobnicate`; the commands are migrate, bump, status, watch, user-changes'],
      ['no command', [], { DATABASE_URL: db }, 'missing a command: migrate, bump, status, watch, user-changes'],
      ['an extra argument', ['status', 'now'], { DATABASE_URL: db }, 'unexpected argument `now`'],
      ['--json on bump', ['bump', '--json'], { DATABASE_URL: db }, '--json applies to `status` only'],
      ['no database', ['status'], {}, 'no database: pass --url <postgres url> or set DATABASE_URL'],
      ['a URL that cannot be parsed', ['status', '--url', 'not a url'], {}, 'the database URL cannot be parsed (Invalid URL)'],
      ['an empty --schema', ['status', '--schema', ''], { DATABASE_URL: db }, '--schema takes a schema name of 1 to 47 bytes'],
      ['a --schema too long for a channel name', ['bump', '--schema', 'x'.repeat(48)], { DATABASE_URL: db },
        '--schema takes a schema name of 1 to 47 bytes'],
      ['--schema without a value', ['migrate', '--schema'], { DATABASE_URL: db }, "Option '--schema <value>' argument missing"],
      ['an unknown option', ['status', '--verbose'], { DATABASE_URL: db },
        'Unknown option \'--verbose\'. To specify a positional argument starting with a \'-\', place it at the end of the command after \'--\', as in \'-- "--verbose"']
    ]
    // In parallel: each is a process of its own, and none reaches a database.
    const results = await Promise.all(cases.map(([, argv, env]) => runCli(argv, env)))
    cases.forEach(([what, , , message], i) => {
      const result = results[i]!
      t.equal(result.code, EXIT_USAGE, what)
      t.equal(result.stdout, '', what)
      t.equal(result.stderr, `session-refresh: ${message} (see session-refresh --help)\n`, what)
    })
  })

  t.test('an unreachable server: one line, exit 1', async (t) => {
    const url = `postgres://postgres:postgres@127.0.0.1:${await freePort()}/postgres`
    const result = await runCli(['status', '--url', url])
    t.equal(result.code, 1)
    t.equal(result.stdout, '')
    assertOneLineError(t, result, /^session-refresh: cannot reach the database: .*ECONNREFUSED/)
  })

  t.test('a missing table suggests migrate, exit 1; migrate creates it and says which schema', async (t) => {
    const db = await createDatabase(t, { migrated: false })
    for (const command of ['status', 'bump', 'watch']) {
      const result = await runCli([command, '--url', db.url])
      t.equal(result.code, 1, command)
      t.equal(result.stdout, '', command)
      t.equal(result.stderr, NOT_MIGRATED, command)
    }

    const first = await runCli(['migrate'], { DATABASE_URL: db.url })
    t.equal(first.code, 0, first.stderr)
    t.equal(first.stdout, `${await appliedLines('public')}schema public is migrated; session_version is 1\n`)
    t.equal(await readSessionVersion(db.sql), 1)
    const bumped = await bumpSessionVersion(db.sql)
    const again = await runCli(['migrate'], { DATABASE_URL: db.url })
    t.equal(again.code, 0, again.stderr)
    t.equal(again.stdout, `schema public is up to date; session_version is ${bumped}\n`, 'nothing applied; the version kept')
    t.equal(await readSessionVersion(db.sql), bumped)
  })

  t.test('bump gives a new version (at least old + 1, at least the server clock in µs) and prints it', async (t) => {
    const db = await createDatabase(t)
    const from = await serverMicros(db.sql)
    const result = await runCli(['bump'], { DATABASE_URL: db.url })
    const to = await serverMicros(db.sql)
    t.equal(result.code, 0)
    t.equal(result.stderr, '')
    const version = await readSessionVersion(db.sql)
    t.equal(result.stdout, `session_version is now ${version}\n`)
    t.ok(version >= from && version <= to, `the clock at the bump: ${from} <= ${version} <= ${to}`)
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
    t.equal(status.schema, 'public')
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
    t.match(text.stdout, /^schema {11}public\nsession_version {2}1\n/)
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
      await waitForOutput(cli, /^watching session_version, now 1 \(.+ since updated_at\); Ctrl-C to stop\n/, WAIT)
      await db.sql.unsafe(ETL_UPDATE)
      const version = await readSessionVersion(db.sql)
      await waitForOutput(cli, new RegExp(`\\n\\d{4}-\\d\\d-\\d\\dT\\S+Z {2}session_version 1 -> ${version} {2}\\(\\d+ (ms|s) since updated_at\\)\\n$`), WAIT)
      cli.child.kill(signal)
      const result: CliResult = await cli.exited
      t.equal(result.code, 0)
      t.equal(result.signal, null)
      t.equal(result.stderr, '')
    })
  }

  t.test('11.11: migrate uses public, not the schema named after the role; --schema picks another', async (t) => {
    const db = await createDatabase(t)
    const version = await bumpSessionVersion(db.sql)
    const role = await createRole(t, db, 'app')
    await db.sql.unsafe(`create schema ${role.name} authorization ${role.name}`)
    for (const statement of appGrants('public', role.name)) await db.sql.unsafe(statement)
    const [path] = await role.connect(t)`select current_schema() as schema`
    t.equal(path!.schema, role.name, 'under the default "$user", public search path, unqualified names would land in the role\'s schema')

    const result = await runCli(['migrate'], { DATABASE_URL: role.url })
    t.equal(result.stderr, '')
    t.equal(result.code, 0)
    t.equal(result.stdout, `schema public is up to date; session_version is ${version}\n`, 'it names public and its real version')
    t.equal(await objectsIn(db.sql, role.name), 0, "nothing was created in the role's schema")

    const own = await runCli(['migrate', '--schema', role.name, '--url', role.url])
    t.equal(own.stderr, '')
    t.equal(own.code, 0)
    t.equal(own.stdout, `${await appliedLines(role.name)}schema ${role.name} is migrated; session_version is 1\n`)
    t.equal(await readSessionVersion(db.sql, { schema: role.name }), 1)
    t.equal(await readSessionVersion(db.sql), version, 'public is as it was')
    const [owner] = await db.sql`select tableowner from pg_tables where schemaname = ${role.name} and tablename = 'system_settings'`
    t.equal(owner!.tableowner, role.name)
  })
})

// Long: one subtest per command path, sharing the database set up here.
t.test('in-process, for every path', async (t) => {
  t.test('help, and wrong usage exits 2 with one line', async (t) => {
    for (const argv of [['--help'], ['-h'], ['help'], ['status', '--help']]) {
      const io = captureIo()
      t.equal(await main(argv, io), EXIT_OK, argv.join(' '))
      t.equal(io.stdout, HELP)
    }
    const cases: Array<[string[], string]> = [
      [[], 'missing a command: migrate, bump, status, watch, user-changes'],
      [['frobnicate'], 'unknown command `frobnicate`; the commands are migrate, bump, status, watch, user-changes'],
      [['status', 'now'], 'unexpected argument `now`'],
      [['bump', '--json'], '--json applies to `status` only'],
      [['status'], 'no database: pass --url <postgres url> or set DATABASE_URL'],
      [['status', '--url', 'not a url'], 'the database URL cannot be parsed (Invalid URL)'],
      [['status', '--url', 'postgres://a@db:99999/x'], 'the database URL cannot be parsed (Invalid URL)'],
      [['status', '--url', 'postgres://db/x', '--schema', 'y'.repeat(48)], '--schema takes a schema name of 1 to 47 bytes'],
      [['status', '--url', 'postgres://db/x', '--schema', 'é'.repeat(24)], '--schema takes a schema name of 1 to 47 bytes']
    ]
    for (const [argv, message] of cases) {
      const io = captureIo()
      t.equal(await main(argv, io), EXIT_USAGE, argv.join(' '))
      t.equal(io.stderr, `session-refresh: ${message} (see session-refresh --help)\n`, argv.join(' '))
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
    const bumped = await readSessionVersion(db.sql)
    t.equal(await main(['migrate'], io), EXIT_OK)
    t.equal(await main(['status', '--json'], io), EXIT_OK)
    const json = io.stdout.slice(io.stdout.indexOf('{'))
    t.equal(io.stdout.slice(0, io.stdout.indexOf('{')), await appliedLines('public') +
      'schema public is migrated; session_version is 1\n' +
      `session_version is now ${bumped}\n` +
      `schema public is up to date; session_version is ${bumped}\n`)
    t.match(JSON.parse(json), { schema: 'public', version: bumped, listening: [], hiddenBackends: 0 })
    t.equal(io.stderr, '')

    // The table is there, the row is not.
    await db.sql`truncate system_settings`
    for (const command of ['status', 'bump']) {
      const missing = captureIo({ DATABASE_URL: db.url })
      t.equal(await main([command], missing), EXIT_FAILED, command)
      t.equal(missing.stderr, NOT_MIGRATED, command)
    }
  })

  t.test('user-changes shows and sets how per-user changes travel; a wrong mode is usage, a missing table says migrate', async (t) => {
    const db = await createDatabase(t)
    const run = async (argv: string[]): Promise<{ code: number, out: string, err: string }> => {
      const io = captureIo({ DATABASE_URL: db.url })
      const code = await main(argv, io)
      return { code, out: io.stdout, err: io.stderr }
    }
    const notify = 'per-user changes in schema public: notify (each change notifies every instance at once)\n'
    const poll = 'per-user changes in schema public: poll (every instance reads them every userPollInterval)\n'
    t.same(await run(['user-changes']), { code: EXIT_OK, out: notify, err: '' }, 'notify by default')
    t.same(await run(['user-changes', 'poll']), { code: EXIT_OK, out: poll, err: '' })
    const [state] = await db.sql`select user_notify from session_refresh_state`
    t.equal(state!.user_notify, false, 'the table says poll')
    t.same(await run(['user-changes']), { code: EXIT_OK, out: poll, err: '' }, 'read back')
    t.same(await run(['user-changes', 'notify']), { code: EXIT_OK, out: notify, err: '' })
    t.same(await run(['user-changes', 'sometimes']), { code: EXIT_USAGE, out: '', err: 'session-refresh: user-changes takes notify or poll, got `sometimes` (see session-refresh --help)\n' })
    t.same(await run(['user-changes', 'poll', 'now']), { code: EXIT_USAGE, out: '', err: 'session-refresh: unexpected argument `now` (see session-refresh --help)\n' })
    await db.sql`delete from session_refresh_state`
    t.same(await run(['user-changes']), { code: EXIT_FAILED, out: '', err: NOT_MIGRATED }, 'no state row: migrate')
  })

  t.test('11.7: after the row was truncated, bump fails in one line; migrate, as it says, makes it work again', async (t) => {
    const db = await createDatabase(t)
    const last = await bumpSessionVersion(db.sql)
    await db.sql`truncate system_settings`
    const bump = captureIo({ DATABASE_URL: db.url })
    t.equal(await main(['bump'], bump), EXIT_FAILED)
    t.equal(bump.stderr, NOT_MIGRATED)
    t.equal(bump.stdout, '')

    const migrating = captureIo({ DATABASE_URL: db.url })
    t.equal(await main(['migrate'], migrating), EXIT_OK, migrating.stderr)
    t.equal(migrating.stderr, '')
    const restored = await readSessionVersion(db.sql)
    t.ok(restored > last, `the row is back with a version never given out before (${restored} > ${last})`)
    t.equal(migrating.stdout, `schema public is up to date; session_version is ${restored}\n`, 'no file needed applying')
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
    const viewer = await createRole(t, db, 'viewer')
    await db.sql.unsafe(`grant select on system_settings to ${viewer.name}`)
    const io = captureIo()
    t.equal(await main(['status', '--url', viewer.url], io), EXIT_OK, io.stderr)
    t.match(io.stdout, /\nlistening {8}none: no app instance is listening on this database\n {2}\(2 backends of another role are hidden: connect as the app's role or one with pg_read_all_stats\)\n/)
  })

  t.test('watch: changes, odd payloads, reconnects, read errors, stop', async (t) => {
    const db = await createDatabase(t)
    const io = captureIo({ DATABASE_URL: db.url })
    const exit = main(['watch'], io)
    await waitForOutput(io, /^watching session_version, now 1 /, WAIT)

    const second = await bumpSessionVersion(db.sql)
    await waitForOutput(io, new RegExp(`session_version 1 -> ${second} {2}\\(\\d+ (ms|s) since updated_at\\)\\n$`), WAIT)
    // Per-user hints and heartbeats share the channel; watch shows versions only.
    await db.sql`select pg_notify('session_refresh', 'users')`
    await db.sql`select pg_notify('session_refresh', 'heartbeat:abc:1')`
    // Version payloads that are not the table's: a hint to read it, never a value to show.
    await db.sql`select pg_notify('session_refresh', 'version:not-a-version')`
    await db.sql`select pg_notify('session_refresh', 'version:999')`
    // Once this bump is shown, the table says `third`: what the payloads above make watch
    // read from now on has nothing to print.
    const third = await bumpSessionVersion(db.sql)
    await waitForOutput(io, new RegExp(`\\n\\S+ {2}session_version ${second} -> ${third} {2}\\(\\d+ (ms|s) since updated_at\\)\\n$`), WAIT)
    t.equal(io.stdout.split('\n').length, 4, 'the other payloads printed nothing')

    // A reconnect reads the table, since what was sent while it was down is lost
    // (a change it missed: see test/cli-watch.test.ts).
    t.equal(await terminateListeners(db.sql, 'session-refresh-cli'), 1)
    await waitForOutput(io, new RegExp(`\\n\\S+ {2}reconnected; session_version is ${third}\\n$`), WAIT)

    // Reads that fail are reported and watching goes on.
    await db.sql`alter table system_settings rename to system_settings_away`
    await db.sql`select pg_notify('session_refresh', 'version:3')`
    await eventually('a read error', () => io.stderr.split('\n').length === 2, WAIT)
    t.equal(await terminateListeners(db.sql, 'session-refresh-cli'), 1)
    await eventually('a second read error', () => io.stderr.split('\n').length === 3, WAIT)
    t.equal(io.stderr, NOT_MIGRATED.repeat(2))
    await db.sql`alter table system_settings_away rename to system_settings`
    const fourth = await bumpSessionVersion(db.sql)
    await waitForOutput(io, new RegExp(`session_version ${third} -> ${fourth} `), WAIT)

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
    schema: 'tenant_a',
    version: 7,
    updatedAt: '2026-01-01T00:00:00.000Z',
    updatedMsAgo: 1500,
    listening: [
      { pid: 11, address: '10.0.0.5', port: 5000, since: '2026-01-01T00:00:01.000Z' },
      { pid: 12, address: 'local', port: null, since: '2026-01-01T00:00:02.000Z' }
    ],
    hiddenBackends: 3,
    queueUsage: 0.0123
  }
  t.equal(formatStatus(status), [
    'schema           tenant_a',
    'session_version  7',
    'updated_at       2026-01-01T00:00:00.000Z (2 s ago)',
    'listening        2 instances',
    '  10.0.0.5:5000  since 2026-01-01T00:00:01.000Z  pid 11',
    '  local  since 2026-01-01T00:00:02.000Z  pid 12',
    "  (3 backends of another role are hidden: connect as the app's role or one with pg_read_all_stats)",
    'notify queue     1.23% used',
    ''
  ].join('\n'))
  t.equal(formatStatus({ ...status, listening: [], hiddenBackends: 0 }).split('\n')[3],
    'listening        none: no app instance is listening on this database')
})
