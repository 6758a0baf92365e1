import net from 'node:net'
import type { SocketFactory } from './connection.js'

/** What postgres.js hands a `socket` factory: its parsed connection options. */
interface SocketTarget {
  host: string[]
  port: number[]
  path?: string | false
}

/**
 * A postgres.js `socket` factory that remembers the sockets it made, so the
 * plugin can destroy them. Destroying is the only way to leave a half-open
 * (black-holed) connection, which never reports an error by itself.
 */
export class TrackedSockets {
  readonly #open = new Set<net.Socket>()
  readonly #onClose: () => void
  #next = 0

  constructor (onClose: () => void = () => {}) {
    this.#onClose = onClose
  }

  /** A factory for postgres.js: the app's own (which may return a promise), else a plain TCP or Unix socket. */
  wrap (appFactory: SocketFactory | undefined): (target: SocketTarget) => net.Socket | Promise<net.Socket> {
    if (appFactory === undefined) return (target) => this.#track(this.#connect(target))
    return (target) => Promise.resolve(appFactory(target)).then((socket) => this.#track(socket as net.Socket))
  }

  destroyAll (): void {
    for (const socket of this.#open) socket.destroy()
  }

  // postgres.js writes to the socket at once; net.Socket buffers until it connects,
  // and a failed connect ends in 'close', which makes postgres.js retry as usual.
  #connect (target: SocketTarget): net.Socket {
    const index = this.#next++ % target.host.length
    // postgres.js gives one port per host.
    const host = target.host[index]!
    const socket = target.path ? net.connect(target.path) : net.connect(target.port[index]!, host)
    // postgres.js reads `host` for the TLS server name.
    return Object.assign(socket, { host })
  }

  #track (socket: net.Socket): net.Socket {
    this.#open.add(socket)
    socket.once('close', () => {
      this.#open.delete(socket)
      this.#onClose()
    })
    return socket
  }
}
