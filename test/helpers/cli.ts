import { spawn, type ChildProcess } from 'node:child_process'
import { childEnv } from './child-env.js'
import { fileURLToPath } from 'node:url'
import type { CliIo } from '../../lib/cli/cli.js'
import { eventually } from './database.js'

const ENTRY = fileURLToPath(new URL('./cli-entry.ts', import.meta.url))

export interface CliResult { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string }

export interface RunningCli {
  child: ChildProcess
  readonly stdout: string
  readonly stderr: string
  /** Resolves once the process has exited. */
  exited: Promise<CliResult>
}

/** Starts `session-refresh <args>` as a real process. DATABASE_URL is removed unless `env` gives one. */
export function startCli (args: string[], env: Record<string, string> = {}): RunningCli {
  const { DATABASE_URL: _ignored, ...inherited } = childEnv()
  const child = spawn(process.execPath, ['--import', 'tsx', ENTRY, ...args], {
    env: { ...inherited, ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
  return {
    child,
    get stdout () { return stdout },
    get stderr () { return stderr },
    exited
  }
}

/** Runs `session-refresh <args>` to the end. */
export function runCli (args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return startCli(args, env).exited
}

/** Waits until the running command has printed a line matching `pattern`. */
export async function waitForOutput (cli: { readonly stdout: string, readonly stderr: string }, pattern: RegExp, ms = 10_000): Promise<void> {
  try {
    await eventually(`output matching ${pattern}`, () => pattern.test(cli.stdout), ms)
  } catch (err) {
    throw new Error(`${(err as Error).message}; stdout: ${JSON.stringify(cli.stdout)}, stderr: ${JSON.stringify(cli.stderr)}`)
  }
}

export interface CapturedIo extends CliIo {
  stdout: string
  stderr: string
  /** Ends a running `watch`. */
  stop (): void
}

/** An in-process CliIo that collects the output; `stop()` ends `watch`. */
export function captureIo (env: Record<string, string | undefined> = {}): CapturedIo {
  let stop = (): void => {}
  const stopped = new Promise<void>((resolve) => { stop = resolve })
  const io: CapturedIo = {
    stdout: '',
    stderr: '',
    out: (text) => { io.stdout += text },
    err: (text) => { io.stderr += text },
    env,
    stopped: () => stopped,
    stop: () => stop()
  }
  return io
}
