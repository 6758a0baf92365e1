import { randomBytes, scrypt, timingSafeEqual, type BinaryLike } from 'node:crypto'

const KEY_LENGTH = 64

function derive (password: BinaryLike, salt: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, KEY_LENGTH, (err, key) => { if (err) reject(err); else resolve(key) })
  })
}

/** `scrypt$<salt>$<key>`, base64; a fresh salt per call, so equal passwords hash differently. */
export async function hashPassword (password: string): Promise<string> {
  const salt = randomBytes(16)
  const key = await derive(password, salt)
  return `scrypt$${salt.toString('base64')}$${key.toString('base64')}`
}

export async function verifyPassword (password: string, stored: string): Promise<boolean> {
  const [scheme, salt, key] = stored.split('$')
  if (scheme !== 'scrypt' || salt === undefined || key === undefined) return false
  const expected = Buffer.from(key, 'base64')
  const actual = await derive(password, Buffer.from(salt, 'base64'))
  // Constant-time compare, so the time taken does not hint at how much matched.
  return expected.length === actual.length && timingSafeEqual(expected, actual)
}
