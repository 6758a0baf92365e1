import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import session from '@fastify/session'

interface Teardown { teardown (fn: () => unknown): void }

// session-file-store ships no types: it is a factory over a session module's Store.
const fileStoreOf = createRequire(import.meta.url)('session-file-store') as (module: { Store: unknown }) => new (options: Record<string, unknown>) => unknown

/**
 * A session-file-store in a folder of the test's own, removed at teardown. It
 * answers a missing session with an ENOENT error, as @fastify/session expects
 * of file stores, where the others answer with nothing.
 */
export async function fileSessionStore (t: Teardown): Promise<unknown> {
  const path = await mkdtemp(join(tmpdir(), 'fsr-sessions-'))
  t.teardown(() => rm(path, { recursive: true, force: true }))
  const FileStore = fileStoreOf(session)
  return new FileStore({ path, retries: 0, logFn: () => {}, reapInterval: -1 })
}
