import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { closeSync, constants as fsc, fchmodSync, fsync, futimesSync, lstatSync, promises as fs, write, type BigIntStats, type Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { blockCount, blockSizeFor, hashFileBlocks, readFully, WrittenBlockHashes, type BlockManifest } from './blocks';
import { CDC_MAX_BYTES, CDC_MIN_BYTES, chunkFile, type Chunk, type ChunkList } from './cdc';
import { guidedCutAside } from './guided-cut';
import { predictedCopy, WriteRun } from './block-copy';
import { sameVersion } from './hash-cache';
import type { FileSource } from './download';
import { PeerShareError, toPeerShareError } from './errors';
import { commit, FlushBehind, openTemporary, partialPathFor, removeName, timesOf, type TemporaryFile } from './landing';
import { inspectReceivedName } from './names';
import { isLocalFileSystem } from './share';
import { PinnedFolders, type FolderIdentity } from './pinned-folders';
import { SMALL_FILE_BYTES } from './limits';
import type { ChunksAnswer } from './v2/share-client';
import { MAX_INLINE_CHUNKS_FILE_BYTES, manifestOfBytes } from './v2/share-messages';
import { sanitizeForDisplay, type Entry } from './protocol';
import type { EntryState } from './watch';
import { WorkQueue } from './work-queue';

/** Below this an update is not worth a statfs: a full disk then fails the write itself (ENOSPC), as cleanly. */
const ROOM_CHECKED_FROM_BYTES = 1024 * 1024;

/**
 * Updating a local copy of a peer's file or folder by moving only what changed (issue 13,
 * docs/protocol-v2.md 15): the local copy is cut into content-defined chunks (cdc.ts), the
 * sharer's chunk list is asked for, every chunk the local copy holds (by hash, at any offset) is
 * copied from it, only the others are fetched, each verified on arrival; the result is assembled
 * in a temporary file beside the target, verified whole against the sharer's fileHash, and only
 * then takes the target's name, atomically. A local copy is never changed in place, and nothing
 * unverified ever has the final name.
 */

export interface DeltaOptions {
  signal?: AbortSignal;
  /** Replace `target` when it exists (sync's rule); otherwise an existing target is DEST_EXISTS. Default false. */
  overwrite?: boolean;
  /** deltaFolder: each file checked, with the sharer's version it now holds (for the origin record, origins.ts). */
  onFileSynced?: (relPath: string, synced: SyncedFile) => void;
  /** deltaFolder: work only if `target` is still this folder (a follow's destination, identified after its first sync): a folder swapped for a link elsewhere gets nothing. */
  expectRoot?: FolderIdentity;
  /** deltaFolder: asked before a local file that differs from the sharer's is replaced; true leaves it alone (edited here: Follow keeps it). */
  keepLocal?: (relPath: string) => Promise<boolean>;
  /**
   * syncFileIn: look at the local file with a synchronous lstat (deltaFolder sets it when the
   * destination is on a local file system: 10,000 thread-pool round trips were a third of a sync
   * that changed 100 files; a stalled network mount must not hold the event loop).
   */
  statLocalSync?: boolean;
  /**
   * Ask for a file of one chunk inline (spec 15.2: its bytes with its list, one request). Default
   * true; false when the file is known to be larger (a sharer asked inline for a larger file opens
   * it twice) or the local copy is probably the sharer's version already (a sync run again, so an
   * unchanged file costs its list, not its bytes).
   */
  inline?: boolean;
}

/** A file a sync checked: the sharer's version the local copy now is, and whether the sync made it. */
export interface SyncedFile {
  size: number;
  mtimeMs: number;
  /** The block-list hash, when the file was updated (a file found the same by size and time was not read). */
  fileHash?: string;
  /** The local file did not exist before. */
  created: boolean;
}

export interface DeltaFileResult {
  /** False when the local copy was already the sharer's version: nothing was fetched or written. */
  changed: boolean;
  /** Bytes of file data received from the peer. */
  bytesReceived: number;
  /** Bytes taken from the local copy instead of the network. */
  bytesReused: number;
  /** The sharer's version the target now is. */
  version: { size: number; mtimeMs: number; fileHash: string };
}

export type DeltaFolderResult = SyncTally;

/** What a sync of several files counts. */
export interface SyncTally {
  filesChecked: number;
  filesChanged: number;
  bytesReceived: number;
  bytesReused: number;
  /** Entries left alone, with why (a name unsafe here, a link or other non-file in the way), at most MAX_REPORTED. */
  leftAlone: { path: string; why: string }[];
  leftAloneCount: number;
}

const writeAt = promisify(write);
const fsyncFd = promisify(fsync);
const NO_FOLLOW = fsc.O_NOFOLLOW ?? 0;
/** Reports of entries left alone kept in a folder's result (all are counted). */
const MAX_REPORTED = 1000;
/** Files a folder sync updates at once: each waits on two round trips, so several in flight hide them (within the peer's `requests`, which a watch shares). */
export const FILES_AT_ONCE = 6;
/** A file's update failed with one of these: left alone and reported, the sync goes on. */
const FILE_LEFT_CODES = new Set(['NOT_FOUND', 'EXCLUDED', 'PERMISSION_DENIED', 'NOT_A_FILE', 'BAD_NAME', 'FILE_CHANGED', 'TOO_LARGE']);
/** A subfolder's listing refused with one of these (the sharer's folder changed since its parent was listed): left alone. */
const FOLDER_GONE_CODES = new Set(['NOT_FOUND', 'NOT_A_DIRECTORY', 'EXCLUDED', 'PERMISSION_DENIED']);
/** Folders a folder sync lists ahead of the one it works on. */
const LISTS_AHEAD = 4;
/**
 * How long an update waits for the sharer's chunk list before it cuts the local copy without it:
 * a list the sharer holds comes in a few ms on a LAN (1 GiB's list is 590 KiB); one it must cut
 * first takes about as long as the local cut, which then runs meanwhile.
 */
export const GUIDE_WAIT_MS = 150;
/** A local copy at least this large is predicted block by block when the sharer's block list comes in time (block-copy.ts). */
const PREDICTED_FROM_BYTES = 16 * 1024 * 1024;
/** Blocks whose prediction may fail before the predicted copy gives up, at least (else a sixteenth of the blocks). */
const MIN_FAILED_BLOCKS = 16;
/** Local ranges copied with one read and one write, at most (plus one chunk). */
const COPY_BYTES = 4 * 1024 * 1024;
/** Files up to this size are not flushed before they take their name (as a folder download's inline files). */
const FLUSHED_FROM_BYTES = SMALL_FILE_BYTES;

/**
 * Updates `target` to the peer's version of `remotePath`, reusing the chunks of `localFile` (a
 * previous copy, usually `target` itself; absent: everything is fetched). The local copy is only
 * read; `target` is replaced only with `overwrite` and only by a file verified whole.
 */
export async function deltaFile(conn: FileSource, remotePath: string, localFile: string | undefined, target: string, options: DeltaOptions = {}): Promise<DeltaFileResult> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await deltaOnce(conn, remotePath, localFile, target, options);
    } catch (err) {
      // The file changed on the sharer between its chunk list and the read: once more, with the new version.
      if (attempt === 0 && err instanceof PeerShareError && err.code === 'FILE_CHANGED') continue;
      // A file-system failure (a full disk, the target turned into a folder) is coded as well:
      // every caller (sync, follow, Update from Peer) shows it as it shows the rest.
      throw toPeerShareError(err, 'IO_ERROR');
    }
  }
}

async function deltaOnce(conn: FileSource, remotePath: string, localFile: string | undefined, target: string, options: DeltaOptions): Promise<DeltaFileResult> {
  const { signal } = options;
  const local = localFile === undefined ? undefined : await openLocal(localFile);
  let cutting: Promise<LocalCut> | undefined;
  // The local cut stops when the caller cancels, and when the update ends without needing it (the
  // list refused, a file that came inline): *why: a cut of a large copy went on to its end each
  // time, 1 GiB read for a list refused in 20 ms, and a cancel was seen only once the cut and the
  // copy of every local chunk into the temporary file were done (round 15).*
  const stopCut = new AbortController();
  const stop = (): void => stopCut.abort();
  signal?.addEventListener('abort', stop);
  try {
    if (signal?.aborted) stop();
    // The sharer's list and the local cut at once: the local copy is read while the list travels.
    // A list that comes within GUIDE_WAIT_MS (the sharer had it) stops that cut and guides a new
    // one (guided-cut.ts): only the changed parts of the copy are cut, the rest is hashed where the
    // list says its chunks are. A list that takes longer (the sharer cuts its own copy first) finds
    // the local cut well under way. A small local copy is cut only if the file did not come inline
    // (it rarely is worth it then).
    let cutSoFar: readonly Chunk[] = [];
    let blockList: BlockManifest | undefined;
    let onChunks: ((chunks: readonly Chunk[]) => void) | undefined;
    const cut = (copy: LocalCopy, guide?: ChunkList, stopped: AbortSignal = stopCut.signal): Promise<LocalCut> => {
      const report = (chunks: readonly Chunk[]): void => {
        cutSoFar = chunks;
        onChunks?.(chunks);
      };
      const running = (guide ? guidedCutAside(copy.handle, guide, conn.limits, report, stopped) : chunkFile(copy.handle, conn.limits, report, undefined, stopped)).catch(async (err: unknown): Promise<LocalCut> => {
        // A local copy of more chunks than maxFileChunks (a sparse file of 40 GiB in the way of a
        // 2 MiB one, say) is no reason not to update: nothing more of it is reused (what was cut
        // before the count ran over may be), the rest is fetched.
        if (err instanceof PeerShareError && err.code === 'TOO_LARGE') return { chunks: [], version: await copy.handle.stat({ bigint: true }) };
        throw err;
      });
      running.catch(() => undefined); // met below, or awaited before the copy is closed
      return running;
    };
    const smallLocal = local !== undefined && local.size <= MAX_INLINE_CHUNKS_FILE_BYTES;
    // A copy that may be this very version: the target itself, with one name, of the same size.
    const mayBeSame = (theirs: ChunkList): boolean => local !== undefined && localFile === target && local.nlink === 1 && local.size === theirs.size;
    const listing = conn.share.chunks(remotePath, { signal, inline: options.inline !== false });
    let remote: ChunksAnswer | undefined;
    if (local && !smallLocal) {
      const unguided = new AbortController();
      let cutEnded = false;
      const cutUnguided = (): Promise<LocalCut> => {
        const running = cut(local, undefined, AbortSignal.any([unguided.signal, stopCut.signal]));
        void running.then(() => (cutEnded = true), () => undefined);
        return running;
      };
      // A copy large enough to be predicted waits a moment for the list before it is cut without
      // one: the list and the block list usually come within it, and then it is not cut at all.
      const waitFirst = local.size >= PREDICTED_FROM_BYTES;
      if (!waitFirst) cutting = cutUnguided();
      listing.catch(() => undefined); // met below
      remote = await Promise.race([listing, delay(GUIDE_WAIT_MS, undefined, { ref: false })]);
      if (remote && !cutEnded) {
        // In time: that cut stops (it is not needed at all for a file that came inline). With the
        // sharer's block list as well, the copy is predicted block by block and not cut at all.
        unguided.abort();
        await cutting?.catch(() => undefined);
        cutSoFar = [];
        // A copy that may be this very version is checked block by block before anything is
        // written, and only where it may be touched.
        const worthIt = !remote.data && (!mayBeSame(remote) || options.overwrite === true);
        blockList = worthIt ? await blockListInTime(conn, remotePath, remote, local, signal) : undefined;
        cutting = remote.data || blockList ? undefined : cut(local, remote);
      } else if (!remote && waitFirst) {
        cutting = cutUnguided();
      }
    }
    remote ??= await listing;
    if (remote.data) {
      // The local copy is not needed at all (the list may have come late, the cut still running).
      stop();
      await cutting?.catch(() => undefined);
      return await landInline(remote as ChunksAnswer & { data: Buffer }, local, localFile === target, remotePath, target, options);
    }
    if (!blockList) cutting ??= local ? cut(local) : undefined;

    // The local chunks are matched as they are cut, and copied while the cut goes on once the
    // local copy is known to differ from the sharer's version (another size, or a chunk that is
    // not the sharer's at the same place): *why: cutting then copying in turn kept one core busy
    // at a time; together, the copy's reads and writes run beside the cut.* A copy that may be the
    // same version in place is cut whole first: then nothing is written at all.
    const plan = new CopyPlan(remote);
    let compared = 0;
    let differs = !mayBeSame(remote);
    let foundDifference: () => void = () => undefined;
    const differenceFound = new Promise<void>((resolve) => (foundDifference = resolve));
    onChunks = (chunks) => {
      plan.add(chunks);
      for (; !differs && compared < chunks.length; compared++) {
        const theirs = remote.chunks[compared];
        if (!theirs || theirs.length !== chunks[compared].length || !theirs.hash.equals(chunks[compared].hash)) differs = true;
      }
      if (differs) foundDifference();
    };
    onChunks(cutSoFar);
    void cutting?.then(
      () => plan.end(),
      () => plan.end(),
    );
    if (cutting && !differs) await Promise.race([cutting, differenceFound]);
    if (!differs && local && cutting) {
      // Only a copy with one name is touched in place: through a hard link the time would be set on
      // a file outside dest too (found by the chunk attack suite); one with more is made anew below,
      // from its own chunks, and takes the name alone.
      const localCut = await cutting;
      if (localCut.version.nlink === 1n && (await isSameVersion(local.handle, localCut.chunks, remote))) {
        // Same bytes, another time (touched): take the sharer's, so the next sync's size-and-time check passes.
        if (options.overwrite) await local.handle.utimes(...timesOf(remote.mtimeMs)).catch(() => undefined);
        return { changed: false, bytesReceived: 0, bytesReused: 0, version: versionOf(remote) };
      }
    }
    if (!options.overwrite && (await fs.lstat(target).then(() => true, () => false))) {
      throw new PeerShareError('DEST_EXISTS', `${path.basename(target)} already exists; it was left alone.`);
    }
    // Named as a download's temporary file (landing.ts: it fits wherever the target's name fits,
    // however many bytes its characters take), tagged by a random value: never resumed, never shared.
    const partial = partialPathFor(target, '', `sync:${randomBytes(8).toString('hex')}`, remote.size, 0);
    await requireRoom(path.dirname(target), remote.size, remotePath);
    const file = openTemporary(partial);
    const flush = new FlushBehind(file.fd);
    const assembly = new Assembly(file, flush, new WrittenBlockHashes(remote.size, blockSizeFor(remote.size)));
    let landed = false;
    try {
      let bytesReused = 0;
      if (local && blockList) {
        const version = await local.handle.stat({ bigint: true });
        // Held in place only while the copy, as checked (this version), is of the sharer's size and
        // has one name: mayBeSame looked when it was opened, before the lists came. *Why: a copy
        // appended to meanwhile was found the sharer's in its first bytes and reported unchanged,
        // the sharer's size and fileHash taken as its own, and one given a second name (a hard link
        // outside dest) had the sharer's time set through it (round 18).* Else every block is written.
        const hold = !differs && version.nlink === 1n && version.size === BigInt(remote.size);
        const copy = await predictedCopy(local.handle, local.size, remote, blockList, assembly, {
          maxFailedBlocks: Math.max(MIN_FAILED_BLOCKS, blockList.blockHashes.length / 16),
          maxChunks: conn.limits.maxFileChunks,
          holdUntilDifferent: hold,
          signal: stopCut.signal,
        });
        if (copy.sameVersion && sameVersion(version, await local.handle.stat({ bigint: true }))) {
          // Same bytes, another time (touched): nothing was written; the sharer's time is taken (as
          // below for a copy found the same by its cut), and the temporary file goes.
          await local.handle.utimes(...timesOf(remote.mtimeMs)).catch(() => undefined);
          return { changed: false, bytesReceived: 0, bytesReused: 0, version: versionOf(remote) };
        }
        bytesReused = copy.bytesReused;
        plan.give(copy.given);
        if (copy.gaveUp) {
          // Too many blocks were not where the list put them (a copy rearranged): the copy is cut
          // for what is still missing, as without the block list.
          cutting = cut(local, remote);
          void cutting.then(
            () => plan.end(),
            () => plan.end(),
          );
          bytesReused += await copyLocal(local.handle, local.size, plan.copies(), assembly);
          await cutting;
        }
        if (!sameVersion(version, await local.handle.stat({ bigint: true }))) throw new PeerShareError('FILE_CHANGED', 'The local copy changed while it was being updated.');
      } else if (local && cutting) {
        bytesReused = await copyLocal(local.handle, local.size, plan.copies(), assembly);
        // The local copy must still be the version that was cut, checked after the last read: a
        // copy edited meanwhile would make a file the sharer's hash refuses, and that is no fault
        // of the peer's (FILE_CHANGED: deltaFile starts over once).
        const { version } = await cutting;
        if (!sameVersion(version, await local.handle.stat({ bigint: true }))) throw new PeerShareError('FILE_CHANGED', 'The local copy changed while it was being updated.');
      }
      let bytesReceived = 0;
      const missing = plan.missing();
      if (missing.length > 0) {
        // Chunks that follow each other in the file are written together (up to COPY_BYTES): a
        // list of tiny chunks (a sharer may cut as it likes) costs a write per run, not per chunk.
        const run = new WriteRun(assembly);
        for await (const chunk of conn.share.readChunks(remotePath, remote, missing, { signal })) {
          await run.add(chunk.data, remote.chunks[chunk.index].offset);
          bytesReceived += chunk.data.length;
        }
        await run.flush();
      }
      // End to end: the assembled file must be the version the sharer named (its block-list hash),
      // taken from the bytes as they were written; the blocks not written in order are read back
      // (WrittenBlockHashes). Checked before its mode is the local copy's, which may let others write.
      await flush.settled();
      flush.throwIfFailed();
      await verifyAssembled(partial, assembly, target, remote, remotePath);
      futimesSync(file.fd, ...timesOf(remote.mtimeMs));
      keepMode(file, local, localFile === target);
      if (remote.size > FLUSHED_FROM_BYTES) await fsyncFd(file.fd);
      closeSync(file.fd);
      file.fd = -1;
      await commit(partial, target, options.overwrite === true, file);
      landed = true;
      return { changed: true, bytesReceived, bytesReused, version: versionOf(remote) };
    } finally {
      await flush.settled();
      if (file.fd >= 0) closeSync(file.fd);
      if (!landed) removeName(partial);
    }
  } finally {
    // A cut still reading (the list or a write failed) is stopped, and ends before its file is closed.
    stop();
    await cutting?.catch(() => undefined);
    signal?.removeEventListener('abort', stop);
    await local?.handle.close();
  }
}

/** The local copy's chunks and the version they were cut from. */
interface LocalCut {
  chunks: Chunk[];
  version: BigIntStats;
}

/**
 * Which of the sharer's chunks the local copy holds, learnt as the local copy is cut: each local
 * chunk whose hash (and length) the sharer's list names gives a copy to each place it is named,
 * the first time; chunks next to each other in both files are copied as one range (up to
 * COPY_BYTES). What no local chunk gave is `missing()`, once the cut has ended.
 */
class CopyPlan {
  /** The sharer's chunk indexes not yet given, by hash. */
  private readonly wanted = new Map<string, number[]>();
  private readonly given: Uint8Array;
  private readonly queue: Copy[] = [];
  private added = 0;
  private ended = false;
  private wake: (() => void) | undefined;

  constructor(private readonly remote: ChunkList) {
    this.given = new Uint8Array(remote.chunks.length);
    remote.chunks.forEach((chunk, index) => {
      const key = chunk.hash.toString('hex');
      const indexes = this.wanted.get(key);
      if (indexes) indexes.push(index);
      else this.wanted.set(key, [index]);
    });
  }

  /** The sharer's chunks flagged in `given` are in the new file already: no copy is planned for them. */
  give(given: Uint8Array): void {
    given.forEach((flag, index) => {
      if (flag) this.given[index] = 1;
    });
  }

  /** The local chunks cut so far (the same array, growing): the new ones are matched. */
  add(chunks: readonly Chunk[]): void {
    for (; this.added < chunks.length; this.added++) {
      const have = chunks[this.added];
      const key = have.hash.toString('hex');
      const indexes = this.wanted.get(key);
      if (!indexes) continue;
      this.wanted.delete(key);
      for (const index of indexes) {
        const wanted = this.remote.chunks[index];
        if (wanted.length !== have.length || this.given[index]) continue;
        this.given[index] = 1;
        const last = this.queue[this.queue.length - 1];
        if (last && last.from + last.length === have.offset && last.to + last.length === wanted.offset && last.length < COPY_BYTES) last.length += have.length;
        else this.queue.push({ from: have.offset, to: wanted.offset, length: have.length });
      }
    }
    this.wakeUp();
  }

  /** The cut has ended (or failed): every copy there will be is planned. */
  end(): void {
    this.ended = true;
    this.wakeUp();
  }

  /** The copies as they are planned; the last one only once it can grow no more. Ends with the cut. */
  async *copies(): AsyncGenerator<Copy> {
    for (;;) {
      const last = this.queue[this.queue.length - 1];
      const ready = this.ended || (last && last.length >= COPY_BYTES) ? this.queue.length : this.queue.length - 1;
      if (ready > 0) {
        yield* this.queue.splice(0, ready);
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /** The sharer's chunks no local chunk gave, in order. */
  missing(): number[] {
    const missing: number[] = [];
    this.given.forEach((given, index) => {
      if (!given) missing.push(index);
    });
    return missing;
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

/**
 * The sharer's block list for the version `remote` names, if it is worth asking for and comes
 * within GUIDE_WAIT_MS (the sharer holds it with the chunk list): for a local copy of
 * PREDICTED_FROM_BYTES or more, and not too large to cut. Anything else (late, refused, another
 * version, another size, a block size this side would not use) is undefined: the update goes on with the guided cut.
 */
async function blockListInTime(conn: FileSource, remotePath: string, remote: ChunksAnswer, local: LocalCopy, signal: AbortSignal | undefined): Promise<BlockManifest | undefined> {
  // Not a copy too large to cut (its cut would be TOO_LARGE at once, and it is fetched whole).
  if (local.size < PREDICTED_FROM_BYTES || local.size > conn.limits.maxFileChunks * CDC_MAX_BYTES || remote.size === 0) return undefined;
  // Stopped when it comes too late, as when the caller cancels.
  const late = new AbortController();
  try {
    const answer = conn.share.manifest(remotePath, { expect: { size: remote.size, mtimeMs: remote.mtimeMs }, expectedFileHash: remote.fileHash, signal: signal ? AbortSignal.any([signal, late.signal]) : late.signal });
    answer.catch(() => undefined);
    const got = await Promise.race([answer, delay(GUIDE_WAIT_MS, undefined, { ref: false })]);
    if (!got) {
      late.abort();
      return undefined;
    }
    const { manifest } = got;
    const blockSize = blockSizeFor(remote.size);
    // The size too, not only the count of blocks: *why: a list of another size with as many blocks
    // (a byte shorter, the copy's own hashes), the chunk list named by its hash, made a copy of the
    // same size in place pass block by block (holdUntilDifferent): reported unchanged and recorded
    // as a version whose fileHash no file of its size has (round 18).*
    return manifest.size === remote.size && manifest.blockSize === blockSize && manifest.blockHashes.length === blockCount(remote.size, blockSize) ? manifest : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The whole new version must fit beside the old one before a byte is written. Its bytes may come
 * from our own disk, not the network: a sharer may name a file made of one chunk we hold, repeated
 * (docs/security.md round 7), and without this check fill the disk at no cost of its own.
 */
async function requireRoom(folder: string, bytes: number, remotePath: string): Promise<void> {
  if (bytes < ROOM_CHECKED_FROM_BYTES) return;
  const st = await fs.statfs(folder).catch(() => undefined);
  if (!st || bytes <= st.bavail * st.bsize) return;
  const name = sanitizeForDisplay(path.basename(remotePath)).slice(0, 120);
  throw new PeerShareError('IO_ERROR', `Not enough free space to update ${name}: it needs ${bytes} bytes and ${st.bavail * st.bsize} are free. Nothing was changed.`);
}

function versionOf(remote: ChunkList & { mtimeMs: number }): DeltaFileResult['version'] {
  return { size: remote.size, mtimeMs: remote.mtimeMs, fileHash: remote.fileHash.toString('hex') };
}

/**
 * The assembled temporary file (still ours: openOwn) is the sharer's version: its size, and its
 * block-list hash from the bytes as they were written (the blocks not written in order are read
 * back from it); else HASH_MISMATCH.
 */
async function verifyAssembled(partial: string, assembly: Assembly, target: string, remote: ChunkList, remotePath: string): Promise<void> {
  const assembled = await openOwn(partial, assembly.file, target);
  try {
    const { size } = await assembled.stat();
    const fileHash = size === remote.size ? await assembly.written.fileHash((buffer, length, position) => readFully(assembled, buffer, length, position)) : undefined;
    if (!fileHash?.equals(remote.fileHash)) {
      throw new PeerShareError('HASH_MISMATCH', `The updated ${sanitizeForDisplay(path.basename(remotePath)).slice(0, 120)} does not match the file hash the peer gave; nothing was replaced.`);
    }
  } finally {
    await assembled.close();
  }
}

/** The temporary file an update assembles: every write goes through here, to be flushed behind and hashed as it goes. */
class Assembly {
  constructor(
    readonly file: TemporaryFile,
    private readonly flush: FlushBehind,
    readonly written: WrittenBlockHashes,
  ) {}

  /** Writes all of `data` at `position`; `data` must not change until this resolves. */
  async write(data: Buffer, position: number): Promise<void> {
    // The write is on its way (a thread of the pool) while this thread hashes the same bytes.
    const writing = writeAll(this.file, data, position);
    this.written.wrote(data, position);
    await writing;
    this.flush.wrote(data.length);
  }

  /** Writes block `index` whole from `data`, whose hash the caller took from this very buffer (block-copy.ts). */
  async writeBlock(data: Buffer, position: number, index: number, hash: Buffer): Promise<void> {
    const writing = writeAll(this.file, data, position);
    this.written.wroteBlock(index, hash);
    await writing;
    this.flush.wrote(data.length);
  }
}

/**
 * The temporary file reopened by its name to be read, only if it is still the file we created: a
 * link is not followed, a FIFO does not block the open, and anything else now at the name (someone
 * who may write in the folder moved ours away) is IO_ERROR. *Why: verifying whatever had the name
 * hung on a FIFO for ever, and a file put there in time took the target's name, so the target was
 * lost (found by the chunk attack suite).*
 */
async function openOwn(partial: string, file: TemporaryFile, target: string): Promise<FileHandle> {
  const replaced = (): PeerShareError =>
    new PeerShareError('IO_ERROR', `The temporary file for ${sanitizeForDisplay(path.basename(target)).slice(0, 120)} was replaced before it was verified; nothing was kept.`);
  const handle = await fs.open(partial, fsc.O_RDONLY | NO_FOLLOW | (fsc.O_NONBLOCK ?? 0)).catch(() => {
    throw replaced();
  });
  const st = await handle.stat();
  if (st.isFile() && st.dev === file.dev && st.ino === file.ino) return handle;
  await handle.close();
  throw replaced();
}

/**
 * A file that came inline (one chunk, its bytes verified against the list): checked against the
 * sharer's fileHash in memory, compared with a small local copy, and written whole into a
 * temporary file that takes the target's name. *Why: for a file of a few KiB, cutting the local
 * copy, reopening the temporary file and hashing it from disk were most of an update's calls.*
 */
async function landInline(remote: ChunksAnswer & { data: Buffer }, local: LocalCopy | undefined, inPlace: boolean, remotePath: string, target: string, options: DeltaOptions): Promise<DeltaFileResult> {
  const { data } = remote;
  if (!manifestOfBytes(data, blockSizeFor(data.length)).fileHash.equals(remote.fileHash)) {
    throw new PeerShareError('HASH_MISMATCH', `The updated ${sanitizeForDisplay(path.basename(remotePath)).slice(0, 120)} does not match the file hash the peer gave; nothing was replaced.`);
  }
  const unchanged = { changed: false, bytesReceived: data.length, bytesReused: 0, version: versionOf(remote) };
  // Only a copy with one name is touched in place (see deltaOnce).
  if (local && inPlace && local.size === data.length && local.nlink === 1 && (await holds(local.handle, data))) {
    if (options.overwrite) await local.handle.utimes(...timesOf(remote.mtimeMs)).catch(() => undefined);
    return unchanged;
  }
  if (!options.overwrite && (await fs.lstat(target).then(() => true, () => false))) {
    throw new PeerShareError('DEST_EXISTS', `${path.basename(target)} already exists; it was left alone.`);
  }
  const partial = partialPathFor(target, '', `sync:${randomBytes(8).toString('hex')}`, data.length, 0);
  const file = openTemporary(partial);
  let landed = false;
  try {
    await writeAll(file, data, 0);
    futimesSync(file.fd, ...timesOf(remote.mtimeMs));
    keepMode(file, local, inPlace);
    closeSync(file.fd);
    file.fd = -1;
    await commit(partial, target, options.overwrite === true, file);
    landed = true;
    return { ...unchanged, changed: true };
  } finally {
    if (file.fd >= 0) closeSync(file.fd);
    if (!landed) removeName(partial);
  }
}

/**
 * The replacement takes the permission bits of the copy it replaces: *why: it was made with the
 * default mode, so a 0600 file came back readable by others (noted by attack round 9).* Never the
 * set-id bits (masked off by LocalCopy.mode).
 */
function keepMode(file: TemporaryFile, local: LocalCopy | undefined, inPlace: boolean): void {
  if (local && inPlace) fchmodSync(file.fd, local.mode);
}

/**
 * The open file, with one name, holds exactly `data`, and still does after the read. The names and
 * the size are those of this version: *why: the number of names taken when the copy was opened
 * let one hard-linked while the answer came be found the sharer's and its time set through both
 * names (round 18).*
 */
async function holds(handle: FileHandle, data: Buffer): Promise<boolean> {
  const before = await handle.stat({ bigint: true });
  if (before.nlink !== 1n || before.size !== BigInt(data.length)) return false;
  const bytes = Buffer.allocUnsafe(data.length);
  await readFully(handle, bytes, bytes.length, 0);
  return bytes.equals(data) && sameVersion(before, await handle.stat({ bigint: true }));
}

/** A local copy to reuse, open, with its size and number of names when opened. */
interface LocalCopy {
  handle: FileHandle;
  size: number;
  nlink: number;
  /** Its permission bits: an updated file keeps them (a private file stays private). */
  mode: number;
}

/** The local copy, opened without following a link; only a regular file is a copy to reuse. */
async function openLocal(file: string): Promise<LocalCopy | undefined> {
  let handle: FileHandle;
  try {
    handle = await fs.open(file, fsc.O_RDONLY | NO_FOLLOW | (fsc.O_NONBLOCK ?? 0));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new PeerShareError('BAD_NAME', `${path.basename(file)} is a symbolic link; it was left alone.`);
    throw toPeerShareError(err, 'IO_ERROR');
  }
  const st = await handle.stat();
  if (!st.isFile()) {
    await handle.close();
    throw new PeerShareError('NOT_A_FILE', `${path.basename(file)} is not a regular file; it was left alone.`);
  }
  return { handle, size: st.size, nlink: st.nlink, mode: st.mode & 0o777 };
}

/** The local copy is the sharer's version when its chunks are the sharer's, in order, and its block-list hash is the fileHash. */
async function isSameVersion(local: FileHandle, localChunks: Chunk[], remote: ChunkList): Promise<boolean> {
  if (localChunks.length !== remote.chunks.length) return false;
  if (!localChunks.every((chunk, i) => chunk.length === remote.chunks[i].length && chunk.hash.equals(remote.chunks[i].hash))) return false;
  const manifest = await hashFileBlocks(local, { maxFileBlocks: Number.MAX_SAFE_INTEGER, maxManifestBytes: Number.MAX_SAFE_INTEGER });
  return manifest.fileHash.equals(remote.fileHash);
}

/** A range of the local copy that holds chunks of the sharer's version, and where it goes. */
interface Copy {
  from: number;
  to: number;
  length: number;
}

/**
 * Copies `copies` (as they come) from the local copy of `localSize` bytes into the temporary file;
 * returns the bytes copied. The chunks' bytes are not hashed again here: the whole file is
 * verified before it lands. The caller checks the local copy did not change meanwhile.
 */
async function copyLocal(local: FileHandle, localSize: number, copies: AsyncIterable<Copy>, assembly: Assembly): Promise<number> {
  const bufferBytes = Math.min(COPY_BYTES + CDC_MAX_BYTES, localSize);
  // Two buffers: the next piece is read while the one before is written.
  const buffers = [Buffer.allocUnsafe(bufferBytes), Buffer.allocUnsafe(bufferBytes)];
  let writing: Promise<void> | undefined;
  let turn = 0;
  let copied = 0;
  // Copies shorter than a chunk's minimum: only the local copy's last chunk is that short, and a
  // sharer may name it at thousands of places (one-byte chunks): it is read once, and the places
  // next to each other written together. *Why: a read and a write each cost 281,000 system calls
  // and 7.5 s for a file of 128 KiB (round 11).*
  const small = new WriteRun(assembly);
  let held: { from: number; bytes: Buffer } | undefined;
  const readSmall = async (copy: Copy): Promise<Buffer> => {
    if (!held || copy.from < held.from || copy.from + copy.length > held.from + held.bytes.length) {
      const bytes = Buffer.allocUnsafe(copy.length);
      await readFully(local, bytes, copy.length, copy.from).catch((err: unknown) => {
        throw err instanceof PeerShareError && err.code === 'FILE_CHANGED' ? new PeerShareError('FILE_CHANGED', 'The local copy changed while it was being updated.') : err;
      });
      held = { from: copy.from, bytes };
    }
    return held.bytes.subarray(copy.from - held.from, copy.from - held.from + copy.length);
  };
  try {
    for await (const copy of copies) {
      copied += copy.length;
      if (copy.length < CDC_MIN_BYTES) {
        await small.add(await readSmall(copy), copy.to);
        continue;
      }
      for (let done = 0; done < copy.length; ) {
        const buffer = buffers[turn];
        turn = 1 - turn;
        const length = Math.min(bufferBytes, copy.length - done);
        const { bytesRead } = await local.read(buffer, 0, length, copy.from + done);
        if (bytesRead === 0) throw new PeerShareError('FILE_CHANGED', 'The local copy changed while it was being updated.');
        await writing;
        writing = assembly.write(buffer.subarray(0, bytesRead), copy.to + done);
        // Met at the next turn or below; a write that fails while the next read runs (a full
        // disk) must not be an unhandled rejection meanwhile: it ended the CLI (round 11).
        writing.catch(() => undefined);
        done += bytesRead;
      }
    }
    await small.flush();
    await writing;
  } finally {
    // A write still in flight (a read failed) must end before the file is closed.
    await writing?.catch(() => undefined);
  }
  return copied;
}

async function writeAll(file: TemporaryFile, data: Buffer, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    done += (await writeAt(file.fd, data, done, data.length - done, position + done)).bytesWritten;
  }
}

/**
 * Makes `target` a mirror of the peer's folder `remotePath`: walks it with share.list, folder by
 * folder (breadth first, listing a few ahead); a file whose size or modification time differs from the local one is updated with
 * deltaFile (its local copy's chunks reused), one whose size and time are the same costs nothing
 * (as rsync's default check; the time is set to the sharer's on every update). Never deletes.
 * Folders are made without following a link (PinnedFolders); a name of the wrong form stops the
 * sync (BAD_NAME), a well-formed name unsafe here, or a link or other non-file where a file
 * should be updated, is left alone and reported.
 */
export async function deltaFolder(conn: FileSource, remotePath: string, target: string, options: DeltaOptions = {}): Promise<DeltaFolderResult> {
  const limits = conn.limits;
  const result: DeltaFolderResult = { filesChecked: 0, filesChanged: 0, bytesReceived: 0, bytesReused: 0, leftAlone: [], leftAloneCount: 0 };
  // A folder that must still be the one identified earlier (a follow's) is not made again.
  if (!options.expectRoot) await fs.mkdir(target, { recursive: true });
  const work = new WorkQueue(FILES_AT_ONCE);
  const folders = await PinnedFolders.open(target, { rootMayBeLink: true, expect: options.expectRoot });
  // Up to FILES_AT_ONCE updates and LISTS_AHEAD listings wait on the caller's signal at once,
  // each request with its own listener: past Node's 10 that printed a leak warning. A signal of the
  // sync's own carries them (one listener on the caller's), with room for the few more an update
  // may add besides its requests.
  const signal = options.signal ? AbortSignal.any([options.signal]) : undefined;
  if (signal) setMaxListeners(4 * (FILES_AT_ONCE + LISTS_AHEAD + 1), signal);
  options = { ...options, signal, statLocalSync: await isLocalFileSystem(target) };
  const base = remotePath.replace(/\/+$/, '');
  let seen = 0;
  try {
    // Folders in the order they are walked (breadth first), each listed up to LISTS_AHEAD ahead of
    // the one being worked on, so the walk does not wait a round trip per folder; at most that many
    // listings are held besides the current one.
    const queue: { components: string[]; entries?: Promise<Entry[]> }[] = [{ components: [] }];
    const listOf = (components: string[]): Promise<Entry[]> => {
      const listing = conn.share.list([base, ...components].join('/'), { signal: options.signal });
      listing.catch(() => undefined);
      return listing;
    };
    while (queue.length > 0) {
      for (const ahead of queue.slice(0, LISTS_AHEAD)) ahead.entries ??= listOf(ahead.components);
      const { components, entries: listing } = queue.shift()!;
      if (components.length > limits.maxTreeDepth) throw new PeerShareError('TOO_LARGE', `The folder is nested deeper than ${limits.maxTreeDepth} levels.`);
      let entries: Entry[];
      try {
        entries = await listing!;
      } catch (err) {
        const coded = toPeerShareError(err, 'IO_ERROR');
        // A folder that went away or became a file on the sharer after its parent was listed: as for a file, reported, the rest goes on.
        if (components.length === 0 || !FOLDER_GONE_CODES.has(coded.code)) throw coded;
        leaveAlone(result, components.join('/'), coded.message);
        continue;
      }
      const files: { entry: Entry; relPath: string }[] = [];
      // The folder's own path was checked as an entry of its parent: each name is checked alone
      // (a listed name is one component, share-client), within what is left of maxPathBytes.
      const folderRel = components.join('/');
      const nameBytesLeft = limits.maxPathBytes - (folderRel ? Buffer.byteLength(folderRel, 'utf8') + 1 : 0);
      for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
        if (++seen > limits.maxTreeFiles) throw new PeerShareError('TOO_LARGE', `The folder has more than ${limits.maxTreeFiles} files and folders.`);
        const relPath = folderRel ? `${folderRel}/${entry.name}` : entry.name;
        const { unsafeHere } = inspectReceivedName(entry.name, Math.max(0, nameBytesLeft));
        if (unsafeHere) {
          leaveAlone(result, relPath, `its name is not safe here (${unsafeHere.why})`);
          continue;
        }
        if (entry.type !== 'dir') {
          files.push({ entry, relPath });
          continue;
        }
        try {
          await folders.makeFolders([...components, entry.name]);
        } catch (err) {
          leaveAlone(result, relPath, toPeerShareError(err, 'IO_ERROR').message);
          continue;
        }
        queue.push({ components: [...components, entry.name] });
      }
      if (!options.statLocalSync) {
        for (const { entry, relPath } of files) await work.add(() => folders.use(components, entry.name, (local) => syncFileIn(conn, `${base}/${relPath}`, local, relPath, entry, options, result)));
        continue;
      }
      // On a local file system, the folder's files are looked at in one synchronous pass through
      // its open descriptor, and only those that differ become work: an unchanged file costs an
      // lstat, not a task (10,000 tasks were most of a sync that changed 100 files).
      const differing = await folders.use(components, '', async (folder) => {
        const found: { entry: Entry; relPath: string }[] = [];
        for (const file of files) {
          result.filesChecked++;
          // Only a file that looks the same is settled here; the rest are looked at again as work.
          const st = lstatOrNothingSync(`${folder}/${file.entry.name}`);
          if (st?.isFile() && firstLook(st, file.relPath, file.entry, options, result) === 'done') continue;
          found.push(file);
        }
        return found;
      });
      for (const { entry, relPath } of differing) {
        // Looked at again when its turn comes: a file made or changed here since the pass (the
        // user typing while the sync runs) must meet keepLocal, and not count as created by the
        // sync (round 13).
        await work.add(() =>
          folders.use(components, entry.name, async (local) => {
            const st = lstatOrNothingSync(local);
            if (firstLook(st, relPath, entry, options, result) === 'update') await updateFileIn(conn, `${base}/${relPath}`, local, st, relPath, entry, options, result);
          }),
        );
      }
    }
    await work.drain();
  } finally {
    // Nothing may still be writing through the folders when they close.
    await work.drain().catch(() => undefined);
    await folders.close();
  }
  return result;
}

/**
 * One file of a folder sync, `local` (a path through the pinned folder) against the sharer's
 * `entry`: left alone when something other than a file is in its place, or (keepLocal) edited
 * here; nothing done when size and time match; else updated with deltaFile. What the peer may not
 * serve now (gone, excluded, too large, changing as it is read) is reported and the rest goes on; anything
 * else (a lie, a closed connection, a local failure) is thrown and stops the sync.
 */
export async function syncFileIn(conn: FileSource, remoteFile: string, local: string, relPath: string, entry: EntryState, options: DeltaOptions, tally: SyncTally): Promise<void> {
  tally.filesChecked++;
  const st = options.statLocalSync ? lstatOrNothingSync(local) : await fs.lstat(local).catch(() => undefined);
  if (firstLook(st, relPath, entry, options, tally) === 'update') await updateFileIn(conn, remoteFile, local, st, relPath, entry, options, tally);
}

/**
 * What a sync does with one file, from the local file's lstat (`st`; undefined: none there): 'done'
 * when something other than a file is in its place (left alone) or it has the sharer's size and
 * time (nothing to do, as rsync's default check; reported to onFileSynced); else 'update'.
 */
function firstLook(st: Stats | undefined, relPath: string, entry: EntryState, options: DeltaOptions, tally: SyncTally): 'done' | 'update' {
  if (st && !st.isFile()) {
    leaveAlone(tally, relPath, 'something other than a file is in its place');
    return 'done';
  }
  if (st && entry.type === 'file' && st.size === entry.size && Math.floor(st.mtimeMs) === entry.mtimeMs) {
    options.onFileSynced?.(relPath, { size: entry.size, mtimeMs: entry.mtimeMs, created: false });
    return 'done';
  }
  return 'update';
}

/** The rest of syncFileIn for a file that differs from the sharer's (`st`: its lstat, undefined when there is none). */
async function updateFileIn(conn: FileSource, remoteFile: string, local: string, st: Stats | undefined, relPath: string, entry: EntryState, options: DeltaOptions, tally: SyncTally): Promise<void> {
  if (st && options.keepLocal && (await options.keepLocal(relPath))) {
    leaveAlone(tally, relPath, 'it was edited here since it was taken from the peer; yours was kept');
    return;
  }
  try {
    // Inline only for a file listed as small: a larger one would cost the sharer a second open.
    const updated = await deltaFile(conn, remoteFile, st ? local : undefined, local, { ...options, overwrite: true, inline: entry.size <= MAX_INLINE_CHUNKS_FILE_BYTES });
    options.onFileSynced?.(relPath, { ...updated.version, created: !st });
    if (updated.changed) tally.filesChanged++;
    tally.bytesReceived += updated.bytesReceived;
    tally.bytesReused += updated.bytesReused;
  } catch (err) {
    const coded = toPeerShareError(err, 'IO_ERROR');
    // The peer's file went away, is not served now, is too large to update in chunks (either
    // side's maxFileChunks), or kept changing while it was read (a log being written; deltaFile
    // tried twice): reported, the rest goes on. Anything else (a lie, a closed connection) stops the sync.
    if (!FILE_LEFT_CODES.has(coded.code)) throw coded;
    leaveAlone(tally, relPath, coded.message);
  }
}

/** lstat, or undefined for whatever cannot be looked at (as `fs.lstat(...).catch(() => undefined)`). */
function lstatOrNothingSync(file: string): Stats | undefined {
  try {
    return lstatSync(file);
  } catch {
    return undefined;
  }
}

/** Reports `relPath` as left alone: counted always, listed up to MAX_REPORTED. */
export function leaveAlone(tally: SyncTally, relPath: string, why: string): void {
  tally.leftAloneCount++;
  if (tally.leftAlone.length < MAX_REPORTED) tally.leftAlone.push({ path: relPath, why });
}
