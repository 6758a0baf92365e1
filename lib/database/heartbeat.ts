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
  #silence: number
  misses = 0
  lastAt: Date | null = null

  constructor (instance: string, options: HeartbeatOptions) {
    this.#instance = instance
    this.#options = options
    this.#silence = silenceBeforeHeartbeat(options.interval)
  }

  /** Anything came through the LISTEN connection (or it was just made): the link works. */
  heard (payload: string | null): void {
    this.#lastProof = performance.now()
    this.#silence = silenceBeforeHeartbeat(this.#options.interval)
    if (this.#pending !== null) {
      clearTimeout(this.#deadline)
      this.#pending = null
    }
    if (payload?.startsWith('heartbeat:') === true) {
      this.lastAt = new Date()
      this.#onToken?.(payload)
    }
  }

  /**
   * Sends a heartbeat if nothing was heard for this instance's silence (one to
   * two intervals) and none is on its way. Called a few times an interval.
   */
  tick (): void {
    if (this.#pending !== null || performance.now() - this.#lastProof < this.#silence) return
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

/**
 * How long an instance waits in silence before it sends a heartbeat: one to two
 * intervals, drawn anew each time something is heard. The first of N instances
 * to send proves the link for the others, once its heartbeat arrives; those
 * whose silence ends before that send too. Drawn as 1 + U^(1/3) intervals,
 * few instances have a silence near the shortest, so even with a slow database
 * (a heartbeat taking a second to arrive among 1,000 instances) about three
 * send, where a uniform draw would have a dozen or more send every round,
 * each waking every listener of the database.
 */
function silenceBeforeHeartbeat (interval: number): number {
  return interval * (1 + Math.random() ** (1 / 3))
}
