import assert from 'node:assert/strict';
import { closeSync, openSync, promises as fs, readFileSync, readlinkSync, writeSync, ftruncateSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import type { Chunk, ChunkList } from '../../src/core/cdc';
import type { BlockManifest } from '../../src/core/blocks';
import type { PredictedCopy } from '../../src/core/block-copy';
import type { ReplierV2, ScenarioV2 } from '../hostile';

/**
 * Round 17: the copy predicted block by block (src/core/block-copy.ts `predictedCopy`, and its use
 * in deltaOnce / blockListInTime in src/core/delta.ts), as changed on 2026-12-03: a local copy of
 * 16 MiB or more whose sharer answers its chunk list and its block list each within
 * GUIDE_WAIT_MS is not cut; each block of the new file is predicted from the copy through the
 * list and a running shift, read once, hashed once and written from the same buffer only if its
 * hash is the sharer's (WrittenBlockHashes.wroteBlock takes that hash as the block's); a block that
 * fails is worked out chunk by chunk (GuidedWalk), and past max(16, blocks / 16) failed blocks the
 * copy gives up and the guided cut finds the rest.
 *
 * Attackers: a hostile sharer (the requester is the victim) whose block list lies in some blocks,
 * names another version, another block size or another count, comes just in time, late, refused or
 * broken; whose chunk list makes failed blocks expensive (a copy whose tail only is the sharer's,
 * tiny chunks, one chunk named at many places, huge shifts); and a local process or the person on
 * the requester's machine (the copy truncated, grown, rewritten or swapped while it is predicted,
 * the disk failing a write, the update cancelled at various moments).
 *
 * Oracles: the file system (the target is exactly the old file or exactly the sharer's version,
 * nothing else in dest, nothing outside touched), coded PeerShareErrors, what predictedCopy
 * returns (hashedBytes, blocksWorkedOut, gaveUp), the bytes read from the local copy and by the
 * whole process (/proc/self/io), wall time, the event loop's longest stall, unhandled rejections,
 * and spies installed before src/ loads:
 *   - fs.write on an update's temporary file: can fail one write (ENOSPC) at a chosen position, and
 *     records writes made after the update returned;
 *   - FileHandle.prototype.read / close (cut-spies.ts): a handle closed under a read in flight, and
 *     a hook before each read of the local copy (to act at a known point, or count its bytes).
 */

// ---- spies, installed before any module of src/ loads ---------------------------------------

// eslint-disable-next-line @typescript-eslint/no-require-imports
const fsModule: typeof import('node:fs') = require('node:fs');

/** What the write spy does to writes into an update's temporary file. */
const writeSpy = {
  /** The next write that covers this offset of the temporary file fails with ENOSPC (once). */
  failAt: undefined as number | undefined,
  failed: 0,
  /** Set once an update has returned: any write into a temporary file after that is recorded. */
  returned: false,
  afterReturn: [] as string[],
};
const isTemporary = (fd: number): boolean => {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`).includes('.peershare-part');
  } catch {
    return false;
  }
};
const realWrite = fsModule.write;
type WriteCallback = (err: NodeJS.ErrnoException | null, written?: number, buffer?: Uint8Array) => void;
function spiedWrite(fd: number, buffer: Uint8Array, offset: number, length: number, position: number | null, callback: WriteCallback): void {
  if (typeof buffer === 'string' || typeof callback !== 'function' || !isTemporary(fd)) {
    // eslint-disable-next-line prefer-rest-params
    return (realWrite as (...args: unknown[]) => void)(...arguments);
  }
  if (writeSpy.returned) writeSpy.afterReturn.push(`${length} bytes at ${position}`);
  const failAt = writeSpy.failAt;
  if (failAt !== undefined && position !== null && position <= failAt && failAt < position + length) {
    writeSpy.failAt = undefined;
    writeSpy.failed++;
    // As a full disk answers, from the thread pool: later.
    setTimeout(() => callback(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' })), 2);
    return;
  }
  realWrite(fd, buffer, offset, length, position, callback as never);
}
(spiedWrite as unknown as Record<symbol, unknown>)[promisify.custom] = (fd: number, buffer: Uint8Array, offset: number, length: number, position: number | null) =>
  new Promise((resolve, reject) => spiedWrite(fd, buffer, offset, length, position, (err, bytesWritten, buf) => (err ? reject(err) : resolve({ bytesWritten, buffer: buf }))));
(fsModule as { write: unknown }).write = spiedWrite;

// ---- modules of src/ and test helpers, loaded after the spies --------------------------------

let core: typeof import('../../src/core');
let cdc: typeof import('../../src/core/cdc');
let delta: typeof import('../../src/core/delta');
let blocks: typeof import('../../src/core/blocks');
let blockCopy: typeof import('../../src/core/block-copy');
let blake3: typeof import('../../src/core/blake3').blake3;
let manifestOfBytes: typeof import('../../src/core/v2/share-messages').manifestOfBytes;
let helpers: typeof import('../helpers');
let hostileKit: typeof import('../hostile');
let spies: typeof import('./cut-spies');
let longestStall: typeof import('./event-loop').longestStall;
type ChunkAnswers = typeof import('./chunk-answers');
let fileHashOf: ChunkAnswers['fileHashOf'];
let sendChunks: ChunkAnswers['sendChunks'];
let sendBlockList: ChunkAnswers['sendBlockList'];
let outcomeOf: ChunkAnswers['outcomeOf'];
let assertCoded: ChunkAnswers['assertCoded'];

const cleanups: (() => Promise<void> | void)[] = [];
let victim: import('../helpers').TestPeer;
let hostileIdentity: import('../../src/core').Identity;
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => void unhandled.push(reason);

before(async () => {
  spies = await import('./cut-spies');
  await spies.installHandleSpy();
  core = await import('../../src/core');
  cdc = await import('../../src/core/cdc');
  delta = await import('../../src/core/delta');
  blocks = await import('../../src/core/blocks');
  blockCopy = await import('../../src/core/block-copy');
  ({ blake3 } = await import('../../src/core/blake3'));
  ({ manifestOfBytes } = await import('../../src/core/v2/share-messages'));
  helpers = await import('../helpers');
  hostileKit = await import('../hostile');
  ({ longestStall } = await import('./event-loop'));
  ({ fileHashOf, sendChunks, sendBlockList, outcomeOf, assertCoded } = await import('./chunk-answers'));
  victim = await helpers.makePeer();
  hostileIdentity = (await helpers.makePeer()).identity;
  process.on('unhandledRejection', onUnhandled);
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  process.off('unhandledRejection', onUnhandled);
  assert.deepEqual(unhandled.map(String), [], 'no unhandled rejection while the attacks ran');
  assert.deepEqual(spies.closedUnderReader, [], 'no handle closed under a read or a cut helper');
  assert.equal(spies.helpersRunning(), 0, 'no cut helper left running');
});

// ---- helpers ---------------------------------------------------------------------------------

const KiB = 1024;
const MiB = 1024 * KiB;

/** Bytes this process (all its threads) has read so far, files and sockets alike (/proc/self/io `rchar`). */
const processRead = (): number => Number(/rchar: (\d+)/.exec(readFileSync('/proc/self/io', 'utf8'))![1]);

async function hostile(scenario: ScenarioV2, limits: Partial<import('../../src/core').Limits> = {}): Promise<import('../../src/core').PeerConnection> {
  const server = await hostileKit.startHostileSharerV2(hostileIdentity, scenario);
  cleanups.push(() => server.close());
  const conn = await core.connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [server.address], expectedPeerId: hostileIdentity.peerId, name: 'victim', limits: { stallTimeoutMs: 5000, ...limits } });
  cleanups.push(() => conn.close());
  return conn;
}

/** A share.chunks answer for a file of `size` bytes named by `fileHash` (hex): `chunks`, as they are. */
async function sendList(reply: ReplierV2, size: number, fileHash: string, chunks: readonly Chunk[]): Promise<Record<string, unknown>> {
  await reply.message({ type: 'chunks', size, mtimeMs: 1000, fileHash, count: chunks.length });
  if (chunks.length > 0) await reply.data(cdc.encodeChunks(chunks));
  return {};
}

/** A share.manifest answer of `size`, `blockSize` and `blockHashes` as they are, its header naming the hash of exactly that list. */
async function sendRawBlockList(reply: ReplierV2, size: number, blockSize: number, blockHashes: Buffer[]): Promise<Record<string, unknown>> {
  const manifest = blocks.manifestFromBlockHashes(size, blockSize, blockHashes);
  await reply.message({ type: 'manifest', size, mtimeMs: 1000, blockSize, fileHash: manifest.fileHash.toString('hex') });
  await reply.data(blocks.encodeBlockManifest(manifest));
  return {};
}

/** A list cutting `content` at the given lengths (repeated until the end). */
function cutAt(content: Buffer, lengths: number[]): Chunk[] {
  const chunks: Chunk[] = [];
  for (let offset = 0, i = 0; offset < content.length; i++) {
    const length = Math.min(lengths[i % lengths.length], content.length - offset);
    chunks.push({ offset, length, hash: blake3(content.subarray(offset, offset + length)) });
    offset += length;
  }
  return chunks;
}

/** The local copy `f.bin` in a new dest holding `bytes`. */
async function localCopy(bytes: Buffer): Promise<{ dest: string; target: string; real: string }> {
  const dest = helpers.tempDir('peershare-r17-');
  const target = path.join(dest, 'f.bin');
  await fs.writeFile(target, bytes);
  return { dest, target, real: await fs.realpath(target) };
}

/** After an update of `target` (old bytes `ours`) to `theirs`: the target is exactly one of the two, and dest holds nothing else. */
async function assertOracle(o: Awaited<ReturnType<ChunkAnswers['outcomeOf']>>, dest: string, target: string, ours: Buffer | undefined, theirs: Buffer, what: string): Promise<void> {
  assert.deepEqual(await helpers.listTree(dest), ['f.bin'], `${what}: no temporary file, nothing else in dest`);
  const now = await fs.readFile(target);
  if (o.ok) {
    assert.ok(now.equals(theirs), `${what}: the update reported success, so the target must be exactly the sharer's version`);
  } else {
    assertCoded(o.error, what);
    if (ours) assert.ok(now.equals(ours), `${what}: the update failed (${o.code}), so the target must be the old file`);
  }
}

interface Sharer {
  /** The chunk list's answer (default: the honest cut of `theirs`, named by its fileHash). */
  chunks?: (reply: ReplierV2) => Promise<Record<string, unknown>>;
  /** The block list's answer (default: the honest one of `theirs`). */
  manifest?: (reply: ReplierV2) => Promise<Record<string, unknown> | void> | Record<string, unknown> | void;
}

/**
 * An update of a local copy holding `ours` to the sharer's `theirs` (deltaFile, in place, over a
 * real connection), the sharer answering as `sharer` says; the copy's reads counted (and `onRead`
 * called before each). What came back, with the requests the sharer saw.
 */
async function update(ours: Buffer, theirs: Buffer, sharer: Sharer = {}, options: { signal?: AbortSignal; onRead?: (position: number, length: number, target: string) => Promise<void> | void; limits?: Partial<import('../../src/core').Limits> } = {}) {
  const list = cdc.chunkBytes(theirs);
  const { dest, target, real } = await localCopy(ours);
  const seen: string[] = [];
  let copyRead = 0;
  spies.readHook.path = real;
  spies.readHook.before = (position, length) => {
    copyRead += length;
    return options.onRead?.(position, length, target);
  };
  const conn = await hostile(async (req, reply) => {
    seen.push(req.type as string);
    if (req.type === 'share.chunks') return sharer.chunks ? sharer.chunks(reply) : sendList(reply, theirs.length, fileHashOf(theirs), list);
    if (req.type === 'share.manifest') return sharer.manifest ? sharer.manifest(reply) : sendBlockList(reply, theirs);
    if (req.type === 'share.readChunks') return sendChunks(req, reply, theirs, list);
    return undefined;
  }, options.limits);
  writeSpy.returned = false;
  writeSpy.afterReturn = [];
  const began = performance.now();
  const readBefore = processRead();
  try {
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true, signal: options.signal }));
    writeSpy.returned = true;
    return { o, dest, target, conn, seen, copyRead, processRead: processRead() - readBefore, tookMs: performance.now() - began };
  } finally {
    spies.readHook.path = undefined;
    spies.readHook.before = undefined;
  }
}

/** predictedCopy of a copy holding `ours` into memory, with `theirs`'s list (or `list`) and `manifest`, with what it returned or threw. */
async function predictedOn(ours: Buffer, theirs: Buffer, options: { list?: ChunkList; manifest?: BlockManifest; maxFailedBlocks?: number; writeBlock?: (index: number) => Promise<void> } = {}) {
  const list = options.list ?? { size: theirs.length, fileHash: Buffer.alloc(32), chunks: cdc.chunkBytes(theirs) };
  const manifest = options.manifest ?? manifestOfBytes(theirs, blocks.blockSizeFor(theirs.length));
  const file = path.join(helpers.tempDir('peershare-r17-unit-'), 'local.bin');
  await fs.writeFile(file, ours);
  const handle = await fs.open(file, 'r');
  const target = Buffer.alloc(theirs.length);
  let inFlight = 0;
  const writer = {
    async write(data: Buffer, position: number): Promise<void> {
      inFlight++;
      await new Promise((resolve) => setImmediate(resolve));
      data.copy(target, position);
      inFlight--;
    },
    async writeBlock(data: Buffer, position: number, index: number): Promise<void> {
      inFlight++;
      try {
        await (options.writeBlock?.(index) ?? new Promise((resolve) => setImmediate(resolve)));
        data.copy(target, position);
      } finally {
        inFlight--;
      }
    },
  };
  const maxFailedBlocks = options.maxFailedBlocks ?? Math.max(16, manifest.blockHashes.length / 16);
  const began = performance.now();
  try {
    const o = await outcomeOf<PredictedCopy>(blockCopy.predictedCopy(handle, ours.length, list, manifest, writer, { maxFailedBlocks }));
    return { o, target, list, inFlight, tookMs: performance.now() - began };
  } finally {
    await handle.close();
  }
}

/**
 * A copy whose tail only is the sharer's: the sharer's version is `ours` with everything before
 * its first chunk at or past `keptFrom` rewritten (other bytes, the same length), and 1 MiB
 * appended (a copy of the same size in place is cut whole first, not predicted). Every block
 * before the tail fails its prediction, and each one's walk cuts the copy from there up to the
 * first chunk the list names: the kept tail.
 */
function tailKept(ours: Buffer, keptFrom: number, seed: number): Buffer {
  const kept = cdc.chunkBytes(ours).find((c) => c.offset >= keptFrom)!.offset;
  return Buffer.concat([helpers.seededBytes(kept, seed), ours.subarray(kept), helpers.seededBytes(MiB, seed + 1)]);
}

// ---- 1. the cost of failed blocks -------------------------------------------------------------

describe('chunk and block lists against the cost of the predicted copy (hashedBytes, bytes read and time against the file)', () => {
  it('a copy whose first 40 MiB were rewritten and whose tail is the sharer\'s (an honest sharer): each failed block does not cut the copy again up to the tail', async (t) => {
    const ours = helpers.seededBytes(48 * MiB, 1701);
    const theirs = tailKept(ours, 40 * MiB, 1702);
    const { o, tookMs } = await predictedOn(ours, theirs);
    assert.ok(o.ok, `predictedCopy failed: ${!o.ok && o.message}`);
    t.diagnostic(`${(o.value.hashedBytes / MiB).toFixed(0)} MiB hashed (${(o.value.hashedBytes / theirs.length).toFixed(1)}x), ${o.value.blocksWorkedOut} blocks worked out, gave up: ${o.value.gaveUp}, ${tookMs.toFixed(0)} ms`);
    // Before round 17: 24 failed blocks, each walk cut the copy from its block to the tail (the
    // first chunk the list names), 900 MiB hashed for a file of 48 MiB (19x), 1.4 s.
    assert.ok(o.value.hashedBytes <= 2.2 * theirs.length, `${(o.value.hashedBytes / MiB).toFixed(0)} MiB hashed for a file of ${theirs.length / MiB} MiB`);
  });

  it('the same end to end (deltaFile): the sharer\'s version lands, the local copy and the process read a small multiple of the file', async (t) => {
    const ours = helpers.seededBytes(48 * MiB, 1703);
    const theirs = tailKept(ours, 40 * MiB, 1705);
    const { o, dest, target, copyRead, processRead: read, tookMs, seen } = await update(ours, theirs);
    assert.ok(o.ok, `the update failed: ${!o.ok && `${o.code} ${o.message}`}`);
    await assertOracle(o, dest, target, ours, theirs, 'tail kept');
    assert.ok(seen.includes('share.manifest'), 'the block list was asked for');
    assert.ok(o.value.bytesReused >= 7 * MiB, `only ${o.value.bytesReused} bytes reused`);
    t.diagnostic(`local copy read ${(copyRead / MiB).toFixed(0)} MiB, process read ${(read / MiB).toFixed(0)} MiB, ${tookMs.toFixed(0)} ms`);
    // The predicted copy (the file once, and what its walks cut, at most once more), the guided cut
    // it gives up to (twice at most), the copy of what that found, and the network: 40 MiB.
    assert.ok(copyRead <= 5 * ours.length, `the local copy read ${(copyRead / MiB).toFixed(0)} MiB`);
    assert.ok(read <= 6 * theirs.length, `${(read / MiB).toFixed(0)} MiB read by the process`);
  });
});

// ---- 2. the disk failing a write --------------------------------------------------------------

describe('a write of a verified block that fails (a full disk, an I/O error)', () => {
  it('predictedCopy: a write from a block buffer that fails is thrown, not lost when the buffer is taken again', async () => {
    const ours = helpers.seededBytes(20 * MiB, 1710);
    const theirs = Buffer.concat([helpers.seededBytes(100, 1711), ours]);
    const { o, inFlight } = await predictedOn(ours, theirs, {
      writeBlock: async (index) => {
        await delay(1);
        if (index === 5) throw new core.PeerShareError('IO_ERROR', 'The disk is full.');
      },
    });
    assert.equal(inFlight, 0, 'a write still under way when the copy returned');
    // Before round 17 the failure was swallowed when block 5's buffer was taken again (8 blocks on):
    // the copy returned as if block 5 was written, and its hash was taken as written.
    assert.ok(!o.ok, 'the copy returned though a block was not written');
    assert.equal(o.code, 'IO_ERROR');
  });

  it('deltaFile: a block whose write fails with ENOSPC in the middle of the file never lands as a hole; the old file stays, coded, no temporary file', async () => {
    const ours = helpers.seededBytes(20 * MiB, 1712);
    const theirs = Buffer.concat([helpers.seededBytes(100, 1713), ours]);
    const blockSize = blocks.blockSizeFor(theirs.length);
    writeSpy.failAt = 5 * blockSize + 10;
    const { o, dest, target } = await update(ours, theirs);
    const failed = writeSpy.failAt === undefined;
    writeSpy.failAt = undefined;
    assert.ok(failed, 'no write covered the place');
    // Before round 17: the update landed, and the target held 128 KiB of zeros at block 5.
    assert.ok(!o.ok, 'the update landed though a block of it was never written');
    assert.equal(o.code, 'IO_ERROR');
    assert.match(o.message, /disk is full/);
    await assertOracle(o, dest, target, ours, theirs, 'a write failed');
  });
});
