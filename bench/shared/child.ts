// Parent <-> child plumbing for the bench: the load generator (bench/run.ts)
// forks each app server and worker (bench/workers/) into its own Node process
// and talks to it over the IPC channel.
import { fork, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

interface Reply { id: number, result?: unknown, error?: string }
export interface ChildEvent { event: string, [key: string]: unknown }

export interface Child {
  readonly process: ChildProcess
  /** Runs `command` in the child and resolves with what it returned. */
  call<T> (command: string, args?: unknown): Promise<T>
  /** Events the child sent on its own (not replies). */
  onEvent (listener: (event: ChildEvent) => void): void
  /** Asks the child to close and exit; kills it after `ms`. */
  stop (ms?: number): Promise<void>
}

export interface ForkOptions {
  /** Directory for `--cpu-prof` output, when profiling. */
  cpuProfDir?: string
}

/**
 * Forks `file` with tsx and --expose-gc and waits for its `ready` event.
 * (Long: the child's events, exit and error handling belong to the one promise.)
 */
export async function forkChild (file: URL, args: string[], options: ForkOptions = {}): Promise<{ child: Child, ready: ChildEvent }> {
  const execArgv = ['--import', 'tsx', '--expose-gc']
  if (options.cpuProfDir) execArgv.push('--cpu-prof', `--cpu-prof-dir=${options.cpuProfDir}`)
  const proc = fork(fileURLToPath(file), args, { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void }>()
  const listeners: Array<(event: ChildEvent) => void> = []
  let nextId = 0
  let exited: string | null = null
  const exit = new Promise<void>((resolve) => proc.once('exit', (code, signal) => { exited = signal ?? `code ${code}`; resolve() }))
  void exit.then(() => {
    for (const { reject } of pending.values()) reject(new Error(`${file.pathname} exited (${exited})`))
    pending.clear()
  })

  const ready = new Promise<ChildEvent>((resolve, reject) => {
    proc.once('exit', (code) => reject(new Error(`${file.pathname} ${args.join(' ')} exited with ${code} before it was ready`)))
    proc.on('message', (raw) => {
      const message = raw as Reply | ChildEvent
      if ('event' in message) {
        if (message.event === 'ready') resolve(message)
        for (const listener of listeners) listener(message)
        return
      }
      const waiter = pending.get(message.id)
      if (!waiter) return
      pending.delete(message.id)
      if (message.error !== undefined) waiter.reject(new Error(message.error))
      else waiter.resolve(message.result)
    })
  })

  const child: Child = {
    process: proc,
    call<T> (command: string, args?: unknown): Promise<T> {
      if (exited !== null) return Promise.reject(new Error(`${file.pathname} has exited (${exited})`))
      const id = ++nextId
      return new Promise<T>((resolve, reject) => {
        pending.set(id, { resolve: resolve as (value: unknown) => void, reject })
        proc.send({ id, command, args })
      })
    },
    onEvent (listener) {
      listeners.push(listener)
    },
    async stop (ms = 5000) {
      if (exited !== null) return
      const timer = setTimeout(() => proc.kill('SIGKILL'), ms)
      try {
        await child.call('close').catch(() => {})
        await exit
      } finally {
        clearTimeout(timer)
      }
    }
  }
  try {
    return { child, ready: await ready }
  } catch (err) {
    proc.kill('SIGKILL')
    throw err
  }
}

type Commands = Record<string, (args: unknown) => unknown>

/** In a child: answers the parent's commands; `close` runs `onClose` and exits. */
export function serveCommands (commands: Commands, onClose: () => Promise<void>): void {
  const send = (message: unknown): void => { process.send?.(message) }
  process.on('message', (raw) => {
    const { id, command, args } = raw as { id: number, command: string, args: unknown }
    if (command === 'close') {
      void onClose().finally(() => {
        send({ id, result: null })
        process.disconnect()
        process.exitCode = 0
      })
      return
    }
    const run = commands[command]
    if (!run) {
      send({ id, error: `unknown command ${command}` })
      return
    }
    Promise.resolve().then(() => run(args)).then(
      (result) => send({ id, result: result ?? null }),
      (err: unknown) => send({ id, error: String((err as Error).stack ?? err) })
    )
  })
  // The parent is gone (it crashed or was killed): do not linger.
  process.once('disconnect', () => { void onClose().finally(() => process.exit(0)) })
}

export function sendEvent (event: ChildEvent): void {
  process.send?.(event)
}

/** Heap in use after two full collections; needs --expose-gc. */
export function heapAfterGc (): number {
  const gc = (globalThis as { gc?: () => void }).gc
  if (!gc) throw new Error('run with --expose-gc')
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

/** The soft limit on open files (`ulimit -n`) of this process, or null if none or unknown. */
export function openFileLimit (): number | null {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'))
    const soft = line?.split(/\s{2,}/)[1]
    return soft === undefined || soft === 'unlimited' ? null : Number(soft)
  } catch {
    return null
  }
}
