// The bench's progress lines (on stderr) and its clocks.

const started = Date.now()

/** A progress logger: `[  12.3 s] <prefix>message`, seconds since the bench started. */
export function logger (prefix = '', width = 5): (message: string) => void {
  return (message) => { console.error(`[${((Date.now() - started) / 1000).toFixed(1).padStart(width)} s] ${prefix}${message}`) }
}

export const log = logger()

/** Seconds since the bench started. */
export const elapsedSeconds = (): number => (Date.now() - started) / 1000

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * CLOCK_MONOTONIC in ms (process.hrtime.bigint()): the same clock in every process
 * on the machine, so times taken in two processes can be subtracted.
 */
export const hrMs = (): number => Number(process.hrtime.bigint()) / 1e6

export function withTimeout<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise,
    new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${Math.round(ms / 1000)} s`)), ms) })
  ]).finally(() => clearTimeout(timer))
}
