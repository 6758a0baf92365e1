// The model of issue 10's invariants, and the commands that drive the real
// system (./system.ts) and the model side by side. Long: the invariants and
// every command that can break them read best in one place.
//
// I1 (no lost logout): a session that authenticated before a logout of any id
//    it has held is never served as logged in once the instances have read
//    that logout (every command ends by waiting until they have).
// I2 (truth only): every instance ends on the table's values.
// I3 (status is true): every instance says it listens once it has caught up.
// I4 (bounded): never more than maxConcurrentRefreshes calls at once, and none
//    left running once every request was answered.
import fc from 'fast-check'
import postgres from 'postgres'
import type { LightMyRequestResponse } from 'fastify'
import { bumpSessionVersion, readSessionVersion } from '../../lib/index.js'
import { API, sessionCookie } from '../helpers/app.js'
import { eventually } from '../helpers/database.js'
import { readServerInfo } from '../setup/server.js'
import { MAX_CONCURRENT_REFRESHES, type System } from './system.js'

export const USERS = ['ann', 'bob', 'cid'] as const
export type UserName = typeof USERS[number]

interface Logout {
  id: number
  seq: number
  /** The session this logout keeps (a password change it made). */
  keep: ModelSession | null
}

interface ModelSession {
  name: string
  cookie: string
  user: UserName
  /** Every id the session has held since it authenticated. */
  held: Set<number>
  lastId: number
  /** The model's clock when it authenticated. */
  authSeq: number
  /** The data epochs it was last refreshed at. */
  dataEpoch: number
  userEpoch: number
  /** Its data may or may not be stale (after a race or a restore): either answer is right. */
  unsure: boolean
  dead: boolean
}

export interface Model {
  clock: number
  dataEpoch: number
  /**
   * Each user's data epoch. Every change takes a value never given out before
   * (as the table's versions never repeat), so that no session stamped before
   * a restore can match one given out after it.
   */
  userEpochs: Map<UserName, number>
  epochs: number
  users: Map<UserName, { id: number, deleted: boolean, failing: boolean }>
  sessions: ModelSession[]
  logouts: Logout[]
  renumbers: number
  /** Logouts held by the snapshot of session_user_versions that RestoreUsers brings back. */
  snapshot: { clock: number, rows: unknown[] } | null
}

export interface Real {
  system: System
  scheduler: fc.Scheduler
}

type Outcome = { status: 200, id: number } | { status: 401, reason: string }

export function newModel (system: System): Model {
  return {
    clock: 0,
    dataEpoch: 0,
    userEpochs: new Map(USERS.map((name) => [name, 0])),
    epochs: 0,
    users: new Map(USERS.map((name) => {
      const user = system.addUser(name)
      return [name, { id: user.id, deleted: false, failing: false }]
    })),
    sessions: [],
    logouts: [],
    renumbers: 0,
    snapshot: null
  }
}

/** The user's data changed: a new epoch, one never given out before. */
function newEpoch (model: Model, user: UserName): void {
  model.userEpochs.set(user, ++model.epochs)
}

function loggedOut (model: Model, session: ModelSession): boolean {
  return model.logouts.some((l) => session.held.has(l.id) && l.seq > session.authSeq && l.keep !== session)
}

/** What a request of this session may get: one answer, or two when the model is unsure whether it refreshes. */
function allowed (model: Model, session: ModelSession): Outcome[] {
  if (session.dead) return [{ status: 401, reason: 'not-logged-in' }]
  if (loggedOut(model, session)) return [{ status: 401, reason: 'user-logout' }]
  const stale = session.dataEpoch !== model.dataEpoch || session.userEpoch !== model.userEpochs.get(session.user)
  const kept: Outcome = { status: 200, id: session.lastId }
  if (!stale && !session.unsure) return [kept]
  const user = model.users.get(session.user)!
  const refreshed: Outcome = user.deleted
    ? { status: 401, reason: 'user-gone' }
    : user.failing
      ? { status: 401, reason: 'refresh-error' }
      : loggedOut(model, { ...session, held: new Set([...session.held, user.id]) })
        ? { status: 401, reason: 'user-logout' }
        : { status: 200, id: user.id }
  return stale ? [refreshed] : [kept, refreshed]
}

function outcomeOf (response: LightMyRequestResponse): Outcome {
  const body = response.json<{ id?: number, reason?: string }>()
  return response.statusCode === 200 ? { status: 200, id: body.id! } : { status: 401, reason: body.reason! }
}

/** Checks a response against the model, and moves the model to what the response shows. */
function observe (model: Model, session: ModelSession, response: LightMyRequestResponse, what: string): void {
  const got = outcomeOf(response)
  const options = allowed(model, session)
  if (!options.some((o) => JSON.stringify(o) === JSON.stringify(got))) {
    throw new Error(`${what}: got ${JSON.stringify(got)}, the model allows ${JSON.stringify(options)}`)
  }
  learn(model, session, got)
}

function learn (model: Model, session: ModelSession, got: Outcome): void {
  if (got.status === 401) {
    session.dead = true
    return
  }
  if (got.id !== session.lastId || session.dataEpoch !== model.dataEpoch || session.userEpoch !== model.userEpochs.get(session.user)) {
    // Refreshed: it now holds the user's current id, and is fresh.
    session.held.add(got.id)
    session.lastId = got.id
    session.dataEpoch = model.dataEpoch
    session.userEpoch = model.userEpochs.get(session.user)!
  }
  session.unsure = false
}

async function get (real: Real, instance: number, cookie: string, url = '/me'): Promise<LightMyRequestResponse> {
  return real.system.apps[instance]!.app.inject({ url, headers: { cookie, ...API } })
}

/** After each command: the instances catch up, then I2, I3 and I4 are checked. */
async function settleAndCheck (real: Real): Promise<void> {
  const { system } = real
  await system.settle()
  const version = await readSessionVersion(system.sql)
  const [rows] = await system.sql<Array<{ count: number }>>`
    select count(*)::int as count from session_user_versions where updated_at > now() - interval '1 day'`
  const count = rows!.count
  for (const [i, { app }] of system.apps.entries()) {
    const status = app.sessionRefresh.status()
    if (status.version !== version) throw new Error(`I2: instance ${i} holds version ${status.version}, the table ${version}`)
    if (status.userVersions !== count) throw new Error(`I2: instance ${i} knows ${status.userVersions} users, the table ${count}`)
    if (!status.listening) throw new Error(`I3: instance ${i} caught up but says it does not listen`)
    if (status.refreshesRunning !== 0) throw new Error(`I4: instance ${i} says ${status.refreshesRunning} refreshes still run`)
  }
  if (system.peak > MAX_CONCURRENT_REFRESHES) throw new Error(`I4: ${system.peak} refreshes ran at once on one instance`)
}

/** How many commands of each kind ran, for the test's and the soak's report. */
export const executed = new Map<string, number>()

abstract class Step implements fc.AsyncCommand<Model, Real> {
  check (_model: Readonly<Model>): boolean { return true }
  abstract act (model: Model, real: Real): Promise<void>
  abstract toString (): string
  async run (model: Model, real: Real): Promise<void> {
    executed.set(this.constructor.name, (executed.get(this.constructor.name) ?? 0) + 1)
    await this.act(model, real)
    await settleAndCheck(real)
  }
}

class Login extends Step {
  constructor (readonly user: UserName, readonly instance: number) { super() }
  override check (model: Readonly<Model>): boolean { return !model.users.get(this.user)!.deleted && model.sessions.length < 8 }
  async act (model: Model, real: Real): Promise<void> {
    const cookie = await real.system.login(this.instance, this.user)
    const id = model.users.get(this.user)!.id
    model.sessions.push({
      name: `s${model.sessions.length}`,
      cookie,
      user: this.user,
      held: new Set([id]),
      lastId: id,
      authSeq: ++model.clock,
      dataEpoch: model.dataEpoch,
      userEpoch: model.userEpochs.get(this.user)!,
      unsure: false,
      dead: false
    })
  }

  toString (): string { return `Login(${this.user} on ${this.instance})` }
}

class Request extends Step {
  constructor (readonly pick: number, readonly instance: number) { super() }
  override check (model: Readonly<Model>): boolean { return model.sessions.length > 0 }
  async act (model: Model, real: Real): Promise<void> {
    const session = model.sessions[this.pick % model.sessions.length]!
    observe(model, session, await get(real, this.instance, session.cookie), `${this} of ${session.name}`)
  }

  toString (): string { return `Request(#${this.pick} on ${this.instance})` }
}

class Bump extends Step {
  constructor (readonly renumber: UserName | null, readonly rolledBack: boolean) { super() }
  override check (model: Readonly<Model>): boolean { return this.renumber === null || model.renumbers < 5 }
  async act (model: Model, real: Real): Promise<void> {
    if (this.rolledBack) {
      await real.system.sql.begin(async (tx) => {
        await bumpSessionVersion(tx as never)
        throw new Error('rolled back')
      }).catch(() => {})
      return
    }
    if (this.renumber !== null) {
      model.users.get(this.renumber)!.id = real.system.renumber(this.renumber)
      model.renumbers++
    }
    await bumpSessionVersion(real.system.sql)
    model.dataEpoch++
  }

  toString (): string { return this.rolledBack ? 'Bump(rolled back)' : `Bump(${this.renumber === null ? '' : `renumbering ${this.renumber}`})` }
}

/** A restore brings an old session_version back, without its trigger: every stamp differs from it. */
class RestoreVersion extends Step {
  async act (model: Model, real: Real): Promise<void> {
    await real.system.sql.begin(async (tx) => {
      await tx`set local session_replication_role = replica`
      // About 11 days of microseconds back: a value no session holds.
      await tx`update system_settings set value = (value::bigint - 1000000000000)::text where key = 'session_version'`
    })
    model.dataEpoch++
  }

  toString (): string { return 'RestoreVersion()' }
}

class RefreshUser extends Step {
  constructor (readonly user: UserName, readonly viaSql: boolean, readonly instance: number) { super() }
  async act (model: Model, real: Real): Promise<void> {
    const id = model.users.get(this.user)!.id
    if (this.viaSql) await real.system.sql`select session_refresh_user(${String(id)})`
    else await real.system.apps[this.instance]!.app.sessionRefresh.refreshUser(id)
    newEpoch(model, this.user)
  }

  toString (): string { return `RefreshUser(${this.user} ${this.viaSql ? 'by SQL' : `on ${this.instance}`})` }
}

/** A logout of the user's current id, or of an id a session held before the ETL renumbered it. */
class LogoutUser extends Step {
  constructor (readonly user: UserName, readonly oldId: number, readonly viaSql: boolean, readonly instance: number) { super() }
  async act (model: Model, real: Real): Promise<void> {
    const old = [...new Set(model.sessions.filter((s) => s.user === this.user).flatMap((s) => [...s.held]))]
    const id = this.oldId > 0 && old.length > 0 ? old[this.oldId % old.length]! : model.users.get(this.user)!.id
    if (this.viaSql) await real.system.sql`select session_logout_user(${String(id)})`
    else await real.system.apps[this.instance]!.app.sessionRefresh.logoutUser(id)
    model.logouts.push({ id, seq: ++model.clock, keep: null })
    if (id === model.users.get(this.user)!.id) newEpoch(model, this.user)
  }

  toString (): string { return `LogoutUser(${this.user}${this.oldId > 0 ? ' by an old id' : ''} ${this.viaSql ? 'by SQL' : `on ${this.instance}`})` }
}

/** A password change: the session's own request logs its user out everywhere else, and keeps itself. */
class PasswordChange extends Step {
  constructor (readonly pick: number, readonly instance: number) { super() }
  override check (model: Readonly<Model>): boolean { return model.sessions.length > 0 }
  async act (model: Model, real: Real): Promise<void> {
    const session = model.sessions[this.pick % model.sessions.length]!
    // First an ordinary request, so the model knows which id the session holds when it changes the password.
    observe(model, session, await get(real, this.instance, session.cookie), `${this} of ${session.name}`)
    const response = await real.system.apps[this.instance]!.app.inject({ method: 'POST', url: '/password', headers: { cookie: session.cookie, ...API } })
    if (session.dead) {
      if (response.statusCode === 200) throw new Error(`I1: ${session.name} changed a password while logged out`)
      return
    }
    if (response.statusCode !== 200) throw new Error(`${this}: a fresh session got ${response.statusCode} ${response.body}`)
    const seq = ++model.clock
    model.logouts.push({ id: session.lastId, seq, keep: session })
    session.authSeq = seq
    newEpoch(model, session.user)
    session.userEpoch = model.userEpochs.get(session.user)!
  }

  toString (): string { return `PasswordChange(#${this.pick} on ${this.instance})` }
}

class Directory extends Step {
  constructor (readonly user: UserName, readonly change: 'delete' | 'fail' | 'heal') { super() }
  async act (model: Model, real: Real): Promise<void> {
    const inModel = model.users.get(this.user)!
    const inReal = real.system.directory.get(this.user)!
    inModel.deleted = inReal.deleted = this.change === 'delete' ? true : this.change === 'heal' ? false : inModel.deleted
    inModel.failing = inReal.failing = this.change === 'fail'
    // The app tells its instances that this user's data changed.
    await real.system.apps[0]!.app.sessionRefresh.refreshUser(inModel.id)
    newEpoch(model, this.user)
  }

  toString (): string { return `Directory(${this.change} ${this.user})` }
}

class SnapshotUsers extends Step {
  async act (model: Model, real: Real): Promise<void> {
    model.snapshot = { clock: model.clock, rows: [...await real.system.sql`select * from session_user_versions`] }
  }

  toString (): string { return 'SnapshotUsers()' }
}

/**
 * session_user_versions goes back to the snapshot, as a restore brings it
 * back: its triggers off. Logouts made since are forgotten by the table, so
 * by the model; sessions already logged out stay out (their store entries are gone).
 */
class RestoreUsers extends Step {
  override check (model: Readonly<Model>): boolean { return model.snapshot !== null }
  async act (model: Model, real: Real): Promise<void> {
    const { rows, clock } = model.snapshot!
    await real.system.sql.begin(async (tx) => {
      await tx`set local session_replication_role = replica`
      await tx`truncate session_user_versions`
      if (rows.length > 0) await tx`insert into session_user_versions ${tx(rows as Array<Record<string, unknown>>)}`
    })
    model.logouts = model.logouts.filter((l) => l.seq <= clock)
    // The table's user versions are the snapshot's now: a session stamped with a
    // version that a change after the snapshot gave out is stale, one stamped
    // with what the snapshot holds is fresh again (a refreshUser undone by the
    // restore is forgotten). The model does not track which: until its next
    // request, either answer is right; any change after this is news to all.
    for (const user of model.userEpochs.keys()) newEpoch(model, user)
    for (const session of model.sessions) {
      session.unsure = true
      session.userEpoch = model.userEpochs.get(session.user)!
    }
  }

  toString (): string { return 'RestoreUsers()' }
}

class KillListeners extends Step {
  async act (_model: Model, real: Real): Promise<void> {
    const apps = real.system.apps.map(({ app }) => app)
    const before = apps.map((app) => app.sessionRefresh.status().reconnects)
    await real.system.sql`
      select pg_terminate_backend(pid) from pg_stat_activity
      where application_name = 'fastify-session-refresh' and datname = current_database() and query ilike 'listen%'`
    // Each instance learns of it through its socket: only then can it be said to catch up again.
    await eventually('every instance to reconnect', () => apps.every((app, i) => app.sessionRefresh.status().reconnects > before[i]!), 30_000)
  }

  toString (): string { return 'KillListeners()' }
}

/** I3's other half: while LISTEN is down and cannot come back, no instance says it listens. */
class ListenersDown extends Step {
  async act (_model: Model, real: Real): Promise<void> {
    const { sql } = real.system
    const apps = real.system.apps.map(({ app }) => app)
    const [{ database }] = await sql<[{ database: string }]>`select current_database() as database`
    // A database cannot refuse connections from within itself: from the server's default one.
    const admin = postgres((await readServerInfo()).url, { max: 1, onnotice: () => {} })
    await admin.unsafe(`alter database "${database}" allow_connections false`)
    try {
      await sql`
        select pg_terminate_backend(pid) from pg_stat_activity
        where application_name = 'fastify-session-refresh' and datname = current_database() and query ilike 'listen%'`
      // The socket's close tells each instance at once; none can listen again while connections are refused.
      await eventually('I3: every instance to say it does not listen', () => apps.every((app) => !app.sessionRefresh.status().listening), 10_000)
    } finally {
      await admin.unsafe(`alter database "${database}" allow_connections true`)
      await admin.end()
    }
  }

  toString (): string { return 'ListenersDown()' }
}

const FORGED = ['version:999999999999999', 'version:1', 'users', 'heartbeat:forged:1', '{"u":"1","v":9007199254740991}', 'x'.repeat(7000)]

class Forge extends Step {
  constructor (readonly payload: number) { super() }
  async act (_model: Model, real: Real): Promise<void> {
    await real.system.sql`select pg_notify('session_refresh', ${FORGED[this.payload]!})`
  }

  toString (): string { return `Forge(${FORGED[this.payload]!.slice(0, 30)})` }
}

/**
 * Requests of several sessions at once, with a logout of one user and maybe a
 * bump among them; the scheduler picks the order in which the refreshes go
 * on. A refresh let go after the logout was read everywhere never serves the
 * logged-out session.
 */
class Race extends Step {
  constructor (readonly picks: number[], readonly user: UserName, readonly withBump: boolean, readonly instances: number[]) { super() }
  override check (model: Readonly<Model>): boolean { return model.sessions.length > 0 }
  async act (model: Model, real: Real): Promise<void> {
    const { system, scheduler } = real
    if (this.withBump) {
      await bumpSessionVersion(system.sql)
      model.dataEpoch++
      await system.settle()
    }
    const sessions = [...new Set(this.picks.map((pick) => model.sessions[pick % model.sessions.length]!))]
    const id = model.users.get(this.user)!.id
    system.happenings.length = 0
    system.scheduler = scheduler
    try {
      const logout = scheduler.schedule(Promise.resolve(), `logout of ${this.user}`).then(async () => {
        await system.apps[0]!.app.sessionRefresh.logoutUser(id)
        await system.settle()
        system.happenings.push({ kind: 'logout-known', user: this.user })
      })
      const requests = sessions.map((session, i) => get(real, this.instances[i % this.instances.length]!, session.cookie)
        .then((response) => ({ session, response })))
      const [, answers] = await scheduler.waitFor(Promise.all([logout, Promise.all(requests)]))
      const known = system.happenings.findIndex((h) => h.kind === 'logout-known')
      for (const { session, response } of answers) {
        if (response.statusCode === 200 && (session.dead || loggedOut(model, session))) {
          throw new Error(`I1: ${session.name} was served although it was logged out before the race`)
        }
        const released = system.happenings.findIndex((h) => h.kind === 'refresh-released' && h.user === session.user)
        const wasBefore = session.authSeq <= model.clock && session.held.has(id) && !session.dead
        if (response.statusCode === 200 && wasBefore && released > known) {
          throw new Error(`I1: ${session.name} was refreshed after the logout of ${this.user} was read, and served`)
        }
        if (response.statusCode !== 200) session.dead = true
        else {
          const got = outcomeOf(response) as { status: 200, id: number }
          session.held.add(got.id)
          session.lastId = got.id
          session.unsure = true
        }
      }
    } finally {
      system.scheduler = null
    }
    model.logouts.push({ id, seq: ++model.clock, keep: null })
    newEpoch(model, this.user)
  }

  toString (): string { return `Race(${this.picks.join(',')} with a logout of ${this.user}${this.withBump ? ' and a bump' : ''})` }
}

const user = fc.constantFrom(...USERS)
const instance = fc.integer({ min: 0, max: 1 })

/** Every command, with their arbitraries; `faults` adds none here (the soak adds its own). */
export function commands (extra: Array<fc.Arbitrary<fc.AsyncCommand<Model, Real>>> = []): Array<fc.Arbitrary<fc.AsyncCommand<Model, Real>>> {
  const login = fc.tuple(user, instance).map(([u, i]) => new Login(u, i))
  const request = fc.tuple(fc.nat(), instance).map(([p, i]) => new Request(p, i))
  // Logins and requests are what every other command acts on: drawn more often.
  return [
    login, login, login,
    request, request, request, request,
    fc.tuple(fc.option(user, { nil: null }), fc.boolean()).map(([u, rolledBack]) => new Bump(u, rolledBack)),
    fc.constant(new RestoreVersion()),
    fc.tuple(user, fc.boolean(), instance).map(([u, sql, i]) => new RefreshUser(u, sql, i)),
    fc.tuple(user, fc.nat({ max: 3 }), fc.boolean(), instance).map(([u, old, sql, i]) => new LogoutUser(u, old, sql, i)),
    fc.tuple(fc.nat(), instance).map(([p, i]) => new PasswordChange(p, i)),
    fc.tuple(user, fc.constantFrom('delete' as const, 'fail' as const, 'heal' as const)).map(([u, c]) => new Directory(u, c)),
    fc.constant(new SnapshotUsers()),
    fc.constant(new RestoreUsers()),
    fc.constant(new KillListeners()),
    fc.constant(new ListenersDown()),
    fc.nat({ max: FORGED.length - 1 }).map((p) => new Forge(p)),
    fc.tuple(fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), user, fc.boolean(), fc.array(instance, { minLength: 1, maxLength: 2 }))
      .map(([picks, u, bump, is]) => new Race(picks, u, bump, is)),
    ...extra
  ]
}

export { Step, settleAndCheck, sessionCookie }
