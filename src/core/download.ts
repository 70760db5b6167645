import { createHash, type Hash } from 'node:crypto';
import { closeSync, constants as fsc, createWriteStream, fstatSync, futimesSync, linkSync, lstatSync, openSync, promises as fs, read, renameSync, unlinkSync, writeSync, type WriteStream } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { PeerShareError, isErrorCode, toPeerShareError, type ErrorCode } from './errors';
import type { PeerConnection, PeerEvent, ReportProgress } from './client';
import { expectMessage, recordBytes } from './client';
import { MAX_COMPONENT_BYTES, collisionKey, inspectReceivedName } from './names';
import { sanitizeForDisplay, shownType, type Entry } from './protocol';
import { SMALL_FILE_BYTES } from './limits';
import { PinnedFolders } from './pinned-folders';

/**
 * Downloads land atomically: bytes go to a hidden temporary file beside the target, are checked
 * against the SHA-256 the peer sends, and only then take the final name. A partial file stays
 * behind only to be resumed, under a name that says what it is.
 */

export type ConflictChoice = 'overwrite' | 'skip' | 'keepBoth' | 'fail';

export interface DownloadProgress {
  /** File bytes received so far in this download (resumed prefixes not included). */
  bytes: number;
  /** Total file bytes, when known (single files). */
  totalBytes?: number;
  /** The file being received, relative to the download's target. */
  file: string;
  /** Bytes already on disk from an interrupted run, which `bytes` does not include (single files). */
  resumedBytes?: number;
  /** True while the part already on disk is being checked, before new bytes arrive. */
  checking?: boolean;
}

export interface DownloadOptions {
  /** What to do when a target file exists. Default: 'fail' for a file, 'skip' inside a folder. */
  onConflict?: ConflictChoice | ((target: string) => ConflictChoice | Promise<ConflictChoice>);
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** Keep a partial file after cancel or a dropped connection, to resume later (default true). */
  keepPartial?: boolean;
}

export interface DownloadResult {
  /** Where it landed. */
  target: string;
  type: 'file' | 'dir';
  files: number;
  /** File bytes received in this run. */
  bytes: number;
  /** Bytes that were already on disk from an earlier, interrupted run. */
  resumedBytes: number;
  /** Files that exist locally and were left alone. */
  skippedExisting: string[];
  /**
   * Files the peer could not send, with its reason: at most maxSkippedReports of them, each
   * escaped for display and bounded (the peer chose every character).
   */
  skippedByPeer: SkippedByPeer[];
  /** How many files the peer could not send, all of them (skippedByPeer keeps only the first). */
  skippedByPeerCount: number;
  /**
   * Files and folders of a folder download that were not written because their names are not safe
   * here (`.git`, `.vscode`, device or short names, invisible characters, a name another file of
   * the download already takes on a case-insensitive file system): at most maxSkippedReports,
   * escaped for display. Everything inside a left-out folder is left out with it, unreported.
   */
  leftOut: LeftOut[];
  /** How many were left out, all of them (leftOut keeps only the first). */
  leftOutCount: number;
}

export interface LeftOut {
  path: string;
  why: string;
}

export interface SkippedByPeer {
  path: string;
  /** A known code; anything else the peer sent becomes PROTOCOL_ERROR. */
  code: ErrorCode;
  message: string;
}

const PARTIAL_SUFFIX = '.peershare-part';
const WRITE_BUFFER_BYTES = 1024 * 1024;
/** Characters of a peer's reason kept in a skipped-file report, before escaping. */
const MAX_SKIPPED_MESSAGE_CHARS = 300;
const readAt = promisify(read);

/** Where a download of `remotePath` into `dest` lands: inside `dest` if it is a folder. */
export async function resolveTarget(remotePath: string, dest: string): Promise<string> {
  const base = remotePath.replace(/\/+$/, '').split('/').pop() ?? '';
  const st = await fs.stat(dest).catch(() => undefined);
  if (!st?.isDirectory()) return path.resolve(dest); // a name the user chose
  const { unsafeHere } = inspectReceivedName(base);
  if (unsafeHere) {
    throw new PeerShareError('BAD_NAME', `The name ${sanitizeForDisplay(base).slice(0, 80)} is not safe to save here (${unsafeHere.why}). Choose another name to save it under.`);
  }
  return path.join(dest, base);
}

/**
 * Creates `components` below `base` (a folder the user chose, which may itself be a link) without
 * following a link on the way: BAD_NAME if one is there. For a download whose folders a peer's
 * path names, so it cannot be led out of the workspace through a symlink in it.
 */
export async function makeFoldersWithin(base: string, components: string[]): Promise<void> {
  const folders = await PinnedFolders.open(base, { rootMayBeLink: true });
  try {
    await folders.makeFolders(components);
  } finally {
    await folders.close();
  }
}

/** Downloads a file or a folder; see downloadFile and downloadFolder. */
export async function download(conn: PeerConnection, remotePath: string, dest: string, options: DownloadOptions = {}): Promise<DownloadResult> {
  const entry = await conn.stat(remotePath);
  const target = await resolveTarget(remotePath, dest);
  return entry.type === 'dir'
    ? downloadFolder(conn, remotePath, target, options)
    : downloadFile(conn, remotePath, target, options, entry);
}

/** Receives one file into a temporary file (see openTemporary, openOwnPartial), hashing as it goes; commits only if the hash matches. */
class FileReceiver {
  private stream?: WriteStream;
  private hash: Hash = createHash('sha256');
  private received = 0;
  private closed = false;
  /** A write error the disk reported while no one was waiting for it. */
  private failure?: PeerShareError;
  readonly offset: number;

  constructor(
    readonly target: string,
    readonly partial: string,
    private readonly file: TemporaryFile,
    readonly size: number,
    readonly mtimeMs: number,
  ) {
    this.offset = file.size;
  }

  async open(): Promise<void> {
    // The prefix on disk is hashed too, read through the descriptor we checked: the peer's SHA-256 covers the whole file.
    const buffer = Buffer.allocUnsafe(Math.min(this.offset, 1024 * 1024));
    for (let position = 0; position < this.offset; ) {
      const { bytesRead } = await readAt(this.file.fd, buffer, 0, Math.min(buffer.length, this.offset - position), position);
      if (bytesRead === 0) throw new PeerShareError('IO_ERROR', 'A partial download shrank while it was being resumed.');
      this.hash.update(buffer.subarray(0, bytesRead));
      position += bytesRead;
    }
    // Written through the descriptor, never by name: nothing planted at the name is followed.
    // From here the stream owns the descriptor (destroying it closes it); see closeFile.
    this.stream = createWriteStream(this.partial, { fd: this.file.fd, start: this.offset, autoClose: false, highWaterMark: WRITE_BUFFER_BYTES });
    this.stream.on('error', (err) => (this.failure ??= toPeerShareError(err, 'IO_ERROR')));
  }

  /** Returns a promise only when the disk wants us to wait. */
  write(chunk: Buffer): Promise<void> | undefined {
    if (this.failure) throw this.failure;
    this.received += chunk.length;
    if (this.offset + this.received > this.size) {
      throw new PeerShareError('SIZE_MISMATCH', 'The peer sent more bytes than the file has.');
    }
    this.hash.update(chunk);
    if (this.stream!.write(chunk)) return undefined;
    return new Promise((resolve, reject) => {
      const stream = this.stream!;
      const onDrain = (): void => {
        stream.off('error', onError);
        resolve();
      };
      const onError = (err: Error): void => {
        stream.off('drain', onDrain);
        reject(toPeerShareError(err, 'IO_ERROR'));
      };
      stream.once('drain', onDrain);
      stream.once('error', onError);
    });
  }

  get bytesReceived(): number {
    return this.received;
  }

  /** Verifies and moves the file into place; on any mismatch the temporary file is removed. */
  async finish(sha256: unknown, overwrite: boolean): Promise<void> {
    try {
      await this.endStream();
      if (this.offset + this.received !== this.size) {
        throw new PeerShareError('SIZE_MISMATCH', `The peer announced ${this.size} bytes but sent ${this.offset + this.received}.`);
      }
      if (typeof sha256 !== 'string' || this.hash.digest('hex') !== sha256.toLowerCase()) throw new PeerShareError('HASH_MISMATCH');
      const seconds = this.mtimeMs / 1000;
      futimesSync(this.file.fd, seconds, seconds);
      await this.closeFile();
      await commit(this.partial, this.target, overwrite, this.file);
    } catch (err) {
      await this.closeFile();
      removeName(this.partial);
      throw toPeerShareError(err, 'IO_ERROR');
    }
  }

  async abort(keepPartial: boolean): Promise<void> {
    // What was received is written out before the file is kept for a resume.
    if (keepPartial) await this.endStream().catch(() => undefined);
    await this.closeFile();
    // An empty file is nothing to resume.
    if (!keepPartial || this.offset + this.received === 0) removeName(this.partial);
  }

  private endStream(): Promise<void> {
    const stream = this.stream;
    if (!stream) return Promise.resolve();
    return new Promise((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      stream.once('error', (err) => reject(toPeerShareError(err, 'IO_ERROR')));
      stream.end(() => resolve());
    });
  }

  /** Closes the descriptor exactly once: through the stream once there is one, so it is never closed twice. */
  private async closeFile(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const stream = this.stream;
    if (!stream) {
      closeSync(this.file.fd);
      return;
    }
    if (stream.closed) return;
    await new Promise<void>((resolve) => {
      stream.once('close', () => resolve());
      stream.destroy();
    });
  }
}

/** A temporary file this download owns, held open: written through its descriptor only. */
export interface TemporaryFile {
  fd: number;
  dev: number;
  ino: number;
  /** Bytes already in it (a resumed partial download), 0 for a new one. */
  size: number;
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
function checkLanded(target: string, file: TemporaryFile): void {
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
  const digest = createHash('sha256').update(base).digest('hex').slice(0, SHORTENED_DIGEST_CHARS);
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

export function partialPathFor(target: string, peerId: string, remotePath: string, size: number, mtimeMs: number): string {
  // The tag ties a partial file to one version of one remote file, so a resume never splices two versions.
  const tag = createHash('sha256').update(`${peerId}\n${remotePath}\n${size}\n${mtimeMs}`).digest('hex').slice(0, TAG_CHARS);
  return path.join(path.dirname(target), `.${temporaryStem(path.basename(target))}.${tag}${PARTIAL_SUFFIX}`);
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

export async function chooseConflict(options: DownloadOptions, target: string, fallback: ConflictChoice): Promise<ConflictChoice> {
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

/** Downloads one file to `target`, resuming a partial download of the same file version. */
export async function downloadFile(
  conn: PeerConnection,
  remotePath: string,
  target: string,
  options: DownloadOptions = {},
  knownEntry?: Entry,
): Promise<DownloadResult> {
  let entry = knownEntry ?? (await conn.stat(remotePath));
  if (entry.type !== 'file') throw new PeerShareError('NOT_A_FILE');
  let overwrite = false;
  if (await exists(target)) {
    const choice = await chooseConflict(options, target, 'fail');
    if (choice === 'fail') throw new PeerShareError('DEST_EXISTS', `${target} already exists; it was left alone.`);
    if (choice === 'skip') return emptyResult(target, 'file', [target]);
    if (choice === 'keepBoth') target = await keepBothName(target);
    overwrite = choice === 'overwrite';
  }
  for (let attempt = 0; ; attempt++) {
    try {
      return await receiveFile(conn, remotePath, target, entry, overwrite, options);
    } catch (err) {
      // The file changed between our stat and the read: start over once with the new version.
      if (attempt === 0 && err instanceof PeerShareError && err.code === 'FILE_CHANGED') {
        entry = await conn.stat(remotePath);
        continue;
      }
      throw err;
    }
  }
}

async function receiveFile(
  conn: PeerConnection,
  remotePath: string,
  target: string,
  entry: Entry,
  overwrite: boolean,
  options: DownloadOptions,
): Promise<DownloadResult> {
  await fs.mkdir(path.dirname(target), { recursive: true });
  // Every operation goes through the folder as opened now, whatever its path names later.
  const folder = await PinnedFolders.open(path.dirname(target), { rootMayBeLink: true });
  try {
    return await receiveInto(conn, remotePath, target, await folder.pathIn([], path.basename(target)), entry, overwrite, options);
  } finally {
    await folder.close();
  }
}

async function receiveInto(
  conn: PeerConnection,
  remotePath: string,
  target: string,
  fsTarget: string,
  entry: Entry,
  overwrite: boolean,
  options: DownloadOptions,
): Promise<DownloadResult> {
  const partial = partialPathFor(fsTarget, conn.peerId, remotePath, entry.size, entry.mtimeMs);
  let file = openOwnPartial(partial, entry.size);
  if (!file) {
    // Also removes whatever is at our own temporary name if it was not ours to resume.
    await removeStalePartials(fsTarget);
    file = openTemporary(partial);
  }
  const offset = file.size;
  const receiver = new FileReceiver(fsTarget, partial, file, entry.size, entry.mtimeMs);
  let started = false;
  const onAbort = (): void => conn.close(new PeerShareError('CANCELLED'));
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (options.signal?.aborted) throw new PeerShareError('CANCELLED');
    await conn.exchange({ type: 'read', path: remotePath, offset, expect: { size: entry.size, mtimeMs: entry.mtimeMs } }, (event, done, progress) => {
      if (!started) {
        const m = expectMessage(event);
        if (m.type !== 'file') throw new PeerShareError('PROTOCOL_ERROR', `Expected a file, got ${shownType(m.type)}.`);
        // The scp lesson: the answer must be about exactly what we asked for.
        if (m.path !== remotePath) throw new PeerShareError('BAD_NAME', 'The peer answered with a different file than the one asked for.');
        if (m.size !== entry.size || m.offset !== offset) throw new PeerShareError('FILE_CHANGED');
        started = true;
        progress(recordBytes(remotePath));
        if (offset > 0) options.onProgress?.({ bytes: 0, totalBytes: entry.size, file: path.basename(target), resumedBytes: offset, checking: true });
        return receiver.open();
      }
      if (event.kind === 'data') {
        const pending = receiver.write(event.chunk);
        options.onProgress?.({ bytes: receiver.bytesReceived, totalBytes: entry.size, file: path.basename(target), resumedBytes: offset });
        return pending;
      }
      const m = event.message;
      if (m.type !== 'fileEnd') throw new PeerShareError('PROTOCOL_ERROR', `Expected the end of the file, got ${shownType(m.type)}.`);
      return receiver.finish(m.sha256, overwrite).then(done);
    });
  } catch (err) {
    const coded = toPeerShareError(err, 'IO_ERROR');
    // Data we cannot trust is never kept; an interrupted but honest transfer is kept for resume.
    const resumable = coded.code === 'CONNECTION_CLOSED' || coded.code === 'TIMEOUT' || coded.code === 'CANCELLED';
    await receiver.abort(resumable && options.keepPartial !== false);
    throw coded;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
  return {
    target,
    type: 'file',
    files: 1,
    bytes: receiver.bytesReceived,
    resumedBytes: offset,
    skippedExisting: [],
    skippedByPeer: [],
    skippedByPeerCount: 0,
    leftOut: [],
    leftOutCount: 0,
  };
}

function emptyResult(target: string, type: 'file' | 'dir', skippedExisting: string[]): DownloadResult {
  return { target, type, files: 0, bytes: 0, resumedBytes: 0, skippedExisting, skippedByPeer: [], skippedByPeerCount: 0, leftOut: [], leftOutCount: 0 };
}

/**
 * Downloads a folder as one stream. Every name is checked before anything is created, every
 * file is verified before it takes its name, and existing files follow `onConflict` (default: skip).
 * Small files are verified in memory and written behind the stream, several at a time, so a
 * folder of many small files is not paced by one file's open, write, close and rename.
 *
 * Whatever the peer sends, what the download keeps is bounded: at most maxTreeFiles folders,
 * files and skipped records in all, nothing deeper than maxTreeDepth folders, at most
 * maxSkippedReports reports kept, and a fixed-size digest per name remembered.
 */
export async function downloadFolder(
  conn: PeerConnection,
  remotePath: string,
  target: string,
  options: DownloadOptions = {},
): Promise<DownloadResult> {
  const limits = conn.limits;
  const result = emptyResult(target, 'dir', []);
  const createdTarget = (await fs.mkdir(target, { recursive: true })) !== undefined;
  const folders = await PinnedFolders.open(target);
  // Digests of collision keys: two names one file system would merge.
  const seen = new Set<string>();
  // Digests of folders made or found, each with whether this download created it. Folders this
  // download created were empty: nothing in them can be clobbered, so a file there is committed
  // with one rename instead of the no-clobber link and unlink.
  const folderState = new Map<string, boolean>([[nameDigest(''), createdTarget]]);
  // Digests of paths reported skipped without a header: each may be reported once.
  const reported = new Set<string>();
  // Digests of folders left out (see leftOut): nothing below them is written or reported.
  const leftOutFolders = new Set<string>();
  let items = 0;
  let current: ReceivingFile | undefined;
  let bytes = 0;
  const writer = new SmallFileWriter(options);
  const onAbort = (): void => conn.close(new PeerShareError('CANCELLED'));
  options.signal?.addEventListener('abort', onAbort, { once: true });

  /** Counts one folder, file or skipped record against maxTreeFiles. */
  const count = (): void => {
    if (++items > limits.maxTreeFiles) {
      throw new PeerShareError('TOO_LARGE', `The folder has more than ${limits.maxTreeFiles} files and folders; the download stopped there.`);
    }
  };
  /** Refuses folders nested deeper than maxTreeDepth, before anything is created (finding 13). */
  const checkDepth = (folderComponents: number): void => {
    if (folderComponents > limits.maxTreeDepth) {
      throw new PeerShareError('TOO_LARGE', `The folder is nested deeper than ${limits.maxTreeDepth} levels; the download stopped there.`);
    }
  };
  /** Records an entry whose name may not be written here; counted always, kept up to the limit. */
  const leaveOut = (rel: string, why: string): void => {
    result.leftOutCount++;
    if (result.leftOut.length < limits.maxSkippedReports) result.leftOut.push({ path: sanitizeForDisplay(rel), why });
  };
  /**
   * Checks a received path. A malformed one stops the download (only a hostile peer sends it); a
   * well-formed one that may not be written here, or that lies in a folder left out, is left out:
   * returns undefined, having recorded it.
   */
  const admit = (rel: unknown, isDir: boolean): string[] | undefined => {
    const { components, unsafeHere } = inspectReceivedName(rel, limits.maxPathBytes);
    const folderCount = isDir ? components.length : components.length - 1;
    if (leftOutFolders.size > 0) {
      for (let i = 1; i <= folderCount; i++) if (leftOutFolders.has(nameDigest(components.slice(0, i).join('/')))) return undefined;
    }
    if (!unsafeHere) return components;
    const prefix = components.slice(0, unsafeHere.at + 1);
    if (unsafeHere.at < folderCount) leftOutFolders.add(nameDigest(prefix.join('/')));
    leaveOut(prefix.join('/'), unsafeHere.why);
    return undefined;
  };

  /** Makes the folders of `components` that are new to this download; true if any was. */
  const makeDirs = async (components: string[]): Promise<boolean> => {
    if (folderState.has(nameDigest(components.join('/')))) return false;
    for (let i = 0; i < components.length; i++) {
      if (!folderState.has(nameDigest(components.slice(0, i + 1).join('/')))) count();
    }
    const created = await folders.makeFolders(components);
    created.forEach((made, i) => {
      const key = nameDigest(components.slice(0, i + 1).join('/'));
      if (!folderState.has(key) || made) folderState.set(key, made);
    });
    return true;
  };

  const handle = async (event: PeerEvent, done: () => void, progress: ReportProgress): Promise<void> => {
    if (event.kind === 'data') {
      if (!current) throw new PeerShareError('PROTOCOL_ERROR', 'File data outside a file.');
      bytes += event.chunk.length;
      options.onProgress?.({ bytes, file: current.rel });
      if (current.kind === 'small') return current.buffer.append(event.chunk);
      if (current.receiver) await current.receiver.write(event.chunk);
      return;
    }
    const m = event.message;
    switch (m.type) {
      case 'dir': {
        if (current) throw new PeerShareError('PROTOCOL_ERROR', 'A folder inside a file.');
        const components = admit(m.path, true);
        if (!components) {
          count();
          progress(recordBytes(m.path as string));
          return;
        }
        checkDepth(components.length);
        // A folder announced again moves nothing forward.
        if (await makeDirs(components)) progress(recordBytes(m.path as string));
        return;
      }
      case 'file': {
        if (current) throw new PeerShareError('PROTOCOL_ERROR', 'A file inside a file.');
        const size = m.size;
        const mtimeMs = isPlausibleTime(m.mtimeMs) ? m.mtimeMs : Date.now();
        if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || m.offset !== 0) {
          throw new PeerShareError('PROTOCOL_ERROR', 'A file header has an invalid size.');
        }
        const components = admit(m.path, false);
        const rel = m.path as string;
        count();
        progress(recordBytes(rel));
        if (!components) {
          // Its bytes are read and dropped: nothing of it is written.
          current = { kind: 'large', rel };
          return;
        }
        checkDepth(components.length - 1);
        const key = nameDigest(collisionKey(rel));
        if (seen.has(key)) {
          // The same name twice, or two names one file system would merge: the first one stays.
          leaveOut(rel, 'another file of this download has the same name on a case-insensitive file system');
          current = { kind: 'large', rel };
          return;
        }
        seen.add(key);
        await makeDirs(components.slice(0, -1));
        // `shownAs` is the file as a person knows it; `fileTarget` the path written through.
        const shownAs = path.join(target, ...components);
        const fileTarget = await folders.pathIn(components.slice(0, -1), components[components.length - 1]);
        const partial = partialPathFor(fileTarget, conn.peerId, `${remotePath}/${rel}`, size, mtimeMs);
        if (size <= SMALL_FILE_BYTES) {
          const fresh = folderState.get(nameDigest(components.slice(0, -1).join('/'))) === true;
          current = { kind: 'small', rel, target: fileTarget, shownAs, partial, mtimeMs, fresh, buffer: new WholeFile(size) };
          return;
        }
        let finalTarget = fileTarget;
        let overwrite = false;
        if (await exists(fileTarget)) {
          const choice = await writer.decide(shownAs);
          if (choice === 'skip') {
            result.skippedExisting.push(shownAs);
            current = { kind: 'large', rel };
            return;
          }
          if (choice === 'keepBoth') finalTarget = await keepBothName(fileTarget);
          overwrite = choice === 'overwrite';
        }
        // A file in a folder is never resumed: whatever is at its temporary name goes.
        const receiver = new FileReceiver(finalTarget, partial, openTemporary(partial), size, mtimeMs);
        current = { kind: 'large', rel, receiver, overwrite };
        await receiver.open();
        return;
      }
      case 'fileEnd': {
        if (!current) throw new PeerShareError('PROTOCOL_ERROR', 'The end of a file that never started.');
        const finished = current;
        current = undefined;
        progress(recordBytes(''));
        if (finished.kind === 'small') {
          // Verified before anything touches the disk.
          const data = finished.buffer.verified(m.sha256);
          await writer.add({ target: finished.target, shownAs: finished.shownAs, partial: finished.partial, data, mtimeMs: finished.mtimeMs, fresh: finished.fresh });
        } else if (finished.receiver) {
          await finished.receiver.finish(m.sha256, finished.overwrite ?? false);
          result.files++;
        }
        return;
      }
      case 'skipped': {
        const rel = typeof m.path === 'string' ? m.path : '';
        if (current) {
          if (current.rel !== rel) throw new PeerShareError('PROTOCOL_ERROR', 'Skipped a file other than the current one.');
          if (current.kind === 'large') await current.receiver?.abort(false);
          current = undefined;
        } else {
          inspectReceivedName(rel, limits.maxPathBytes);
          // The same report again is no progress: a peer repeating it would hold the download open.
          const key = nameDigest(collisionKey(rel));
          if (reported.has(key)) throw new PeerShareError('PROTOCOL_ERROR', 'The peer reported the same file twice.');
          reported.add(key);
          count();
        }
        progress(recordBytes(rel));
        result.skippedByPeerCount++;
        // Counted, not kept, past the limit: endless reports cannot grow memory.
        if (result.skippedByPeer.length < limits.maxSkippedReports) result.skippedByPeer.push(skippedReport(rel, m.code, m.message));
        return;
      }
      case 'end':
        if (current) throw new PeerShareError('PROTOCOL_ERROR', 'The folder ended inside a file.');
        done();
        return;
      default:
        throw new PeerShareError('PROTOCOL_ERROR', `Unexpected message "${shownType(m.type)}".`);
    }
  };

  try {
    if (options.signal?.aborted) throw new PeerShareError('CANCELLED');
    await conn.exchange({ type: 'tree', path: remotePath }, handle);
  } catch (err) {
    if (current?.kind === 'large') await current.receiver?.abort(false);
    // A folder this download made and nothing landed in goes too (rmdir leaves a non-empty one).
    if (createdTarget) await fs.rmdir(target).catch(() => undefined);
    throw toPeerShareError(err, 'IO_ERROR');
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    await folders.close();
    result.files += writer.written;
    result.skippedExisting.push(...writer.skipped);
  }
  result.bytes = bytes;
  return result;
}

/** A time a file system can hold (Date's range); anything else from a peer is replaced by now. */
export function isPlausibleTime(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && Math.abs(value) <= 8.64e15;
}

/**
 * What a folder remembers per name: at most a few dozen characters, so the memory a download
 * keeps does not grow with the length of the names a peer sends. A short name is kept as it is
 * (hashing every name cost a 10,000-file folder some 7 % of its time here); a longer one as a
 * digest, marked apart so the two never meet. (A digest collision needs 2^64 names; its only
 * effect would be a false "sent twice".)
 */
const KEPT_NAME_CHARS = 48;
function nameDigest(name: string): string {
  if (name.length <= KEPT_NAME_CHARS) return `=${name}`;
  return `#${createHash('sha256').update(name).digest().toString('latin1', 0, 16)}`;
}

/** A skipped-file record as the peer sent it, made safe to show: a known code, escaped and bounded text. */
function skippedReport(rel: string, code: unknown, message: unknown): SkippedByPeer {
  return {
    // The path passed inspectReceivedName, which lets through names with invisible characters: escape.
    path: sanitizeForDisplay(rel),
    code: isErrorCode(code) ? code : 'PROTOCOL_ERROR',
    message: typeof message === 'string' ? sanitizeForDisplay(message.slice(0, MAX_SKIPPED_MESSAGE_CHARS)) : '',
  };
}

type ReceivingFile =
  | { kind: 'small'; rel: string; target: string; shownAs: string; partial: string; mtimeMs: number; fresh: boolean; buffer: WholeFile }
  | { kind: 'large'; rel: string; receiver?: FileReceiver; overwrite?: boolean };

/** A small file gathered in memory, at most its announced size. */
class WholeFile {
  private readonly data: Buffer;
  private filled = 0;

  constructor(readonly size: number) {
    this.data = Buffer.allocUnsafe(size);
  }

  append(chunk: Buffer): void {
    if (this.filled + chunk.length > this.size) throw new PeerShareError('SIZE_MISMATCH', 'The peer sent more bytes than the file has.');
    chunk.copy(this.data, this.filled);
    this.filled += chunk.length;
  }

  verified(sha256: unknown): Buffer {
    if (this.filled !== this.size) throw new PeerShareError('SIZE_MISMATCH', `The peer announced ${this.size} bytes but sent ${this.filled}.`);
    if (typeof sha256 !== 'string' || createHash('sha256').update(this.data).digest('hex') !== sha256.toLowerCase()) {
      throw new PeerShareError('HASH_MISMATCH');
    }
    return this.data;
  }
}

interface VerifiedFile {
  /** The path written through (see PinnedFolders). */
  target: string;
  /** The same file as a person knows it, for questions and reports. */
  shownAs: string;
  partial: string;
  data: Buffer;
  mtimeMs: number;
  /** In a folder this download created, where nothing can be clobbered. */
  fresh: boolean;
}

/**
 * Writes verified small files through a temporary file and a no-clobber commit, with synchronous
 * calls: for a file of a few KiB a thread-pool round trip per call costs more than the calls
 * themselves, and the event loop is held for well under a millisecond per file. A name that is
 * taken goes to the conflict policy; questions are asked one at a time, in order.
 */
class SmallFileWriter {
  written = 0;
  readonly skipped: string[] = [];
  private questions: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: DownloadOptions) {}

  /** Asks the conflict policy about one existing file; one question at a time. */
  decide(target: string): Promise<ConflictChoice> {
    const answer = this.questions.then(() => chooseConflict(this.options, target, 'skip'));
    this.questions = answer.catch(() => undefined);
    return answer.then((choice) => {
      if (choice === 'fail') throw new PeerShareError('DEST_EXISTS', `${target} already exists; it was left alone.`);
      return choice;
    });
  }

  async add(file: VerifiedFile): Promise<void> {
    const written = writeTemporarySync(file.partial, file.data, file.mtimeMs);
    let landed = false;
    try {
      if (file.fresh) {
        renameSync(file.partial, file.target);
        landed = true;
      } else {
        // No look before the leap: the no-clobber link is the check.
        linkSync(file.partial, file.target);
        landed = true;
        unlinkSync(file.partial);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        if (landed) throw toPeerShareError(err, 'IO_ERROR');
        // File systems without hard links and other surprises: the general commit handles them.
        return this.commitOrAsk(file, written, file.target, false);
      }
    }
    if (landed) {
      checkLanded(file.target, written);
      this.written++;
      return;
    }
    const choice = await this.decide(file.shownAs).catch((err) => {
      removeName(file.partial);
      throw err;
    });
    if (choice === 'skip') {
      this.skipped.push(file.shownAs);
      removeName(file.partial);
      return;
    }
    const target = choice === 'keepBoth' ? await keepBothName(file.target) : file.target;
    return this.commitOrAsk(file, written, target, choice === 'overwrite');
  }

  /** Commits the temporary file; a name taken meanwhile (a "keep both" copy, say) is asked about again. */
  private async commitOrAsk(file: VerifiedFile, written: TemporaryFile, target: string, overwrite: boolean): Promise<void> {
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          await commit(file.partial, target, overwrite, written);
          this.written++;
          return;
        } catch (err) {
          if (attempt > 2 || !(err instanceof PeerShareError) || err.code !== 'DEST_EXISTS') throw err;
        }
        const shown = path.join(path.dirname(file.shownAs), path.basename(target));
        const choice = await this.decide(shown);
        if (choice === 'skip') {
          this.skipped.push(shown);
          removeName(file.partial);
          return;
        }
        if (choice === 'keepBoth') target = await keepBothName(target);
        overwrite = choice === 'overwrite';
      }
    } catch (err) {
      removeName(file.partial);
      throw err;
    }
  }
}

/** Writes a verified file's bytes and time to a new temporary file (see openTemporary); returns what it wrote. */
function writeTemporarySync(partial: string, data: Buffer, mtimeMs: number): TemporaryFile {
  const file = openTemporary(partial);
  try {
    for (let written = 0; written < data.length; ) written += writeSync(file.fd, data, written, data.length - written);
    const seconds = mtimeMs / 1000;
    futimesSync(file.fd, seconds, seconds);
  } catch (err) {
    removeName(partial);
    throw toPeerShareError(err, 'IO_ERROR');
  } finally {
    closeSync(file.fd);
  }
  return file;
}

/**
 * Reads a whole (small) file into memory, verified like any download: for previews and diffs,
 * where nothing is written to disk. Refuses files over `maxBytes`.
 */
export async function readFileVerified(conn: PeerConnection, remotePath: string, maxBytes: number): Promise<Buffer> {
  const entry = await conn.stat(remotePath);
  if (entry.type !== 'file') throw new PeerShareError('NOT_A_FILE');
  if (entry.size > maxBytes) {
    throw new PeerShareError('TOO_LARGE', `The file is ${entry.size} bytes; previews are limited to ${maxBytes}. Download it instead.`);
  }
  const chunks: Buffer[] = [];
  let received = 0;
  let started = false;
  const hash = createHash('sha256');
  await conn.exchange({ type: 'read', path: remotePath, offset: 0, expect: { size: entry.size, mtimeMs: entry.mtimeMs } }, (event, done, progress) => {
    if (!started) {
      const m = expectMessage(event);
      if (m.type !== 'file' || m.path !== remotePath) throw new PeerShareError('BAD_NAME', 'The peer answered with a different file than the one asked for.');
      if (m.size !== entry.size || m.offset !== 0) throw new PeerShareError('FILE_CHANGED');
      started = true;
      progress(recordBytes(remotePath));
      return;
    }
    if (event.kind === 'data') {
      received += event.chunk.length;
      if (received > entry.size) throw new PeerShareError('SIZE_MISMATCH', 'The peer sent more bytes than the file has.');
      hash.update(event.chunk);
      // Slices of the socket's buffers: copy, so they are not pinned.
      chunks.push(Buffer.from(event.chunk));
      return;
    }
    const m = event.message;
    if (m.type !== 'fileEnd') throw new PeerShareError('PROTOCOL_ERROR', `Expected the end of the file, got ${shownType(m.type)}.`);
    if (received !== entry.size) throw new PeerShareError('SIZE_MISMATCH');
    if (typeof m.sha256 !== 'string' || hash.digest('hex') !== m.sha256.toLowerCase()) throw new PeerShareError('HASH_MISMATCH');
    done();
  });
  return Buffer.concat(chunks, received);
}
