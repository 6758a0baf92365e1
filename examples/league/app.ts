// The tennis-league web app: login, "My player", a league switcher and /api/me,
// with sessions in PostgreSQL and fastify-session-refresh keeping them current
// after the ETL re-imports the data and hands every player a fresh id.
import type { FastifySessionObject } from '@fastify/session'
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import postgres from 'postgres'
import sessionRefresh, { safeRedirectPath, type SessionRefreshOptions } from '../../lib/index.js'
import { leagueQueries, type LeagueQueries, type Player } from './db/queries.js'
import { verifyPassword } from './db/passwords.js'
import { leagueBody, loginBody, page, playerBody, type Frame } from './pages.js'
import { refuseCrossSiteWrites } from './same-origin.js'
import { SESSION_SECONDS, endSession, registerSessions, startSession, type SessionKind } from './sessions.js'

declare module 'fastify' {
  interface Session {
    /** The account id; its presence means "logged in". */
    id?: number | null
    /** The stable key: the ETL keeps emails and replaces player ids. */
    email?: string
    /** The player id in the current import; the ETL changes it. */
    playerId?: number
    /** The league the user is looking at; the switcher writes it. */
    leagueId?: string
  }
}

export interface LeagueAppOptions {
  databaseUrl: string
  /** Signs the session cookie; at least 32 characters, the same in every process that shares sessions. */
  sessionSecret: string
  /** @default true */
  logger?: FastifyServerOptions['logger']
  /** Shown in the footer, to tell app processes apart. @default `pid <pid>` */
  serverName?: string
  /** Shown on the login page, e.g. 'alex.moreno@example.com / tennis'. @default null */
  demoLogin?: string | null
  /** Sessions in PostgreSQL ('store') or in an encrypted cookie ('secure'). @default 'store' */
  session?: SessionKind
  /** Passed to the plugin as they are; tests tune the listener with them. */
  sessionRefresh?: Partial<Omit<SessionRefreshOptions, 'connection' | 'refresh'>>
}

const EVENTS = '/session-refresh/events'

export async function buildApp (options: LeagueAppOptions): Promise<FastifyInstance> {
  // Request logs are off so that the plugin's "Refreshing stale session" lines stand out.
  const app = Fastify({ logger: options.logger ?? true, logController: new LogController({ disableRequestLogging: true }) })
  const serverName = options.serverName ?? `pid ${process.pid}`
  const sql = postgres(options.databaseUrl, { max: 5, onnotice: () => {} })
  app.addHook('onClose', () => sql.end({ timeout: 5 }))
  const db = leagueQueries(sql)

  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_request, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(String(body))))
  })

  // First of all hooks: a refused cross-site post never reaches the session.
  app.addHook('onRequest', refuseCrossSiteWrites)
  await registerSessions(app, options.session ?? 'store', options.databaseUrl, options.sessionSecret)
  await app.register(sessionRefresh, {
    connection: options.databaseUrl,
    // The app's own pool for the plugin's reads and writes: it adds only its LISTEN connection.
    sql,
    // A logout holds as long as a session can live.
    sessionLifetime: SESSION_SECONDS * 1000,
    // Open pages are told of new data (a banner) and of a logout (to the login page).
    events: EVENTS,
    requiredFields: ['email', 'playerId', 'leagueId'],
    refresh: (session) => refreshSession(db, session),
    ...options.sessionRefresh
  })

  const pages = pageParts(app, db, options, serverName)
  addLoginRoutes(app, db, options, pages)
  addPlayerRoutes(app, db, pages)
  return app
}

/** What every page needs: the frame (header, footer, event stream) and the player in view. */
function pageParts (app: FastifyInstance, db: LeagueQueries, options: LeagueAppOptions, serverName: string) {
  const frame = (request: FastifyRequest, user: Frame['user']): Frame => ({
    user,
    sessionVersion: request.session.get('sessionRefresh')?.v ?? null,
    serverVersion: app.sessionRefresh.version,
    server: serverName,
    events: EVENTS
  })

  /**
   * The logged-in player and the league in view. The hook has already refreshed
   * a stale session; null covers the moment between an import's commit and its
   * notification, when the session is not stale yet but its player is gone.
   */
  async function context (request: FastifyRequest, reply: FastifyReply) {
    const email = request.session.get('email')
    const player = email === undefined ? null : await db.playerByEmail(email)
    if (player === null) {
      await endSession(request)
      await reply.redirect('/login?reason=user-gone', 302)
      return null
    }
    const leagueId = request.session.get('leagueId')
    const league = (leagueId === undefined ? null : await db.league(leagueId)) ??
      { id: player.leagueId, name: player.leagueName, season: '' }
    const playerId = request.session.get('playerId') ?? player.id
    return { player, league, playerId, user: { name: player.name, playerId, leagueName: league.name } }
  }

  return { frame, context }
}

type PageParts = ReturnType<typeof pageParts>

/** Logging in and out: the login page, the form's post, logout, "log out everywhere else". */
function addLoginRoutes (app: FastifyInstance, db: LeagueQueries, options: LeagueAppOptions, { frame }: PageParts): void {
  app.get('/', async (request, reply) =>
    reply.redirect(request.session.get('id') == null ? '/login' : '/me', 302))

  app.get<{ Querystring: { next?: string, reason?: string } }>('/login', async (request, reply) => {
    const body = loginBody({
      next: safeRedirectPath(request.query.next ?? '/me'),
      reason: request.query.reason,
      error: null,
      email: '',
      demo: options.demoLogin ?? null
    })
    return reply.type('text/html').send(page('Log in', frame(request, null), body))
  })

  app.post<{ Body: { email?: string, password?: string, next?: string } }>('/login', async (request, reply) => {
    const email = String(request.body?.email ?? '').trim().toLowerCase()
    const password = String(request.body?.password ?? '')
    const next = safeRedirectPath(request.body?.next ?? '/me')
    const account = await db.account(email)
    const player = account !== null && await verifyPassword(password, account.passwordHash)
      ? await db.playerByEmail(email)
      : null
    if (account === null || player === null) {
      const error = account !== null && await verifyPassword(password, account.passwordHash)
        ? 'No player in the current league data uses this email.'
        : 'Wrong email or password.'
      const body = loginBody({ next, reason: undefined, error, email, demo: options.demoLogin ?? null })
      return reply.code(401).type('text/html').send(page('Log in', frame(request, null), body))
    }
    // A new session id on login, so an id planted before login is worthless after it.
    await startSession(request)
    request.session.set('id', account.id)
    request.session.set('email', player.email)
    request.session.set('playerId', player.id)
    request.session.set('leagueId', player.leagueId)
    app.sessionRefresh.stamp(request)
    request.log.info({ userId: account.id, playerId: player.id }, 'Logged in')
    return reply.redirect(next, 303)
  })

  // A logout needs no fresh data, and must not wait for a refresh.
  app.post('/logout', { config: { sessionRefresh: false } }, async (request, reply) => {
    await endSession(request)
    return reply.redirect('/login?reason=logged-out', 303)
  })

  // Every other session of this player, in any browser and on any app process, must log in again.
  app.post('/logout-others', { config: { loginRequired: true } }, async (request, reply) => {
    await app.sessionRefresh.logoutUser(request.session.get('id')!, { keep: request })
    return reply.redirect('/me', 303)
  })

}

/** What a logged-in player sees: "My player", the league, the league switcher, /api/me, and /status. */
function addPlayerRoutes (app: FastifyInstance, db: LeagueQueries, { frame, context }: PageParts): void {
  app.get('/me', { config: { loginRequired: true } }, async (request, reply) => {
    const found = await context(request, reply)
    if (found === null) return reply
    const standings = await db.standings(found.player.leagueId)
    const body = playerBody(found.player, found.playerId, standings.find((row) => row.playerId === found.player.id),
      await db.matchesOf(found.player.id))
    return reply.type('text/html').send(page('My player', frame(request, found.user), body))
  })

  app.get('/league', { config: { loginRequired: true } }, async (request, reply) => {
    const found = await context(request, reply)
    if (found === null) return reply
    const body = leagueBody(found.league, await db.leagues(), await db.standings(found.league.id), found.playerId)
    return reply.type('text/html').send(page(found.league.name, frame(request, found.user), body))
  })

  app.post<{ Body: { leagueId?: string } }>('/league', { config: { loginRequired: true } }, async (request, reply) => {
    const league = await db.league(String(request.body?.leagueId ?? ''))
    if (league === null) return reply.code(400).type('text/plain').send('No such league')
    request.session.set('leagueId', league.id)
    return reply.redirect('/league', 303)
  })

  app.get('/api/me', { config: { loginRequired: true } }, async (request, reply) => {
    const found = await context(request, reply)
    if (found === null) return reply
    return {
      id: request.session.get('id'),
      email: found.player.email,
      name: found.player.name,
      playerId: found.playerId,
      leagueId: found.league.id,
      league: found.league.name,
      playerLeagueId: found.player.leagueId,
      sessionVersion: request.session.get('sessionRefresh')?.v ?? null,
      serverVersion: app.sessionRefresh.version
    }
  })

  // Public, for operators and the browser test: is the listener up, which version has it seen?
  app.get('/status', { config: { sessionRefresh: false } }, async () => app.sessionRefresh.status())

}

/**
 * The plugin calls this for a stale session. It re-resolves the player by email,
 * never by the old player id (the import replaced every id), keeps the league in
 * view when it still exists and falls back to the player's own league when not.
 * null tells the plugin the user is gone: it clears the login and sends the
 * browser to /login?reason=user-gone.
 */
export async function refreshSession (db: LeagueQueries, session: FastifySessionObject): Promise<{ playerId: number, leagueId: string } | null> {
  const email = session.get('email')
  if (email === undefined) return null
  const player: Player | null = await db.playerByEmail(email)
  if (player === null) return null
  const leagueId = session.get('leagueId')
  const league = leagueId === undefined ? null : await db.league(leagueId)
  return { playerId: player.id, leagueId: league?.id ?? player.leagueId }
}
