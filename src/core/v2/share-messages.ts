import { BLAKE3_DIGEST_BYTES, blake3 } from '../blake3';
import { MANIFEST_HEADER_BYTES, blockCount, manifestFromBlockHashes, type BlockManifest } from '../blocks';
import { CDC_MIN_BYTES } from '../cdc';
import { PeerShareError } from '../errors';
import type { Limits } from '../limits';
import { shownType } from '../protocol';
import type { CapabilityMessage } from './messages';

/**
 * The messages of capability `share/1` (docs/protocol-v2.md 6.2, 6.3) that both sides need: the
 * requests and their one parser (the provider's), and the few checks the requester's readers and
 * the provider share. The provider is share-provider.ts, the requester's readers share-client.ts.
 */
export const SHARE_CAPABILITY = 'share/1';

/**
 * Fixed by the protocol, not by either side's limits (spec 6.3): a sharer configured otherwise
 * than its peer must still be understood. A `share.list` batch holds at most this many entries
 * (a sharer may send fewer: its own `listBatchEntries`).
 */
export const MAX_LIST_BATCH_ENTRIES = 1000;

/**
 * The largest file a folder stream carries inline (spec 6.3): the sharer reads it whole, the
 * requester holds it whole until it is verified. Larger files go as `fileRef`, in blocks.
 */
export const MAX_INLINE_FILE_BYTES = 256 * 1024;
/**
 * share.chunks with `inline` (spec 15.2): a file of at most this many bytes comes with its bytes.
 * CDC_MIN_BYTES: such a file is one chunk, so an update needs all of it or none (no bytes a delta
 * could have spared), and a second round trip for it only costs time.
 */
export const MAX_INLINE_CHUNKS_FILE_BYTES = CDC_MIN_BYTES;

/** `share/1`'s advertised roots (spec 6): at most this many, each a name of at most MAX_SHARE_ROOT_CHARS. */
export const MAX_SHARE_ROOTS = 256;
export const MAX_SHARE_ROOT_CHARS = 255;

/** Half-open block ranges `[first, end)`, sorted, apart (spec 6.2 `share.read`). */
export type BlockRanges = [number, number][];

export type ShareRequest =
  | { type: 'share.stat'; path: string }
  | { type: 'share.list'; path: string }
  | { type: 'share.tree'; path: string }
  | { type: 'share.manifest'; path: string; expect?: { size: number; mtimeMs: number }; rehash?: true }
  | { type: 'share.read'; path: string; fileHash: string; blocks: BlockRanges }
  | { type: 'share.chunks'; path: string; inline?: true }
  | { type: 'share.readChunks'; path: string; fileHash: string; chunks: BlockRanges };

const HEX_HASH = /^[0-9a-f]{64}$/;

function protocolError(message: string): PeerShareError {
  return new PeerShareError('PROTOCOL_ERROR', message);
}

export function isSafeUint(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** A time as an Entry carries it (spec 6.1): finite, within Date's range. */
export function isWireTime(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && Math.abs(value) <= 8.64e15;
}

export function isFileHashHex(value: unknown): value is string {
  return typeof value === 'string' && HEX_HASH.test(value);
}


/**
 * The provider's one parser of `share.*` requests. A request of the wrong shape breaks the spec
 * (PROTOCOL_ERROR: the connection closes); values a well-behaved requester could not know are out
 * of range (more ranges than this provider's maxReadRanges) are a request-level TOO_LARGE.
 */
export function parseShareRequest(m: CapabilityMessage, limits: Pick<Limits, 'maxReadRanges'>): ShareRequest {
  const path = m.path;
  if (typeof path !== 'string') throw protocolError(`"${shownType(m.type)}" needs a string "path".`);
  switch (m.type) {
    case 'share.stat':
    case 'share.list':
    case 'share.tree':
      return { type: m.type, path };
    case 'share.manifest': {
      const request: ShareRequest = { type: 'share.manifest', path };
      if (m.expect !== undefined) {
        const e = m.expect as Record<string, unknown> | null;
        if (e === null || typeof e !== 'object' || !isSafeUint(e.size) || !isWireTime(e.mtimeMs)) {
          throw protocolError('"expect" must be {size, mtimeMs}.');
        }
        request.expect = { size: e.size, mtimeMs: e.mtimeMs };
      }
      if (m.rehash !== undefined && m.rehash !== true) throw protocolError('"rehash" may only be true.');
      if (m.rehash === true) request.rehash = true;
      return request;
    }
    case 'share.read': {
      if (!isFileHashHex(m.fileHash)) throw protocolError('"fileHash" must be 64 lowercase hex digits.');
      return { type: 'share.read', path, fileHash: m.fileHash, blocks: parseRanges(m.blocks, 'blocks', limits) };
    }
    case 'share.chunks': {
      // Spec 15.2: `inline` asks for a one-chunk file's bytes in the same answer.
      if (m.inline !== undefined && m.inline !== true) throw protocolError('"inline" may only be true.');
      return m.inline === true ? { type: 'share.chunks', path, inline: true } : { type: 'share.chunks', path };
    }
    case 'share.readChunks': {
      // Spec 15.3: share.read's ranges, of chunk indices.
      if (!isFileHashHex(m.fileHash)) throw protocolError('"fileHash" must be 64 lowercase hex digits.');
      return { type: 'share.readChunks', path, fileHash: m.fileHash, chunks: parseRanges(m.chunks, 'chunks', limits) };
    }
    default:
      throw protocolError(`"${shownType(m.type)}" is not a request of share/1.`);
  }
}

/** Half-open index ranges (share.read's blocks, share.readChunks' chunks): 1..maxReadRanges pairs, sorted, apart. */
function parseRanges(value: unknown, field: string, limits: Pick<Limits, 'maxReadRanges'>): BlockRanges {
  if (!Array.isArray(value) || value.length === 0) throw protocolError(`"${field}" must be a list of ranges.`);
  // Checked before a single pair is looked at.
  if (value.length > limits.maxReadRanges) {
    throw new PeerShareError('TOO_LARGE', `At most ${limits.maxReadRanges} ranges are read at once; split the read.`);
  }
  let previousEnd = -1;
  for (const pair of value as unknown[]) {
    if (!Array.isArray(pair) || pair.length !== 2 || !isSafeUint(pair[0]) || !isSafeUint(pair[1])) {
      throw protocolError('Each range must be [first, end].');
    }
    const [first, end] = pair as [number, number];
    if (first >= end) throw protocolError('A range must have first < end.');
    if (first <= previousEnd) throw protocolError('Ranges must be sorted and apart (no overlap, no touching).');
    previousEnd = end;
  }
  return value as BlockRanges;
}

/** The block list of bytes held in memory, with `blockSize` (an inline file of a folder stream). */
export function manifestOfBytes(data: Buffer, blockSize: number): BlockManifest {
  const hashes: Buffer[] = [];
  for (let offset = 0; offset < data.length; offset += blockSize) hashes.push(blake3(data.subarray(offset, Math.min(offset + blockSize, data.length))));
  return manifestFromBlockHashes(data.length, blockSize, hashes);
}

/** Sorted, merged ranges of block indices; throws INVALID_ARGUMENT for an index the file does not have. */
export function rangesOf(indices: Iterable<number>, count: number): BlockRanges {
  const sorted = [...new Set(indices)].sort((a, b) => a - b);
  const ranges: BlockRanges = [];
  for (const index of sorted) {
    if (!Number.isSafeInteger(index) || index < 0 || index >= count) {
      throw new PeerShareError('INVALID_ARGUMENT', `The file has no block ${String(index)} (it has ${count}).`);
    }
    const last = ranges[ranges.length - 1];
    if (last && last[1] === index) last[1] = index + 1;
    else ranges.push([index, index + 1]);
  }
  return ranges;
}

/** Blocks of a file of `size` bytes in blocks of `blockSize`, checked against the requester's limits (spec 6.3, manifest). */
export function checkBlockListBounds(size: number, blockSize: number, limits: Pick<Limits, 'maxFileBlocks' | 'maxManifestBytes'>): number {
  const count = blockCount(size, blockSize);
  if (count > limits.maxFileBlocks || blockListBytes(count) > limits.maxManifestBytes) {
    throw new PeerShareError('TOO_LARGE', `The peer described a file of ${count} blocks; at most ${limits.maxFileBlocks} are accepted.`);
  }
  return count;
}

/** Bytes of the block list of a file of `count` blocks (spec 7.1). */
export function blockListBytes(count: number): number {
  return MANIFEST_HEADER_BYTES + BLAKE3_DIGEST_BYTES * count;
}
