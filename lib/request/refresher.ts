import type { FastifyRequest } from 'fastify'
import pLimit, { type LimitFunction } from 'p-limit'
import { RefreshSlotsHeldError, RefreshTimeoutError } from '../errors.js'
import type { SessionFields } from './sessions.js'

/** The versions seen when a refresh starts reading: what the session is stamped with if it succeeds. */
export interface Snapshot {
  version: number
  /** The user's version then (0: no change known). */
  userVersion: number
  /** The reads applied then, to tell whether another user's version moved during the refresh. */
  mark: number
}

/** What one call of the app's `refresh` produced, shared by every request that waited on it. */
export type RefreshOutcome =
  | { ok: true, fields: Record<string, unknown>, snapshot: Snapshot }
  | { ok: false, reason: 'user-gone' }
  | { ok: false, reason: 'refresh-error', error: unknown }

export interface RefresherOptions {
  maxConcurrent: number
  /** Milliseconds after which a `refresh` that has not settled counts as failed. */
  timeout: number
  requiredFields: readonly string[]
}

/** One refresh to run: the app's call, and the versions to read just before it starts. */
export interface RefreshCall {
  request: FastifyRequest
  session: SessionFields
  snapshot: () => Snapshot
  refresh: () => unknown
}

/**
 * Calls the app's `refresh` once per session at a time (single flight), and at
 * most `maxConcurrent` at once across sessions (p-limit keeps the queue). It
 * does not write the session: each request applies the shared outcome to its
 * own copy.
 *
 * A request is answered as failed once `timeout` has passed since it asked,
 * but a call that started keeps its slot, and its session's single flight,
 * until it settles: the app's database call cannot be stopped, so a slow
 * database never gets more than `maxConcurrent` of them, and never two for
 * one session.
 */
export class Refresher {
  readonly #options: RefresherOptions
  readonly #limit: LimitFunction
  readonly #inFlight = new Map<string, Promise<RefreshOutcome>>()
  // Calls still running whose requests were answered by the timeout.
  #overdue = 0
  refreshes = 0
  failures = 0

  constructor (options: RefresherOptions) {
    this.#options = options
    this.#limit = pLimit(options.maxConcurrent)
  }

  /** Calls of `refresh` running now, timed-out ones included until they settle. */
  get running (): number {
    return this.#limit.activeCount
  }

  /** Requests waiting for a free slot now. */
  get queued (): number {
    return this.#limit.pendingCount
  }

  run (flight: string, call: RefreshCall): Promise<RefreshOutcome> {
    let outcome = this.#inFlight.get(flight)
    if (outcome === undefined) {
      // Every slot held by a call that outlived its timeout: nothing frees one
      // until such a call settles, so a request would only wait out its timeout
      // in the queue. Answered at once, it holds nothing.
      if (this.#overdue >= this.#options.maxConcurrent) {
        this.failures++
        return Promise.resolve({ ok: false, reason: 'refresh-error', error: new RefreshSlotsHeldError(this.#options.maxConcurrent, this.#options.timeout) })
      }
      outcome = new Promise((resolve) => this.#start(flight, call, resolve))
      this.#inFlight.set(flight, outcome)
    }
    return outcome
  }

  /**
   * The timeout counts from the request's arrival, so a request never waits
   * longer than `timeout`, in the queue or in the call. A call whose requests
   * were all answered while it queued is never made.
   */
  #start (flight: string, call: RefreshCall, answer: (outcome: RefreshOutcome) => void): void {
    let answered = false
    let running = false
    // Dropped once the request is answered: a call that waits in the queue
    // behind hung ones must not keep the request and its session in memory.
    let waiting: RefreshCall | null = call
    const reply = (outcome: RefreshOutcome): void => {
      if (answered) return
      answered = true
      waiting = null
      clearTimeout(timer)
      if (outcome.ok) this.refreshes++
      else if (outcome.reason === 'refresh-error') this.failures++
      answer(outcome)
    }
    const timer = setTimeout(() => {
      if (running) this.#overdue++
      reply({ ok: false, reason: 'refresh-error', error: new RefreshTimeoutError(this.#options.timeout) })
    }, this.#options.timeout)
    const queued = this.#limit.activeCount >= this.#options.maxConcurrent
    const queuedAt = performance.now()
    void this.#limit(async () => {
      if (waiting === null) return
      const now = waiting
      running = true
      if (queued) {
        now.request.log.info({ waitedMs: Math.round(performance.now() - queuedAt), queued: this.#limit.pendingCount },
          'Session refresh waited for a free slot')
      }
      const outcome = await this.#call(now)
      if (answered) this.#overdue--
      reply(outcome)
    }).finally(() => this.#inFlight.delete(flight))
  }

  /** The app's call; it settles when the call does, and it never rejects. */
  async #call ({ session, snapshot, refresh }: RefreshCall): Promise<RefreshOutcome> {
    // Read before the app reads: if the versions move during its read, the
    // session is stale again next time, which is the safe side.
    const seen = snapshot()
    try {
      const result = await refresh()
      if (result === null) return { ok: false, reason: 'user-gone' }
      return { ok: true, fields: this.#check(result, session), snapshot: seen }
    } catch (error) {
      return { ok: false, reason: 'refresh-error', error }
    }
  }

  /** A result that would leave the session stale again would refresh on every request. */
  #check (result: unknown, session: SessionFields): Record<string, unknown> {
    if (typeof result !== 'object' || result === null || Array.isArray(result)) {
      throw new TypeError(`refresh() must return an object of session fields or null, got ${Array.isArray(result) ? 'an array' : typeof result}`)
    }
    const fields = result as Record<string, unknown>
    for (const field of this.#options.requiredFields) {
      const value = field in fields ? fields[field] : session.get(field)
      if (value == null) throw new TypeError(`refresh() left the required session field "${field}" empty`)
    }
    return fields
  }
}
