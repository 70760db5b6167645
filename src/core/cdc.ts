import { promises as fsp, readSync, type BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { BLAKE3_DIGEST_BYTES, blake3 } from './blake3';
import { PeerShareError } from './errors';
import { lastChangeNs, sameVersion, versionKey } from './hash-cache';
import { PARALLEL_CUT_FROM_BYTES, RACY_TIMESTAMP_MS, type Limits } from './limits';
import { startCutHelper, type CutHelper } from './cdc-helper';

/**
 * Content-defined chunks (FastCDC, Xia et al., USENIX ATC 2016), the parameters of
 * docs/protocol-v2.md 15.1. A boundary depends only on the bytes just before it, so an insertion
 * moves the boundaries of at most a chunk or two around it and every other chunk keeps its bytes
 * and its hash: an update that fetches the chunks it does not hold costs about the change, where
 * fixed blocks (blocks.ts) would re-send everything after an insertion.
 *
 * Fixed by the protocol (both sides must cut alike for chunks to match; a sharer cutting otherwise
 * is only slower, never wrong: every chunk is verified by its hash, and the file by its fileHash).
 */
export const CDC_MIN_BYTES = 16 * 1024;
export const CDC_AVG_BYTES = 64 * 1024;
export const CDC_MAX_BYTES = 256 * 1024;
/** Normalized chunking, level 2: harder to cut before the average (18 bits), easier after (14 bits). */
const MASK_SMALL = 0xffffc000 | 0;
const MASK_LARGE = 0xfffc0000 | 0;

/** gear[i] = the first 4 bytes (little-endian) of BLAKE3("PeerShare/cdc v1 gear" ‖ byte i). */
export const GEAR: Uint32Array = (() => {
  const table = new Uint32Array(256);
  const seed = Buffer.from('PeerShare/cdc v1 gear', 'ascii');
  for (let i = 0; i < 256; i++) table[i] = blake3(Buffer.concat([seed, Buffer.of(i)])).readUInt32LE(0);
  return table;
})();

/** One chunk of a file: where it lies and the BLAKE3 of its bytes. */
export interface Chunk {
  offset: number;
  length: number;
  hash: Buffer;
}

/**
 * What a cut reads a file through: a FileHandle, or in a helper thread the caller's descriptor
 * read synchronously (cdc-worker.ts), so no read is ever in flight when the thread is stopped.
 */
export interface ReadableFile {
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  stat(options: { bigint: true }): Promise<BigIntStats>;
}

/** A file's chunks, for the version whose block-list hash (blocks.ts) is `fileHash`. */
export interface ChunkList {
  size: number;
  fileHash: Buffer;
  chunks: Chunk[];
}

/**
 * The length of the chunk starting at `start` in `data[start, end)`. `end - start` must be at
 * least CDC_MAX_BYTES unless the data ends at `end` (the file's last bytes). Pure.
 * *Why one exit (`break found`, then `i - start`): with a return in each loop, the exit taken
 * rarely (a chunk cut at the maximum, the file's end) deoptimized the loop each time it was
 * first met, and V8 then kept this function unoptimized: cutting ran at 2 s per GiB, not 0.8.*
 */
export function cutLength(data: Uint8Array, start: number, end: number): number {
  const available = end - start;
  if (available <= CDC_MIN_BYTES) return available;
  const limit = start + Math.min(available, CDC_MAX_BYTES);
  const normal = start + Math.min(available, CDC_AVG_BYTES);
  let hash = 0;
  let i = start + CDC_MIN_BYTES;
  found: {
    while (i < normal) {
      hash = ((hash << 1) + GEAR[data[i++]]) | 0;
      if ((hash & MASK_SMALL) === 0) break found;
    }
    while (i < limit) {
      hash = ((hash << 1) + GEAR[data[i++]]) | 0;
      if ((hash & MASK_LARGE) === 0) break found;
    }
  }
  return i - start;
}

/** The chunks of bytes held in memory. Pure. */
export function chunkBytes(data: Uint8Array): Chunk[] {
  const chunks: Chunk[] = [];
  for (let offset = 0; offset < data.length; ) {
    const length = cutLength(data, offset, data.length);
    chunks.push({ offset, length, hash: blake3(data.subarray(offset, offset + length)) });
    offset += length;
  }
  return chunks;
}

/**
 * Bytes read at once while chunking a file: whole chunks are cut from it, the rest carried over.
 * 1 MiB (as blocks.ts hashes): a sharer may chunk a file for each of maxConcurrentRequests at once.
 */
const READ_BYTES = 1024 * 1024;

/**
 * Chunks a file in one streaming pass, reading ahead: while one buffer is cut, the next
 * READ_BYTES are read into the other (two buffers of CDC_MAX_BYTES + READ_BYTES; the bytes not
 * yet cut are carried to the front of the next). *Why: reading and cutting in turn left the
 * thread pool idle while the event loop cut, and the loop idle while it read (a third of a 1 GiB
 * update's first step).* A file of PARALLEL_CUT_FROM_BYTES or more is cut from both ends of the
 * machine at once where it has a second core: a helper thread cuts the second half while this one
 * cuts the first, and the two lists are joined where their cut points meet, so the result is
 * exactly the one-pass cut (cdc-helper.ts).
 *
 * Takes an open file (the caller opened it with its own checks) or a path. More than
 * `maxFileChunks` chunks: TOO_LARGE. A file that changes while it is read: FILE_CHANGED (its
 * chunks would describe no version of it). `onChunks`, if given, is called with the chunks cut so
 * far after each read (the same array, growing), so a caller may use them before the end.
 * `signal` stops the cut at its next chunk (CANCELLED), the helper with it.
 */
export async function chunkFile(
  file: FileHandle | string,
  limits: Pick<Limits, 'maxFileChunks'>,
  onChunks?: (chunks: readonly Chunk[]) => void,
  parallelFromBytes = PARALLEL_CUT_FROM_BYTES,
  signal?: AbortSignal,
): Promise<{ chunks: Chunk[]; version: BigIntStats; /** Whether a helper thread cut part of it. */ helped: boolean }> {
  const handle = typeof file === 'string' ? await fsp.open(file, 'r') : file;
  let helper: CutHelper | undefined;
  try {
    const version = await handle.stat({ bigint: true });
    if (!version.isFile()) throw new PeerShareError('NOT_A_FILE');
    const size = Number(version.size);
    // Decided by the size alone when it can be: no chunking of a file that cannot fit.
    if (size > limits.maxFileChunks * CDC_MAX_BYTES) throw tooManyChunks(limits.maxFileChunks);
    const chunks: Chunk[] = [];
    const middle = Math.floor(size / 2);
    helper = size >= parallelFromBytes ? startCutHelper(handle.fd, size, middle, limits.maxFileChunks) : undefined;
    let helped = false;
    if (!helper) {
      await cutFrom(handle, size, 0, chunks, limits, onChunks, undefined, signal);
    } else {
      // This half, then on past the middle until a cut point is one the helper also found.
      let end = await cutFrom(handle, size, 0, chunks, limits, onChunks, (at) => at >= middle, signal);
      const records = await helper.records;
      throwIfStopped(signal);
      const theirs = records && chunksOfRecords(records, middle);
      const starts = new Map(theirs?.map((chunk, i) => [chunk.offset, i]));
      if (end < size && !starts.has(end)) end = await cutFrom(handle, size, end, chunks, limits, onChunks, (at) => starts.has(at), signal);
      const from = starts.get(end);
      if (theirs && from !== undefined) {
        helped = true;
        for (let i = from; i < theirs.length; i++) chunks.push(theirs[i]);
        if (chunks.length > limits.maxFileChunks) throw tooManyChunks(limits.maxFileChunks);
        onChunks?.(chunks);
      }
    }
    if (!sameVersion(version, await handle.stat({ bigint: true }))) throw new PeerShareError('FILE_CHANGED');
    return { chunks, version, helped };
  } finally {
    // The helper reads through the same descriptor: it has stopped before the file is closed.
    await helper?.stop();
    if (typeof file === 'string') await handle.close();
  }
}

/**
 * Cuts `handle` from `from` (a chunk's start) into `chunks`, reading ahead, until the end of the
 * file or until `stop` is true of a chunk's end; returns where the last chunk ended.
 */
async function cutFrom(
  handle: FileHandle,
  size: number,
  from: number,
  chunks: Chunk[],
  limits: Pick<Limits, 'maxFileChunks'>,
  onChunks: ((chunks: readonly Chunk[]) => void) | undefined,
  stop: (at: number) => boolean = () => false,
  signal?: AbortSignal,
): Promise<number> {
  if (from >= size) return from;
  const reader = new ForwardReader(handle, size, from);
  try {
    let position = from;
    let reported = from;
    while (position < size) {
      throwIfStopped(signal);
      const available = Math.min(CDC_MAX_BYTES, size - position);
      const { buffer, at } = await reader.view(position, available);
      const length = cutLength(buffer, at, at + available);
      chunks.push({ offset: position, length, hash: blake3(buffer.subarray(at, at + length)) });
      if (chunks.length > limits.maxFileChunks) throw tooManyChunks(limits.maxFileChunks);
      position += length;
      if (stop(position)) break;
      if (position - reported >= READ_BYTES) {
        reported = position;
        onChunks?.(chunks);
      }
    }
    onChunks?.(chunks);
    return position;
  } finally {
    // A read still in flight (a throw while cutting, or a stop) must end before the file is closed.
    await reader.close();
  }
}

/**
 * Reads a file front to back, from `from`, for views of at most CDC_MAX_BYTES that only move
 * forward: each of two buffers holds the bytes carried from the one before (at most CDC_MAX_BYTES)
 * then one read of READ_BYTES, and the next read is in flight while a view of the current one is
 * used. A file that fits in one read takes one buffer.
 */
export class ForwardReader {
  private readonly buffers: Buffer[];
  private current = 0;
  /** The file's bytes [start, end) are in buffers[current] from `offset`. */
  private start: number;
  private end: number;
  private offset = CDC_MAX_BYTES;
  private readPosition: number;
  private inFlight: Promise<number> | undefined;

  constructor(
    private readonly handle: ReadableFile,
    private readonly size: number,
    from = 0,
  ) {
    this.start = this.end = this.readPosition = from;
    const readBytes = Math.min(READ_BYTES, size - from);
    // The first read goes into buffers[1]; buffers[0] is only read into if there is a second.
    this.buffers = [Buffer.allocUnsafe(size - from > readBytes ? CDC_MAX_BYTES + readBytes : 0), Buffer.allocUnsafe(CDC_MAX_BYTES + readBytes)];
    this.readAhead();
  }

  /** The bytes [position, position + length): valid until the next call. `position` never goes back. */
  async view(position: number, length: number): Promise<{ buffer: Buffer; at: number }> {
    while (position + length > this.end) {
      if (position < this.start || position > this.end || !this.inFlight) throw new Error('ForwardReader: a view out of order');
      // The bytes still wanted go just before where the read in flight puts its bytes.
      const carried = this.end - position;
      const other = this.buffers[1 - this.current];
      if (carried > 0) this.buffers[this.current].copy(other, CDC_MAX_BYTES - carried, this.offset + (position - this.start), this.offset + (this.end - this.start));
      const got = await this.inFlight;
      this.inFlight = undefined;
      this.current = 1 - this.current;
      this.start = position;
      this.end += got;
      this.offset = CDC_MAX_BYTES - carried;
      this.readAhead();
    }
    return { buffer: this.buffers[this.current], at: this.offset + (position - this.start) };
  }

  /** Resolves once no read is in flight (the file may then be closed). */
  async close(): Promise<void> {
    await this.inFlight?.catch(() => undefined);
  }

  /** Starts the next read into the buffer not in use, unless the file is all read. */
  private readAhead(): void {
    if (this.readPosition >= this.size) return;
    const into = this.buffers[1 - this.current];
    const length = Math.min(into.length - CDC_MAX_BYTES, this.size - this.readPosition);
    const at = this.readPosition;
    this.readPosition += length;
    this.inFlight = readInto(this.handle, into, CDC_MAX_BYTES, length, at).then(() => length);
    this.inFlight.catch(() => undefined); // met by the next view, or by close
  }
}

/**
 * The chunk records (spec 15.2: each chunk's length, then its hash) of the file open as `fd` from
 * `from` (a chunk's start) to its end, `size`, cut with synchronous reads: what a helper thread
 * runs (cdc-helper.ts). More than `maxChunks`: TOO_LARGE; the file shorter than `size`: FILE_CHANGED.
 */
export function cutRecordsSync(fd: number, size: number, from: number, maxChunks: number): Uint8Array {
  const records: Buffer[] = [];
  let count = 0;
  const buffer = Buffer.allocUnsafe(Math.min(size - from, READ_BYTES) + CDC_MAX_BYTES);
  let held = 0; // bytes in buffer, from file offset `base`
  let base = from;
  let position = from;
  while (base < size) {
    const room = Math.min(buffer.length - held, size - position);
    for (let done = 0; done < room; ) {
      const read = readSync(fd, buffer, held + done, room - done, position + done);
      if (read === 0) throw new PeerShareError('FILE_CHANGED');
      done += read;
    }
    held += room;
    position += room;
    const atEnd = position === size;
    let start = 0;
    const batch = Buffer.allocUnsafe(Math.ceil(held / CDC_MIN_BYTES + 1) * CHUNK_RECORD_BYTES);
    let used = 0;
    while (start < held && (atEnd || held - start >= CDC_MAX_BYTES)) {
      const length = cutLength(buffer, start, held);
      if (++count > maxChunks) throw tooManyChunks(maxChunks);
      batch.writeUInt32LE(length, used);
      blake3(buffer.subarray(start, start + length)).copy(batch, used + 4);
      used += CHUNK_RECORD_BYTES;
      start += length;
    }
    records.push(batch.subarray(0, used));
    buffer.copy(buffer, 0, start, held);
    held -= start;
    base += start;
  }
  // An ArrayBuffer of its own, to be handed to another thread without copying.
  const out = new Uint8Array(count * CHUNK_RECORD_BYTES);
  let at = 0;
  for (const part of records) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** The chunks of records cut from `from` (cutRecordsSync's), each hash a view of the records. */
export function chunksOfRecords(records: Uint8Array, from: number): Chunk[] {
  const bytes = Buffer.from(records.buffer, records.byteOffset, records.byteLength);
  const chunks: Chunk[] = [];
  let offset = from;
  for (let at = 0; at + CHUNK_RECORD_BYTES <= bytes.length; at += CHUNK_RECORD_BYTES) {
    const length = bytes.readUInt32LE(at);
    chunks.push({ offset, length, hash: bytes.subarray(at + 4, at + CHUNK_RECORD_BYTES) });
    offset += length;
  }
  return chunks;
}

/** A cut its caller no longer needs ends at its next chunk: CANCELLED. */
export function throwIfStopped(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new PeerShareError('CANCELLED', 'The cut was stopped.');
}

/** TOO_LARGE for a file of more than `maxFileChunks` chunks. */
export function tooManyChunks(maxFileChunks: number): PeerShareError {
  return new PeerShareError('TOO_LARGE', `The file has more than ${maxFileChunks} chunks; it is too large to update in chunks.`);
}

/** Reads exactly `length` bytes at file `position` into `buffer` at `at`; FILE_CHANGED if the file ends first. */
async function readInto(handle: ReadableFile, buffer: Buffer, at: number, length: number, position: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const { bytesRead } = await handle.read(buffer, at + done, length - done, position + done);
    if (bytesRead === 0) throw new PeerShareError('FILE_CHANGED');
    done += bytesRead;
  }
}

/** Bytes of one chunk on the wire (spec 15.2): its length (u32 LE), then its BLAKE3 hash. */
export const CHUNK_RECORD_BYTES = 4 + BLAKE3_DIGEST_BYTES;

/** The chunk records of spec 15.2 (offsets are implied: each chunk starts where the one before ended). */
export function encodeChunks(chunks: readonly Chunk[]): Buffer {
  const bytes = Buffer.allocUnsafe(chunks.length * CHUNK_RECORD_BYTES);
  chunks.forEach((chunk, i) => {
    bytes.writeUInt32LE(chunk.length, i * CHUNK_RECORD_BYTES);
    chunk.hash.copy(bytes, i * CHUNK_RECORD_BYTES + 4);
  });
  return bytes;
}

/**
 * Reads chunk records a peer sent, for a file of `size` bytes: every length from 1 to
 * CDC_MAX_BYTES, and together exactly `size`; else PROTOCOL_ERROR.
 */
export function decodeChunks(bytes: Buffer, size: number): Chunk[] {
  if (bytes.length % CHUNK_RECORD_BYTES !== 0) throw new PeerShareError('PROTOCOL_ERROR', 'The chunk list is not a whole number of records.');
  const own = Buffer.from(bytes);
  const chunks: Chunk[] = [];
  let offset = 0;
  for (let at = 0; at < own.length; at += CHUNK_RECORD_BYTES) {
    const length = own.readUInt32LE(at);
    if (length < 1 || length > CDC_MAX_BYTES || offset + length > size) {
      throw new PeerShareError('PROTOCOL_ERROR', 'The chunk list has a chunk of an impossible length.');
    }
    chunks.push({ offset, length, hash: own.subarray(at + 4, at + CHUNK_RECORD_BYTES) });
    offset += length;
  }
  if (offset !== size) throw new PeerShareError('PROTOCOL_ERROR', `The chunk list covers ${offset} bytes of a file of ${size}.`);
  return chunks;
}

/**
 * What one chunk of a list held in memory costs, about: its object, its hash's Buffer, that
 * Buffer's own backing store and the 32 bytes (measured on Node 20 with chunkFile's lists: 281
 * bytes of heap and 32 outside it; counted at 160 until the chunk attack suite measured it, the
 * cache held twice its bound).
 */
export const CHUNK_MEMORY_BYTES = 320;

/**
 * The sharer's chunk lists, in memory, by file version (device, inode, size, mtime and ctime to
 * the nanosecond, as the block cache), least recently used evicted past `chunkCacheBytes` (each
 * chunk counted at CHUNK_MEMORY_BYTES). The racy rule of block-cache.ts holds: a list is kept only when
 * the file's last change is RACY_TIMESTAMP_MS older than the moment its chunking started.
 * *Why in memory: a list is recomputed at disk speed, is asked for by a peer that updates, and
 * the block cache's disk format is not widened for it yet.*
 */
export class ChunkListCache {
  /** A list, or `tooLarge` for a version found to have more than maxFileChunks chunks (counted as one chunk). */
  private readonly entries = new Map<string, { list: Chunk[] | 'tooLarge'; bytes: number }>();
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  get(version: BigIntStats): Chunk[] | undefined {
    const list = this.lookUp(version);
    return list === 'tooLarge' ? undefined : list;
  }

  /**
   * Whether this version was found to have too many chunks. *Why remembered: finding it out reads
   * the file up to maxFileChunks chunks (8 GiB at the average size); without this, every
   * share.chunks of such a file read that much again (found by the chunk attack suite).*
   */
  isTooLarge(version: BigIntStats): boolean {
    return this.lookUp(version) === 'tooLarge';
  }

  /** Keeps `list` unless the file changed within RACY_TIMESTAMP_MS before `startedMs`. */
  put(version: BigIntStats, list: Chunk[], startedMs: number, racyMs = RACY_TIMESTAMP_MS): void {
    this.keep(version, list, startedMs, racyMs);
  }

  /** Remembers that this version has too many chunks, by the same rules as put. */
  putTooLarge(version: BigIntStats, startedMs: number, racyMs = RACY_TIMESTAMP_MS): void {
    this.keep(version, 'tooLarge', startedMs, racyMs);
  }

  private lookUp(version: BigIntStats): Chunk[] | 'tooLarge' | undefined {
    const key = versionKey(version);
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry.list;
  }

  private keep(version: BigIntStats, list: Chunk[] | 'tooLarge', startedMs: number, racyMs: number): void {
    if (startedMs - Number(lastChangeNs(version) / 1_000_000n) < racyMs) return;
    const bytes = (list === 'tooLarge' ? 1 : list.length) * CHUNK_MEMORY_BYTES;
    if (bytes > this.maxBytes) return;
    const key = versionKey(version);
    const old = this.entries.get(key);
    if (old) this.bytes -= old.bytes;
    this.entries.delete(key);
    this.entries.set(key, { list, bytes });
    this.bytes += bytes;
    for (const [oldest, entry] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(oldest);
      this.bytes -= entry.bytes;
    }
  }
}
