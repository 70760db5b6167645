import * as fs from 'node:fs';

/**
 * What a local process does to an update's local copy in the attack suites (rounds 15 and 17).
 * Plain node:fs only: the suites that spy on node:fs load src/ after their spies, and this module
 * loads nothing of src/.
 */

/** Truncates `target` to `size` bytes in place. */
export function truncateTo(target: string, size: number): void {
  const fd = fs.openSync(target, 'r+');
  try {
    fs.ftruncateSync(fd, size);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `bytes` into `target` at `at`, in place. */
export function rewrite(target: string, at: number, bytes: Buffer): void {
  const fd = fs.openSync(target, 'r+');
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, at);
  } finally {
    fs.closeSync(fd);
  }
}

/** Puts what `make` makes at a new name beside `target`, then renames it over `target`. */
export function swapIn(target: string, make: (tmp: string) => void): void {
  const tmp = `${target}.swap`;
  make(tmp);
  fs.renameSync(tmp, target);
}

/** Writes `bytes` into `target` at `at`, in place, then sets its times back to what they were (its ctime still moves). */
export function rewriteKeepingTimes(target: string, at: number, bytes: Buffer): void {
  const before = fs.statSync(target, { bigint: true });
  rewrite(target, at, bytes);
  fs.utimesSync(target, Number(before.atimeNs) / 1e9, Number(before.mtimeNs) / 1e9);
}

/** Appends `bytes` to `target`. */
export function append(target: string, bytes: Buffer): void {
  fs.appendFileSync(target, bytes);
}
