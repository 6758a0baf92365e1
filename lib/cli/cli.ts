import { parseArgs } from 'node:util'
import postgres, { type Sql } from 'postgres'
import { MAX_SCHEMA_BYTES } from '../database/channel.js'
import { DEFAULT_SCHEMA, bumpSessionVersion, migrate, withTableCheck } from '../database/migrate.js'
import { MissingTableError } from '../errors.js'
import { formatStatus, readDatabaseStatus } from './status.js'
import { watch } from './watch.js'

/** What the command reads and writes, so tests can run it in-process. */
export interface CliIo {
  out (text: string): void
  err (text: string): void
  env: Readonly<Record<string, string | undefined>>
  /** Resolves when `watch` should end; called only once watch is listening. */
  stopped (): Promise<void>
}

export const EXIT_OK = 0
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2

// Its own name, so `status` does not count the command as an app instance.
const CLI_APPLICATION_NAME = 'session-refresh-cli'

export const HELP = `Usage: session-refresh <command> [--url <postgres url>] [--schema <name>]

Reads and raises the session version that fastify-session-refresh listens to.
The database comes from --url, else from the DATABASE_URL environment variable;
the tables live in the schema --schema names (default public), as the app's
\`schema\` option does.

Commands:
  migrate          Create or upgrade system_settings, session_user_versions, their
                   triggers and functions, and the session_version row.
                   Safe to run again: it keeps the current version, and on an
                   up-to-date schema it only reads.
                     session-refresh migrate --url postgres://app@db/app
  bump             Raise session_version by one, in one statement, and print it.
                   Call it at the end of an ETL; every app instance refreshes its sessions.
                     DATABASE_URL=postgres://etl@db/app session-refresh bump
  status [--json]  Show the version, when it changed, the app instances listening now
                   and the NOTIFY queue usage.
                     session-refresh status --json
  watch            Print a line for each version change until Ctrl-C.
                     session-refresh watch
  user-changes [notify|poll]
                   Show or set how per-user changes reach the app instances:
                   notify (a NOTIFY each, milliseconds, for tens of instances) or
                   poll (every instance reads them every userPollInterval, for hundreds).
                     session-refresh user-changes poll

Options:
  --url <url>      PostgreSQL connection URL (default: $DATABASE_URL)
  --schema <name>  The schema of the plugin's tables (default: public)
  --json           Machine-readable output (status only)
  -h, --help       Show this help

Exit codes: 0 done, 1 failed, 2 wrong usage; every error is one line on stderr.
`

const COMMANDS = ['migrate', 'bump', 'status', 'watch', 'user-changes'] as const
const USER_CHANGE_MODES = ['notify', 'poll'] as const
type Command = typeof COMMANDS[number]

interface Invocation {
  command: Command
  url: string
  schema: string
  json: boolean
  /** user-changes: the mode to set, or null to show it. */
  mode: typeof USER_CHANGE_MODES[number] | null
}

class UsageError extends Error {}

/**
 * Runs the `session-refresh` command and returns its exit code. Every failure
 * becomes one line on `err`, never a stack trace: operators and ETL scripts read it.
 */
export async function main (argv: readonly string[], io: CliIo): Promise<number> {
  let invocation: Invocation | 'help'
  let sql: Sql
  try {
    invocation = parseInvocation(argv, io.env)
    if (invocation === 'help') {
      io.out(HELP)
      return EXIT_OK
    }
    sql = connect(invocation.url)
  } catch (err) {
    io.err(`session-refresh: ${oneLine(err)} (see session-refresh --help)\n`)
    return EXIT_USAGE
  }
  let code = EXIT_OK
  try {
    await run(sql, invocation, io)
  } catch (err) {
    io.err(`session-refresh: ${describeError(err)}\n`)
    code = EXIT_FAILED
  }
  await sql.end({ timeout: 1 })
  return code
}

function parseInvocation (argv: readonly string[], env: CliIo['env']): Invocation | 'help' {
  const { values, positionals } = parseArgs({
    args: [...argv],
    options: {
      url: { type: 'string' },
      schema: { type: 'string', default: DEFAULT_SCHEMA },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false }
    },
    allowPositionals: true,
    strict: true
  })
  if (values.help || positionals[0] === 'help') return 'help'
  const [command, ...extra] = positionals
  if (command === undefined) throw new UsageError(`missing a command: ${COMMANDS.join(', ')}`)
  if (!isCommand(command)) throw new UsageError(`unknown command \`${command}\`; the commands are ${COMMANDS.join(', ')}`)
  const mode = command === 'user-changes' ? extra.shift() ?? null : null
  if (mode !== null && !(USER_CHANGE_MODES as readonly string[]).includes(mode)) {
    throw new UsageError(`user-changes takes notify or poll, got \`${mode}\``)
  }
  if (extra.length > 0) throw new UsageError(`unexpected argument \`${extra[0]}\``)
  if (values.json && command !== 'status') throw new UsageError('--json applies to `status` only')
  const url = values.url ?? env.DATABASE_URL
  if (!url) throw new UsageError('no database: pass --url <postgres url> or set DATABASE_URL')
  const schema = values.schema
  if (schema.length === 0 || Buffer.byteLength(schema) > MAX_SCHEMA_BYTES) throw new UsageError(`--schema takes a schema name of 1 to ${MAX_SCHEMA_BYTES} bytes`)
  return { command, url, schema, json: values.json, mode: mode as Invocation['mode'] }
}

function isCommand (name: string): name is Command {
  return (COMMANDS as readonly string[]).includes(name)
}

function connect (url: string): Sql {
  try {
    return postgres(url, {
      max: 1,
      connect_timeout: 10,
      onnotice: () => {},
      connection: { application_name: CLI_APPLICATION_NAME }
    })
  } catch (err) {
    // postgres.js parses the URL at once; say which input was wrong, without echoing a password.
    throw new UsageError(`the database URL cannot be parsed (${oneLine(err)})`)
  }
}

async function run (sql: Sql, { command, schema, json, mode }: Invocation, io: CliIo): Promise<void> {
  switch (command) {
    case 'migrate': {
      const applied = await migrate(sql, { schema })
      const status = await readDatabaseStatus(sql, schema)
      for (const file of applied) io.out(`applied ${file} to schema ${schema}\n`)
      io.out(applied.length === 0
        ? `schema ${schema} is up to date; session_version is ${status.version}\n`
        : `schema ${schema} is migrated; session_version is ${status.version}\n`)
      return
    }
    case 'bump':
      io.out(`session_version is now ${await bumpSessionVersion(sql, { schema })}\n`)
      return
    case 'status': {
      const status = await readDatabaseStatus(sql, schema)
      io.out(json ? JSON.stringify(status, null, 2) + '\n' : formatStatus(status))
      return
    }
    case 'user-changes': {
      const [row] = await withTableCheck(mode === null
        ? sql<Array<{ user_notify: boolean }>>`select user_notify from ${sql(schema)}.session_refresh_state`
        : sql<Array<{ user_notify: boolean }>>`update ${sql(schema)}.session_refresh_state set user_notify = ${mode === 'notify'} returning user_notify`)
      if (row === undefined) throw new MissingTableError()
      io.out(row.user_notify
        ? `per-user changes in schema ${schema}: notify (each change notifies every instance at once)\n`
        : `per-user changes in schema ${schema}: poll (every instance reads them every userPollInterval)\n`)
      return
    }
    case 'watch':
      await watch(sql, schema, { out: io.out, error: (err) => io.err(`session-refresh: ${describeError(err)}\n`), stopped: io.stopped })
  }
}

// Errors from the socket, and postgres.js's own ones, that mean "could not talk to the server".
const UNREACHABLE = /^(E[A-Z]+|CONNECT_TIMEOUT|CONNECTION_\w+)$/

/** One line that says what went wrong and, where there is one, what to do. */
export function describeError (err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  if (code === 'FST_SESSION_REFRESH_NOT_MIGRATED') {
    return 'the system_settings table or its session_version row is missing: run `session-refresh migrate` first'
  }
  // 22P02 comes from bump's `value::bigint` when the stored value is not a number.
  if (code === 'FST_SESSION_REFRESH_MALFORMED_VERSION' || code === '22P02') {
    return `session_version in system_settings is not a non-negative integer (${oneLine(err)}); ` +
      "set it with: UPDATE system_settings SET value = '<n>' WHERE key = 'session_version'"
  }
  if (err instanceof postgres.PostgresError) return `the database said: ${oneLine(err)}`
  if (typeof code === 'string' && UNREACHABLE.test(code)) return `cannot reach the database: ${oneLine(err)}`
  return oneLine(err)
}

function oneLine (err: unknown): string {
  // Object() turns null, strings and other thrown non-objects into something to read from.
  const { message, code } = Object(err) as { message?: unknown, code?: unknown }
  // Node's AggregateError (one failure per address tried) has an empty message.
  const text = typeof message === 'string' && message !== '' ? message : String(code ?? err)
  return text.replace(/\s*\n\s*/g, ' ')
}

/** The real process: stdout, stderr, the environment, and Ctrl-C or SIGTERM to end `watch`. */
export function processIo (): CliIo {
  return {
    out: (text) => { process.stdout.write(text) },
    err: (text) => { process.stderr.write(text) },
    env: process.env,
    // Handlers go in only while watching; elsewhere Ctrl-C keeps ending the process at once.
    stopped: () => new Promise((resolve) => {
      const stop = (): void => {
        process.off('SIGINT', stop).off('SIGTERM', stop)
        resolve()
      }
      process.on('SIGINT', stop).on('SIGTERM', stop)
    })
  }
}
