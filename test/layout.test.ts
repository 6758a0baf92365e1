// Issue 15: the three parts of lib/ import each other in one direction only.
// lib/request (runs inside Fastify) and lib/database (keeps versions in memory)
// meet only at lib/view.ts; lib/cli (the operator command) never touches the
// request path; lib/index.ts alone wires the parts together.
import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const LIB = fileURLToPath(new URL('../lib/', import.meta.url))

async function sources (dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true })
  const nested = await Promise.all(entries.map((e) => e.isDirectory() ? sources(join(dir, e.name)) : Promise.resolve(e.name.endsWith('.ts') ? [join(dir, e.name)] : [])))
  return nested.flat()
}

/** The lib/ files a source imports, as paths relative to lib/ (e.g. 'database/listener.ts'). */
async function importsOf (file: string): Promise<string[]> {
  const text = await readFile(file, 'utf8')
  const specifiers = [...text.matchAll(/(?:from|import)\s*\(?\s*'(\.[^']+)'/g)].map((m) => m[1]!)
  return specifiers.map((s) => relative(LIB, resolve(dirname(file), s)).replace(/\.js$/, '.ts'))
}

const part = (path: string): string => path.includes('/') ? path.split('/')[0]! : path

// Which part may import which: the entry wires all; the others only what is listed.
const ALLOWED: Record<string, (target: string) => boolean> = {
  request: (target) => !['database', 'cli', 'index.ts'].includes(part(target)),
  database: (target) => !['request', 'cli', 'index.ts'].includes(part(target)),
  cli: (target) => !['request', 'index.ts'].includes(part(target)),
  'view.ts': () => false
}

t.test('lib/request and lib/database meet only at lib/view.ts; lib/cli never imports the request path', async (t) => {
  const files = await sources(LIB)
  t.ok(files.length > 20, `${files.length} files read`)
  const wrong: string[] = []
  for (const file of files) {
    const from = relative(LIB, file)
    const allowed = ALLOWED[part(from)]
    if (allowed === undefined) continue // index.ts, options.ts, errors.ts, timeout.ts: shared or the entry
    for (const target of await importsOf(file)) if (!allowed(target)) wrong.push(`${from} imports ${target}`)
  }
  t.same(wrong, [])
})

t.test('the check tells a wrong import when it sees one', async (t) => {
  t.equal(ALLOWED.request!('database/listener.ts'), false)
  t.equal(ALLOWED.request!('view.ts'), true)
  t.equal(ALLOWED.cli!('request/hook.ts'), false)
  t.equal(ALLOWED.cli!('database/migrate.ts'), true)
  t.equal(ALLOWED.database!('request/verdict.ts'), false)
  t.same(await importsOf(join(LIB, 'request', 'hook.ts')).then((list) => list.filter((p) => p.startsWith('database/'))), [])
})

t.test('no file of lib/ is much over 300 lines', async (t) => {
  const long: string[] = []
  for (const file of await sources(LIB)) {
    const lines = (await readFile(file, 'utf8')).split('\n').length
    if (lines > 340) long.push(`${relative(LIB, file)}: ${lines} lines`)
  }
  t.same(long, [])
})
