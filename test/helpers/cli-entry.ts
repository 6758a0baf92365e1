// What bin/session-refresh.js does, but from the TypeScript source, so tests
// run the command as a real process without a build (node --import tsx).
import { main, processIo } from '../../lib/cli/cli.js'

process.exitCode = await main(process.argv.slice(2), processIo())
