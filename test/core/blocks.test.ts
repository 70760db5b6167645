import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import {
  MANIFEST_HEADER_BYTES,
  MAX_BLOCK_BYTES,
  MIN_BLOCK_BYTES,
  PeerShareError,
  blockSizeFor,
  decodeBlockManifest,
  encodeBlockManifest,
  hashFileBlocks,
  WrittenBlockHashes,
  loadBlake3,
  resolveLimits,
  verifyBlock,
  verifyBlockOnce,
  type BlockManifest,
  type ErrorCode,
} from '../../src/core';
import { tempDir } from '../helpers';

const MiB = 1024 * 1024;
const limits = resolveLimits();
// The definitions, computed independently of blocks.ts with the portable implementation.
const reference = loadBlake3({ forceFallback: true });

function coded(code: ErrorCode) {
  return (err: unknown) => err instanceof PeerShareError && err.code === code;
}

async function fileOf(content: Buffer): Promise<string> {
  const file = path.join(tempDir(), 'file.bin');
  await fs.writeFile(file, content);
  return file;
}

/** The manifest by definition: BLAKE3 of each blockSize slice; the file hash is BLAKE3 of the header and those hashes. */
function expectedManifest(content: Buffer, blockSize: number): { blockHashes: string[]; fileHash: string } {
  const blockHashes: Buffer[] = [];
  for (let offset = 0; offset < content.length; offset += blockSize) blockHashes.push(reference.hash(content.subarray(offset, offset + blockSize)));
  const header = Buffer.alloc(MANIFEST_HEADER_BYTES);
  header.write('PeerShare/b3 v1\n', 0, 'latin1');
  header.writeBigUInt64LE(BigInt(content.length), 16);
  header.writeUInt32LE(blockSize, 24);
  return {
    blockHashes: blockHashes.map((h) => h.toString('hex')),
    fileHash: reference.hash(Buffer.concat([header, ...blockHashes])).toString('hex'),
  };
}

describe('blocks: block size', () => {
  it("follows Syncthing's rule: the smallest power of two from 128 KiB giving under 2000 blocks, at most 16 MiB", () => {
    assert.equal(blockSizeFor(0), MIN_BLOCK_BYTES);
    assert.equal(blockSizeFor(1), MIN_BLOCK_BYTES);
    assert.equal(blockSizeFor(250 * MiB - 1), 128 * 1024);
    assert.equal(blockSizeFor(250 * MiB), 256 * 1024);
    assert.equal(blockSizeFor(1024 * MiB), MiB);
    assert.equal(blockSizeFor(2000 * MiB), 2 * MiB);
    assert.equal(blockSizeFor(32 * 1024 * MiB), MAX_BLOCK_BYTES);
    assert.equal(blockSizeFor(1024 * 1024 * MiB), MAX_BLOCK_BYTES);
  });
});

describe('blocks: hashing a file', () => {
  const B = MIN_BLOCK_BYTES;
  // Up to three reads of 1 MiB (8 blocks each): the two read buffers each used more than once.
  for (const size of [0, 1, B - 1, B, B + 1, 9 * B + 5, 16 * B, 20 * B + 5]) {
    it(`${size} bytes: the block hashes and the file hash as defined`, async () => {
      const content = randomBytes(size);
      const manifest = await hashFileBlocks(await fileOf(content), limits);
      const expected = expectedManifest(content, B);
      assert.equal(manifest.size, size);
      assert.equal(manifest.blockSize, B);
      assert.equal(manifest.blockHashes.length, Math.ceil(size / B));
      assert.deepEqual(manifest.blockHashes.map((h) => h.toString('hex')), expected.blockHashes);
      assert.equal(manifest.fileHash.toString('hex'), expected.fileHash);
      assert.ok(reference.hash(encodeBlockManifest(manifest)).equals(manifest.fileHash));
    });
  }

  it('a file of 2000 MiB has blocks of 2 MiB, each read whole (a sparse file, so mostly zeros)', async () => {
    const blockSize = 2 * MiB;
    const size = 2000 * MiB + 5;
    const file = path.join(tempDir(), 'sparse.bin');
    const handle = await fs.open(file, 'w');
    try {
      await handle.truncate(size);
      await handle.write(Buffer.from('in block 1'), 0, 10, 3 * MiB);
      await handle.write(Buffer.from('tail!'), 0, 5, size - 5);
    } finally {
      await handle.close();
    }
    const manifest = await hashFileBlocks(file, limits);
    assert.equal(manifest.blockSize, blockSize);
    assert.equal(manifest.blockHashes.length, 1001);
    const zeros = reference.hash(Buffer.alloc(blockSize)).toString('hex');
    const second = Buffer.alloc(blockSize);
    second.write('in block 1', MiB);
    const hex = manifest.blockHashes.map((h) => h.toString('hex'));
    assert.equal(hex[0], zeros);
    assert.equal(hex[1], reference.hash(second).toString('hex'));
    assert.ok(hex.slice(2, 1000).every((h) => h === zeros));
    assert.equal(hex[1000], reference.hash(Buffer.from('tail!')).toString('hex'));
  });

  it('reads from an open file as from a path, and leaves it open for its owner', async () => {
    const file = await fileOf(randomBytes(3 * MiB + 17));
    const handle = await fs.open(file, 'r');
    try {
      const fromHandle = await hashFileBlocks(handle, limits);
      assert.ok(fromHandle.fileHash.equals((await hashFileBlocks(file, limits)).fileHash));
      assert.equal((await handle.stat()).size, 3 * MiB + 17, 'the handle is still open');
    } finally {
      await handle.close();
    }
  });

  it('different content, the same size: a different file hash', async () => {
    const content = randomBytes(2 * MIN_BLOCK_BYTES);
    const first = await hashFileBlocks(await fileOf(content), limits);
    content[MIN_BLOCK_BYTES + 5] ^= 1;
    const second = await hashFileBlocks(await fileOf(content), limits);
    assert.ok(first.blockHashes[0].equals(second.blockHashes[0]));
    assert.ok(!first.blockHashes[1].equals(second.blockHashes[1]));
    assert.ok(!first.fileHash.equals(second.fileHash));
  });

  it('refuses a file with more blocks than the limit allows, with a coded error', async () => {
    const file = await fileOf(randomBytes(3 * MIN_BLOCK_BYTES));
    await assert.rejects(hashFileBlocks(file, resolveLimits({ maxFileBlocks: 2 })), coded('TOO_LARGE'));
    await assert.rejects(hashFileBlocks(file, resolveLimits({ maxManifestBytes: MANIFEST_HEADER_BYTES + 2 * 32 })), coded('TOO_LARGE'));
    assert.equal((await hashFileBlocks(file, resolveLimits({ maxFileBlocks: 3, maxManifestBytes: MANIFEST_HEADER_BYTES + 3 * 32 }))).blockHashes.length, 3);
  });

  it('refuses a folder', async () => {
    await assert.rejects(hashFileBlocks(tempDir(), limits), coded('NOT_A_FILE'));
  });
});

describe('blocks: verifying a block', () => {
  async function fixture(): Promise<{ content: Buffer; manifest: BlockManifest }> {
    const content = randomBytes(2 * MIN_BLOCK_BYTES + 1000);
    return { content, manifest: await hashFileBlocks(await fileOf(content), limits) };
  }
  const blockOf = (content: Buffer, index: number) => content.subarray(index * MIN_BLOCK_BYTES, (index + 1) * MIN_BLOCK_BYTES);

  it('accepts every block of the file, the short last one included', async () => {
    const { content, manifest } = await fixture();
    for (let index = 0; index < 3; index++) verifyBlock(index, blockOf(content, index), manifest);
    assert.equal(blockOf(content, 2).length, 1000);
  });

  it('refuses a block with one flipped byte, or the right bytes under another index', async () => {
    const { content, manifest } = await fixture();
    const flipped = Buffer.from(blockOf(content, 1));
    flipped[12_345] ^= 0x20;
    assert.throws(() => verifyBlock(1, flipped, manifest), coded('HASH_MISMATCH'));
    assert.throws(() => verifyBlock(0, blockOf(content, 1), manifest), coded('HASH_MISMATCH'));
  });

  it('refuses a truncated or an over-long block', async () => {
    const { content, manifest } = await fixture();
    assert.throws(() => verifyBlock(0, blockOf(content, 0).subarray(0, MIN_BLOCK_BYTES - 1), manifest), coded('SIZE_MISMATCH'));
    assert.throws(() => verifyBlock(2, Buffer.concat([blockOf(content, 2), Buffer.alloc(1)]), manifest), coded('SIZE_MISMATCH'));
    assert.throws(() => verifyBlock(2, Buffer.alloc(0), manifest), coded('SIZE_MISMATCH'));
  });

  it('verifies a block once: the same buffer, manifest and index pass again unhashed, anything else is checked', async () => {
    const { content, manifest } = await fixture();
    const other = (await fixture()).manifest;
    const block = Buffer.from(blockOf(content, 1));
    assert.throws(() => verifyBlockOnce(1, Buffer.from(block).fill(0, 0, 1), manifest), coded('HASH_MISMATCH'), 'never verified: hashed');
    verifyBlock(1, block, manifest);
    // Changed after it passed: the receiver's promise is never to do this; the skip shows no second hash.
    block[0] ^= 0x01;
    verifyBlockOnce(1, block, manifest);
    assert.throws(() => verifyBlockOnce(0, block, manifest), coded('HASH_MISMATCH'), 'another index: hashed');
    assert.throws(() => verifyBlockOnce(1, block, other), coded('HASH_MISMATCH'), 'another manifest: hashed');
    assert.throws(() => verifyBlockOnce(1, Buffer.from(block), manifest), coded('HASH_MISMATCH'), 'a copy: hashed');
  });

  it('refuses an index the file does not have', async () => {
    const { content, manifest } = await fixture();
    for (const index of [-1, 3, 1.5, Number.NaN]) {
      assert.throws(() => verifyBlock(index, blockOf(content, 0), manifest), coded('PROTOCOL_ERROR'), String(index));
    }
  });
});

describe('blocks: a block list from a peer', () => {
  async function encoded(size = 3 * MIN_BLOCK_BYTES + 1): Promise<{ manifest: BlockManifest; bytes: Buffer }> {
    const manifest = await hashFileBlocks(await fileOf(randomBytes(size)), limits);
    return { manifest, bytes: encodeBlockManifest(manifest) };
  }

  it('decodes what was encoded, with the same file hash, and checks it against an expected one', async () => {
    const { manifest, bytes } = await encoded();
    const decoded = decodeBlockManifest(bytes, limits, manifest.fileHash);
    assert.equal(decoded.size, manifest.size);
    assert.equal(decoded.blockSize, manifest.blockSize);
    assert.deepEqual(decoded.blockHashes, manifest.blockHashes);
    assert.ok(decoded.fileHash.equals(manifest.fileHash));
    bytes.fill(0);
    assert.notDeepEqual(decoded.blockHashes[0], Buffer.alloc(32), 'the decoded list keeps its own copy');
    const other = await encoded();
    assert.throws(() => decodeBlockManifest(other.bytes, limits, manifest.fileHash), coded('HASH_MISMATCH'));
  });

  it('an empty file is a header and no hashes', async () => {
    const { manifest, bytes } = await encoded(0);
    assert.equal(bytes.length, MANIFEST_HEADER_BYTES);
    assert.equal(decodeBlockManifest(bytes, limits).blockHashes.length, 0);
    assert.ok(decodeBlockManifest(bytes, limits).fileHash.equals(manifest.fileHash));
  });

  it('refuses a list over the limits with TOO_LARGE, before reading it', async () => {
    const { bytes } = await encoded();
    assert.throws(() => decodeBlockManifest(bytes, resolveLimits({ maxManifestBytes: bytes.length - 1 })), coded('TOO_LARGE'));
    assert.throws(() => decodeBlockManifest(bytes, resolveLimits({ maxFileBlocks: 3 })), coded('TOO_LARGE'));
    // A huge declared size is refused by the count it implies, whatever the bytes that follow.
    const huge = Buffer.from(bytes);
    huge.writeBigUInt64LE(BigInt(Number.MAX_SAFE_INTEGER), 16);
    huge.writeUInt32LE(MAX_BLOCK_BYTES, 24);
    assert.throws(() => decodeBlockManifest(huge, limits), coded('TOO_LARGE'));
  });

  it('refuses a malformed list with PROTOCOL_ERROR', async () => {
    const { bytes } = await encoded();
    const variants: [string, (b: Buffer) => Buffer][] = [
      ['short header', (b) => b.subarray(0, MANIFEST_HEADER_BYTES - 1)],
      ['another magic', (b) => (b.write('PeerShare/b3 v2\n', 0, 'latin1'), b)],
      ['block size not a power of two', (b) => (b.writeUInt32LE(MIN_BLOCK_BYTES + 1, 24), b)],
      ['block size below the minimum', (b) => (b.writeUInt32LE(MIN_BLOCK_BYTES / 2, 24), b)],
      ['block size above the maximum', (b) => (b.writeUInt32LE(MAX_BLOCK_BYTES * 2, 24), b)],
      ['size past 2^53', (b) => (b.writeBigUInt64LE(2n ** 60n, 16), b)],
      ['one hash missing', (b) => b.subarray(0, b.length - 32)],
      ['one hash too many', (b) => Buffer.concat([b, Buffer.alloc(32)])],
      ['a stray byte', (b) => Buffer.concat([b, Buffer.alloc(1)])],
    ];
    for (const [name, mutate] of variants) {
      assert.throws(() => decodeBlockManifest(mutate(Buffer.from(bytes)), limits), coded('PROTOCOL_ERROR'), name);
    }
  });
});

describe('blocks: the hashes of a file as it is written (WrittenBlockHashes)', () => {
  const B = MIN_BLOCK_BYTES;
  const content = randomBytes(5 * B + 777);
  const expected = expectedManifest(content, B).fileHash;
  /** Hashes `content` written in `pieces` ([from, to) each), reading back from `content` what it must; returns the file hash and the blocks read back. */
  async function hashOf(pieces: [number, number][]): Promise<{ fileHash: string; readBack: number[] }> {
    const written = new WrittenBlockHashes(content.length, B);
    for (const [from, to] of pieces) written.wrote(content.subarray(from, to), from);
    const readBack: number[] = [];
    const fileHash = await written.fileHash(async (buffer, length, position) => {
      readBack.push(position / B);
      content.copy(buffer, 0, position, position + length);
    });
    return { fileHash: fileHash.toString('hex'), readBack };
  }

  it('in order, in pieces that straddle blocks: nothing is read back', async () => {
    const cuts = [0, 1000, B, B + 1, 3 * B - 5, 3 * B + 9000, content.length];
    const pieces = cuts.slice(1).map((to, i): [number, number] => [cuts[i], to]);
    assert.deepEqual(await hashOf(pieces), { fileHash: expected, readBack: [] });
  });

  it('out of order within a block, a block written twice, or one never written: that block alone is read back', async () => {
    const outOfOrder = await hashOf([[0, 2 * B], [2 * B + 100, 3 * B], [2 * B, 2 * B + 100], [3 * B, content.length]]);
    assert.deepEqual(outOfOrder, { fileHash: expected, readBack: [2] });
    const twice = await hashOf([[0, content.length], [B + 10, B + 20]]);
    assert.deepEqual(twice, { fileHash: expected, readBack: [1] });
    const hole = await hashOf([[0, 4 * B], [5 * B, content.length]]);
    assert.deepEqual(hole, { fileHash: expected, readBack: [4] });
  });

  it('bytes that are not the file (a block written wrong, then nothing else): the hash is not the file\'s', async () => {
    const written = new WrittenBlockHashes(content.length, B);
    const wrong = Buffer.from(content);
    wrong[B + 5] ^= 1;
    written.wrote(wrong, 0);
    const fileHash = await written.fileHash(async () => assert.fail('every block was hashed as written'));
    assert.notEqual(fileHash.toString('hex'), expected);
  });

  it('an empty file', async () => {
    const written = new WrittenBlockHashes(0, B);
    assert.equal((await written.fileHash(async () => assert.fail('nothing to read'))).toString('hex'), expectedManifest(Buffer.alloc(0), B).fileHash);
  });
});
