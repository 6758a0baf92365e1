#!/usr/bin/env node
// The `session-refresh` command. Its code is lib/cli/cli.ts, compiled to dist/.
import { main, processIo } from '../dist/cli/cli.js'

process.exitCode = await main(process.argv.slice(2), processIo())
