// Holds event streams open against an app server (bench/workers/server.ts B … events)
// and notes when each stream reads each `event: version`: `tsx bench/workers/event-streams.ts`,
// driven over IPC by bench/scenarios/events.ts.
//   open { port, cookies, concurrency }  one stream per cookie (raw http, as light a reader as
//                                        can be); resolves once each has read its first `version`
//   arrivals { version, timeoutMs }      once every open stream has read `version` (or at the
//                                        timeout): the time each one read it
//   end                                  ends every stream (`close`, as for every child, also exits)
// A time is that of the chunk holding the event, taken as this process reads it:
// process.hrtime.bigint() in ms, CLOCK_MONOTONIC, the same clock as the bench's.
import http from 'node:http'
import { openFileLimit, sendEvent, serveCommands } from '../shared/child.js'
import { eachLimited } from '../shared/http.js'
import { hrMs } from '../shared/log.js'
import { EVENTS_PATH } from '../shared/server-kinds.js'

export interface OpenArgs { port: number, cookies: string[], concurrency: number }
export interface ArrivalsArgs { version: number, timeoutMs: number }
/** The times (ms) at which the streams read a version, and how many streams were open. */
export interface Arrivals { times: number[], open: number }

const agent = new http.Agent({ keepAlive: false })
const streams = new Set<http.ClientRequest>()
/** Version -> the time each stream read it. */
const arrivals = new Map<number, number[]>()
/** Called after every arrival: a pending `arrivals` command checks whether it is complete. */
const waiters = new Set<() => void>()
let closing = false
/** Streams that ended or failed after they opened, other than by `close`. */
let lost = 0

/** The version of an `event: version` block, else null. */
function versionOf (block: string): number | null {
  if (!/^event: version$/m.test(block)) return null
  const data = /^data: ?(.*)$/m.exec(block)?.[1]
  return data === undefined ? null : (JSON.parse(data) as { version: number }).version
}

function arrived (version: number, at: number): void {
  let list = arrivals.get(version)
  if (list === undefined) arrivals.set(version, list = [])
  list.push(at)
  for (const wake of waiters) wake()
}

function openStream (port: number, cookie: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let opened = false
    const request = http.get({ host: '127.0.0.1', port, path: EVENTS_PATH, headers: { accept: 'text/event-stream', cookie }, agent })
    streams.add(request)
    const gone = (err?: Error): void => {
      if (!streams.delete(request)) return
      if (!opened) reject(err ?? new Error('event stream closed before its first event'))
      else if (!closing) lost++
    }
    request.on('error', gone)
    request.on('close', () => gone())
    request.on('response', (response) => {
      if (response.statusCode !== 200) {
        response.resume()
        gone(new Error(`event stream: ${response.statusCode ?? 0} ${response.headers['content-type'] ?? ''}`))
        return
      }
      response.setEncoding('utf8')
      let buffer = ''
      response.on('data', (chunk: string) => {
        const at = hrMs()
        buffer += chunk
        let end: number
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          const version = versionOf(buffer.slice(0, end))
          buffer = buffer.slice(end + 2)
          if (version === null) continue
          arrived(version, at)
          if (!opened) { opened = true; resolve() }
        }
      })
    })
  })
}

async function open ({ port, cookies, concurrency }: OpenArgs): Promise<number> {
  const limit = openFileLimit()
  if (limit !== null && limit < streams.size + cookies.length + 100) {
    throw new Error(`open-file limit ${limit} is too low for ${streams.size + cookies.length} streams in one process (raise ulimit -n)`)
  }
  await eachLimited(cookies, concurrency, (cookie) => openStream(port, cookie))
  // Only later versions count: the first event of each stream is not a bump's.
  arrivals.clear()
  return streams.size
}

function collectArrivals ({ version, timeoutMs }: ArrivalsArgs): Promise<Arrivals> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      waiters.delete(check)
      const times = arrivals.get(version) ?? []
      arrivals.delete(version)
      resolve({ times, open: streams.size })
    }
    const check = (): void => { if ((arrivals.get(version)?.length ?? 0) >= streams.size) done() }
    const timer = setTimeout(done, timeoutMs)
    waiters.add(check)
    check()
  })
}

function end (): void {
  closing = true
  for (const request of streams) request.destroy()
  streams.clear()
  closing = false
}

serveCommands({
  open: (args) => open(args as OpenArgs),
  arrivals: (args) => collectArrivals(args as ArrivalsArgs),
  lost: () => lost,
  end
}, async () => { end() })

sendEvent({ event: 'ready', pid: process.pid })
