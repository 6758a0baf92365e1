import net from 'node:net'

/**
 * A TCP proxy on 127.0.0.1 in front of PostgreSQL, to make network faults:
 * - blackHole(): stop forwarding on every open connection, closing nothing,
 *   as a dropped link or a dead NAT entry does; new connections still work.
 * - swallow: accept connections and never forward a byte.
 */
export class FaultyProxy {
  readonly #server: net.Server
  readonly #links = new Set<{ client: net.Socket, upstream: net.Socket, holed: boolean }>()
  swallow = false
  port = 0

  constructor (target: { host: string, port: number }) {
    this.#server = net.createServer((client) => {
      if (this.swallow) {
        client.on('error', () => {})
        this.#links.add({ client, upstream: client, holed: true })
        return
      }
      const upstream = net.connect(target.port, target.host)
      const link = { client, upstream, holed: false }
      this.#links.add(link)
      client.on('data', (chunk) => { if (!link.holed) upstream.write(chunk) })
      upstream.on('data', (chunk) => { if (!link.holed) client.write(chunk) })
      const close = (): void => {
        if (link.holed) return // a black hole never tells anyone
        client.destroy()
        upstream.destroy()
        this.#links.delete(link)
      }
      client.on('close', close).on('error', close)
      upstream.on('close', close).on('error', close)
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

  /** Connections open right now, black holes included. */
  get connections (): number {
    return this.#links.size
  }

  blackHole (): void {
    for (const link of this.#links) link.holed = true
  }

  async close (): Promise<void> {
    for (const { client, upstream } of this.#links) {
      client.destroy()
      upstream.destroy()
    }
    await new Promise((resolve) => this.#server.close(resolve))
  }
}
