import { createHash, type Hash } from 'node:crypto';
import { closeSync, createReadStream, createWriteStream, futimesSync, linkSync, openSync, promises as fs, renameSync, rmSync, unlinkSync, writeSync, type WriteStream } from 'node:fs';
import * as path from 'node:path';
import { PeerShareError, toPeerShareError } from './errors';
import type { PeerConnection, PeerEvent } from './client';
import { expectMessage } from './client';
import { checkReceivedName, collisionKey } from './names';
import type { Entry } from './protocol';
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
  /** Files the peer could not send, with its reason. */
  skippedByPeer: { path: string; code: string; message: string }[];
}

const PARTIAL_SUFFIX = '.peershare-part';
const WRITE_BUFFER_BYTES = 1024 * 1024;

/** Where a download of `remotePath` into `dest` lands: inside `dest` if it is a folder. */
export async function resolveTarget(remotePath: string, dest: string): Promise<string> {
  const base = remotePath.replace(/\/+$/, '').split('/').pop() ?? '';
  checkReceivedName(base);
  const st = await fs.stat(dest).catch(() => undefined);
  return st?.isDirectory() ? path.join(dest, base) : path.resolve(dest);
}

/** Downloads a file or a folder; see downloadFile and downloadFolder. */
export async function download(conn: PeerConnection, remotePath: string, dest: string, options: DownloadOptions = {}): Promise<DownloadResult> {
  const entry = await conn.stat(remotePath);
  const target = await resolveTarget(remotePath, dest);
  return entry.type === 'dir'
    ? downloadFolder(conn, remotePath, target, options)
    : downloadFile(conn, remotePath, target, options, entry);
}

/** Receives one file into a temporary file, hashing as it goes; commits only if the hash matches. */
class FileReceiver {
  private stream?: WriteStream;
  private hash: Hash = createHash('sha256');
  private received = 0;

  constructor(
    readonly target: string,
    readonly partial: string,
    readonly offset: number,
    readonly size: number,
    readonly mtimeMs: number,
  ) {}

  async open(): Promise<void> {
    if (this.offset > 0) {
      // The prefix on disk is hashed too: the peer's SHA-256 covers the whole file.
      for await (const chunk of createReadStream(this.partial, { end: this.offset - 1, highWaterMark: 1024 * 1024 })) {
        this.hash.update(chunk as Buffer);
      }
    }
    this.stream = createWriteStream(this.partial, {
      flags: this.offset > 0 ? 'r+' : 'w',
      start: this.offset,
      mode: 0o644,
      highWaterMark: WRITE_BUFFER_BYTES,
    });
    await new Promise<void>((resolve, reject) => {
      this.stream!.once('open', () => resolve());
      this.stream!.once('error', reject);
    });
  }

  /** Returns a promise only when the disk wants us to wait. */
  write(chunk: Buffer): Promise<void> | undefined {
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
    await this.closeStream();
    try {
      if (this.offset + this.received !== this.size) {
        throw new PeerShareError('SIZE_MISMATCH', `The peer announced ${this.size} bytes but sent ${this.offset + this.received}.`);
      }
      if (typeof sha256 !== 'string' || this.hash.digest('hex') !== sha256.toLowerCase()) throw new PeerShareError('HASH_MISMATCH');
      const seconds = this.mtimeMs / 1000;
      await fs.utimes(this.partial, seconds, seconds).catch(() => undefined);
      await commit(this.partial, this.target, overwrite);
    } catch (err) {
      await fs.rm(this.partial, { force: true });
      throw err;
    }
  }

  async abort(keepPartial: boolean): Promise<void> {
    await this.closeStream().catch(() => undefined);
    if (!keepPartial) await fs.rm(this.partial, { force: true });
  }

  private closeStream(): Promise<void> {
    const stream = this.stream;
    if (!stream || stream.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      stream.once('error', (err) => reject(toPeerShareError(err, 'IO_ERROR')));
      stream.end(() => resolve());
    });
  }
}

/** Moves a verified temporary file to its final name; without `overwrite`, never replaces anything. */
async function commit(partial: string, target: string, overwrite: boolean): Promise<void> {
  if (overwrite) {
    await fs.rename(partial, target);
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
    return;
  }
  await fs.rm(partial, { force: true });
}

async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(
    () => true,
    () => false,
  );
}

function partialPathFor(target: string, peerId: string, remotePath: string, size: number, mtimeMs: number): string {
  // The tag ties a partial file to one version of one remote file, so a resume never splices two versions.
  const tag = createHash('sha256').update(`${peerId}\n${remotePath}\n${size}\n${mtimeMs}`).digest('hex').slice(0, 16);
  return path.join(path.dirname(target), `.${path.basename(target)}.${tag}${PARTIAL_SUFFIX}`);
}

/** Partial files of older versions of the same target can never be resumed: remove them. */
async function removeStalePartials(target: string): Promise<void> {
  const prefix = `.${path.basename(target)}.`;
  const names = await fs.readdir(path.dirname(target)).catch(() => [] as string[]);
  for (const name of names) {
    if (name.startsWith(prefix) && name.endsWith(PARTIAL_SUFFIX) && /^[0-9a-f]{16}$/.test(name.slice(prefix.length, -PARTIAL_SUFFIX.length))) {
      await fs.rm(path.join(path.dirname(target), name), { force: true });
    }
  }
}

async function chooseConflict(options: DownloadOptions, target: string, fallback: ConflictChoice): Promise<ConflictChoice> {
  const policy = options.onConflict ?? fallback;
  return typeof policy === 'function' ? policy(target) : policy;
}

/** "name (2).ext", the first that does not exist. */
async function keepBothName(target: string): Promise<string> {
  const ext = path.extname(target);
  const stem = target.slice(0, target.length - ext.length);
  for (let n = 2; n < 10_000; n++) {
    const candidate = `${stem} (${n})${ext}`;
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
  const existing = await fs.lstat(partial).catch(() => undefined);
  let offset = 0;
  if (existing?.isFile() && existing.size <= entry.size) offset = existing.size;
  else if (existing) await fs.rm(partial, { force: true, recursive: false });
  if (offset === 0) await removeStalePartials(fsTarget);
  const receiver = new FileReceiver(fsTarget, partial, offset, entry.size, entry.mtimeMs);
  let started = false;
  const onAbort = (): void => conn.close(new PeerShareError('CANCELLED'));
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (options.signal?.aborted) throw new PeerShareError('CANCELLED');
    await conn.exchange({ type: 'read', path: remotePath, offset, expect: { size: entry.size, mtimeMs: entry.mtimeMs } }, (event, done) => {
      if (!started) {
        const m = expectMessage(event);
        if (m.type !== 'file') throw new PeerShareError('PROTOCOL_ERROR', `Expected a file, got ${String(m.type)}.`);
        // The scp lesson: the answer must be about exactly what we asked for.
        if (m.path !== remotePath) throw new PeerShareError('BAD_NAME', 'The peer answered with a different file than the one asked for.');
        if (m.size !== entry.size || m.offset !== offset) throw new PeerShareError('FILE_CHANGED');
        started = true;
        return receiver.open();
      }
      if (event.kind === 'data') {
        const pending = receiver.write(event.chunk);
        options.onProgress?.({ bytes: receiver.bytesReceived, totalBytes: entry.size, file: path.basename(target) });
        return pending;
      }
      const m = event.message;
      if (m.type !== 'fileEnd') throw new PeerShareError('PROTOCOL_ERROR', `Expected the end of the file, got ${String(m.type)}.`);
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
  };
}

function emptyResult(target: string, type: 'file' | 'dir', skippedExisting: string[]): DownloadResult {
  return { target, type, files: 0, bytes: 0, resumedBytes: 0, skippedExisting, skippedByPeer: [] };
}

/**
 * Downloads a folder as one stream. Every name is checked before anything is created, every
 * file is verified before it takes its name, and existing files follow `onConflict` (default: skip).
 * Small files are verified in memory and written behind the stream, several at a time, so a
 * folder of many small files is not paced by one file's open, write, close and rename.
 */
export async function downloadFolder(
  conn: PeerConnection,
  remotePath: string,
  target: string,
  options: DownloadOptions = {},
): Promise<DownloadResult> {
  const result = emptyResult(target, 'dir', []);
  const createdTarget = (await fs.mkdir(target, { recursive: true })) !== undefined;
  const folders = await PinnedFolders.open(target);
  const seen = new Set<string>();
  const madeDirs = new Set<string>(['']);
  // Folders this download created were empty: nothing in them can be clobbered, so a file there
  // is committed with one rename instead of the no-clobber link and unlink.
  const createdDirs = new Set<string>(createdTarget ? [''] : []);
  let current: ReceivingFile | undefined;
  let bytes = 0;
  const writer = new SmallFileWriter(options);
  const onAbort = (): void => conn.close(new PeerShareError('CANCELLED'));
  options.signal?.addEventListener('abort', onAbort, { once: true });

  const makeDirs = async (components: string[]): Promise<void> => {
    if (madeDirs.has(components.join('/'))) return;
    const created = await folders.makeFolders(components);
    created.forEach((made, i) => {
      const rel = components.slice(0, i + 1).join('/');
      if (made) createdDirs.add(rel);
      madeDirs.add(rel);
    });
  };

  const handle = async (event: PeerEvent, done: () => void): Promise<void> => {
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
        await makeDirs(checkReceivedName(m.path, conn.limits.maxPathBytes));
        return;
      }
      case 'file': {
        if (current) throw new PeerShareError('PROTOCOL_ERROR', 'A file inside a file.');
        const components = checkReceivedName(m.path, conn.limits.maxPathBytes);
        const rel = m.path as string;
        const key = collisionKey(rel);
        if (seen.has(key)) throw new PeerShareError('BAD_NAME', 'The peer sent the same file twice.');
        seen.add(key);
        const size = m.size;
        const mtimeMs = typeof m.mtimeMs === 'number' && Number.isFinite(m.mtimeMs) ? m.mtimeMs : Date.now();
        if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || m.offset !== 0) {
          throw new PeerShareError('PROTOCOL_ERROR', 'A file header has an invalid size.');
        }
        await makeDirs(components.slice(0, -1));
        // `shownAs` is the file as a person knows it; `fileTarget` the path written through.
        const shownAs = path.join(target, ...components);
        const fileTarget = await folders.pathIn(components.slice(0, -1), components[components.length - 1]);
        const partial = partialPathFor(fileTarget, conn.peerId, `${remotePath}/${rel}`, size, mtimeMs);
        if (size <= SMALL_FILE_BYTES) {
          const fresh = createdDirs.has(components.slice(0, -1).join('/'));
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
        const receiver = new FileReceiver(finalTarget, partial, 0, size, mtimeMs);
        current = { kind: 'large', rel, receiver, overwrite };
        await receiver.open();
        return;
      }
      case 'fileEnd': {
        if (!current) throw new PeerShareError('PROTOCOL_ERROR', 'The end of a file that never started.');
        const finished = current;
        current = undefined;
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
          checkReceivedName(rel, conn.limits.maxPathBytes);
        }
        result.skippedByPeer.push({ path: rel, code: String(m.code ?? ''), message: String(m.message ?? '').slice(0, 300) });
        return;
      }
      case 'end':
        if (current) throw new PeerShareError('PROTOCOL_ERROR', 'The folder ended inside a file.');
        done();
        return;
      default:
        throw new PeerShareError('PROTOCOL_ERROR', `Unexpected message ${JSON.stringify(String(m.type).slice(0, 40))}.`);
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
    writeTemporarySync(file.partial, file.data, file.mtimeMs);
    try {
      if (file.fresh) {
        renameSync(file.partial, file.target);
      } else {
        // No look before the leap: the no-clobber link is the check.
        linkSync(file.partial, file.target);
        unlinkSync(file.partial);
      }
      this.written++;
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        // File systems without hard links and other surprises: the general commit handles them.
        return this.commitOrAsk(file, file.target, false);
      }
    }
    const choice = await this.decide(file.shownAs).catch(async (err) => {
      await fs.rm(file.partial, { force: true });
      throw err;
    });
    if (choice === 'skip') {
      this.skipped.push(file.shownAs);
      await fs.rm(file.partial, { force: true });
      return;
    }
    const target = choice === 'keepBoth' ? await keepBothName(file.target) : file.target;
    return this.commitOrAsk(file, target, choice === 'overwrite');
  }

  /** Commits the temporary file; a name taken meanwhile (a "keep both" copy, say) is asked about again. */
  private async commitOrAsk(file: VerifiedFile, target: string, overwrite: boolean): Promise<void> {
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          await commit(file.partial, target, overwrite);
          this.written++;
          return;
        } catch (err) {
          if (attempt > 2 || !(err instanceof PeerShareError) || err.code !== 'DEST_EXISTS') throw err;
        }
        const shown = path.join(path.dirname(file.shownAs), path.basename(target));
        const choice = await this.decide(shown);
        if (choice === 'skip') {
          this.skipped.push(shown);
          await fs.rm(file.partial, { force: true });
          return;
        }
        if (choice === 'keepBoth') target = await keepBothName(target);
        overwrite = choice === 'overwrite';
      }
    } catch (err) {
      await fs.rm(file.partial, { force: true });
      throw err;
    }
  }
}

/** Writes a verified file's bytes and time to its temporary name. */
function writeTemporarySync(partial: string, data: Buffer, mtimeMs: number): void {
  let fd: number | undefined;
  try {
    fd = openSync(partial, 'w', 0o644);
    for (let written = 0; written < data.length; ) written += writeSync(fd, data, written, data.length - written);
    const seconds = mtimeMs / 1000;
    futimesSync(fd, seconds, seconds);
    closeSync(fd);
  } catch (err) {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // already closed, or the close itself failed: the file is removed below either way
      }
      rmSync(partial, { force: true });
    }
    throw toPeerShareError(err, 'IO_ERROR');
  }
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
  await conn.exchange({ type: 'read', path: remotePath, offset: 0, expect: { size: entry.size, mtimeMs: entry.mtimeMs } }, (event, done) => {
    if (!started) {
      const m = expectMessage(event);
      if (m.type !== 'file' || m.path !== remotePath) throw new PeerShareError('BAD_NAME', 'The peer answered with a different file than the one asked for.');
      if (m.size !== entry.size || m.offset !== 0) throw new PeerShareError('FILE_CHANGED');
      started = true;
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
    if (m.type !== 'fileEnd') throw new PeerShareError('PROTOCOL_ERROR', `Expected the end of the file, got ${String(m.type)}.`);
    if (received !== entry.size) throw new PeerShareError('SIZE_MISMATCH');
    if (typeof m.sha256 !== 'string' || hash.digest('hex') !== m.sha256.toLowerCase()) throw new PeerShareError('HASH_MISMATCH');
    done();
  });
  return Buffer.concat(chunks, received);
}
