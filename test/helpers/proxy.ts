import net from 'node:net'
import type { Sql } from 'postgres'

// The type of a ReadyForQuery message: the server has answered everything sent before it.
const READY_FOR_QUERY = 0x5a

/** One client connection through the proxy, and its connection to the server. */
export class Link {
  readonly client: net.Socket
  readonly upstream: net.Socket
  /** Forwards nothing either way and closes nothing, as a dead link does. */
  holed = false
  /** The client's side closed (the client dropped the connection). */
  clientClosed = false
  /** Bytes the server sent on this link so far: how much a query's answer weighs. */
  bytesFromServer = 0
  // The server's bytes are forwarded whole message by whole message (every
  // message it sends has a type byte and a length), so a hold starts between two.
  #fromServer = Buffer.alloc(0)
  #toClient: Buffer[] | null = null
  #holdFrom: number | null = null
  #toServer: Buffer[] | null = null

  constructor (client: net.Socket, upstream: net.Socket) {
    this.client = client
    this.upstream = upstream
    client.once('close', () => { this.clientClosed = true })
  }

  /**
   * Keeps what the server sends from now on, instead of forwarding it: a query
   * answered but not yet received. `from`: forward until the server sends a
   * message of that type, and keep it and all after it. '2' (BindComplete)
   * holds a query's run but not its description, which postgres.js asks for
   * first the first time a connection runs a query.
   */
  holdResponses (from?: string): void {
    if (this.#toClient !== null || this.#holdFrom !== null) return
    if (from === undefined) this.#toClient = []
    else this.#holdFrom = from.charCodeAt(0)
  }

  /** Keeps what the client sends from now on, instead of forwarding it: a query sent but not yet received by the server. */
  holdRequests (): void {
    this.#toServer ??= []
  }

  /** Forwards what was kept, in order, and forwards as usual from now on. */
  release (): void {
    const toClient = this.#toClient
    const toServer = this.#toServer
    this.#toClient = this.#toServer = this.#holdFrom = null
    if (toServer !== null && toServer.length > 0 && !this.upstream.destroyed) this.upstream.write(Buffer.concat(toServer))
    if (toClient !== null && toClient.length > 0 && !this.client.destroyed) this.client.write(Buffer.concat(toClient))
  }

  /** What the server sent since the hold began includes a ReadyForQuery: the held query has its whole answer. */
  get answered (): boolean {
    return this.#toClient?.some((message) => message[0] === READY_FOR_QUERY) ?? false
  }

  /** The server process behind this link (pg_stat_activity.client_port is the proxy's side of it). */
  async backendPid (sql: Sql): Promise<number | undefined> {
    const [row] = await sql<Array<{ pid: number }>>`
      select pid from pg_stat_activity where client_port = ${this.upstream.localPort!} and client_addr = '127.0.0.1'`
    return row?.pid
  }

  toServer (chunk: Buffer): void {
    if (this.holed) return
    if (this.#toServer !== null) this.#toServer.push(chunk)
    else this.upstream.write(chunk)
  }

  fromServer (chunk: Buffer): void {
    if (this.holed) return
    this.bytesFromServer += chunk.length
    this.#fromServer = Buffer.concat([this.#fromServer, chunk])
    while (this.#fromServer.length >= 5) {
      const size = 1 + this.#fromServer.readInt32BE(1)
      if (this.#fromServer.length < size) break
      const message = this.#fromServer.subarray(0, size)
      this.#fromServer = this.#fromServer.subarray(size)
      if (this.#holdFrom !== null && message[0] === this.#holdFrom) {
        this.#holdFrom = null
        this.#toClient = []
      }
      if (this.#toClient !== null) this.#toClient.push(message)
      else this.client.write(message)
    }
  }
}

/**
 * A TCP proxy on 127.0.0.1 in front of PostgreSQL, to make network faults:
 * - blackHole(): stop forwarding on every open connection (or one), closing
 *   nothing, as a dropped link or a dead NAT entry does; new connections still work.
 * - swallow: accept connections and never forward a byte.
 * - Link.holdResponses() / holdRequests(): keep one direction of one connection
 *   until release(), to hold a query in flight at a chosen point.
 */
export class FaultyProxy {
  readonly #server: net.Server
  readonly #links: Link[] = []
  readonly #watches: Array<{ text: string, hold: 'request' | 'response', from: string | undefined, found: (link: Link) => void }> = []
  swallow = false
  /** Milliseconds every chunk from the server waits before it goes on (in order): a slow link. */
  latency = 0
  port = 0

  #target: { host: string, port: number }

  constructor (target: { host: string, port: number }) {
    this.#target = target
    this.#server = net.createServer((client) => {
      client.on('error', () => {})
      if (this.swallow) {
        // Read and drop what the client sends: only then does its close reach us.
        client.resume()
        const link = new Link(client, client)
        link.holed = true
        this.#links.push(link)
        return
      }
      const upstream = net.connect(this.#target.port, this.#target.host)
      upstream.on('error', () => {})
      const link = new Link(client, upstream)
      this.#links.push(link)
      client.on('data', (chunk) => {
        const watch = this.#watches.find(({ text }) => chunk.includes(text))
        if (watch !== undefined && !link.holed) {
          this.#watches.splice(this.#watches.indexOf(watch), 1)
          if (watch.hold === 'request') link.holdRequests()
          else link.holdResponses(watch.from)
          watch.found(link)
        }
        link.toServer(chunk)
      })
      upstream.on('data', (chunk) => {
        if (this.latency > 0) setTimeout(() => link.fromServer(chunk), this.latency)
        else link.fromServer(chunk)
      })
      const close = (): void => {
        if (link.holed) return // a black hole never tells anyone
        client.destroy()
        upstream.destroy()
      }
      client.on('close', close)
      upstream.on('close', close)
    })
  }

  static async start (url: string): Promise<FaultyProxy> {
    const target = new URL(url)
    const proxy = new FaultyProxy({ host: target.hostname, port: Number(target.port || 5432) })
    await new Promise<void>((resolve) => proxy.#server.listen(0, '127.0.0.1', resolve))
    proxy.port = (proxy.#server.address() as net.AddressInfo).port
    return proxy
  }

  /** `url` with its host and port replaced by the proxy's. */
  url (url: string): string {
    const through = new URL(url)
    through.hostname = '127.0.0.1'
    through.port = String(this.port)
    return through.toString()
  }

  /** Every connection made through the proxy so far, in the order they were opened. */
  get links (): readonly Link[] {
    return this.#links
  }

  /** Connections whose client side is still open, black holes included. */
  get connections (): number {
    return this.#links.filter((link) => !link.clientClosed).length
  }

  /**
   * Resolves with the first link on which the client sends a chunk containing
   * `text` (the SQL of a query's Parse message, say: sent the first time a
   * connection runs that query). `hold: 'request'` keeps that chunk and all the
   * client sends after it from the server; `'response'` forwards it and keeps
   * the server's answers from the client (from a message of type `from`, see
   * Link.holdResponses). Either way until the link's release().
   */
  holdWhenClientSends (text: string, hold: 'request' | 'response', from?: string): Promise<Link> {
    return new Promise((resolve) => this.#watches.push({ text, hold, from, found: resolve }))
  }

  /** A failover: every open link drops, and new ones reach the server on `port`. */
  moveTo (port: number): void {
    this.#target = { ...this.#target, port }
    for (const { client, upstream } of this.#links) {
      client.destroy()
      upstream.destroy()
    }
  }

  /** Stops forwarding on every open link, or on the one given. */
  blackHole (link?: Link): void {
    for (const each of link === undefined ? this.#links : [link]) each.holed = true
  }

  async close (): Promise<void> {
    for (const { client, upstream } of this.#links) {
      client.destroy()
      upstream.destroy()
    }
    await new Promise((resolve) => this.#server.close(resolve))
  }
}
