import type { FastifyBaseLogger } from 'fastify'

// How often start()'s own notification is sent again until it comes back.
const ROUND_TRIP_RESEND_MS = 500

export interface HeartbeatOptions {
  interval: number
  timeout: number
  /** Sends a payload through the other connection, to come back on the LISTEN one. */
  send: (payload: string) => Promise<unknown>
  /** The heartbeat did not come back in time: the link is dead. */
  onMiss: () => void
  log: FastifyBaseLogger
}

/**
 * Proves that the LISTEN connection still delivers. A connection can die
 * silently (a half-open link that never reports an error), and then only a
 * notification that was sent and did not come back tells.
 *
 * Anything that comes through the LISTEN connection proves the link, another
 * instance's heartbeat included: a heartbeat goes out only after a whole
 * `interval` with nothing heard, so N instances send about one heartbeat per
 * interval between them, not N. Every NOTIFY wakes every listener of the
 * database, so N per interval would cost the database N².
 */
export class Heartbeat {
  readonly #options: HeartbeatOptions
  readonly #instance: string
  #sent = 0
  #lastProof = performance.now()
  #pending: string | null = null
  #deadline: NodeJS.Timeout | undefined
  #onToken: ((payload: string) => void) | null = null
  #resend: NodeJS.Timeout | undefined
  misses = 0
  lastAt: Date | null = null

  constructor (instance: string, options: HeartbeatOptions) {
    this.#instance = instance
    this.#options = options
  }

  /** Anything came through the LISTEN connection (or it was just made): the link works. */
  heard (payload: string | null): void {
    this.#lastProof = performance.now()
    if (this.#pending !== null) {
      clearTimeout(this.#deadline)
      this.#pending = null
    }
    if (payload?.startsWith('heartbeat:') === true) {
      this.lastAt = new Date()
      this.#onToken?.(payload)
    }
  }

  /** Sends a heartbeat if nothing was heard for a whole interval and none is on its way. */
  tick (): void {
    if (this.#pending !== null || performance.now() - this.#lastProof < this.#options.interval) return
    const token = `heartbeat:${this.#instance}:${++this.#sent}`
    this.#pending = token
    this.#deadline = setTimeout(() => this.#missed(), this.#options.timeout).unref()
    this.#options.send(token).catch((err: unknown) => {
      this.#options.log.warn({ err }, 'Could not send the session_version heartbeat')
    })
  }

  /**
   * Resolves once a notification sent now comes back: a pooler in transaction
   * mode takes LISTEN and then delivers nothing, and only this proves it works.
   */
  async roundTrip (): Promise<void> {
    const token = `heartbeat:${this.#instance}:start`
    const arrived = new Promise<void>((resolve) => {
      this.#onToken = (payload) => { if (payload === token) resolve() }
    })
    await this.#options.send(token)
    // A LISTEN connection that dropped and was made again meanwhile never got
    // it: sent again until one comes back (or start() gives up and stops it).
    this.#resend = setInterval(() => { this.#options.send(token).catch(() => {}) }, ROUND_TRIP_RESEND_MS).unref()
    await arrived
    clearInterval(this.#resend)
    this.#onToken = null
  }

  stop (): void {
    clearTimeout(this.#deadline)
    clearInterval(this.#resend)
  }

  #missed (): void {
    this.#pending = null
    this.misses++
    this.#options.log.warn(
      { heartbeatMisses: this.misses, timeout: this.#options.timeout },
      'session_version heartbeat did not come back; reconnecting the listener'
    )
    this.#options.onMiss()
  }
}
