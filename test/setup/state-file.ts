import { tmpdir } from 'node:os'
import { join } from 'node:path'

/**
 * Where a test run's server is written down. One file per tap run: the before
 * script and the test files are all children of the same tap process, so
 * concurrent runs on one machine never share a server. The before script hands
 * its own path down to the child that does the work.
 */
export const STATE_FILE = process.env.FSR_TEST_DB_STATE ?? join(tmpdir(), `fastify-session-refresh-test-db-${process.ppid}.json`)

/** The run's Redis, beside STATE_FILE: a file of its own, so the PostgreSQL state keeps its shape. */
export const REDIS_STATE_FILE = STATE_FILE.replace(/(\.json)?$/, '-redis.json')
