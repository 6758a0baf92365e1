// `start` or `stop` the test run's servers (PostgreSQL, then Redis); run by tap's before and after scripts.
import { startRedis, stopRedis } from './redis.js'
import { readServerInfo, startServer, stopServer } from './server.js'

if (process.argv[2] === 'start') {
  let started = Date.now()
  const info = await startServer()
  console.log(`# test database: ${info.kind} (${Date.now() - started} ms)`)
  started = Date.now()
  // tap may not run the after script when this one fails: leave nothing running.
  const redis = await startRedis().catch(async (err: unknown) => {
    await stopServer(info)
    throw err
  })
  console.log(`# test redis: ${redis.kind === 'env' ? 'REDIS_URL' : redis.url} (${Date.now() - started} ms)`)
} else {
  try {
    await stopServer(await readServerInfo())
  } finally {
    await stopRedis()
  }
}
