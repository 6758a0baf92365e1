import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Sql } from 'postgres'
import { openConnection, type Connection } from './connection.js'
import { DatabaseUnavailableError } from './errors.js'
import { readSessionVersion } from './migrate.js'
import { TrackedSockets } from './sockets.js'
import { USER_CHANNEL, type UserVersions } from './user-versions.js'
import { parseVersion } from './version.js'

export const VERSION_CHANNEL = 'session_version'
export { APPLICATION_NAME } from './connection.js'

export interface ListenerOptions {
  connection: Connection
  connectTimeout: number
  heartbeatInterval: number
  heartbeatTimeout: number
  pollInterval: number
  log: FastifyBaseLogger
  /** Per-user versions, kept current on the same connection. */
  users: UserVersions
  /** Reads the committed version. Tests wrap it to hold a read in flight. */
  read?: (sql: Sql) => Promise<number>
}

export interface ListenerStatus {
  /** LISTEN is active and the version was read after the last (re)connect; false means changes may be missed right now. */
  listening: boolean
  /** The session version this instance holds in memory. */
  version: number
  /** When the last session_version notification arrived (ISO); null if none has yet. */
  lastNotificationAt: string | null
  /** When the last heartbeat came back through the LISTEN connection (ISO); null if none has yet. */
  lastHeartbeatAt: string | null
  /** When the version was last read from the table (ISO): at start, after a reconnect, every pollInterval. */
  lastSyncAt: string
  /** How often the LISTEN connection came back after being lost. */
  reconnects: number
  /** Heartbeats that did not come back within heartbeatTimeout; each one forces a reconnect. */
  heartbeatMisses: number
  /** pg_notification_queue_usage() at the last read, from 0 to 1. */
  queueUsage: number
  /** Users changed within one session lifetime that this instance tracks. */
  userVersions: number
}

/** Reconnect quickly: a listener that is down is a listener that misses changes. */
function backoff (attempt: number): number {
  return Math.min(0.05 * 2 ** attempt, 2) * (0.5 + Math.random() / 2)
}

/**
 * Keeps the latest committed session version in memory.
 *
 * One postgres.js instance holds the LISTEN connection, a second one runs the
 * reads and sends the heartbeat. A notification is applied at once; after every
 * (re)connect, every `pollInterval` and after a heartbeat miss the version is
 * read again, because notifications sent while disconnected are lost.
 */
export class VersionListener {
  version = 0
  listening = false
  #lastNotificationAt: Date | null = null
  #lastHeartbeatAt: Date | null = null
  // Set by start()'s first read, before anyone can ask for status().
  #lastSyncAt = new Date()
  #reconnects = 0
  #heartbeatMisses = 0
  #queueUsage = 0

  readonly #options: ListenerOptions
  readonly #read: (sql: Sql) => Promise<number>
  // A closed LISTEN socket means changes are being missed until the catch-up.
  readonly #listenSockets = new TrackedSockets(() => {
    this.listening = false
    this.#generation++
  })
  readonly #querySockets = new TrackedSockets()
  readonly #listenSql: Sql
  readonly #querySql: Sql
  readonly #heartbeatChannel = `session_refresh_hb_${randomUUID().replaceAll('-', '')}`
  #closed = false
  #listens = 0
  // Changes with every LISTEN socket lost or LISTEN re-established, so a catch-up
  // that finishes after the next loss does not claim to be listening.
  #generation = 0
  // Counts notifications, so a re-read that raced one knows its answer is older.
  #notifications = 0
  #syncing: Promise<boolean> | null = null
  #heartbeatSent = 0
  #heartbeatPending: string | null = null
  #heartbeatDeadline: NodeJS.Timeout | undefined
  #timers: NodeJS.Timeout[] = []

  constructor (options: ListenerOptions) {
    this.#options = options
    this.#read = options.read ?? readSessionVersion
    this.#listenSql = this.#connect(this.#listenSockets)
    this.#querySql = this.#connect(this.#querySockets)
  }

  #connect (sockets: TrackedSockets): Sql {
    return openConnection(this.#options.connection, {
      max: 1,
      connect_timeout: Math.ceil(this.#options.connectTimeout / 1000),
      keep_alive: 10,
      backoff,
      target_session_attrs: 'primary',
      // Not in postgres.js's types, but in its options: a factory for the socket.
      ...{ socket: sockets.create }
    })
  }

  /** Resolves once LISTEN is active and the version is known, or fails within `connectTimeout`. */
  async start (): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error('timed out')), this.#options.connectTimeout)
    })
    try {
      await Promise.race([this.#listenAndRead(), deadline])
    } catch (err) {
      await this.close()
      throw (err as { code?: string }).code?.startsWith('FST_')
        ? err
        : new DatabaseUnavailableError(this.#options.connectTimeout, (err as Error).message, { cause: err })
    } finally {
      clearTimeout(timer)
    }
    this.#every(this.#options.pollInterval, () => {
      this.#options.users.prune()
      void this.#sync()
    })
    this.#every(this.#options.heartbeatInterval, () => this.#heartbeat())
  }

  async #listenAndRead (): Promise<void> {
    // Listen first, read second: a bump committed in between is then either in
    // the read or in a notification, never in neither.
    await this.#listenSql.listen(VERSION_CHANNEL, (payload) => this.#onNotification(payload), () => this.#onListen())
    await this.#listenSql.listen(USER_CHANNEL, (payload) => this.#onUserNotification(payload))
    await this.#listenSql.listen(this.#heartbeatChannel, (payload) => this.#onHeartbeat(payload))
    await this.#readAndApply()
    this.listening = true
  }

  /** Re-reads the version (and per-user changes) now. Resolves false if the read failed. */
  catchUp (): Promise<boolean> {
    return this.#freshSync()
  }

  status (): ListenerStatus {
    return {
      listening: this.listening,
      version: this.version,
      lastNotificationAt: this.#lastNotificationAt?.toISOString() ?? null,
      lastHeartbeatAt: this.#lastHeartbeatAt?.toISOString() ?? null,
      lastSyncAt: this.#lastSyncAt.toISOString(),
      reconnects: this.#reconnects,
      heartbeatMisses: this.#heartbeatMisses,
      queueUsage: this.#queueUsage,
      userVersions: this.#options.users.size
    }
  }

  async close (): Promise<void> {
    this.#closed = true
    this.listening = false
    for (const timer of this.#timers) clearInterval(timer)
    clearTimeout(this.#heartbeatDeadline)
    await Promise.all([this.#listenSql.end({ timeout: 0 }), this.#querySql.end({ timeout: 0 })])
  }

  #every (ms: number, task: () => unknown): void {
    this.#timers.push(setInterval(task, ms).unref())
  }

  // postgres.js swallows a handler's synchronous throw and lets an async one crash
  // the process, so none of these callbacks may throw or reject.

  #onNotification (payload: string): void {
    const version = parseVersion(payload)
    if (version === null) {
      this.#options.log.warn({ payload }, 'Ignoring a session_version notification that is not a version')
      return
    }
    this.#notifications++
    this.#lastNotificationAt = new Date()
    this.#apply(version, 'notification')
  }

  #onUserNotification (payload: string): void {
    if (!this.#options.users.applyPayload(payload)) {
      this.#options.log.warn({ payload }, 'Ignoring a session_user_version notification that is not a user version')
    }
  }

  #onListen (): void {
    // The first LISTEN is followed by start()'s own read; later ones are reconnects,
    // even one during start().
    if (this.#listens++ === 0 || this.#closed) return
    this.#reconnects++
    const generation = ++this.#generation
    this.#options.log.info({ reconnects: this.#reconnects }, 'session_version listener reconnected, catching up')
    void this.#freshSync().then((synced) => {
      this.listening = synced && generation === this.#generation && !this.#closed
    })
  }

  /**
   * A read that starts after this call. A read already in flight may have begun
   * before what the caller knows of (a lost connection, a newer stamp), so it
   * is waited for, and the next one is shared by everyone who asks meanwhile.
   */
  #freshSync (): Promise<boolean> {
    const inFlight = this.#syncing ?? Promise.resolve(true)
    return inFlight.then(() => this.#sync())
  }

  /** Re-reads the version and says whether that worked; never rejects. Concurrent callers share one read. */
  #sync (): Promise<boolean> {
    this.#syncing ??= this.#readAndApply().then(
      () => true,
      (err: unknown) => {
        this.#options.log.error({ err }, 'Could not re-read session_version; keeping version %d', this.version)
        return false
      }
    ).finally(() => { this.#syncing = null })
    return this.#syncing
  }

  async #readAndApply (): Promise<void> {
    const seen = this.#notifications
    // One after another: postgres.js 3.4 can leave a process unable to exit when
    // one of several pipelined queries fails (a missing table, say).
    const version = await this.#read(this.#querySql)
    const [usage] = await this.#querySql<{ usage: number }[]>`select pg_notification_queue_usage() as usage`
    await this.#options.users.readChanges(this.#querySql)
    this.#queueUsage = usage!.usage
    this.#lastSyncAt = new Date()
    // A notification that arrived meanwhile carries a value at least as new as
    // what this read saw, so the read must not overwrite it.
    if (this.#notifications === seen) this.#apply(version, 'read')
  }

  #apply (version: number, source: 'notification' | 'read'): void {
    if (version === this.version) return
    this.#options.log.info({ from: this.version, to: version, source }, 'Session version is now %d', version)
    this.version = version
  }

  #heartbeat (): void {
    if (this.#heartbeatPending !== null) return
    const token = String(++this.#heartbeatSent)
    this.#heartbeatPending = token
    this.#heartbeatDeadline = setTimeout(() => this.#heartbeatMissed(), this.#options.heartbeatTimeout).unref()
    this.#querySql`select pg_notify(${this.#heartbeatChannel}, ${token})`.catch((err: unknown) => {
      this.#options.log.warn({ err }, 'Could not send the session_version heartbeat')
    })
  }

  #onHeartbeat (token: string): void {
    if (token !== this.#heartbeatPending) return
    clearTimeout(this.#heartbeatDeadline)
    this.#heartbeatPending = null
    this.#lastHeartbeatAt = new Date()
  }

  #heartbeatMissed (): void {
    this.#heartbeatPending = null
    this.#heartbeatMisses++
    this.listening = false
    this.#options.log.warn(
      { heartbeatMisses: this.#heartbeatMisses, timeout: this.#options.heartbeatTimeout },
      'session_version heartbeat did not come back; reconnecting the listener'
    )
    // Both connections may sit on the same dead link. Destroying them makes
    // postgres.js reconnect, and the re-LISTEN triggers a catch-up read.
    this.#listenSockets.destroyAll()
    this.#querySockets.destroyAll()
  }
}
