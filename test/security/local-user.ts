import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * Another local user on the same machine, for the attack suites: uid/gid 65534 (nobody). Tests
 * that act as it need root to switch users, as CI runs.
 */
export const NOBODY = 65534;

/** Runs a shell script as uid/gid 65534; its exit status must be 0. */
export function asNobody(script: string, env: Record<string, string>): void {
  const run = spawnSync('sh', ['-c', script], { uid: NOBODY, gid: NOBODY, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, encoding: 'utf8' });
  assert.equal(run.status, 0, `as uid ${NOBODY}: ${run.stderr}`);
}

/** Makes `dir` (mode `mode`) reachable by other local users: its parents up to the temporary folder get o+x. */
export async function openToOthers(dir: string, mode: number): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  for (let at = path.dirname(dir); at.startsWith(os.tmpdir() + path.sep); at = path.dirname(at)) {
    const st = await fs.stat(at);
    if ((st.mode & 0o001) === 0) await fs.chmod(at, (st.mode & 0o7777) | 0o011);
  }
  await fs.chmod(dir, mode);
}
