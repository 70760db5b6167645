import type { BigIntStats } from 'node:fs';

/**
 * A margin over one tick of the kernel's clock for mtime and ctime (a few ms; 10 ms at HZ=100):
 * two writes within one tick leave the same times, so a read is known to be of one version by its
 * times only if the last change was at least this long before the read started.
 */
export const TIMESTAMP_TICK_MS = 50;

/**
 * How long until the last change of `version` is TIMESTAMP_TICK_MS old; 0 when it is. By the
 * ctime, which every write sets and no one can set to another time (an mtime may be in the
 * future); never more than one margin (a clock set back).
 */
export function msUntilSettled(version: Pick<BigIntStats, 'ctimeNs'>, nowMs = Date.now()): number {
  return Math.min(TIMESTAMP_TICK_MS, Math.max(0, Number(version.ctimeNs / 1_000_000n) + TIMESTAMP_TICK_MS - nowMs));
}

/**
 * When `version` last changed, in ns: the later of its mtime and ctime (the racy rule of the
 * caches, RACY_TIMESTAMP_MS, is counted from it).
 */
export function lastChangeNs(version: Pick<BigIntStats, 'mtimeNs' | 'ctimeNs'>): bigint {
  return version.mtimeNs > version.ctimeNs ? version.mtimeNs : version.ctimeNs;
}

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
