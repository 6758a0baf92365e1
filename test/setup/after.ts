import { readServerInfo, stopServer } from './server.js'

await stopServer(await readServerInfo())
