/**
 * The environment for a child process that runs TypeScript through tsx.
 * tap records coverage in child processes too, but tsx maps sources differently
 * from tap's own loader, so the child's coverage would land in the report as
 * misplaced lines. The child still runs the real code; it is just not counted.
 */
export function childEnv (extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, _TAPJS_PROCESSINFO_COV_EXCLUDE_: '/./', ...extra }
}
