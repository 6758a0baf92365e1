// Server-rendered HTML. Every interpolated value goes through `html`, which escapes it.
import type { League, MatchRow, Player, StandingRow } from './db/queries.js'

/** Text that is already safe HTML. */
class Safe {
  constructor (readonly value: string) {}
  toString (): string { return this.value }
}

function escape (value: unknown): string {
  if (value instanceof Safe) return value.value
  if (Array.isArray(value)) return value.map(escape).join('')
  if (value === null || value === undefined || value === false) return ''
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

export function html (strings: TemplateStringsArray, ...values: unknown[]): Safe {
  return new Safe(strings.reduce((out, text, i) => out + text + (i < values.length ? escape(values[i]) : ''), ''))
}

export interface Frame {
  /** Who is logged in, as the session says; null on the login page. */
  user: { name: string, playerId: number, leagueName: string } | null
  sessionVersion: number | null
  serverVersion: number
  server: string
  /** The event stream's path, for pages of a logged-in user: they are told of new data and of a logout. */
  events: string | null
}

const STYLE = `
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2a20; background: #f4f7f2; }
  header { background: #1f5d3a; color: #fff; padding: .7rem 1.5rem; display: flex; gap: 1.5rem; align-items: center; flex-wrap: wrap; }
  header a, header button { color: #fff; text-decoration: none; font: inherit; background: none; border: 0; cursor: pointer; padding: 0; }
  header .who { margin-left: auto; opacity: .9; }
  main { max-width: 52rem; margin: 1.5rem auto; padding: 0 1.5rem; }
  h1 { font-size: 1.5rem; margin: 0 0 1rem; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1.2rem; background: #fff; padding: 1rem; border-radius: 6px; }
  dt { color: #5b6b60; }
  dd { margin: 0; font-weight: 600; }
  table { border-collapse: collapse; width: 100%; background: #fff; border-radius: 6px; overflow: hidden; }
  th, td { padding: .35rem .7rem; text-align: left; border-bottom: 1px solid #e3e9e1; }
  tr.me td { background: #fff6d5; font-weight: 600; }
  .message { background: #fde8e4; border: 1px solid #e6a79b; padding: .7rem 1rem; border-radius: 6px; }
  .note { background: #e4f0fd; border: 1px solid #9bbbe6; padding: .7rem 1rem; border-radius: 6px; }
  form.login { display: grid; gap: .6rem; max-width: 22rem; }
  form.login label { display: grid; gap: .2rem; }
  input, select, button.primary { font: inherit; padding: .4rem .6rem; }
  footer { max-width: 52rem; margin: 2rem auto; padding: 0 1.5rem; color: #5b6b60; font-size: .85rem; }
`

export function page (title: string, frame: Frame, body: Safe): string {
  const { user } = frame
  return html`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>${title} · Tennis league</title><style>${new Safe(STYLE)}</style>
${user !== null && frame.events !== null
  ? html`<meta name="session-version" content="${frame.serverVersion}">
<script type="module" src="${frame.events}/client.js?start"></script>`
  : ''}
</head>
<body>
<header>
  <strong>Tennis league</strong>
  ${user !== null
    ? html`<a href="/me">My player</a><a href="/league">League</a><a href="/api/me">/api/me</a>
  <span class="who" data-testid="who">${user.name} · player <span data-testid="header-player-id">${user.playerId}</span> · ${user.leagueName}</span>
  <form method="post" action="/logout"><button type="submit">Log out</button></form>`
    : ''}
</header>
<main>
${body}
</main>
<footer data-testid="versions">
  Session version <span data-testid="session-version">${frame.sessionVersion ?? '–'}</span>
  · server version <span data-testid="server-version">${frame.serverVersion}</span>
  · served by ${frame.server}
</footer>
</body>
</html>
`.value
}

const MESSAGES: Record<string, string> = {
  'user-gone': 'Your player record is no longer in the league data: the latest import removed it. Please log in again, or ask the league secretary.',
  'refresh-error': 'Your session could not be refreshed just now. Please log in again.',
  'not-logged-in': 'Please log in to see that page.',
  'logged-out': 'You are logged out.',
  'user-logout': 'You were logged out everywhere. Please log in again.'
}

export function loginBody (options: { next: string, reason: string | undefined, error: string | null, email: string, demo: string | null }): Safe {
  const message = options.reason === undefined ? undefined : MESSAGES[options.reason]
  return html`<h1>Log in</h1>
${message !== undefined ? html`<p class="${options.reason === 'logged-out' ? 'note' : 'message'}" data-testid="login-message">${message}</p>` : ''}
${options.error !== null ? html`<p class="message" data-testid="login-error">${options.error}</p>` : ''}
<form class="login" method="post" action="/login">
  <input type="hidden" name="next" value="${options.next}">
  <label>Email <input name="email" type="email" autocomplete="username" required value="${options.email}"></label>
  <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
  <button class="primary" type="submit">Log in</button>
</form>
${options.demo !== null ? html`<p class="note">Demo login: <code>${options.demo}</code></p>` : ''}`
}

export function playerBody (player: Player, sessionPlayerId: number, standing: StandingRow | undefined, matches: MatchRow[]): Safe {
  return html`<h1>My player</h1>
<form method="post" action="/logout-others"><button type="submit" data-testid="logout-others">Log out everywhere else</button></form>
<dl>
  <dt>Name</dt><dd data-testid="player-name">${player.name}</dd>
  <dt>Player id</dt><dd data-testid="player-id">${sessionPlayerId}</dd>
  <dt>Email</dt><dd>${player.email}</dd>
  <dt>League</dt><dd data-testid="player-league">${player.leagueName}</dd>
  <dt>Rating</dt><dd>${player.rating}</dd>
  <dt>Standing</dt><dd>${standing !== undefined ? `#${standing.position} · ${standing.points} pts (${standing.won}–${standing.lost})` : 'no matches yet'}</dd>
</dl>
<h2>Matches</h2>
${matches.length === 0
  ? html`<p>No matches this week.</p>`
  : html`<table><tr><th>Date</th><th>Home</th><th>Away</th><th>Winner</th><th>Score</th></tr>
${matches.map((m) => html`<tr><td>${m.playedOn}</td><td>${m.home}</td><td>${m.away}</td><td>${m.winner}</td><td>${m.score}</td></tr>`)}
</table>`}`
}

export function leagueBody (league: League, leagues: League[], standings: StandingRow[], sessionPlayerId: number): Safe {
  return html`<h1 data-testid="league-name">${league.name} <small>(${league.season})</small></h1>
<form method="post" action="/league">
  <label>Switch league
    <select name="leagueId" data-testid="league-switcher">
      ${leagues.map((l) => html`<option value="${l.id}"${l.id === league.id ? new Safe(' selected') : ''}>${l.name}</option>`)}
    </select>
  </label>
  <button class="primary" type="submit">Show</button>
</form>
<h2>Standings</h2>
<table>
  <tr><th>#</th><th>Player</th><th>Played</th><th>Won</th><th>Lost</th><th>Points</th></tr>
  ${standings.map((s) => html`<tr class="${s.playerId === sessionPlayerId ? 'me' : ''}"><td>${s.position}</td><td>${s.name} <small>(id ${s.playerId})</small></td><td>${s.played}</td><td>${s.won}</td><td>${s.lost}</td><td>${s.points}</td></tr>`)}
</table>`
}
