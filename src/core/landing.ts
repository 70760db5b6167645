import * as crypto from 'node:crypto';
import { closeSync, constants as fsc, fdatasync, fstatSync, linkSync, lstatSync, openSync, promises as fs, renameSync, unlinkSync } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { PeerShareError, toPeerShareError } from './errors';
import { FLUSH_BEHIND_BYTES } from './limits';
import { MAX_COMPONENT_BYTES } from './names';

/**
 * How a received file takes its name (moved here unchanged from download.ts at the switch to
 * protocol v2, for download.ts and v2/partial-file.ts alike): bytes go to a hidden temporary file
 * beside the target, created exclusively, resumed only if it is ours, and take the final name only
 * once verified, never replacing a file without consent.
 */

export type ConflictChoice = 'overwrite' | 'skip' | 'keepBoth' | 'fail';

/** What to do when a target file exists; a function is asked only then. */
export interface ConflictPolicy {
  onConflict?: ConflictChoice | ((target: string) => ConflictChoice | Promise<ConflictChoice>);
}

const PARTIAL_SUFFIX = '.peershare-part';

/** A temporary file this download owns, held open: written through its descriptor only. */
export interface TemporaryFile {
  fd: number;
  dev: number;
  ino: number;
  /** Bytes already in it (a resumed partial download), 0 for a new one. */
  size: number;
}

const fdatasyncFd = promisify(fdatasync);

/**
 * Flushes a temporary file to disk behind its writes: once FLUSH_BEHIND_BYTES more have been
 * written, one fdatasync runs in the background (never two at once), so the fsync before the file
 * takes its name waits for the last stretch, not the whole file. *Why: that fsync of a 1 GiB file
 * took 0.4 s on its own on the benchmark machine; flushed behind, 0.03 s, and the writes went no
 * slower.* A background flush that fails is kept, and `throwIfFailed` throws it before the file
 * may take its name: *why: Linux reports a writeback error to one fsync of the file, so the final
 * fsync after a failed background one could succeed over data that never reached the disk (found
 * by round 17; it was ignored before).* The caller keeps the descriptor open until `settled()`
 * resolves (which never throws: the cleanup after a failure awaits it too).
 */
export class FlushBehind {
  private unflushed = 0;
  private flushing: Promise<void> | undefined;
  private failure: unknown;

  constructor(
    private readonly fd: number,
    private readonly everyBytes = FLUSH_BEHIND_BYTES,
  ) {}

  /** `bytes` more were written; returns the flush this started, if it started one. */
  wrote(bytes: number): Promise<void> | undefined {
    this.unflushed += bytes;
    if (this.flushing || this.unflushed < this.everyBytes) return undefined;
    this.unflushed = 0;
    const flushing = fdatasyncFd(this.fd).then(
      () => undefined,
      (err: unknown) => {
        this.failure ??= err;
      },
    );
    this.flushing = flushing;
    void flushing.then(() => {
      if (this.flushing === flushing) this.flushing = undefined;
    });
    return flushing;
  }

  /** Resolves once no background flush is running on the descriptor. */
  async settled(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  /** Throws (coded, IO_ERROR by default) what a background flush failed with, if one did. */
  throwIfFailed(): void {
    if (this.failure !== undefined) throw toPeerShareError(this.failure, 'IO_ERROR');
  }
}

const O_NOFOLLOW = fsc.O_NOFOLLOW ?? 0;
// Exclusive: fails if anything (a file, a symlink, even a dangling one) has the name already.
const CREATE_FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | O_NOFOLLOW;
// A FIFO planted at the name must not block the open.
const RESUME_FLAGS = fsc.O_RDWR | O_NOFOLLOW | (fsc.O_NONBLOCK ?? 0);

/**
 * Creates the temporary file of a download exclusively, never following a link. Anything already
 * at the name (a symlink, a hard link to a file elsewhere, a stale file) is removed first: the
 * name, never what it points to.
 */
export function openTemporary(partial: string): TemporaryFile {
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(partial, CREATE_FLAGS, 0o644);
      const st = fstatSync(fd);
      return { fd, dev: st.dev, ino: st.ino, size: 0 };
    } catch (err) {
      // Someone keeps putting things at the name: give up rather than loop.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) throw toPeerShareError(err, 'IO_ERROR');
    }
    removeName(partial);
  }
}

/**
 * Opens a partial file left by an earlier run, to resume it, only if it is ours: a regular file
 * (a link at the name is not followed), with one link (not a hard link to a file elsewhere),
 * owned by us, and no longer than `maxSize` (the name already carries the file's version).
 */
export function openOwnPartial(partial: string, maxSize: number): TemporaryFile | undefined {
  let fd: number;
  try {
    fd = openSync(partial, RESUME_FLAGS);
  } catch {
    return undefined; // none, a symlink (ELOOP), or nothing we may open: start over
  }
  const st = fstatSync(fd);
  const uid = process.getuid?.();
  if (st.isFile() && st.nlink === 1 && (uid === undefined || st.uid === uid) && st.size <= maxSize) {
    return { fd, dev: st.dev, ino: st.ino, size: st.size };
  }
  closeSync(fd);
  return undefined;
}

/** Removes a name (unlink never follows a link); a name already gone is fine. */
export function removeName(name: string): void {
  try {
    unlinkSync(name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw toPeerShareError(err, 'IO_ERROR');
  }
}

/**
 * After a commit: the final name must be the file we wrote. If the temporary name was swapped
 * (for a symlink, say) between our last write and the rename, what landed is not ours: it is
 * removed again, so the final name never stays a link.
 */
export function checkLanded(target: string, file: TemporaryFile): void {
  const st = lstatSync(target, { throwIfNoEntry: false });
  if (st && st.isFile() && st.dev === file.dev && st.ino === file.ino) return;
  if (st) removeName(target);
  throw new PeerShareError('IO_ERROR', `The temporary file for ${path.basename(target)} was replaced before it was saved; nothing was kept.`);
}

/** Moves a verified temporary file to its final name; without `overwrite`, never replaces anything. */
export async function commit(partial: string, target: string, overwrite: boolean, file: TemporaryFile): Promise<void> {
  if (overwrite) {
    await fs.rename(partial, target);
    checkLanded(target, file);
    return;
  }
  try {
    // link() fails if the target exists: a no-clobber rename with no window for a race.
    await fs.link(partial, target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new PeerShareError('DEST_EXISTS', `${path.basename(target)} already exists; it was left alone.`);
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EXDEV' && code !== 'ENOSYS') throw toPeerShareError(err, 'IO_ERROR');
    // File systems without hard links: check, then rename.
    if (await exists(target)) throw new PeerShareError('DEST_EXISTS', `${path.basename(target)} already exists; it was left alone.`);
    await fs.rename(partial, target);
    checkLanded(target, file);
    return;
  }
  checkLanded(target, file);
  removeName(partial);
}

export async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(
    () => true,
    () => false,
  );
}

// A temporary name is "." + stem + "." + 16-hex tag + PARTIAL_SUFFIX, and must fit where the final name fits.
const TAG_CHARS = 16;
const MAX_STEM_BYTES = MAX_COMPONENT_BYTES - 2 - TAG_CHARS - PARTIAL_SUFFIX.length;
const SHORTENED_DIGEST_CHARS = 8;

/**
 * The part of a temporary name taken from the final name: the name itself when it fits, else its
 * first bytes (whole characters only) and a digest of the whole, so two long names that begin
 * alike still have stems of their own.
 */
function temporaryStem(base: string): string {
  if (Buffer.byteLength(base, 'utf8') <= MAX_STEM_BYTES) return base;
  const digest = sha256Hex(base).slice(0, SHORTENED_DIGEST_CHARS);
  return `${truncateUtf8(base, MAX_STEM_BYTES - 1 - SHORTENED_DIGEST_CHARS)}~${digest}`;
}

/** The longest prefix of `text` of at most `maxBytes` UTF-8 bytes that does not split a character. */
function truncateUtf8(text: string, maxBytes: number): string {
  let bytes = 0;
  let end = 0;
  for (const char of text) {
    bytes += Buffer.byteLength(char, 'utf8');
    if (bytes > maxBytes) break;
    end += char.length;
  }
  return text.slice(0, end);
}

/**
 * SHA-256 of a short string, hex, in one call where Node has `crypto.hash` (20.12 and later):
 * *why: without a Hash object to make, a temporary name's tag (one per file of a folder download)
 * costs a fraction as much in a fresh process: 10,000 tags, 11 ms against 40 here.*
 */
const oneShotHash = (crypto as { hash?: (algorithm: string, data: string) => string }).hash;
function sha256Hex(text: string): string {
  return oneShotHash ? oneShotHash('sha256', text) : crypto.createHash('sha256').update(text).digest('hex');
}

export function partialPathFor(target: string, peerId: string, remotePath: string, size: number, mtimeMs: number): string {
  // The tag ties a partial file to one version of one remote file, so a resume never splices two versions.
  const tag = sha256Hex(`${peerId}\n${remotePath}\n${size}\n${mtimeMs}`).slice(0, TAG_CHARS);
  return path.join(path.dirname(target), `.${temporaryStem(path.basename(target))}.${tag}${PARTIAL_SUFFIX}`);
}

/**
 * The partial file of a file known by its hash (protocol v2: tied to the content, so the same file
 * from any peer resumes it, and two versions never share one). v2/partial-file.ts names its
 * partial files so.
 */
export function partialPathForHash(target: string, fileHashHex: string, size: number): string {
  return partialPathFor(target, '', `blake3:${fileHashHex}`, size, 0);
}

/** Partial files of older versions of the same target can never be resumed: remove them. */
export async function removeStalePartials(target: string): Promise<void> {
  const prefix = `.${temporaryStem(path.basename(target))}.`;
  const names = await fs.readdir(path.dirname(target)).catch(() => [] as string[]);
  for (const name of names) {
    if (name.startsWith(prefix) && name.endsWith(PARTIAL_SUFFIX) && /^[0-9a-f]{16}$/.test(name.slice(prefix.length, -PARTIAL_SUFFIX.length))) {
      removeName(path.join(path.dirname(target), name));
    }
  }
}

export async function chooseConflict(options: ConflictPolicy, target: string, fallback: ConflictChoice): Promise<ConflictChoice> {
  const policy = options.onConflict ?? fallback;
  return typeof policy === 'function' ? policy(target) : policy;
}

/** "name (2).ext", the first that does not exist; a long name gives up bytes of its stem so the copy's name fits too. */
export async function keepBothName(target: string): Promise<string> {
  const ext = path.extname(target);
  const stem = path.basename(target, ext);
  for (let n = 2; n < 10_000; n++) {
    const suffix = ` (${n})${ext}`;
    const candidate = path.join(path.dirname(target), `${truncateUtf8(stem, MAX_COMPONENT_BYTES - Buffer.byteLength(suffix, 'utf8'))}${suffix}`);
    if (!(await exists(candidate))) return candidate;
  }
  throw new PeerShareError('DEST_EXISTS');
}


/** A time a file system can hold (Date's range); anything else from a peer is replaced by now. */
export function isPlausibleTime(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && Math.abs(value) <= 8.64e15;
}

/**
 * A sharer's whole-millisecond time as utimes takes it, for every file that lands: the middle of
 * that millisecond, since seconds are a double and `t / 1000` may land a few nanoseconds before
 * `t`, which reads back as the millisecond before (the file would then look edited against its
 * origin record, and changed to the next sync's size-and-time check).
 */
export function timesOf(mtimeMs: number): [number, number] {
  const seconds = (mtimeMs + 0.5) / 1000;
  return [seconds, seconds];
}
