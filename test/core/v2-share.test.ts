import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BlockCache, type BlockHasher } from '../../src/core/block-cache';
import { blockRange, encodeBlockManifest, hashFileBlocks, manifestFromBlockHashes, type BlockManifest } from '../../src/core/blocks';
import { blake3 } from '../../src/core/blake3';
import { PeerShareError } from '../../src/core/errors';
import { resolveLimits, type Limits } from '../../src/core/limits';
import { Share } from '../../src/core/share';
import { TlsListener, dialTls } from '../../src/core/transport-tls';
import { Connection, type ReplyWriter, type RequestHandler } from '../../src/core/v2/connection';
import { acceptV2, dialV2 } from '../../src/core/v2/handshake';
import type { CapabilityMessage } from '../../src/core/v2/messages';
import { ShareClient, type TreeRecord, type VerifiedBlock } from '../../src/core/v2/share-client';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { PartialFile } from '../../src/core/v2/partial-file';
import { ShareProvider } from '../../src/core/v2/share-provider';
import { makePeer, tempDir, writeRandomFile, type TestPeer } from '../helpers';
import { duplexPair } from './v2-duplex-pair';

/**
 * Capability share/1 (docs/protocol-v2.md 6, 7): the provider serving a real folder through v1's
 * Share and the block cache, the requester's readers over the in-memory duplex pair and over TLS
 * 1.3 on loopback, and each side facing a hostile other: a provider written here that lies, and
 * requests no honest requester sends. Nothing depends on timing except the one deadline under
 * test (a 300 ms stall against an answer that never comes).
 */
const KiB = 1024;
const MiB = 1024 * KiB;
/** The block cache's racy window, shrunk; files are written at least twice this before they are hashed. */
const RACY_MS = 40;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let sharer: TestPeer;
let base: string;
let ws: string;
let share: Share;
let cache: BlockCache;
let hashings = 0;
const contents = new Map<string, Buffer>();

/** Real hashing (blocks.ts), counted: the proof that a manifest came from the cache. */
const countingHasher: BlockHasher = async (file, limits) => {
  hashings++;
  return hashFileBlocks(file, limits);
};

async function put(rel: string, data: Buffer | string): Promise<Buffer> {
  const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data);
  await fs.mkdir(path.dirname(path.join(base, rel)), { recursive: true });
  await fs.writeFile(path.join(base, rel), bytes);
  contents.set(rel, bytes);
  return bytes;
}

before(async () => {
  sharer = await makePeer();
  base = tempDir('peershare-v2-share-');
  ws = path.join(base, 'ws');
  await put('ws/a.txt', 'hello');
  await put('ws/empty.txt', '');
  await put('ws/sub/b.txt', 'bee');
  contents.set('ws/big.bin', await writeRandomFile(path.join(ws, 'big.bin'), 5 * MiB + 12345)); // 41 blocks of 128 KiB
  contents.set('ws/sub/mid.bin', await writeRandomFile(path.join(ws, 'sub', 'mid.bin'), 300 * KiB)); // a fileRef in a tree
  contents.set('ws/changing.bin', await writeRandomFile(path.join(ws, 'changing.bin'), 20 * MiB));
  await put('ws/.git/config', '[core]');
  await put('ws/.env', 'SECRET=1');
  await put('ws/id_rsa', 'key');
  await put('ws/app.log', 'log');
  await put('ws/.gitignore', '*.log\n');
  await put('ws/nested/.gitignore', 'private/\n');
  await put('ws/nested/private/x.txt', 'private');
  await put('ws/myhome/key-material', 'identity');
  await put('ws-secret/x.txt', 'sibling secret');
  await put('outside.txt', 'outside secret');
  await put('outside-dir/y.txt', 'outside y');
  await fs.symlink(path.join(base, 'outside.txt'), path.join(ws, 'link-out'));
  await fs.symlink('../outside-dir', path.join(ws, 'linkdir'));
  await fs.symlink('a.txt', path.join(ws, 'link-in'));
  execFileSync('mkfifo', [path.join(ws, 'fifo')]);
  share = await Share.create({ folders: [ws], privatePaths: [path.join(ws, 'myhome')] }, resolveLimits());
  cache = await BlockCache.open(sharer.home, resolveLimits(), { hasher: countingHasher, racyMs: RACY_MS });
  // Every file is older than the racy window when first hashed, so the cache keeps its list.
  await sleep(RACY_MS * 3);
});

/** A requester (dialer) and the provider's connection (acceptor) over the in-memory pair. */
function sharePair(
  options: { provider?: ShareProvider; providerLimits?: Partial<Limits>; requesterLimits?: Partial<Limits>; stillAllowed?: () => boolean } = {},
) {
  const provider = options.provider ?? new ShareProvider({ share, blockCache: cache, limits: options.providerLimits });
  const [a, b] = duplexPair();
  const requester = new Connection(a, { peerId: 'sharer', address: 'memory:sharer', side: 'dialer', peerCapabilities: ['share/1'], limits: options.requesterLimits });
  const responder = new Connection(b, {
    peerId: 'reader',
    address: 'memory:reader',
    side: 'acceptor',
    limits: options.providerLimits,
    handlers: { 'share/1': provider.handler({ peerId: 'reader', peerFrameBytes: requester.local.frame, stillAllowed: options.stillAllowed }) },
  });
  return { client: new ShareClient(requester), requester, responder, provider };
}

/** A requester facing a provider written here: `handler` answers every share.* request as it likes. */
function lyingPair(handler: RequestHandler, requesterLimits?: Partial<Limits>) {
  const [a, b] = duplexPair();
  const requester = new Connection(a, { peerId: 'liar', address: 'memory:liar', side: 'dialer', peerCapabilities: ['share/1'], limits: requesterLimits });
  const liar = new Connection(b, { peerId: 'reader', address: 'memory:reader', side: 'acceptor', handlers: { 'share/1': handler } });
  return { client: new ShareClient(requester), requester, liar };
}

async function failure(promise: Promise<unknown>): Promise<PeerShareError> {
  return promise.then(
    () => assert.fail('expected a failure'),
    (err: PeerShareError) => {
      assert.ok(err instanceof PeerShareError, `not a coded error: ${String(err)}`);
      return err;
    },
  );
}

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of iterable) all.push(item);
  return all;
}

/** Blocks of `rel` as the file holds them. */
function expectedBlock(rel: string, manifest: BlockManifest, index: number): Buffer {
  const { offset, length } = blockRange(manifest, index);
  return contents.get(rel)!.subarray(offset, offset + length);
}

function assertBlocks(rel: string, manifest: BlockManifest, blocks: VerifiedBlock[], indices: number[]): void {
  assert.deepEqual(
    blocks.map((b) => b.index),
    indices,
  );
  for (const block of blocks) assert.ok(block.data.equals(expectedBlock(rel, manifest, block.index)), `block ${block.index}`);
}

describe('share/1 over the in-memory pair: a real folder', () => {
  it('stat, list and manifest of real files, as the file system says', async () => {
    const { client, requester } = sharePair();
    const st = await fs.stat(path.join(ws, 'big.bin'));
    assert.deepEqual(await client.stat('ws/big.bin'), { name: 'big.bin', type: 'file', size: st.size, mtimeMs: Math.floor(st.mtimeMs) });
    assert.deepEqual(await client.stat(''), { name: '', type: 'dir', size: 0, mtimeMs: 0 });
    assert.deepEqual(
      (await client.list('')).map((e) => e.name),
      ['ws'],
    );
    const names = (await client.list('ws')).map((e) => `${e.name}:${e.type}`).sort();
    // No excluded, private, linked or special entry is listed.
    assert.deepEqual(names, ['.gitignore:file', 'a.txt:file', 'big.bin:file', 'changing.bin:file', 'empty.txt:file', 'nested:dir', 'sub:dir']);
    const { manifest, mtimeMs } = await client.manifest('ws/big.bin');
    const local = await hashFileBlocks(path.join(ws, 'big.bin'), resolveLimits());
    assert.ok(manifest.fileHash.equals(local.fileHash));
    assert.equal(manifest.blockHashes.length, 41);
    assert.equal(mtimeMs, Math.floor(st.mtimeMs));
    const empty = await client.manifest('ws/empty.txt');
    assert.equal(empty.manifest.blockHashes.length, 0);
    assert.ok(empty.manifest.fileHash.equals(blake3(encodeBlockManifest({ size: 0, blockSize: 128 * KiB, blockHashes: [] }))));
    requester.close();
  });

  it('a listing in batches that fit the peer\'s frame, and the batch limit', async () => {
    const many = path.join(base, 'many');
    await fs.mkdir(many);
    await Promise.all(Array.from({ length: 2500 }, (_, i) => fs.writeFile(path.join(many, `file-${String(i).padStart(5, '0')}-${'x'.repeat(40)}.txt`), '')));
    const wide = await Share.create({ folders: [many] }, resolveLimits());
    const { client, requester } = sharePair({ provider: new ShareProvider({ share: wide, blockCache: cache }) });
    const batches: number[] = [];
    const entries = await client.list('many', { onBatch: (b) => batches.push(b.length) });
    assert.equal(entries.length, 2500);
    assert.ok(batches.length >= 3 && batches.every((n) => n <= 1000), `batches ${batches.join(',')}`);
    requester.close();
  });

  it('sides configured differently still understand each other: batches are bounded by the protocol (1000), not by the requester\'s own listBatchEntries (found in review)', async () => {
    const many = path.join(base, 'many-configured');
    await fs.mkdir(many);
    await Promise.all(Array.from({ length: 2500 }, (_, i) => fs.writeFile(path.join(many, `f${i}`), '')));
    const sharerLimits = { listBatchEntries: 5000 };
    const wide = await Share.create({ folders: [many] }, resolveLimits(sharerLimits));
    const { client, requester } = sharePair({ provider: new ShareProvider({ share: wide, blockCache: cache, limits: sharerLimits }), providerLimits: sharerLimits, requesterLimits: { listBatchEntries: 10 } });
    const batches: number[] = [];
    const entries = await client.list('many-configured', { onBatch: (b) => batches.push(b.length) });
    assert.equal(entries.length, 2500);
    assert.ok(batches.every((n) => n <= 1000), `batches ${batches.join(',')}`);
    assert.ok(batches.some((n) => n > 10), 'the requester\'s own setting did not bound what it accepts');
    requester.close();
  });

  it('a bug in our own callback is INTERNAL and leaves the connection open: the honest peer is not blamed (found in review)', async () => {
    const { client, requester } = sharePair();
    const err = await client
      .list('ws', {
        onBatch: () => {
          throw new TypeError('a bug of ours');
        },
      })
      .then(() => undefined, (e: PeerShareError) => e);
    assert.equal(err?.code, 'INTERNAL');
    assert.equal(requester.closed, false);
    assert.ok((await client.list('ws')).length > 0, 'the same connection still answers');
    requester.close();
  });

  it('reads any set of blocks, each verified: all, first and last quarters, every other one', async () => {
    const { client, requester } = sharePair();
    const { manifest } = await client.manifest('ws/big.bin');
    const n = manifest.blockHashes.length;
    const all = await collect(client.readBlocks('ws/big.bin', manifest, Array.from({ length: n }, (_, i) => i)));
    assert.ok(Buffer.concat(all.map((b) => b.data)).equals(contents.get('ws/big.bin')!));
    const quarter = Math.floor(n / 4);
    const quarters = [...Array.from({ length: quarter }, (_, i) => i), ...Array.from({ length: quarter }, (_, i) => n - quarter + i)];
    assertBlocks('ws/big.bin', manifest, await collect(client.readBlocks('ws/big.bin', manifest, quarters)), quarters);
    const everyOther = Array.from({ length: Math.ceil(n / 2) }, (_, i) => 2 * i);
    assertBlocks('ws/big.bin', manifest, await collect(client.readBlocks('ws/big.bin', manifest, everyOther)), everyOther);
    // Given in any order, with repeats: each block once, in ascending order.
    assertBlocks('ws/big.bin', manifest, await collect(client.readBlocks('ws/big.bin', manifest, [40, 3, 3, 0])), [0, 3, 40]);
    requester.close();
  });

  it('reuses a released block buffer for a later block, never one still held, and the reused buffer is verified afresh', async () => {
    const { client, requester } = sharePair();
    const { manifest } = await client.manifest('ws/big.bin');
    const n = manifest.blockHashes.length;
    const held = new Set<ArrayBufferLike>();
    const released = new Set<ArrayBufferLike>();
    let reused = 0;
    for await (const block of client.readBlocks('ws/big.bin', manifest, Array.from({ length: n }, (_, i) => i))) {
      assert.ok(block.data.equals(expectedBlock('ws/big.bin', manifest, block.index)), `block ${block.index}`);
      assert.ok(!held.has(block.data.buffer), `block ${block.index} came in a buffer still held`);
      if (released.delete(block.data.buffer)) reused++;
      // Every other block is kept (as a consumer whose write is slow), the rest given back.
      if (block.index % 2 === 0) {
        held.add(block.data.buffer);
      } else {
        block.release();
        block.release(); // twice is once
        released.add(block.data.buffer);
      }
    }
    assert.ok(reused >= n / 2 - 2, `${reused} of ${n / 2} released buffers were used again`);
    // A released buffer refilled by hand is not taken as verified where it is written.
    const [again] = await collect(client.readBlocks('ws/big.bin', manifest, [1]));
    again.release();
    const target = path.join(await tempDir(), 'big.bin');
    const file = await PartialFile.open(target, manifest, { limits: resolveLimits(), resume: false });
    again.data.fill(0);
    await assert.rejects(file.write(again), (err: unknown) => err instanceof PeerShareError && err.code === 'HASH_MISMATCH');
    await file.abandon({ keep: false });
    requester.close();
  });

  it('readBlocks feeds a PartialFile: the first and last quarters, then a resume fetches only the middle, and the sharer\'s file lands', async () => {
    const { client, requester } = sharePair();
    const rel = 'ws/big.bin';
    const { manifest } = await client.manifest(rel);
    const n = manifest.blockHashes.length;
    const q = Math.floor(n / 4);
    const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
    const target = path.join(tempDir('peershare-v2-dest-'), 'big.bin');
    const first = await PartialFile.open(target, manifest, { limits: resolveLimits() });
    for await (const block of client.readBlocks(rel, manifest, [...range(0, q), ...range(n - q, n)])) await first.write(block);
    await first.abandon({ keep: true });
    const resumed = await PartialFile.open(target, manifest, { limits: resolveLimits() });
    assert.deepEqual(resumed.missingRanges(), [[q, n - q]]);
    for await (const block of client.readBlocks(rel, manifest, range(q, n - q))) await resumed.write(block);
    const landed = await resumed.land();
    assert.equal(landed.fileHash, manifest.fileHash.toString('hex'));
    assert.ok((await fs.readFile(target)).equals(contents.get(rel)!));
    requester.close();
  });

  it('more ranges than maxReadRanges go as several reads', async () => {
    const { client, requester, provider } = sharePair({ requesterLimits: { maxReadRanges: 4 }, providerLimits: { maxReadRanges: 4 } });
    const { manifest } = await client.manifest('ws/big.bin');
    const before = provider.stats.requests;
    const everyOther = Array.from({ length: 21 }, (_, i) => 2 * i);
    assertBlocks('ws/big.bin', manifest, await collect(client.readBlocks('ws/big.bin', manifest, everyOther)), everyOther);
    assert.equal(provider.stats.requests - before, 6, '21 ranges in reads of 4');
    requester.close();
  });

  it('a second manifest of the same file comes from the block cache (no second hashing)', async () => {
    await writeRandomFile(path.join(ws, 'cached.bin'), 2 * MiB);
    await sleep(RACY_MS * 3);
    const { client, requester } = sharePair();
    const before = hashings;
    const first = await client.manifest('ws/cached.bin');
    assert.equal(hashings - before, 1, 'hashed once');
    const second = await client.manifest('ws/cached.bin');
    const block = await collect(client.readBlocks('ws/cached.bin', second.manifest, [0, 15]));
    assert.equal(block.length, 2);
    assert.equal(hashings - before, 1, 'the second manifest and the read hashed nothing');
    assert.ok(first.manifest.fileHash.equals(second.manifest.fileHash));
    // rehash is honoured once per file version per connection, then the cache answers.
    await client.manifest('ws/cached.bin', { rehash: true });
    await client.manifest('ws/cached.bin', { rehash: true });
    assert.equal(hashings - before, 2, 'one rehash');
    requester.close();
  });

  it('a folder stream: small files inline and verified, larger ones as fileRef fetched with manifest + read', async () => {
    const { client, requester } = sharePair();
    const stream = client.tree('ws');
    const records: TreeRecord[] = [];
    let step = await stream.next();
    for (; !step.done; step = await stream.next()) records.push(step.value);
    const shown = records.map((r) => `${r.kind}:${r.path}`);
    assert.deepEqual(shown, [
      'file:.gitignore',
      'file:a.txt',
      'fileRef:big.bin',
      // Written by the block cache's test when it ran first.
      ...(records.some((r) => r.path === 'cached.bin') ? ['fileRef:cached.bin'] : []),
      'fileRef:changing.bin',
      'file:empty.txt',
      'dir:nested',
      'file:nested/.gitignore',
      'dir:sub',
      'file:sub/b.txt',
      'fileRef:sub/mid.bin',
    ]);
    assert.equal(step.value.count, records.filter((r) => r.kind !== 'dir').length);
    const a = records.find((r) => r.path === 'a.txt');
    assert.ok(a?.kind === 'file' && a.data.equals(Buffer.from('hello')));
    const mid = records.find((r) => r.path === 'sub/mid.bin');
    assert.ok(mid?.kind === 'fileRef');
    const { manifest } = await client.manifest(`ws/${mid.path}`, { expect: { size: mid.size, mtimeMs: mid.mtimeMs } });
    const blocks = await collect(client.readBlocks(`ws/${mid.path}`, manifest, [0, 1, 2]));
    assert.ok(Buffer.concat(blocks.map((b) => b.data)).equals(contents.get('ws/sub/mid.bin')!));
    requester.close();
  });

  it('a file that is not the version asked for, or changes while it is read, ends with FILE_CHANGED', async () => {
    const { client, requester } = sharePair();
    const rel = 'ws/changing.bin';
    const { manifest, mtimeMs } = await client.manifest(rel);
    assert.equal((await failure(client.manifest(rel, { expect: { size: manifest.size + 1, mtimeMs } }))).code, 'FILE_CHANGED');
    const got: number[] = [];
    const err = await failure(
      (async () => {
        for await (const block of client.readBlocks(rel, manifest, Array.from({ length: manifest.blockHashes.length }, (_, i) => i))) {
          got.push(block.index);
          // The window (4 MiB) holds a fifth of the file: most of it is read after this change.
          if (block.index === 0) await fs.appendFile(path.join(base, rel), 'more');
        }
      })(),
    );
    assert.equal(err.code, 'FILE_CHANGED');
    assert.ok(got.length > 0 && got.length < manifest.blockHashes.length, `got ${got.length} blocks`);
    // Asked again with the old hash: refused before any byte.
    assert.equal((await failure(collect(client.readBlocks(rel, manifest, [0])))).code, 'FILE_CHANGED');
    assert.ok(!requester.closed, 'the connection stays');
    requester.close();
  });
});

describe('share/1: paths refused exactly as v1 refuses them', () => {
  // The cases of test/core/share.test.ts (traversals, links, excludes, private paths), with v1's codes.
  const refusals: [string, string][] = [
    ['../outside.txt', 'OUTSIDE_SHARE'],
    ['ws/../outside.txt', 'OUTSIDE_SHARE'],
    ['ws/sub/../../outside.txt', 'OUTSIDE_SHARE'],
    ['/etc/hostname', 'OUTSIDE_SHARE'],
    ['ws\\..\\outside.txt', 'OUTSIDE_SHARE'],
    ['//server/share/x', 'OUTSIDE_SHARE'],
    ['ws/%2e%2e/outside.txt', 'NOT_FOUND'],
    ['ws/a.txt\u0000.png', 'OUTSIDE_SHARE'],
    ['ws/\uFFFD', 'OUTSIDE_SHARE'],
    [`ws/${'x'.repeat(300)}`, 'OUTSIDE_SHARE'],
    [`ws/${'a/'.repeat(3000)}`, 'TOO_LARGE'],
    ['ws-secret/x.txt', 'NOT_FOUND'],
    ['ws/link-out', 'OUTSIDE_SHARE'],
    ['ws/linkdir/y.txt', 'OUTSIDE_SHARE'],
    ['ws/link-in', 'OUTSIDE_SHARE'],
    ['ws/fifo', 'NOT_A_FILE'],
    ['ws/.git/config', 'EXCLUDED'],
    ['ws/.env', 'EXCLUDED'],
    ['ws/id_rsa', 'EXCLUDED'],
    ['ws/app.log', 'EXCLUDED'],
    ['ws/nested/private/x.txt', 'EXCLUDED'],
    ['ws/myhome/key-material', 'EXCLUDED'],
    ['ws/sub', 'NOT_A_FILE'],
  ];
  let pair: ReturnType<typeof sharePair>;
  before(() => (pair = sharePair()));
  after(() => pair.requester.close());

  for (const [remotePath, code] of refusals) {
    it(`manifest and read of ${JSON.stringify(remotePath).slice(0, 50)}: ${code}, and the connection stays`, async () => {
      const { client, requester } = pair;
      const err = await failure(client.manifest(remotePath));
      assert.equal(err.code, code);
      assert.ok((err as { sentByPeer?: boolean }).sentByPeer, 'marked as the peer\'s');
      const fake = manifestFromBlockHashes(1, 128 * KiB, [blake3(Buffer.from('x'))]);
      assert.equal((await failure(collect(client.readBlocks(remotePath, fake, [0])))).code, code);
      assert.ok(!requester.closed);
    });
  }

  it('stat, list and tree refuse the same paths', async () => {
    const { client } = pair;
    assert.equal((await failure(client.stat('ws/.env'))).code, 'EXCLUDED');
    assert.equal((await failure(client.stat('../outside.txt'))).code, 'OUTSIDE_SHARE');
    assert.equal((await failure(client.list('ws/.git'))).code, 'EXCLUDED');
    assert.equal((await failure(client.list('ws/linkdir'))).code, 'OUTSIDE_SHARE');
    assert.equal((await failure(collect(client.tree('ws/linkdir')))).code, 'OUTSIDE_SHARE');
    assert.equal((await failure(collect(client.tree('ws/nested/private')))).code, 'EXCLUDED');
    assert.equal((await failure(collect(client.tree('ws/a.txt')))).code, 'NOT_A_DIRECTORY');
  });

  it('a peer no longer trusted gets PEER_UNTRUSTED on its next request', async () => {
    let allowed = true;
    const { client, requester } = sharePair({ stillAllowed: () => allowed });
    assert.equal((await client.stat('ws/a.txt')).size, 5);
    allowed = false;
    assert.equal((await failure(client.stat('ws/a.txt'))).code, 'PEER_UNTRUSTED');
    requester.close();
  });

  it('a peer revoked during a read: the read ends with PEER_UNTRUSTED before the rest of the file is sent', async () => {
    let allowed = true;
    const { client, requester } = sharePair({ stillAllowed: () => allowed });
    const { manifest } = await client.manifest('ws/big.bin');
    const got: number[] = [];
    const err = await failure(
      (async () => {
        for await (const block of client.readBlocks('ws/big.bin', manifest, Array.from({ length: manifest.blockHashes.length }, (_, i) => i))) {
          got.push(block.index);
          if (block.index !== 0) continue;
          allowed = false;
          // Past the provider's recheck interval (50 ms); it waits for credit meanwhile (41 blocks, a window of 32).
          await sleep(120);
        }
      })(),
    );
    assert.equal(err.code, 'PEER_UNTRUSTED');
    assert.ok(got.length < manifest.blockHashes.length, `got ${got.length} blocks`);
    requester.close();
  });
});

describe('share/1: a hostile requester against the provider', () => {
  /** A raw request, bypassing the readers: what a hostile requester can send. */
  async function ask(requester: Connection, message: Record<string, unknown>): Promise<PeerShareError> {
    const answer = requester.request(message as CapabilityMessage);
    return failure(collect(answer));
  }

  it('read ranges over maxReadRanges: TOO_LARGE; past the last block: INVALID_ARGUMENT; another fileHash: FILE_CHANGED', async () => {
    const { client, requester } = sharePair({ providerLimits: { maxReadRanges: 8 } });
    const { manifest } = await client.manifest('ws/big.bin');
    const fileHash = manifest.fileHash.toString('hex');
    const nine = Array.from({ length: 9 }, (_, i) => [2 * i, 2 * i + 1]);
    assert.equal((await ask(requester, { type: 'share.read', path: 'ws/big.bin', fileHash, blocks: nine })).code, 'TOO_LARGE');
    assert.equal((await ask(requester, { type: 'share.read', path: 'ws/big.bin', fileHash, blocks: [[40, 42]] })).code, 'INVALID_ARGUMENT');
    assert.equal((await ask(requester, { type: 'share.read', path: 'ws/big.bin', fileHash: 'ab'.repeat(32), blocks: [[0, 1]] })).code, 'FILE_CHANGED');
    assert.ok(!requester.closed, 'request-level refusals keep the connection');
    requester.close();
  });

  for (const [what, blocks] of [
    ['overlapping ranges', [[0, 4], [2, 6]]],
    ['unsorted ranges', [[4, 6], [0, 2]]],
    ['touching ranges', [[0, 2], [2, 4]]],
    ['an empty range', [[3, 3]]],
    ['a negative index', [[-1, 2]]],
    ['no ranges', []],
    ['not pairs', [[0, 1, 2]]],
  ] as const) {
    it(`${what} break the spec: the provider closes with PROTOCOL_ERROR`, async () => {
      const { client, requester, responder } = sharePair();
      const { manifest } = await client.manifest('ws/big.bin');
      const err = await ask(requester, { type: 'share.read', path: 'ws/big.bin', fileHash: manifest.fileHash.toString('hex'), blocks });
      assert.equal(err.code, 'PROTOCOL_ERROR');
      assert.ok(responder.closed && requester.closed);
    });
  }

  it('requests of the wrong shape close the connection (PROTOCOL_ERROR), never crash it', async () => {
    for (const message of [
      { type: 'share.stat' },
      { type: 'share.stat', path: 42 },
      { type: 'share.manifest', path: 'ws/a.txt', expect: { size: -1, mtimeMs: 0 } },
      { type: 'share.manifest', path: 'ws/a.txt', rehash: 'yes' },
      { type: 'share.read', path: 'ws/a.txt', fileHash: 'XYZ', blocks: [[0, 1]] },
      { type: 'share.delete', path: 'ws/a.txt' },
    ]) {
      const { requester, responder } = sharePair();
      assert.equal((await ask(requester, message)).code, 'PROTOCOL_ERROR', JSON.stringify(message));
      assert.ok(responder.closed);
    }
  });

  it('a request flood: past maxConcurrentRequests, BUSY at once; the slots come back when the answers end', async () => {
    const { client, requester, provider } = sharePair({ providerLimits: { maxConcurrentRequests: 2 } });
    const { manifest } = await client.manifest('ws/big.bin');
    const all = Array.from({ length: manifest.blockHashes.length }, (_, i) => i);
    // Two reads that take their first block and then stop consuming: they hold their slots.
    const held = [client.readBlocks('ws/big.bin', manifest, all), client.readBlocks('ws/big.bin', manifest, all)];
    for (const reader of held) assert.equal((await reader.next()).done, false);
    const busy = await failure(client.stat('ws/a.txt'));
    assert.equal(busy.code, 'BUSY');
    assert.equal(provider.stats.busy, 1);
    for (const reader of held) await reader.return();
    // Once both cancelled answers have ended, a request is served again.
    for (let tries = 0; ; tries++) {
      const outcome = await client.stat('ws/a.txt').then(
        (entry) => entry,
        (err: PeerShareError) => err,
      );
      if (!(outcome instanceof PeerShareError)) break;
      assert.equal(outcome.code, 'BUSY');
      assert.ok(tries < 200, 'the slots never came back');
      await sleep(5);
    }
    assert.ok(!requester.closed);
    requester.close();
  });

  it('one peer across its connections: past maxRequestsPerPeer, BUSY on the other connection too', async () => {
    const provider = new ShareProvider({ share, blockCache: cache, limits: { maxRequestsPerPeer: 1 } });
    const first = sharePair({ provider, providerLimits: { maxRequestsPerPeer: 1 } });
    const second = sharePair({ provider, providerLimits: { maxRequestsPerPeer: 1 } });
    const { manifest } = await first.client.manifest('ws/big.bin');
    // More blocks than the window holds: the answer waits for credit and keeps its slot.
    const held = first.client.readBlocks('ws/big.bin', manifest, Array.from({ length: manifest.blockHashes.length }, (_, i) => i));
    assert.equal((await held.next()).done, false);
    assert.equal((await failure(second.client.stat('ws/a.txt'))).code, 'BUSY');
    await held.return();
    first.requester.close();
    second.requester.close();
  });

  it('more requests at once than the provider advertised: closed with PROTOCOL_ERROR (spec 3.3)', async () => {
    const [a, b] = duplexPair();
    const provider = new ShareProvider({ share, blockCache: cache });
    // The requester believes the provider allows 16 at once; it advertised 2.
    const requester = new Connection(a, { peerId: 'sharer', address: 'memory', side: 'dialer', peerCapabilities: ['share/1'], remote: { requests: 16 } });
    const responder = new Connection(b, { peerId: 'reader', address: 'memory', side: 'acceptor', local: { requests: 2 }, handlers: { 'share/1': provider.handler({ peerId: 'reader' }) } });
    const client = new ShareClient(requester);
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => client.manifest('ws/big.bin')));
    assert.ok(results.some((r) => r.status === 'rejected' && (r.reason as PeerShareError).code === 'PROTOCOL_ERROR'));
    assert.ok(responder.closed);
  });
});

describe('share/1: a hostile provider against the requester', () => {
  const rel = 'ws/big.bin';
  let truth: BlockManifest;
  before(async () => {
    truth = await hashFileBlocks(path.join(base, rel), resolveLimits());
  });

  /** Answers share.manifest with `truth` (or what `lie` makes of it) and share.read with `blocks(request)`. */
  function provider(options: { manifestHeader?: (h: Record<string, unknown>) => Record<string, unknown>; list?: () => Buffer; read?: (ranges: number[][], reply: ReplyWriter) => Promise<void> }): RequestHandler {
    return async (request, reply) => {
      if (request.type === 'share.stat') return { entry: { name: 'big.bin', type: 'file', size: truth.size, mtimeMs: 0 } };
      if (request.type === 'share.manifest') {
        const header = { type: 'manifest', size: truth.size, mtimeMs: 0, blockSize: truth.blockSize, fileHash: truth.fileHash.toString('hex') };
        await reply.message((options.manifestHeader ? options.manifestHeader(header) : header) as { type: string });
        await reply.data(options.list ? options.list() : encodeBlockManifest(truth));
        return {};
      }
      if (request.type === 'share.read') {
        await options.read!(request.blocks as number[][], reply);
        return {};
      }
      throw new PeerShareError('NOT_FOUND');
    };
  }

  /** The honest bytes of the ranges asked for, block by block. */
  async function honest(ranges: number[][], reply: ReplyWriter, change?: (index: number, data: Buffer) => Buffer): Promise<void> {
    for (const [first, end] of ranges) {
      for (let index = first; index < end; index++) {
        const data = Buffer.from(expectedBlock(rel, truth, index));
        await reply.data(change ? change(index, data) : data);
      }
    }
  }

  it('a block that fails verification from an otherwise good peer: HASH_MISMATCH, the blocks before it verified, it never yielded', async () => {
    const { client, requester } = lyingPair(
      provider({
        read: (ranges, reply) =>
          honest(ranges, reply, (index, data) => {
            if (index === 5) data[100] ^= 1;
            return data;
          }),
      }),
    );
    const { manifest } = await client.manifest(rel);
    const got: number[] = [];
    const err = await failure(
      (async () => {
        for await (const block of client.readBlocks(rel, manifest, [0, 1, 2, 3, 4, 5, 6, 7])) got.push(block.index);
      })(),
    );
    assert.equal(err.code, 'HASH_MISMATCH');
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
    assert.ok(!requester.closed, 'the read is cancelled, the connection stays');
    assert.equal((await client.stat(rel)).size, truth.size);
    // Spec 7.2: asked once more with rehash, the same fileHash: the peer contradicts itself.
    const again = await failure(client.recheckAfterBadBlock(rel, manifest));
    assert.equal(again.code, 'HASH_MISMATCH');
    assert.ok(requester.closed, 'a peer that contradicts itself is hung up on');
  });

  it('data for blocks not asked for fails verification', async () => {
    const { client } = lyingPair(provider({ read: (_ranges, reply) => honest([[0, 2]], reply) }));
    const { manifest } = await client.manifest(rel);
    assert.equal((await failure(collect(client.readBlocks(rel, manifest, [7, 8])))).code, 'HASH_MISMATCH');
  });

  it('more bytes than a block holds: the next block fails, and bytes past the last block break the spec', async () => {
    const extra = (index: number, data: Buffer): Buffer => (index === 2 ? Buffer.concat([data, Buffer.from('xx')]) : data);
    const first = lyingPair(provider({ read: (ranges, reply) => honest(ranges, reply, extra) }));
    const m1 = (await first.client.manifest(rel)).manifest;
    assert.equal((await failure(collect(first.client.readBlocks(rel, m1, [2, 3])))).code, 'HASH_MISMATCH');
    const second = lyingPair(provider({ read: (ranges, reply) => honest(ranges, reply, extra) }));
    const m2 = (await second.client.manifest(rel)).manifest;
    assert.equal((await failure(collect(second.client.readBlocks(rel, m2, [2])))).code, 'PROTOCOL_ERROR');
    assert.ok(second.requester.closed);
  });

  it('an answer that ends before every block is in: SIZE_MISMATCH', async () => {
    const { client } = lyingPair(provider({ read: (_ranges, reply) => honest([[0, 1]], reply) }));
    const { manifest } = await client.manifest(rel);
    assert.equal((await failure(collect(client.readBlocks(rel, manifest, [0, 1])))).code, 'SIZE_MISMATCH');
  });

  const lyingManifests: [string, Parameters<typeof provider>[0], string, Partial<Limits>?][] = [
    ['more blocks than maxFileBlocks', { manifestHeader: (h) => ({ ...h, size: 2 ** 40 }) }, 'TOO_LARGE'],
    ['a list over maxManifestBytes', {}, 'TOO_LARGE', { maxManifestBytes: 28 + 32 * 40 }],
    ['a block size that is not a power of two', { manifestHeader: (h) => ({ ...h, blockSize: 200_000 }) }, 'PROTOCOL_ERROR'],
    ['a header whose size the list does not repeat', { manifestHeader: (h) => ({ ...h, size: (h.size as number) - 1 }) }, 'PROTOCOL_ERROR'],
    ['a list that does not hash to its fileHash', { manifestHeader: (h) => ({ ...h, fileHash: 'cd'.repeat(32) }) }, 'PROTOCOL_ERROR'],
    ['a list longer than announced', { list: () => Buffer.concat([encodeBlockManifest(truth), Buffer.alloc(32)]) }, 'PROTOCOL_ERROR'],
    ['a list shorter than announced', { list: () => encodeBlockManifest(truth).subarray(0, 100) }, 'PROTOCOL_ERROR'],
    ['a negative size', { manifestHeader: (h) => ({ ...h, size: -5 }) }, 'PROTOCOL_ERROR'],
  ];
  for (const [what, lie, code, limits] of lyingManifests) {
    it(`a manifest with ${what}: ${code}`, async () => {
      const { client, requester } = lyingPair(provider(lie), limits);
      assert.equal((await failure(client.manifest(rel))).code, code);
      assert.equal(requester.closed, code === 'PROTOCOL_ERROR', 'a breach closes the connection, a limit only ends the request');
    });
  }

  it('a manifest of another version than expected (resume): HASH_MISMATCH', async () => {
    const { client } = lyingPair(provider({}));
    assert.equal((await failure(client.manifest(rel, { expectedFileHash: Buffer.alloc(32, 7) }))).code, 'HASH_MISMATCH');
  });

  /** A provider whose folder stream is `records`, each a REPLY message or DATA bytes. */
  function treeOf(records: (Record<string, unknown> | Buffer)[], count?: number): RequestHandler {
    return async (_request, reply) => {
      for (const record of records) await (Buffer.isBuffer(record) ? reply.data(record) : reply.message(record as { type: string }));
      return { count: count ?? records.filter((r) => !Buffer.isBuffer(r) && (r.type === 'file' || r.type === 'fileRef')).length };
    };
  }
  const inline = (p: string, data: Buffer, fileHash?: string) => {
    const m = manifestOfBytes(data, 128 * KiB);
    return [{ type: 'file', path: p, size: data.length, mtimeMs: 0, blockSize: m.blockSize, fileHash: fileHash ?? m.fileHash.toString('hex') }, data];
  };

  for (const [what, records, code] of [
    ['a path that climbs out', [{ type: 'dir', path: '../evil' }], 'BAD_NAME'],
    ['an absolute path', [{ type: 'fileRef', path: '/etc/passwd', size: 1, mtimeMs: 0 }], 'BAD_NAME'],
    ['a backslash', inline('a\\..\\b', Buffer.from('x')), 'BAD_NAME'],
    ['a dot in another spelling', [{ type: 'dir', path: 'a/\uFF0E\uFF0E' }], 'BAD_NAME'],
    ['an inline file that does not match its hash', inline('a.txt', Buffer.from('hello'), 'ab'.repeat(32)), 'HASH_MISMATCH'],
    ['an inline file over MAX_INLINE_FILE_BYTES (256 KiB)', [{ type: 'file', path: 'a', size: 256 * KiB + 1, mtimeMs: 0, blockSize: 128 * KiB, fileHash: 'ab'.repeat(32) }], 'TOO_LARGE'],
    ['more bytes than the inline file has', [...inline('a.txt', Buffer.from('hello')).slice(0, 1), Buffer.from('hello!')], 'PROTOCOL_ERROR'],
    ['a record inside an inline file', [...inline('a.txt', Buffer.from('hello')).slice(0, 1), { type: 'dir', path: 'x' }], 'PROTOCOL_ERROR'],
    ['the same path skipped twice', [{ type: 'skipped', path: 'x', code: 'PERMISSION_DENIED', message: '' }, { type: 'skipped', path: 'x', code: 'NOT_FOUND', message: '' }], 'PROTOCOL_ERROR'],
    ['a skipped record posing as our Cancel', [{ type: 'skipped', path: 'x', code: 'CANCELLED', message: '' }], 'PROTOCOL_ERROR'],
    ['folders deeper than maxTreeDepth', [{ type: 'dir', path: Array.from({ length: 70 }, () => 'd').join('/') }], 'TOO_LARGE'],
    ['a record of no known kind', [{ type: 'symlink', path: 'x' }], 'PROTOCOL_ERROR'],
  ] as [string, (Record<string, unknown> | Buffer)[], string][]) {
    it(`a folder stream with ${what}: ${code}`, async () => {
      const { client } = lyingPair(treeOf(records));
      assert.equal((await failure(collect(client.tree('ws')))).code, code);
    });
  }

  it('a folder stream whose end miscounts: PROTOCOL_ERROR; more records than maxTreeFiles: TOO_LARGE', async () => {
    const miscount = lyingPair(treeOf([...inline('a', Buffer.from('a'))], 5));
    assert.equal((await failure(collect(miscount.client.tree('ws')))).code, 'PROTOCOL_ERROR');
    const many = lyingPair(treeOf(Array.from({ length: 11 }, (_, i) => ({ type: 'dir', path: `d${i}` }))), { maxTreeFiles: 10 });
    assert.equal((await failure(collect(many.client.tree('ws')))).code, 'TOO_LARGE');
  });

  it('names the receiver must not write (.git, .vscode, reserved) come marked, for the download to leave out', async () => {
    const { client } = lyingPair(
      treeOf([{ type: 'dir', path: '.git' }, ...inline('.git/hooks/post-checkout', Buffer.from('#!/bin/sh')), { type: 'dir', path: 'CON' }, ...inline('.VSCODE/tasks.json', Buffer.from('{}')), ...inline('ok.txt', Buffer.from('ok'))]),
    );
    const records = await collect(client.tree('ws'));
    const marked = records.filter((r) => r.kind !== 'skipped' && r.unsafeHere).map((r) => r.path);
    assert.deepEqual(marked, ['.git', '.git/hooks/post-checkout', 'CON', '.VSCODE/tasks.json']);
    const ok = records.find((r) => r.path === 'ok.txt');
    assert.ok(ok && ok.kind === 'file' && !ok.unsafeHere && ok.data.equals(Buffer.from('ok')));
  });

  it('an answer that never ends: TIMEOUT after stallTimeoutMs, the request cancelled and the connection kept', async () => {
    let cancelled = false;
    const { client, requester } = lyingPair(async (request, _reply, signal) => {
      if (request.type === 'share.stat') return { entry: { name: 'x', type: 'file', size: 1, mtimeMs: 0 } };
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      cancelled = true;
      return {};
    }, { stallTimeoutMs: 300 });
    // The connection's clocks do not hold the process open (a socket would): this timer does, meanwhile.
    const keepAlive = setInterval(() => undefined, 1000);
    const timedOut = await failure(client.manifest(rel)).finally(() => clearInterval(keepAlive));
    assert.equal(timedOut.code, 'TIMEOUT');
    assert.equal((await client.stat('x')).size, 1);
    assert.ok(cancelled, 'the provider saw the CANCEL');
    assert.ok(!requester.closed);
    requester.close();
  });
});

describe('share/1 over TLS 1.3 on loopback', () => {
  let listener: TlsListener;
  let port: number;
  let reader: TestPeer;
  const accepted: Connection[] = [];

  before(async () => {
    reader = await makePeer();
    const provider = new ShareProvider({ share, blockCache: cache });
    listener = new TlsListener({
      identity: sharer.identity,
      limits: resolveLimits(),
      stats: { connectionsAccepted: 0, handshakesRateLimited: 0, unauthenticatedEvicted: 0, oversizedHandshakes: 0 },
      log: () => undefined,
      onStream: (stream, admission) => {
        acceptV2(stream, {
          name: 'sharer',
          ownPeerId: sharer.identity.peerId,
          // Where trust plugs in: admit gives share/1 only to a peer that may read us (spec 4.4).
          admit: async (hello) => {
            admission.leave();
            return { serve: provider.served({ peerId: stream.peerId, peerFrameBytes: hello.frame }), paired: false };
          },
        }).then(({ connection }) => accepted.push(connection), () => undefined);
      },
    });
    port = await listener.listen(0, '127.0.0.1');
  });

  after(async () => {
    await listener.close(() => accepted.forEach((c) => c.close()));
  });

  it('the roots in the welcome; list, manifest and every block of a real file, verified', async () => {
    const stream = await dialTls({ identity: reader.identity, address: `127.0.0.1:${port}` });
    const { connection, welcome } = await dialV2(stream, { expectedPeerId: sharer.identity.peerId, name: 'reader', serve: {} });
    assert.deepEqual(welcome.caps['share/1'], { roots: ['ws'] });
    const client = new ShareClient(connection);
    assert.ok((await client.list('ws')).some((e) => e.name === 'big.bin'));
    const { manifest } = await client.manifest('ws/big.bin');
    const blocks = await collect(client.readBlocks('ws/big.bin', manifest, Array.from({ length: manifest.blockHashes.length }, (_, i) => i)));
    assert.ok(Buffer.concat(blocks.map((b) => b.data)).equals(contents.get('ws/big.bin')!));
    const halves = await collect(client.readBlocks('ws/big.bin', manifest, [0, 1, 39, 40]));
    assertBlocks('ws/big.bin', manifest, halves, [0, 1, 39, 40]);
    connection.close();
  });
});
