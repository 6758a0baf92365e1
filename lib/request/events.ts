import { fastifySSE } from '@fastify/sse'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { identityKey } from './identity.js'
import { NO_SESSION } from './routes.js'
import { forcedLogoutOf } from './hook.js'
import type { LoginReason } from './login.js'
import type { SessionAdapter, SessionFields } from './sessions.js'
import { asStamp, type SessionStamp } from './stamp.js'
import { logoutOf } from './verdict.js'
import type { VersionChange, VersionView } from '../view.js'

export interface EventsOptions {
  /** The stream's path; the browser client is served at `<path>/client.js`. */
  path: string
  keepAlive: number
  maxStreams: number
  maxStreamsPerSession: number
  maxStreamsPerUser: number
  loginUrl: string
  stampField: string
  identify: (session: SessionFields, request: FastifyRequest) => unknown
  adapter: SessionAdapter
  view: VersionView
  clientScript: string
}

// A stream tells the browser, when it opens, how long to wait before it
// reconnects: at random within this spread after a second, so that the pages of
// an instance that stopped (or crashed: it could not tell them then) come back
// over some seconds, not all in the same one.
const RECONNECT_MS = 1000
const RECONNECT_SPREAD_MS = 10_000

/** One open stream: what its session held when it opened. */
interface Stream {
  reply: FastifyReply
  stamp: SessionStamp
  key: string
  /** Every key the stream is filed under: the user's id now, and the ids the session held before. */
  keys: string[]
  userVersion: number
}

/**
 * Server-sent events for open pages (@fastify/sse): `version` when the global
 * version changes, `refresh` when the user's own version does, and `logout`,
 * then the end of the stream, when the user must log in again. Streams are held
 * in memory, filed by user, so a change costs one map lookup per stream that it
 * concerns, and nothing is read from the database per stream or per event.
 */
export class EventStreams {
  readonly #options: EventsOptions
  readonly #byUser = new Map<string, Set<Stream>>()
  readonly #all = new Set<Stream>()
  // Open streams by login (a session) and by user: limits that one account's
  // tabs, or its logins one after another, cannot take the whole instance's.
  readonly #perLogin = new Counts()
  readonly #perUser = new Counts()
  #keepAlive: NodeJS.Timeout | undefined
  // Set when the app starts closing: a stream set up after that would never be ended.
  #closing = false

  constructor (options: EventsOptions) {
    this.#options = options
    options.view.onChange((change) => this.#tell(change))
  }

  /** The route and the client script; every stream ends when the app closes. */
  async register (fastify: FastifyInstance): Promise<void> {
    const { path, clientScript, keepAlive } = this.#options
    // @fastify/sse wraps the handler of every route that has `sse` (an onRoute
    // hook): once is enough, and an app that registered it keeps its settings.
    if (!fastify.hasPlugin('@fastify/sse')) await fastify.register(fastifySSE)
    fastify.get(path, {
      // The keep-alive is this plugin's own (below): it follows `keepAlive`
      // whoever registered @fastify/sse, with one timer for all the streams.
      sse: { kind: 'only', heartbeat: false },
      // HEAD would open a stream that sends nothing and holds a place.
      exposeHeadRoute: false,
      // No refresh (a stream saves nothing, so its writes would be lost), and a
      // session that must log in again reaches the handler emptied, to be told so.
      config: { sessionRefresh: false, loginRoute: true },
      // Whatever is answered instead of a stream (401, 429, 503, @fastify/sse's
      // 406, an error thrown by an app hook) saves nothing: a client that
      // reconnects would store a session, or roll its cookie, each time. The
      // default error handler skips preSerialization: onError covers it.
      preSerialization: async (request, _reply, payload) => {
        noSession(request)
        return payload
      },
      onError: async (request) => { noSession(request) }
    }, (request, reply) => this.#stream(request, reply))
    // The script is the same for everyone: it is served whatever the session,
    // even one that must log in again, unchecked: the page's stream is then the
    // first to meet the logout, and tells the page.
    fastify.get(`${path}/client.js`, { config: { [NO_SESSION]: true } }, async (request, reply) => {
      noSession(request)
      return reply.type('text/javascript; charset=utf-8').header('cache-control', 'no-cache').send(clientScript)
    })
    this.#keepAlive = setInterval(() => {
      // A comment line: EventSource ignores it, proxies see the stream is alive.
      for (const stream of this.#all) if (stream.reply.sse.isConnected) stream.reply.raw.write(': heartbeat\n\n')
    }, keepAlive).unref()
    fastify.addHook('preClose', async () => {
      this.#closing = true
      clearInterval(this.#keepAlive)
      for (const stream of this.#all) stream.reply.sse.close()
    })
  }

  async #stream (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const { adapter, identify, stampField, view, maxStreams, maxStreamsPerSession, maxStreamsPerUser } = this.#options
    // The browser client asks `?check` after a refusal, to learn the status that
    // EventSource hides: the answer a stream would get, but 204 for a stream.
    const checking = (request.query as { check?: unknown }).check !== undefined
    const forced = forcedLogoutOf(request)
    if (forced !== null) return this.#logOut(reply, forced, checking)
    const session = adapter.sessionOf(request)
    const identity = session === null ? null : identify(session, request)
    const stamp = asStamp(session?.get(stampField))
    if (identity == null || stamp === null) return this.#logOut(reply, 'not-logged-in', true)
    const key = identityKey(identity)
    // A logout read after the check let this request through (while an app's
    // preHandler ran, say) would reach no stream: the page is told at once.
    if (logoutOf(stamp, key, view)?.out === true) return this.#logOut(reply, 'user-logout', checking)
    // Past the login: said in the answer, since a proxy or another hook may answer 429 or 503 too.
    if (this.#closing) return this.#refuse(reply, 503, 'The server is shutting down', { loggedIn: true })
    if (this.#all.size >= maxStreams || this.#perLogin.of(stamp.k) >= maxStreamsPerSession || this.#perUser.of(key) >= maxStreamsPerUser) {
      return this.#refuse(reply, 429, 'Too many open event streams', { loggedIn: true })
    }
    if (checking) {
      noSession(request) // an empty answer skips preSerialization
      reply.code(204).send()
      return
    }
    // A client gone before the handler ran (while an app hook awaited) never
    // closes again: @fastify/sse would never tell, and its stream would hold its
    // places under the limits for good.
    if (request.raw.destroyed || reply.raw.destroyed) return
    const stream: Stream = { reply, stamp, key, keys: [key, ...stamp.h], userVersion: view.user(key)?.version ?? stamp.u }
    this.#add(stream)
    reply.sse.onClose(() => this.#remove(stream))
    reply.sse.keepAlive()
    // Once at the start: a page that reconnects after a while learns what it missed.
    const retry = RECONNECT_MS + Math.floor(Math.random() * RECONNECT_SPREAD_MS)
    await reply.sse.send({ event: 'version', data: { version: view.version }, retry })
    if (stream.userVersion !== stamp.u) await reply.sse.send({ event: 'refresh', data: {} })
  }

  /**
   * Tells the page to log in again: a `logout` event that ends the stream, or
   * before any stream (no login, a check) a 401 that says why and where.
   */
  async #logOut (reply: FastifyReply, reason: LoginReason, before: boolean): Promise<void> {
    const { loginUrl } = this.#options
    if (before) return this.#refuse(reply, 401, 'Please log in', { reason, loginUrl })
    await reply.sse.send({ event: 'logout', data: { reason, loginUrl } })
    reply.sse.close()
  }

  /** Before the stream starts: a plain JSON answer, and no stream. */
  #refuse (reply: FastifyReply, statusCode: 401 | 429 | 503, message: string, extra: object = {}): void {
    reply.code(statusCode).type('application/json').send({ statusCode, error: ERRORS[statusCode], message, ...extra })
  }

  #add (stream: Stream): void {
    this.#all.add(stream)
    this.#perLogin.add(stream.stamp.k, 1)
    this.#perUser.add(stream.key, 1)
    for (const key of stream.keys) {
      let streams = this.#byUser.get(key)
      if (streams === undefined) this.#byUser.set(key, streams = new Set())
      streams.add(stream)
    }
  }

  #remove (stream: Stream): void {
    this.#all.delete(stream)
    this.#perLogin.add(stream.stamp.k, -1)
    this.#perUser.add(stream.key, -1)
    for (const key of stream.keys) {
      const streams = this.#byUser.get(key)!
      streams.delete(stream)
      if (streams.size === 0) this.#byUser.delete(key)
    }
  }

  /** Runs after every read: only what changed, only to the streams it concerns. */
  #tell (change: VersionChange): void {
    const { view, loginUrl } = this.#options
    if (change.version) for (const stream of this.#all) this.#send(stream, 'version', { version: view.version })
    for (const user of change.users) {
      for (const stream of this.#byUser.get(user) ?? []) {
        if (logoutOf(stream.stamp, stream.key, view)?.out === true) {
          this.#send(stream, 'logout', { reason: 'user-logout', loginUrl })
          stream.reply.sse.close()
          continue
        }
        const version = view.user(stream.key)?.version
        if (version !== undefined && version !== stream.userVersion) {
          stream.userVersion = version
          this.#send(stream, 'refresh', {})
        }
      }
    }
  }

  #send (stream: Stream, event: string, data: unknown): void {
    // A stream that closed meanwhile (the client went away) drops the event.
    if (stream.reply.sse.isConnected) stream.reply.sse.send({ event, data }).catch(() => {})
  }
}

/** The request goes on without its session: the session plugin saves nothing and sends no cookie. */
function noSession (request: FastifyRequest): void {
  (request as { session: unknown }).session = null
}

const ERRORS = { 401: 'Unauthorized', 429: 'Too Many Requests', 503: 'Service Unavailable' }

/** Counts by key; a key whose count falls to 0 is forgotten, so the map holds only open streams. */
class Counts {
  readonly #counts = new Map<string, number>()

  of (key: string): number {
    return this.#counts.get(key) ?? 0
  }

  add (key: string, delta: number): void {
    const count = this.of(key) + delta
    if (count === 0) this.#counts.delete(key)
    else this.#counts.set(key, count)
  }
}
