import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Sql } from 'postgres'
import { CannotListenError, DatabaseUnavailableError } from '../errors.js'
import type { UserState, VersionChange, VersionView } from '../view.js'
import { jitter, withTimeout } from '../timeout.js'
import { channelFor } from './channel.js'
import { Heartbeat } from './heartbeat.js'
import { backoff, connectTimeoutSeconds, hasSeveralHosts, openConnection, type Connection } from './connection.js'
import { TrackedSockets } from './sockets.js'
import { Sync } from './sync.js'
import { Versions } from './versions.js'

export interface ListenerOptions {
  connection: Connection
  schema: string
  connectTimeout: number
  /** Milliseconds start() may take in all; connectTimeout unless told otherwise. */
  startTimeout?: number
  queryTimeout: number
  heartbeatInterval: number
  heartbeatTimeout: number
  pollInterval: number
  /** Milliseconds between reads of per-user changes when the database does not notify them. */
  userPollInterval: number
  sessionLifetime: number
  log: FastifyBaseLogger
  /** Told when a heartbeat did not come back: other connections on the same link are likely dead too. */
  onLinkDead?: () => void
  /** The app's postgres.js instance for reads and heartbeats, instead of a connection of the plugin's own. */
  sql?: Sql | undefined
}

export interface ListenerStatus {
  /** LISTEN is up and the last read, made since it came up, succeeded. False: changes may be missed right now. */
  listening: boolean
  /** The session version this instance holds in memory. */
  version: number
  /** When the last notification of a version change arrived (ISO); null if none has yet. */
  lastNotificationAt: string | null
  /** When a heartbeat (this instance's or another's) last came through the LISTEN connection (ISO); null if none has yet. */
  lastHeartbeatAt: string | null
  /** When the tables were last read (ISO): at start, after each hint, every pollInterval. */
  lastSyncAt: string | null
  /** Why the last read failed ({ code, message }), or null when it succeeded. */
  lastSyncError: { code: string, message: string } | null
  /** How often the LISTEN connection came back after being lost. */
  reconnects: number
  /** Heartbeats that did not come back within heartbeatTimeout; each one forces a reconnect. */
  heartbeatMisses: number
  /** pg_notification_queue_usage() at the last read, from 0 to 1. */
  queueUsage: number
  /** Users changed within one session lifetime that this instance tracks. */
  userVersions: number
  /** How per-user changes reach the instances: 'notify' (a NOTIFY each) or 'poll' (read every userPollInterval). */
  userChanges: 'notify' | 'poll'
}

// Hints between two reads: the least time between their starts.
const READ_SPACING_MS = 20

/**
 * Keeps the versions in memory, as the tables say. (Long: the LISTEN
 * connection's life, start, reconnects and status belong together; the reads,
 * the memory and the heartbeat are modules of their own.)
 *
 * One postgres.js instance holds the LISTEN connection, a second one runs the
 * reads and sends heartbeats. A notification is only a hint: it starts a read
 * (shared by every hint that comes while one runs). The tables are read again
 * after every (re)connect and every `pollInterval`, because notifications sent
 * while disconnected are lost. A heartbeat goes out only when nothing has come
 * through the LISTEN connection for a whole `heartbeatInterval`, and any
 * instance's heartbeat proves the link for all, so N instances send about one
 * heartbeat per interval between them, not N.
 */
export class VersionListener implements VersionView {
  readonly #options: ListenerOptions
  readonly #versions: Versions
  readonly #sync: Sync
  readonly #channel: string
  // A closed LISTEN socket means changes are being missed until the next read.
  #listenSockets = this.#trackListenSockets()
  readonly #querySockets = new TrackedSockets()
  // Replaced when postgres.js gives up on re-listening (see #relisten).
  #listenSql: Sql
  readonly #querySql: Sql
  #listenUp = false
  #lostAt = 0
  // Changes with every LISTEN socket lost and every LISTEN made, so a read that
  // started before either does not claim that the instance is caught up.
  #generation = 0
  #syncedGeneration = -1
  #closed = false
  #listens = 0
  #reconnects = 0
  readonly #heartbeat: Heartbeat
  #lastNotificationAt: Date | null = null
  #loggedVersion = 0
  readonly #timers = new Set<NodeJS.Timeout>()
  readonly #changeListeners: Array<(change: VersionChange) => void> = []

  constructor (options: ListenerOptions) {
    this.#options = options
    this.#channel = channelFor(options.schema)
    this.#versions = new Versions(options.sessionLifetime)
    this.#listenSql = this.#connect(this.#listenSockets)
    // The app's instance, when it gave one: never ended here, its sockets never destroyed.
    this.#querySql = options.sql ?? this.#connect(this.#querySockets)
    this.#sync = new Sync({
      sql: this.#querySql,
      schema: options.schema,
      lifetime: options.sessionLifetime,
      timeout: options.queryTimeout,
      versions: this.#versions,
      dropConnection: () => this.#querySockets.destroyAll(),
      ownConnection: options.sql === undefined,
      onReadStart: () => this.#generation,
      onReadEnd: (started, err) => this.#readEnded(started, err),
      onApplied: (change) => { for (const listener of this.#changeListeners) listener(change) },
      spacing: READ_SPACING_MS
    })
    this.#heartbeat = new Heartbeat(randomUUID().slice(0, 8), {
      interval: options.heartbeatInterval,
      timeout: options.heartbeatTimeout,
      send: (payload) => this.#querySql`select pg_notify(${this.#channel}, ${payload})`,
      onMiss: () => this.#linkDead(),
      log: options.log
    })
  }

  #connect (sockets: TrackedSockets): Sql {
    return openConnection(this.#options.connection, {
      max: 1,
      connect_timeout: connectTimeoutSeconds(this.#options.connectTimeout),
      keep_alive: 10,
      backoff,
      ...(hasSeveralHosts(this.#options.connection) ? { target_session_attrs: 'primary' as const } : {})
    }, sockets)
  }

  // The view the request path reads: plain fields and one map lookup.
  get version (): number { return this.#versions.version }
  get logoutClock (): number { return this.#versions.logoutClock }
  get userCount (): number { return this.#versions.userCount }
  user (key: string): UserState | undefined { return this.#versions.user(key) }
  mark (): number { return this.#versions.mark() }
  clockAt (time: number): number { return this.#versions.clockAt(time) }
  changedSince (key: string, mark: number): boolean { return this.#versions.changedSince(key, mark) }

  onChange (listener: (change: VersionChange) => void): void {
    this.#changeListeners.push(listener)
  }

  catchUp (timeout: number): Promise<boolean> {
    return withTimeout(this.#sync.request(), timeout, () => false)
  }

  get closed (): boolean {
    return this.#closed
  }

  get listening (): boolean {
    return this.#listenUp && !this.#closed && this.#sync.lastError === null && this.#syncedGeneration === this.#generation
  }

  /** Resolves once LISTEN delivers and the tables were read, or fails within `startTimeout` with a coded error. */
  async start (): Promise<void> {
    const connectTimeout = this.#options.startTimeout ?? this.#options.connectTimeout
    let stage = 'connecting and listening'
    const steps = async (): Promise<void> => {
      await this.#listen()
      // A pooler in transaction mode takes LISTEN and then delivers nothing; only a
      // notification sent through another connection and received here proves it works.
      stage = 'a notification it sent itself did not come back'
      await this.#heartbeat.roundTrip()
      stage = 'reading the session versions'
      if (!await this.#sync.request()) throw this.#sync.lastError
    }
    try {
      await withTimeout(steps(), connectTimeout, () => { throw new Error(`timed out ${stage}`) })
    } catch (err) {
      await this.close()
      throw startError(err, stage, connectTimeout)
    }
    this.#every(this.#options.pollInterval, () => {
      this.#versions.prune()
      void this.#sync.request()
    })
    // A few ticks an interval: a heartbeat goes out soon after its silence ends.
    this.#every(this.#options.heartbeatInterval / 4, () => this.#tick())
    this.#every(this.#options.userPollInterval, () => {
      if (!this.#versions.notifyUsers) void this.#sync.request()
    })
  }

  status (): ListenerStatus {
    const error = this.#sync.lastError as { code?: unknown, message?: unknown } | null
    return {
      listening: this.listening,
      version: this.#versions.version,
      lastNotificationAt: iso(this.#lastNotificationAt),
      lastHeartbeatAt: iso(this.#heartbeat.lastAt),
      lastSyncAt: iso(this.#sync.lastSyncAt),
      lastSyncError: error === null ? null : { code: String(error.code), message: String(error.message) },
      reconnects: this.#reconnects,
      heartbeatMisses: this.#heartbeat.misses,
      queueUsage: this.#sync.queueUsage,
      userVersions: this.#versions.userCount,
      userChanges: this.#versions.notifyUsers ? 'notify' : 'poll'
    }
  }

  async close (): Promise<void> {
    this.#closed = true
    for (const timer of this.#timers) clearTimeout(timer)
    this.#heartbeat.stop()
    await Promise.all([this.#listenSql.end({ timeout: 0 }), this.#options.sql === undefined && this.#querySql.end({ timeout: 0 })])
    // postgres.js only half-closes a socket that is still connecting; a server
    // that never answers would keep it open.
    this.#listenSockets.destroyAll()
    this.#querySockets.destroyAll()
  }

  /** Runs `task` every `ms`, jittered so that many instances spread out; unref'd, so it never keeps the process up. */
  #every (ms: number, task: () => void): void {
    const schedule = (): void => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer)
        task()
        schedule()
      }, jitter(ms)).unref()
      this.#timers.add(timer)
    }
    schedule()
  }

  // postgres.js swallows a handler's synchronous throw and lets an async one crash
  // the process, so none of these callbacks may throw or reject.

  #onNotification (payload: string): void {
    // Whatever came, it came through the LISTEN connection: the link works.
    this.#heartbeat.heard(payload)
    if (payload.startsWith('heartbeat:')) return
    if (payload.startsWith('version:')) {
      this.#lastNotificationAt = new Date()
      // Only a hint: the read below decides. A hint of the value already held needs no read.
      if (payload === `version:${this.#versions.version}`) return
    }
    void this.#sync.request()
  }

  #onListen (): void {
    this.#listenUp = true
    this.#generation++
    this.#heartbeat.heard(null)
    // The first LISTEN is followed by start()'s own read; later ones are reconnects.
    if (this.#listens++ === 0 || this.#closed) return
    this.#reconnects++
    this.#options.log.info({ reconnects: this.#reconnects }, 'session_version listener reconnected, catching up')
    this.#sync.forgetSnapshot()
    void this.#sync.request()
  }

  #linkLost (): void {
    if (this.#listenUp) this.#lostAt = performance.now()
    this.#listenUp = false
    this.#generation++
  }

  /** Sockets whose close means the LISTEN is lost, as long as they are the current ones. */
  #trackListenSockets (): TrackedSockets {
    const sockets: TrackedSockets = new TrackedSockets(() => { if (this.#listenSockets === sockets) this.#linkLost() })
    return sockets
  }

  #listen (): Promise<unknown> {
    return this.#listenSql.listen(this.#channel, (payload) => this.#onNotification(payload), () => this.#onListen())
  }

  /**
   * postgres.js re-LISTENs by itself after a connection drops, but not when the
   * connection drops again while that LISTEN is in flight: it then reconnects
   * and never listens. A LISTEN connection down for a whole heartbeat interval
   * is replaced by a new postgres.js instance that listens from scratch.
   */
  #relisten (): void {
    this.#options.log.warn({ downMs: Math.round(performance.now() - this.#lostAt) }, 'session_version listener did not come back; listening anew')
    const old = this.#listenSql
    this.#listenSockets = this.#trackListenSockets()
    this.#listenSql = this.#connect(this.#listenSockets)
    this.#lostAt = performance.now()
    void old.end({ timeout: 0 })
    // A failure here is retried at the next heartbeat tick, which finds LISTEN still down.
    this.#listen().catch((err: unknown) => this.#options.log.warn({ err }, 'Could not listen anew'))
  }

  #readEnded (startedGeneration: number, err: unknown): void {
    if (err === null) {
      this.#syncedGeneration = startedGeneration
      if (this.#versions.version !== this.#loggedVersion) {
        this.#options.log.info({ from: this.#loggedVersion, to: this.#versions.version }, 'Session version is now %d', this.#versions.version)
        this.#loggedVersion = this.#versions.version
      }
      return
    }
    this.#options.log.error({ err }, 'Could not re-read session_version; keeping version %d', this.#versions.version)
  }

  #tick (): void {
    if (this.#listenUp) this.#heartbeat.tick()
    else if (performance.now() - this.#lostAt >= this.#options.heartbeatInterval) this.#relisten()
  }

  #linkDead (): void {
    this.#linkLost()
    // Both connections may sit on the same dead link. Destroying them makes
    // postgres.js reconnect, and the new LISTEN starts a read.
    this.#listenSockets.destroyAll()
    this.#querySockets.destroyAll()
    this.#options.onLinkDead?.()
  }
}

/** What a failed start() throws: the coded error that says what to do. */
function startError (err: unknown, stage: string, connectTimeout: number): Error {
  const { code, message } = err as { code?: unknown, message?: unknown }
  if (typeof code === 'string' && code.startsWith('FST_')) return err as Error
  // 25006: "cannot execute LISTEN during recovery"
  if (code === '25006') return new CannotListenError('the server is a standby (in recovery)', { cause: err })
  if (stage.startsWith('a notification')) return new CannotListenError(`${stage} within ${connectTimeout} ms (is it a pooler in transaction mode?)`, { cause: err })
  return new DatabaseUnavailableError(connectTimeout, String(message), { cause: err })
}

function iso (date: Date | null): string | null {
  return date === null ? null : date.toISOString()
}

