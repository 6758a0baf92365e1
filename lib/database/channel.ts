/**
 * The one channel a schema's triggers notify on, as session_refresh_channel()
 * names it in SQL: tenants in other schemas of the same database never wake
 * each other's reads. A channel name has at most 63 bytes, hence the schema limit.
 */
export function channelFor (schema: string): string {
  return schema === 'public' ? 'session_refresh' : `session_refresh.${schema}`
}

export const MAX_SCHEMA_BYTES = 63 - 'session_refresh.'.length
