// A hot standby of the test server, for tests of a URL that reaches only a standby.
//
// Made the way pg_basebackup makes one, through PostgreSQL's low-level backup API,
// because pg_basebackup itself is out of reach here: Debian's is version 15 and
// refuses newer servers (the embedded one is 18), and the machine's PostgreSQL
// allows no replication connections. So, on one connection: a temporary slot keeps
// the WAL, pg_backup_start, a copy of the data directory, pg_backup_stop, a copy of
// the WAL the backup needs; then the copy starts with standby.signal, on a port of
// its own, with the binaries that run the primary. It replays that WAL, opens for
// reads, and stays a standby: it streams nothing (the server may refuse replication),
// so it holds the primary's data as of the backup. The primary is never stopped.
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { access, chown, copyFile, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import postgres, { type Sql } from 'postgres'
import { readServerInfo } from '../setup/server.js'
import { freePort } from './free-port.js'

const run = promisify(execFile)

interface Teardown { teardown (fn: () => unknown): void }
interface Owner { uid: number, gid: number }

export interface StandbyOptions {
  /** A database of the test server (createDatabase's `url`) to reach on the standby; `postgres` when omitted. Create it first: the standby holds what the primary held when it was made. */
  databaseUrl?: string
}

export interface Standby {
  /** The database on the standby, same user and password. Reads work; writes and LISTEN fail ("cannot execute LISTEN during recovery"). */
  url: string
  port: number
  dataDir: string
  /** Promotes it to a primary of its own (a failover): it takes writes from then on. */
  promote (): Promise<void>
}

interface Primary {
  dataDirectory: string
  /** pg_ctl of the binaries that run the primary: a standby must run the same major version. */
  pgCtl: string
  owner: Owner
  /** Settings a hot standby must hold at least as high as its primary. */
  settings: Record<string, string>
}

const HOT_STANDBY_SETTINGS = ['max_connections', 'max_prepared_transactions', 'max_locks_per_transaction', 'max_wal_senders', 'max_worker_processes']

/** Kept as empty directories: the primary's runtime state (the list pg_basebackup leaves out). */
const EMPTIED = new Set(['pg_wal', 'pg_replslot', 'pg_dynshmem', 'pg_notify', 'pg_serial', 'pg_snapshots', 'pg_stat_tmp', 'pg_subtrans'])
/** Left out: the running primary's own files, and its configuration (the standby gets its own). */
const LEFT_OUT = new Set(['postmaster.pid', 'postmaster.opts', 'postgresql.conf', 'postgresql.auto.conf', 'pg_hba.conf', 'pg_ident.conf',
  'backup_label', 'tablespace_map', 'standby.signal', 'recovery.signal', 'pg_internal.init', 'server.log', 'log'])

/** Starts a hot standby of the test server; it is stopped and removed at teardown. */
export async function startStandby (t: Teardown, options: StandbyOptions = {}): Promise<Standby> {
  const server = await readServerInfo()
  const database = databaseName(server.url, options.databaseUrl)
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  const primary = await inspect(admin).finally(() => admin.end())
  const dataDir = await mkdtemp(join(tmpdir(), 'fsr-test-standby-'))
  t.teardown(async () => {
    try {
      // Immediate: nothing in a test standby is worth a shutdown checkpoint.
      if (await exists(join(dataDir, 'postmaster.pid'))) await pgCtl(primary, dataDir, ['stop', '-w', '-m', 'immediate'])
    } finally {
      await rm(dataDir, { recursive: true, force: true })
    }
  })
  await own(dataDir, primary.owner)
  await baseBackup(server.url, primary, dataDir)
  const port = await freePort()
  await configure(dataDir, port, primary)
  await pgCtl(primary, dataDir, ['start', '-w', '-l', join(dataDir, 'server.log')]).catch(async (err: unknown) => {
    throw new Error(`the standby did not start: ${String(err)}\n${await readFile(join(dataDir, 'server.log'), 'utf8').catch(() => '')}`)
  })
  const url = new URL(server.url)
  url.hostname = '127.0.0.1'
  url.port = String(port)
  url.pathname = `/${encodeURIComponent(database)}`
  return { url: url.toString(), port, dataDir, promote: () => pgCtl(primary, dataDir, ['promote', '-w']) }
}

function databaseName (serverUrl: string, url: string | undefined): string {
  if (url === undefined) return 'postgres'
  if (new URL(url).host !== new URL(serverUrl).host) throw new Error(`startStandby: ${url} is not on the test server (${new URL(serverUrl).host})`)
  return decodeURIComponent(new URL(url).pathname.slice(1))
}

/** Where the primary's files and binaries are; the standby is made from them, so the primary must run on this machine. */
async function inspect (sql: Sql): Promise<Primary> {
  const [info] = await sql<[{ dataDirectory: string, version: number, walLevel: string, tablespaces: number }]>`
    select current_setting('data_directory') as "dataDirectory", current_setting('server_version_num')::int as version,
           current_setting('wal_level') as "walLevel",
           (select count(*)::int from pg_tablespace where spcname not in ('pg_default', 'pg_global')) as tablespaces`
  if (info.version < 150000) throw new Error('startStandby needs PostgreSQL 15 or newer (pg_backup_start)')
  if (info.walLevel === 'minimal') throw new Error('startStandby needs wal_level replica or logical on the test server')
  if (info.tablespaces > 0) throw new Error('startStandby does not copy tablespaces')
  const pidFile = await readFile(join(info.dataDirectory, 'postmaster.pid'), 'utf8').catch(() => {
    throw new Error(`startStandby copies the test server's data directory, ${info.dataDirectory}, which this process cannot read: ` +
      'it needs the embedded server, or a PostgreSQL on this machine and the rights of its user (or root)')
  })
  const postmaster = await readlink(`/proc/${pidFile.split('\n')[0]}/exe`)
  const { uid, gid } = await stat(info.dataDirectory)
  const rows = await sql<Array<{ name: string, setting: string }>>`select name, setting from pg_settings where name = any(${HOT_STANDBY_SETTINGS})`
  return {
    dataDirectory: info.dataDirectory,
    pgCtl: join(dirname(postmaster), 'pg_ctl'),
    owner: { uid, gid },
    settings: Object.fromEntries(rows.map((row) => [row.name, row.setting]))
  }
}

/**
 * Copies the running primary into `target` as an online backup. One connection
 * holds the backup and a temporary slot: the slot keeps the WAL from the backup's
 * start until it is copied (a checkpoint from a parallel test, a DROP DATABASE
 * for one, could recycle it), and ending the connection ends both, whatever fails.
 */
async function baseBackup (serverUrl: string, primary: Primary, target: string): Promise<void> {
  const sql = postgres(serverUrl, { max: 1, onnotice: () => {} })
  try {
    await sql`select pg_create_physical_replication_slot(${`fsr_test_standby_${randomBytes(6).toString('hex')}`}, true, true)`
    const [start] = await sql<[{ walfile: string }]>`select pg_walfile_name(pg_backup_start('fastify-session-refresh test standby', true)) as walfile`
    await copyDataDirectory(primary.dataDirectory, target, primary.owner)
    const [stop] = await sql<[{ walfile: string, labelfile: string }]>`select pg_walfile_name(lsn) as walfile, labelfile from pg_backup_stop(false)`
    await copyWal(join(primary.dataDirectory, 'pg_wal'), join(target, 'pg_wal'), start.walfile, stop.walfile, primary.owner)
    await writeOwned(join(target, 'backup_label'), stop.labelfile, primary.owner)
  } finally {
    await sql.end()
  }
}

/** Copies a live data directory; files that parallel tests drop meanwhile (a database's) are skipped, as pg_basebackup does. */
async function copyDataDirectory (from: string, to: string, owner: Owner, relative = ''): Promise<void> {
  const entries = await readdir(join(from, relative), { withFileTypes: true }).catch(ifGone([]))
  await Promise.all(entries.map(async (entry) => {
    const path = join(relative, entry.name)
    if (LEFT_OUT.has(entry.name) || entry.name.startsWith('pgsql_tmp') || entry.name.startsWith('.s.PGSQL.')) return
    if (entry.isDirectory()) {
      await mkdir(join(to, path), { mode: 0o700 })
      await own(join(to, path), owner)
      if (!(relative === '' && EMPTIED.has(entry.name))) await copyDataDirectory(from, to, owner, path)
    } else if (entry.isFile()) {
      if (await copyFile(join(from, path), join(to, path)).then(() => true, ifGone(false))) await own(join(to, path), owner)
    }
  }))
}

/** Copies the WAL segments from the backup's first to its last, and the timeline histories. */
async function copyWal (from: string, to: string, first: string, last: string, owner: Owner): Promise<void> {
  await mkdir(join(to, 'archive_status'), { mode: 0o700 })
  await own(join(to, 'archive_status'), owner)
  const needed = (name: string): boolean => (/^[0-9A-F]{24}$/.test(name) && name >= first && name <= last) || name.endsWith('.history')
  for (const name of (await readdir(from)).filter(needed)) {
    await copyFile(join(from, name), join(to, name))
    await own(join(to, name), owner)
  }
}

/** The standby's own configuration: its port and socket, standby.signal, trust from 127.0.0.1. */
async function configure (dataDir: string, port: number, primary: Primary): Promise<void> {
  await writeOwned(join(dataDir, 'postgresql.conf'), [
    `port = ${port}`,
    "listen_addresses = '127.0.0.1'",
    `unix_socket_directories = '${dataDir}'`,
    'hot_standby = on',
    // Tests match the server's messages ("cannot execute LISTEN during recovery"), so no translations.
    "lc_messages = 'C'",
    'fsync = off',
    ...Object.entries(primary.settings).map(([name, value]) => `${name} = ${value}`),
    ''
  ].join('\n'), primary.owner)
  await writeOwned(join(dataDir, 'pg_hba.conf'), 'local all all trust\nhost all all 127.0.0.1/32 trust\n', primary.owner)
  await writeOwned(join(dataDir, 'pg_ident.conf'), '', primary.owner)
  await writeOwned(join(dataDir, 'standby.signal'), '', primary.owner)
}

/** Runs pg_ctl as the primary's user: PostgreSQL refuses to run as root. */
async function pgCtl (primary: Primary, dataDir: string, args: string[]): Promise<void> {
  const as = userInfo().uid === 0 ? primary.owner : {}
  await run(primary.pgCtl, ['-D', dataDir, ...args], { ...as, cwd: dataDir })
}

async function writeOwned (path: string, content: string, owner: Owner): Promise<void> {
  await writeFile(path, content, { mode: 0o600 })
  await own(path, owner)
}

async function own (path: string, owner: Owner): Promise<void> {
  if (userInfo().uid === 0) await chown(path, owner.uid, owner.gid)
}

function ifGone<T> (value: T): (err: NodeJS.ErrnoException) => T {
  return (err) => {
    if (err.code === 'ENOENT') return value
    throw err
  }
}

async function exists (path: string): Promise<boolean> {
  return access(path).then(() => true, () => false)
}
