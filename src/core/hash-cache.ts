import type { BigIntStats } from 'node:fs';

/**
 * One version of one file: its identity (device, inode) and size, mtime and ctime to the
 * nanosecond. Any write, truncate, rename over, or chmod changes the ctime, which nothing but the
 * kernel can set, so a changed file never passes for the version a block list was made for
 * (block-cache.ts, v2/share-provider.ts).
 */
export function sameVersion(a: BigIntStats, b: BigIntStats): boolean {
  return versionKey(a) === versionKey(b);
}

/** One version of one file as a key (device, inode, size, mtime, ctime): for the caches and the rehash rule. */
export function versionKey(stat: Pick<BigIntStats, 'dev' | 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>): string {
  return `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeNs}:${stat.ctimeNs}`;
}
