import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fs, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { PeerConnection } from '../../src/core';
import { BlockCache } from '../../src/core/block-cache';
import { CHUNK_MEMORY_BYTES } from '../../src/core/cdc';
import { versionKey } from '../../src/core/hash-cache';
import { resolveLimits } from '../../src/core/limits';
import { Share } from '../../src/core/share';
import { Connection } from '../../src/core/v2/connection';
import { ShareClient } from '../../src/core/v2/share-client';
import { ShareProvider } from '../../src/core/v2/share-provider';
import { duplexPair } from '../core/v2-duplex-pair';
import { connectWithInvite, rejectsWithCode, seededBytes, startSharer, tempDir, type Sharer } from '../helpers';
import { longestStall } from './event-loop';

/**
 * Round 16: the lists a sharer keeps 30 s for a version too recent to cache (share-provider.ts
 * recentLists, spec 15.3), attacked over real TLS on loopback with real files, as a trusted peer
 * (many versions, many files, many connections, share.chunks and share.readChunks interleaved for
 * files that keep changing) and as a local process that changes the shared file between a
 * share.chunks and its share.readChunks. Oracles: what the sharer sends (the provider's
 * fileBytesSent; the requester's own check would turn a wrong byte into HASH_MISMATCH, so a
 * refusal by the sharer is FILE_CHANGED and anything else is a failure), the bytes received vs the
 * file on disk, the bytes this process read (/proc/self/io `rchar`: the sharer runs here), the
 * provider's map, coded errors, and the event loop's longest stall.
 *
 * Where a kernel change within one timestamp tick is needed (two contents under one version key:
 * an inode reused, a rewrite in the same tick), the test puts the list of one content under the
 * key of the other: this kernel's multigrain ctime makes a real collision after a stat impossible
 * (2,000 tries, none), so it cannot be raced for.
 */

interface Kept {
  manifest: { fileHash: Buffer };
  chunks: { offset: number; length: number; hash: Buffer }[];
  untilMs: number;
}
interface ProviderInside {
  recentLists: Map<string, Kept>;
  stats: { fileBytesSent: number };
}

/** Bytes this process has read (/proc/self/io `rchar`): the sharer runs in this process. */
function bytesRead(): number {
  return Number(/rchar: (\d+)/.exec(readFileSync('/proc/self/io', 'utf8'))![1]);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Reads chunks `indices` of `list`; what came and how it ended (its code, or 'ok'). */
async function readAll(conn: PeerConnection, remote: string, list: Awaited<ReturnType<PeerConnection['share']['chunks']>>, indices: number[]): Promise<{ data: Buffer[]; code: string }> {
  const data: Buffer[] = [];
  try {
    for await (const chunk of conn.share.readChunks(remote, list, indices)) data.push(Buffer.from(chunk.data));
    return { data, code: 'ok' };
  } catch (err) {
    return { data, code: (err as { code?: string }).code ?? `uncoded: ${(err as Error).message}` };
  }
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

describe('round 16: the lists kept for a version just changed (recentLists)', () => {
  let proj: string;
  let sharer: Sharer;
  let conn: PeerConnection;
  let provider: ProviderInside;

  before(async () => {
    proj = path.join(tempDir('peershare-recent-'), 'proj');
    await fs.mkdir(proj);
    sharer = await startSharer([proj]);
    conn = (await connectWithInvite(sharer.invite)).conn;
    provider = (await sharer.server.shareProvider()) as unknown as ProviderInside;
  });

  after(async () => {
    conn.close();
    await sharer.server.close();
  });

  it('a kept list under the key of another content (an inode reused, a rewrite within one tick): only the chunks it names are sent, then FILE_CHANGED; the retry\'s fresh list replaces it and the new version comes whole', async () => {
    const a = seededBytes(3 * 1024 * 1024, 1601);
    const b = Buffer.from(a);
    b.fill(7, 1_600_000, 1_600_100); // one chunk in the middle differs
    const file = path.join(proj, 'collide.bin');
    await fs.writeFile(file, a);
    const listA = await conn.share.chunks('proj/collide.bin');
    const keyA = versionKey(statSync(file, { bigint: true }));
    const kept = provider.recentLists.get(keyA);
    assert.ok(kept, 'the lists of the version just changed were kept');
    await fs.writeFile(file, b);
    // As if b had come within a's tick (or b were another file given a's inode): a's lists under b's key.
    provider.recentLists.delete(keyA);
    provider.recentLists.set(versionKey(statSync(file, { bigint: true })), kept);
    const changed = listA.chunks.findIndex((c) => c.offset! <= 1_600_000 && 1_600_000 < c.offset! + c.length);
    assert.ok(changed > 0);
    const sentBefore = provider.stats.fileBytesSent;
    const { data, code } = await readAll(conn, 'proj/collide.bin', listA, range(listA.chunks.length));
    assert.equal(code, 'FILE_CHANGED', 'the sharer refused (HASH_MISMATCH: it sent bytes the list does not name)');
    assert.equal(data.length, changed, 'the chunks before the changed one came');
    data.forEach((d, i) => assert.ok(d.equals(a.subarray(listA.chunks[i].offset!, listA.chunks[i].offset! + listA.chunks[i].length)), `chunk ${i} is a's`));
    const named = listA.chunks.slice(0, changed).reduce((n, c) => n + c.length, 0);
    assert.ok(provider.stats.fileBytesSent - sentBefore <= named, `sent ${provider.stats.fileBytesSent - sentBefore} bytes; the list named ${named} before the change`);

    // What deltaFile does on FILE_CHANGED: once more, from a fresh list. Not a loop on the stale one.
    const listB = await conn.share.chunks('proj/collide.bin');
    const again = await readAll(conn, 'proj/collide.bin', listB, range(listB.chunks.length));
    assert.equal(again.code, 'ok');
    assert.ok(Buffer.concat(again.data).equals(b), 'b, whole');
  });

  it('a file changed by a local process between share.chunks and share.readChunks (its mtime put back to the nanosecond, touch -r) is never read from the kept list: FILE_CHANGED before any byte', async () => {
    const outside = tempDir('peershare-recent-out-');
    const variants: Record<string, (file: string, b: Buffer) => Promise<void>> = {
      'rewritten in place, same size': async (file, b) => {
        const handle = await fs.open(file, 'r+');
        await handle.write(b, 0, b.length, 0);
        await handle.close();
      },
      'truncated, then rewritten': async (file, b) => {
        await fs.truncate(file, 0);
        await fs.writeFile(file, b);
      },
      'replaced by rename (another inode, same size)': async (file, b) => {
        const tmp = `${file}.tmp`;
        await fs.writeFile(tmp, b);
        await fs.rename(tmp, file);
      },
      'written through a hard link outside the share': async (file, b) => {
        const link = path.join(outside, `link-${path.basename(file)}`);
        await fs.link(file, link);
        const handle = await fs.open(link, 'r+');
        await handle.write(b, 0, b.length, 0);
        await handle.close();
      },
    };
    let seed = 1610;
    for (const [name, change] of Object.entries(variants)) {
      const a = seededBytes(3 * 1024 * 1024, seed++);
      const b = Buffer.from(a);
      b.fill(9, b.length - 100); // only the last chunk differs: a kept list of a would send all the others
      const file = path.join(proj, `local-${seed}.bin`);
      await fs.writeFile(file, a);
      const remote = `proj/local-${seed}.bin`;
      const list = await conn.share.chunks(remote);
      // The times kept to the nanosecond (touch -r), to be put back after the change: only the ctime (and the inode) tell.
      const times = path.join(outside, `times-${seed}`);
      await fs.writeFile(times, '');
      execFileSync('touch', ['-r', file, times]);
      const was = statSync(file, { bigint: true });
      await change(file, b);
      execFileSync('touch', ['-r', times, file]);
      const now = statSync(file, { bigint: true });
      assert.deepEqual([now.size, now.mtimeNs], [was.size, was.mtimeNs], `${name}: same size and mtime`);
      const sentBefore = provider.stats.fileBytesSent;
      const { data, code } = await readAll(conn, remote, list, range(list.chunks.length));
      assert.equal(code, 'FILE_CHANGED', name);
      assert.equal(data.length, 0, `${name}: no chunk came`);
      assert.equal(provider.stats.fileBytesSent, sentBefore, `${name}: no byte was sent`);
    }
  });

  it('a file swapped for a symbolic link to a copy of itself after its share.chunks: refused, no byte sent', async () => {
    const a = seededBytes(2 * 1024 * 1024, 1620);
    const file = path.join(proj, 'swap.bin');
    await fs.writeFile(file, a);
    const list = await conn.share.chunks('proj/swap.bin');
    const copy = path.join(tempDir('peershare-recent-out-'), 'copy.bin');
    await fs.copyFile(file, copy);
    await fs.rm(file);
    await fs.symlink(copy, file);
    const sentBefore = provider.stats.fileBytesSent;
    const { data, code } = await readAll(conn, 'proj/swap.bin', list, range(list.chunks.length));
    assert.notEqual(code, 'ok');
    assert.ok(!code.startsWith('uncoded'), code);
    assert.equal(data.length, 0);
    assert.equal(provider.stats.fileBytesSent, sentBefore);
  });

  it('an expired kept list (RECENT_LIST_MS past) is not used: the version is hashed and cut again, and kept anew', async () => {
    const file = path.join(proj, 'expire.bin');
    await fs.writeFile(file, seededBytes(12 * 1024 * 1024, 1630));
    const list = await conn.share.chunks('proj/expire.bin');
    const key = versionKey(statSync(file, { bigint: true }));
    const kept = provider.recentLists.get(key)!;
    assert.ok(kept);
    kept.untilMs = Date.now() - 1; // as if 30 s had passed
    const before = bytesRead();
    const { data, code } = await readAll(conn, 'proj/expire.bin', list, [0]);
    const read = bytesRead() - before;
    assert.equal(code, 'ok');
    assert.equal(data.length, 1);
    assert.ok(read >= 12 * 1024 * 1024, `the sharer read ${read} bytes: the expired list was used`);
    assert.ok(provider.recentLists.get(key)!.untilMs > Date.now(), 'kept again, fresh');
  });
});

describe('round 16: the bound on kept lists, against many files, versions, peers and connections', () => {
  it('many racy files and versions over several peers\' connections: at most RECENT_LISTS kept, within chunkCacheBytes; a list over half of it is never kept; every answer right', async () => {
    const proj = path.join(tempDir('peershare-recent-'), 'proj');
    await fs.mkdir(proj);
    // 64 KiB: half is 102 chunks; a 2 MiB file has about 32, a 12 MiB one about 190.
    const chunkCacheBytes = 64 * 1024;
    const sharer = await startSharer([proj], { limits: { chunkCacheBytes } });
    const provider = (await sharer.server.shareProvider()) as unknown as ProviderInside;
    const conns = await Promise.all([0, 1, 2].map(async () => (await connectWithInvite(sharer.invite)).conn));
    try {
      const contents = new Map<string, Buffer>();
      for (let round = 0; round < 3; round++) {
        for (let f = 0; f < 6; f++) {
          const bytes = seededBytes(2 * 1024 * 1024, 1640 + round * 10 + f);
          contents.set(`f${f}.bin`, bytes);
          await fs.writeFile(path.join(proj, `f${f}.bin`), bytes);
        }
        await Promise.all(
          [...contents.keys()].map(async (name, i) => {
            const conn = conns[i % conns.length];
            const list = await conn.share.chunks(`proj/${name}`);
            assert.ok(provider.recentLists.size <= 2, `${provider.recentLists.size} kept`);
            const { data, code } = await readAll(conn, `proj/${name}`, list, range(list.chunks.length));
            assert.equal(code, 'ok', name);
            assert.ok(Buffer.concat(data).equals(contents.get(name)!), name);
          }),
        );
        assert.ok(provider.recentLists.size <= 2, `${provider.recentLists.size} kept`);
      }
      const held = [...provider.recentLists.values()].reduce((n, kept) => n + kept.chunks.length * CHUNK_MEMORY_BYTES, 0);
      assert.ok(held <= chunkCacheBytes, `kept lists count ${held} bytes`);

      // A list over half of chunkCacheBytes is not kept (it would be most of the bound alone).
      const big = seededBytes(12 * 1024 * 1024, 1699);
      await fs.writeFile(path.join(proj, 'big.bin'), big);
      const list = await conns[0].share.chunks('proj/big.bin');
      assert.ok(list.chunks.length * CHUNK_MEMORY_BYTES > chunkCacheBytes / 2);
      assert.equal(provider.recentLists.has(versionKey(statSync(path.join(proj, 'big.bin'), { bigint: true }))), false, 'the big list was kept');
      const { data, code } = await readAll(conns[0], 'proj/big.bin', list, [list.chunks.length - 1]);
      assert.equal(code, 'ok');
      assert.ok(data[0].equals(big.subarray(big.length - list.chunks[list.chunks.length - 1].length)));
    } finally {
      for (const conn of conns) conn.close();
      await sharer.server.close();
    }
  });

  it('a file that keeps changing, asked for by four connections at once: only FILE_CHANGED or right bytes, the kept lists bounded at every moment, the event loop not held', async () => {
    const proj = path.join(tempDir('peershare-recent-'), 'proj');
    await fs.mkdir(proj);
    const sharer = await startSharer([proj]);
    const provider = (await sharer.server.shareProvider()) as unknown as ProviderInside;
    const conns = await Promise.all([0, 1, 2, 3].map(async () => (await connectWithInvite(sharer.invite)).conn));
    const file = path.join(proj, 'log.bin');
    const size = 4 * 1024 * 1024;
    await fs.writeFile(file, seededBytes(size, 1700));
    let most = 0;
    const sampler = setInterval(() => (most = Math.max(most, provider.recentLists.size)), 5);
    let writing = true;
    const versions: Buffer[] = [];
    const writer = (async () => {
      // Same size, rewritten in place (a part of it each time), every 40 ms: a new version each time.
      for (let i = 0; writing; i++) {
        const bytes = seededBytes(size, 1701 + i);
        versions.push(bytes);
        const handle = await fs.open(file, 'r+');
        await handle.write(bytes, 0, size, 0);
        await handle.close();
        await sleep(40);
      }
    })();
    const codes = new Map<string, number>();
    try {
      const { stallMs } = await longestStall(async () => {
        const until = Date.now() + 4000;
        await Promise.all(
          conns.map(async (conn) => {
            while (Date.now() < until) {
              let list;
              try {
                list = await conn.share.chunks('proj/log.bin');
              } catch (err) {
                const code = (err as { code?: string }).code ?? 'uncoded';
                codes.set(`chunks ${code}`, (codes.get(`chunks ${code}`) ?? 0) + 1);
                continue;
              }
              const { data, code } = await readAll(conn, 'proj/log.bin', list, range(list.chunks.length));
              codes.set(code, (codes.get(code) ?? 0) + 1);
              // Whatever came is some version's bytes at those places (the client checked each chunk's hash).
              if (code === 'ok') assert.ok(versions.some((v) => Buffer.concat(data).equals(v)), 'a whole version');
            }
          }),
        );
      });
      assert.ok(stallMs < 500, `the event loop was held ${stallMs.toFixed(0)} ms`);
    } finally {
      writing = false;
      await writer;
      clearInterval(sampler);
      for (const conn of conns) conn.close();
      await sharer.server.close();
    }
    for (const code of codes.keys()) assert.ok(['ok', 'FILE_CHANGED', 'chunks FILE_CHANGED'].includes(code), `answers: ${JSON.stringify([...codes])}`);
    assert.ok((codes.get('FILE_CHANGED') ?? 0) + (codes.get('ok') ?? 0) > 4, `answers: ${JSON.stringify([...codes])}`);
    assert.ok(most <= 2, `${most} versions kept at once`);
  });

  it('a peer revoked after its share.chunks gets PEER_UNTRUSTED from the share.readChunks that would use the kept list, before any byte', async () => {
    const proj = path.join(tempDir('peershare-recent-'), 'proj');
    await fs.mkdir(proj);
    await fs.writeFile(path.join(proj, 'f.bin'), seededBytes(3 * 1024 * 1024, 1710));
    const home = tempDir('peershare-recent-');
    const share = await Share.create({ folders: [proj], privatePaths: [home] }, resolveLimits());
    const provider = new ShareProvider({ share, blockCache: await BlockCache.open(home, resolveLimits()) });
    let allowed = true;
    const [a, b] = duplexPair();
    const requester = new Connection(a, { peerId: 'sharer', address: 'memory:sharer', side: 'dialer', peerCapabilities: ['share/1'] });
    const responder = new Connection(b, { peerId: 'reader', address: 'memory:reader', side: 'acceptor', handlers: { 'share/1': provider.handler({ peerId: 'reader', peerFrameBytes: requester.local.frame, stillAllowed: () => allowed }) } });
    try {
      const client = new ShareClient(requester);
      const list = await client.chunks('proj/f.bin');
      assert.equal((provider as unknown as ProviderInside).recentLists.size, 1);
      allowed = false; // revoked at once: within TRUST_RECHECK_MS of the last check
      let received = 0;
      await rejectsWithCode(
        (async () => {
          for await (const chunk of client.readChunks('proj/f.bin', list, range(list.chunks.length))) received += chunk.data.length;
        })(),
        'PEER_UNTRUSTED',
      );
      assert.equal(received, 0);
      assert.equal(provider.stats.fileBytesSent, 0);
    } finally {
      requester.close();
      responder.close();
    }
  });
});
