// Reads a server-sent event stream over real HTTP, as a browser's EventSource does.

/** An event as EventSource sees it; `retry` when the server set the reconnection delay with it. */
export interface ServerEvent { event: string, data: string, retry?: number }

export interface EventReader {
  status: number
  contentType: string | null
  setCookie: string | null
  /** Every event so far, and every comment line (as event ':'). */
  readonly events: ServerEvent[]
  /** Resolves when the server ended the stream. */
  ended: Promise<void>
  close (): void
}

export async function openEvents (url: string, cookie: string | undefined): Promise<EventReader> {
  const abort = new AbortController()
  const response = await fetch(url, {
    headers: { accept: 'text/event-stream', ...(cookie === undefined ? {} : { cookie }) },
    signal: abort.signal
  })
  const events: ServerEvent[] = []
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader()
  const ended = (async () => {
    let buffer = ''
    try {
      for (;;) {
        const { value, done } = await reader.read()
        if (done) return
        buffer += value
        let end: number
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          if (block.startsWith(':')) { events.push({ event: ':', data: block.slice(1).trim() }); continue }
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message'
          const data = [...block.matchAll(/^data: ?(.*)$/gm)].map((m) => m[1]).join('\n')
          const retry = /^retry: (\d+)$/m.exec(block)?.[1]
          events.push(retry === undefined ? { event, data } : { event, data, retry: Number(retry) })
        }
      }
    } catch {
      // aborted by close()
    }
  })()
  return {
    status: response.status,
    contentType: response.headers.get('content-type'),
    setCookie: response.headers.get('set-cookie'),
    events,
    ended,
    close: () => abort.abort()
  }
}
