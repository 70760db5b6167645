import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { BLAKE3_DIGEST_BYTES, blake3, createBlake3, type Blake3Hasher } from './blake3';
import { PeerShareError } from './errors';
import { sameVersion } from './hash-cache';
import { TRANSFER_CHUNK_BYTES, type Limits } from './limits';

/**
 * A file as verified blocks: its size, its block size and the BLAKE3 hash of every block, known
 * to the receiver before the data, so each block is checked on arrival, in any order, from any
 * peer that has the same file.
 *
 * Block size (Syncthing's rule, lib/protocol BlockSize): the smallest power of two from 128 KiB
 * to 16 MiB that gives the file fewer than 2000 blocks, else 16 MiB. Small blocks make resume
 * and (later) delta and multi-source fine-grained; the cap on their number keeps a block list
 * small (at most 64 KiB below 32 GiB) and the per-block work negligible. Every block is
 * `blockSize` bytes except the last, which holds the rest; an empty file has no blocks.
 */
export const MIN_BLOCK_BYTES = 128 * 1024;
export const MAX_BLOCK_BYTES = 16 * 1024 * 1024;
const DESIRED_BLOCKS_PER_FILE = 2000;

/**
 * The block list's encoding, which is also what the file hash is the hash of:
 *
 *   bytes 0-15   "PeerShare/b3 v1\n" (ASCII)
 *   bytes 16-23  file size, unsigned 64-bit little-endian
 *   bytes 24-27  block size, unsigned 32-bit little-endian
 *   then         the 32-byte BLAKE3 hash of each block, in order
 *
 * THE FILE HASH is BLAKE3 of these bytes. It is what the rest of the product calls the file's
 * hash. Not BLAKE3 of the content (which `b3sum` prints): that would make every byte hashed
 * twice on both ends, once for its block and once for the file, and a download that gets its
 * blocks out of order or resumes from any set of blocks would have to read the whole file again
 * at the end. This way each byte is hashed once, and the file hash follows from the verified
 * block hashes. It commits to the content as firmly: a different file needs a different block
 * hash somewhere, or a BLAKE3 collision. The header binds size and block size, so one list of
 * hashes can never describe two files.
 */
const MANIFEST_MAGIC = 'PeerShare/b3 v1\n';
const SIZE_OFFSET = 16;
const BLOCK_SIZE_OFFSET = 24;
export const MANIFEST_HEADER_BYTES = 28;

export interface BlockManifest {
  size: number;
  blockSize: number;
  blockHashes: Buffer[];
  /** BLAKE3 of `encodeBlockManifest(this)`: the file's hash. */
  fileHash: Buffer;
}

export function blockSizeFor(fileSize: number): number {
  let blockSize = MIN_BLOCK_BYTES;
  while (blockSize < MAX_BLOCK_BYTES && fileSize >= DESIRED_BLOCKS_PER_FILE * blockSize) blockSize *= 2;
  return blockSize;
}

export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

/** Where block `index` lies in the file. */
export function blockRange(manifest: BlockManifest, index: number): { offset: number; length: number } {
  const offset = index * manifest.blockSize;
  return { offset, length: Math.min(manifest.blockSize, manifest.size - offset) };
}

/** The manifest of a file from its block hashes, with its file hash. */
export function manifestFromBlockHashes(size: number, blockSize: number, blockHashes: Buffer[]): BlockManifest {
  const manifest: BlockManifest = { size, blockSize, blockHashes, fileHash: Buffer.alloc(0) };
  manifest.fileHash = blake3(encodeBlockManifest(manifest));
  return manifest;
}

export function encodeBlockManifest(manifest: Pick<BlockManifest, 'size' | 'blockSize' | 'blockHashes'>): Buffer {
  const bytes = Buffer.allocUnsafe(MANIFEST_HEADER_BYTES + manifest.blockHashes.length * BLAKE3_DIGEST_BYTES);
  bytes.write(MANIFEST_MAGIC, 0, 'latin1');
  bytes.writeBigUInt64LE(BigInt(manifest.size), SIZE_OFFSET);
  bytes.writeUInt32LE(manifest.blockSize, BLOCK_SIZE_OFFSET);
  manifest.blockHashes.forEach((hash, index) => hash.copy(bytes, MANIFEST_HEADER_BYTES + index * BLAKE3_DIGEST_BYTES));
  return bytes;
}

/**
 * Reads a block list a peer sent: hostile until every field is checked against the protocol and
 * the limits. With `expectedFileHash` (from a listing), a list for another version of the file
 * is refused too.
 */
export function decodeBlockManifest(
  bytes: Uint8Array,
  limits: Pick<Limits, 'maxFileBlocks' | 'maxManifestBytes'>,
  expectedFileHash?: Uint8Array,
): BlockManifest {
  if (bytes.length > limits.maxManifestBytes) {
    throw new PeerShareError('TOO_LARGE', `The peer sent a block list of ${bytes.length} bytes; at most ${limits.maxManifestBytes} are accepted.`);
  }
  const invalid = (detail: string) => new PeerShareError('PROTOCOL_ERROR', 'The peer sent a block list that does not follow the PeerShare protocol.', { detail });
  // A private copy: the caller may reuse its buffer, and the hashes below are views of this one.
  const own = Buffer.from(bytes);
  if (own.length < MANIFEST_HEADER_BYTES || own.toString('latin1', 0, SIZE_OFFSET) !== MANIFEST_MAGIC) throw invalid('block list: bad header');
  const size = own.readBigUInt64LE(SIZE_OFFSET);
  const blockSize = own.readUInt32LE(BLOCK_SIZE_OFFSET);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`block list: file size ${size} too large`);
  if (!isValidBlockSize(blockSize)) throw invalid(`block list: block size ${blockSize} is not a power of two from ${MIN_BLOCK_BYTES} to ${MAX_BLOCK_BYTES}`);
  const count = blockCount(Number(size), blockSize);
  if (count > limits.maxFileBlocks) {
    throw new PeerShareError('TOO_LARGE', `The peer described a file of ${count} blocks; at most ${limits.maxFileBlocks} are accepted.`);
  }
  if (own.length !== MANIFEST_HEADER_BYTES + count * BLAKE3_DIGEST_BYTES) {
    throw invalid(`block list: ${own.length - MANIFEST_HEADER_BYTES} bytes of hashes for ${count} blocks`);
  }
  const blockHashes: Buffer[] = [];
  for (let index = 0; index < count; index++) {
    const start = MANIFEST_HEADER_BYTES + index * BLAKE3_DIGEST_BYTES;
    blockHashes.push(own.subarray(start, start + BLAKE3_DIGEST_BYTES));
  }
  const fileHash = blake3(own);
  if (expectedFileHash !== undefined && !fileHash.equals(expectedFileHash)) {
    throw new PeerShareError('HASH_MISMATCH', 'The block list the peer sent is not the one of the file it listed; nothing was downloaded.');
  }
  return { size: Number(size), blockSize, blockHashes, fileHash };
}

/**
 * Throws unless `data` is exactly block `index` of the file `manifest` describes: its length and
 * its BLAKE3 hash. A block that fails is to be discarded, never written under the file's name.
 */
export function verifyBlock(index: number, data: Uint8Array, manifest: BlockManifest): void {
  if (!Number.isSafeInteger(index) || index < 0 || index >= manifest.blockHashes.length) {
    throw new PeerShareError('PROTOCOL_ERROR', 'The peer sent a block that the file does not have.', { detail: `block ${index} of ${manifest.blockHashes.length}` });
  }
  const { length } = blockRange(manifest, index);
  if (data.length !== length) {
    throw new PeerShareError('SIZE_MISMATCH', `Block ${index + 1} of the file came with ${data.length} bytes instead of ${length}; it was discarded.`);
  }
  if (!blake3(data).equals(manifest.blockHashes[index])) {
    throw new PeerShareError('HASH_MISMATCH', `Block ${index + 1} of the file does not match its BLAKE3 hash; it was discarded.`);
  }
  verified.set(data, { manifest, index });
}

/**
 * Buffers that verifyBlock passed, with what they were checked against, so a block verified on
 * arrival is not hashed a second time where it is written (PartialFile.write): the receiver's
 * BLAKE3 cost is one pass over the bytes. Keyed by the buffer itself, so only verifyBlock can vouch
 * for one; callers hand a verified buffer on and never change it.
 */
const verified = new WeakMap<Uint8Array, { manifest: BlockManifest; index: number }>();

/** Withdraws what verifyBlock said of `data`: its buffer is about to hold other bytes. */
export function forgetVerified(data: Uint8Array): void {
  verified.delete(data);
}

/** verifyBlock, skipped when this very buffer already passed it for the same manifest and index. */
export function verifyBlockOnce(index: number, data: Uint8Array, manifest: BlockManifest): void {
  const seen = verified.get(data);
  if (seen && seen.manifest === manifest && seen.index === index) return;
  verifyBlock(index, data, manifest);
}

/**
 * Hashes a local file into its manifest in one streaming pass, with one read buffer of whole
 * blocks (1 MiB, or one block when blocks are larger). Takes an open file (the caller opened it
 * with its own checks) or a path. A file that changes while it is read is refused, since its
 * hashes would describe no version of it.
 */
export async function hashFileBlocks(file: FileHandle | string, limits: Pick<Limits, 'maxFileBlocks' | 'maxManifestBytes'>): Promise<BlockManifest> {
  const handle = typeof file === 'string' ? await fsp.open(file, 'r') : file;
  let reading: Promise<number> | undefined;
  try {
    const before = await handle.stat({ bigint: true });
    if (!before.isFile()) throw new PeerShareError('NOT_A_FILE');
    const size = Number(before.size);
    const blockSize = blockSizeFor(size);
    const count = blockCount(size, blockSize);
    if (count > limits.maxFileBlocks || MANIFEST_HEADER_BYTES + count * BLAKE3_DIGEST_BYTES > limits.maxManifestBytes) {
      throw new PeerShareError('TOO_LARGE', `This file is too large to send: it would have ${count} blocks, and at most ${limits.maxFileBlocks} are allowed.`);
    }
    const blocksPerRead = Math.max(1, Math.floor(TRANSFER_CHUNK_BYTES / blockSize));
    const readBytes = Math.min(blocksPerRead * blockSize, size);
    // Two buffers: the next read runs while the bytes of the last are hashed. *Why: reading and
    // hashing in turn left the thread pool idle while the event loop hashed, and the loop idle
    // while it read.*
    const buffers = [Buffer.allocUnsafe(readBytes), Buffer.allocUnsafe(size > readBytes ? readBytes : 0)];
    const blockHashes: Buffer[] = [];
    let position = 0;
    const readNext = (into: Buffer): Promise<number> => {
      const length = Math.min(readBytes, size - position);
      const at = position;
      position += length;
      return readFully(handle, into, length, at).then(() => length);
    };
    let turn = 0;
    reading = size > 0 ? readNext(buffers[turn]) : undefined;
    while (reading) {
      const length = await reading;
      const buffer = buffers[turn];
      turn = 1 - turn;
      reading = position < size ? readNext(buffers[turn]) : undefined;
      for (let start = 0; start < length; start += blockSize) {
        blockHashes.push(blake3(buffer.subarray(start, Math.min(start + blockSize, length))));
      }
    }
    if (!sameVersion(before, await handle.stat({ bigint: true }))) throw new PeerShareError('FILE_CHANGED');
    return manifestFromBlockHashes(size, blockSize, blockHashes);
  } finally {
    // A read still in flight (the file was found changed) ends before the file is closed.
    await reading?.catch(() => undefined);
    if (typeof file === 'string') await handle.close();
  }
}

/**
 * The block hashes of a file being written, taken from the bytes as they are handed to the disk
 * where they come in order within a block; a block written out of order, twice, or not at all is
 * read back at the end. *Why: an update verified its result by reading the whole new file back
 * (0.3-0.4 s per GiB on the benchmark machine) when almost every byte had just passed through
 * memory in order; now only the few blocks around what was fetched are read back.*
 */
export class WrittenBlockHashes {
  private readonly hashes: (Buffer | undefined)[];
  private readonly hashers: (Blake3Hasher | undefined)[];
  /** Bytes of each block hashed so far, in order; -1 once it was written out of order. */
  private readonly hashed: Float64Array;

  constructor(
    readonly size: number,
    readonly blockSize: number,
  ) {
    const count = blockCount(size, blockSize);
    this.hashes = new Array<Buffer | undefined>(count).fill(undefined);
    this.hashers = new Array<Blake3Hasher | undefined>(count).fill(undefined);
    this.hashed = new Float64Array(count);
  }

  /** `data` is being written at `position`; it must not change until the write is done. */
  wrote(data: Uint8Array, position: number): void {
    for (let from = 0; from < data.length; ) {
      const at = position + from;
      const index = Math.floor(at / this.blockSize);
      // At or past the end (only a bug of ours could write there): the size check finds it.
      if (at >= this.size || index >= this.hashes.length) return;
      const start = index * this.blockSize;
      const end = Math.min(start + this.blockSize, this.size);
      const take = Math.min(data.length - from, end - at);
      if (this.hashed[index] === at - start && this.hashes[index] === undefined) {
        const hasher = (this.hashers[index] ??= createBlake3());
        hasher.update(data.subarray(from, from + take));
        this.hashed[index] += take;
        if (start + this.hashed[index] === end) {
          this.hashes[index] = hasher.digest();
          this.hashers[index] = undefined;
        }
      } else {
        this.hashed[index] = -1;
        this.hashes[index] = undefined;
        this.hashers[index] = undefined;
      }
      from += take;
    }
  }

  /**
   * Block `index` is being written whole, from bytes whose hash is `hash` (hashed by the caller
   * from the very buffer being written). Taken as that block's hash only if nothing of the block
   * was written before; else it is read back at the end.
   */
  wroteBlock(index: number, hash: Buffer): void {
    if (index >= this.hashes.length) return;
    if (this.hashed[index] === 0 && this.hashers[index] === undefined && this.hashes[index] === undefined) {
      this.hashes[index] = hash;
      this.hashed[index] = Math.min(this.blockSize, this.size - index * this.blockSize);
    } else {
      this.hashed[index] = -1;
      this.hashes[index] = undefined;
      this.hashers[index] = undefined;
    }
  }

  /** The file's hash: each block not hashed as it was written is read with `read` (into `buffer` from 0) first. */
  async fileHash(read: (buffer: Buffer, length: number, position: number) => Promise<void>): Promise<Buffer> {
    let buffer: Buffer | undefined;
    for (let index = 0; index < this.hashes.length; index++) {
      if (this.hashes[index]) continue;
      const start = index * this.blockSize;
      const length = Math.min(this.blockSize, this.size - start);
      buffer ??= Buffer.allocUnsafe(Math.min(this.blockSize, this.size));
      await read(buffer, length, start);
      this.hashes[index] = blake3(buffer.subarray(0, length));
      this.hashers[index] = undefined;
    }
    return manifestFromBlockHashes(this.size, this.blockSize, this.hashes as Buffer[]).fileHash;
  }
}

/** A block size a file may use, this side's or a peer's: a power of two from 128 KiB to 16 MiB (spec 7.1). */
export function isValidBlockSize(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= MIN_BLOCK_BYTES && value <= MAX_BLOCK_BYTES && (value & (value - 1)) === 0;
}

/** Reads exactly `length` bytes at `position` into `buffer` (from 0); FILE_CHANGED if the file ends first: it was truncated meanwhile. */
export async function readFully(handle: FileHandle, buffer: Buffer, length: number, position: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    // The file ended before the size it had when opened: it was truncated meanwhile.
    if (bytesRead === 0) throw new PeerShareError('FILE_CHANGED');
    done += bytesRead;
  }
}
