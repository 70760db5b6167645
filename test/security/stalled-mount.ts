import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * A FUSE file system that never answers, mounted at `point` (which must exist): every look at it
 * blocks, as a network mount whose server went away does, until the process holding /dev/fuse
 * ends after `holdMs` (the kernel then fails the calls ENOTCONN). The holder is our own child;
 * `onCleanup` gets what ends it and unmounts. Needs root (the test machines run as root).
 */
export function stalledMount(point: string, holdMs: number, onCleanup: (cleanup: () => void) => void): ChildProcess {
  const holder = spawn('bash', ['-c', `exec 3<>/dev/fuse; mount -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 stalled "$1" || exit 1; exec sleep ${holdMs / 1000}`, 'bash', point], { stdio: 'ignore' });
  onCleanup(() => {
    if (holder.exitCode === null) holder.kill();
    spawnSync('umount', ['-l', point]);
  });
  return holder;
}

/** Whether something is mounted at `point` now. */
export const mounted = (point: string): boolean => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((line) => line.split(' ')[4] === point);
