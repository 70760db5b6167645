import assert from 'node:assert/strict';
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectToPeer, type Identity, type PeerConnection } from '../../src/core';
import { blockSizeFor } from '../../src/core/blocks';
import { CDC_AVG_BYTES, chunkBytes, encodeChunks } from '../../src/core/cdc';
import { deltaFile, deltaFolder } from '../../src/core/delta';
import { MAX_INLINE_CHUNKS_FILE_BYTES, manifestOfBytes } from '../../src/core/v2/share-messages';
import { connectWithInvite, listTree, makePeer, rejectsWithCode, seededBytes, startSharer, tempDir, type Sharer, type TestPeer } from '../helpers';
import { startHostileSharerV2, type ReplierV2, type ScenarioV2 } from '../hostile';

/**
 * Updates that move only what changed (docs/protocol-v2.md 15) end to end: a real sharer on
 * loopback over TLS, real files, the bytes counted on both sides (what the requester received and
 * what the sharer sent).
 */

const SIZE = 6 * 1024 * 1024;

/** Fixed bytes (seededBytes): where chunk boundaries fall depends on the content, so the costs asserted below must not vary. */
let seeds = 0;
const randomBytes = (size: number, seed = ++seeds): Buffer => seededBytes(size, seed);
/** What an update may cost beyond the change itself: the chunks around it (spec 15.1). */
const SLACK = 3 * CDC_AVG_BYTES;

type Edit = (data: Buffer) => Buffer;
const EDITS: [string, Edit, number][] = [];
for (const [where, at] of [['start', 0], ['middle', SIZE / 2], ['end', SIZE - 100]] as const) {
  // Fixed seeds: the edits are the same bytes whichever tests run.
  EDITS.push([`100 bytes inserted at the ${where}`, (d) => Buffer.concat([d.subarray(0, at), randomBytes(100, 1000 + at), d.subarray(at)]), 100]);
  EDITS.push([`100 bytes deleted at the ${where}`, (d) => Buffer.concat([d.subarray(0, at), d.subarray(at + 100)]), 0]);
  EDITS.push([`4 KiB changed at the ${where}`, (d) => Buffer.concat([d.subarray(0, at), randomBytes(4096, 2000 + at), d.subarray(at + 4096)]).subarray(0, d.length), 4096]);
}

describe('deltaFile: an update fetches about the change, verified whole (real TLS, real files)', () => {
  let sharer: Sharer;
  let conn: PeerConnection;
  let proj: string;
  const original = randomBytes(SIZE, 1);

  before(async () => {
    proj = path.join(tempDir(), 'proj');
    await fs.mkdir(proj);
    sharer = await startSharer([proj]);
    ({ conn } = await connectWithInvite(sharer.invite));
  });
  after(async () => {
    conn.close();
    await sharer.server.close();
  });

  /** The sharer's file becomes `theirs`; the requester holds `ours`; one update; what it cost on both sides. */
  async function update(name: string, theirs: Buffer, ours: Buffer | undefined) {
    await fs.writeFile(path.join(proj, name), theirs);
    const local = path.join(tempDir(), name);
    if (ours) await fs.writeFile(local, ours);
    const sentBefore = sharer.server.stats.fileBytesSent;
    const result = await deltaFile(conn, `proj/${name}`, ours ? local : undefined, local, { overwrite: true });
    return { result, local, sent: sharer.server.stats.fileBytesSent - sentBefore };
  }

  for (const [what, edit, changed] of EDITS) {
    it(`${what}: the file is the sharer's, and fewer than ${SLACK / 1024} KiB + the change are sent`, async () => {
      const theirs = edit(original);
      const { result, local, sent } = await update('big.bin', theirs, original);
      assert.ok((await fs.readFile(local)).equals(theirs), 'the local copy is now the sharer\'s file');
      assert.equal(result.changed, true);
      assert.ok(result.bytesReceived < SLACK + changed, `received ${result.bytesReceived}`);
      assert.equal(sent, result.bytesReceived, 'the sharer sent what the requester counted');
      assert.equal(result.bytesReceived + result.bytesReused, theirs.length);
    });
  }

  it('a copy of 16 MiB or more is predicted block by block from the sharer\'s block list: the file is the sharer\'s, and only about the change is sent; the sharer\'s version in place is not rewritten', async () => {
    const MiB = 1024 * 1024;
    const ours = randomBytes(24 * MiB, 77);
    const changed = Buffer.from(ours);
    randomBytes(4096, 78).copy(changed, 17 * MiB + 5);
    const cases: [string, Buffer, number][] = [
      ['100 bytes inserted at the start', Buffer.concat([randomBytes(100, 79), ours]), 100],
      ['64 KiB deleted in the middle', Buffer.concat([ours.subarray(0, 9 * MiB), ours.subarray(9 * MiB + 64 * 1024)]), 0],
      ['4 KiB changed (the same size, in place)', changed, 4096],
      ['the sharer\'s version itself (in place)', ours, 0],
    ];
    // Every version written first and left to settle past the racy rule (3 s), then listed once:
    // the sharer then holds each version's lists, and every update gets them in time, as from a
    // sharer that served the file before (a version just written is cut on demand, and on a loaded
    // machine that could take longer than GUIDE_WAIT_MS: the copy would be cut, not predicted).
    for (const [i, [, theirs]] of cases.entries()) await fs.writeFile(path.join(proj, `large-${i}.bin`), theirs);
    await new Promise((resolve) => setTimeout(resolve, 3100));
    for (const i of cases.keys()) await conn.share.chunks(`proj/large-${i}.bin`);
    const share = conn.share as unknown as { manifest: (...args: unknown[]) => Promise<unknown> };
    const manifest = share.manifest;
    let asked = 0;
    share.manifest = (...args: unknown[]) => {
      asked++;
      return manifest.apply(conn.share, args);
    };
    try {
      for (const [i, [what, theirs, change]] of cases.entries()) {
        const local = path.join(tempDir(), `large-${i}.bin`);
        await fs.writeFile(local, ours);
        const inode = (await fs.stat(local)).ino;
        const sentBefore = sharer.server.stats.fileBytesSent;
        const result = await deltaFile(conn, `proj/large-${i}.bin`, local, local, { overwrite: true });
        const sent = sharer.server.stats.fileBytesSent - sentBefore;
        assert.ok((await fs.readFile(local)).equals(theirs), `${what}: the local copy is now the sharer's file`);
        assert.ok(result.bytesReceived < SLACK + change, `${what}: received ${result.bytesReceived}`);
        assert.equal(sent, result.bytesReceived, `${what}: the sharer sent what the requester counted`);
        assert.deepEqual(await fs.readdir(path.dirname(local)), [`large-${i}.bin`], `${what}: no temporary file left`);
        if (theirs === ours) {
          // Checked block by block before anything was written: nothing sent, the same file, the sharer's time.
          assert.equal(result.changed, false, what);
          assert.equal(result.bytesReceived, 0, what);
          assert.equal((await fs.stat(local)).ino, inode, `${what}: rewritten`);
          assert.equal(Math.floor((await fs.stat(local)).mtimeMs), result.version.mtimeMs, `${what}: the sharer's time taken`);
        } else {
          assert.equal(result.bytesReceived + result.bytesReused, theirs.length, what);
        }
        assert.equal(asked, i + 1, `${what}: the block list asked for`);
      }
    } finally {
      share.manifest = manifest;
    }
  });

  it('an identical file costs no data and is not rewritten', async () => {
    await fs.writeFile(path.join(proj, 'same.bin'), original);
    const local = path.join(tempDir(), 'same.bin');
    await fs.writeFile(local, original);
    const inode = (await fs.stat(local)).ino;
    const sentBefore = sharer.server.stats.fileBytesSent;
    const result = await deltaFile(conn, 'proj/same.bin', local, local, { overwrite: true });
    const st = await fs.stat(path.join(proj, 'same.bin'));
    assert.deepEqual(result, { changed: false, bytesReceived: 0, bytesReused: 0, version: { size: original.length, mtimeMs: Math.floor(st.mtimeMs), fileHash: manifestOfBytes(original, blockSizeFor(original.length)).fileHash.toString('hex') } });
    assert.equal(sharer.server.stats.fileBytesSent, sentBefore);
    assert.equal((await fs.stat(local)).ino, inode, 'the same file, not a new one');
  });

  it('with no local copy, fetches the whole file; an empty file works too', async () => {
    const { result, local } = await update('new.bin', original.subarray(0, 300_000), undefined);
    assert.equal(result.bytesReceived, 300_000);
    assert.ok((await fs.readFile(local)).equals(original.subarray(0, 300_000)));
    const empty = await update('empty.bin', Buffer.alloc(0), Buffer.from('old'));
    assert.equal((await fs.readFile(empty.local)).length, 0);
  });

  it('refuses to replace an existing target unless told (DEST_EXISTS), and leaves it as it was', async () => {
    await fs.writeFile(path.join(proj, 'keep.bin'), original);
    const dir = tempDir();
    const target = path.join(dir, 'keep.bin');
    await fs.writeFile(target, 'mine');
    await rejectsWithCode(deltaFile(conn, 'proj/keep.bin', undefined, target), 'DEST_EXISTS');
    assert.equal(await fs.readFile(target, 'utf8'), 'mine');
    assert.deepEqual(await listTree(dir), ['keep.bin']);
  });

  it('never follows a link at the local copy: BAD_NAME, the link and what it points to untouched', async () => {
    await fs.writeFile(path.join(proj, 'linked.bin'), original.subarray(0, 1000));
    const dir = tempDir();
    await fs.writeFile(path.join(dir, 'elsewhere'), 'outside');
    await fs.symlink(path.join(dir, 'elsewhere'), path.join(dir, 'linked.bin'));
    await rejectsWithCode(deltaFile(conn, 'proj/linked.bin', path.join(dir, 'linked.bin'), path.join(dir, 'linked.bin'), { overwrite: true }), 'BAD_NAME');
    assert.equal(await fs.readFile(path.join(dir, 'elsewhere'), 'utf8'), 'outside');
    assert.deepEqual(await listTree(dir), ['elsewhere', 'linked.bin']);
  });
});

describe('deltaFile against a sharer that lies: caught, and the local file is left as it was', () => {
  let hostileIdentity: Identity;
  let client: TestPeer;
  const ours = randomBytes(1024 * 1024);
  const theirs = Buffer.concat([randomBytes(100), ours]);

  before(async () => {
    hostileIdentity = (await makePeer()).identity;
    client = await makePeer();
  });

  async function chunksAnswer(reply: ReplierV2, content: Buffer, fileHashOf: Buffer = content): Promise<Record<string, unknown>> {
    const chunks = chunkBytes(content);
    const fileHash = manifestOfBytes(fileHashOf, blockSizeFor(fileHashOf.length)).fileHash.toString('hex');
    await reply.message({ type: 'chunks', size: content.length, mtimeMs: 1000, fileHash, count: chunks.length });
    await reply.data(encodeChunks(chunks));
    return {};
  }

  async function expectCaught(scenario: ScenarioV2): Promise<void> {
    const server = await startHostileSharerV2(hostileIdentity, scenario);
    const conn = await connectToPeer({ identity: client.identity, trust: client.trust, addresses: [server.address], expectedPeerId: hostileIdentity.peerId, name: 'victim', limits: { stallTimeoutMs: 1000 } });
    const dir = tempDir();
    const local = path.join(dir, 'f.bin');
    await fs.writeFile(local, ours);
    const inode = (await fs.stat(local)).ino;
    try {
      await rejectsWithCode(deltaFile(conn, 'ws/f.bin', local, local, { overwrite: true }), 'HASH_MISMATCH');
    } finally {
      conn.close();
      await server.close();
    }
    assert.ok((await fs.readFile(local)).equals(ours), 'the local copy is as it was');
    assert.equal((await fs.stat(local)).ino, inode);
    assert.deepEqual(await listTree(dir), ['f.bin'], 'no temporary file is left');
  }

  it('the scenario itself works when the sharer is honest', async () => {
    const server = await startHostileSharerV2(hostileIdentity, (req, reply) => {
      if (req.type === 'share.chunks') return chunksAnswer(reply, theirs);
      if (req.type === 'share.readChunks') return reply.data(theirs.subarray(0, chunkBytes(theirs)[0].length)).then(() => ({}));
      return undefined;
    });
    const conn = await connectToPeer({ identity: client.identity, trust: client.trust, addresses: [server.address], expectedPeerId: hostileIdentity.peerId, name: 'victim' });
    const local = path.join(tempDir(), 'f.bin');
    await fs.writeFile(local, ours);
    try {
      const result = await deltaFile(conn, 'ws/f.bin', local, local, { overwrite: true });
      assert.ok((await fs.readFile(local)).equals(theirs));
      assert.ok(result.bytesReceived < SLACK + 100);
    } finally {
      conn.close();
      await server.close();
    }
  });

  it('other bytes than a chunk\'s hash: HASH_MISMATCH', () =>
    expectCaught((req, reply) => {
      if (req.type === 'share.chunks') return chunksAnswer(reply, theirs);
      if (req.type === 'share.readChunks') return reply.data(randomBytes(chunkBytes(theirs)[0].length)).then(() => ({}));
      return undefined;
    }));

  it('a small file sent inline whose bytes are not its chunk\'s: HASH_MISMATCH', () => {
    const small = randomBytes(4096);
    return expectCaught(async (req, reply) => {
      if (req.type !== 'share.chunks' || !req.inline) return undefined;
      await reply.message({ type: 'chunks', size: small.length, mtimeMs: 1000, fileHash: manifestOfBytes(small, blockSizeFor(small.length)).fileHash.toString('hex'), count: 1, inline: true });
      await reply.data(Buffer.concat([encodeChunks(chunkBytes(small)), randomBytes(small.length)]));
      return {};
    });
  });

  it('a small file sent inline, true to its list but not to the fileHash it names: HASH_MISMATCH at the end', () => {
    const small = randomBytes(4096);
    return expectCaught(async (req, reply) => {
      if (req.type !== 'share.chunks' || !req.inline) return undefined;
      await reply.message({ type: 'chunks', size: small.length, mtimeMs: 1000, fileHash: 'b'.repeat(64), count: 1, inline: true });
      await reply.data(Buffer.concat([encodeChunks(chunkBytes(small)), small]));
      return {};
    });
  });

  it('a chunk list that is consistent with itself but not with the fileHash it names: HASH_MISMATCH at the end', () => {
    const fake = Buffer.concat([Buffer.from('a lie '.repeat(20)), ours]);
    return expectCaught((req, reply) => {
      if (req.type === 'share.chunks') return chunksAnswer(reply, fake, theirs);
      if (req.type === 'share.readChunks') return reply.data(fake.subarray(0, chunkBytes(fake)[0].length)).then(() => ({}));
      return undefined;
    });
  });
});

describe('share.chunks and share.readChunks keep to their bounds (spec 15.2, 15.3)', () => {
  let sharer: Sharer;
  let proj: string;
  const content = randomBytes(2 * 1024 * 1024);

  before(async () => {
    proj = path.join(tempDir(), 'proj');
    await fs.mkdir(proj);
    await fs.writeFile(path.join(proj, 'f.bin'), content);
    sharer = await startSharer([proj], { limits: { maxFileChunks: 1000 } });
  });
  after(() => sharer.server.close());

  it('the sharer refuses a version it does not have (FILE_CHANGED) and a chunk past the end (INVALID_ARGUMENT)', async () => {
    const { conn } = await connectWithInvite(sharer.invite);
    try {
      const list = await conn.share.chunks('proj/f.bin');
      assert.equal(list.chunks.reduce((sum, c) => sum + c.length, 0), content.length);
      const drain = async (run: AsyncGenerator<unknown>) => {
        for await (const _ of run) void _;
      };
      await rejectsWithCode(drain(conn.share.readChunks('proj/f.bin', { ...list, fileHash: Buffer.alloc(32, 1) }, [0])), 'FILE_CHANGED');
      const longer = { ...list, chunks: [...list.chunks, { offset: content.length, length: 1, hash: Buffer.alloc(32) }] };
      await rejectsWithCode(drain(conn.share.readChunks('proj/f.bin', longer, [list.chunks.length])), 'INVALID_ARGUMENT');
      // The connection is still good for the real thing.
      let bytes = 0;
      for await (const chunk of conn.share.readChunks('proj/f.bin', list, [0, 1])) bytes += chunk.data.length;
      assert.equal(bytes, list.chunks[0].length + list.chunks[1].length);
    } finally {
      conn.close();
    }
  });

  it('a file just changed (too recent to cache) is hashed and cut once for its share.chunks and the share.readChunks after it, not twice', async () => {
    const fresh = randomBytes(12 * 1024 * 1024);
    await fs.writeFile(path.join(proj, 'fresh.bin'), fresh);
    const { conn } = await connectWithInvite(sharer.invite);
    try {
      const list = await conn.share.chunks('proj/fresh.bin');
      // The sharer is in this process: what it reads shows in this process's read count (sockets too).
      const before = readCharacters();
      let bytes = 0;
      for await (const chunk of conn.share.readChunks('proj/fresh.bin', list, [0])) bytes += chunk.data.length;
      const read = readCharacters() - before;
      assert.equal(bytes, list.chunks[0].length);
      assert.ok(read < 4 * 1024 * 1024, `the sharer read ${read} bytes for one chunk of a 12 MiB file (hashing and cutting it again: 24 MiB)`);
    } finally {
      conn.close();
    }
  });

  it('a chunk sent from the lists kept for a version just changed is hashed as it is read: bytes the list does not name are FILE_CHANGED, never sent', async () => {
    const fresh = randomBytes(3 * 1024 * 1024);
    await fs.writeFile(path.join(proj, 'kept.bin'), fresh);
    const { conn } = await connectWithInvite(sharer.invite);
    try {
      const list = await conn.share.chunks('proj/kept.bin');
      // As if the file had changed within its timestamps' granularity (same size, mtime and ctime):
      // the kept list names another hash for chunk 1 than the bytes on disk have.
      const provider = (await sharer.server.shareProvider()) as unknown as { recentLists: Map<string, { chunks: { hash: Buffer }[] }> };
      assert.equal(provider.recentLists.size >= 1, true, 'the lists of the version just changed were kept');
      for (const recent of provider.recentLists.values()) recent.chunks[1] = { ...recent.chunks[1], hash: Buffer.alloc(32, 9) };
      let received = 0;
      const reading = (async () => {
        for await (const chunk of conn.share.readChunks('proj/kept.bin', list, [0, 1, 2])) received += chunk.data.length;
      })();
      await rejectsWithCode(reading, 'FILE_CHANGED');
      assert.equal(received, list.chunks[0].length, 'only the chunk before it was sent');
    } finally {
      conn.close();
    }
  });

  it('a file of one chunk comes inline with its list when asked, so an update is one request; a larger file never does', async () => {
    const small = randomBytes(MAX_INLINE_CHUNKS_FILE_BYTES);
    await fs.writeFile(path.join(proj, 'small.bin'), small);
    await fs.writeFile(path.join(proj, 'just-over.bin'), randomBytes(MAX_INLINE_CHUNKS_FILE_BYTES + 1));
    const { conn } = await connectWithInvite(sharer.invite);
    try {
      const inline = await conn.share.chunks('proj/small.bin', { inline: true });
      assert.ok(inline.data?.equals(small), 'the bytes came with the list');
      assert.equal(inline.chunks.length, 1);
      assert.equal(inline.fileHash.toString('hex'), manifestOfBytes(small, blockSizeFor(small.length)).fileHash.toString('hex'), "the fileHash is the block list's, as without inline");
      assert.equal((await conn.share.chunks('proj/small.bin')).data, undefined, 'not asked: not sent');
      assert.equal((await conn.share.chunks('proj/just-over.bin', { inline: true })).data, undefined, 'over MAX_INLINE_CHUNKS_FILE_BYTES: the list only');
      assert.equal((await conn.share.chunks('proj/f.bin', { inline: true })).data, undefined);

      // An update of a small file: one request, and the file is the sharer's.
      const local = path.join(tempDir(), 'small.bin');
      await fs.writeFile(local, randomBytes(100));
      const requests = sharer.server.stats.requests;
      const result = await deltaFile(conn, 'proj/small.bin', local, local, { overwrite: true });
      assert.equal(sharer.server.stats.requests - requests, 1, 'share.chunks only: no share.readChunks');
      assert.ok((await fs.readFile(local)).equals(small));
      assert.deepEqual([result.changed, result.bytesReceived, result.bytesReused], [true, small.length, 0]);
      // The same again: nothing is written, and the bytes that came anyway are counted.
      const inode = (await fs.stat(local)).ino;
      const again = await deltaFile(conn, 'proj/small.bin', local, local, { overwrite: true });
      assert.deepEqual([again.changed, again.bytesReceived], [false, small.length]);
      assert.equal((await fs.stat(local)).ino, inode, 'not rewritten');
    } finally {
      conn.close();
    }
  });

  it('an updated file keeps the permission bits of the copy it replaces (a private file stays private), inline or not', async () => {
    await fs.writeFile(path.join(proj, 'small-private.bin'), randomBytes(3000));
    const { conn } = await connectWithInvite(sharer.invite);
    try {
      for (const [name, mode] of [['small-private.bin', 0o600], ['f.bin', 0o640]] as const) {
        const local = path.join(tempDir(), name);
        await fs.writeFile(local, randomBytes(5000));
        await fs.chmod(local, mode);
        const result = await deltaFile(conn, `proj/${name}`, local, local, { overwrite: true });
        assert.equal(result.changed, true);
        assert.equal((await fs.stat(local)).mode & 0o777, mode, `${name} keeps ${mode.toString(8)}`);
      }
    } finally {
      conn.close();
    }
  });

  it('a list longer than the requester\'s maxFileChunks is refused before it is held (TOO_LARGE); the connection stays', async () => {
    const { conn } = await connectWithInvite(sharer.invite, undefined, { maxFileChunks: 3 });
    try {
      await rejectsWithCode(conn.share.chunks('proj/f.bin'), 'TOO_LARGE');
      assert.equal((await conn.stat('proj/f.bin')).size, content.length);
    } finally {
      conn.close();
    }
  });

  it('a file of more chunks than the sharer\'s maxFileChunks: TOO_LARGE from the sharer', async () => {
    const small = await startSharer([proj], { limits: { maxFileChunks: 3 } });
    const { conn } = await connectWithInvite(small.invite);
    try {
      await rejectsWithCode(conn.share.chunks('proj/f.bin'), 'TOO_LARGE');
    } finally {
      conn.close();
      await small.server.close();
    }
  });

  it('a sharer whose chunk count cannot make the file, or that sends more records than it announced: PROTOCOL_ERROR', async () => {
    const hostile = (await makePeer()).identity;
    const client = await makePeer();
    for (const scenario of [
      (async (_req, reply) => {
        await reply.message({ type: 'chunks', size: 10 * 1024 * 1024, mtimeMs: 1000, fileHash: 'a'.repeat(64), count: 2 });
        return {};
      }) as ScenarioV2,
      (async (_req, reply) => {
        const chunks = chunkBytes(Buffer.from('tiny'));
        await reply.message({ type: 'chunks', size: 4, mtimeMs: 1000, fileHash: 'a'.repeat(64), count: 1 });
        await reply.data(Buffer.concat([encodeChunks(chunks), encodeChunks(chunks)]));
        return {};
      }) as ScenarioV2,
      // Bytes inline that nobody asked for (chunks() below does not ask).
      (async (_req, reply) => {
        const chunks = chunkBytes(Buffer.from('tiny'));
        await reply.message({ type: 'chunks', size: 4, mtimeMs: 1000, fileHash: 'a'.repeat(64), count: 1, inline: true });
        await reply.data(Buffer.concat([encodeChunks(chunks), Buffer.from('tiny')]));
        return {};
      }) as ScenarioV2,
    ]) {
      const server = await startHostileSharerV2(hostile, scenario);
      const conn = await connectToPeer({ identity: client.identity, trust: client.trust, addresses: [server.address], expectedPeerId: hostile.peerId, name: 'victim' });
      try {
        await rejectsWithCode(conn.share.chunks('ws/f.bin'), 'PROTOCOL_ERROR');
      } finally {
        conn.close();
        await server.close();
      }
    }
    // Asked for, but larger than a one-chunk file, more bytes than the size, or `inline` not true.
    const big = randomBytes(MAX_INLINE_CHUNKS_FILE_BYTES + 1);
    for (const scenario of [
      (async (_req, reply) => {
        await reply.message({ type: 'chunks', size: big.length, mtimeMs: 1000, fileHash: 'a'.repeat(64), count: chunkBytes(big).length, inline: true });
        await reply.data(Buffer.concat([encodeChunks(chunkBytes(big)), big]));
        return {};
      }) as ScenarioV2,
      (async (_req, reply) => {
        await reply.message({ type: 'chunks', size: 4, mtimeMs: 1000, fileHash: 'a'.repeat(64), count: 1, inline: true });
        await reply.data(Buffer.concat([encodeChunks(chunkBytes(Buffer.from('tiny'))), Buffer.from('tiny!')]));
        return {};
      }) as ScenarioV2,
      (async (_req, reply) => {
        await reply.message({ type: 'chunks', size: 4, mtimeMs: 1000, fileHash: 'a'.repeat(64), count: 1, inline: 1 });
        return {};
      }) as ScenarioV2,
    ]) {
      const server = await startHostileSharerV2(hostile, scenario);
      const conn = await connectToPeer({ identity: client.identity, trust: client.trust, addresses: [server.address], expectedPeerId: hostile.peerId, name: 'victim' });
      try {
        await rejectsWithCode(conn.share.chunks('ws/f.bin', { inline: true }), 'PROTOCOL_ERROR');
      } finally {
        conn.close();
        await server.close();
      }
    }
  });
});

describe('deltaFolder: a folder of 1,000 files, 10 changed, moves only those', () => {
  let sharer: Sharer;
  let conn: PeerConnection;
  let proj: string;

  before(async () => {
    proj = path.join(tempDir(), 'proj');
    await fs.mkdir(path.join(proj, 'sub'), { recursive: true });
    for (let i = 0; i < 1000; i++) await fs.writeFile(path.join(proj, i % 2 ? 'sub' : '', `f${i}.txt`), randomBytes(2000 + i));
    sharer = await startSharer([proj]);
    ({ conn } = await connectWithInvite(sharer.invite));
  });
  after(async () => {
    conn.close();
    await sharer.server.close();
  });

  it('mirrors the folder, then updates only the changed files, and a second run moves nothing', async () => {
    const mirror = path.join(tempDir(), 'mirror');
    const first = await deltaFolder(conn, 'proj', mirror);
    assert.equal(first.filesChecked, 1000);
    assert.equal(first.filesChanged, 1000);
    assert.deepEqual(await listTree(mirror), await listTree(proj));

    let changedBytes = 0;
    for (let i = 0; i < 1000; i += 100) {
      const content = randomBytes(3000);
      changedBytes += content.length;
      await fs.writeFile(path.join(proj, i % 2 ? 'sub' : '', `f${i}.txt`), content);
    }
    const sentBefore = sharer.server.stats.fileBytesSent;
    const second = await deltaFolder(conn, 'proj', mirror);
    assert.equal(second.filesChecked, 1000);
    assert.equal(second.filesChanged, 10);
    assert.equal(second.bytesReceived, changedBytes);
    assert.equal(sharer.server.stats.fileBytesSent - sentBefore, changedBytes, 'the sharer sent those files only');
    for (let i = 0; i < 1000; i += 37) {
      const rel = path.join(i % 2 ? 'sub' : '', `f${i}.txt`);
      assert.ok((await fs.readFile(path.join(mirror, rel))).equals(await fs.readFile(path.join(proj, rel))), rel);
    }

    const third = await deltaFolder(conn, 'proj', mirror);
    assert.equal(third.filesChanged, 0);
    assert.equal(third.bytesReceived, 0);
    assert.equal(sharer.server.stats.fileBytesSent - sentBefore, changedBytes);
  });

  it('leaves a link in a file\'s place alone (not followed, reported), never deletes', async () => {
    const base = tempDir();
    const mirror = path.join(base, 'mirror');
    await fs.mkdir(mirror);
    await fs.writeFile(path.join(base, 'outside'), 'untouched');
    await fs.symlink(path.join(base, 'outside'), path.join(mirror, 'f0.txt'));
    await fs.writeFile(path.join(mirror, 'mine.txt'), 'not on the sharer');
    const result = await deltaFolder(conn, 'proj', mirror);
    assert.deepEqual(result.leftAlone.map((l) => l.path), ['f0.txt']);
    assert.equal(await fs.readFile(path.join(base, 'outside'), 'utf8'), 'untouched');
    assert.equal((await fs.lstat(path.join(mirror, 'f0.txt'))).isSymbolicLink(), true);
    assert.equal(await fs.readFile(path.join(mirror, 'mine.txt'), 'utf8'), 'not on the sharer');
  });
});

describe('deltaFolder with the caller\'s signal', () => {
  it('prints no listener-leak warning, however many requests wait on the signal at once', async () => {
    // Many folders, every file new, a signal given (as the CLI and the editor give one): each of
    // FILES_AT_ONCE updates and of the LISTS_AHEAD listings puts a listener on it; past Node's 10
    // that printed "MaxListenersExceededWarning: Possible EventTarget memory leak" in the user's
    // terminal during `peershare sync`.
    const proj = path.join(tempDir(), 'proj');
    for (let d = 0; d < 12; d++) {
      await fs.mkdir(path.join(proj, `d${d}`), { recursive: true });
      for (let f = 0; f < 12; f++) await fs.writeFile(path.join(proj, `d${d}`, `f${f}.txt`), randomBytes(1000 + f));
    }
    const sharer = await startSharer([proj]);
    const { conn } = await connectWithInvite(sharer.invite);
    // How many abort listeners sit on the caller's signal at once (a warning needs 11, which the
    // timing of this machine decides; the count does not).
    const { signal } = new AbortController();
    let listening = 0;
    let mostAtOnce = 0;
    const add = signal.addEventListener.bind(signal);
    const remove = signal.removeEventListener.bind(signal);
    signal.addEventListener = ((type: string, ...rest: [EventListener, AddEventListenerOptions?]) => {
      if (type === 'abort') mostAtOnce = Math.max(mostAtOnce, ++listening);
      add(type, ...rest);
    }) as typeof signal.addEventListener;
    signal.removeEventListener = ((type: string, ...rest: [EventListener, EventListenerOptions?]) => {
      if (type === 'abort') listening--;
      remove(type, ...rest);
    }) as typeof signal.removeEventListener;
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      const result = await deltaFolder(conn, 'proj', path.join(tempDir(), 'mirror'), { signal });
      assert.equal(result.filesChanged, 144);
      await new Promise((resolve) => setImmediate(resolve)); // a warning is emitted on the next tick
    } finally {
      process.off('warning', onWarning);
      conn.close();
      await sharer.server.close();
    }
    assert.deepEqual(warnings.map((w) => `${w.name}: ${w.message}`), []);
    assert.ok(mostAtOnce <= 2, `${mostAtOnce} listeners on the caller's signal at once`);
  });
});

/** Bytes this process has read with read calls so far (files and sockets: /proc/self/io rchar). */
function readCharacters(): number {
  return Number(/rchar: (\d+)/.exec(readFileSync('/proc/self/io', 'utf8'))?.[1]);
}
