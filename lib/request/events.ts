import { fastifySSE } from '@fastify/sse'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { identityKey } from './identity.js'
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

  constructor (options: EventsOptions) {
    this.#options = options
    options.view.onChange((change) => this.#tell(change))
  }

  /** The route and the client script; every stream ends when the app closes. */
  async register (fastify: FastifyInstance): Promise<void> {
    const { path, clientScript } = this.#options
    // A comment every `keepAlive` ms keeps proxies from closing an idle stream.
    // An app that registered @fastify/sse itself keeps its own settings.
    if (!fastify.hasReplyDecorator('sse')) await fastify.register(fastifySSE, { heartbeatInterval: this.#options.keepAlive })
    fastify.get(path, {
      sse: { kind: 'only', heartbeat: true },
      // No refresh (a stream saves nothing, so its writes would be lost), and a
      // session that must log in again reaches the handler emptied, to be told so.
      config: { sessionRefresh: false, loginRoute: true }
    }, (request, reply) => this.#stream(request, reply))
    fastify.get(`${path}/client.js`, { config: { sessionRefresh: false } }, async (request, reply) => {
      (request as { session: unknown }).session = null
      return reply.type('text/javascript; charset=utf-8').header('cache-control', 'no-cache').send(clientScript)
    })
    fastify.addHook('preClose', async () => {
      for (const stream of this.#all) stream.reply.sse.close()
    })
  }

  async #stream (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const { adapter, identify, stampField, view, maxStreams, maxStreamsPerSession, maxStreamsPerUser } = this.#options
    const forced = forcedLogoutOf(request)
    if (forced !== null) return this.#logOut(reply, forced)
    const session = adapter.sessionOf(request)
    const identity = session === null ? null : identify(session, request)
    const stamp = asStamp(session?.get(stampField))
    if (identity == null || stamp === null) return this.#refuse(reply, 401, 'Please log in')
    const key = identityKey(identity)
    // A logout read after the check let this request through (while an app's
    // preHandler ran, say) would reach no stream: the page is told at once.
    if (logoutOf(stamp, key, view)?.out === true) return this.#logOut(reply, 'user-logout')
    if (this.#all.size >= maxStreams || this.#perLogin.of(stamp.k) >= maxStreamsPerSession || this.#perUser.of(key) >= maxStreamsPerUser) {
      return this.#refuse(reply, 429, 'Too many open event streams')
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
    await reply.sse.send({ event: 'version', data: { version: view.version } })
    if (stream.userVersion !== stamp.u) await reply.sse.send({ event: 'refresh', data: {} })
  }

  /** Tells the page to log in again, and ends the stream. */
  async #logOut (reply: FastifyReply, reason: LoginReason): Promise<void> {
    await reply.sse.send({ event: 'logout', data: { reason, loginUrl: this.#options.loginUrl } })
    reply.sse.close()
  }

  #refuse (reply: FastifyReply, statusCode: number, message: string): void {
    // Before the stream starts: a plain JSON answer, and no stream. Nothing is
    // saved either: a client that reconnects would store a session each time.
    (reply.request as { session: unknown }).session = null
    reply.code(statusCode).type('application/json').send({ statusCode, error: statusCode === 401 ? 'Unauthorized' : 'Too Many Requests', message })
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
