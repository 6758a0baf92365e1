import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { childEnv } from '../helpers/child-env.js'
import { STATE_FILE } from './state-file.js'

/**
 * Runs server-command.ts in a child process. tap counts the coverage of its
 * before and after scripts whatever coverage-exclude says, and the harness is
 * not the product; the child is outside tap's coverage.
 */
export function runServerCommand (command: 'start' | 'stop'): void {
  execFileSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./server-command.ts', import.meta.url)), command], {
    env: childEnv({ FSR_TEST_DB_STATE: STATE_FILE }),
    stdio: 'inherit'
  })
}
