import { randomBytes } from 'node:crypto';
import { constants as fsc, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { blake3 } from './blake3';
import { PeerShareError, toPeerShareError } from './errors';
import { inspectReceivedName } from './names';
import { DEFAULT_LIMITS } from './limits';

/**
 * What came from where (issue 13): for each file or folder taken from a peer (downloaded,
 * received, synced or followed), the peer, its path there, and for each file the version that
 * landed. Update from Peer, Follow, `sync --delete` and the Peers view's "changed" marks read it.
 *
 * A FILE'S VERSION is the sharer's size and modification time, which the landed file is given
 * (downloads and updates set the sharer's time), plus its block-list hash where known. So:
 * - the local copy was EDITED since it landed when its own size or time differ from the record;
 * - the peer's copy CHANGED since when the size or time a listing shows differ from the record;
 * both without reading a byte, as rsync's quick check.
 *
 * It lives outside the workspace (the CLI: under its home; the editor: its storage), one JSON file
 * written whole to a temporary file and renamed (0600), so a crash leaves the old or the new one.
 * NOTHING IN IT IS TRUSTED: a broken file, or an entry of the wrong shape, is an empty record; the
 * record only ever makes Follow and `--delete` do less (a file with no record is never deleted,
 * and one whose record is missing counts as edited).
 */

export interface LandedVersion {
  size: number;
  /** The sharer's modification time, whole milliseconds: also the landed file's. */
  mtimeMs: number;
  /** The sharer's block-list hash (hex), when the landing knew it. */
  fileHash?: string;
  /** True when taking it from the peer created the local file (Follow and `--delete` may remove only those). */
  created?: boolean;
}

export interface Origin {
  peerId: string;
  /** The peer's path of what was taken (a file or a folder). */
  remotePath: string;
  /** Where it landed, absolute. */
  localPath: string;
  type: 'file' | 'dir';
  /** Files by their path below `localPath` ('/'-separated; '' for a file origin itself). */
  files: Map<string, LandedVersion>;
}

/** The local copy against its record: the same version, edited since, or gone. */
export type LocalState = 'same' | 'edited' | 'missing';

/** Origins kept, and files recorded in all; past them the oldest origins are forgotten. */
export const MAX_ORIGINS = 10_000;
export const MAX_ORIGIN_FILES = 500_000;
/** Writes are gathered this long, so a folder of 10,000 files is not 10,000 writes. */
const SAVE_DELAY_MS = 500;
/**
 * And at least this many times as long as the last write took: the record is written whole, so a
 * record of 100,000 files (10 MB, 250 ms of CPU) rewritten every 500 ms while a sharer's files kept
 * changing took half a core (found by follow-attacks). A record lost in a crash is only a shortcut
 * lost: files it did not name are never deleted.
 */
const SAVE_COST_FACTOR = 20;
const FORMAT_VERSION = 1;
/** The longest path a sync writes (a received path's limit). */
const RECEIVED_PATH_BYTES = DEFAULT_LIMITS.maxPathBytes;

/** The CLI's record for one sync destination: `<home>/origins/<hash of its absolute path>.json`, so syncs into different places never write the same file. */
export function originFileFor(home: string, localPath: string): string {
  return path.join(home, 'origins', `${blake3(Buffer.from(path.resolve(localPath), 'utf8')).toString('hex').slice(0, 32)}.json`);
}

export class OriginStore {
  /** In the order last recorded (a Map keeps insertion order): the first is forgotten first. */
  private readonly origins = new Map<string, Origin>();
  private fileCount = 0;
  private saveTimer: NodeJS.Timeout | undefined;
  private saving: Promise<void> = Promise.resolve();
  /** How long the last write took (ms). */
  private lastWriteMs = 0;

  private constructor(private readonly file: string) {}

  /** Opens the record kept in `file` (created on the first save). */
  static async open(file: string): Promise<OriginStore> {
    const store = new OriginStore(file);
    const text = await readOwnRecord(file);
    if (text !== undefined) store.load(text);
    return store;
  }

  /** Starts (or restarts, when the peer or its path differ) the record of what lands at `localPath`. */
  begin(peerId: string, remotePath: string, localPath: string, type: 'file' | 'dir'): Origin {
    const key = path.resolve(localPath);
    const old = this.origins.get(key);
    if (old && old.peerId === peerId && old.remotePath === remotePath && old.type === type) {
      this.origins.delete(key);
      this.origins.set(key, old);
      return old;
    }
    if (old) this.drop(key);
    const origin: Origin = { peerId, remotePath, localPath: key, type, files: new Map() };
    this.origins.set(key, origin);
    this.bound();
    this.changed();
    return origin;
  }

  /** Records the version of `rel` that just landed (keeps `created` once true). */
  setFile(origin: Origin, rel: string, version: LandedVersion): void {
    const old = origin.files.get(rel);
    const created = version.created || old?.created || undefined;
    // A sync reports every file it checked: one found as recorded changes nothing, and costs no write.
    if (old && old.size === version.size && old.mtimeMs === version.mtimeMs && old.fileHash === version.fileHash && old.created === created) return;
    if (!old) this.fileCount++;
    origin.files.set(rel, { size: version.size, mtimeMs: version.mtimeMs, fileHash: version.fileHash, created });
    this.bound();
    this.changed();
  }

  forgetFile(origin: Origin, rel: string): void {
    if (origin.files.delete(rel)) {
      this.fileCount--;
      this.changed();
    }
  }

  /** Forgets what landed at `localPath` (and everything recorded below it). */
  forget(localPath: string): void {
    const key = path.resolve(localPath);
    for (const root of [...this.origins.keys()]) if (root === key || isInside(root, key)) this.drop(root);
    this.changed();
  }

  /** The origin a local file or folder belongs to (the innermost one holding it), and its path below it. */
  lookup(localPath: string): { origin: Origin; rel: string } | undefined {
    const key = path.resolve(localPath);
    let best: Origin | undefined;
    for (const origin of this.origins.values()) {
      if ((origin.localPath === key || isInside(key, origin.localPath)) && (!best || origin.localPath.length > best.localPath.length)) best = origin;
    }
    if (!best) return undefined;
    return { origin: best, rel: path.relative(best.localPath, key).split(path.sep).join('/') };
  }

  /** Where a peer's file or folder was taken to: every origin holding it, with its path below each. */
  byRemote(peerId: string, remotePath: string): { origin: Origin; rel: string }[] {
    const found: { origin: Origin; rel: string }[] = [];
    for (const origin of this.origins.values()) {
      if (origin.peerId !== peerId) continue;
      if (origin.remotePath === remotePath) found.push({ origin, rel: '' });
      else if (origin.type === 'dir' && remotePath.startsWith(`${origin.remotePath.replace(/\/+$/, '')}/`)) found.push({ origin, rel: remotePath.slice(origin.remotePath.replace(/\/+$/, '').length + 1) });
    }
    return found;
  }

  /** Every origin recorded, most recent last. */
  list(): Origin[] {
    return [...this.origins.values()];
  }

  /** The local file of `rel` in `origin`. */
  static localFile(origin: Origin, rel: string): string {
    return rel === '' ? origin.localPath : path.join(origin.localPath, ...rel.split('/'));
  }

  /** Whether the local copy of `rel` is still the version recorded (size and time, as it landed); no record counts as edited. */
  async localState(origin: Origin, rel: string): Promise<LocalState> {
    const st = await fs.lstat(OriginStore.localFile(origin, rel)).catch(() => undefined);
    if (!st) return 'missing';
    const version = origin.files.get(rel);
    return version && st.isFile() && sameAs(version, st.size, st.mtimeMs) ? 'same' : 'edited';
  }

  /** Writes the record now (and waits for any write under way). */
  async flush(): Promise<void> {
    if (this.saveTimer) {
      clearTimeout(this.saveTimer);
      this.saveTimer = undefined;
      this.saving = this.saving.then(() => this.write());
    }
    await this.saving;
  }

  private changed(): void {
    if (this.saveTimer) return;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = undefined;
      this.saving = this.saving.then(() => this.write());
    }, Math.max(SAVE_DELAY_MS, this.lastWriteMs * SAVE_COST_FACTOR));
    this.saveTimer.unref();
  }

  /** Never fails what it records: a record that cannot be written is only a shortcut lost (logged by whoever flushes). */
  private async write(): Promise<void> {
    const started = performance.now();
    try {
      await this.writeNow();
    } finally {
      this.lastWriteMs = performance.now() - started;
    }
  }

  private async writeNow(): Promise<void> {
    const origins = [...this.origins.values()].map((o) => ({
      peerId: o.peerId,
      remotePath: o.remotePath,
      localPath: o.localPath,
      type: o.type,
      files: recordedFiles(o.files),
    }));
    const temporary = `${this.file}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await fs.mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
      const unsafe = await whyNotPrivate(path.dirname(this.file), true);
      if (unsafe) throw new PeerShareError('UNSAFE_HOME', `What came from where is not saved: ${unsafe}.`);
      await fs.writeFile(temporary, JSON.stringify({ version: FORMAT_VERSION, origins }), { mode: 0o600, flag: 'wx' });
      await fs.rename(temporary, this.file);
    } catch (err) {
      await fs.rm(temporary, { force: true }).catch(() => undefined);
      throw toPeerShareError(err, 'IO_ERROR');
    }
  }

  private load(text: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return;
    }
    const origins = (parsed as { version?: unknown; origins?: unknown })?.origins;
    if ((parsed as { version?: unknown }).version !== FORMAT_VERSION || !Array.isArray(origins)) return;
    for (const raw of origins.slice(-MAX_ORIGINS)) {
      const o = raw as Record<string, unknown>;
      if (typeof o?.peerId !== 'string' || typeof o.remotePath !== 'string' || typeof o.localPath !== 'string' || !path.isAbsolute(o.localPath)) continue;
      if ((o.type !== 'file' && o.type !== 'dir') || typeof o.files !== 'object' || o.files === null) continue;
      const origin: Origin = { peerId: o.peerId, remotePath: o.remotePath, localPath: path.resolve(o.localPath), type: o.type, files: new Map() };
      const syncable = new SyncableRels();
      // Indexed, not destructured: this runs once per process, in V8's interpreter, where each
      // iterator costs (a sixth of a sync of 10,000 files went here).
      const files = o.files as Record<string, unknown>;
      for (const rel of Object.keys(files)) {
        const v = files[rel];
        if (!Array.isArray(v) || !isWellFormedRel(rel) || !syncable.has(rel)) continue;
        const size: unknown = v[0];
        const mtimeMs: unknown = v[1];
        const fileHash: unknown = v[2];
        if (!Number.isSafeInteger(size) || (size as number) < 0 || !Number.isSafeInteger(mtimeMs)) continue;
        origin.files.set(rel, { size: size as number, mtimeMs: mtimeMs as number, fileHash: typeof fileHash === 'string' && fileHash.length === 64 && /^[0-9a-f]{64}$/.test(fileHash) ? fileHash : undefined, created: v[3] === 1 || undefined });
      }
      this.origins.set(origin.localPath, origin);
      this.fileCount += origin.files.size;
    }
    this.bound();
  }

  private drop(key: string): void {
    const origin = this.origins.get(key);
    if (!origin) return;
    this.fileCount -= origin.files.size;
    this.origins.delete(key);
  }

  /** Forgets the oldest origins past the bounds (never the newest one: it is being recorded). */
  private bound(): void {
    while (this.origins.size > 1 && (this.origins.size > MAX_ORIGINS || this.fileCount > MAX_ORIGIN_FILES)) {
      this.drop(this.origins.keys().next().value as string);
    }
  }
}

/** An origin's files as the record keeps them: `rel: [size, mtimeMs, fileHash or '', created 1 or 0]`. */
function recordedFiles(files: Map<string, LandedVersion>): Record<string, [number, number, string, number]> {
  // No prototype: a file named __proto__ is a key like any other (round 13).
  const recorded: Record<string, [number, number, string, number]> = Object.create(null);
  for (const [rel, v] of files) recorded[rel] = [v.size, v.mtimeMs, v.fileHash ?? '', v.created ? 1 : 0];
  return recorded;
}

/** A local file's size and time are those of a recorded version (times compared in whole milliseconds, as a listing gives them). */
export function sameAs(version: Pick<LandedVersion, 'size' | 'mtimeMs'>, size: number, mtimeMs: number): boolean {
  return version.size === size && version.mtimeMs === Math.floor(mtimeMs);
}

function isInside(child: string, parent: string): boolean {
  return child.startsWith(parent.endsWith(path.sep) ? parent : parent + path.sep);
}

/** '' or '/'-separated components, none empty, '.' or '..': a record cannot name a file outside its origin. */
function isWellFormedRel(rel: string): boolean {
  return rel === '' || rel.split('/').every((c) => c !== '' && c !== '.' && c !== '..' && !c.includes('\\') && !c.includes('\0'));
}

/**
 * isSyncableRel for the many paths of one record, each folder's path checked once: *why: a record
 * of 10,000 files in 100 folders checked every component of every path, a sixth of a sync that
 * changed 100 of them.* The same answers: a path is syncable when its folder and its name are, and
 * it is within the length a received name may have.
 */
class SyncableRels {
  private readonly folders = new Map<string, boolean>();

  has(rel: string): boolean {
    const slash = rel.lastIndexOf('/');
    if (slash < 0) return isSyncableRel(rel);
    const folder = rel.slice(0, slash);
    let folderSyncable = this.folders.get(folder);
    if (folderSyncable === undefined) {
      folderSyncable = isSyncableRel(folder);
      // Bounded: a record names at most MAX_ORIGIN_FILES files, so at most as many folders.
      this.folders.set(folder, folderSyncable);
    }
    return folderSyncable && isSyncableRel(rel.slice(slash + 1), RECEIVED_PATH_BYTES - Buffer.byteLength(folder, 'utf8') - 1);
  }
}

/** A path a sync could have written: well formed, and safe here (never in .git or .vscode, no name Windows reserves). */
function isSyncableRel(rel: string, maxBytes = RECEIVED_PATH_BYTES): boolean {
  if (rel === '') return true;
  try {
    return maxBytes > 0 && inspectReceivedName(rel, maxBytes).unsafeHere === undefined;
  } catch {
    return false;
  }
}

/**
 * The record's text, only if it is ours alone: a regular file (opened without following a link or
 * waiting on a FIFO) that belongs to us (or root) and that no one else may write, in a folder of the
 * same kind. Whoever else could write it could claim that a sync created any of the user's files,
 * and `--delete` would remove them; such a record is not read (and so deletes nothing).
 */
async function readOwnRecord(file: string): Promise<string | undefined> {
  if (process.platform === 'win32' || typeof process.getuid !== 'function') return fs.readFile(file, 'utf8').catch(() => undefined);
  if (await whyNotPrivate(path.dirname(file), true)) return undefined;
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, fsc.O_RDONLY | (fsc.O_NOFOLLOW ?? 0) | (fsc.O_NONBLOCK ?? 0));
  } catch {
    return undefined;
  }
  try {
    if (await whyNotPrivate(handle, false)) return undefined;
    return await handle.readFile('utf8');
  } catch {
    return undefined;
  } finally {
    await handle.close();
  }
}

/** Why `what` (a folder, looked at without following a link; or an open file) is not ours alone, if it is not. */
async function whyNotPrivate(what: string | fs.FileHandle, folder: boolean): Promise<string | undefined> {
  if (process.platform === 'win32' || typeof process.getuid !== 'function') return undefined;
  const name = typeof what === 'string' ? what : 'the record';
  const st = typeof what === 'string' ? await fs.lstat(what).catch(() => undefined) : await what.stat();
  if (!st) return `${name} is missing`;
  if (folder ? !st.isDirectory() : !st.isFile()) return `${name} is ${st.isSymbolicLink() ? 'a symbolic link' : folder ? 'not a folder' : 'not a regular file'}`;
  if (st.uid !== process.getuid() && st.uid !== 0) return `${name} belongs to another user (uid ${st.uid})`;
  if ((st.mode & 0o022) !== 0) return `others can write to ${name} (mode ${(st.mode & 0o777).toString(8)})`;
  return undefined;
}
