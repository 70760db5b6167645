import { blake3 } from '../blake3';
import { CDC_MAX_BYTES, CHUNK_RECORD_BYTES, decodeChunks, type Chunk, type ChunkList } from '../cdc';
import { blockRange, decodeBlockManifest, forgetVerified, isValidBlockSize, type BlockManifest, verifyBlock } from '../blocks';
import { PeerShareError, toPeerShareError } from '../errors';
import { MAX_FREE_BLOCK_BUFFER_BYTES, type Limits } from '../limits';
import { inspectReceivedName, nameDigest, type UnsafeHere } from '../names';
import { parseEntry, sanitizeForDisplay, shownType, type Entry } from '../protocol';
import type { Answer, AnswerReader, Connection } from './connection';
import type { WireMessage } from './frames';
import { END_ERROR_CODES, MAX_PEER_MESSAGE_CHARS, isOneOf, type EndErrorCode, type EndOkMessage } from './messages';
import type { WatchBatch } from '../watch';
import { WATCH_REQUEST, parseWatchReply, type WatchReply } from './watch-messages';
import {
  MAX_INLINE_CHUNKS_FILE_BYTES,
  MAX_INLINE_FILE_BYTES,
  MAX_LIST_BATCH_ENTRIES,
  blockListBytes,
  checkBlockListBounds,
  isFileHashHex,
  isSafeUint,
  isWireTime,
  manifestOfBytes,
  rangesOf,
  type BlockRanges,
  type ShareRequest,
} from './share-messages';

/**
 * The requester's side of capability `share/1` (docs/protocol-v2.md 6.5): typed calls over a v2
 * Connection, each answer read by one explicit state machine (iroh-blobs' get::fsm). Every count,
 * size and name the peer sends is bounded by OUR limits (the connection's) before it is used;
 * every block is verified against the block list before it is handed on.
 *
 * Failures: the peer's END error keeps its wire code, marked as the peer's; a breach of share/1
 * (a frame no state expects, a count that does not match, a list that does not hash to its
 * fileHash) closes the connection with PROTOCOL_ERROR; TOO_LARGE, BAD_NAME, HASH_MISMATCH and
 * SIZE_MISMATCH cancel the request and leave the connection open.
 */
export interface ManifestAnswer {
  manifest: BlockManifest;
  /** The file's modification time as the sharer stated it (ms). */
  mtimeMs: number;
}

/** A block of a file, verified against its manifest: what partial-file.ts takes. */
export interface VerifiedBlock {
  index: number;
  data: Buffer;
  /**
   * Gives `data` back for the next block to be read into, once nothing uses it any more (its
   * write settled). Optional to call: a block never released is left to the garbage collector.
   */
  release(): void;
}

/**
 * Block buffers of one connection, reused: a fresh buffer of a block's size is memory the kernel
 * must map and zero, and the collector must later find, at every block (about a fifth of the
 * receiver's CPU for a large file). A few are kept, each a whole block of the size asked; a
 * shorter last block is a slice of one. A buffer given back is forgotten by verifyBlockOnce first,
 * so what it held can never vouch for what it will hold.
 */
class BlockBuffers {
  private readonly free: Buffer[] = [];
  private freeBytes = 0;

  take(blockSize: number, length: number): Buffer {
    const at = this.free.findIndex((b) => b.length === blockSize);
    if (at < 0) return Buffer.allocUnsafeSlow(blockSize).subarray(0, length);
    const [buffer] = this.free.splice(at, 1);
    this.freeBytes -= buffer.length;
    return buffer.subarray(0, length);
  }

  give(data: Buffer, blockSize: number): void {
    forgetVerified(data);
    if (this.freeBytes + blockSize > MAX_FREE_BLOCK_BUFFER_BYTES) return;
    // take() hands out slices of buffers of their own (allocUnsafeSlow), so the whole one is data's ArrayBuffer.
    const whole = Buffer.from(data.buffer, data.byteOffset, blockSize);
    this.free.push(whole);
    this.freeBytes += blockSize;
  }
}

/**
 * A record of a folder stream. `path` is relative to the folder asked for and has the form of a
 * relative path (names.ts); `unsafeHere` says a well-formed name must not be written on this
 * machine (`.git`, `.vscode`, reserved…) and the receiver leaves it out. Paths are raw: escape them
 * (sanitizeForDisplay) to show them. A `file`'s bytes are verified against its `fileHash`.
 */
export type TreeRecord =
  | { kind: 'dir'; path: string; components: string[]; unsafeHere?: UnsafeHere }
  | { kind: 'file'; path: string; components: string[]; unsafeHere?: UnsafeHere; size: number; mtimeMs: number; manifest: BlockManifest; data: Buffer }
  | { kind: 'fileRef'; path: string; components: string[]; unsafeHere?: UnsafeHere; size: number; mtimeMs: number }
  | { kind: 'skipped'; path: string; code: EndErrorCode; message: string };

export interface RequestOptions {
  signal?: AbortSignal;
}

/** One reader: its state, and what each REPLY, DATA slice and END does to it. Anything a state does not expect throws. */
interface AnswerMachine<Item, Result> {
  readonly state: string;
  reply(message: WireMessage): Item | undefined;
  data(chunk: Buffer): Item[];
  end(message: EndOkMessage): Result;
}

/**
 * Runs an answer through its machine, written once for every request: REPLY and DATA in order,
 * then the END. What the machine produces is yielded as it completes (a verified block, a tree
 * record); the machine's result is the generator's return value. A PROTOCOL_ERROR closes the
 * connection (spec 6.5); any throw leaves the iteration, which cancels the request.
 */
async function* runAnswer<Item, Result>(connection: Connection, answer: Answer<Item>, machine: AnswerMachine<Item, Result>): AsyncGenerator<Item, Result, undefined> {
  try {
    for await (const part of answer) {
      // The machine read each REPLY and DATA as it arrived (machineReader): here is what it made.
      if (part.kind !== 'read') throw new PeerShareError('INTERNAL', `An answer read by its machine delivered a ${part.kind} part.`);
      for (const item of part.items) yield item;
    }
    return machine.end(await answer.result);
  } catch (err) {
    // Only the machine's own PROTOCOL_ERROR (the peer broke the protocol) closes the connection;
    // a bug of ours, or of a caller's callback, is ours (INTERNAL) and never blamed on the peer.
    const coded = toPeerShareError(err, 'INTERNAL');
    if (coded.code === 'PROTOCOL_ERROR') connection.close(coded);
    throw coded;
  }
}

/** A machine as the connection's AnswerReader: it reads each part as it arrives (see AnswerReader for why). */
function machineReader<Item>(machine: AnswerMachine<Item, unknown>): AnswerReader<Item> {
  return {
    reply: (message) => {
      const item = machine.reply(message);
      return item === undefined ? [] : [item];
    },
    data: (chunk) => machine.data(chunk),
  };
}

/** Drains a reader that yields nothing until its end. */
async function resultOf<Result>(run: AsyncGenerator<unknown, Result, undefined>): Promise<Result> {
  for (;;) {
    const step = await run.next();
    if (step.done) return step.value;
  }
}

function breach(message: string): PeerShareError {
  return new PeerShareError('PROTOCOL_ERROR', message);
}

function unexpected(what: string, state: string): PeerShareError {
  return breach(`The peer sent ${what} where share/1 expects none (${state}).`);
}

function messageName(message: WireMessage): string {
  return `"${shownType(message.type)}"`;
}

/** END `end {count}` must count exactly what arrived (spec 6.3). */
function checkCount(end: EndOkMessage, received: number, what: string): void {
  if (end.count !== received) throw breach(`The peer said it sent ${shownType(end.count)} ${what} but sent ${received}.`);
}

// ---- the machines (spec 6.5)

/** share.stat — Waiting: END `entry` → Done. */
class StatMachine implements AnswerMachine<never, Entry> {
  state: 'waiting' | 'done' = 'waiting';

  reply(message: WireMessage): never {
    throw unexpected(`the message ${messageName(message)}`, this.state);
  }

  data(): never {
    throw unexpected('data', this.state);
  }

  end(message: EndOkMessage): Entry {
    const entry = parseEntry(message.entry);
    this.state = 'done';
    return entry;
  }
}

/** share.list — Listing: REPLY `entries` → Listing; END `end` → Done. Bounded by maxListEntries and maxListBytes. */
class ListMachine implements AnswerMachine<never, Entry[]> {
  state: 'listing' | 'done' = 'listing';
  private readonly entries: Entry[] = [];
  private readonly seen = new Set<string>();
  private nameBytes = 0;

  constructor(
    private readonly limits: Limits,
    private readonly onBatch?: (entries: Entry[]) => void,
  ) {}

  reply(message: WireMessage): undefined {
    const batch = message.entries;
    if (message.type !== 'entries' || !Array.isArray(batch) || batch.length === 0 || batch.length > MAX_LIST_BATCH_ENTRIES) {
      throw breach(`Expected a batch of 1 to ${MAX_LIST_BATCH_ENTRIES} entries, got ${messageName(message)}.`);
    }
    // Counted before anything is parsed or kept.
    if (this.entries.length + batch.length > this.limits.maxListEntries) {
      throw new PeerShareError('TOO_LARGE', `The listing has more than ${this.limits.maxListEntries} entries.`);
    }
    const parsed = batch.map(parseEntry);
    for (const entry of parsed) {
      if (entry.name === '' || entry.name.includes('/') || entry.name === '.' || entry.name === '..' || this.seen.has(entry.name)) {
        throw new PeerShareError('BAD_NAME', 'The peer listed an invalid or duplicate name.');
      }
      this.seen.add(entry.name);
      this.nameBytes += Buffer.byteLength(entry.name, 'utf8');
    }
    if (this.nameBytes > this.limits.maxListBytes) throw new PeerShareError('TOO_LARGE', `The listing's names take more than ${this.limits.maxListBytes} bytes.`);
    this.entries.push(...parsed);
    this.onBatch?.(parsed);
    return undefined;
  }

  data(): never {
    throw unexpected('data', this.state);
  }

  end(message: EndOkMessage): Entry[] {
    checkCount(message, this.entries.length, 'entries');
    this.state = 'done';
    return this.entries;
  }
}

/** A list of a length announced in a header (a block list, chunk records), filled from DATA; never past its length. */
class AnnouncedList {
  readonly bytes: Buffer;
  private filled = 0;

  constructor(length: number) {
    this.bytes = Buffer.allocUnsafe(length);
  }

  get complete(): boolean {
    return this.filled === this.bytes.length;
  }

  get filledBytes(): number {
    return this.filled;
  }

  /** Takes one DATA chunk; `what` names the list in the breach when the peer sends more than announced. */
  add(chunk: Buffer, what: string): void {
    if (this.filled + chunk.length > this.bytes.length) throw breach(`The peer sent more ${what} than it announced.`);
    chunk.copy(this.bytes, this.filled);
    this.filled += chunk.length;
  }
}

/**
 * share.manifest — Header: REPLY `manifest` → List; List: DATA until the whole block list is in,
 * then it is checked; END with the list in → Done. The header's size and block size are bounded
 * before the list's buffer is allocated.
 */
class ManifestMachine implements AnswerMachine<never, ManifestAnswer> {
  state: 'header' | 'list' | 'checked' = 'header';
  private header?: { size: number; mtimeMs: number; blockSize: number; fileHash: string };
  private list = new AnnouncedList(0);
  private manifest?: BlockManifest;

  constructor(
    private readonly limits: Limits,
    private readonly expectedFileHash?: Buffer,
  ) {}

  reply(message: WireMessage): undefined {
    if (this.state !== 'header') throw unexpected(`the message ${messageName(message)}`, this.state);
    const { size, mtimeMs, blockSize, fileHash } = message;
    if (message.type !== 'manifest' || !isSafeUint(size) || !isWireTime(mtimeMs) || !isValidBlockSize(blockSize) || !isFileHashHex(fileHash)) {
      throw breach(`Expected a manifest {size, mtimeMs, blockSize, fileHash}, got ${messageName(message)} with fields out of bounds.`);
    }
    const count = checkBlockListBounds(size, blockSize, this.limits);
    this.header = { size, mtimeMs, blockSize, fileHash };
    this.list = new AnnouncedList(blockListBytes(count));
    this.state = 'list';
    return undefined;
  }

  data(chunk: Buffer): never[] {
    if (this.state !== 'list') throw unexpected('data', this.state);
    this.list.add(chunk, 'block list');
    if (this.list.complete) this.check();
    return [];
  }

  /** The list must repeat the header's size and block size and hash to its fileHash (spec 6.3). */
  private check(): void {
    const header = this.header!;
    const manifest = decodeBlockManifest(this.list.bytes, this.limits);
    if (manifest.size !== header.size || manifest.blockSize !== header.blockSize) throw breach('The block list does not describe the file its manifest announced.');
    if (manifest.fileHash.toString('hex') !== header.fileHash) throw breach('The block list does not hash to the fileHash its manifest announced.');
    this.manifest = manifest;
    this.state = 'checked';
  }

  end(): ManifestAnswer {
    if (this.state !== 'checked') throw breach('The peer ended the manifest before the whole block list arrived.');
    const manifest = this.manifest!;
    if (this.expectedFileHash && !manifest.fileHash.equals(this.expectedFileHash)) {
      throw new PeerShareError('HASH_MISMATCH', 'The file on the peer is not the version expected (its block list has another hash).');
    }
    return { manifest, mtimeMs: this.header!.mtimeMs };
  }
}

/**
 * share.read — Block(i): DATA → Block(i), and when block i is complete it is verified and the
 * machine moves to Block(next); END `end` with every block in → Done. The answer's DATA is read
 * as one byte stream cut at the block lengths the manifest gives, so bytes beyond a block go to
 * the next one (and fail its hash), and bytes beyond the last block asked for break the spec.
 */
class BlockMachine implements AnswerMachine<VerifiedBlock, void> {
  state: 'block' | 'done';
  private at = 0;
  private index = 0;
  private block?: Buffer;
  private filled = 0;

  constructor(
    private readonly manifest: BlockManifest,
    private readonly indices: number[],
    private readonly buffers: BlockBuffers,
  ) {
    this.state = indices.length > 0 ? 'block' : 'done';
  }

  reply(message: WireMessage): never {
    throw unexpected(`the message ${messageName(message)}`, this.state);
  }

  data(chunk: Buffer): VerifiedBlock[] {
    const complete: VerifiedBlock[] = [];
    for (let offset = 0; offset < chunk.length; ) {
      if (this.state !== 'block') throw breach('The peer sent more bytes than the blocks asked for.');
      if (!this.block) {
        this.index = this.indices[this.at];
        // At most one block (≤ 16 MiB, spec 12.2) is held before it is verified.
        this.block = this.buffers.take(this.manifest.blockSize, blockRange(this.manifest, this.index).length);
        this.filled = 0;
      }
      const take = Math.min(this.block.length - this.filled, chunk.length - offset);
      chunk.copy(this.block, this.filled, offset, offset + take);
      this.filled += take;
      offset += take;
      if (this.filled < this.block.length) continue;
      // Verified before it leaves here; a block that fails is dropped (HASH_MISMATCH).
      verifyBlock(this.index, this.block, this.manifest);
      const data = this.block;
      let released = false;
      const release = (): void => {
        if (released) return;
        released = true;
        this.buffers.give(data, this.manifest.blockSize);
      };
      complete.push({ index: this.index, data, release });
      this.block = undefined;
      if (++this.at === this.indices.length) this.state = 'done';
    }
    return complete;
  }

  end(): void {
    if (this.state !== 'done') {
      throw new PeerShareError('SIZE_MISMATCH', `The peer ended the read after ${this.at} of ${this.indices.length} blocks; the rest was not sent.`);
    }
  }
}

/**
 * share.tree — Items: REPLY `dir` / `fileRef` / `skipped` → Items; REPLY `file` → Inline;
 * Inline: DATA until `size`, verified → Items; END `end` → Done. Bounded as spec 6.3 says: every
 * record counts against maxTreeFiles, folders against maxTreeDepth, an inline file against
 * MAX_INLINE_FILE_BYTES before its buffer exists; a name of the wrong form stops the stream
 * (BAD_NAME); a path reported skipped twice breaks the spec. (Keeping at most maxSkippedReports
 * reports is the consumer's: each is yielded once, and counted here.)
 */
class TreeMachine implements AnswerMachine<TreeRecord, { count: number }> {
  state: 'items' | 'inline' | 'done' = 'items';
  private records = 0;
  private items = 0;
  private readonly skipped = new Set<string>();
  private inline?: { named: { path: string; components: string[]; unsafeHere?: UnsafeHere }; mtimeMs: number; blockSize: number; fileHash: string; data: Buffer; filled: number };

  constructor(private readonly limits: Limits) {}

  reply(message: WireMessage): TreeRecord | undefined {
    if (this.state !== 'items') throw unexpected(`the message ${messageName(message)}`, this.state);
    switch (message.type) {
      case 'dir':
        return { kind: 'dir', ...this.named(message.path, true) };
      case 'fileRef': {
        const { size, mtimeMs } = message;
        if (!isSafeUint(size) || !isWireTime(mtimeMs)) throw breach('A fileRef record has an invalid size or time.');
        const named = this.named(message.path, false);
        this.records++;
        return { kind: 'fileRef', ...named, size, mtimeMs };
      }
      case 'file':
        return this.startInline(message);
      case 'skipped':
        return this.skippedRecord(message);
      default:
        throw unexpected(`the message ${messageName(message)}`, this.state);
    }
  }

  private startInline(message: WireMessage): TreeRecord | undefined {
    const { size, mtimeMs, blockSize, fileHash } = message;
    if (!isSafeUint(size) || !isWireTime(mtimeMs) || !isValidBlockSize(blockSize) || !isFileHashHex(fileHash)) {
      throw breach('A file record has an invalid size, time, block size or hash.');
    }
    // Before its buffer exists: an inline file is held whole until it is verified.
    if (size > MAX_INLINE_FILE_BYTES) {
      throw new PeerShareError('TOO_LARGE', `The peer sent a file of ${size} bytes inline; at most ${MAX_INLINE_FILE_BYTES} are allowed.`);
    }
    const named = this.named(message.path, false);
    this.records++;
    this.inline = { named, mtimeMs, blockSize, fileHash, data: Buffer.allocUnsafe(size), filled: 0 };
    this.state = 'inline';
    return size === 0 ? this.finishInline() : undefined;
  }

  private skippedRecord(message: WireMessage): TreeRecord {
    const path = message.path;
    // The form is checked (a hostile path stops the stream); whether it could be written does not matter.
    inspectReceivedName(path, this.limits.maxPathBytes);
    if (!isOneOf(END_ERROR_CODES, message.code)) throw breach(`A skipped record carries the code "${shownType(message.code)}", which a peer may not send.`);
    // Memory does not grow with the length of the names.
    const key = nameDigest(path as string);
    if (this.skipped.has(key)) throw breach('The peer reported the same path skipped twice.');
    this.skipped.add(key);
    this.countItem();
    const text = typeof message.message === 'string' ? sanitizeForDisplay(message.message.slice(0, MAX_PEER_MESSAGE_CHARS)) : '';
    return { kind: 'skipped', path: path as string, code: message.code, message: text };
  }

  /** The received-name rules (names.ts), depth and count: BAD_NAME for a malformed path, TOO_LARGE past the bounds. */
  private named(path: unknown, isDir: boolean): { path: string; components: string[]; unsafeHere?: UnsafeHere } {
    const { components, unsafeHere } = inspectReceivedName(path, this.limits.maxPathBytes);
    const folders = isDir ? components.length : components.length - 1;
    if (folders > this.limits.maxTreeDepth) throw new PeerShareError('TOO_LARGE', `The folder is nested deeper than ${this.limits.maxTreeDepth} levels.`);
    this.countItem();
    return unsafeHere ? { path: path as string, components, unsafeHere } : { path: path as string, components };
  }

  private countItem(): void {
    if (++this.items > this.limits.maxTreeFiles) throw new PeerShareError('TOO_LARGE', `The folder has more than ${this.limits.maxTreeFiles} files and folders.`);
  }

  data(chunk: Buffer): TreeRecord[] {
    const inline = this.inline;
    if (this.state !== 'inline' || !inline) throw unexpected('data', this.state);
    if (inline.filled + chunk.length > inline.data.length) throw breach('The peer sent more bytes than the inline file has.');
    chunk.copy(inline.data, inline.filled);
    inline.filled += chunk.length;
    return inline.filled === inline.data.length ? [this.finishInline()] : [];
  }

  /** An inline file is verified in memory before anything may write it: its block list must hash to its fileHash. */
  private finishInline(): TreeRecord {
    const { named, mtimeMs, blockSize, fileHash, data } = this.inline!;
    this.inline = undefined;
    this.state = 'items';
    const manifest = manifestOfBytes(data, blockSize);
    if (manifest.fileHash.toString('hex') !== fileHash) {
      throw new PeerShareError('HASH_MISMATCH', `The file ${sanitizeForDisplay(named.path).slice(0, 120)} does not match its BLAKE3 hash; it was discarded.`);
    }
    return { kind: 'file', ...named, size: data.length, mtimeMs, manifest, data };
  }

  end(message: EndOkMessage): { count: number } {
    if (this.state === 'inline') throw breach('The folder stream ended inside a file.');
    checkCount(message, this.records, 'files');
    this.state = 'done';
    return { count: this.records };
  }
}

/**
 * share.chunks (spec 15.2) — Header: REPLY `chunks` → List; List: DATA until `count` records are
 * in → Checked, or with `inline` → Bytes until `size` bytes are in, each chunk then verified against
 * its hash → Checked; END once Checked → Done. `count` is bounded by maxFileChunks before the list's
 * buffer exists, and must be able to cover `size` (each chunk at most CDC_MAX_BYTES); an inline
 * answer nobody asked for, or of more than MAX_INLINE_CHUNKS_FILE_BYTES, is a breach.
 */
class ChunksMachine implements AnswerMachine<never, ChunksAnswer> {
  state: 'header' | 'list' | 'bytes' | 'checked' = 'header';
  private header?: { size: number; mtimeMs: number; fileHash: Buffer; inline: boolean };
  private list = new AnnouncedList(0);
  private bytes = new AnnouncedList(0);
  private chunks: Chunk[] = [];

  constructor(
    private readonly limits: Limits,
    private readonly askedInline: boolean,
  ) {}

  reply(message: WireMessage): undefined {
    if (this.state !== 'header') throw unexpected(`the message ${messageName(message)}`, this.state);
    const { size, mtimeMs, fileHash, count, inline } = message;
    if (message.type !== 'chunks' || !isSafeUint(size) || !isWireTime(mtimeMs) || !isFileHashHex(fileHash) || !isSafeUint(count) || (inline !== undefined && inline !== true)) {
      throw breach(`Expected chunks {size, mtimeMs, fileHash, count}, got ${messageName(message)} with fields out of bounds.`);
    }
    if (inline === true && (!this.askedInline || size > MAX_INLINE_CHUNKS_FILE_BYTES)) throw breach(`The peer sent ${size} bytes inline that were not asked for.`);
    if (count > this.limits.maxFileChunks) {
      throw new PeerShareError('TOO_LARGE', `The peer described a file of ${count} chunks; at most ${this.limits.maxFileChunks} are accepted.`);
    }
    if (count * CDC_MAX_BYTES < size || count > size) throw breach(`${count} chunks cannot make a file of ${size} bytes.`);
    this.header = { size, mtimeMs, fileHash: Buffer.from(fileHash, 'hex'), inline: inline === true };
    this.list = new AnnouncedList(count * CHUNK_RECORD_BYTES);
    this.state = 'list';
    if (count === 0) this.listIn();
    return undefined;
  }

  data(slice: Buffer): never[] {
    if (this.state === 'list') {
      // The list and the bytes after it may share a DATA frame.
      const take = Math.min(slice.length, this.list.bytes.length - this.list.filledBytes);
      this.list.add(slice.subarray(0, take), 'chunk records');
      if (this.list.complete) this.listIn();
      slice = slice.subarray(take);
      if (slice.length === 0) return [];
    }
    if (this.state !== 'bytes') throw unexpected('data', this.state);
    this.bytes.add(slice, 'file bytes');
    if (this.bytes.complete) this.bytesIn();
    return [];
  }

  private listIn(): void {
    this.chunks = decodeChunks(this.list.bytes, this.header!.size);
    if (!this.header!.inline) {
      this.state = 'checked';
      return;
    }
    this.bytes = new AnnouncedList(this.header!.size);
    this.state = 'bytes';
    if (this.header!.size === 0) this.bytesIn();
  }

  private bytesIn(): void {
    const data = this.bytes.bytes;
    for (const chunk of this.chunks) {
      if (!blake3(data.subarray(chunk.offset, chunk.offset + chunk.length)).equals(chunk.hash)) {
        throw new PeerShareError('HASH_MISMATCH', 'A file the peer sent with its chunk list does not match the list; it was discarded.');
      }
    }
    this.state = 'checked';
  }

  end(): ChunksAnswer {
    if (this.state !== 'checked') throw breach('The peer ended the chunk list before all of it arrived.');
    const { size, mtimeMs, fileHash, inline } = this.header!;
    return { size, mtimeMs, fileHash, chunks: this.chunks, ...(inline ? { data: this.bytes.bytes } : {}) };
  }
}

/** A chunk list (spec 15.2) and, when the file was sent inline, its bytes, every chunk verified. */
export type ChunksAnswer = ChunkList & { mtimeMs: number; data?: Buffer };

/** A chunk of a file, verified against its hash in the chunk list (spec 15.3). */
export interface VerifiedChunk {
  index: number;
  data: Buffer;
}

/**
 * share.readChunks — Chunk(i): DATA → Chunk(i), verified when complete, then Chunk(next); END
 * with every chunk in → Done. As BlockMachine: one byte stream cut at the chunk lengths of the
 * list, so bytes beyond a chunk land in the next (and fail its hash).
 */
class ChunkReadMachine implements AnswerMachine<VerifiedChunk, void> {
  state: 'chunk' | 'done';
  private at = 0;
  private chunk?: Buffer;
  private filled = 0;

  constructor(
    private readonly list: ChunkList,
    private readonly indices: number[],
  ) {
    this.state = indices.length > 0 ? 'chunk' : 'done';
  }

  reply(message: WireMessage): never {
    throw unexpected(`the message ${messageName(message)}`, this.state);
  }

  data(bytes: Buffer): VerifiedChunk[] {
    const complete: VerifiedChunk[] = [];
    for (let offset = 0; offset < bytes.length; ) {
      if (this.state !== 'chunk') throw breach('The peer sent more bytes than the chunks asked for.');
      const wanted = this.list.chunks[this.indices[this.at]];
      // At most one chunk (≤ 256 KiB) is held before it is verified.
      this.chunk ??= Buffer.allocUnsafe(wanted.length);
      const take = Math.min(this.chunk.length - this.filled, bytes.length - offset);
      bytes.copy(this.chunk, this.filled, offset, offset + take);
      this.filled += take;
      offset += take;
      if (this.filled < this.chunk.length) continue;
      if (!blake3(this.chunk).equals(wanted.hash)) {
        throw new PeerShareError('HASH_MISMATCH', `Chunk ${this.indices[this.at] + 1} of the file does not match its BLAKE3 hash; it was discarded.`);
      }
      complete.push({ index: this.indices[this.at], data: this.chunk });
      this.chunk = undefined;
      this.filled = 0;
      if (++this.at === this.indices.length) this.state = 'done';
    }
    return complete;
  }

  end(): void {
    if (this.state !== 'done') {
      throw new PeerShareError('SIZE_MISMATCH', `The peer ended the read after ${this.at} of ${this.indices.length} chunks; the rest was not sent.`);
    }
  }
}

/** share.watch (spec 14.3) — Arming: REPLY `watching` → Watching; Watching: REPLY `changes` / `resync` → Watching; END → Done. */
class WatchMachine implements AnswerMachine<WatchReply, void> {
  state: 'arming' | 'watching' | 'done' = 'arming';

  constructor(private readonly tree: boolean) {}

  reply(message: WireMessage): WatchReply {
    const parsed = parseWatchReply(message, this.tree);
    if ((this.state === 'arming') !== (parsed.kind === 'watching')) {
      throw breach(this.state === 'arming' ? 'A watch must start with "watching".' : 'The peer said "watching" twice.');
    }
    this.state = 'watching';
    return parsed;
  }

  data(): never {
    throw unexpected('data', this.state);
  }

  end(): void {
    this.state = 'done';
  }
}

/** A watch of a peer's folder, armed: `ended` settles when it stops (stop(), the signal: resolves; the peer's error or the connection's end: rejects). */
export interface RemoteFolderWatch {
  readonly ended: Promise<void>;
  stop(): void;
}

// ---- the calls

export class ShareClient {
  readonly limits: Limits;

  private readonly blockBuffers = new BlockBuffers();

  /**
   * `capability` names the requests: `share` (share/1), or `send` for send/1's outbox, which
   * answers the same messages (docs/protocol-v2.md 13.2) so a sent file is received as a download.
   */
  constructor(
    readonly connection: Connection,
    private readonly capability: 'share' | 'send' = 'share',
  ) {
    this.limits = connection.limits;
  }

  stat(path: string, options: RequestOptions = {}): Promise<Entry> {
    return resultOf(this.run({ type: 'share.stat', path }, new StatMachine(), options));
  }

  /** A folder's entries; `onBatch` sees them as they arrive. */
  list(path: string, options: RequestOptions & { onBatch?: (entries: Entry[]) => void } = {}): Promise<Entry[]> {
    return resultOf(this.run({ type: 'share.list', path }, new ListMachine(this.limits, options.onBatch), options));
  }

  /**
   * A file's block list, checked (spec 6.3, 7.2). `expect` refuses another version than the one
   * listed (FILE_CHANGED from the peer); `expectedFileHash` (a resume, a second source) another
   * list (HASH_MISMATCH); `rehash` asks the sharer to hash the file again (see recheckAfterBadBlock).
   */
  manifest(
    path: string,
    options: RequestOptions & { expect?: { size: number; mtimeMs: number }; expectedFileHash?: Buffer; rehash?: true } = {},
  ): Promise<ManifestAnswer> {
    const request = { type: 'share.manifest' as const, path, ...(options.expect ? { expect: options.expect } : {}), ...(options.rehash ? { rehash: true } : {}) };
    return resultOf(this.run(request, new ManifestMachine(this.limits, options.expectedFileHash), options));
  }

  /**
   * The blocks `indices` of the file `manifest` describes, each verified (verifyBlock) before it
   * is yielded, in ascending order. More ranges than maxReadRanges go in several reads, one after
   * another. A block that fails its hash ends the iteration with HASH_MISMATCH (the read is
   * cancelled, the connection stays, nothing of that block is yielded); the rule of spec 7.2 that
   * follows (ask once with rehash) is the CALLER's: recheckAfterBadBlock.
   */
  async *readBlocks(path: string, manifest: BlockManifest, indices: Iterable<number>, options: RequestOptions = {}): AsyncGenerator<VerifiedBlock, void, undefined> {
    const ranges = rangesOf(indices, manifest.blockHashes.length);
    const fileHash = manifest.fileHash.toString('hex');
    for (let start = 0; start < ranges.length; start += this.limits.maxReadRanges) {
      const blocks: BlockRanges = ranges.slice(start, start + this.limits.maxReadRanges);
      const wanted: number[] = [];
      for (const [first, end] of blocks) for (let index = first; index < end; index++) wanted.push(index);
      yield* this.run({ type: 'share.read', path, fileHash, blocks }, new BlockMachine(manifest, wanted, this.blockBuffers), options);
    }
  }

  /** A file's content-defined chunks and its fileHash (spec 15.2), bounded by maxFileChunks. */
  chunks(path: string, options: RequestOptions & { inline?: boolean } = {}): Promise<ChunksAnswer> {
    const request: ShareRequest = options.inline ? { type: 'share.chunks', path, inline: true } : { type: 'share.chunks', path };
    return resultOf(this.run(request, new ChunksMachine(this.limits, options.inline === true), options));
  }

  /**
   * The chunks `indices` of the file `list` describes (spec 15.3), each verified against its hash
   * before it is yielded, in ascending order; several reads past maxReadRanges. A chunk that fails
   * ends the iteration with HASH_MISMATCH (the read is cancelled).
   */
  async *readChunks(path: string, list: ChunkList, indices: Iterable<number>, options: RequestOptions = {}): AsyncGenerator<VerifiedChunk, void, undefined> {
    const ranges = rangesOf(indices, list.chunks.length);
    const fileHash = list.fileHash.toString('hex');
    for (let start = 0; start < ranges.length; start += this.limits.maxReadRanges) {
      const chunks: BlockRanges = ranges.slice(start, start + this.limits.maxReadRanges);
      const wanted: number[] = [];
      for (const [first, end] of chunks) for (let index = first; index < end; index++) wanted.push(index);
      yield* this.run({ type: 'share.readChunks', path, fileHash, chunks }, new ChunkReadMachine(list, wanted), options);
    }
  }

  /** A folder as a stream of records (spec 6.3); returns the stream's count of files. */
  tree(path: string, options: RequestOptions = {}): AsyncGenerator<TreeRecord, { count: number }, undefined> {
    return this.run({ type: 'share.tree', path }, new TreeMachine(this.limits), options);
  }

  /**
   * Spec 7.2, after readBlocks threw HASH_MISMATCH: asks the manifest once more with `rehash`.
   * Another fileHash: the file changed on the sharer; the new manifest is returned (keep the
   * verified blocks whose hash is the same at the same index, fetch the rest against it). The same
   * fileHash: the peer sent bytes its own fresh block list contradicts; the connection is closed
   * with PROTOCOL_ERROR and HASH_MISMATCH is thrown (this peer is no source for this file).
   */
  async recheckAfterBadBlock(path: string, manifest: BlockManifest, options: RequestOptions = {}): Promise<ManifestAnswer> {
    const fresh = await this.manifest(path, { ...options, rehash: true });
    if (!fresh.manifest.fileHash.equals(manifest.fileHash)) return fresh;
    this.connection.close(breach('The peer sent a block that its own freshly hashed block list contradicts.'));
    throw new PeerShareError('HASH_MISMATCH', 'The peer sent a block that does not match its BLAKE3 hash in the file\'s block list; nothing of it was kept.');
  }

  /**
   * Watches a folder of the peer's share (spec 14): resolves once the sharer's watcher runs, so a
   * listing made after it misses no change; then `onChanges` hears each batch (apply `added` and
   * `changed` as "put this entry", `removed` as "drop this name": they are idempotent) or `resync`
   * (list the folder again). Names are raw: escape them (sanitizeForDisplay) to show them. At most
   * maxWatchesPerConnection at once per connection, or the peer answers BUSY. `tree`: the whole
   * subtree (spec 14.5): a change's path is then the path below `path` ('/'-separated).
   */
  async watch(path: string, options: RequestOptions & { onChanges: (batch: WatchBatch) => void; tree?: boolean }): Promise<RemoteFolderWatch> {
    const stopper = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, stopper.signal]) : stopper.signal;
    const tree = options.tree === true;
    const run = this.run({ type: WATCH_REQUEST, path, ...(tree ? { tree } : {}) }, new WatchMachine(tree), { signal, longLived: true });
    // Long-lived once armed; until the sharer says it watches, the stall deadline holds (a sharer
    // that never arms must not hold the Peers view's folder, or `ls --watch`, for ever).
    const notArmed = new PeerShareError('TIMEOUT', 'The peer did not start watching the folder in time.');
    const arming = setTimeout(() => stopper.abort(notArmed), this.limits.stallTimeoutMs);
    let armed: IteratorResult<unknown>;
    try {
      armed = await run.next();
    } catch (err) {
      throw stopper.signal.reason === notArmed ? notArmed : err;
    } finally {
      clearTimeout(arming);
    }
    if (armed.done) throw breach('The watch ended before the sharer said it was watching.');
    const ended = (async (): Promise<void> => {
      for (;;) {
        const step = await run.next();
        if (step.done) return;
        if (step.value.kind === 'watching') continue;
        try {
          options.onChanges(step.value);
        } catch (err) {
          // The caller's bug: the watch stops (CANCEL), and the error is the caller's, not the peer's.
          await run.return(undefined);
          throw err;
        }
      }
    })().catch((err: unknown) => {
      // Our own stop (or the caller's signal) ends it as asked.
      if (signal.aborted && toPeerShareError(err).code === 'CANCELLED') return;
      throw err;
    });
    ended.catch(() => undefined);
    return { ended, stop: () => stopper.abort() };
  }

  private run<Item, Result>(
    message: { type: `share.${string}`; [member: string]: unknown },
    machine: AnswerMachine<Item, Result>,
    options: RequestOptions & { longLived?: boolean },
  ): AsyncGenerator<Item, Result, undefined> {
    const named = this.capability === 'share' ? message : { ...message, type: `${this.capability}.${message.type.slice('share.'.length)}` as const };
    const answer = this.connection.request(named, { signal: options.signal, longLived: options.longLived, reader: machineReader(machine) });
    return runAnswer(this.connection, answer, machine);
  }
}
