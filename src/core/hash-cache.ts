import type { BigIntStats } from 'node:fs';

/**
 * SHA-256 of files already sent, so a file sent again (another peer, a resume, the next run of a
 * script) is read once instead of read and hashed. An entry is keyed by the file's identity
 * (device, inode) and valid only for one version: size, mtime and ctime to the nanosecond. Any
 * write, truncate, rename over, or chmod changes the ctime, which nothing but the kernel can set,
 * so a changed file never matches a stale entry. If the bytes on disk rot without any of these
 * changing, the receiver's own hash catches it, since the sender no longer rehashes them.
 */
export class HashCache {
  private readonly entries = new Map<string, { version: string; sha256: string }>();

  constructor(private readonly maxEntries: number) {}

  get(stat: BigIntStats): string | undefined {
    const key = keyOf(stat);
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.version !== versionOf(stat)) {
      this.entries.delete(key);
      return undefined;
    }
    // Most recently used goes last; eviction takes the first.
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry.sha256;
  }

  set(stat: BigIntStats, sha256: string): void {
    const key = keyOf(stat);
    this.entries.delete(key);
    this.entries.set(key, { version: versionOf(stat), sha256 });
    while (this.entries.size > this.maxEntries) {
      this.entries.delete(this.entries.keys().next().value as string);
    }
  }

  get size(): number {
    return this.entries.size;
  }
}

/** True if two stats describe the same version of the same file. */
export function sameVersion(a: BigIntStats, b: BigIntStats): boolean {
  return keyOf(a) === keyOf(b) && versionOf(a) === versionOf(b);
}

function keyOf(stat: BigIntStats): string {
  return `${stat.dev}:${stat.ino}`;
}

function versionOf(stat: BigIntStats): string {
  return `${stat.size}:${stat.mtimeNs}:${stat.ctimeNs}`;
}
