/**
 * Runs at most `max` tasks at once; the rest wait in arrival order.
 * After a bump every active session refreshes, and this keeps that storm
 * from opening more database work than the app's pool can take.
 */
export class Limiter {
  readonly #max: number
  readonly #waiting: Array<() => void> = []
  #running = 0

  constructor (max: number) {
    this.#max = max
  }

  get running (): number {
    return this.#running
  }

  get waiting (): number {
    return this.#waiting.length
  }

  get full (): boolean {
    return this.#running >= this.#max
  }

  async run<T> (task: () => Promise<T>): Promise<T> {
    if (this.full) {
      await new Promise<void>((resolve) => this.#waiting.push(resolve))
    } else {
      this.#running++
    }
    try {
      return await task()
    } finally {
      // Hand the slot straight to the next waiter, so the count never dips.
      const next = this.#waiting.shift()
      if (next) next()
      else this.#running--
    }
  }
}
