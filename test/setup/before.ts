import { runServerCommand } from './run-server-command.js'

runServerCommand('start')
