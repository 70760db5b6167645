import { closeSync, fstatSync, fsync, ftruncate, futimesSync, promises as fs, read, write } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { blake3 } from '../blake3';
import { blockCount, blockRange, verifyBlockOnce, type BlockManifest } from '../blocks';
import {
  chooseConflict,
  commit,
  FlushBehind,
  isPlausibleTime,
  keepBothName,
  openOwnPartial,
  openTemporary,
  partialPathForHash,
  removeName,
  removeStalePartials,
  timesOf,
  type ConflictChoice,
  type TemporaryFile,
} from '../landing';
import { PeerShareError, toPeerShareError } from '../errors';
import type { Limits } from '../limits';
import { PinnedFolders } from '../pinned-folders';

/**
 * The receiving end of one file as a set of verified blocks (docs/protocol-v2.md 7.2, 7.3),
 * whatever brought them: blocks may come from any peer, in any order. A block is verified before
 * it is written, so the partial file only ever holds bytes of the file the manifest names; the
 * file takes its name only when every block is in, with v1's landing rules (download.ts: created
 * exclusively, resumed only if ours, never replacing a file without consent, the final name is
 * our inode).
 *
 * What is present is not remembered beside the file: a resume hashes the partial file's blocks
 * again against the manifest (a local read at BLAKE3 speed), so any set of blocks counts, a
 * block damaged on our own disk between runs is fetched again, and there is no sidecar file a
 * stranger could plant or that could disagree with the data.
 */

/** Half-open block ranges `[first, end)`, sorted, as `share.read` names them. */
export type BlockRange = [first: number, end: number];

export interface PartialFileOptions {
  limits: Pick<Limits, 'maxFileBlocks'>;
  /** Resume the partial file an earlier run kept for this target and file (default true); false starts over. */
  resume?: boolean;
  /**
   * The block list of an earlier version of the file (its sharer's file changed: a new `fileHash`,
   * docs/protocol-v2.md 7.2, 7.3): with no partial file of this version, that version's partial
   * is taken over, and its blocks that are the same at the same index are kept (they are hashed
   * against this manifest like any resumed block, so two versions are never spliced). After a
   * bad block (share-client's recheckAfterBadBlock returned another manifest): abandon the
   * PartialFile with `keep: true`, then open with the new manifest and this one as `previous`.
   */
  previous?: BlockManifest;
}

export interface LandOptions {
  /** What to do when the target exists (default 'fail'); a function is asked only then. */
  conflict?: ConflictChoice | ((target: string) => ConflictChoice | Promise<ConflictChoice>);
  /** The file's modification time on the sharer; ignored unless a time a file system can hold. */
  mtimeMs?: number;
}

export interface LandResult {
  /** Where the file landed: the target, or a "keep both" name beside it; undefined when skipped. */
  target?: string;
  skipped: boolean;
  /** The file's hash (BLAKE3 of its block list, blocks.ts), 64 lowercase hex: what the product calls its hash. */
  fileHash: string;
  size: number;
}

export interface PartialFileProgress {
  blockCount: number;
  presentBlocks: number;
  /** Bytes found verified in the partial file when it was opened. */
  resumedBytes: number;
  /** Bytes written by this PartialFile since. */
  writtenBytes: number;
}

// Per-block state: writing is claimed before the await, so a second copy of a block in flight is refused too.
const MISSING = 0;
const WRITING = 1;
const PRESENT = 2;

const readAt = promisify(read);
const fsyncFd = promisify(fsync);
const truncateFd = promisify(ftruncate);

/**
 * Partial files held open by this process, by the name a person would see, with their targets:
 * a second PartialFile for the same target and file would share the inode and land it twice, so
 * it is refused while the first is open; one for another version of the file gets a partial of
 * its own and leaves the open one's name alone. (Another process resuming the same partial writes
 * the same verified bytes at the same places, since the name is tied to the file hash; the
 * second to land finds its name gone and fails without touching the target.)
 */
const openPartials = new Map<string, string>();

export class PartialFile {
  private readonly state: Uint8Array;
  private presentBlocks = 0;
  private resumedBytes = 0;
  private writtenBytes = 0;
  private readonly writes = new Set<Promise<void>>();
  private finished = false;
  private descriptorOpen = true;
  private readonly flushBehind: FlushBehind;

  private constructor(
    /** The target as given, resolved: what results and questions name. */
    readonly target: string,
    readonly manifest: BlockManifest,
    /** The target through the folder as opened (PinnedFolders), for every file operation. */
    private readonly fsTarget: string,
    private readonly partial: string,
    private readonly claim: string,
    private readonly folder: PinnedFolders,
    private readonly file: TemporaryFile,
  ) {
    this.state = new Uint8Array(manifest.blockHashes.length);
    this.flushBehind = new FlushBehind(file.fd);
  }

  /**
   * Creates the partial file beside `target`, or resumes the one an earlier run kept (only if
   * it is ours: see openOwnPartial), and finds which blocks it already holds by hashing them.
   * Memory: one block buffer while scanning, one byte of state per block.
   */
  static async open(target: string, manifest: BlockManifest, options: PartialFileOptions): Promise<PartialFile> {
    const count = blockCount(manifest.size, manifest.blockSize);
    if (manifest.blockHashes.length !== count || count > options.limits.maxFileBlocks) {
      throw new PeerShareError('INVALID_ARGUMENT', `A block list of ${manifest.blockHashes.length} hashes does not describe a file of ${manifest.size} bytes in blocks of ${manifest.blockSize} (at most ${options.limits.maxFileBlocks} blocks).`);
    }
    const shownTarget = path.resolve(target);
    const claim = partialNameFor(shownTarget, manifest);
    if (openPartials.has(claim)) {
      throw new PeerShareError('DEST_EXISTS', `${path.basename(shownTarget)} is already being downloaded here; wait for that download to finish.`);
    }
    const targetInUse = [...openPartials.values()].includes(shownTarget);
    openPartials.set(claim, shownTarget);
    let folder: PinnedFolders | undefined;
    let file: TemporaryFile | undefined;
    let previous: { file: TemporaryFile; name: string } | undefined;
    try {
      await fs.mkdir(path.dirname(shownTarget), { recursive: true });
      // Every operation goes through the folder as opened now, whatever its path names later.
      folder = await PinnedFolders.open(path.dirname(shownTarget), { rootMayBeLink: true });
      const fsTarget = await folder.pathIn([], path.basename(shownTarget));
      const partial = partialNameFor(fsTarget, manifest);
      if (options.resume !== false) file = openOwnPartial(partial, manifest.size);
      if (!file) {
        // An earlier version's blocks are copied into a file of our own, never received into in
        // place: a process still receiving that version would write its blocks into ours.
        if (options.resume !== false) previous = openPreviousPartial(shownTarget, fsTarget, manifest, options.previous);
        // Also removes whatever is at our own name if it was not ours to resume, and older versions'
        // partials, unless one of those is being received here right now (openTemporary still clears our name).
        if (!targetInUse) await removeStalePartials(fsTarget);
        file = openTemporary(partial);
      }
      // Full size from the start (holes where blocks are missing): every block is written in place, and the landed size is exact.
      await truncateFd(file.fd, manifest.size);
      const partialFile = new PartialFile(shownTarget, manifest, fsTarget, partial, claim, folder, file);
      await partialFile.findPresentBlocks(previous?.file ?? file);
      if (previous) removeName(previous.name);
      return partialFile;
    } catch (err) {
      if (file) closeSync(file.fd);
      await folder?.close();
      openPartials.delete(claim);
      throw toPeerShareError(err, 'IO_ERROR');
    } finally {
      if (previous) closeSync(previous.file.fd);
    }
  }

  /** The blocks still to fetch, in order (blocks being written count as present): what share-client's readBlocks takes. */
  missing(): number[] {
    const indexes: number[] = [];
    for (let index = 0; index < this.state.length; index++) if (this.state[index] === MISSING) indexes.push(index);
    return indexes;
  }

  /** The same as sorted half-open ranges, as `share.read` names them. */
  missingRanges(): BlockRange[] {
    const ranges: BlockRange[] = [];
    for (let index = 0; index < this.state.length; index++) {
      if (this.state[index] !== MISSING) continue;
      const last = ranges[ranges.length - 1];
      if (last && last[1] === index) last[1] = index + 1;
      else ranges.push([index, index + 1]);
    }
    return ranges;
  }

  get progress(): PartialFileProgress {
    return { blockCount: this.state.length, presentBlocks: this.presentBlocks, resumedBytes: this.resumedBytes, writtenBytes: this.writtenBytes };
  }

  /**
   * Verifies block `index` against the manifest (unless this very buffer already passed
   * verifyBlock for it on arrival: blocks.ts verifyBlockOnce) and only then writes it at its place, through
   * the descriptor this PartialFile opened. A block that fails, is out of range, or is already
   * present (or being written) is refused with a coded error and nothing is written. `data` must
   * not change until the promise settles: the bytes hashed are the bytes written (a pooled
   * buffer goes back to its pool only then).
   */
  write(block: { index: number; data: Uint8Array }): Promise<void> {
    if (this.finished) return Promise.reject(new PeerShareError('CANCELLED', 'This download has ended; the block was not written.'));
    const { index, data } = block;
    // Which blocks are written is this side's choice (share-client yields only those asked for):
    // a bad index is our own mistake, never the peer's, so it is not told as a protocol error.
    if (!(Number.isSafeInteger(index) && index >= 0 && index < this.state.length)) {
      return Promise.reject(new PeerShareError('INVALID_ARGUMENT', `The file has no block ${index}; nothing was written.`));
    }
    if (this.state[index] !== MISSING) {
      return Promise.reject(new PeerShareError('INVALID_ARGUMENT', `Block ${index + 1} of the file was written twice; the second copy was refused.`, { detail: `block ${index} already ${this.state[index] === PRESENT ? 'present' : 'being written'}` }));
    }
    try {
      verifyBlockOnce(index, data, this.manifest);
    } catch (err) {
      return Promise.reject(err);
    }
    this.state[index] = WRITING;
    const { offset } = blockRange(this.manifest, index);
    const writing = writeFully(this.file.fd, data, offset).then(
      () => {
        this.state[index] = PRESENT;
        this.presentBlocks++;
        this.writtenBytes += data.length;
        // Tracked as a write: the descriptor stays open under it too.
        const flushing = this.flushBehind.wrote(data.length);
        if (flushing) this.track(flushing);
      },
      (err: unknown) => {
        this.state[index] = MISSING;
        throw toPeerShareError(err, 'IO_ERROR');
      },
    );
    return this.track(writing);
  }

  /** Tracked so the descriptor is never closed (and its number reused) under a write in flight. */
  private track(operation: Promise<void>): Promise<void> {
    const tracked = operation.finally(() => this.writes.delete(tracked));
    tracked.catch(() => undefined);
    this.writes.add(tracked);
    return tracked;
  }

  /**
   * Every block present: syncs the file to disk and gives it its name (download.ts `commit`: no
   * existing file is replaced unless `conflict` says overwrite, and the final name must be our
   * inode). Ends this PartialFile either way. With blocks missing (SIZE_MISMATCH) the partial
   * file is kept for a resume, and after DEST_EXISTS ('fail') too, so a later open with the same
   * manifest lands it without fetching a byte; after any other failure it is removed.
   */
  async land(options: LandOptions = {}): Promise<LandResult> {
    if (this.finished) throw new PeerShareError('CANCELLED', 'This download has already ended.');
    this.finished = true;
    let keepPartial = false;
    try {
      await this.settleWrites();
      const missing = this.state.length - this.presentBlocks;
      if (missing > 0) {
        keepPartial = true;
        throw new PeerShareError('SIZE_MISMATCH', `${missing} of ${this.state.length} blocks of ${path.basename(this.target)} have not arrived; it was not saved.`);
      }
      if (fstatSync(this.file.fd).size !== this.manifest.size) {
        throw new PeerShareError('SIZE_MISMATCH', `The partial file of ${path.basename(this.target)} changed size on this disk; it was not saved.`);
      }
      // A background flush that failed: what it was to flush may not be on the disk (landing.ts FlushBehind).
      this.flushBehind.throwIfFailed();
      if (isPlausibleTime(options.mtimeMs)) futimesSync(this.file.fd, ...timesOf(options.mtimeMs));
      await fsyncFd(this.file.fd);
      this.closeDescriptor();
      const landedAs = await this.commitAsked(options);
      const fileHash = this.manifest.fileHash.toString('hex');
      if (landedAs === undefined) return { skipped: true, fileHash, size: this.manifest.size };
      return { target: path.join(path.dirname(this.target), path.basename(landedAs)), skipped: false, fileHash, size: this.manifest.size };
    } catch (err) {
      const coded = toPeerShareError(err, 'IO_ERROR');
      if (coded.code === 'DEST_EXISTS') keepPartial = true;
      if (!keepPartial) removeName(this.partial);
      throw coded;
    } finally {
      await this.release();
    }
  }

  /** Ends this PartialFile without landing: `keep` leaves the partial file for a later resume (none is kept without a block), else it is removed. */
  async abandon(options: { keep: boolean }): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    try {
      await this.settleWrites();
      if (!options.keep || this.presentBlocks === 0) removeName(this.partial);
    } finally {
      await this.release();
    }
  }

  /**
   * Hashes each block kept in `source` (our partial file, or an earlier version's) against the
   * manifest: any set of blocks counts. A block found in another file is copied into ours.
   */
  private async findPresentBlocks(source: TemporaryFile): Promise<void> {
    const keptBytes = Math.min(source.size, this.manifest.size);
    if (keptBytes === 0) return;
    const buffer = Buffer.allocUnsafe(Math.min(this.manifest.blockSize, this.manifest.size));
    for (let index = 0; index < this.state.length; index++) {
      const { offset, length } = blockRange(this.manifest, index);
      // Past what was kept the file is a hole we made: nothing of the file was written there.
      if (offset >= keptBytes) break;
      const block = buffer.subarray(0, length);
      // A block the source ends inside of cannot match: a kept block is whole.
      if (offset + length > source.size) break;
      await readFully(source.fd, block, offset);
      if (blake3(block).equals(this.manifest.blockHashes[index])) {
        if (source !== this.file) await writeFully(this.file.fd, block, offset);
        this.state[index] = PRESENT;
        this.presentBlocks++;
        this.resumedBytes += length;
      }
    }
  }

  /** Commits under the target, asking the conflict policy when a file is there (again, if a "keep both" name is taken meanwhile). */
  private async commitAsked(options: LandOptions): Promise<string | undefined> {
    let landing = this.fsTarget;
    let overwrite = false;
    for (let attempt = 0; ; attempt++) {
      try {
        await commit(this.partial, landing, overwrite, this.file);
        return landing;
      } catch (err) {
        // Our name gone: another process started this target over, or landed the same file first.
        if (err instanceof PeerShareError && err.code === 'NOT_FOUND') {
          throw new PeerShareError('IO_ERROR', `The partial file of ${path.basename(this.target)} was removed before it was saved (another download of it?); nothing was changed.`, { cause: err });
        }
        if (attempt > 2 || !(err instanceof PeerShareError) || err.code !== 'DEST_EXISTS') throw err;
      }
      const shown = path.join(path.dirname(this.target), path.basename(landing));
      const choice = await chooseConflict({ onConflict: options.conflict }, shown, 'fail');
      if (choice === 'fail') throw new PeerShareError('DEST_EXISTS', `${shown} already exists; it was left alone.`);
      if (choice === 'skip') {
        removeName(this.partial);
        return undefined;
      }
      if (choice === 'keepBoth') landing = await keepBothName(landing);
      overwrite = choice === 'overwrite';
    }
  }

  private async settleWrites(): Promise<void> {
    while (this.writes.size > 0) await Promise.allSettled([...this.writes]);
  }

  /** Exactly once: a second close could hit a number the process has since given to another file. */
  private closeDescriptor(): void {
    if (!this.descriptorOpen) return;
    this.descriptorOpen = false;
    closeSync(this.file.fd);
  }

  /** Closes the descriptor (unless land did), the folder, and gives up this process's claim on the partial. */
  private async release(): Promise<void> {
    this.closeDescriptor();
    await this.folder.close();
    openPartials.delete(this.claim);
  }
}

/**
 * The partial file of an earlier version of the file, opened only if ours (as openOwnPartial) and
 * not being received in this process right now: its blocks are read, never written or landed.
 */
function openPreviousPartial(shownTarget: string, fsTarget: string, manifest: BlockManifest, previous: BlockManifest | undefined): { file: TemporaryFile; name: string } | undefined {
  if (!previous || previous.fileHash.equals(manifest.fileHash) || openPartials.has(partialNameFor(shownTarget, previous))) return undefined;
  const name = partialNameFor(fsTarget, previous);
  const file = openOwnPartial(name, previous.size);
  return file && { file, name };
}

/**
 * The partial file's name: v1's form (`.<name>.<tag>.peershare-part`, so v1's stale-partial
 * cleanup knows it), tagged by the file hash, which names content, size and block size. Not by
 * the peer: any source of the same file resumes it (7.3).
 */
/** The partial file of this version beside `target`: named from the file hash alone (landing.ts), as send/1's cancel finds it. */
function partialNameFor(target: string, manifest: BlockManifest): string {
  return partialPathForHash(target, manifest.fileHash.toString('hex'), manifest.size);
}

async function readFully(fd: number, buffer: Buffer, position: number): Promise<void> {
  for (let done = 0; done < buffer.length; ) {
    const { bytesRead } = await readAt(fd, buffer, done, buffer.length - done, position + done);
    if (bytesRead === 0) throw new PeerShareError('IO_ERROR', 'A partial download shrank while it was being resumed.');
    done += bytesRead;
  }
}

function writeFully(fd: number, data: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const next = (done: number): void => {
      if (done === data.length) return resolve();
      write(fd, data, done, data.length - done, position + done, (err, written) => (err ? reject(err) : next(done + written)));
    };
    next(0);
  });
}
