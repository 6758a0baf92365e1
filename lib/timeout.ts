/**
 * Settles with `promise`, or with `onTimeout()` once `ms` have passed, whichever
 * comes first. The timer is cleared either way, so nothing keeps the process up.
 */
export function withTimeout<T> (promise: PromiseLike<T>, ms: number, onTimeout: () => T | PromiseLike<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timedOut = new Promise<T>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(onTimeout())
      } catch (err) {
        reject(err)
      }
    }, ms)
  })
  return Promise.race([promise, timedOut]).finally(() => clearTimeout(timer))
}

/** The longest delay Node's timers take; a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** `ms`, give or take `spread` (0.2: ±20%), so that many instances do not act in the same second. */
export function jitter (ms: number, spread = 0.2): number {
  return Math.min(MAX_TIMER_MS, Math.round(ms * (1 - spread + Math.random() * 2 * spread)))
}
