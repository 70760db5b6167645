import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, promises as fs, readFileSync, symlinkSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { connectToPeer, PeerShareError, type Limits, type PeerConnection } from '../../src/core';
import { blake3 } from '../../src/core/blake3';
import { CDC_MAX_BYTES, chunkBytes, encodeChunks, type Chunk, type ChunkList } from '../../src/core/cdc';
import * as delta from '../../src/core/delta';
import { guidedCut } from '../../src/core/guided-cut';
import { MAX_CUT_HELPERS, PARALLEL_CUT_FROM_BYTES } from '../../src/core/limits';
import * as helpers from '../helpers';
import { sendManifest, startHostileSharerV2, type ReplierV2, type ScenarioV2 } from '../hostile';
import { assertCoded, assertOneVersion, cutAt, fileHashOf, outcomeOf, sendChunks } from './chunk-answers';
import { closedUnderReader, helpersRunning, helpersSeen, readHook } from './cut-spies';
import { attackFrame } from './attack-frame';
import { rewrite, swapIn, truncateTo } from './local-acts';
import { longestStall } from './event-loop';

/**
 * Round 15: the guided cut (src/core/guided-cut.ts, guidedCut) and the start of an update
 * (deltaOnce in src/core/delta.ts) as changed on 2026-12-03: a chunk list that comes within
 * GUIDE_WAIT_MS stops the unguided cut already running (chunkFile's new `signal`, its helper thread
 * with it) and guides a new cut of the local copy: each next chunk of the list is hashed where the
 * list says it starts, FastCDC cuts from where it fails until a chunk the list names, and a budget
 * stops guiding once failed tries have hashed as much as the copy holds.
 *
 * Attackers: a hostile sharer (the requester is the victim) whose list names one chunk at
 * thousands of places, the copy's chunks backwards, lies of 256 KiB after every chunk, 130,000
 * one-byte chunks the copy holds, a file shorter or longer than the copy; that answers in time, at
 * the end of the unguided cut, inline, late and inline, or refuses; and a local process (or the
 * person) acting meanwhile: the copy truncated, rewritten, grown, swapped for a link or a FIFO while
 * the guided cut reads it, the update cancelled before the list or during the guided cut.
 *
 * Oracles: the file system (the target is the sharer's version exactly or the old file untouched,
 * nothing else in dest, nothing outside touched), coded PeerShareErrors, the hashedBytes and
 * cutBytes guidedCut returns, the bytes this process read and wrote (/proc/self/io), the event
 * loop's longest stall, and the spies of cut-spies.ts:
 *   - Worker.prototype.postMessage with a cut task: the helper threads started, and whether each has exited;
 *   - FileHandle.prototype.read / close: a handle closed under a read still in flight or a helper
 *     still reading its descriptor; and, for the local copy only, a hook that runs before a read
 *     (to act at a known point of a cut, or to make the copy's disk slow).
 */

// ---- the suite's peers ------------------------------------------------------------------------

const frame = attackFrame({ handleSpy: true, cutHelpers: true });
const { cleanups } = frame;

// ---- helpers ----------------------------------------------------------------------------------

const KiB = 1024;
const MiB = 1024 * KiB;
const LIMITS = { maxFileChunks: 131_072 };
const twoCores = Math.min(MAX_CUT_HELPERS, availableParallelism() - 1) > 0;

/** Bytes this process (all its threads) has read and written so far, sockets included. */
const io = (): { read: number; written: number } => {
  const text = readFileSync('/proc/self/io', 'utf8');
  return { read: Number(/rchar: (\d+)/.exec(text)![1]), written: Number(/wchar: (\d+)/.exec(text)![1]) };
};

async function hostile(scenario: ScenarioV2, limits: Partial<Limits> = {}): Promise<PeerConnection> {
  const server = await startHostileSharerV2(frame.hostileIdentity, scenario);
  cleanups.push(() => server.close());
  const conn = await connectToPeer({ identity: frame.victim.identity, trust: frame.victim.trust, addresses: [server.address], expectedPeerId: frame.hostileIdentity.peerId, name: 'victim', limits: { stallTimeoutMs: 5000, ...limits } });
  cleanups.push(() => conn.close());
  return conn;
}

/** A share.chunks answer for a file of `size` bytes named by `fileHash` (hex): `chunks`, as they are. */
async function sendList(reply: ReplierV2, size: number, fileHash: string, chunks: readonly Chunk[]): Promise<Record<string, unknown>> {
  await reply.message({ type: 'chunks', size, mtimeMs: 1000, fileHash, count: chunks.length });
  if (chunks.length > 0) await reply.data(encodeChunks(chunks));
  return {};
}

/** `chunks` laid end to end from offset 0 (a list whose places the test chose). */
function laidOut(chunks: readonly { length: number; hash: Buffer }[]): Chunk[] {
  let offset = 0;
  return chunks.map((c) => {
    const chunk = { offset, length: c.length, hash: c.hash };
    offset += c.length;
    return chunk;
  });
}

const guideOf = (chunks: Chunk[]): ChunkList => ({ size: chunks.reduce((sum, c) => sum + c.length, 0), fileHash: Buffer.alloc(32), chunks });
const lie = (length = CDC_MAX_BYTES): { length: number; hash: Buffer } => ({ length, hash: Buffer.alloc(32, 0xee) });
const key = (c: Chunk): string => `${c.offset}:${c.length}:${c.hash.toString('hex')}`;

/** The local copy `f.bin` in a new dest holding `bytes`, made `size` long (sparse past the bytes) when given. */
async function localCopy(bytes: Buffer, size = bytes.length): Promise<{ dest: string; target: string; real: string }> {
  const dest = helpers.tempDir('peershare-r15-');
  const target = path.join(dest, 'f.bin');
  await fs.writeFile(target, bytes);
  if (size !== bytes.length) await fs.truncate(target, size);
  return { dest, target, real: await fs.realpath(target) };
}

/** guidedCut of a new file holding `bytes`, with what it returns or throws. */
async function guidedOn(bytes: Buffer, guide: ChunkList, onChunks?: (chunks: readonly Chunk[], file: string) => void, signal?: AbortSignal) {
  const { target } = await localCopy(bytes);
  const handle = await fs.open(target, 'r');
  try {
    return await outcomeOf(guidedCut(handle, guide, LIMITS, onChunks && ((chunks) => onChunks(chunks, target)), signal));
  } finally {
    await handle.close();
  }
}

/** Every chunk is the copy's own bytes at its offset, and together they tile the copy. */
function assertTiles(chunks: readonly Chunk[], bytes: Buffer, what: string): void {
  let offset = 0;
  for (const chunk of chunks) {
    assert.equal(chunk.offset, offset, `${what}: a gap or overlap at ${offset}`);
    assert.ok(blake3(bytes.subarray(chunk.offset, chunk.offset + chunk.length)).equals(chunk.hash), `${what}: the chunk at ${chunk.offset} is not the copy's bytes`);
    offset += chunk.length;
  }
  assert.equal(offset, bytes.length, `${what}: the chunks do not cover the copy`);
}

/** The sharer's chunks a plain cut of `ours` does not hold (by hash and length): what an update must fetch at most. */
function bytesMissing(theirs: readonly Chunk[], ours: Buffer): number {
  const held = new Set(chunkBytes(ours).map((c) => `${c.length}:${c.hash.toString('hex')}`));
  return theirs.filter((c) => !held.has(`${c.length}:${c.hash.toString('hex')}`)).reduce((sum, c) => sum + c.length, 0);
}

/** Zeros of `size` with 256 KiB of other bytes at `at`: the sharer's version of a sparse local copy. */
function zerosWithChunk(size: number, at: number, seed: number): { theirs: Buffer; chunks: Chunk[]; fileHash: string } {
  const theirs = Buffer.alloc(size);
  helpers.seededBytes(CDC_MAX_BYTES, seed).copy(theirs, at);
  return { theirs, chunks: cutAt(theirs, [CDC_MAX_BYTES]), fileHash: fileHashOf(theirs) };
}

// ---- 1. the guided cut's cost against lists that lie ------------------------------------------

describe('a hostile list against the guided cut\'s cost (guidedCut; hashedBytes and cutBytes are the oracle)', () => {
  it('one chunk of the copy named at 2,048 places, each followed by a 256 KiB chunk the copy never holds: at most twice the copy hashed, the cut exact', async () => {
    // X: a chunk of 16,862 bytes whose end is a cut point of its own, so a copy of X 2,048 times
    // is cut into 2,048 chunks that are all X (the same hash and length).
    const x = helpers.seededBytes(300 * KiB, 1504).subarray(0, 16_862);
    const ours = Buffer.concat(Array.from({ length: 2048 }, () => x));
    const plain = chunkBytes(ours);
    assert.ok(plain.length === 2048 && plain.every((c) => c.length === x.length), 'the copy is X 2,048 times');
    const guide = guideOf(laidOut(plain.flatMap((c) => [c, lie()])));
    const o = await guidedOn(ours, guide);
    assert.ok(o.ok, `guidedCut failed: ${!o.ok && o.message}`);
    assert.deepEqual(o.value.chunks.map(key), plain.map(key), 'the chunks are the copy\'s plain cut');
    // Without the budget the guide came back at every X and failed on the lie after it: 16.9 times the copy.
    assert.ok(o.value.hashedBytes <= 2 * ours.length + CDC_MAX_BYTES, `${o.value.hashedBytes} bytes hashed for a copy of ${ours.length} (${(o.value.hashedBytes / ours.length).toFixed(1)}x)`);
    assert.ok(o.value.hashedBytes > 1.5 * ours.length, 'the lies did make the tries fail');
  });

  it('the copy\'s own chunks named backwards, each followed by a lie (the guide jumps back at every chunk it finds): at most twice the copy hashed', async () => {
    const ours = helpers.seededBytes(12 * MiB, 1505);
    const plain = chunkBytes(ours);
    const guide = guideOf(laidOut([...plain].reverse().flatMap((c) => [c, lie()])));
    const o = await guidedOn(ours, guide);
    assert.ok(o.ok, `guidedCut failed: ${!o.ok && o.message}`);
    assert.deepEqual(o.value.chunks.map(key), plain.map(key));
    assert.ok(o.value.hashedBytes <= 2 * ours.length + CDC_MAX_BYTES, `${o.value.hashedBytes} bytes hashed for a copy of ${ours.length} (${(o.value.hashedBytes / ours.length).toFixed(1)}x)`);
    assert.ok(o.value.cutBytes >= ours.length - CDC_MAX_BYTES, 'every chunk was cut, none found in place');
  });

  it('130,000 one-byte chunks the copy holds (all found within one read): the event loop gets turns, and a cancel stops the cut', async (t) => {
    const ones = 130_000;
    const ours = helpers.seededBytes(ones + 16 * KiB, 1506);
    const guide = guideOf([...cutAt(ours.subarray(0, ones), [1]), { offset: ones, length: 16 * KiB, hash: blake3(ours.subarray(ones)) }]);
    const { result, error, stallMs } = await longestStall(() => guidedOn(ours, guide));
    assert.equal(error, undefined);
    assert.ok(result!.ok, `guidedCut failed: ${!result!.ok && result!.message}`);
    assert.equal(result!.value.chunks.length, ones + 1);
    assertTiles(result!.value.chunks, ours, 'one-byte chunks');
    t.diagnostic(`event loop held ${stallMs.toFixed(0)} ms at most`);
    // Before round 15: 0.4-0.9 s in one piece (130,000 chunks found between two reads).
    assert.ok(stallMs < 200, `event loop held ${stallMs.toFixed(0)} ms`);
    // The caller's signal: the cut ends CANCELLED at its next chunk, not at its end.
    const stop = new AbortController();
    let abortedAt = 0;
    setTimeout(() => {
      abortedAt = performance.now();
      stop.abort();
    }, 30);
    const cancelled = await guidedOn(ours, guide, undefined, stop.signal);
    const afterAbortMs = performance.now() - abortedAt;
    assert.ok(!cancelled.ok, 'a cancelled cut returned its chunks');
    assert.equal(cancelled.code, 'CANCELLED');
    assertCoded(cancelled.error, 'cancelled cut');
    t.diagnostic(`ended ${afterAbortMs.toFixed(0)} ms after the cancel`);
    assert.ok(afterAbortMs < 100, `the cut ended ${afterAbortMs.toFixed(0)} ms after the cancel`);
  });

  it('a copy that ends inside chunks the list names (in the middle, and in the last), and a copy longer than the list\'s file: tiled exactly, what it holds found', async () => {
    const theirs = helpers.seededBytes(8 * MiB, 1507);
    const list = chunkBytes(theirs);
    const middle = list[60];
    const cases: [string, Buffer][] = [
      ['ends 100 bytes into a chunk in the middle', theirs.subarray(0, middle.offset + 100)],
      ['ends 1,000 bytes before the list\'s end', theirs.subarray(0, theirs.length - 1000)],
      ['holds the list\'s file and 6 MiB more', Buffer.concat([theirs, helpers.seededBytes(6 * MiB, 1508)])],
    ];
    for (const [what, ours] of cases) {
      const o = await guidedOn(ours, { size: theirs.length, fileHash: Buffer.alloc(32), chunks: list });
      assert.ok(o.ok, `${what}: ${!o.ok && `${o.code} ${o.message}`}`);
      assertTiles(o.value.chunks, ours, what);
      const found = new Set(o.value.chunks.map(key));
      const held = list.filter((c) => c.offset + c.length <= ours.length);
      assert.ok(held.every((c) => found.has(key(c))), `${what}: a chunk the copy holds in place was not found`);
      assert.ok(o.value.hashedBytes <= 2 * ours.length + CDC_MAX_BYTES, `${what}: ${o.value.hashedBytes} hashed`);
    }
  });

  it('the copy rewritten in place (same size) or grown while the guided cut reads it: FILE_CHANGED, never a list', async () => {
    const ours = helpers.seededBytes(16 * MiB, 1509);
    const guide = guideOf(chunkBytes(ours));
    for (const how of ['rewritten in a part already read', 'rewritten in a part not yet read', 'grown'] as const) {
      let acted = false;
      const o = await guidedOn(ours, guide, (_chunks, file) => {
        if (acted) return;
        acted = true;
        const fd = openSync(file, 'r+');
        try {
          if (how === 'grown') writeSync(fd, Buffer.from('more'), 0, 4, ours.length);
          else writeSync(fd, helpers.seededBytes(64 * KiB, 1510), 0, 64 * KiB, how === 'rewritten in a part already read' ? MiB : 14 * MiB);
        } finally {
          closeSync(fd);
        }
      });
      assert.ok(acted, `${how}: the cut reported no chunks`);
      assert.ok(!o.ok, `${how}: a list of ${o.ok && o.value.chunks.length} chunks came back`);
      assert.equal(o.code, 'FILE_CHANGED', how);
      assertCoded(o.error, how);
    }
  });
});

// ---- 2. the race of the guided path with the unguided cut -------------------------------------

describe('the list against the unguided cut already running (deltaFile; the requester is the victim)', () => {
  it('a list in time for a large copy (no block list): the guided cut runs in its helper, nothing is left running, and exactly the sharer\'s version lands', async (t) => {
    // Until 2026-12-03 the unguided cut of a copy this large started at once and was stopped when
    // the list came; it now waits GUIDE_WAIT_MS for the list first (delta.ts PREDICTED_FROM_BYTES).
    const size = PARALLEL_CUT_FROM_BYTES;
    const { theirs, chunks, fileHash } = zerosWithChunk(size, 100 * MiB, 1520);
    const { dest, target } = await localCopy(Buffer.alloc(0), size);
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendList(reply, size, fileHash, chunks);
      if (req.type === 'share.readChunks') return sendChunks(req, reply, theirs, chunks);
      if (req.type === 'share.manifest') throw new PeerShareError('TOO_LARGE', 'No block list for this one.');
      return undefined;
    });
    const before = helpersSeen.length;
    const start = io();
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    const read = io().read - start.read;
    assert.ok(o.ok, `the update failed: ${!o.ok && `${o.code} ${o.message}`}`);
    assert.equal(o.value.bytesReceived, CDC_MAX_BYTES, 'only the chunk the copy lacks was fetched');
    await assertOneVersion(o, dest, target, undefined, theirs, 'list in time');
    if (twoCores) assert.ok(helpersSeen.length > before, 'the guided cut had a helper');
    assert.equal(helpersRunning(), 0);
    t.diagnostic(`${(read / MiB).toFixed(0)} MiB read`);
    // The guided cut reads the copy once and the copy reads it once more: twice. The unguided cut
    // run to its end (not stopped) made it three times.
    assert.ok(read < 2.5 * size, `${(read / MiB).toFixed(0)} MiB read for a copy of ${size / MiB} MiB`);
  });

  it('a file that comes inline in time for a 1 GiB copy: the copy is not cut at all (a copy this large waits for the list before it is cut), nothing reads its descriptor once closed', async (t) => {
    const size = 1024 * MiB;
    const small = Buffer.from('the new version, small enough to come inline');
    const { dest, target } = await localCopy(Buffer.alloc(0), size);
    const conn = await hostile(async (req, reply) => {
      if (req.type !== 'share.chunks') return undefined;
      await reply.message({ type: 'chunks', size: small.length, mtimeMs: 1000, fileHash: fileHashOf(small), count: 1, inline: true });
      await reply.data(Buffer.concat([encodeChunks([{ offset: 0, length: small.length, hash: blake3(small) }]), small]));
      return {};
    });
    const before = helpersSeen.length;
    const start = io();
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    const read = io().read - start.read;
    assert.ok(o.ok && o.value.changed, `the update failed: ${!o.ok && `${o.code} ${o.message}`}`);
    await assertOneVersion(o, dest, target, undefined, small, 'inline in time');
    // Until 2026-12-03 the unguided cut started at once, with a helper, and was stopped when the
    // list came; a copy this large now waits GUIDE_WAIT_MS for the list first (the late inline
    // answer below still meets a running cut and its helper).
    assert.equal(helpersSeen.length, before, 'a cut was started');
    assert.equal(helpersRunning(), 0);
    assert.deepEqual(closedUnderReader, []);
    t.diagnostic(`${(read / MiB).toFixed(0)} MiB read`);
    assert.ok(read < MiB, `${(read / MiB).toFixed(0)} MiB of a copy that was not needed read`);
  });

  it('a file that comes inline late (the unguided cut still running): the cut is stopped, not waited for to its end', async (t) => {
    const size = 2048 * MiB;
    const small = Buffer.from('inline, but after GUIDE_WAIT_MS');
    const { dest, target } = await localCopy(Buffer.alloc(0), size);
    const conn = await hostile(async (req, reply) => {
      if (req.type !== 'share.chunks') return undefined;
      await delay(delta.GUIDE_WAIT_MS + 50);
      await reply.message({ type: 'chunks', size: small.length, mtimeMs: 1000, fileHash: fileHashOf(small), count: 1, inline: true });
      await reply.data(Buffer.concat([encodeChunks([{ offset: 0, length: small.length, hash: blake3(small) }]), small]));
      return {};
    });
    const start = io();
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    const read = io().read - start.read;
    assert.ok(o.ok && o.value.changed, `the update failed: ${!o.ok && `${o.code} ${o.message}`}`);
    await assertOneVersion(o, dest, target, undefined, small, 'inline late');
    assert.equal(helpersRunning(), 0);
    t.diagnostic(`${(read / MiB).toFixed(0)} MiB read`);
    // Before round 15 the whole 2 GiB copy was cut (3.1 s) before 31 bytes were written.
    assert.ok(read < size / 2, `${(read / MiB).toFixed(0)} MiB of a copy that was not needed read`);
  });

  for (const what of ['refused', 'cancelled'] as const) {
    it(`${what === 'refused' ? 'the list refused 20 ms after it was asked for' : 'the update cancelled before the list came'}: the unguided cut of a 2 GiB copy is stopped, the copy untouched`, async (t) => {
      const size = 2048 * MiB;
      const { dest, target } = await localCopy(Buffer.alloc(0), size);
      const conn = await hostile(async (req) => {
        if (req.type !== 'share.chunks') return undefined;
        if (what === 'cancelled') return new Promise<never>(() => undefined);
        await delay(20);
        throw new PeerShareError('NOT_FOUND', 'gone');
      });
      const cancel = what === 'cancelled' ? new AbortController() : undefined;
      if (cancel) setTimeout(() => cancel.abort(), 20);
      const start = io();
      const began = performance.now();
      const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true, signal: cancel?.signal }));
      const read = io().read - start.read;
      const tookMs = performance.now() - began;
      assert.ok(!o.ok, 'the update succeeded');
      assertCoded(o.error, what);
      assert.equal(o.code, what === 'cancelled' ? 'CANCELLED' : 'NOT_FOUND');
      assert.deepEqual(await helpers.listTree(dest), ['f.bin'], 'no temporary file');
      assert.equal((await fs.stat(target)).size, size, 'the copy untouched');
      assert.equal(helpersRunning(), 0, 'no helper left');
      // Before round 15: the 2 GiB copy read whole (1.5-3.5 s) before the error was given.
      t.diagnostic(`${(read / MiB).toFixed(0)} MiB read, ${tookMs.toFixed(0)} ms`);
      assert.ok(read < size / 2, `${(read / MiB).toFixed(0)} MiB read`);
      assert.ok(tookMs < 1500, `${tookMs.toFixed(0)} ms`);
    });
  }

  it('the list answered just as the unguided cut ends (before its last reads, after them, after its end): exactly the sharer\'s version lands, no more fetched than a full cut would, a cut that ended not made again', async (t) => {
    const ours = helpers.seededBytes(24 * MiB, 1530);
    const theirs = Buffer.from(ours);
    helpers.seededBytes(MiB, 1531).copy(theirs, 9 * MiB);
    const list = chunkBytes(theirs);
    const fileHash = fileHashOf(theirs);
    const atMost = bytesMissing(list, ours);
    // The unguided cut reads 1 MiB at a time from 0; the list is let go when it asks for a read at
    // `from` (or once it has ended, for -1).
    for (const from of [20 * MiB, 23 * MiB, -1]) {
      const { dest, target, real } = await localCopy(ours);
      let release: () => void = () => undefined;
      const released = new Promise<void>((resolve) => (release = resolve));
      let firstPass = true;
      let bytesRead = 0;
      readHook.path = real;
      readHook.before = (position, length) => {
        bytesRead += length;
        if (!firstPass) return;
        if (position === from) release();
        if (position === 23 * MiB) {
          firstPass = false;
          if (from === -1) setTimeout(release, 20);
        }
      };
      const conn = await hostile(async (req, reply) => {
        if (req.type === 'share.chunks') {
          await released;
          return sendList(reply, theirs.length, fileHash, list);
        }
        if (req.type === 'share.readChunks') return sendChunks(req, reply, theirs, list);
        return undefined;
      });
      try {
        const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
        assert.ok(o.ok, `list at ${from}: ${!o.ok && `${o.code} ${o.message}`}`);
        await assertOneVersion(o, dest, target, ours, theirs, `list at ${from}`);
        assert.ok(o.value.bytesReceived <= atMost, `list at ${from}: ${o.value.bytesReceived} bytes fetched, a full cut leaves ${atMost} to fetch`);
        assert.ok(o.value.bytesReused >= theirs.length - atMost, `list at ${from}: only ${o.value.bytesReused} bytes reused`);
        // A list after the cut's end finds it whole: it is used, not made again (one cut and the copy).
        t.diagnostic(`list at ${from}: ${(bytesRead / MiB).toFixed(0)} MiB of the copy read, ${o.value.bytesReceived} bytes fetched`);
        if (from === -1) assert.ok(bytesRead < 2.5 * ours.length, `list after the cut: the copy read ${(bytesRead / MiB).toFixed(0)} MiB`);
      } finally {
        readHook.path = undefined;
      }
    }
    assert.equal(helpersRunning(), 0);
  });
});

// ---- 3. a local process, or the person, during the guided cut --------------------------------

describe('the local copy acted on, or the update cancelled, while the guided cut reads it', () => {
  /**
   * An update of a 24 MiB copy whose list comes at once while its disk is slow (each read of the
   * unguided cut held 15 ms), so the guided cut always runs; `act` is called before the guided
   * cut's read at `at` (its reads go from 0 again, 1 MiB at a time).
   */
  /**
   * An update of `ours` to `theirs` with `act` done to the local copy when the update reads it at
   * `at`: through the guided cut (the sharer refuses its block list), or with `blockList`, through
   * the copy predicted block by block (block-copy.ts).
   */
  async function duringGuidedCut(ours: Buffer, theirs: Buffer, act: (target: string) => void, options: { at?: number; signal?: AbortSignal; blockList?: boolean } = {}) {
    const list = chunkBytes(theirs);
    const fileHash = fileHashOf(theirs);
    const { dest, target, real } = await localCopy(ours);
    let lists = 0;
    let listSent = false;
    let guidedReads = -1; // reads at 0 seen after the list: the guided cut's first is the one
    let acted = false;
    readHook.path = real;
    readHook.before = (position) => {
      if (!listSent) return delay(15);
      if (acted) return;
      if (position === 0 && guidedReads < 0) guidedReads = 0;
      if (guidedReads >= 0 && position === (options.at ?? 6 * MiB)) {
        acted = true;
        act(target);
      }
    };
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') {
        lists++;
        await sendList(reply, theirs.length, fileHash, list);
        listSent = true;
        return {};
      }
      if (req.type === 'share.readChunks') return sendChunks(req, reply, theirs, list);
      if (req.type === 'share.manifest') {
        if (options.blockList) return sendManifest(reply, theirs);
        throw new PeerShareError('TOO_LARGE', 'No block list for this one.');
      }
      return undefined;
    });
    try {
      const start = io();
      const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true, signal: options.signal }));
      return { o, dest, target, lists, acted, written: io().written - start.written };
    } finally {
      readHook.path = undefined;
    }
  }

  it('the copy truncated, rewritten in place or grown meanwhile: started over once (FILE_CHANGED), and exactly the sharer\'s version lands', async () => {
    const ours = helpers.seededBytes(24 * MiB, 1540);
    const theirs = Buffer.concat([ours.subarray(0, 12 * MiB), helpers.seededBytes(300 * KiB, 1541), ours.subarray(12 * MiB)]);
    const acts: [string, (target: string) => void][] = [
      ['truncated', (target) => truncateTo(target, 10 * MiB)],
      ['rewritten in place', (target) => rewrite(target, 2 * MiB, helpers.seededBytes(64 * KiB, 1545))],
      ['grown', (target) => rewrite(target, ours.length, helpers.seededBytes(64 * KiB, 1545))],
    ];
    for (const blockList of [false, true]) {
      for (const [act_, act] of acts) {
        const how = `${act_}${blockList ? ', the copy predicted block by block' : ''}`;
        const { o, dest, target, lists, acted } = await duringGuidedCut(ours, theirs, act, { blockList });
        assert.ok(acted, `${how}: the update did not read the copy there`);
        assert.ok(o.ok, `${how}: ${!o.ok && `${o.code} ${o.message}`}`);
        assert.equal(lists, 2, `${how}: FILE_CHANGED, then once more`);
        await assertOneVersion(o, dest, target, undefined, theirs, how);
      }
    }
  });

  it('the copy replaced by a symlink to a file outside, or by a FIFO, meanwhile: started over, then left alone (BAD_NAME, NOT_A_FILE), the file outside untouched, no hang', async () => {
    const ours = helpers.seededBytes(24 * MiB, 1542);
    const theirs = Buffer.concat([helpers.seededBytes(1000, 1543), ours]);
    const outside = path.join(helpers.tempDir('peershare-r15-outside-'), 'precious.txt');
    await fs.writeFile(outside, 'precious');
    const acts: [string, (target: string) => void, string, (target: string) => Promise<boolean>][] = [
      ['a symlink to a file outside', (target) => swapIn(target, (tmp) => symlinkSync(outside, tmp)), 'BAD_NAME', async (target) => (await fs.readlink(target)) === outside],
      ['a FIFO', (target) => swapIn(target, (tmp) => execFileSync('mkfifo', [tmp])), 'NOT_A_FILE', async (target) => (await fs.lstat(target)).isFIFO()],
    ];
    for (const [what_, act, code, stillThere] of [...acts, ...acts.map(([w, a, c, st]) => [`${w}, the copy predicted block by block`, a, c, st] as const)]) {
      const what = what_;
      const blockList = what.endsWith('block by block');
      // The predicted copy reads the copy a block at a time from where the sharer's blocks lie in it: 1,000 bytes before.
      const { o, dest, target, lists, acted } = await duringGuidedCut(ours, theirs, act, { blockList, at: blockList ? 6 * MiB - 1000 : undefined });
      assert.ok(acted, `${what}: the guided cut did not run`);
      // The copy the cut reads lost its name (its ctime moved): FILE_CHANGED, and the second try finds what took the name.
      assert.equal(lists, 1, `${what}: asked for the list once`);
      assert.ok(!o.ok, `${what}: the update went through ${what}`);
      assert.equal(o.code, code, `${what}: ${o.message}`);
      assertCoded(o.error, what);
      assert.ok(await stillThere(target), `${what}: left alone`);
      assert.deepEqual(await helpers.listTree(dest), ['f.bin'], `${what}: no temporary file`);
      assert.equal(await fs.readFile(outside, 'utf8'), 'precious', `${what}: the file outside was written`);
    }
  });

  it('the update cancelled during the guided cut, the sharer\'s version all in the copy (nothing to fetch): CANCELLED, the copy untouched, the rest of it neither cut nor copied', async (t) => {
    const ours = helpers.seededBytes(24 * MiB, 1544);
    // The sharer's version: the copy's chunks in another order (its first two swapped), all held here.
    const plain = chunkBytes(ours);
    const pieces = plain.map((c) => ours.subarray(c.offset, c.offset + c.length));
    [pieces[0], pieces[1]] = [pieces[1], pieces[0]];
    const theirs = Buffer.concat(pieces);
    for (const blockList of [false, true]) {
      const how = blockList ? 'the copy predicted block by block' : 'the guided cut';
      const cancel = new AbortController();
      const { o, dest, target, acted, written } = await duringGuidedCut(ours, theirs, () => cancel.abort(), { at: 4 * MiB, signal: cancel.signal, blockList });
      assert.ok(acted, `${how}: the update did not read the copy there`);
      // Before round 15 the cancel was not seen at all: the cut went on, every chunk was copied, and
      // with nothing to fetch the update landed (changed: true) after it was cancelled.
      assert.ok(!o.ok, `${how}: a cancelled update landed`);
      assert.equal(o.code, 'CANCELLED', how);
      await assertOneVersion(o, dest, target, ours, theirs, `${how}: cancelled`);
      t.diagnostic(`${how}: ${(written / MiB).toFixed(1)} MiB written`);
      assert.ok(written < 12 * MiB, `${how}: ${(written / MiB).toFixed(1)} MiB written after the cancel`);
    }
  });
});

