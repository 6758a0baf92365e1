// A small keep-alive HTTP client for the parts of the bench that need one
// request per session (logins, the refresh storm, the memory run), where
// autocannon's fixed request list does not fit.
import http from 'node:http'

export interface Response { status: number, body: string, cookie: string | null, ms: number }

export class Client {
  readonly #agent: http.Agent
  readonly #port: number

  constructor (port: number, maxSockets: number) {
    this.#port = port
    this.#agent = new http.Agent({ keepAlive: true, maxSockets })
  }

  request (method: 'GET' | 'POST', path: string, cookie: string | null, body?: unknown): Promise<Response> {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const headers: http.OutgoingHttpHeaders = { accept: 'application/json' }
    if (cookie) headers.cookie = cookie
    if (payload !== undefined) {
      headers['content-type'] = 'application/json'
      headers['content-length'] = Buffer.byteLength(payload)
    }
    const started = performance.now()
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: this.#port, method, path, headers, agent: this.#agent }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('end', () => {
          const set = res.headers['set-cookie']?.find((c) => c.startsWith('sessionId='))
          resolve({
            status: res.statusCode ?? 0,
            body: Buffer.concat(chunks).toString('utf8'),
            cookie: set ? set.split(';')[0]! : null,
            ms: performance.now() - started
          })
        })
        res.on('error', reject)
      })
      req.on('error', reject)
      req.end(payload)
    })
  }

  /** Logs user `id` in and returns its session cookie. */
  async login (id: number): Promise<string> {
    const response = await this.request('POST', '/login', null, { id })
    if (response.status !== 200 || !response.cookie) throw new Error(`login ${id} failed: ${response.status} ${response.body}`)
    return response.cookie
  }

  close (): void {
    this.#agent.destroy()
  }
}

/** Runs `task` for every item, `concurrency` at a time, and returns the results in order. */
export async function eachLimited<T, R> (items: readonly T[], concurrency: number, task: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const index = next++
      results[index] = await task(items[index]!, index)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker))
  return results
}
