import { randomBytes } from 'node:crypto'
import { createClient, type RedisClientType } from 'redis'
import { readRedisInfo } from '../setup/redis.js'

interface Teardown { teardown (fn: () => unknown): void }

export interface TestRedis {
  /** The run's Redis server (REDIS_URL, or the one tap's before script started). */
  url: string
  /** A key prefix of this test's own, such as `fsr_test_3f2a9c1b7d4e:`; give it to the store (connect-redis `prefix`). */
  prefix: string
  /** A connected client; at teardown, every key under `prefix` is deleted and the client closed. */
  client: RedisClientType
}

/**
 * A Redis of a test's own: the run's one server, with a key prefix nobody else
 * uses, so test files can run in parallel (the Redis counterpart of createDatabase).
 */
export async function createRedis (t: Teardown): Promise<TestRedis> {
  const { url } = await readRedisInfo()
  const prefix = `fsr_test_${randomBytes(6).toString('hex')}:`
  // No reconnecting: a test against a server that went away should fail, not wait.
  const client: RedisClientType = createClient({ url, socket: { reconnectStrategy: false } })
  // Failed commands reject on their own; an 'error' event with no listener would end the whole test file.
  client.on('error', () => {})
  await client.connect()
  t.teardown(async () => {
    if (!client.isOpen) return
    await deleteKeys(client, prefix)
    await client.close()
  })
  return { url, prefix, client }
}

/** Deletes every key under `prefix` (SCAN, never KEYS: the server may be a shared one). */
export async function deleteKeys (client: RedisClientType, prefix: string): Promise<void> {
  for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) {
    if (keys.length > 0) await client.unlink(keys)
  }
}
