// The league ETL: `npm run etl [-- --data <dir>]`. Re-imports one week's JSON
// in one transaction and raises session_version, which every app process hears.
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import postgres from 'postgres'
import { DATA_DIR, readDataSet } from './db/data-set.js'
import { EMBEDDED_URL } from './db/embedded.js'
import { describeImport, importDataSet } from './db/import.js'
import { migrateLeague } from './db/schema.js'

const { values } = parseArgs({
  options: { data: { type: 'string', default: fileURLToPath(new URL('week2', DATA_DIR)) } }
})
const url = process.env.DATABASE_URL ?? EMBEDDED_URL
const sql = postgres(url, { max: 1, connect_timeout: 5, onnotice: () => {} })

try {
  const data = await readDataSet(values.data)
  await migrateLeague(sql)
  const report = await importDataSet(sql, data)
  for (const line of describeImport(report!)) console.log(line)
} catch (err) {
  console.error(`ETL failed and changed nothing: ${err instanceof Error ? err.message : String(err)}`)
  if ((err as { code?: string }).code === 'ECONNREFUSED') {
    console.error(`No database at ${url.replace(/:[^:@/]+@/, ':***@')}: start the app first (npm start), or set DATABASE_URL.`)
  }
  process.exitCode = 1
} finally {
  await sql.end({ timeout: 5 })
}
