import type { BigIntStats } from 'node:fs';

/**
 * One version of one file: its identity (device, inode) and size, mtime and ctime to the
 * nanosecond. Any write, truncate, rename over, or chmod changes the ctime, which nothing but the
 * kernel can set, so a changed file never passes for the version a block list was made for
 * (block-cache.ts, v2/share-provider.ts).
 */
export function sameVersion(a: BigIntStats, b: BigIntStats): boolean {
  return keyOf(a) === keyOf(b) && versionOf(a) === versionOf(b);
}

function keyOf(stat: BigIntStats): string {
  return `${stat.dev}:${stat.ino}`;
}

function versionOf(stat: BigIntStats): string {
  return `${stat.size}:${stat.mtimeNs}:${stat.ctimeNs}`;
}
