// Finds or starts the one Redis server a test run uses: REDIS_URL when set, else
// Debian's redis-server, started by tap's `before` script on a free port and
// stopped by its `after` script. Where it is goes to REDIS_STATE_FILE, as the
// PostgreSQL server goes to STATE_FILE.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '../helpers/free-port.js'
import { debianBinary } from './debian-package.js'
import { REDIS_STATE_FILE } from './state-file.js'

export type RedisInfo =
  | { kind: 'env', url: string }
  | { kind: 'started', url: string, pid: number, dir: string }

const READY_WITHIN_MS = 30_000

export async function readRedisInfo (): Promise<RedisInfo> {
  try {
    return JSON.parse(await readFile(REDIS_STATE_FILE, 'utf8')) as RedisInfo
  } catch {
    throw new Error('No test Redis: run the tests with `npm test`, which starts one (test/setup/before.ts)')
  }
}

export async function startRedis (): Promise<RedisInfo> {
  const info: RedisInfo = process.env.REDIS_URL
    ? { kind: 'env', url: process.env.REDIS_URL }
    : await startRedisServer()
  await writeFile(REDIS_STATE_FILE, JSON.stringify(info))
  return info
}

/** Stops what startRedis started; nothing to do when it started nothing (no state file). */
export async function stopRedis (): Promise<void> {
  const info = await readRedisInfo().catch(() => null)
  if (info?.kind === 'started') {
    await stopProcess(info.pid)
    await rm(info.dir, { recursive: true, force: true })
  }
  await rm(REDIS_STATE_FILE, { force: true })
}

async function startRedisServer (): Promise<RedisInfo> {
  const binary = await debianBinary('redis-server', 'redis-server')
  const dir = await mkdtemp(join(tmpdir(), 'fsr-test-redis-'))
  const port = await freePort()
  const logFile = join(dir, 'redis.log')
  const log = await open(logFile, 'a')
  // Detached, so it outlives the before script; nothing on disk: a test store, not a database.
  const child = spawn(binary, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--save', '', '--appendonly', 'no', '--daemonize', 'no'
  ], { detached: true, stdio: ['ignore', log.fd, log.fd] })
  await log.close()
  try {
    await waitUntilAnswering(port, child, logFile)
  } catch (err) {
    child.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
    throw err
  }
  child.unref()
  return { kind: 'started', url: `redis://127.0.0.1:${port}`, pid: child.pid!, dir }
}

async function waitUntilAnswering (port: number, child: ChildProcess, logFile: string): Promise<void> {
  let exit: string | null = null
  child.once('exit', (code, signal) => { exit = signal ?? `code ${code}` })
  child.once('error', (err) => { exit = err.message })
  const until = Date.now() + READY_WITHIN_MS
  while (!(await answersPing(port))) {
    if (exit) throw new Error(`redis-server exited (${exit}) before answering:\n${await readFile(logFile, 'utf8')}`)
    if (Date.now() > until) throw new Error(`redis-server did not answer on port ${port} within ${READY_WITHIN_MS} ms`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Whether a Redis server answers PING on 127.0.0.1:`port`, in plain RESP (no client to set up). */
function answersPing (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write('PING\r\n'))
    const done = (answer: boolean): void => { socket.destroy(); resolve(answer) }
    socket.setTimeout(1000, () => done(false))
    socket.once('data', (data) => done(data.toString().startsWith('+PONG')))
    socket.once('error', () => done(false))
  })
}

async function stopProcess (pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM')
  } catch {
    return // already gone
  }
  const until = Date.now() + READY_WITHIN_MS
  while (await isRunning(pid)) {
    if (Date.now() > until) {
      process.kill(pid, 'SIGKILL')
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/**
 * Whether `pid` runs. A zombie does not: the before script that started Redis
 * has exited, and whatever adopted the process may never reap it.
 */
async function isRunning (pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null)
  return stat !== null && stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
}
