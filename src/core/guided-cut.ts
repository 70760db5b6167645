import type { BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { setImmediate as turn } from 'node:timers/promises';
import { blake3 } from './blake3';
import { PeerShareError } from './errors';
import { sameVersion } from './hash-cache';
import { CDC_MAX_BYTES, ForwardReader, chunksOfRecords, cutLength, throwIfStopped, tooManyChunks, type Chunk, type ChunkList, type ReadableFile } from './cdc';
import { startGuidedCutHelper } from './cdc-helper';
import { PARALLEL_CUT_FROM_BYTES, type Limits } from './limits';

/**
 * Cuts a local copy into chunks with the sharer's chunk list as a guide (issue 13): where the
 * local copy holds the sharer's bytes, its chunks are the sharer's, so each next chunk is first
 * tried where the list says it starts (one BLAKE3 of its bytes, no cut). Where that fails (the
 * bytes changed, were inserted or removed), the copy is cut as chunkFile cuts it (FastCDC) from
 * the end of the last chunk that matched, until a chunk it cuts is one the list names; the guide
 * then goes on from that chunk of the list. When the list is done, the rest of the copy is cut.
 *
 * *Why: cutting every byte cost 0.75 CPU-s per GiB in the gear loop, on both cores, before a
 * byte of an update could be copied; hashing the chunks where they are expected costs only the
 * BLAKE3 that a cut also pays.*
 *
 * One forward pass: every byte of the copy is hashed once as part of a chunk, and failed tries
 * stop guiding once they have hashed as many bytes as the copy holds, so a list that lies (chunks
 * the copy never holds, made to fail at every place) costs at most about twice a plain cut. The chunks returned are the copy's own bytes and
 * their hashes, as chunkFile's are: a caller matches them by hash, and a chunk the list names that
 * the copy does not hold is simply not found. More than `maxFileChunks` chunks: TOO_LARGE; the copy
 * changed while it was read: FILE_CHANGED; `signal` aborted: CANCELLED, at the next chunk.
 */
export async function guidedCut(
  handle: ReadableFile,
  guide: ChunkList,
  limits: Pick<Limits, 'maxFileChunks'>,
  onChunks?: (chunks: readonly Chunk[]) => void,
  signal?: AbortSignal,
): Promise<{ chunks: Chunk[]; version: BigIntStats; /** Bytes hashed, failed tries included. */ hashedBytes: number; /** Bytes cut without the guide. */ cutBytes: number }> {
  const version = await handle.stat({ bigint: true });
  if (!version.isFile()) throw new PeerShareError('NOT_A_FILE');
  const size = Number(version.size);
  if (size > limits.maxFileChunks * CDC_MAX_BYTES) throw tooManyChunks(limits.maxFileChunks);
  const walk = new GuidedWalk(guide, new ForwardReader(handle, size), size, 0, 0);
  const chunks: Chunk[] = [];
  try {
    let reported = 0;
    let sinceTurn = 0; // chunks since the event loop last had a turn
    while (walk.position < size) {
      throwIfStopped(signal);
      chunks.push((await walk.step()).chunk);
      if (chunks.length > limits.maxFileChunks) throw tooManyChunks(limits.maxFileChunks);
      if (onChunks && walk.position - reported >= REPORT_BYTES) {
        reported = walk.position;
        onChunks(chunks);
      }
      // The event loop gets a turn only when a read must be waited for, once per 1 MiB read: a
      // list of tiny chunks the copy holds (130,000 of one byte) was found within one read and
      // held the loop for the whole run (0.4-0.9 s; round 15). A turn every TURN_CHUNKS chunks.
      if (++sinceTurn === TURN_CHUNKS) {
        sinceTurn = 0;
        await turn();
      }
    }
    onChunks?.(chunks);
  } finally {
    // A read still in flight (a throw here) must end before the caller closes the file.
    await walk.reader.close();
  }
  const { hashedBytes, cutBytes } = walk;
  if (!sameVersion(version, await handle.stat({ bigint: true }))) throw new PeerShareError('FILE_CHANGED');
  return { chunks, version, hashedBytes, cutBytes };
}

/**
 * The guided cut's walk through a copy (guidedCut, and block-copy.ts where a block's prediction
 * failed): from `position` in the copy, with the list's chunk `next` expected there, each step
 * finds one chunk of the copy, either the one the list expects (its hash matched where it should
 * be) or one cut by FastCDC, and says which of the list's chunks it is, if any.
 */
export class GuidedWalk {
  /** The list's chunks by hash and length, each with its places in ascending order. */
  private readonly named = new Map<string, number[]>();
  /** The copy's offset of the next chunk. */
  position: number;
  /** The list's chunk expected at `position`, while `guided`. */
  next: number;
  guided: boolean;
  /** Bytes hashed where the list's chunk was not. */
  private failedTries = 0;
  hashedBytes = 0;
  cutBytes = 0;

  constructor(
    private readonly guide: ChunkList,
    public reader: ForwardReader,
    private readonly size: number,
    position: number,
    next: number,
  ) {
    guide.chunks.forEach((chunk, index) => {
      const key = keyOf(chunk.hash, chunk.length);
      const indexes = this.named.get(key);
      if (indexes) indexes.push(index);
      else this.named.set(key, [index]);
    });
    this.position = position;
    this.next = next;
    this.guided = next < guide.chunks.length;
  }

  /** Goes on from another place: `position` in the copy (read by `reader` from there), the list's chunk `next` expected there. */
  moveTo(reader: ForwardReader, position: number, next: number): void {
    this.reader = reader;
    this.position = position;
    this.next = next;
    this.guided = next < this.guide.chunks.length;
  }

  /**
   * The copy's next chunk from `position` (which must be short of the copy's size), the index in
   * the list it was taken for, and its bytes (valid until the next step).
   */
  async step(): Promise<{ chunk: Chunk; index?: number; bytes: Buffer }> {
    const { position, size, guide } = this;
    if (this.guided) {
      const index = this.next;
      const expected = guide.chunks[index];
      if (position + expected.length <= size) {
        const { buffer, at } = await this.reader.view(position, expected.length);
        const bytes = buffer.subarray(at, at + expected.length);
        const hash = blake3(bytes);
        this.hashedBytes += expected.length;
        if (hash.equals(expected.hash)) {
          if (++this.next === guide.chunks.length) this.guided = false;
          this.position += expected.length;
          return { chunk: { offset: position, length: expected.length, hash }, index, bytes };
        }
      }
      this.guided = false;
      this.failedTries += expected.length;
    }
    const { buffer, at } = await this.reader.view(position, Math.min(CDC_MAX_BYTES, size - position));
    const length = cutLength(buffer, at, at + Math.min(CDC_MAX_BYTES, size - position));
    const bytes = buffer.subarray(at, at + length);
    const hash = blake3(bytes);
    this.hashedBytes += length;
    this.cutBytes += length;
    this.position += length;
    // A chunk the list names: the guide goes on after it (after its first place at or past the
    // chunk that failed, where the list names it more than once), unless failed tries have hashed
    // as much as the copy holds (a list made to fail at every chunk).
    const places = this.named.get(keyOf(hash, length));
    let index: number | undefined;
    if (places && this.failedTries < size) {
      index = places[firstAtLeast(places, this.next)] ?? places[0];
      this.next = index + 1;
      this.guided = this.next < guide.chunks.length;
    }
    return { chunk: { offset: position, length, hash }, index, bytes };
  }
}

/**
 * guidedCut in a helper thread (cdc-helper.ts), for a copy of `asideFromBytes` or more
 * where the machine has a second core: the same chunks, reported to `onChunks` as they come.
 * *Why: an update copies the local chunks into the new file as the cut finds them; with both in
 * one thread, the cut's hashing and the copy's (the new file's block hashes) took turns, and a
 * 1 GiB update kept one core busy where it had two.* Without a helper, or if the thread fails, the
 * cut runs here (from the start: its chunks are the same, so what was reported stays true).
 */
export async function guidedCutAside(
  handle: FileHandle,
  guide: ChunkList,
  limits: Pick<Limits, 'maxFileChunks'>,
  onChunks?: (chunks: readonly Chunk[]) => void,
  signal?: AbortSignal,
  asideFromBytes = PARALLEL_CUT_FROM_BYTES,
): ReturnType<typeof guidedCut> {
  const version = await handle.stat({ bigint: true });
  const chunks: Chunk[] = [];
  const helper =
    version.isFile() && version.size >= asideFromBytes && !signal?.aborted
      ? startGuidedCutHelper(handle.fd, guide, limits.maxFileChunks, (records, from) => {
          for (const chunk of chunksOfRecords(records, from)) chunks.push(chunk);
          onChunks?.(chunks);
        })
      : undefined;
  if (!helper) return guidedCut(handle, guide, limits, onChunks, signal);
  let onAbort: (() => void) | undefined;
  const stopped = new Promise<undefined>((resolve) => signal?.addEventListener('abort', (onAbort = () => resolve(undefined))));
  try {
    const outcome = await Promise.race([helper.outcome, stopped]);
    throwIfStopped(signal);
    if (outcome instanceof PeerShareError) throw outcome;
    // The thread failed: the cut runs here.
    if (outcome === undefined) {
      await helper.stop();
      return await guidedCut(handle, guide, limits, onChunks, signal);
    }
    if (!sameVersion(version, await handle.stat({ bigint: true }))) throw new PeerShareError('FILE_CHANGED');
    return { chunks, version, ...outcome };
  } finally {
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    // The thread reads through the same descriptor: it has stopped before the caller may close it.
    await helper.stop();
  }
}

function keyOf(hash: Buffer, length: number): string {
  return `${length}:${hash.toString('hex')}`;
}

/** The index of the first of `sorted` at least `value` (sorted.length if none). */
function firstAtLeast(sorted: number[], value: number): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle] < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** The chunks found so far are handed on at least this often (a copy can start on them). */
const REPORT_BYTES = 4 * 1024 * 1024;
/** Chunks found between two turns of the event loop, at most (a few ms of one-byte chunks; 64 MiB of the average chunk). */
const TURN_CHUNKS = 1024;
