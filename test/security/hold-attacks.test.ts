import assert from 'node:assert/strict';
import { linkSync, promises as fs, statSync, utimesSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { before, describe, it } from 'node:test';
import type { Chunk } from '../../src/core/cdc';
import type { ReplierV2 } from '../hostile';
import { append, rewriteKeepingTimes, swapIn, truncateTo } from './local-acts';
import { writeSpy } from './write-spy';
import { attackFrame, loadAttackModules, type AttackModules } from './attack-frame';

/**
 * Round 18: a copy of the same size held in place (src/core/block-copy.ts `predictedCopy` with
 * `holdUntilDifferent`, and its use in deltaOnce in src/core/delta.ts). An update (sync, Update
 * from Peer) of a local copy of 16 MiB or more that is the target itself, of the sharer's size and
 * with one name, which the update may replace (`overwrite`), is checked block by block against the
 * sharer's block list without writing: every block the sharer's, nothing is written and only the
 * sharer's time is set on the copy (`sameVersion`); at the first block that is not, the blocks held
 * before it are read again and written, and the update goes on as any predicted copy.
 *
 * Attackers: a hostile sharer (the requester is the victim) whose block list fits the local copy
 * but not its chunk list, whose fileHash alone differs, whose file changes during the update; and
 * a local process or the person (the copy grown, truncated, rewritten with its time set back,
 * renamed over or given a second name while the lists come, while blocks are held, while the held
 * blocks are written; the disk failing a held block's write; the update cancelled).
 *
 * Oracles: the file system (the target is exactly the old file, with its old time, or exactly the
 * sharer's version; its inode; its mtime; nothing else in dest; a second name's time untouched),
 * what deltaFile reports (changed, the version: what a sync records as the file's), coded errors,
 * and spies installed before src/ loads: fs.write on the temporary file (write-spy.ts), and a hook
 * before each read of the local copy (cut-spies.ts).
 */

let { core, cdc, delta, blocks, blake3, manifestOfBytes, helpers, hostileKit } = {} as AttackModules;
let { fileHashOf, sendChunks, outcomeOf, assertCoded } = {} as AttackModules['answers'];
let spies: typeof import('./cut-spies');

const frame = attackFrame({ handleSpy: true });
const { cleanups } = frame;

before(async () => {
  spies = await import('./cut-spies');
  let answers: AttackModules['answers'];
  ({ core, cdc, delta, blocks, blake3, manifestOfBytes, helpers, hostileKit, answers } = await loadAttackModules());
  ({ fileHashOf, sendChunks, outcomeOf, assertCoded } = answers);
});

// ---- helpers ---------------------------------------------------------------------------------

const KiB = 1024;
const MiB = 1024 * KiB;
/** The local copy's time before each update (whole seconds: set back exactly by rewriteKeepingTimes). */
const OLD_MTIME_S = 1_600_000_000;
/** The target of the update under way (for acts of the sharer's, which come before any read). */
const current = { target: '' };

/** A share.chunks answer for a file of `size` bytes named by `fileHash` (hex), mtime HOSTILE_MTIME_MS, `chunks` as they are. */
async function sendList(reply: ReplierV2, size: number, fileHash: string, chunks: readonly Chunk[]): Promise<Record<string, unknown>> {
  await reply.message({ type: 'chunks', size, mtimeMs: hostileKit.HOSTILE_MTIME_MS, fileHash, count: chunks.length });
  if (chunks.length > 0) await reply.data(cdc.encodeChunks(chunks));
  return {};
}

/** A share.manifest answer of `size`, `blockSize` and `blockHashes` as they are, its header naming the hash of exactly that list. */
async function sendRawBlockList(reply: ReplierV2, size: number, blockSize: number, blockHashes: Buffer[]): Promise<Record<string, unknown>> {
  const manifest = blocks.manifestFromBlockHashes(size, blockSize, blockHashes);
  await reply.message({ type: 'manifest', size, mtimeMs: hostileKit.HOSTILE_MTIME_MS, blockSize, fileHash: manifest.fileHash.toString('hex') });
  await reply.data(blocks.encodeBlockManifest(manifest));
  return {};
}

interface Sharer {
  /** The answer to the chunk list (`attempt`: 0, then 1 when deltaFile starts over); default the honest one of `theirs`. */
  chunks?: (reply: ReplierV2, attempt: number) => Promise<Record<string, unknown>>;
  /** The answer to the block list; default the honest one of `theirs`. */
  manifest?: (reply: ReplierV2, attempt: number) => Promise<Record<string, unknown> | void>;
  /** The answer to a chunk read; default the chunks of `theirs`. */
  readChunks?: (req: Record<string, unknown>, reply: ReplierV2, attempt: number) => Promise<Record<string, unknown> | void>;
}

interface Acts {
  signal?: AbortSignal;
  /** Before each read of the local copy (`nth`: the reads of that place so far, this one included). */
  onRead?: (position: number, length: number, target: string, nth: number) => void;
  /** Before each write into the temporary file. */
  onWrite?: (position: number, length: number, target: string) => void;
}

/**
 * An update in place (deltaFile, `overwrite`, over a real connection) of `f.bin` holding `ours`,
 * its time OLD_MTIME_S, to the sharer's `theirs`. What came back, with the local copy's inode before,
 * the requests the sharer saw, the block-long reads of the copy and the writes into the temporary file.
 */
async function update(ours: Buffer, theirs: Buffer, sharer: Sharer = {}, acts: Acts = {}) {
  // The honest answers made first: the sharer runs in this process, and a late list is not used.
  const list = cdc.chunkBytes(theirs);
  const honest = manifestOfBytes(theirs, blocks.blockSizeFor(theirs.length));
  const dest = helpers.tempDir('peershare-r18-');
  const target = path.join(dest, 'f.bin');
  current.target = target;
  await fs.writeFile(target, ours);
  await fs.utimes(target, OLD_MTIME_S, OLD_MTIME_S);
  const real = await fs.realpath(target);
  const inoBefore = (await fs.stat(target)).ino;
  const seen: string[] = [];
  let chunkLists = 0;
  let manifests = 0;
  const blockSize = blocks.blockSizeFor(ours.length);
  let blockReads = 0;
  const readsAt = new Map<number, number>();
  spies.readHook.path = real;
  spies.readHook.before = (position, length) => {
    if (length === blockSize) blockReads++;
    const nth = (readsAt.get(position) ?? 0) + 1;
    readsAt.set(position, nth);
    acts.onRead?.(position, length, target, nth);
  };
  const writes: { position: number; length: number }[] = [];
  writeSpy.onWrite = (position, data) => {
    writes.push({ position, length: data.length });
    acts.onWrite?.(position, data.length, target);
  };
  const server = await hostileKit.startHostileSharerV2(frame.hostileIdentity, async (req, reply) => {
    seen.push(req.type as string);
    if (req.type === 'share.chunks') {
      const attempt = chunkLists++;
      return sharer.chunks ? sharer.chunks(reply, attempt) : sendList(reply, theirs.length, honest.fileHash.toString('hex'), list);
    }
    if (req.type === 'share.manifest') {
      const attempt = manifests++;
      return sharer.manifest ? sharer.manifest(reply, attempt) : sendRawBlockList(reply, theirs.length, honest.blockSize, honest.blockHashes);
    }
    if (req.type === 'share.readChunks') return sharer.readChunks ? sharer.readChunks(req, reply, chunkLists - 1) : sendChunks(req, reply, theirs, list);
    return undefined;
  });
  cleanups.push(() => server.close());
  const conn = await core.connectToPeer({ identity: frame.victim.identity, trust: frame.victim.trust, addresses: [server.address], expectedPeerId: frame.hostileIdentity.peerId, name: 'victim', limits: { stallTimeoutMs: 5000 } });
  cleanups.push(() => conn.close());
  writeSpy.returned = false;
  writeSpy.afterReturn = [];
  try {
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true, signal: acts.signal }));
    writeSpy.returned = true;
    return { o, dest, target, inoBefore, seen, chunkLists, writes, held: blockReads > 8 };
  } finally {
    spies.readHook.path = undefined;
    spies.readHook.before = undefined;
    writeSpy.onWrite = undefined;
  }
}

type Updated = Awaited<ReturnType<typeof update>>;

/**
 * The oracle: dest holds f.bin alone. An update that succeeded left exactly the sharer's `theirs`,
 * with the sharer's time, and reported its fileHash; one that reported nothing changed wrote nothing
 * and kept the inode. One that failed is coded and left exactly `ours` with its old time (unless
 * `ours` is undefined: the copy was changed by the attack itself).
 */
async function assertOracle(u: Updated, ours: Buffer | undefined, theirs: Buffer, what: string, extra: string[] = []): Promise<void> {
  const { o, dest, target } = u;
  assert.deepEqual(await helpers.listTree(dest), ['f.bin', ...extra].sort(), `${what}: no temporary file, nothing else in dest`);
  const now = await fs.readFile(target);
  const st = await fs.stat(target);
  if (o.ok) {
    assert.ok(now.equals(theirs), `${what}: the update reported success (changed: ${o.value.changed}), so the target must be exactly the sharer's version (it holds ${now.length} bytes, the sharer's ${theirs.length})`);
    assert.equal(o.value.version.fileHash, fileHashOf(theirs), `${what}: the version reported (recorded by a sync) is not the target's`);
    assert.equal(o.value.version.size, now.length, `${what}: the size reported`);
    assert.equal(Math.floor(st.mtimeMs), hostileKit.HOSTILE_MTIME_MS, `${what}: the sharer's time`);
    if (!o.value.changed) {
      assert.equal(st.ino, u.inoBefore, `${what}: nothing changed, yet the file is another`);
      assert.deepEqual(u.writes, [], `${what}: nothing changed, yet the temporary file was written`);
    }
  } else {
    assertCoded(o.error, what);
    if (ours) {
      assert.ok(now.equals(ours), `${what}: the update failed (${o.code}), so the target must be the old file`);
      assert.equal(st.mtimeMs, OLD_MTIME_S * 1000, `${what}: the update failed (${o.code}), yet the old file's time was changed`);
    }
  }
}

/**
 * The update with a second name given to the copy meanwhile (`outside`): it succeeded with exactly
 * the sharer's version (`theirs`, which the copy held too), made anew under the target's name; the
 * file outside kept its bytes and its old time.
 */
async function assertSecondNameUntouched(u: Updated, outside: string, theirs: Buffer, what: string): Promise<void> {
  assert.ok(u.o.ok, `${what}: ${!u.o.ok && `${u.o.code} ${u.o.message}`}`);
  await assertOracle(u, undefined, theirs, what);
  const other = await fs.stat(outside);
  assert.equal(other.mtimeMs, OLD_MTIME_S * 1000, `${what}: the time of the file outside dest was set`);
  assert.ok((await fs.readFile(outside)).equals(theirs), `${what}: the file outside dest was written`);
  assert.notEqual(other.ino, (await fs.stat(u.target)).ino, `${what}: the copy was kept in place with two names`);
}

/** `bytes` with the byte at `at` flipped. */
function flipped(bytes: Buffer, at: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[at] ^= 0xff;
  return copy;
}

// ---- 1. block lists and chunk lists that fit the copy, or do not ------------------------------

describe('a block list that fits the local copy of the same size, and a chunk list that does not (deltaFile in place; the requester is the victim)', () => {
  let ours: Buffer;
  let blockSize: number;
  let ownHashes: Buffer[];
  let ourList: Chunk[];
  before(() => {
    ours = helpers.seededBytes(20 * MiB + 100, 1801);
    blockSize = blocks.blockSizeFor(ours.length);
    ownHashes = manifestOfBytes(ours, blockSize).blockHashes;
    // Made before the updates: a list made as the sharer answers may come late, and is then not used.
    ourList = cdc.chunkBytes(ours);
  });

  it('the copy\'s own block hashes under another size with as many blocks (one byte shorter, one longer), the chunk list named by that list\'s hash: never taken as that version; HASH_MISMATCH, the old file and its time', async () => {
    for (const size of [ours.length - 1, ours.length + 1]) {
      const what = `a block list of ${size} bytes for a copy of ${ours.length}`;
      assert.equal(blocks.blockCount(size, blockSize), ownHashes.length);
      const lie = blocks.manifestFromBlockHashes(size, blockSize, ownHashes);
      const u = await update(ours, ours, {
        chunks: (reply) => sendList(reply, ours.length, lie.fileHash.toString('hex'), ourList),
        manifest: (reply) => sendRawBlockList(reply, size, blockSize, ownHashes),
      });
      assert.ok(u.seen.includes('share.manifest'), `${what}: the block list was not asked for`);
      // Before round 18: every block was the copy's, so the copy was taken as the version the
      // chunk list named (sameVersion): "nothing changed", the sharer's time set on it, and a
      // fileHash that no file of this size has reported (and recorded by a sync) as the copy's.
      assert.ok(!u.o.ok, `${what}: reported as the copy's version (changed: ${u.o.ok && u.o.value.changed}, fileHash ${u.o.ok && u.o.value.version.fileHash})`);
      assert.equal(u.o.code, 'HASH_MISMATCH', `${what}: ${u.o.message}`);
      await assertOracle(u, ours, ours, what);
    }
  });

  it('the copy\'s own block list (and fileHash), the chunk list naming other chunks (a chunk changed, one split in two): the copy is that version; nothing written, the sharer\'s time only', async () => {
    const honestList = ourList;
    const changed = honestList.map((c, i) => (i === 5 ? { ...c, hash: blake3(Buffer.from('not the copy\'s')) } : c));
    const c = honestList[3];
    const half = Math.floor(c.length / 2);
    const split = [...honestList.slice(0, 3), { offset: c.offset, length: half, hash: blake3(ours.subarray(c.offset, c.offset + half)) }, { offset: c.offset + half, length: c.length - half, hash: blake3(ours.subarray(c.offset + half, c.offset + c.length)) }, ...honestList.slice(4)];
    const ourHash = fileHashOf(ours);
    for (const [what, chunks] of [['a chunk changed', changed], ['a chunk split in two', split]] as const) {
      const u = await update(ours, ours, { chunks: (reply) => sendList(reply, ours.length, ourHash, chunks) });
      assert.ok(u.o.ok, `${what}: ${!u.o.ok && `${u.o.code} ${u.o.message}`}`);
      assert.ok(u.held, `${what}: the copy was not checked block by block`);
      assert.equal(u.o.value.changed, false, `${what}: the copy was rewritten`);
      await assertOracle(u, ours, ours, what);
    }
  });

  it('the copy\'s own block hashes, the chunk list naming another fileHash (the fileHash alone differs): the block list is not used, the copy is not that version; HASH_MISMATCH, the old file and its time', async () => {
    const other = fileHashOf(flipped(ours, 7 * MiB));
    const u = await update(ours, ours, {
      chunks: (reply) => sendList(reply, ours.length, other, ourList),
      manifest: (reply) => sendRawBlockList(reply, ours.length, blockSize, ownHashes),
    });
    assert.ok(u.seen.includes('share.manifest'), 'the block list was not asked for');
    assert.ok(!u.held, 'the copy was checked against a block list of another version');
    assert.ok(!u.o.ok, 'the copy was taken as a version its bytes are not');
    assert.equal(u.o.code, 'HASH_MISMATCH', u.o.message);
    await assertOracle(u, ours, ours, 'the fileHash alone differs');
  });

  it('the same version, sizes at and around the threshold (16 MiB, a byte less, a 1-byte last block): nothing written, the inode kept, the sharer\'s time; checked block by block from 16 MiB', async () => {
    for (const size of [16 * MiB - 1, 16 * MiB, 16 * MiB + 1, 16 * MiB + 128 * KiB - 1]) {
      const bytes = helpers.seededBytes(size, 1802);
      const u = await update(bytes, bytes);
      const what = `${size} bytes`;
      assert.ok(u.o.ok, `${what}: ${!u.o.ok && `${u.o.code} ${u.o.message}`}`);
      assert.equal(u.o.value.changed, false, `${what}: rewritten`);
      assert.equal(u.held, size >= 16 * MiB, `${what}: checked block by block: ${u.held}`);
      assert.equal(u.seen.includes('share.manifest'), size >= 16 * MiB, `${what}: the block list asked for`);
      await assertOracle(u, bytes, bytes, what);
    }
  });

  it('the first difference at block 0, at the last full block, in a 1-byte last block only, in the last byte of a short last block: exactly the sharer\'s version lands, every block of it written once', async () => {
    const oneByteTail = helpers.seededBytes(16 * MiB + 1, 1803);
    const shortTail = helpers.seededBytes(16 * MiB + 100, 1804);
    const bs = blocks.blockSizeFor(oneByteTail.length);
    const cases: [string, Buffer, Buffer][] = [
      ['block 0', shortTail, flipped(shortTail, 10)],
      ['the last full block', shortTail, flipped(shortTail, 16 * MiB - bs + 5)],
      ['the 1-byte last block only', oneByteTail, flipped(oneByteTail, 16 * MiB)],
      ['the last byte of a short last block', shortTail, flipped(shortTail, shortTail.length - 1)],
    ];
    for (const [what, ours, theirs] of cases) {
      const u = await update(ours, theirs);
      assert.ok(u.o.ok, `${what}: ${!u.o.ok && `${u.o.code} ${u.o.message}`}`);
      assert.ok(u.held, `${what}: the copy was not checked block by block`);
      assert.equal(u.o.value.changed, true, what);
      await assertOracle(u, ours, theirs, what);
      assert.notEqual((await fs.stat(u.target)).ino, u.inoBefore, `${what}: the copy was written in place`);
      // Each byte of the new file written: the held blocks, the block worked out, the chunks fetched.
      const covered = new Uint8Array(theirs.length);
      for (const { position, length } of u.writes) covered.fill(1, position, position + length);
      assert.equal(covered.indexOf(0), -1, `${what}: a byte of the new file never written`);
      const written = u.writes.reduce((sum, w) => sum + w.length, 0);
      assert.ok(written <= theirs.length + 2 * cdc.CDC_MAX_BYTES, `${what}: ${written} bytes written for a file of ${theirs.length}`);
    }
  });
});

// ---- 2. the local copy acted on while it is held ----------------------------------------------

describe('the local copy acted on while it is checked in place, or while its held blocks are written', () => {
  let ours: Buffer;
  let blockSize: number;
  let ourList: Chunk[];
  let ourManifest: import('../../src/core/blocks').BlockManifest;
  before(() => {
    ours = helpers.seededBytes(20 * MiB, 1810);
    blockSize = blocks.blockSizeFor(ours.length);
    ourList = cdc.chunkBytes(ours);
    ourManifest = manifestOfBytes(ours, blockSize);
  });

  it('the copy appended to while its chunk list or block list is on the way (after it was opened): never reported as the sharer\'s version; exactly the sharer\'s version lands', async () => {
    const moments: [string, (act: () => void) => Sharer][] = [
      ['the chunk list', (act) => ({ chunks: (reply, attempt) => (attempt === 0 && act(), sendList(reply, ours.length, ourManifest.fileHash.toString('hex'), ourList)) })],
      ['the block list', (act) => ({ manifest: (reply, attempt) => (attempt === 0 && act(), hostileKit.sendManifest(reply, ours, ourManifest)) })],
    ];
    for (const [moment, sharerFor] of moments) {
      const what = `appended to while ${moment} comes`;
      let acted = false;
      const u = await update(ours, ours, sharerFor(() => {
        append(current.target, helpers.seededBytes(64 * KiB, 1811));
        acted = true;
      }));
      assert.ok(acted, `${what}: not acted`);
      assert.ok(u.seen.includes('share.manifest'), `${what}: the block list was not asked for`);
      // Before round 18: the copy's first 20 MiB were the sharer's, and its size was taken when it
      // was opened: "nothing changed", the sharer's time set on a file 64 KiB longer, and the
      // sharer's size and fileHash reported (and recorded by a sync) as its own.
      assert.ok(u.o.ok, `${what}: ${!u.o.ok && `${u.o.code} ${u.o.message}`}`);
      await assertOracle(u, undefined, ours, what);
    }
  });

  it('a second name (a hard link outside dest) given to the copy while the block list comes, or while its blocks are held: the copy is not touched in place, the other name keeps its time and bytes', async () => {
    const outsideDir = helpers.tempDir('peershare-r18-outside-');
    const moments: [string, (link: () => void) => [Sharer, Acts]][] = [
      ['while the block list comes', (link) => [{ manifest: (reply, attempt) => (attempt === 0 && link(), hostileKit.sendManifest(reply, ours, ourManifest)) }, {}]],
      ['while its blocks are held', (link) => [{}, { onRead: (position, length, _t, nth) => void (position === 10 * blockSize && length === blockSize && nth === 1 && link()) }]],
    ];
    for (const [moment, setup] of moments) {
      const what = `a hard link made ${moment}`;
      const outside = path.join(outsideDir, `other-${moment.length}.bin`);
      let linked = false;
      // Made synchronously: the sharer answers, or the read goes on, only after it.
      const [sharer, acts] = setup(() => {
        linkSync(current.target, outside);
        linked = true;
      });
      const u = await update(ours, ours, sharer, acts);
      assert.ok(linked, `${what}: not acted`);
      // Before round 18 (while the block list comes): the copy, with two names now, was taken as
      // the sharer's version and its time set through the other name too (the copy cut whole is
      // checked for one name: round 7).
      await assertSecondNameUntouched(u, outside, ours, what);
    }
  });

  it('a small copy (its update sent inline) given a second name while the answer comes: not taken as the sharer\'s version in place; the other name keeps its time and bytes', async () => {
    const small = helpers.seededBytes(4 * KiB, 1812);
    const outside = path.join(helpers.tempDir('peershare-r18-outside-'), 'other-small.bin');
    let linked = false;
    const inline = async (reply: ReplierV2, attempt: number): Promise<Record<string, unknown>> => {
      if (attempt === 0) {
        linkSync(current.target, outside);
        linked = true;
      }
      const list = cdc.chunkBytes(small);
      await reply.message({ type: 'chunks', size: small.length, mtimeMs: hostileKit.HOSTILE_MTIME_MS, fileHash: fileHashOf(small), count: list.length, inline: true });
      await reply.data(cdc.encodeChunks(list));
      await reply.data(small);
      return {};
    };
    const u = await update(small, small, { chunks: inline });
    const what = 'a hard link made while the inline answer comes';
    assert.ok(linked, `${what}: not acted`);
    assert.deepEqual(u.seen, ['share.chunks'], `${what}: the file came inline`);
    // Before: the copy's number of names was taken when it was opened, so one linked meanwhile was
    // found to hold the sharer's bytes and given the sharer's time through both names.
    await assertSecondNameUntouched(u, outside, small, what);
  });

  it('a copy under 16 MiB (cut whole, then hashed again) given a second name while it is hashed again: not taken as the sharer\'s version in place; the other name keeps its time and bytes', async () => {
    const mid = helpers.seededBytes(4 * MiB, 1813);
    const outside = path.join(helpers.tempDir('peershare-r18-outside-'), 'other-mid.bin');
    let linked = false;
    // The cut reads the copy once; the second read of its start is the hash of the whole copy.
    const u = await update(mid, mid, {}, {
      onRead: (position, _length, target, nth) => {
        if (position === 0 && nth === 2 && !linked) {
          linkSync(target, outside);
          linked = true;
        }
      },
    });
    const what = 'a hard link made while the copy is hashed again';
    assert.ok(linked, `${what}: not acted`);
    await assertSecondNameUntouched(u, outside, mid, what);
  });

  it('the copy rewritten with its time set back, truncated, or renamed over, while its blocks are held or just before the last is read: never taken as the sharer\'s version; started over (FILE_CHANGED), exactly the sharer\'s version lands', async () => {
    const blocksCount = blocks.blockCount(ours.length, blockSize);
    const acts: [string, (target: string) => void][] = [
      ['a held block rewritten, its time set back', (target) => rewriteKeepingTimes(target, 2 * blockSize + 7, helpers.seededBytes(4 * KiB, 1812))],
      ['a block not yet read rewritten, its time set back', (target) => rewriteKeepingTimes(target, (blocksCount - 1) * blockSize + 7, helpers.seededBytes(4 * KiB, 1813))],
      ['truncated by a block and grown back (zeros), its time set back', (target) => {
        const st = statSync(target, { bigint: true });
        truncateTo(target, ours.length - blockSize);
        truncateTo(target, ours.length);
        utimesSync(target, Number(st.atimeNs) / 1e9, Number(st.mtimeNs) / 1e9);
      }],
      ['renamed over by a file of the same size and time', (target) => swapIn(target, (tmp) => {
        writeFileSync(tmp, flipped(ours, 3 * blockSize));
        utimesSync(tmp, OLD_MTIME_S, OLD_MTIME_S);
      })],
    ];
    for (const at of [8, blocksCount - 1]) {
      for (const [what_, act] of acts) {
        const what = `${what_}, before block ${at} is read`;
        let acted = false;
        const u = await update(ours, ours, {}, {
          onRead: (position, length, target, nth) => {
            if (acted || position !== at * blockSize || length !== blockSize || nth !== 1) return;
            acted = true;
            act(target);
          },
        });
        assert.ok(acted, `${what}: not acted`);
        assert.ok(u.o.ok, `${what}: ${!u.o.ok && `${u.o.code} ${u.o.message}`}`);
        assert.equal(u.chunkLists, 2, `${what}: FILE_CHANGED, then once more`);
        assert.equal(u.o.value.changed, true, `${what}: the copy changed here was reported as the sharer's version`);
        await assertOracle(u, undefined, ours, what);
      }
    }
  });

  it('the copy rewritten (its time set back) while its held blocks are read again and written: never landed as a mix; started over, exactly the sharer\'s version lands', async () => {
    // The sharer's version differs in block 40: blocks 0-39 are held, then written.
    const theirs = flipped(ours, 40 * blockSize + 3);
    for (const block of [1, 30]) {
      const what = `block ${block} rewritten as the held blocks are written`;
      let acted = false;
      const u = await update(ours, theirs, {}, {
        onWrite: (position, _length, target) => {
          if (acted || position !== 0) return;
          acted = true;
          rewriteKeepingTimes(target, block * blockSize + 11, helpers.seededBytes(4 * KiB, 1814));
        },
      });
      assert.ok(acted, `${what}: not acted`);
      assert.ok(u.o.ok, `${what}: ${!u.o.ok && `${u.o.code} ${u.o.message}`}`);
      assert.equal(u.chunkLists, 2, `${what}: FILE_CHANGED, then once more`);
      await assertOracle(u, undefined, theirs, what);
    }
  });
});

// ---- 3. the disk, the cancel, the sharer's file changing --------------------------------------

describe('a held block\'s write failing, the update cancelled while blocks are held, the sharer\'s file changing', () => {
  let ours: Buffer;
  let blockSize: number;
  before(() => {
    ours = helpers.seededBytes(20 * MiB, 1820);
    blockSize = blocks.blockSizeFor(ours.length);
  });

  it('the write of a held block fails (ENOSPC) as the held blocks are written: IO_ERROR, the old file and its time, no temporary file', async () => {
    const count = blocks.blockCount(ours.length, blockSize);
    for (const [firstDifference, failing] of [[40, 3], [count - 1, 0], [count - 1, count - 2]]) {
      const what = `block ${failing} of ${firstDifference} held fails`;
      const theirs = flipped(ours, firstDifference * blockSize + 3);
      writeSpy.failAt = failing * blockSize + 10;
      const u = await update(ours, theirs);
      const failed = writeSpy.failAt === undefined;
      writeSpy.failAt = undefined;
      assert.ok(failed, `${what}: no write covered the place`);
      assert.ok(!u.o.ok, `${what}: the update landed though a held block was never written`);
      assert.equal(u.o.code, 'IO_ERROR', `${what}: ${u.o.message}`);
      await assertOracle(u, ours, theirs, what);
    }
  });

  it('the update cancelled while blocks are held (the same version, or one that differs later), or as the held blocks are written: CANCELLED, the old file and its time, nothing written once deltaFile returned', async (t) => {
    const count = blocks.blockCount(ours.length, blockSize);
    const later = flipped(ours, 100 * blockSize + 3);
    const moments: [string, Buffer, (cancel: AbortController) => Acts][] = [
      ['the same version, as block 30 is held', ours, (cancel) => ({ onRead: (p, l) => void (p === 30 * blockSize && l === blockSize && cancel.abort()) })],
      ['a version that differs at block 100, as block 30 is held', later, (cancel) => ({ onRead: (p, l) => void (p === 30 * blockSize && l === blockSize && cancel.abort()) })],
      ['a version that differs at block 100, as the held blocks are written', later, (cancel) => ({ onWrite: (p) => void (p === 20 * blockSize && cancel.abort()) })],
    ];
    for (const [what, theirs, actsFor] of moments) {
      const cancel = new AbortController();
      const u = await update(ours, theirs, {}, { ...actsFor(cancel), signal: cancel.signal });
      await delay(100);
      t.diagnostic(`${what}: ${u.o.ok ? 'landed' : u.o.code}, ${u.writes.length} writes`);
      assert.ok(cancel.signal.aborted, `${what}: not cancelled`);
      assert.ok(!u.o.ok, `${what}: a cancelled update went through`);
      assert.equal(u.o.code, 'CANCELLED', `${what}: ${u.o.message}`);
      await assertOracle(u, ours, theirs, what);
      assert.deepEqual(writeSpy.afterReturn, [], `${what}: written after deltaFile returned`);
    }
    // Cancelled as the last block is read: too late to stop the check, or in time; either way the
    // target is the old file or (checked the same) the sharer's version.
    const cancel = new AbortController();
    const u = await update(ours, ours, {}, { onRead: (p, l) => void (p === (count - 1) * blockSize && l === blockSize && cancel.abort()), signal: cancel.signal });
    assert.ok(cancel.signal.aborted);
    await assertOracle(u, ours, ours, 'cancelled as the last block is read');
  });

  it('the sharer\'s file changes during the update (its chunk read answers FILE_CHANGED, or its block list another version): exactly the version the sharer names last lands, or the copy is kept as that version', async () => {
    const theirs = flipped(ours, 50 * blockSize + 3);
    const newer = flipped(theirs, 90 * blockSize + 3);
    const newerList = cdc.chunkBytes(newer);
    const theirList = cdc.chunkBytes(theirs);
    const [theirManifest, newerManifest] = [theirs, newer].map((bytes) => manifestOfBytes(bytes, blockSize));
    // The first chunk list names `theirs`; its chunks are refused FILE_CHANGED; the second names `newer`.
    const u = await update(ours, theirs, {
      chunks: (reply, attempt) => (attempt === 0 ? sendList(reply, theirs.length, theirManifest.fileHash.toString('hex'), theirList) : sendList(reply, newer.length, newerManifest.fileHash.toString('hex'), newerList)),
      manifest: (reply, attempt) => attempt === 0 ? hostileKit.sendManifest(reply, theirs, theirManifest) : hostileKit.sendManifest(reply, newer, newerManifest),
      readChunks: async (req, reply, attempt) => {
        if (attempt === 0) throw new core.PeerShareError('FILE_CHANGED', 'The file changed while it was read.');
        return sendChunks(req, reply, newer, newerList);
      },
    });
    assert.ok(u.o.ok, `changed as its chunks are read: ${!u.o.ok && `${u.o.code} ${u.o.message}`}`);
    assert.equal(u.chunkLists, 2, 'started over once');
    await assertOracle(u, ours, newer, 'changed as its chunks are read');
    // The block list of another version than the chunk list's (the file changed between them): not
    // used; the copy, cut whole, is found the chunk list's version.
    const v = await update(ours, ours, { manifest: (reply) => hostileKit.sendManifest(reply, theirs, theirManifest) });
    assert.ok(v.seen.includes('share.manifest'), 'the block list was not asked for');
    assert.ok(v.o.ok, `a block list of another version: ${!v.o.ok && `${v.o.code} ${v.o.message}`}`);
    assert.ok(!v.held, 'the copy was checked against another version\'s block list');
    assert.equal(v.o.value.changed, false);
    await assertOracle(v, ours, ours, 'a block list of another version');
  });
});
