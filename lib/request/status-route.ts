import type { FastifyInstance } from 'fastify'

const timestamp = (description: string) => ({ type: ['string', 'null'], format: 'date-time', description })
const count = (description: string) => ({ type: 'integer', minimum: 0, description })

/** `status()` field by field. The serializer writes only these fields, so a new one must be added here too. */
export const statusSchema = {
  type: 'object',
  required: [
    'listening', 'version', 'lastNotificationAt', 'lastHeartbeatAt', 'lastSyncAt', 'lastSyncError', 'reconnects',
    'heartbeatMisses', 'queueUsage', 'userVersions', 'userChanges', 'refreshes', 'refreshFailures', 'logouts', 'refreshesRunning', 'refreshesQueued'
  ],
  properties: {
    listening: { type: 'boolean', description: 'LISTEN is up and the last read, made since it came up, succeeded. False means changes may be missed right now.' },
    version: count('The session version this instance holds in memory.'),
    lastNotificationAt: timestamp('When the last notification of a version change arrived; null if none has yet.'),
    lastHeartbeatAt: timestamp("When a heartbeat (this instance's or another's) last came through the LISTEN connection; null if none has yet."),
    lastSyncAt: timestamp('When the tables were last read: at start, after each hint, every pollInterval.'),
    lastSyncError: {
      type: ['object', 'null'],
      description: 'Why the last read failed, or null when it succeeded.',
      required: ['code', 'message'],
      properties: { code: { type: 'string' }, message: { type: 'string' } }
    },
    reconnects: count('How often the LISTEN connection came back after being lost.'),
    heartbeatMisses: count('Heartbeats that did not come back within heartbeatTimeout; each one forces a reconnect.'),
    queueUsage: { type: 'number', minimum: 0, maximum: 1, description: 'pg_notification_queue_usage() at the last read, from 0 to 1.' },
    userVersions: count('Users changed within one session lifetime that this instance tracks.'),
    userChanges: { type: 'string', enum: ['notify', 'poll'], description: "How per-user changes reach the instances: 'notify' (a NOTIFY each) or 'poll' (read every userPollInterval)." },
    refreshes: count('Calls of refresh that returned session fields.'),
    refreshFailures: count('Calls of refresh that threw or returned something unusable.'),
    logouts: count('Requests sent to log in because their session could not be refreshed.'),
    refreshesRunning: count('Calls of refresh running right now, timed-out ones included until they settle.'),
    refreshesQueued: count('Requests waiting for a free slot to call refresh.')
  }
} as const

/**
 * Serves `status()` as JSON: 200 while listening, 503 while not, so a load
 * balancer or uptime check can take an instance that may miss changes out.
 */
export function addStatusRoute (fastify: FastifyInstance, url: string): void {
  fastify.get(url, {
    // A health check must answer even for a stale or logged-out session, and must not trigger a refresh.
    config: { sessionRefresh: false, loginRoute: true },
    schema: { response: { 200: statusSchema, 503: statusSchema } }
  }, async function statusHandler (request, reply) {
    // A poller sends no cookie, and @fastify/session would store a new empty
    // session for every poll. It saves nothing for a request whose session is null.
    (request as { session: unknown }).session = null
    const status = fastify.sessionRefresh.status()
    // Health checks poll; a cached answer would hide a listener that just went down.
    reply.header('cache-control', 'no-store').code(status.listening ? 200 : 503)
    return status
  })
}
