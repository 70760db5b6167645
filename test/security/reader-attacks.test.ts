import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { downloadFile, downloadFolder, type PeerConnection } from '../../src/core';
import type { BlockManifest } from '../../src/core/blocks';
import { ConnectionFrameType, encodeConnectionHeader, encodeMessageFrame } from '../../src/core/v2/frames';
import type { VerifiedBlock } from '../../src/core/v2/share-client';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { listTree, rejectsWithCode, seededBytes, tempDir } from '../helpers';
import { HOSTILE_MTIME_MS, codeOf, sendBlocks, sendManifest, type ReplierV2 } from '../hostile';
import { attackKit } from './attack-kit';

/**
 * The requester reads each answer at arrival (AnswerReader, src/core/v2/connection.ts; every
 * answer machine of share-client.ts through machineReader; verified blocks in pooled buffers,
 * BlockBuffers), attacked by a hostile SHARER over real TLS on loopback: the requester is the
 * victim. Oracles: the bytes the sharer could push (its writes resolve only against credit the
 * victim granted), the victim's external memory, every block's bytes against the true content,
 * the destination folder (the file byte for byte, or nothing; no partial file), the code of every
 * failure (never INTERNAL, never a hang) and whether the connection still serves another request.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 128 * KiB;
const WINDOW = 4 * MiB;

const kit = attackKit();
const { hostile } = kit;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const entryOf = (name: string, size: number): Record<string, unknown> => ({ name, type: 'file', size, mtimeMs: HOSTILE_MTIME_MS });
const all = (manifest: BlockManifest): number[] => manifest.blockHashes.map((_, i) => i);
const blockOf = (content: Buffer, index: number): Buffer => content.subarray(index * BLOCK, Math.min((index + 1) * BLOCK, content.length));

/** `content` with one byte of block `index` changed: a block list of it contradicts the true block `index`. */
function withBadBlock(content: Buffer, index: number): Buffer {
  const bad = Buffer.from(content);
  bad[index * BLOCK + 7] ^= 0xff;
  return bad;
}

/** A raw DATA frame for request `id`, written past the hostile's own connection (and its credit bookkeeping). */
const rawData = (id: number, bytes: Buffer): Buffer => Buffer.concat([encodeConnectionHeader(ConnectionFrameType.DATA, bytes.length, id), bytes]);

/** The id the victim's next request will have (odd: the victim dials). */
const nextIdOf = (conn: PeerConnection): number => (conn.share.connection as unknown as { nextId: number }).nextId;

/** Drains an iteration; the code it failed with (undefined if it ended well). */
async function drainCode(run: AsyncIterable<unknown>): Promise<string | undefined> {
  return codeOf(
    (async () => {
      for await (const item of run) void item;
    })(),
  );
}

/** Resolves with `promise`, or rejects after `ms` (a hang is a finding, not a test timeout). */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no outcome within ${ms} ms (a hang)`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** A sharer that sends every block asked for as fast as credit lets it; `pushed()`: the bytes its writes got out. */
async function honestBlockSharer(content: Buffer, truth: BlockManifest): Promise<{ conn: PeerConnection; pushed: () => number }> {
  let sent = 0;
  const { conn } = await hostile(async (req, reply) => {
    if (req.type === 'share.manifest') return sendManifest(reply, content, truth);
    for (const [first, end] of req.blocks as [number, number][]) {
      for (let i = first; i < end; i++) {
        await reply.data(blockOf(content, i));
        sent += blockOf(content, i).length;
      }
    }
    return {};
  });
  return { conn, pushed: () => sent };
}

describe('reader attacks: credit and memory while the victim consumer is slow', () => {
  it('a sharer flooding 128 KiB blocks at a paused consumer gets at most one window of credit, and the victim holds about that much (not the file)', async (t) => {
    const content = seededBytes(48 * MiB, 1);
    const truth = manifestOfBytes(content, BLOCK);
    const { conn, pushed: sent } = await honestBlockSharer(content, truth);
    const { manifest } = await conn.share.manifest('ws/f.bin');
    gc();
    const before = process.memoryUsage().arrayBuffers;
    const blocks = conn.share.readBlocks('ws/f.bin', manifest, all(manifest))[Symbol.asyncIterator]();
    const first = await blocks.next();
    assert.ok(!first.done && first.value.data.equals(blockOf(content, 0)));
    // The consumer holds its first block (a slow disk, a person): the sharer floods meanwhile.
    await sleep(1500);
    gc();
    const held = process.memoryUsage().arrayBuffers - before;
    const pushed = sent();
    t.diagnostic(`pushed ${pushed} bytes, victim external memory +${(held / MiB).toFixed(1)} MiB`);
    assert.ok(pushed >= WINDOW / 2, `the sharer could push ${pushed} bytes: the flood did not happen, the test proves nothing`);
    assert.ok(pushed <= WINDOW, `the sharer pushed ${pushed} bytes while the consumer took one block: credit was granted for bytes not consumed`);
    assert.ok(held < 16 * MiB, `the victim holds ${(held / MiB).toFixed(1)} MiB of external memory for a paused consumer (window ${WINDOW / MiB} MiB)`);
    first.value.release();
    let index = 1;
    for (let step = await blocks.next(); !step.done; step = await blocks.next(), index++) {
      assert.equal(step.value.index, index);
      assert.ok(step.value.data.equals(blockOf(content, index)), `block ${index} is the true one`);
      step.value.release();
    }
    assert.equal(index, truth.blockHashes.length);
  });

  it('eight concurrent reads on one connection (maxRequestsPerPeer), all paused: the sharer gets at most eight windows, the victim holds about that much', async (t) => {
    const content = seededBytes(12 * MiB, 2);
    const truth = manifestOfBytes(content, BLOCK);
    const { conn, pushed: sent } = await honestBlockSharer(content, truth);
    const { manifest } = await conn.share.manifest('ws/f.bin');
    gc();
    const before = process.memoryUsage().arrayBuffers;
    const readers = Array.from({ length: 8 }, () => conn.share.readBlocks('ws/f.bin', manifest, all(manifest))[Symbol.asyncIterator]());
    const firsts = await Promise.all(readers.map((r) => r.next()));
    await sleep(2000);
    gc();
    const held = process.memoryUsage().arrayBuffers - before;
    const pushed = sent();
    t.diagnostic(`pushed ${pushed} bytes, victim external memory +${(held / MiB).toFixed(1)} MiB`);
    assert.ok(pushed >= 8 * (WINDOW / 2), `the sharer pushed only ${pushed} bytes: no flood`);
    assert.ok(pushed <= 8 * WINDOW, `the sharer pushed ${pushed} bytes to eight paused consumers, over eight windows`);
    assert.ok(held < 56 * MiB, `the victim holds ${(held / MiB).toFixed(1)} MiB for eight paused reads of ${WINDOW / MiB} MiB windows`);
    for (const [n, reader] of readers.entries()) {
      const first = firsts[n];
      assert.ok(!first.done);
      first.value.release();
      let count = 1;
      for (let step = await reader.next(); !step.done; step = await reader.next()) {
        assert.ok(step.value.data.equals(blockOf(content, step.value.index)));
        step.value.release();
        count++;
      }
      assert.equal(count, truth.blockHashes.length);
    }
  });
});

describe('reader attacks: heap held per byte of credit', () => {
  it('one-byte DATA frames at a paused readBlocks consumer: the victim heap stays within a few windows (not one queued part per frame)', async () => {
    const content = seededBytes(8 * MiB, 12);
    const truth = manifestOfBytes(content, BLOCK);
    const tiny = 2 * MiB;
    let readId = 0;
    let flooded!: () => void;
    const floodDone = new Promise<void>((resolve) => (flooded = resolve));
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.manifest') return sendManifest(reply, content, truth);
      await reply.data(blockOf(content, 0));
      // The true bytes of the blocks after it, one byte per DATA frame (10 bytes on the wire each), all within credit.
      const frames = Buffer.allocUnsafe(tiny * 10);
      for (let i = 0; i < tiny; i++) {
        encodeConnectionHeader(ConnectionFrameType.DATA, 1, readId).copy(frames, i * 10);
        frames[i * 10 + 9] = content[BLOCK + i];
      }
      reply.stream.write(frames, () => flooded());
      await new Promise(() => undefined);
    });
    const { manifest } = await conn.share.manifest('ws/f.bin');
    readId = nextIdOf(conn);
    gc();
    const before = process.memoryUsage().heapUsed;
    const blocks = conn.share.readBlocks('ws/f.bin', manifest, all(manifest))[Symbol.asyncIterator]();
    const first = await blocks.next();
    assert.ok(!first.done && first.value.index === 0);
    // The consumer holds block 0 (a slow disk) while the frames arrive.
    await floodDone;
    const received = conn.bytesReceived;
    const deadline = Date.now() + 20_000;
    for (let last = -1; conn.bytesReceived !== last && Date.now() < deadline; ) {
      last = conn.bytesReceived;
      await sleep(300);
    }
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    await blocks.return(undefined);
    assert.ok(conn.bytesReceived > received || conn.bytesReceived > tiny * 10, 'the frames reached the victim');
    assert.ok(grown < 8 * WINDOW, `the victim's heap grew by ${(grown / MiB).toFixed(0)} MiB for ${tiny / MiB} MiB of credit (one queued part per one-byte frame)`);
  });
});

describe('reader attacks: heap held per byte of credit, through a real folder download', () => {
  it('downloadFolder: while its two fileRef fetches are slow (the tree is not read on), one-byte DATA frames of inline files keep the victim heap within a few windows', async (t) => {
    const big = seededBytes(1 * MiB, 13);
    const bigList = manifestOfBytes(big, BLOCK);
    const small = seededBytes(64 * KiB, 14);
    const smallHash = manifestOfBytes(small, BLOCK).fileHash.toString('hex');
    const files = 32;
    let treeId = 0;
    let go!: () => void;
    const released = new Promise<void>((resolve) => (go = resolve));
    const { conn } = await hostile(
      async (req, reply) => {
        if (req.type === 'share.manifest') return sendManifest(reply, big, bigList);
        if (req.type === 'share.read') {
          await released;
          return sendBlocks(req, reply, big);
        }
        // share.tree, all raw: three fileRefs (two fetches run, the third waits: the tree is not read on), then the flood.
        const frames: Buffer[] = [];
        for (let i = 0; i < 3; i++) frames.push(encodeMessageFrame('REPLY', treeId, { type: 'fileRef', path: `big${i}.bin`, size: big.length, mtimeMs: HOSTILE_MTIME_MS }));
        for (let f = 0; f < files; f++) {
          frames.push(encodeMessageFrame('REPLY', treeId, { type: 'file', path: `s${f}.txt`, size: small.length, mtimeMs: HOSTILE_MTIME_MS, blockSize: BLOCK, fileHash: smallHash }));
          const data = Buffer.allocUnsafe(small.length * 10);
          for (let i = 0; i < small.length; i++) {
            encodeConnectionHeader(ConnectionFrameType.DATA, 1, treeId).copy(data, i * 10);
            data[i * 10 + 9] = small[i];
          }
          frames.push(data);
        }
        reply.stream.write(Buffer.concat(frames));
        await new Promise(() => undefined);
      },
      { stallTimeoutMs: 30_000 },
    );
    treeId = nextIdOf(conn);
    const dest = tempDir();
    gc();
    const before = process.memoryUsage().heapUsed;
    const download = codeOf(downloadFolder(conn, 'ws', dest));
    const deadline = Date.now() + 30_000;
    // The whole flood on the wire first (building it takes the sharer a while), then until nothing more comes.
    while (conn.bytesReceived < files * small.length * 10 && Date.now() < deadline) await sleep(200);
    for (let last = -1; conn.bytesReceived !== last && Date.now() < deadline; ) {
      last = conn.bytesReceived;
      await sleep(500);
    }
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    t.diagnostic(`heap +${(grown / MiB).toFixed(0)} MiB after ${(conn.bytesReceived / MiB).toFixed(1)} MiB received`);
    go();
    conn.close();
    await within(download, 10_000, 'the folder download after the close');
    assert.ok(conn.bytesReceived > files * small.length * 10, 'the flood reached the victim');
    assert.ok(grown < 8 * WINDOW, `the victim's heap grew by ${(grown / MiB).toFixed(0)} MiB for one ${WINDOW / MiB} MiB window of a folder stream`);
  });
});

describe('reader attacks: heap held per tree record', () => {
  it('a paused tree consumer and one window of tiny `dir` records: the victim heap stays within a few windows', async (t) => {
    let treeId = 0;
    const { conn } = await hostile(async (_req, reply) => {
      const frames: Buffer[] = [];
      let bytes = 0;
      for (let i = 0; bytes < WINDOW - 64; i++) {
        const frame = encodeMessageFrame('REPLY', treeId, { type: 'dir', path: i.toString(36) });
        bytes += frame.length - 9;
        if (bytes > WINDOW) break;
        frames.push(frame);
      }
      reply.stream.write(Buffer.concat(frames));
      await new Promise(() => undefined);
    });
    treeId = nextIdOf(conn);
    gc();
    const before = process.memoryUsage().heapUsed;
    const tree = conn.share.tree('ws');
    const first = await tree.next();
    assert.ok(!first.done && first.value.kind === 'dir');
    const deadline = Date.now() + 20_000;
    for (let last = -1; conn.bytesReceived !== last && Date.now() < deadline; ) {
      last = conn.bytesReceived;
      await sleep(300);
    }
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    t.diagnostic(`heap +${(grown / MiB).toFixed(0)} MiB after ${(conn.bytesReceived / MiB).toFixed(1)} MiB received`);
    await tree.return({ count: 0 });
    assert.ok(grown < 16 * WINDOW, `the victim's heap grew by ${(grown / MiB).toFixed(0)} MiB for one ${WINDOW / MiB} MiB window of dir records`);
  });
});

describe('reader attacks: pooled block buffers are never reused under a block still held', () => {
  it('blocks held unreleased by one read keep their verified bytes while a concurrent read on the same connection, and a read that fails HASH_MISMATCH, churn the pool', async () => {
    const content = seededBytes(6 * MiB, 3);
    const truth = manifestOfBytes(content, BLOCK);
    const lie = manifestOfBytes(withBadBlock(content, 20), BLOCK);
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.manifest') return sendManifest(reply, content, truth);
      // Whatever was asked, the true blocks: against the lie, block 20 fails.
      return sendBlocks(req, reply, content);
    });
    await conn.share.manifest('ws/f.bin');
    const held: VerifiedBlock[] = [];
    const churn = async (): Promise<void> => {
      for await (const block of conn.share.readBlocks('ws/f.bin', truth, all(truth))) {
        assert.ok(block.data.equals(blockOf(content, block.index)));
        block.release();
      }
    };
    const keeper = (async () => {
      for await (const block of conn.share.readBlocks('ws/f.bin', truth, all(truth))) {
        // No block handed out may sit in the memory of one still held.
        for (const other of held) assert.notEqual(block.data.buffer, other.data.buffer, `block ${block.index} was given the buffer of held block ${other.index}`);
        held.push(block);
        await sleep(1);
      }
    })();
    const failing = (async () => {
      const got: number[] = [];
      const code = await codeOf(
        (async () => {
          for await (const block of conn.share.readBlocks('ws/f.bin', lie, all(lie))) {
            got.push(block.index);
            block.release();
          }
        })(),
      );
      return { code, got };
    })();
    const [, , bad] = await Promise.all([churn(), keeper, failing, churn()]);
    assert.equal(bad.code, 'HASH_MISMATCH');
    assert.deepEqual(bad.got, Array.from({ length: 20 }, (_, i) => i), 'the blocks before the bad one, in order, and none after');
    assert.equal(held.length, truth.blockHashes.length);
    for (const block of held) assert.ok(block.data.equals(blockOf(content, block.index)), `held block ${block.index} changed after it was verified`);
    assert.equal(conn.closed, false, 'HASH_MISMATCH leaves the connection open');
  });

  it('a download whose block list lies about one block: after the rehash (the true list) the file lands byte for byte, nothing else in dest', async () => {
    const content = seededBytes(5 * MiB + 4321, 4);
    const truth = manifestOfBytes(content, BLOCK);
    const lie = manifestOfBytes(withBadBlock(content, 25), BLOCK);
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.stat') return { entry: entryOf('f.bin', content.length) };
      if (req.type === 'share.manifest') return sendManifest(reply, content, req.rehash ? truth : lie);
      return sendBlocks(req, reply, content);
    });
    const dest = tempDir();
    const result = await within(downloadFile(conn, 'ws/f.bin', path.join(dest, 'f.bin')), 30_000, 'download');
    assert.equal(result.bytes > 0, true);
    assert.ok((await fs.readFile(path.join(dest, 'f.bin'))).equals(content), 'the landed file is the true content, byte for byte');
    assert.deepEqual(await listTree(dest), ['f.bin']);
  });

  it('a download cancelled mid-way while blocks are queued and being written, then resumed on the same connection (the pool reused): the file lands byte for byte, nothing else in dest', async () => {
    const content = seededBytes(12 * MiB + 999, 15);
    const truth = manifestOfBytes(content, BLOCK);
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.stat') return { entry: entryOf('f.bin', content.length) };
      if (req.type === 'share.manifest') return sendManifest(reply, content, truth);
      return sendBlocks(req, reply, content).catch(() => ({}));
    });
    const dest = tempDir();
    const stop = new AbortController();
    const first = await codeOf(
      downloadFile(conn, 'ws/f.bin', path.join(dest, 'f.bin'), {
        signal: stop.signal,
        onProgress: (p) => {
          if (p.bytes >= 5 * MiB) stop.abort();
        },
      }),
    );
    assert.equal(first, 'CANCELLED');
    const result = await within(downloadFile(conn, 'ws/f.bin', path.join(dest, 'f.bin')), 30_000, 'resume');
    assert.ok(result.resumedBytes > 0, 'the second download resumed from the kept blocks');
    assert.ok((await fs.readFile(path.join(dest, 'f.bin'))).equals(content), 'byte for byte');
    assert.deepEqual(await listTree(dest), ['f.bin']);
  });

  it('a download from a sharer whose block contradicts its own fresh list (rehash says the same): HASH_MISMATCH, nothing at the name, and a partial file kept holds only blocks verified against the list', async () => {
    const content = seededBytes(5 * MiB, 5);
    const lie = manifestOfBytes(withBadBlock(content, 25), BLOCK);
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.stat') return { entry: entryOf('f.bin', content.length) };
      if (req.type === 'share.manifest') return sendManifest(reply, content, lie);
      return sendBlocks(req, reply, content);
    });
    const dest = tempDir();
    await within(rejectsWithCode(downloadFile(conn, 'ws/f.bin', path.join(dest, 'f.bin')), 'HASH_MISMATCH'), 30_000, 'download');
    // Kept (a partial file of verified blocks outlives a liar, for a resume from an honest peer:
    // send-attacks), but never with the block that failed: its bytes were dropped, not written.
    const left = await listTree(dest);
    assert.ok(!left.includes('f.bin'), 'nothing at the name');
    for (const name of left) {
      assert.match(name, /^\.f\.bin\.[0-9a-f]+\.peershare-part$/);
      const kept = await fs.readFile(path.join(dest, name));
      assert.ok(kept.subarray(25 * BLOCK, 26 * BLOCK).every((b) => b === 0), 'the block that failed was not written');
      for (let i = 0; i < 25; i++) {
        const block = kept.subarray(i * BLOCK, (i + 1) * BLOCK);
        assert.ok(block.every((b) => b === 0) || block.equals(blockOf(content, i)), `block ${i} is absent or verified`);
      }
    }
  });
});

/** A hostile read answer, by case. */
type Case = {
  name: string;
  /** What the hostile does for share.read (the manifest is the true one). */
  read: (req: Record<string, unknown>, reply: ReplierV2, content: Buffer) => Promise<Record<string, unknown> | void>;
  code: string;
  closes: boolean;
};

describe('reader attacks: frames out of order end with a coded error, never INTERNAL or a hang', () => {
  const content = seededBytes(512 * KiB, 6);
  const truth = manifestOfBytes(content, BLOCK);
  const cases: Case[] = [
    {
      name: 'a REPLY in a read',
      read: async (_req, reply) => {
        await reply.message({ type: 'manifest', size: 1, mtimeMs: 1, blockSize: BLOCK, fileHash: '00'.repeat(32) });
        return {};
      },
      code: 'PROTOCOL_ERROR',
      closes: true,
    },
    {
      name: 'a REPLY after two good blocks',
      read: async (_req, reply, bytes) => {
        await reply.data(blockOf(bytes, 0));
        await reply.data(blockOf(bytes, 1));
        await reply.message({ type: 'entries', entries: [] });
        return {};
      },
      code: 'PROTOCOL_ERROR',
      closes: true,
    },
    {
      name: 'DATA past the last block asked for (the machine is done)',
      read: async (req, reply, bytes) => {
        await sendBlocks(req, reply, bytes);
        await reply.data(Buffer.alloc(10));
        return {};
      },
      code: 'PROTOCOL_ERROR',
      closes: true,
    },
    {
      name: 'END after two of four blocks',
      read: async (_req, reply, bytes) => {
        await reply.data(blockOf(bytes, 0));
        await reply.data(blockOf(bytes, 1));
        return {};
      },
      code: 'SIZE_MISMATCH',
      closes: false,
    },
    {
      name: 'a bad block, then DATA on for the rest (frames after the reader failed) and END',
      read: async (_req, reply, bytes) => {
        await reply.data(blockOf(bytes, 0));
        await reply.data(Buffer.alloc(BLOCK, 1));
        // The rest: dropped by the victim (read failed); its credit still counts. The victim cancels
        // once its consumer meets the failure, so these writes may be refused: that is fine.
        await reply.data(blockOf(bytes, 2)).catch(() => undefined);
        await reply.data(blockOf(bytes, 3)).catch(() => undefined);
        return {};
      },
      code: 'HASH_MISMATCH',
      closes: false,
    },
  ];
  for (const c of cases) {
    it(`share.read: ${c.name} → ${c.code}${c.closes ? ', connection closed' : ', connection still serves'}`, async () => {
      const { conn } = await hostile(async (req, reply) => {
        if (req.type === 'share.stat') return { entry: entryOf('f.bin', content.length) };
        if (req.type === 'share.manifest') return sendManifest(reply, content, truth);
        return c.read(req, reply, content);
      });
      const { manifest } = await conn.share.manifest('ws/f.bin');
      const code = await within(drainCode(conn.share.readBlocks('ws/f.bin', manifest, all(manifest))), 10_000, c.name);
      assert.equal(code, c.code);
      await sleep(50);
      assert.equal(conn.closed, c.closes);
      if (!c.closes) assert.equal((await within(conn.stat('ws/f.bin'), 5000, 'stat after')).size, content.length);
    });
  }

  const messageCases: { name: string; scenario: (req: Record<string, unknown>, reply: ReplierV2) => Promise<Record<string, unknown> | void>; run: (conn: PeerConnection) => Promise<unknown> }[] = [
    {
      name: 'manifest: DATA before its REPLY',
      scenario: async (_req, reply) => {
        await reply.data(Buffer.alloc(64));
        return {};
      },
      run: (conn) => conn.share.manifest('ws/f.bin'),
    },
    {
      name: 'manifest: a second manifest REPLY after the whole list',
      scenario: async (_req, reply) => {
        await sendManifest(reply, content, truth);
        await sendManifest(reply, content, truth);
        return {};
      },
      run: (conn) => conn.share.manifest('ws/f.bin'),
    },
    {
      name: 'manifest: END before the whole list',
      scenario: async (_req, reply) => {
        await reply.message({ type: 'manifest', size: content.length, mtimeMs: HOSTILE_MTIME_MS, blockSize: BLOCK, fileHash: truth.fileHash.toString('hex') });
        await reply.data(Buffer.alloc(20));
        return {};
      },
      run: (conn) => conn.share.manifest('ws/f.bin'),
    },
    {
      name: 'manifest: more list than announced',
      scenario: async (_req, reply) => {
        await sendManifest(reply, content, truth);
        await reply.data(Buffer.alloc(32));
        return {};
      },
      run: (conn) => conn.share.manifest('ws/f.bin'),
    },
    {
      name: 'stat: a REPLY',
      scenario: async (_req, reply) => {
        await reply.message({ type: 'entries', entries: [] });
        return { entry: entryOf('f.bin', 1) };
      },
      run: (conn) => conn.share.stat('ws/f.bin'),
    },
    {
      name: 'tree: DATA after a fileRef (no inline file open)',
      scenario: async (_req, reply) => {
        await reply.message({ type: 'fileRef', path: 'a.bin', size: 5, mtimeMs: HOSTILE_MTIME_MS });
        await reply.data(Buffer.alloc(5));
        return { count: 1 };
      },
      run: (conn) => drainCode(conn.share.tree('ws')).then((code) => Promise.reject(Object.assign(new Error(code), { code }))),
    },
    {
      name: 'tree: an inline file with more bytes than its size',
      scenario: async (_req, reply) => {
        const bytes = Buffer.from('hello');
        const m = manifestOfBytes(bytes, BLOCK);
        await reply.message({ type: 'file', path: 'a.txt', size: 5, mtimeMs: HOSTILE_MTIME_MS, blockSize: BLOCK, fileHash: m.fileHash.toString('hex') });
        await reply.data(Buffer.from('hello!'));
        return { count: 1 };
      },
      run: (conn) => drainCode(conn.share.tree('ws')).then((code) => Promise.reject(Object.assign(new Error(code), { code }))),
    },
  ];
  for (const c of messageCases) {
    it(`${c.name} → PROTOCOL_ERROR, connection closed`, async () => {
      const { conn } = await hostile(c.scenario);
      assert.equal(await within(codeOf(c.run(conn)), 10_000, c.name), 'PROTOCOL_ERROR');
      await sleep(50);
      assert.equal(conn.closed, true);
    });
  }
});

describe('reader attacks: one request cannot be used against another on the same connection', () => {
  it('frames for a read the victim cancelled (raw DATA between its CANCEL and the END) are dropped: no error surfaces, and the next read gets the true bytes', async () => {
    const content = seededBytes(2 * MiB, 7);
    const truth = manifestOfBytes(content, BLOCK);
    let cancelledId = 0;
    let reads = 0;
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.manifest') return sendManifest(reply, content, truth);
      if (reads++ === 0) {
        // The first read: one block, then garbage as soon as the victim cancels (before our END).
        await reply.data(blockOf(content, 0));
        await new Promise<void>((resolve) =>
          reply.signal.addEventListener('abort', () => {
            reply.raw(rawData(cancelledId, Buffer.alloc(BLOCK, 0xee)));
            reply.raw(rawData(cancelledId, Buffer.alloc(BLOCK, 0xdd)));
            resolve();
          }),
        );
        return {};
      }
      return sendBlocks(req, reply, content);
    });
    const { manifest } = await conn.share.manifest('ws/f.bin');
    cancelledId = nextIdOf(conn);
    for await (const block of conn.share.readBlocks('ws/f.bin', manifest, all(manifest))) {
      assert.equal(block.index, 0);
      block.release();
      break;
    }
    const got: Buffer[] = [];
    for await (const block of conn.share.readBlocks('ws/f.bin', manifest, all(manifest))) {
      got.push(Buffer.from(block.data));
      block.release();
    }
    assert.ok(Buffer.concat(got).equals(content));
    assert.equal(conn.closed, false);
  });

  it('a read that fails HASH_MISMATCH while a download runs on the same connection: the download lands byte for byte', async () => {
    const good = seededBytes(8 * MiB, 8);
    const bad = seededBytes(3 * MiB, 9);
    const goodList = manifestOfBytes(good, BLOCK);
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.stat') return { entry: entryOf('good.bin', good.length) };
      if (req.type === 'share.manifest') return req.path === 'ws/good.bin' ? sendManifest(reply, good, goodList) : sendManifest(reply, bad, manifestOfBytes(withBadBlock(bad, 5), BLOCK));
      return sendBlocks(req, reply, req.path === 'ws/good.bin' ? good : bad);
    });
    const { manifest: lie } = await conn.share.manifest('ws/bad.bin');
    const dest = tempDir();
    const got: number[] = [];
    const failing = codeOf(
      (async () => {
        for await (const block of conn.share.readBlocks('ws/bad.bin', lie, all(lie))) {
          got.push(block.index);
          block.release();
        }
      })(),
    );
    const [goodResult, badCode] = await within(Promise.all([downloadFile(conn, 'ws/good.bin', path.join(dest, 'good.bin')), failing]), 30_000, 'download beside a bad read');
    assert.equal(badCode, 'HASH_MISMATCH');
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
    assert.equal(goodResult.bytes, good.length);
    assert.ok((await fs.readFile(path.join(dest, 'good.bin'))).equals(good));
    assert.deepEqual(await listTree(dest), ['good.bin']);
    assert.equal(conn.closed, false);
  });

  it('DATA over credit for a read whose reader already failed still closes the connection (credit is checked for dropped frames too)', async () => {
    const content = seededBytes(1 * MiB, 11);
    const truth = manifestOfBytes(content, BLOCK);
    let readId = 0;
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.manifest') return sendManifest(reply, content, truth);
      await reply.data(Buffer.alloc(BLOCK, 3));
      // 5 MiB more, raw, within frame size but past the 4 MiB window.
      for (let i = 0; i < 5; i++) reply.raw(rawData(readId, Buffer.alloc(MiB, 4)));
      await new Promise(() => undefined);
    });
    const { manifest } = await conn.share.manifest('ws/f.bin');
    readId = nextIdOf(conn);
    const code = await within(drainCode(conn.share.readBlocks('ws/f.bin', manifest, all(manifest))), 10_000, 'read');
    assert.ok(code === 'HASH_MISMATCH' || code === 'PROTOCOL_ERROR', `${code}`);
    const deadline = Date.now() + 5000;
    while (!conn.closed && Date.now() < deadline) await sleep(20);
    assert.equal(conn.closed, true, 'bytes past the credit closed the connection');
  });

  it('a read that breaks the protocol while another read runs: the other fails with a coded error (no hang, no wrong bytes on disk)', async () => {
    const good = seededBytes(8 * MiB, 10);
    const goodList = manifestOfBytes(good, BLOCK);
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.stat') return { entry: entryOf('good.bin', good.length) };
      if (req.type === 'share.manifest') return sendManifest(reply, good, goodList);
      if ((req.blocks as [number, number][])[0][0] === 0 && (req.blocks as [number, number][])[0][1] === 2) {
        await reply.data(blockOf(good, 0));
        await reply.message({ type: 'dir', path: 'x' });
        return {};
      }
      return sendBlocks(req, reply, good);
    });
    const dest = tempDir();
    const { manifest } = await conn.share.manifest('ws/good.bin');
    const [download, breach] = await within(
      Promise.all([codeOf(downloadFile(conn, 'ws/good.bin', path.join(dest, 'good.bin'))), drainCode(conn.share.readBlocks('ws/good.bin', manifest, [0, 1]))]),
      30_000,
      'download beside a breach',
    );
    assert.equal(breach, 'PROTOCOL_ERROR');
    assert.ok(download === undefined || ['PROTOCOL_ERROR', 'CONNECTION_CLOSED'].includes(download), `the download beside it: ${download}`);
    const names = await listTree(dest);
    if (names.includes('good.bin')) assert.ok((await fs.readFile(path.join(dest, 'good.bin'))).equals(good), 'a landed file is the true one');
  });
});
