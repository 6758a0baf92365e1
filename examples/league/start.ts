// `npm start`: the league example on http://localhost:3000 (PORT to change it).
// Without DATABASE_URL it runs, or reuses, an embedded PostgreSQL kept in .data/
// (LEAGUE_PG_PORT and LEAGUE_PG_DATA to move it), and stops it on Ctrl-C.
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { buildApp } from './app.js'
import { DATA_DIR, readDataSet } from './db/data-set.js'
import { EmbeddedStartError, startEmbedded, type EmbeddedDatabase } from './db/embedded.js'
import { DEMO_PASSWORD, describeImport, importDataSet } from './db/import.js'
import { migrateLeague } from './db/schema.js'

const DEMO_EMAIL = 'alex.moreno@example.com'
// Every process that shares the sessions must sign cookies with the same secret.
const DEMO_SECRET = 'league example secret: set SESSION_SECRET in real use'

const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'
const say = (line: string) => console.log(`[league] ${line}`)

const database: EmbeddedDatabase = process.env.DATABASE_URL !== undefined && process.env.DATABASE_URL !== ''
  ? { url: process.env.DATABASE_URL, owned: false, stop: async () => {} }
  : await startEmbedded(say).catch(exitOnStartError)

try {
  const sql = postgres(database.url, { max: 1, onnotice: () => {} })
  try {
    await migrateLeague(sql)
    const report = await importDataSet(sql, await readDataSet(fileURLToPath(new URL('week1', DATA_DIR))), { onlyIfEmpty: true })
    if (report !== null) for (const line of describeImport(report)) say(line)
  } finally {
    await sql.end({ timeout: 5 })
  }
} catch (err) {
  await database.stop()
  throw err
}

const app = await buildApp({
  databaseUrl: database.url,
  sessionSecret: process.env.SESSION_SECRET ?? DEMO_SECRET,
  session: process.env.SESSION === 'secure' ? 'secure' : 'store',
  logger: { level: process.env.LOG_LEVEL ?? 'info' },
  serverName: `:${port} (pid ${process.pid})`,
  demoLogin: `${DEMO_EMAIL} / ${DEMO_PASSWORD}`
})

let stopping: Promise<void> | undefined
/** The one shutdown: every later call, and every later signal, waits for the same one. */
function stop (signal: string): Promise<void> {
  stopping ??= (async () => {
    app.log.info({ signal }, 'Shutting down')
    // The app first: it ends its listener and session pool while the database is still up.
    await app.close()
    await database.stop()
  })()
  return stopping
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  // A second copy of the signal is common: Ctrl-C reaches both tsx and this process,
  // and tsx relays its copy when this process has not told it within 30 ms that it
  // got one. That copy must wait for the shutdown under way: exiting on it used to
  // end the process before PostgreSQL was stopped. (`on`, not `once`: a process with
  // no listener left for the signal exits at once.)
  process.on(signal, () => {
    stop(signal).then(() => process.exit(0), (err: unknown) => {
      console.error(err)
      process.exit(1)
    })
  })
}

try {
  await app.listen({ port, host })
} catch (err) {
  await stop('listen failed')
  throw err
}
say(`Tennis league on http://localhost:${port}`)
say(`Demo login: ${DEMO_EMAIL} / ${DEMO_PASSWORD}`)
say('Run `npm run etl` in another terminal to import next week\'s data, then click around.')

/** A reason not to start, such as another clone's server on the port: one line, exit code 1. */
function exitOnStartError (err: unknown): never {
  if (!(err instanceof EmbeddedStartError)) throw err
  console.error(`[league] ${err.message}`)
  process.exit(1)
}
