import session from '@fastify/session'
import connectPgSimple from 'connect-pg-simple'

interface Teardown { teardown (fn: () => unknown): void }

/** A connect-pg-simple store on `url`, closed at teardown: sessions shared by several apps. */
export function pgSessionStore (t: Teardown, url: string): unknown {
  const PgStore = connectPgSimple(session as unknown as Parameters<typeof connectPgSimple>[0])
  const store = new PgStore({ conString: url, createTableIfMissing: true, pruneSessionInterval: false })
  t.teardown(() => store.close())
  return store
}
