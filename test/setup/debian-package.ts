// The Debian packages the harness runs (redis-server, pgbouncer). CI installs them
// up front (.ci/run); on a developer's machine the harness installs a missing one.
import { execFile } from 'node:child_process'
import { access, constants } from 'node:fs/promises'
import { userInfo } from 'node:os'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** The path of `binary`, after installing Debian's `pkg` with apt-get when it is missing. */
export async function debianBinary (binary: string, pkg: string): Promise<string> {
  const found = await which(binary)
  if (found) return found
  if (userInfo().uid !== 0) throw new Error(`${binary} not found: install Debian's ${pkg} (sudo apt-get install ${pkg})`)
  await aptInstall(pkg)
  const installed = await which(binary)
  if (!installed) throw new Error(`apt-get installed ${pkg}, but ${binary} is still not found`)
  return installed
}

async function which (binary: string): Promise<string | null> {
  // Debian puts daemons in /usr/sbin, which is not on every user's PATH.
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/bin'].filter(Boolean)
  for (const dir of dirs) {
    const path = join(dir, binary)
    if (await access(path, constants.X_OK).then(() => true, () => false)) return path
  }
  return null
}

async function aptInstall (pkg: string): Promise<void> {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  // Two test files may ask at once: wait for the other's dpkg lock rather than fail.
  const install = () => run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', '-o', 'DPkg::Lock::Timeout=300', pkg], { env })
  try {
    await install()
  } catch {
    // A fresh machine has no package lists yet.
    await run('apt-get', ['update', '-qq'], { env })
    await install()
  }
}
