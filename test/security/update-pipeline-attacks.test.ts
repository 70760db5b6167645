import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { promises as fs, readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { before, describe, it } from 'node:test';
import type { PeerConnection } from '../../src/core';
import type { Chunk } from '../../src/core/cdc';
import type { ReplierV2, ScenarioV2 } from '../hostile';
import { longestStall } from './event-loop';
import { mounted, stalledMount } from './stalled-mount';
import { attackFrame, loadAttackModules, type AttackModules } from './attack-frame';

/**
 * Round 11: the update pipeline as changed on 2026-12-02 (docs/protocol-v2.md 15.4): the local copy
 * cut with read-ahead while the sharer's list travels, local chunks copied into the temporary file
 * while the cut goes on (CopyPlan), flushed behind the writes (FlushBehind), verified while the
 * final fsync runs; and the sharer's synchronous lstat of a listed folder's entries (MountTable).
 *
 * Attackers: a hostile sharer (a trusted peer that lies in its chunk lists, stalls, ends early,
 * plays FILE_CHANGED), and a hostile local user or process on the receiver's machine (the local
 * copy changed while it is cut or copied; the target or the temporary file swapped; the disk
 * filled; a stalled mount placed inside a shared folder). Oracles: the file system (nothing
 * unverified or mixed under the final name, nothing outside dest touched, no temporary file left),
 * the error (a coded PeerShareError), unhandled rejections, the event loop's longest stall, the
 * system calls this process made (/proc/self/io), and when a descriptor is closed against what
 * still runs on it.
 *
 * Every module of src/ is loaded in `before`, after `fs.fsync` is wrapped: delta.ts takes
 * `promisify(fsync)` when it loads, and the descriptor-misuse test must see its fsyncs.
 */

// ---- fsync / close spy, installed before any module of src/ loads ----------------------------

// The module object itself (an `import * as` namespace is read-only): src/ reads fsync and closeSync from it.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const fsModule: typeof import('node:fs') = require('node:fs');

/** fsyncs asked for and not yet called back, by descriptor. */
const fsyncsPending = new Map<number, number>();
/** Descriptors closed while an fsync asked on them had not yet called back. */
const closedUnderFsync: number[] = [];
/** Extra delay before a wrapped fsync reaches the disk: a thread pool whose threads are busy (4 by default). */
let fsyncQueueDelayMs = 0;
/** What a delayed fsync found when it finally ran: the descriptor no longer the file it was asked on. */
const fsyncOnWrongFile: string[] = [];
const realFsync = fsModule.fsync;
const realCloseSync = fsModule.closeSync;
(fsModule as { fsync: typeof fsModule.fsync }).fsync = ((fd: number, callback: (err: NodeJS.ErrnoException | null) => void) => {
  fsyncsPending.set(fd, (fsyncsPending.get(fd) ?? 0) + 1);
  let asked: string | undefined;
  try {
    const st = fsModule.fstatSync(fd);
    asked = `${st.dev}:${st.ino}`;
  } catch {
    asked = undefined;
  }
  const done = (err: NodeJS.ErrnoException | null): void => {
    const left = (fsyncsPending.get(fd) ?? 1) - 1;
    if (left > 0) fsyncsPending.set(fd, left);
    else fsyncsPending.delete(fd);
    callback(err);
  };
  const run = (): void => {
    if (fsyncQueueDelayMs > 0) {
      let now: string;
      try {
        const st = fsModule.fstatSync(fd);
        now = `${st.dev}:${st.ino}`;
      } catch (err) {
        now = (err as NodeJS.ErrnoException).code ?? 'error';
      }
      if (now !== asked) fsyncOnWrongFile.push(`fsync asked on ${asked}, ran on ${now}`);
    }
    realFsync(fd, done);
  };
  if (fsyncQueueDelayMs > 0) setTimeout(run, fsyncQueueDelayMs);
  else run();
}) as typeof fsModule.fsync;
(fsModule as { closeSync: typeof fsModule.closeSync }).closeSync = (fd: number) => {
  if (fsyncsPending.has(fd)) closedUnderFsync.push(fd);
  realCloseSync(fd);
};

// ---- modules of src/ and test helpers, loaded after the spy ----------------------------------

let { core, cdc, delta, blake3, helpers, hostileKit } = {} as AttackModules;
let { fileHashOf, sendChunkList, sendChunks, outcomeOf, assertCoded } = {} as AttackModules['answers'];

const frame = attackFrame();
const { cleanups } = frame;

before(async () => {
  let answers: AttackModules['answers'];
  ({ core, cdc, delta, blake3, helpers, hostileKit, answers } = await loadAttackModules());
  ({ fileHashOf, sendChunkList, sendChunks, outcomeOf, assertCoded } = answers);
});

// ---- helpers ---------------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A hostile sharer running `scenario`, and the victim's connection to it. */
async function hostile(scenario: ScenarioV2, limits: Partial<import('../../src/core').Limits> = {}): Promise<PeerConnection> {
  const server = await hostileKit.startHostileSharerV2(frame.hostileIdentity, scenario);
  cleanups.push(() => server.close());
  const conn = await core.connectToPeer({ identity: frame.victim.identity, trust: frame.victim.trust, addresses: [server.address], expectedPeerId: frame.hostileIdentity.peerId, name: 'victim', limits: { stallTimeoutMs: 2000, ...limits } });
  cleanups.push(() => conn.close());
  return conn;
}

/** A real sharer of `folders` and a connection to it. */
async function sharerOf(folders: string[]): Promise<{ sharer: import('../helpers').Sharer; conn: PeerConnection }> {
  const sharer = await helpers.startSharer(folders);
  cleanups.push(() => sharer.server.close());
  const { conn } = await helpers.connectWithInvite(sharer.invite);
  cleanups.push(() => conn.close());
  return { sharer, conn };
}




/** Temporary files anywhere below `dir`. */
async function leftovers(dir: string): Promise<string[]> {
  return (await helpers.listTree(dir)).filter((p) => /\.peershare-(part|sync)$/.test(p));
}

/** Write and read system calls this process has made (/proc/self/io). */
function syscalls(): { reads: number; writes: number } {
  const io = readFileSync('/proc/self/io', 'utf8');
  return { reads: Number(/syscr: (\d+)/.exec(io)![1]), writes: Number(/syscw: (\d+)/.exec(io)![1]) };
}

/** Mounts an `size` tmpfs at a new folder (root, as in CI); unmounted after the file. */
function smallDisk(size: string): string {
  const mount = helpers.tempDir('peershare-r11-disk-');
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mount]);
  assert.equal(mounted.status, 0, `mounting a tmpfs needs root: ${mounted.stderr}`);
  cleanups.push(() => void spawnSync('umount', ['-l', mount]));
  return mount;
}


const KiB = 1024;
const MiB = 1024 * KiB;
const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');

/** A destination folder holding `ours` as f.bin; the target's path. */
async function localCopy(ours: Buffer | string, prefix = 'peershare-r11-'): Promise<{ dest: string; target: string }> {
  const dest = helpers.tempDir(prefix);
  const target = path.join(dest, 'f.bin');
  await fs.writeFile(target, ours);
  return { dest, target };
}

/**
 * `content` cut honestly, its chunks put in another order (odd places first, each half backwards):
 * the bytes of that file, and its list made of the local chunks (every place copied, none adjacent).
 */
function reordered(content: Buffer): { bytes: Buffer; chunks: Chunk[] } {
  const local = cdc.chunkBytes(content);
  const order = local.map((_, i) => i).sort((a, b) => (a % 2) - (b % 2) || b - a);
  const chunks: Chunk[] = [];
  let offset = 0;
  for (const i of order) {
    chunks.push({ offset, length: local[i].length, hash: local[i].hash });
    offset += local[i].length;
  }
  return { bytes: Buffer.concat(order.map((i) => content.subarray(local[i].offset, local[i].offset + local[i].length))), chunks };
}

describe('a hostile sharer lies to the update pipeline (the requester is the victim)', () => {
  it('one local chunk named at 32,768 places (one-byte chunks): copied from the local copy in a bounded number of system calls', async () => {
    // Found by round 11 (low, fixed): copyLocal makes one read and one write per copy; round 7 batched the fetched
    // chunks (WriteRun: 32 writes for 131,072 one-byte chunks), the copied ones were not. A 4.7 MB
    // list of 131,072 one-byte chunks of a 1-byte local copy cost 281,038 write and 280,925 read
    // system calls and 7.5 s for a 128 KiB file.
    const count = 32_768;
    const theirs = Buffer.alloc(count, 'x');
    const one = blake3(Buffer.from('x'));
    const chunks: Chunk[] = Array.from({ length: count }, (_, i) => ({ offset: i, length: 1, hash: one }));
    let fetched = 0;
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, theirs, chunks);
      if (req.type === 'share.readChunks') {
        fetched++;
        return sendChunks(req, reply, theirs, chunks);
      }
      return undefined;
    }, { stallTimeoutMs: 30_000 });
    const { dest, target } = await localCopy('x');
    const before = syscalls();
    const { result, error, stallMs } = await longestStall(() => delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    const after = syscalls();
    assert.equal(error, undefined);
    assert.equal(result!.bytesReused, count);
    assert.equal(fetched, 0, 'nothing fetched: every place is the local byte');
    assert.ok((await fs.readFile(target)).equals(theirs), 'the sharer\'s version, verified');
    assert.deepEqual(await leftovers(dest), []);
    assert.ok(stallMs < 1000, `event loop held ${stallMs.toFixed(0)} ms`);
    const writes = after.writes - before.writes;
    const reads = after.reads - before.reads;
    assert.ok(writes < 5_000 && reads < 5_000, `${writes} write and ${reads} read system calls to copy ${count} bytes from a 1-byte local copy`);
  });

  it('a list of the local copy\'s own chunks, reordered, under another file\'s fileHash: HASH_MISMATCH, nothing fetched, the target untouched', async () => {
    const ours = helpers.seededBytes(6 * MiB, 1101);
    const lie = reordered(ours).chunks;
    const { dest, target } = await localCopy(ours);
    let fetched = 0;
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, ours, lie, helpers.seededBytes(6 * MiB, 1102));
      if (req.type === 'share.readChunks') fetched++;
      return {};
    });
    const { error, stallMs } = await longestStall(() => delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    assertCoded(error, 'lying fileHash');
    assert.equal((error as { code: string }).code, 'HASH_MISMATCH');
    assert.equal(fetched, 0);
    assert.ok((await fs.readFile(target)).equals(ours), 'the target is the local copy as it was');
    assert.deepEqual(await helpers.listTree(dest), ['f.bin'], 'no temporary file');
    assert.ok(stallMs < 500, `event loop held ${stallMs.toFixed(0)} ms`);
  });

  it('one local hash named at every place with other chunks\' lengths: only the place of the right length is copied; the rest fails on arrival', async () => {
    const ours = helpers.seededBytes(4 * MiB, 1103);
    const honest = cdc.chunkBytes(ours);
    const lying = honest.map((c) => ({ ...c, hash: honest[0].hash }));
    const { dest, target } = await localCopy(ours);
    let asked: [number, number][] | undefined;
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, ours, lying, helpers.seededBytes(4 * MiB, 1104));
      if (req.type === 'share.readChunks') {
        asked = req.chunks as [number, number][];
        return sendChunks(req, reply, ours, honest);
      }
      return undefined;
    });
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    assert.ok(!o.ok);
    assertCoded(o.error, 'lengths');
    assert.equal(o.code, 'HASH_MISMATCH');
    assert.deepEqual(asked?.[0], [1, honest.length], 'chunk 0 copied, every other place asked for');
    assert.ok((await fs.readFile(target)).equals(ours));
    assert.deepEqual(await helpers.listTree(dest), ['f.bin']);
  });

  for (const how of ['stalls', 'ends early'] as const) {
    it(`a sharer whose readChunks ${how} after the local chunks were copied: coded failure, no temporary file, the target untouched`, async () => {
      const theirs = helpers.seededBytes(8 * MiB, 1105);
      const ours = Buffer.concat([theirs.subarray(0, 4 * MiB), helpers.seededBytes(MiB, 1106)]);
      const chunks = cdc.chunkBytes(theirs);
      const { dest, target } = await localCopy(ours);
      const conn = await hostile(
        async (req, reply) => {
          if (req.type === 'share.chunks') return sendChunkList(reply, theirs);
          if (req.type !== 'share.readChunks') return undefined;
          const [[first]] = req.chunks as [number, number][];
          if (how === 'ends early') {
            await reply.data(theirs.subarray(chunks[first].offset, chunks[first].offset + chunks[first].length));
            return {};
          }
          await reply.data(theirs.subarray(chunks[first].offset, chunks[first].offset + 1000));
          await new Promise<void>((resolve) => reply.signal.addEventListener('abort', () => resolve()));
          return {};
        },
        { stallTimeoutMs: 500, messageTimeoutMs: 500 },
      );
      const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
      assert.ok(!o.ok);
      assertCoded(o.error, how);
      assert.equal(o.code, how === 'stalls' ? 'TIMEOUT' : 'SIZE_MISMATCH');
      assert.ok((await fs.readFile(target)).equals(ours));
      assert.deepEqual(await helpers.listTree(dest), ['f.bin']);
    });
  }

  it('FILE_CHANGED at every readChunks: tried twice (the local copy cut twice, no more), coded, no temporary file; in a folder sync, left alone', async () => {
    const theirs = helpers.seededBytes(8 * MiB, 1107);
    const ours = theirs.subarray(0, 6 * MiB);
    const { dest, target } = await localCopy(ours);
    let lists = 0;
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.list') {
        await reply.message({ type: 'entries', entries: [{ name: 'f.bin', type: 'file', size: theirs.length, mtimeMs: 1000 }] });
        return { count: 1 };
      }
      if (req.type === 'share.chunks') {
        lists++;
        return sendChunkList(reply, theirs);
      }
      if (req.type === 'share.readChunks') throw new core.PeerShareError('FILE_CHANGED');
      return undefined;
    });
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    assert.ok(!o.ok);
    assertCoded(o.error, 'FILE_CHANGED');
    assert.equal(o.code, 'FILE_CHANGED');
    assert.equal(lists, 2);
    assert.ok((await fs.readFile(target)).equals(ours));
    assert.deepEqual(await helpers.listTree(dest), ['f.bin']);
    const result = await delta.deltaFolder(conn, 'ws', dest);
    assert.deepEqual(result.leftAlone.map((l) => l.path), ['f.bin']);
    assert.equal(lists, 4);
    assert.deepEqual(await helpers.listTree(dest), ['f.bin']);
  });
});

describe('a local user or process acts on the receiver\'s machine during an update', () => {
  it('the local copy truncated while it is being cut: started over once, and the sharer\'s version lands verified', async () => {
    // A copy under 16 MiB: one that large is not cut until the list has had GUIDE_WAIT_MS to come
    // (delta.ts PREDICTED_FROM_BYTES); a smaller one is cut at once, as here.
    const theirs = helpers.seededBytes(14 * MiB, 1201);
    const ours = Buffer.concat([theirs.subarray(0, 12 * MiB), helpers.seededBytes(2 * MiB, 1202)]);
    const { dest, target } = await localCopy(ours);
    let lists = 0;
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') {
        // The list is asked for while the cut runs: the local process truncates the copy now. The
        // list comes late (as from a sharer that cuts its own copy first), so the copy is cut
        // without it meanwhile (the guided cut has its own test in guided-cut.test.ts).
        if (++lists === 1) await fs.truncate(target, 5 * MiB);
        await delay(2 * delta.GUIDE_WAIT_MS);
        return sendChunkList(reply, theirs);
      }
      if (req.type === 'share.readChunks') return sendChunks(req, reply, theirs);
      return undefined;
    });
    const { result, error, stallMs } = await longestStall(() => delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    assert.equal(error, undefined);
    assert.equal(result!.changed, true);
    assert.equal(lists, 2, 'FILE_CHANGED, then once more');
    assert.ok((await fs.readFile(target)).equals(theirs));
    assert.deepEqual(await helpers.listTree(dest), ['f.bin']);
    assert.ok(stallMs < 500, `event loop held ${stallMs.toFixed(0)} ms`);
  });

  it('the local copy rewritten in place while its chunks are being copied: started over once, and only the sharer\'s version lands', async () => {
    const theirs = helpers.seededBytes(24 * MiB, 1203);
    const ours = Buffer.concat([helpers.seededBytes(1000, 1204), theirs.subarray(0, 20 * MiB)]);
    const { dest, target } = await localCopy(ours);
    let lists = 0;
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') {
        await delay(2 * delta.GUIDE_WAIT_MS); // late: the copy is cut without it meanwhile, as above
        await sendChunkList(reply, theirs);
        if (++lists === 1) {
          const file = await fs.open(target, 'r+');
          await file.write(helpers.seededBytes(MiB, 1205), 0, MiB, 10 * MiB);
          await file.close();
        }
        return {};
      }
      if (req.type === 'share.readChunks') return sendChunks(req, reply, theirs);
      return undefined;
    });
    const result = await delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true });
    assert.equal(result.changed, true);
    assert.equal(lists, 2);
    assert.ok((await fs.readFile(target)).equals(theirs));
    assert.deepEqual(await helpers.listTree(dest), ['f.bin']);
  });

  it('the temporary file swapped for a symlink to a file outside while chunks arrive: IO_ERROR, nothing outside touched, the name cleared', async () => {
    const base = helpers.tempDir('peershare-r11-');
    const dest = path.join(base, 'dest');
    await fs.mkdir(dest);
    await fs.writeFile(path.join(base, 'outside.txt'), 'precious');
    const theirs = helpers.seededBytes(4 * MiB, 1206);
    const ours = theirs.subarray(0, 3 * MiB);
    const target = path.join(dest, 'f.bin');
    await fs.writeFile(target, ours);
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, theirs);
      if (req.type !== 'share.readChunks') return undefined;
      const temporary = readdirSync(dest).find((name) => name.startsWith('.f.bin.'))!;
      await fs.unlink(path.join(dest, temporary));
      await fs.symlink(path.join(base, 'outside.txt'), path.join(dest, temporary));
      return sendChunks(req, reply, theirs);
    });
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    assert.ok(!o.ok);
    assertCoded(o.error, 'temporary file swapped');
    assert.equal(o.code, 'IO_ERROR');
    assert.equal(await fs.readFile(path.join(base, 'outside.txt'), 'utf8'), 'precious');
    assert.ok((await fs.readFile(target)).equals(ours));
    assert.deepEqual(await helpers.listTree(base), ['dest/', 'dest/f.bin', 'outside.txt']);
  });

  it('the target swapped for a symlink to a file outside during the update: the file outside is untouched, a regular file lands', async () => {
    const base = helpers.tempDir('peershare-r11-');
    const dest = path.join(base, 'dest');
    await fs.mkdir(dest);
    await fs.writeFile(path.join(base, 'outside.txt'), 'precious');
    const theirs = helpers.seededBytes(4 * MiB, 1207);
    const target = path.join(dest, 'f.bin');
    await fs.writeFile(target, theirs.subarray(0, 3 * MiB));
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, theirs);
      if (req.type !== 'share.readChunks') return undefined;
      await fs.unlink(target);
      await fs.symlink(path.join(base, 'outside.txt'), target);
      return sendChunks(req, reply, theirs);
    });
    await delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true });
    assert.equal(await fs.readFile(path.join(base, 'outside.txt'), 'utf8'), 'precious');
    assert.ok((await fs.lstat(target)).isFile());
    assert.ok((await fs.readFile(target)).equals(theirs));
    assert.deepEqual(await helpers.listTree(base), ['dest/', 'dest/f.bin', 'outside.txt']);
  });

  it('the target swapped for a folder during the update: a coded error, the folder and its files kept, no temporary file', async () => {
    // Found by round 11 (low, fixed): the rename's EISDIR comes out of deltaFile as a bare Node error (no PeerShareError code).
    const theirs = helpers.seededBytes(2 * MiB, 1208);
    const { dest, target } = await localCopy(helpers.seededBytes(MiB, 1209));
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, theirs);
      if (req.type !== 'share.readChunks') return undefined;
      await fs.rm(target);
      await fs.mkdir(target);
      await fs.writeFile(path.join(target, 'inside.txt'), 'mine');
      return sendChunks(req, reply, theirs);
    });
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    assert.ok(!o.ok);
    assert.deepEqual(await helpers.listTree(dest), ['f.bin/', 'f.bin/inside.txt'], 'the folder kept, no temporary file');
    assertCoded(o.error, 'target became a folder');
  });

  it('the disk filled by a local process while chunks arrive: a coded IO_ERROR, the local copy as it was, no temporary file', async () => {
    // Found by round 11 (low, fixed): the write's ENOSPC comes out of deltaFile as a bare Node error (no PeerShareError code).
    const disk = smallDisk('12m');
    const theirs = helpers.seededBytes(6 * MiB, 1210);
    const ours = Buffer.concat([theirs.subarray(0, 3 * MiB), helpers.seededBytes(MiB, 1211)]);
    const target = path.join(disk, 'f.bin');
    await fs.writeFile(target, ours);
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, theirs);
      if (req.type !== 'share.readChunks') return undefined;
      spawnSync('dd', ['if=/dev/zero', `of=${path.join(disk, 'filler')}`, 'bs=1M', 'count=100'], { stdio: 'ignore' });
      return sendChunks(req, reply, theirs);
    });
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    assert.ok(!o.ok);
    assert.ok((await fs.readFile(target)).equals(ours));
    assert.deepEqual(await helpers.listTree(disk), ['f.bin', 'filler']);
    assertCoded(o.error, 'disk full');
    assert.equal(o.code, 'IO_ERROR');
  });

  it('peershare sync onto a full disk, the local copy read slowly: exits with a coded message, no crash, no temporary file left', async () => {
    // Found by round 11 (medium, fixed): copyLocal starts the next read while the last write is in flight and only
    // then awaits the write; a write that fails meanwhile (ENOSPC, EIO, EDQUOT) is an unhandled
    // rejection. The CLI has no handler: Node ends it with the raw error and a stack
    // ("triggerUncaughtException ... ENOSPC: no space left on device, write"), no finally runs, and
    // the temporary file stays on the full disk. Seen without slow reads too (1 run in 3, and 5 of
    // 6 files of a folder sync in-process); the slow reads (a preload that delays each FileHandle
    // read by 20 ms: a local copy on a slow disk) make it happen every time.
    assert.equal(spawnSync(process.execPath, [path.join(ROOT, 'esbuild.js')], { cwd: ROOT, stdio: 'ignore' }).status, 0, 'the CLI builds');
    const preload = path.join(helpers.tempDir('peershare-r11-'), 'slow-reads.js');
    await fs.writeFile(
      preload,
      `require('fs').promises.open(__filename).then((h) => { const proto = Object.getPrototypeOf(h); const read = proto.read; proto.read = function (...args) { return new Promise((r) => setTimeout(r, 20)).then(() => read.apply(this, args)); }; return h.close(); });\n`,
    );
    const disk = smallDisk('4m');
    const ours = helpers.seededBytes(1000 * KiB, 1212);
    // Under 1 MiB: no free-space check first (delta.ts ROOM_CHECKED_FROM_BYTES), "a full disk then fails the write itself".
    const { bytes: theirs, chunks: list } = reordered(ours);
    await fs.writeFile(path.join(disk, 'f.bin'), ours);
    spawnSync('dd', ['if=/dev/zero', `of=${path.join(disk, 'filler')}`, 'bs=64K', 'count=1000'], { stdio: 'ignore' });
    const server = await hostileKit.startHostileSharerV2(frame.hostileIdentity, async (req, reply) => {
      if (req.type === 'share.stat') return { entry: { name: 'f.bin', type: 'file', size: theirs.length, mtimeMs: 1000 } };
      if (req.type === 'share.chunks') return sendChunkList(reply, theirs, list);
      if (req.type === 'share.readChunks') return sendChunks(req, reply, theirs, list);
      return undefined;
    });
    cleanups.push(() => server.close());
    const invite = core.formatInvite({ peerId: frame.hostileIdentity.peerId, addresses: [server.address], token: 'x'.repeat(32) });
    const run = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ['--require', preload, CLI, 'sync', invite, 'ws/f.bin', path.join(disk, 'f.bin'), '--home', helpers.tempDir('peershare-r11-home-')]);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d));
      child.stderr.on('data', (d: Buffer) => (stderr += d));
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });
    assert.ok((await fs.readFile(path.join(disk, 'f.bin'))).equals(ours), 'the local copy as it was');
    assert.notEqual(run.status, 0);
    assert.doesNotMatch(run.stderr, /triggerUncaughtException|at .*\(node:|^\s+at /m, `the CLI crashed:\n${run.stderr.slice(0, 600)}`);
    assert.match(run.stderr, /\[IO_ERROR\]/, run.stderr.slice(0, 600));
    assert.deepEqual(await helpers.listTree(disk), ['f.bin', 'filler'], 'no temporary file left on the full disk');
  });

  it('the temporary file swapped just before it is verified: its descriptor is not closed under the final fsync still queued on it', async () => {
    // Found by round 11 (low, fixed): verifyAssembled and the final fsync run together (Promise.all); when the
    // verification fails first (here: IO_ERROR, the temporary file was replaced), the finally
    // closes the descriptor while the fsync is still queued in the thread pool (busy threads are
    // simulated by delaying the wrapped fsync 300 ms): it then runs on a closed (EBADF) or reused
    // descriptor. FlushBehind's own rule ("keeps the descriptor open until settled") is kept; this one is not.
    closedUnderFsync.length = 0;
    fsyncOnWrongFile.length = 0;
    const theirs = helpers.seededBytes(2 * MiB, 1213);
    const { dest, target } = await localCopy(helpers.seededBytes(MiB, 1214));
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, theirs);
      if (req.type !== 'share.readChunks') return undefined;
      const temporary = readdirSync(dest).find((name) => name.startsWith('.f.bin.'))!;
      await fs.rename(path.join(dest, temporary), path.join(dest, 'moved-away'));
      await fs.writeFile(path.join(dest, temporary), 'planted');
      return sendChunks(req, reply, theirs);
    });
    fsyncQueueDelayMs = 300;
    let o: Awaited<ReturnType<typeof outcomeOf>>;
    try {
      o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
      await sleep(500); // the queued fsync runs
    } finally {
      fsyncQueueDelayMs = 0;
    }
    assert.ok(!o.ok);
    assert.equal(o.code, 'IO_ERROR');
    assert.deepEqual(await helpers.listTree(dest), ['f.bin', 'moved-away']);
    assert.deepEqual({ closedUnderFsync, fsyncOnWrongFile }, { closedUnderFsync: [], fsyncOnWrongFile: [] }, 'a descriptor closed while an fsync on it was still to run');
  });

  it('a local copy too large to cut (a sparse 40 GiB file) does not make a 2 MiB update impossible: it is fetched whole and lands', async () => {
    // Found by round 11 (low, fixed): the local copy's cut fails TOO_LARGE (more than maxFileChunks × 256 KiB) and
    // that ends the update ("The file has more than 131072 chunks; it is too large to update in
    // chunks."), though the sharer's file is small; in a folder sync it is left alone with that
    // misleading reason, every time. A local copy that cannot be cut is only not reusable.
    const theirs = helpers.seededBytes(2 * MiB, 1215);
    const { dest, target } = await localCopy('');
    await fs.truncate(target, 40 * 1024 * MiB);
    const conn = await hostile(async (req, reply) => {
      if (req.type === 'share.chunks') return sendChunkList(reply, theirs);
      if (req.type === 'share.readChunks') return sendChunks(req, reply, theirs);
      return undefined;
    });
    const o = await outcomeOf(delta.deltaFile(conn, 'ws/f.bin', target, target, { overwrite: true }));
    assert.deepEqual(await leftovers(dest), []);
    assert.ok(o.ok, `the update failed: ${!o.ok ? `${o.code} ${o.message}` : ''}`);
    assert.ok((await fs.readFile(target)).equals(theirs));
  });
});

describe('a stalled mount placed inside a shared folder (the sharer is the victim: its event loop)', () => {
  it('a mount made after the mount table was last read (2.5 s idle, then the mount, then a listing): the listing does not hold the event loop', async () => {
    // Found by round 11 (low-medium, fixed): readDirBatches decides on the synchronous lstat with crossesKnown /
    // holdsMountKnown, which use the table as last read and only start a refresh when it is stale.
    // The table is read when something asks, not every 2 s: the first listing after any idle time
    // uses a table from before the mount, whatever its age. A stalled FUSE (or NFS) mount made
    // inside the shared folder in the meantime held the sharer's event loop for as long as the
    // mount stalled (here 3 s, until the FUSE holder ended; a hard NFS mount: for ever).
    const base = helpers.tempDir('peershare-r11-');
    const proj = path.join(base, 'proj');
    const point = path.join(proj, 'sub', 'mnt');
    await fs.mkdir(point, { recursive: true });
    for (let i = 0; i < 3; i++) await fs.writeFile(path.join(proj, 'sub', `f${i}.txt`), 'x');
    const { conn } = await sharerOf([proj]);
    assert.equal((await conn.share.list('proj/sub')).length, 4);
    await sleep(2500); // the table is older than its 2 s now; nothing has asked for it
    const holder = stalledMount(point, 3000, (c) => cleanups.push(c));
    await helpers.until('the stalled mount is in place', () => readFileSync('/proc/self/mountinfo', 'utf8').includes(point), 5000);
    const { result, stallMs } = await longestStall(() => conn.share.list('proj/sub'));
    holder.kill();
    assert.deepEqual(result?.map((e) => e.name).sort(), ['f0.txt', 'f1.txt', 'f2.txt'], 'the mount point is left out (it cannot be looked at)');
    assert.ok(stallMs < 1000, `the sharer's event loop was held ${stallMs.toFixed(0)} ms by a synchronous lstat of the stalled mount`);
  });

  it('a stalled mount the table already knows: the listing takes the asynchronous path and the event loop is not held', async () => {
    const base = helpers.tempDir('peershare-r11-');
    const proj = path.join(base, 'proj');
    const point = path.join(proj, 'sub', 'mnt');
    await fs.mkdir(point, { recursive: true });
    for (let i = 0; i < 3; i++) await fs.writeFile(path.join(proj, 'sub', `f${i}.txt`), 'x');
    const holder = stalledMount(point, 3000, (c) => cleanups.push(c));
    await helpers.until('the stalled mount is in place', () => readFileSync('/proc/self/mountinfo', 'utf8').includes(point), 5000);
    const { conn } = await sharerOf([proj]); // reads the table, with the mount in it
    const { result, stallMs } = await longestStall(() => conn.share.list('proj/sub'));
    holder.kill();
    assert.deepEqual(result?.map((e) => e.name).sort(), ['f0.txt', 'f1.txt', 'f2.txt']);
    assert.ok(stallMs < 1000, `event loop held ${stallMs.toFixed(0)} ms`);
  });
});
