import { promises as fs } from 'node:fs';
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
  private points?: string[];
  private readAt = -Infinity;
  private reading?: Promise<void>;

  /** Whether `root`/`components` is at or below a mount point strictly inside `root`, from a table at most MOUNTS_REFRESH_MS old. */
  async crosses(root: string, components: string[]): Promise<boolean> {
    if (performance.now() - this.readAt > MOUNTS_REFRESH_MS) await this.refresh();
    return this.crossesKnown(root, components);
  }

  /** The same from the table as last read, for a synchronous caller; an old table is read again for the next call. */
  crossesKnown(root: string, components: string[]): boolean {
    if (performance.now() - this.readAt > MOUNTS_REFRESH_MS) void this.refresh();
    if (!this.points) return true;
    const below = root.endsWith(path.sep) ? root : root + path.sep;
    const target = path.join(root, ...components);
    return this.points.some((point) => point.startsWith(below) && (target === point || target.startsWith(point + path.sep)));
  }

  /**
   * Whether a mount point is directly inside the folder `root`/`components` (an lstat of that
   * entry would ask the mounted file system), from a table at most MOUNTS_REFRESH_MS old; true
   * when the table cannot be read.
   */
  async holdsMount(root: string, components: string[]): Promise<boolean> {
    if (performance.now() - this.readAt > MOUNTS_REFRESH_MS) await this.refresh();
    if (!this.points) return true;
    const folder = path.join(root, ...components);
    return this.points.some((point) => path.dirname(point) === folder);
  }

  /** Reads the table (one read at a time; an unreadable table counts every path as crossing). */
  refresh(): Promise<void> {
    this.reading ??= fs
      .readFile('/proc/self/mountinfo', 'utf8')
      .then(
        (text) => {
          this.points = parseMountPoints(text);
        },
        () => {
          this.points = undefined;
        },
      )
      .finally(() => {
        this.readAt = performance.now();
        this.reading = undefined;
      });
    return this.reading;
  }
}

/** The mount points of /proc/self/mountinfo (its fifth field, with the kernel's octal escapes undone). @internal exported for its tests */
export function parseMountPoints(mountinfo: string): string[] {
  const points: string[] = [];
  for (const line of mountinfo.split('\n')) {
    const field = line.split(' ')[4];
    if (field) points.push(field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))));
  }
  return points;
}
