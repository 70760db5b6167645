import type { FileHandle } from 'node:fs/promises';
import { setImmediate as turn } from 'node:timers/promises';
import { blake3 } from './blake3';
import { readFully, type BlockManifest } from './blocks';
import { ForwardReader, throwIfStopped, type ChunkList } from './cdc';
import { GuidedWalk } from './guided-cut';

/** Where the predicted copy writes the new file (delta.ts Assembly). */
export interface BlockWriter {
  /** Writes `data` at `position`, hashed as it is written; `data` must not change until this resolves. */
  write(data: Buffer, position: number): Promise<void>;
  /** Writes block `index` whole from `data`, whose hash (`hash`, the sharer's for that block) is known. */
  writeBlock(data: Buffer, position: number, index: number, hash: Buffer): Promise<void>;
}

export interface PredictedCopy {
  /** Per chunk of the sharer's list: 1 if the new file holds its bytes, verified. */
  given: Uint8Array;
  /** Bytes of the new file taken from the local copy: the chunks given. */
  bytesReused: number;
  /** Blocks whose prediction failed and were worked out chunk by chunk. */
  blocksWorkedOut: number;
  /** Bytes hashed: each block read once, and what working out failed blocks hashed. */
  hashedBytes: number;
  /** Too many predictions failed: the rest was not looked for, and the caller cuts the copy for what is still missing. */
  gaveUp: boolean;
  /** With `holdUntilDifferent`: every block was the sharer's where it stands, and nothing was written. */
  sameVersion: boolean;
}

/** workOut: the walks have hashed as much as the copy holds; the copy gives up. */
const TOO_COSTLY = Symbol('too costly');
/** Block buffers (those read ahead, the one being hashed, those being written): at most this many bytes, and 3 to 8 of them. */
const BLOCK_BUFFER_BYTES = 32 * 1024 * 1024;
/** Block buffers at most (small blocks), and at least (16 MiB blocks: 48 MiB). */
const MOST_BUFFERS = 8;
const LEAST_BUFFERS = 3;
/** Chunks found between two turns of the event loop, at most (as guided-cut.ts). */
const TURN_CHUNKS = 1024;

/**
 * Builds the sharer's version from the local copy block by block, predicting each block of the
 * new file from the copy through the sharer's chunk list and checking the prediction against the
 * sharer's block hash (issue 13). *Why: the guided cut hashed each chunk of the copy where the
 * list put it and the new file's blocks were hashed again as they were written, two BLAKE3 passes
 * and two reads of the copy per byte; a 1 GiB update kept both cores busy for 0.75 s.* Here each
 * block is read once, hashed once, and written from the same buffer only if its hash is the
 * sharer's, so every block written whole is verified by the hash the whole file is checked with.
 *
 * The prediction: where the copy holds the list's chunks in order, block `b` of the new file is
 * the copy's bytes from `b * blockSize + shift`. Where a block's hash is not the sharer's (bytes
 * changed, inserted or removed), the block is worked out as the guided cut works (GuidedWalk: each
 * chunk hashed where it should be, FastCDC where it is not, until the list's chunks are found in
 * order again past the block's end); the chunks found are written one by one, hashed as written,
 * and the shift is what the walk found. Chunks not found are the caller's to fetch. More than
 * `maxFailedBlocks` failed blocks (a copy rearranged, a list that does not fit its blocks), or walks
 * that have hashed as many bytes as the copy holds or gone through more than `maxChunks` chunks:
 * the copy stops here (`gaveUp`).
 *
 * The local copy changed while it is read: a block read short is FILE_CHANGED (readFully); bytes
 * changed within it fail its hash and are worked out, or fetched. `signal`: CANCELLED between blocks.
 */
export async function predictedCopy(
  handle: FileHandle,
  localSize: number,
  remote: ChunkList,
  manifest: BlockManifest,
  writer: BlockWriter,
  options: {
    maxFailedBlocks: number;
    maxChunks: number;
    /**
     * The copy may be the sharer's version in place (same size): blocks found the sharer's where
     * they stand are not written until one is not, then written (read again) before going on; if
     * none differs, nothing is written at all (`sameVersion`).
     */
    holdUntilDifferent?: boolean;
    signal?: AbortSignal;
  },
): Promise<PredictedCopy> {
  const { chunks } = remote;
  const blockSize = manifest.blockSize;
  const blocks = manifest.blockHashes.length;
  const given = new Uint8Array(chunks.length);
  // Bytes of each chunk the new file holds, verified (a chunk may span blocks).
  const covered = new Float64Array(chunks.length);
  const result: PredictedCopy = { given, bytesReused: 0, blocksWorkedOut: 0, hashedBytes: 0, gaveUp: false, sameVersion: false };
  // Blocks 0 to held - 1 were found the sharer's in place and not written yet (holdUntilDifferent).
  let holding = options.holdUntilDifferent === true;
  let held = 0;
  // *Why a budget: 8 buffers of 16 MiB blocks (files of 16 GiB or more) held 128 MiB per update,
  // and a folder sync runs several (round 17).*
  const buffers = Math.min(MOST_BUFFERS, Math.max(LEAST_BUFFERS, Math.floor(BLOCK_BUFFER_BYTES / blockSize)));
  const blocksAhead = Math.min(3, buffers - 2);
  const ring = new BufferRing(buffers, Math.min(blockSize, remote.size));
  let walk: GuidedWalk | undefined;
  // Where the copy holds the list's chunks in order, the copy's offset of a byte of the new file is its offset + shift.
  let shift: number | undefined = 0;
  let first = 0; // the first chunk that reaches into the block in hand
  let walked = 0; // chunks the walks have found or cut, all blocks together

  /** The block's bytes read where the prediction puts them, or undefined where it puts them past the copy. */
  const readPredicted = (index: number): { index: number; from: number; slot: Promise<Slot>; read: Promise<void> } | undefined => {
    if (shift === undefined || index >= blocks) return undefined;
    const start = index * blockSize;
    const length = Math.min(blockSize, remote.size - start);
    const from = start + shift;
    if (from < 0 || from + length > localSize) return undefined;
    const slot = ring.take();
    const read = slot.then((s) => readFully(handle, s.buffer, length, from));
    read.catch(() => undefined); // met when the block is taken up
    return { index, from, slot, read };
  };
  // Blocks read ahead, in order, all at the shift they were predicted with.
  let ahead: NonNullable<ReturnType<typeof readPredicted>>[] = [];
  const dropAhead = async (): Promise<void> => {
    const dropped = ahead;
    ahead = [];
    for (const read of dropped) await ring.dropRead(read);
  };
  const readAhead = (after: number): void => {
    for (let index = (ahead[ahead.length - 1]?.index ?? after) + 1; ahead.length < blocksAhead && index < blocks; index++) {
      const read = readPredicted(index);
      if (!read) return;
      ahead.push(read);
    }
  };

  try {
    for (let index = 0; index < blocks; index++) {
      throwIfStopped(options.signal);
      ring.throwIfFailed();
      const start = index * blockSize;
      const end = Math.min(start + blockSize, remote.size);
      while (first < chunks.length && chunks[first].offset + chunks[first].length <= start) first++;
      // The block in hand, as read ahead if the prediction has not moved since.
      let current = ahead[0]?.index === index && shift !== undefined && ahead[0].from === start + shift ? ahead.shift() : undefined;
      if (!current) await dropAhead();
      current ??= readPredicted(index);
      // Past the end of the copy (a file that grew): nothing of the block is there; fetched.
      if (!current && shift === undefined) continue;
      if (current) {
        readAhead(index);
        const slot = await current.slot;
        await current.read;
        const bytes = slot.buffer.subarray(0, end - start);
        const hash = blake3(bytes);
        result.hashedBytes += bytes.length;
        if (hash.equals(manifest.blockHashes[index])) {
          if (holding) {
            ring.release(slot);
            held = index + 1;
          } else {
            slot.busy = writer.writeBlock(bytes, start, index, hash);
            slot.busy.catch(() => undefined); // met when the slot is taken again, or at the end
          }
          for (let i = first; i < chunks.length && chunks[i].offset < end; i++) {
            if (given[i]) continue;
            const chunk = chunks[i];
            covered[i] += Math.min(end, chunk.offset + chunk.length) - Math.max(start, chunk.offset);
            if (covered[i] >= chunk.length) given[i] = 1;
          }
          continue;
        }
        ring.release(slot);
        await dropAhead();
      }
      if (holding) await writeHeld();
      // The prediction failed (or fell outside the copy): the block is worked out chunk by chunk.
      if (++result.blocksWorkedOut > options.maxFailedBlocks) {
        result.gaveUp = true;
        break;
      }
      const from = shift === undefined ? undefined : Math.min(Math.max(0, chunks[first].offset + shift), localSize);
      if (from === undefined || from >= localSize) {
        shift = undefined; // nothing of the copy is left to walk: the rest is fetched
        continue;
      }
      const reader = new ForwardReader(handle, localSize, from);
      if (walk) walk.moveTo(reader, from, first);
      else walk = new GuidedWalk(remote, reader, localSize, from, first);
      const hashedBefore = walk.hashedBytes;
      let found: number | undefined | typeof TOO_COSTLY;
      try {
        found = await workOut(walk, end);
      } finally {
        result.hashedBytes += walk.hashedBytes - hashedBefore;
        await reader.close();
      }
      if (found === TOO_COSTLY) {
        result.gaveUp = true;
        break;
      }
      shift = found;
    }
    if (holding) {
      // Every block is the sharer's where it stands, and none was written.
      result.sameVersion = held === blocks && localSize === remote.size;
      if (!result.sameVersion) await writeHeld();
    }
    await ring.settled();
    // What the new file holds of the copy: each chunk given (a chunk not given is fetched whole,
    // over whatever of it a verified block wrote).
    result.bytesReused = 0;
    given.forEach((flag, i) => {
      if (flag) result.bytesReused += chunks[i].length;
    });
  } finally {
    // Nothing may still read into or write from the buffers once this returns.
    await dropAhead();
    await ring.settled().catch(() => undefined);
  }
  return result;

  /**
   * The blocks held (found the sharer's in place, not written) are written now, read again from the
   * copy: hashed as they are written, like any write (a copy changed since is FILE_CHANGED by the
   * caller's version check, or HASH_MISMATCH at the end, never landed).
   */
  async function writeHeld(): Promise<void> {
    holding = false;
    await dropAhead();
    for (let index = 0; index < held; index++) {
      throwIfStopped(options.signal);
      ring.throwIfFailed();
      const start = index * blockSize;
      const length = Math.min(blockSize, remote.size - start);
      const slot = await ring.take();
      await readFully(handle, slot.buffer, length, start);
      slot.busy = writer.write(slot.buffer.subarray(0, length), start);
      slot.busy.catch(() => undefined); // met when the slot is taken again, or at the end
    }
  }

  /**
   * Walks the copy from the walk's place until the list's chunks are found in order again at or
   * past the new file's offset `end` (returns the shift there), or the copy ends (undefined).
   * Each chunk found for a place not yet given is written there; chunks found for places next to
   * each other are written together (WriteRun). *Why: each was written alone, one system call and
   * one turn of the thread pool per chunk: a list of 100,000 one-byte chunks the copy holds, in a
   * block whose prediction failed, took 200,000 write calls and 5.9 s for a 21 MiB update (round 17).*
   */
  async function workOut(walk: GuidedWalk, end: number): Promise<number | undefined | typeof TOO_COSTLY> {
    const run = new WriteRun(writer, true);
    const found = await walkOn(walk, end, run);
    await run.flush();
    return found;
  }

  async function walkOn(walk: GuidedWalk, end: number, run: WriteRun): Promise<number | undefined | typeof TOO_COSTLY> {
    let sinceTurn = 0;
    while (walk.position < localSize) {
      throwIfStopped(options.signal);
      // The walks together hash at most as much as the copy holds. *Why: each walk starts again
      // from its failed block's place in the copy, and cuts until a chunk the list names: where
      // only the copy's tail was the sharer's (its first 40 MiB rewritten), each of the
      // max(16, blocks / 16) failed blocks cut the copy up to that tail again: a file of 49 MiB
      // was hashed and read 19 times over, 1.4 s (a 1 GiB file: up to 64 times; round 17).* Past
      // that, the guided cut (one pass, bounded the same way) finds what is left.
      if (walk.hashedBytes > localSize) return TOO_COSTLY;
      if (walk.guided && chunks[walk.next].offset >= end) return walk.position - chunks[walk.next].offset;
      if (!walk.guided && walk.next >= chunks.length) return undefined; // the list is done: nothing further is in order
      // A walk through a huge stretch the list does not name (a sparse 40 GiB copy): as a cut
      // stops past maxFileChunks, the prediction gives up, and the caller's cut says TOO_LARGE.
      if (++walked > options.maxChunks) return TOO_COSTLY;
      const { chunk, index, bytes } = await walk.step();
      if (index !== undefined && !given[index]) {
        // The run copies it out of the walk's buffer, which the walk's next step reuses.
        await run.add(bytes, chunks[index].offset);
        given[index] = 1;
        covered[index] = chunk.length;
      }
      if (++sinceTurn === TURN_CHUNKS) {
        sinceTurn = 0;
        await turn();
      }
    }
    return undefined;
  }
}

/** Bytes gathered by a WriteRun before it writes them, at most (plus one piece). */
const RUN_BYTES = 4 * 1024 * 1024;

/**
 * Pieces for the new file gathered while each is next to the one before, and written as one (the
 * chunks a walk found, a small local copy's places, the chunks fetched). `copying`: each piece is
 * copied as it is added, for a caller whose buffer changes once `add` returns (a walk's next step).
 */
export class WriteRun {
  private pieces: Buffer[] = [];
  private at = 0;
  private bytes = 0;

  constructor(
    private readonly writer: Pick<BlockWriter, 'write'>,
    private readonly copying = false,
  ) {}

  async add(data: Buffer, position: number): Promise<void> {
    if (this.bytes > 0 && (this.at + this.bytes !== position || this.bytes >= RUN_BYTES)) await this.flush();
    if (this.bytes === 0) this.at = position;
    this.pieces.push(this.copying ? Buffer.from(data) : data);
    this.bytes += data.length;
  }

  async flush(): Promise<void> {
    if (this.bytes === 0) return;
    const data = this.pieces.length === 1 ? this.pieces[0] : Buffer.concat(this.pieces, this.bytes);
    this.pieces = [];
    this.bytes = 0;
    await this.writer.write(data, this.at);
  }
}

interface Slot {
  buffer: Buffer;
  /** The write from this buffer still under way. */
  busy?: Promise<void>;
}

/** A few block buffers, each taken for a read and held until the write from it is done. */
class BufferRing {
  private readonly slots: Slot[];
  private turn = 0;
  /** The first write from a buffer that failed, once its buffer was taken again. */
  private failure: { error: unknown } | undefined;

  constructor(count: number, bytes: number) {
    this.slots = Array.from({ length: count }, () => ({ buffer: Buffer.allocUnsafe(bytes) }));
  }

  /**
   * The next buffer in turn, once the write from it (if any) is done. A write that failed is kept
   * (throwIfFailed, settled). *Why: it was dropped here, so a block whose write failed (a full
   * disk) eight blocks back was taken as written, with the sharer's hash: the update landed with
   * a hole where the block should be (round 17).*
   */
  async take(): Promise<Slot> {
    const slot = this.slots[this.turn];
    this.turn = (this.turn + 1) % this.slots.length;
    await slot.busy?.catch((error: unknown) => void (this.failure ??= { error }));
    slot.busy = undefined;
    return slot;
  }

  /** Throws the first write that failed, if one did. */
  throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }

  release(slot: Slot): void {
    slot.busy = undefined;
  }

  /** A read ahead not wanted after all: waits for it to end, then frees its buffer. */
  async dropRead(ahead: { slot: Promise<Slot>; read: Promise<void> }): Promise<void> {
    await ahead.read.catch(() => undefined);
    this.release(await ahead.slot);
  }

  /** Every write from the buffers has ended; the first failure is thrown. */
  async settled(): Promise<void> {
    await Promise.all(this.slots.map((slot) => slot.busy));
    this.throwIfFailed();
  }
}
