import type { FastifyRequest } from 'fastify'
import { RefreshTimeoutError } from './errors.js'
import { Limiter } from './limiter.js'
import { sessionOf, type Stamp } from './session-fields.js'

/** What one call of the app's `refresh` produced, shared by every request that waited on it. */
export type RefreshOutcome =
  | { ok: true, fields: Record<string, unknown>, stamp: Stamp }
  | { ok: false, reason: 'user-gone' }
  | { ok: false, reason: 'refresh-error', error: unknown }

export type RefreshFunction = (request: FastifyRequest) => unknown

export interface RefresherOptions {
  refresh: RefreshFunction
  /** The stamp a session refreshed now gets. */
  currentStamp: (request: FastifyRequest) => Stamp
  requiredFields: readonly string[]
  maxConcurrent: number
  /** Milliseconds after which a `refresh` that has not settled counts as failed. */
  timeout: number
}

/**
 * Calls the app's `refresh` once per session at a time (single flight), and at
 * most `maxConcurrent` at once across sessions. It does not write the session:
 * each request applies the shared outcome to its own copy.
 */
export class Refresher {
  readonly #options: RefresherOptions
  readonly #limiter: Limiter
  readonly #inFlight = new Map<string, Promise<RefreshOutcome>>()
  refreshes = 0
  failures = 0

  constructor (options: RefresherOptions) {
    this.#options = options
    this.#limiter = new Limiter(options.maxConcurrent)
  }

  /** Refreshes running now; never more than `maxConcurrentRefreshes`. */
  get running (): number {
    return this.#limiter.running
  }

  run (sessionId: string, request: FastifyRequest): Promise<RefreshOutcome> {
    let outcome = this.#inFlight.get(sessionId)
    if (outcome === undefined) {
      outcome = this.#limited(request).finally(() => this.#inFlight.delete(sessionId))
      this.#inFlight.set(sessionId, outcome)
    }
    return outcome
  }

  #limited (request: FastifyRequest): Promise<RefreshOutcome> {
    const mustWait = this.#limiter.full
    const queuedAt = performance.now()
    return this.#limiter.run(() => {
      if (mustWait) {
        request.log.info({ waitedMs: Math.round(performance.now() - queuedAt), queued: this.#limiter.waiting },
          'Session refresh waited for a free slot')
      }
      return this.#call(request)
    })
  }

  async #call (request: FastifyRequest): Promise<RefreshOutcome> {
    // Stamp with the versions seen before reading: if they move during the read,
    // the session is stale again next time, which is the safe side.
    const stamp = this.#options.currentStamp(request)
    try {
      const result = await this.#withTimeout(this.#options.refresh(request))
      if (result === null) return { ok: false, reason: 'user-gone' }
      const fields = this.#check(result, request)
      this.refreshes++
      return { ok: true, fields, stamp }
    } catch (error) {
      this.failures++
      return { ok: false, reason: 'refresh-error', error }
    }
  }

  /**
   * A refresh that never settles would hold every request of its session, and
   * a slot of the limiter, for good. The call itself cannot be stopped; it is
   * only no longer waited for.
   */
  async #withTimeout (result: unknown): Promise<unknown> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new RefreshTimeoutError(this.#options.timeout)), this.#options.timeout)
    })
    try {
      return await Promise.race([result, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  /** A result that would leave the session stale again would refresh on every request. */
  #check (result: unknown, request: FastifyRequest): Record<string, unknown> {
    if (typeof result !== 'object' || Array.isArray(result)) {
      throw new TypeError(`refresh() must return an object of session fields or null, got ${Array.isArray(result) ? 'an array' : typeof result}`)
    }
    const fields = result as Record<string, unknown>
    const session = sessionOf(request)!
    for (const field of this.#options.requiredFields) {
      const value = field in fields ? fields[field] : session.get(field)
      if (value == null) throw new TypeError(`refresh() left the required session field "${field}" empty`)
    }
    return fields
  }
}
