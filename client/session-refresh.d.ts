export interface StartOptions {
  /** The stream's path. Default: the script's own path without `/client.js`. */
  url?: string
  /** The session version the page was built with. Default: `<meta name="session-version">`, else the stream's first. */
  version?: number
  /** Show the banner on new data. @default true */
  banner?: boolean
  /** @default 'This page has new data.' */
  bannerText?: string
  /** Reload by itself on new data, after a random delay of up to `reloadSpread`. @default false */
  autoReload?: boolean
  /** @default 30000 */
  reloadSpread?: number
  /** Stop after the page was hidden this long (ms); resume when it is shown again. @default 300000 */
  hiddenTimeout?: number
}

/** What `session-refresh:stale` carries in `detail`; call preventDefault() to show nothing. */
export interface StaleDetail {
  reason: 'version' | 'refresh'
}

/**
 * Connects to the event stream; returns a function that stops it. Dispatches
 * on `window`: `session-refresh:stale` (cancelable, with a StaleDetail) on new
 * data, and `session-refresh:logged-out` when a page that the server never let
 * in is refused the stream for want of a login (it then stops asking until it is shown again).
 */
export function start (options?: StartOptions): () => void
