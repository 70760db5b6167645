import { readFileSync } from 'node:fs';
import * as path from 'node:path';

/** How old the mount table may be: a mount made while sharing is seen within this. */
const MOUNTS_REFRESH_MS = 2000;

/**
 * The mount points of this machine (Linux: /proc/self/mountinfo), to tell whether a path inside
 * a shared root lies on another mount than the root. *Why: small files of a local root are read
 * with synchronous calls (Share.readSmallFile, readWalkedFileSync), and a network or FUSE file
 * system mounted below the root could hold the event loop (the extension host) for as long as its
 * server does not answer.* Until the table has been read once, every path counts as crossing.
 */
export class MountTable {
  private mounts?: Mount[];
  private readAt = -Infinity;
  /** Each root's own mount (the topmost one at or above it) when first looked at: another one since means a mount over or above the root. */
  private readonly rootMounts = new Map<string, string>();

  /**
   * Whether `root`/`components` is at or below a mount point strictly inside `root`, or the root
   * itself is under another mount than when first looked at (one made over it or above it since),
   * from a table at most MOUNTS_REFRESH_MS old (work about to go synchronous on the answer reads
   * it again first, `refresh`: round 13 mounted a stalled file system within the 2 s).
   */
  crosses(root: string, components: string[]): boolean {
    if (performance.now() - this.readAt > MOUNTS_REFRESH_MS) this.refresh();
    return this.crossesKnown(root, components);
  }

  /** The same from the table as last read, without reading it again (the caller just did). */
  crossesKnown(root: string, components: string[]): boolean {
    if (!this.mounts) return true;
    if (this.rootMountChanged(root)) return true;
    const below = root.endsWith(path.sep) ? root : root + path.sep;
    const target = path.join(root, ...components);
    return this.mounts.some(({ point }) => point.startsWith(below) && (target === point || target.startsWith(point + path.sep)));
  }

  /**
   * Whether a mount point is directly inside the folder `root`/`components` (an lstat of that
   * entry would ask the mounted file system), from a table at most MOUNTS_REFRESH_MS old; true
   * when the table cannot be read.
   */
  holdsMount(root: string, components: string[]): boolean {
    if (performance.now() - this.readAt > MOUNTS_REFRESH_MS) this.refresh();
    if (!this.mounts) return true;
    const folder = path.join(root, ...components);
    return this.mounts.some(({ point }) => path.dirname(point) === folder);
  }

  /** Whether the topmost mount at or above `root` is another one than when `root` was first looked at (then remembered). */
  private rootMountChanged(root: string): boolean {
    let own: Mount | undefined;
    for (const mount of this.mounts!) {
      const { point } = mount;
      const holds = point === root || root.startsWith(point.endsWith(path.sep) ? point : point + path.sep);
      // Later lines are mounted on top of earlier ones at the same point.
      if (holds && (!own || point.length >= own.point.length)) own = mount;
    }
    const key = own ? `${own.id} ${own.point}` : '';
    const first = this.rootMounts.get(root);
    if (first === undefined) {
      this.rootMounts.set(root, key);
      return false;
    }
    return first !== key;
  }

  /**
   * Reads the table (an unreadable table counts every path as crossing). Synchronous: /proc builds
   * it from the kernel's own list without asking any mounted file system, so a stalled one cannot
   * hold the read. *Why: a listing reads it first (round 13); read through the thread pool (open,
   * stat, read, close) it cost 0.4 ms a listing against 0.05, and a walk of 100 folders lists 100.*
   */
  refresh(): void {
    try {
      this.mounts = parseMounts(readFileSync('/proc/self/mountinfo', 'utf8'));
    } catch {
      this.mounts = undefined;
    }
    this.readAt = performance.now();
  }
}

interface Mount {
  /** The mount's id (mountinfo's first field): a mount made again at the same point has another. */
  id: string;
  point: string;
}

/** The mount points of /proc/self/mountinfo (its fifth field, with the kernel's octal escapes undone). @internal exported for its tests */
export function parseMountPoints(mountinfo: string): string[] {
  return parseMounts(mountinfo).map((m) => m.point);
}

function parseMounts(mountinfo: string): Mount[] {
  const mounts: Mount[] = [];
  for (const line of mountinfo.split('\n')) {
    const fields = line.split(' ');
    const field = fields[4];
    if (field) mounts.push({ id: fields[0], point: field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))) });
  }
  return mounts;
}
