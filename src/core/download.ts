import { closeSync, futimesSync, linkSync, promises as fs, renameSync, unlinkSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { blockRange, type BlockManifest } from './blocks';
import type { PeerConnection } from './client';
import { PeerShareError, isErrorCode, toPeerShareError, type ErrorCode } from './errors';
import {
  checkLanded,
  chooseConflict,
  commit,
  exists,
  isPlausibleTime,
  keepBothName,
  openTemporary,
  partialPathFor,
  removeName,
  timesOf,
  type ConflictChoice,
  type TemporaryFile,
} from './landing';
import { collisionKey, inspectReceivedName, nameDigest, type UnsafeHere } from './names';
import { PinnedFolders } from './pinned-folders';
import { sanitizeForDisplay, type Entry } from './protocol';
import { PeerSentError } from './v2/messages';
import { PartialFile } from './v2/partial-file';

export type { ConflictChoice } from './landing';

/**
 * Downloads over protocol v2 (docs/protocol-v2.md 6, 7): a file arrives as BLAKE3-verified blocks
 * in a PartialFile beside its target and takes its name only when every block is in; a resume
 * fetches only the blocks missing, whichever they are. A folder arrives as one stream, its small
 * files inline (verified whole, written behind the stream) and its larger ones fetched as blocks
 * on the same connection.
 */

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

/**
 * Where a download's bytes come from: a connection to a sharer (PeerConnection), or send/1's
 * outbox of a peer that offered files (send.ts), which answers the same requests.
 */
export type FileSource = Pick<PeerConnection, 'peerId' | 'limits' | 'share' | 'stat' | 'close'>;

export interface DownloadOptions {
  /** What to do when a target file exists. Default: 'fail' for a file, 'skip' inside a folder. */
  onConflict?: ConflictChoice | ((target: string) => ConflictChoice | Promise<ConflictChoice>);
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** Keep a partial file after cancel or a dropped connection, to resume later (default true). */
  keepPartial?: boolean;
  /** A single file's hash as it was offered (send/1): a block list with another hash is HASH_MISMATCH. */
  expectedFileHash?: Buffer;
  /**
   * Each file that took its name, with the sharer's version it now is (for the record of what came
   * from where, origins.ts): its path below the download's target ('' for a single file, whose
   * place is the result's target), and whether the download created it (false when it replaced one).
   */
  onFileLanded?: (relPath: string, landed: LandedFile) => void;
}

/** A file a download wrote: the sharer's size and time (the file's own), its block-list hash when fetched as blocks. */
export interface LandedFile {
  size: number;
  mtimeMs: number;
  fileHash?: string;
  created: boolean;
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

/** Characters of a peer's reason kept in a skipped-file report, before escaping. */
const MAX_SKIPPED_MESSAGE_CHARS = 300;

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
export async function download(conn: FileSource, remotePath: string, dest: string, options: DownloadOptions = {}): Promise<DownloadResult> {
  const entry = await conn.stat(remotePath);
  const target = await resolveTarget(remotePath, dest);
  return entry.type === 'dir'
    ? downloadFolder(conn, remotePath, target, options)
    : downloadFile(conn, remotePath, target, options, entry);
}

/** Downloads one file to `target`, resuming a partial download of the same file version. */
export async function downloadFile(
  conn: FileSource,
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
  await fs.mkdir(path.dirname(target), { recursive: true });
  for (let attempt = 0; ; attempt++) {
    try {
      if (options.signal?.aborted) throw new PeerShareError('CANCELLED');
      const received = await receiveBlocks(conn, remotePath, target, entry, { conflict: overwrite ? 'overwrite' : 'fail', resume: options.keepPartial !== false }, options, path.basename(target));
      if (received.landed) options.onFileLanded?.('', { ...received.version, created: !overwrite });
      return { ...emptyResult(target, 'file', []), files: 1, bytes: received.bytes, resumedBytes: received.resumedBytes };
    } catch (err) {
      // The file changed between our stat and the manifest: start over once with the new version.
      if (attempt === 0 && err instanceof PeerShareError && err.code === 'FILE_CHANGED') {
        entry = await conn.stat(remotePath, { signal: options.signal });
        continue;
      }
      throw err;
    }
  }
}

/**
 * Verified blocks on their way to the disk at once: up to this many bytes (at least one block).
 * Counted in bytes, not blocks, so a 4 GiB file's 4 MiB blocks hold no more memory than a 1 GiB
 * file's 1 MiB ones (the receiver's peak stays flat with the file's size).
 */
const WRITE_BYTES_IN_FLIGHT = 3 * 1024 * 1024;

/**
 * Fetches one file as verified blocks (docs/protocol-v2.md 7.2) into a PartialFile at `target`:
 * its manifest for the version listed (`entry`), the blocks the partial file does not hold yet
 * (any set: a resume fetches only what is missing), then it lands with `land`'s conflict rule.
 * A block that fails its hash is answered as the spec says: the manifest is asked once more with
 * `rehash`; a new version keeps the blocks that did not change, the same one means this peer
 * lies and the connection is closed. Bytes that cannot be trusted are never kept; an honest
 * interruption (cancel, a dropped connection, a timeout) keeps the partial file for a resume.
 */
async function receiveBlocks(
  conn: FileSource,
  remotePath: string,
  target: string,
  entry: { size: number; mtimeMs: number },
  land: { conflict: ConflictChoice; resume: boolean },
  options: DownloadOptions,
  shownFile: string,
): Promise<{ bytes: number; resumedBytes: number; landed: boolean; version: { size: number; mtimeMs: number; fileHash: string } }> {
  const signal = options.signal;
  let answer = await conn.share.manifest(remotePath, { expect: { size: entry.size, mtimeMs: entry.mtimeMs }, expectedFileHash: options.expectedFileHash, signal });
  // The sharer answers FILE_CHANGED for another version (spec 6.2); a manifest of another one is a lie.
  if (answer.manifest.size !== entry.size || answer.mtimeMs !== entry.mtimeMs) {
    const lie = new PeerShareError('PROTOCOL_ERROR', 'The peer described another version of the file than the one asked for.');
    conn.close(lie);
    throw lie;
  }
  let previous: BlockManifest | undefined;
  let rechecked = false;
  let bytes = 0;
  for (;;) {
    const { manifest, mtimeMs } = answer;
    const file = await PartialFile.open(target, manifest, { limits: conn.limits, resume: land.resume, previous });
    const resumedBytes = file.progress.resumedBytes;
    const report = (checking?: boolean): void =>
      options.onProgress?.({ bytes, totalBytes: manifest.size, file: shownFile, resumedBytes, ...(checking ? { checking } : {}) });
    try {
      if (resumedBytes > 0) report(true);
      const writes = new Set<Promise<void>>();
      let writingBytes = 0;
      // The first write that failed (a full disk): it ends the download as soon as it is seen.
      let failed: unknown;
      for await (const block of conn.share.readBlocks(remotePath, manifest, file.missing(), { signal })) {
        if (failed !== undefined) throw failed;
        // The block's buffer goes back to the reader (release) once its write settles, not before.
        const size = block.data.length;
        bytes += size;
        const settled = (): void => {
          writes.delete(written);
          writingBytes -= size;
          block.release();
        };
        const written: Promise<void> = file.write(block).then(settled, (err: unknown) => {
          settled();
          failed ??= err;
        });
        writes.add(written);
        writingBytes += size;
        while (writes.size > 0 && writingBytes >= WRITE_BYTES_IN_FLIGHT) await Promise.race(writes);
        report();
      }
      await Promise.all(writes);
      if (failed !== undefined) throw failed;
      const landed = await file.land({ conflict: land.conflict, mtimeMs });
      return { bytes, resumedBytes, landed: !landed.skipped, version: { size: manifest.size, mtimeMs, fileHash: manifest.fileHash.toString('hex') } };
    } catch (err) {
      const coded = toPeerShareError(err, 'IO_ERROR');
      if (coded.code === 'HASH_MISMATCH' && !rechecked) {
        // Spec 7.2: one bad block from an otherwise good peer; the sharer's file may have changed.
        // The partial file is kept either way: it holds only blocks verified against the list, so
        // a peer proven to lie by the recheck leaves nothing of its own in it, and what another
        // peer sent before stays for a resume (send-attacks: *a partial file … survives a liar*).
        rechecked = true;
        await file.abandon({ keep: true });
        answer = await conn.share.recheckAfterBadBlock(remotePath, manifest, { signal });
        previous = manifest;
        continue;
      }
      // Data we cannot trust is never kept; an interrupted but honest transfer is kept for resume.
      const resumable = coded.code === 'CONNECTION_CLOSED' || coded.code === 'TIMEOUT' || coded.code === 'CANCELLED';
      await file.abandon({ keep: resumable && land.resume });
      throw coded;
    }
  }
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
  conn: FileSource,
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
  let bytes = 0;
  const writer = new SmallFileWriter(options);
  const fetches = new FileRefFetches(FILE_REFS_AT_ONCE);

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
  const admit = (record: { path: string; components: string[]; unsafeHere?: UnsafeHere }, isDir: boolean): string[] | undefined => {
    const { components, unsafeHere } = record;
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

  /** Records a file the peer could not send: counted always, kept up to the limit, escaped. */
  const skippedByPeer = (rel: string, code: unknown, message: unknown): void => {
    result.skippedByPeerCount++;
    // Counted, not kept, past the limit: endless reports cannot grow memory.
    if (result.skippedByPeer.length < limits.maxSkippedReports) result.skippedByPeer.push(skippedReport(rel, code, message));
  };

  /** A file record (inline or fileRef): where it goes, or undefined when it is left out or a duplicate. */
  const placeFile = async (record: { path: string; components: string[]; unsafeHere?: UnsafeHere }): Promise<{ shownAs: string; fileTarget: string; components: string[] } | undefined> => {
    const components = admit(record, false);
    count();
    if (!components) return undefined;
    checkDepth(components.length - 1);
    const key = nameDigest(collisionKey(record.path));
    if (seen.has(key)) {
      // The same name twice, or two names one file system would merge: the first one stays.
      leaveOut(record.path, 'another file of this download has the same name on a case-insensitive file system');
      return undefined;
    }
    seen.add(key);
    await makeDirs(components.slice(0, -1));
    // `shownAs` is the file as a person knows it; `fileTarget` the path written through.
    const shownAs = path.join(target, ...components);
    const fileTarget = await folders.pathIn(components.slice(0, -1), components[components.length - 1]);
    return { shownAs, fileTarget, components };
  };

  /** A larger file, fetched as blocks on the same connection while the folder stream goes on. */
  const fetchRef = async (rel: string, place: { shownAs: string; fileTarget: string }, size: number, mtimeMs: number): Promise<void> => {
    let conflict: ConflictChoice = 'fail';
    if (await exists(place.fileTarget)) {
      const choice = await writer.decide(place.shownAs);
      if (choice === 'skip') {
        result.skippedExisting.push(place.shownAs);
        return;
      }
      conflict = choice;
    }
    try {
      // A file in a folder is never resumed: whatever is at its temporary name goes.
      const received = await receiveBlocks(conn, `${remotePath}/${rel}`, place.fileTarget, { size, mtimeMs }, { conflict, resume: false }, progressOf(rel), rel);
      if (received.landed) {
        result.files++;
        // A "keep both" copy landed under another name: not the sharer's path, so not reported.
        if (conflict !== 'keepBoth') options.onFileLanded?.(rel, { ...received.version, created: conflict !== 'overwrite' });
      } else result.skippedExisting.push(place.shownAs);
    } catch (err) {
      // The sharer could not send it (changed, gone, unreadable): reported as v1's skipped record.
      if (err instanceof PeerSentError && err.code !== 'BUSY') return skippedByPeer(rel, err.code, err.message);
      throw err;
    }
  };
  /** A fetched file's progress, added to the folder's bytes as it grows. */
  const progressOf = (rel: string): DownloadOptions => {
    let counted = 0;
    return {
      signal: options.signal,
      onProgress: (p) => {
        bytes += p.bytes - counted;
        counted = p.bytes;
        options.onProgress?.({ bytes, file: rel });
      },
    };
  };

  try {
    if (options.signal?.aborted) throw new PeerShareError('CANCELLED');
    const stream = conn.share.tree(remotePath, { signal: options.signal });
    for (;;) {
      fetches.check();
      const step = await stream.next();
      if (step.done) break;
      const record = step.value;
      switch (record.kind) {
        case 'dir': {
          const components = admit(record, true);
          if (!components) {
            count();
            break;
          }
          checkDepth(components.length);
          await makeDirs(components);
          break;
        }
        case 'file': {
          const place = await placeFile(record);
          if (!place) break;
          bytes += record.data.length;
          options.onProgress?.({ bytes, file: record.path });
          const fresh = folderState.get(nameDigest(place.components.slice(0, -1).join('/'))) === true;
          const partial = partialPathFor(place.fileTarget, conn.peerId, `${remotePath}/${record.path}`, record.size, record.mtimeMs);
          const mtimeMs = isPlausibleTime(record.mtimeMs) ? record.mtimeMs : Date.now();
          await writer.add({ target: place.fileTarget, shownAs: place.shownAs, partial, data: record.data, mtimeMs, fresh, rel: record.path });
          break;
        }
        case 'fileRef': {
          const place = await placeFile(record);
          if (!place) break;
          // The sharer's time as it stated it: the manifest is asked for that version (land ignores an implausible one).
          await fetches.add(() => fetchRef(record.path, place, record.size, record.mtimeMs));
          break;
        }
        case 'skipped': {
          // The same report again is no progress: a peer repeating it would hold the download open.
          const key = nameDigest(collisionKey(record.path));
          if (reported.has(key)) throw new PeerShareError('PROTOCOL_ERROR', 'The peer reported the same file twice.');
          reported.add(key);
          count();
          skippedByPeer(record.path, record.code, record.message);
          break;
        }
      }
    }
    await fetches.all();
  } catch (err) {
    await fetches.all().catch(() => undefined);
    // A folder this download made and nothing landed in goes too (rmdir leaves a non-empty one).
    if (createdTarget) await fs.rmdir(target).catch(() => undefined);
    throw toPeerShareError(err, 'IO_ERROR');
  } finally {
    await folders.close();
    result.files += writer.written;
    result.skippedExisting.push(...writer.skipped);
  }
  result.bytes = bytes;
  return result;
}

/** Larger files of a folder fetched at once on its connection: each holds a block of up to 16 MiB until verified (spec 12.2). */
const FILE_REFS_AT_ONCE = 2;

/** Runs at most `most` fetches at once; the first failure is rethrown by check() and all(). */
class FileRefFetches {
  private readonly running = new Set<Promise<void>>();
  private failure?: unknown;

  constructor(private readonly most: number) {}

  check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  async add(fetch: () => Promise<void>): Promise<void> {
    while (this.running.size >= this.most) {
      await Promise.race(this.running);
      this.check();
    }
    const run = fetch().then(
      () => undefined,
      (err: unknown) => {
        this.failure ??= err;
      },
    );
    const tracked = run.finally(() => this.running.delete(tracked));
    this.running.add(tracked);
  }

  async all(): Promise<void> {
    while (this.running.size > 0) await Promise.race(this.running);
    this.check();
  }
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
  /** Its path below the download's target, for onFileLanded. */
  rel: string;
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
      this.landed(file, true);
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

  private landed(file: VerifiedFile, created: boolean): void {
    this.written++;
    this.options.onFileLanded?.(file.rel, { size: file.data.length, mtimeMs: file.mtimeMs, created });
  }

  /** Commits the temporary file; a name taken meanwhile (a "keep both" copy, say) is asked about again. */
  private async commitOrAsk(file: VerifiedFile, written: TemporaryFile, target: string, overwrite: boolean): Promise<void> {
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          await commit(file.partial, target, overwrite, written);
          // A "keep both" copy lands under another name: it is a file of its own, not the sharer's path.
          if (target === file.target) this.landed(file, !overwrite);
          else this.written++;
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
    futimesSync(file.fd, ...timesOf(mtimeMs));
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
export async function readFileVerified(conn: FileSource, remotePath: string, maxBytes: number): Promise<Buffer> {
  const entry = await conn.stat(remotePath);
  if (entry.type !== 'file') throw new PeerShareError('NOT_A_FILE');
  if (entry.size > maxBytes) {
    throw new PeerShareError('TOO_LARGE', `The file is ${entry.size} bytes; previews are limited to ${maxBytes}. Download it instead.`);
  }
  const { manifest } = await conn.share.manifest(remotePath, { expect: { size: entry.size, mtimeMs: entry.mtimeMs } });
  // The manifest is the sharer's word for this version: bounded again, whatever stat said.
  if (manifest.size > maxBytes) throw new PeerShareError('FILE_CHANGED');
  const whole = Buffer.alloc(manifest.size);
  const indices = Array.from({ length: manifest.blockHashes.length }, (_, index) => index);
  // Every block is verified against the block list, and the list against the file hash, before it is yielded.
  for await (const block of conn.share.readBlocks(remotePath, manifest, indices)) {
    block.data.copy(whole, blockRange(manifest, block.index).offset);
    block.release();
  }
  return whole;
}
