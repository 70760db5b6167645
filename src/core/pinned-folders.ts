import { constants as fsc, existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { PeerShareError, toPeerShareError } from './errors';
import { DEFAULT_LIMITS } from './limits';

// Linux names an open descriptor's folder as /proc/self/fd/N: a path that cannot be redirected.
const PROC_FD = process.platform === 'linux' && existsSync('/proc/self/fd') ? '/proc/self/fd' : undefined;
const FOLDER_FLAGS = fsc.O_RDONLY | (fsc.O_DIRECTORY ?? 0) | (fsc.O_NOFOLLOW ?? 0);
/** Folders held open at once; the least recently used beyond this are closed (and reopened if needed). */

/**
 * Runs `work` with the folders of `root` opened afresh (a folder removed and made again since is
 * not written through its old handle); with `expect`, only if `root` is still that folder.
 */
export async function withPinnedFolders<T>(root: string, work: (folders: PinnedFolders) => Promise<T>, expect?: FolderIdentity): Promise<T> {
  if (!expect) await fs.mkdir(root, { recursive: true });
  const folders = await PinnedFolders.open(root, { rootMayBeLink: true, expect });
  try {
    return await work(folders);
  } finally {
    await folders.close();
  }
}

/**
 * The folders a download writes into, each opened once without following a symlink and then held
 * open. Every later file operation goes through the open folder (`/proc/self/fd/N/<name>` on
 * Linux), so a folder swapped for a symlink after it was checked, or any folder above it, cannot
 * send a write outside the download: the write lands in the folder that was checked, wherever it
 * has moved. Where there is no /proc, each operation re-checks every folder on the way for
 * symlinks instead: a window of microseconds rather than none.
 *
 * A path from `pathIn` is used at once and not kept across another call: it may name a descriptor
 * that is closed later. (A download handles one file at a time, so this holds.)
 */
export class PinnedFolders {
  /** Open folders by their components below the root joined with '/'; '' is the root. */
  private readonly handles = new Map<string, fs.FileHandle>();
  /** Folders a `use` is working in, by key, with how many: never closed meanwhile. */
  private readonly inUse = new Map<string, number>();

  private constructor(readonly root: string) {}

  /**
   * Opens `root`, which must be a real folder: a symlink in its place is refused with BAD_NAME,
   * unless `rootMayBeLink` (a folder the user chose, which may well be a link they made).
   */
  static async open(root: string, options: { rootMayBeLink?: boolean; expect?: FolderIdentity } = {}): Promise<PinnedFolders> {
    const folders = new PinnedFolders(root);
    if (PROC_FD) {
      const handle = await openFolder(root, options.rootMayBeLink);
      folders.handles.set('', handle);
      if (options.expect && !sameFolder(await handle.stat(), options.expect)) {
        await folders.close();
        throw replaced(root);
      }
    } else {
      if (!options.rootMayBeLink) await refuseNonFolder(root);
      if (options.expect && !sameFolder(await fs.stat(root), options.expect)) throw replaced(root);
    }
    return folders;
  }

  /** The folder `root` is now (through a link, if it is one): what `open`'s `expect` compares with, to work on the same folder later. */
  static async identify(root: string): Promise<FolderIdentity> {
    const st = await fs.stat(root).catch((err) => {
      throw toPeerShareError(err, 'IO_ERROR');
    });
    return { dev: st.dev, ino: st.ino };
  }

  /** A path for `name` inside the folder `components` below the root (which must exist). */
  async pathIn(components: string[], name: string): Promise<string> {
    return path.join(await this.folderPath(components), name);
  }

  /**
   * Runs `work` with a path for `name` inside the folder `components`, which stays open (and so the
   * path valid) until `work` ends, whatever other calls open meanwhile: for work on several files
   * at once, where pathIn's path could name a descriptor another call closed and reused.
   */
  async use<T>(components: string[], name: string, work: (file: string) => Promise<T>): Promise<T> {
    const release = this.hold(components);
    try {
      return await work(path.join(await this.folderPath(components), name));
    } finally {
      release();
    }
  }

  /** Keeps the folder `components` and every folder above it open until the release (while a folder is being opened, a path through its parent's descriptor is in use too). */
  private hold(components: string[]): () => void {
    const keys = components.map((_, i) => components.slice(0, i + 1).join('/'));
    for (const key of keys) this.inUse.set(key, (this.inUse.get(key) ?? 0) + 1);
    return () => {
      for (const key of keys) {
        const left = this.inUse.get(key)! - 1;
        if (left === 0) this.inUse.delete(key);
        else this.inUse.set(key, left);
      }
    };
  }

  /**
   * Creates whichever folders of `components` are missing, checking each one; returns, for each,
   * whether this call created it.
   */
  async makeFolders(components: string[]): Promise<boolean[]> {
    const release = this.hold(components);
    try {
      return await this.makeEach(components);
    } finally {
      release();
    }
  }

  private async makeEach(components: string[]): Promise<boolean[]> {
    const created: boolean[] = [];
    for (let i = 0; i < components.length; i++) {
      const parent = await this.folderPath(components.slice(0, i));
      const made = await fs.mkdir(path.join(parent, components[i])).then(
        () => true,
        (err: NodeJS.ErrnoException) => {
          if (err.code !== 'EEXIST') throw toPeerShareError(err, 'IO_ERROR');
          return false;
        },
      );
      await this.folderPath(components.slice(0, i + 1));
      created.push(made);
    }
    return created;
  }

  async close(): Promise<void> {
    const handles = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
  }

  /** The path to operate through for a folder below the root, opening and checking it if needed. */
  private async folderPath(components: string[]): Promise<string> {
    if (!PROC_FD) {
      let current = this.root;
      for (const part of components) {
        current = path.join(current, part);
        await refuseNonFolder(current);
      }
      return current;
    }
    const key = components.join('/');
    let handle = this.handles.get(key);
    if (handle) {
      // Most recently used goes last; closing takes the first.
      this.handles.delete(key);
      this.handles.set(key, handle);
    } else {
      const parent = await this.folderPath(components.slice(0, -1));
      const opened = await openFolder(path.join(parent, components[components.length - 1]));
      // Another call (work on several files at once) opened it meanwhile: one handle per folder.
      const raced = this.handles.get(key);
      if (raced) void opened.close().catch(() => undefined);
      handle = raced ?? opened;
      this.handles.set(key, handle);
      this.closeLeastRecent(key);
    }
    return `${PROC_FD}/${handle.fd}`;
  }

  private closeLeastRecent(keep: string): void {
    for (const [key, handle] of this.handles) {
      if (this.handles.size <= DEFAULT_LIMITS.maxOpenFolders) return;
      // The root and the folders above the one in use stay open.
      if (key === '' || keep === key || keep.startsWith(`${key}/`) || this.inUse.has(key)) continue;
      this.handles.delete(key);
      void handle.close().catch(() => undefined);
    }
  }
}

/** A folder as the file system knows it, whatever its path. */
export interface FolderIdentity {
  dev: number;
  ino: number;
}

function sameFolder(st: { dev: number; ino: number; isDirectory(): boolean }, expect: FolderIdentity): boolean {
  return st.isDirectory() && st.dev === expect.dev && st.ino === expect.ino;
}

function replaced(root: string): PeerShareError {
  return new PeerShareError('IO_ERROR', `${root} was replaced (moved away, or a link put in its place) since PeerShare began writing there; nothing more was written there.`);
}

async function openFolder(folder: string, mayBeLink = false): Promise<fs.FileHandle> {
  try {
    return await fs.open(folder, mayBeLink ? FOLDER_FLAGS & ~(fsc.O_NOFOLLOW ?? 0) : FOLDER_FLAGS);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'ENOTDIR' || code === 'EMLINK') {
      throw new PeerShareError('BAD_NAME', `${displayPath(folder)} is a symbolic link or not a folder; nothing was written through it.`);
    }
    throw toPeerShareError(err, 'IO_ERROR');
  }
}

async function refuseNonFolder(folder: string): Promise<void> {
  const st = await fs.lstat(folder).catch((err) => {
    throw toPeerShareError(err, 'IO_ERROR');
  });
  if (!st.isDirectory()) {
    throw new PeerShareError('BAD_NAME', `${folder} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a folder'}; nothing was written through it.`);
  }
}

/** Error messages name the folder as a person knows it, not by its descriptor. */
function displayPath(p: string): string {
  return PROC_FD && p.startsWith(`${PROC_FD}/`) ? `A folder (${path.basename(p)})` : p;
}
