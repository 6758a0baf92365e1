// The real system the model-based tests drive: two app instances that share
// one session store and one database, and the app's user directory that their
// `refresh` reads. Used by test/invariants.test.ts (bounded runs in CI) and by
// test/soak/run.ts (`npm run soak`, long runs with network faults).
import session from '@fastify/session'
import type fc from 'fast-check'
import type { Sql } from 'postgres'
import type { SessionRefreshOptions } from '../../lib/index.js'
import { buildApp, login, type TestApp } from '../helpers/app.js'
import { eventually } from '../helpers/database.js'

/** A user of the app's own directory: the ETL may renumber them, delete them, or make their refresh fail. */
export interface DirectoryUser {
  name: string
  id: number
  email: string
  deleted: boolean
  failing: boolean
}

/** Something that happened, in the order it happened, for properties about orders. */
export interface Happening {
  kind: 'refresh-released' | 'logout-known'
  user: string
}

export interface SystemOptions {
  /** The database the apps connect to (maybe through a faulty proxy). */
  url: string
  /** The test's own client on that database, for the tables' truth and for SQL commands. */
  sql: Sql
  instances?: number
  plugin?: Partial<SessionRefreshOptions>
}

export const MAX_CONCURRENT_REFRESHES = 2

export class System {
  readonly apps: TestApp[] = []
  readonly directory = new Map<string, DirectoryUser>()
  readonly sql: Sql
  /** When set, every refresh waits for this scheduler to let it go on. */
  scheduler: fc.Scheduler | null = null
  readonly happenings: Happening[] = []
  /** The most `refresh` calls that ran at once on one instance. */
  peak = 0
  readonly #running: number[] = []
  readonly #closers: Array<() => unknown> = []
  #nextId: number

  private constructor (sql: Sql, firstId: number) {
    this.sql = sql
    this.#nextId = firstId
  }

  static async start (options: SystemOptions, firstId: number): Promise<System> {
    const system = new System(options.sql, firstId)
    const store = new session.MemoryStore()
    const teardown = { teardown: (fn: () => unknown) => { system.#closers.push(fn) } }
    for (let i = 0; i < (options.instances ?? 2); i++) {
      system.#running.push(0)
      const test = await buildApp(teardown, {
        url: options.url,
        sessionOptions: { store },
        plugin: { maxConcurrentRefreshes: MAX_CONCURRENT_REFRESHES, pollInterval: 60_000, ...options.plugin },
        refresh: (s) => system.#refresh(i, s.get('email'))
      })
      test.app.post('/password', { config: { loginRequired: true } }, async (request) => ({
        version: await test.app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request })
      }))
      system.apps.push(test)
    }
    return system
  }

  addUser (name: string): DirectoryUser {
    const user = { name, id: this.#nextId++, email: `${name}@model.example`, deleted: false, failing: false }
    this.directory.set(name, user)
    return user
  }

  /** The ETL gives the user a new id, one never used before. */
  renumber (name: string): number {
    const user = this.directory.get(name)!
    user.id = this.#nextId++
    return user.id
  }

  async login (instance: number, name: string): Promise<string> {
    const user = this.directory.get(name)!
    return login(this.apps[instance]!.app, user.id, { email: user.email })
  }

  /** Waits until every instance listens and holds what the tables say now. */
  async settle (): Promise<void> {
    for (const { app } of this.apps) {
      await eventually('the instance to listen and catch up', async () =>
        app.sessionRefresh.status().listening && await app.sessionRefresh.catchUp(), 30_000)
    }
  }

  async close (): Promise<void> {
    await Promise.all(this.#closers.map((close) => close()))
  }

  async #refresh (instance: number, email: unknown): Promise<Record<string, unknown> | null> {
    const running = ++this.#running[instance]!
    this.peak = Math.max(this.peak, running)
    try {
      const user = [...this.directory.values()].find((u) => u.email === email)
      if (this.scheduler !== null) {
        await this.scheduler.schedule(Promise.resolve(), `refresh of ${user?.name ?? String(email)}`)
        this.happenings.push({ kind: 'refresh-released', user: user?.name ?? String(email) })
      }
      if (user === undefined || user.deleted) return null
      if (user.failing) throw new Error(`the directory cannot read ${user.name}`)
      return { id: user.id }
    } finally {
      this.#running[instance]!--
    }
  }
}
