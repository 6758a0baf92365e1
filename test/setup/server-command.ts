// `start` or `stop` the test run's server; run by tap's before and after scripts.
import { readServerInfo, startServer, stopServer } from './server.js'

if (process.argv[2] === 'start') {
  const started = Date.now()
  const info = await startServer()
  console.log(`# test database: ${info.kind} (${Date.now() - started} ms)`)
} else {
  await stopServer(await readServerInfo())
}
