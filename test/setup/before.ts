import { startServer } from './server.js'

const started = Date.now()
const info = await startServer()
console.log(`# test database: ${info.kind} (${Date.now() - started} ms)`)
