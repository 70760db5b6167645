import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { availableParallelism } from 'node:os';
import { describe, it } from 'node:test';
import { startCutHelper } from '../../src/core/cdc-helper';
import { MAX_CUT_HELPERS } from '../../src/core/limits';
import {
  CDC_MAX_BYTES,
  CDC_MIN_BYTES,
  CHUNK_MEMORY_BYTES,
  CHUNK_RECORD_BYTES,
  ChunkListCache,
  GEAR,
  chunkBytes,
  chunkFile,
  decodeChunks,
  encodeChunks,
  type Chunk,
} from '../../src/core/cdc';
import { rejectsWithCode, tempDir } from '../helpers';

/** Deterministic bytes (xorshift32), so the vectors below are the same on every machine. */
export function pseudoRandom(size: number, seed: number): Buffer {
  const bytes = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

const hashes = (chunks: Chunk[]): string[] => chunks.map((c) => c.hash.toString('hex'));

/** Chunks of `after` whose hash `before` also has. */
function shared(before: Chunk[], after: Chunk[]): number {
  const known = new Set(hashes(before));
  return after.filter((c) => known.has(c.hash.toString('hex'))).length;
}

describe('content-defined chunks (FastCDC, docs/protocol-v2.md 15.1)', () => {
  it('derives the gear table from BLAKE3 as the spec says (fixed vector)', () => {
    assert.equal(GEAR[0].toString(16), '9093c231');
    assert.equal(GEAR[1].toString(16), 'd0bd4c03');
    assert.equal(GEAR[255].toString(16), 'c631d8');
  });

  it('cuts 1 MiB of fixed bytes exactly where it always did (fixed vector)', () => {
    const chunks = chunkBytes(pseudoRandom(1 << 20, 42));
    assert.deepEqual(
      chunks.map((c) => c.length),
      [75250, 59842, 74314, 65884, 65835, 136928, 97543, 86863, 73061, 89173, 80675, 70380, 72828],
    );
    assert.equal(chunks[0].hash.toString('hex'), 'd844e3c9ee9b884d0ab44c41e8861d8ca1250f6908bc646b4a1e334a9f9adcab');
  });

  it('keeps every chunk within its bounds, and the chunks cover the data exactly', () => {
    const data = pseudoRandom(6 << 20, 3);
    const chunks = chunkBytes(data);
    let offset = 0;
    for (const [i, chunk] of chunks.entries()) {
      assert.equal(chunk.offset, offset);
      assert.ok(chunk.length <= CDC_MAX_BYTES);
      if (i < chunks.length - 1) assert.ok(chunk.length >= CDC_MIN_BYTES, `chunk ${i} is ${chunk.length} bytes`);
      offset += chunk.length;
    }
    assert.equal(offset, data.length);
  });

  it('cuts a run of identical bytes (no boundary found) at the maximum', () => {
    const chunks = chunkBytes(Buffer.alloc(1 << 20));
    assert.deepEqual(chunks.map((c) => c.length), [CDC_MAX_BYTES, CDC_MAX_BYTES, CDC_MAX_BYTES, CDC_MAX_BYTES]);
  });

  for (const [where, at] of [['start', 0], ['middle', 3 << 20], ['end', (6 << 20) - 10]] as const) {
    it(`keeps the boundaries before and after an insertion at the ${where}: at most 2 chunks differ`, () => {
      const data = pseudoRandom(6 << 20, 9);
      const before = chunkBytes(data);
      const after = chunkBytes(Buffer.concat([data.subarray(0, at), Buffer.from('x'.repeat(100)), data.subarray(at)]));
      assert.ok(shared(before, after) >= after.length - 2, `${shared(before, after)} of ${after.length} chunks kept`);
    });

    it(`keeps the boundaries around a deletion and a change at the ${where}`, () => {
      const data = pseudoRandom(6 << 20, 11);
      const before = chunkBytes(data);
      const deleted = chunkBytes(Buffer.concat([data.subarray(0, at), data.subarray(at + 10)]));
      assert.ok(shared(before, deleted) >= deleted.length - 2);
      const changed = Buffer.from(data);
      changed.fill(0x55, at, at + 10);
      const modified = chunkBytes(changed);
      assert.ok(shared(before, modified) >= modified.length - 2);
      assert.notDeepEqual(hashes(modified), hashes(before));
    });
  }

  it('cuts a file streamed through its read buffer exactly as the same bytes in memory', async () => {
    const dir = tempDir();
    // Around the 1 MiB read (one read, one more byte, two reads), many reads, and bytes of no
    // content (every chunk cut at the maximum, so the bytes carried between reads are the most).
    const cases = [0, 1, CDC_MIN_BYTES, CDC_MIN_BYTES + 1, CDC_MAX_BYTES + 7, 1 << 20, (1 << 20) + 1, 2 << 20, 9 * 1024 * 1024 + 123].map((size) => pseudoRandom(size, size + 1));
    cases.push(Buffer.alloc(3 * 1024 * 1024 + 5));
    for (const data of cases) {
      const size = data.length;
      const file = path.join(dir, `f${size}`);
      await fs.writeFile(file, data);
      const { chunks } = await chunkFile(file, { maxFileChunks: 1_000_000 });
      assert.deepEqual(chunks.map((c) => [c.offset, c.length, c.hash.toString('hex')]), chunkBytes(data).map((c) => [c.offset, c.length, c.hash.toString('hex')]), `size ${size}`);
    }
  });

  it('cuts a large file with a helper thread from the middle, exactly as in one pass (and a helper that cannot read changes nothing)', async () => {
    const dir = tempDir();
    const cases = [pseudoRandom(5 * 1024 * 1024 + 321, 77), pseudoRandom(2 * 1024 * 1024, 78), Buffer.alloc(4 * 1024 * 1024 + 9)];
    for (const [i, data] of cases.entries()) {
      const file = path.join(dir, `p${i}`);
      await fs.writeFile(file, data);
      const seen: number[] = [];
      const { chunks, helped } = await chunkFile(file, { maxFileChunks: 1_000_000 }, (so) => seen.push(so.length), 1024 * 1024);
      // Bytes with no cut point (zeros: every chunk the maximum, placed by where it starts) never
      // meet the helper's cuts: this thread cuts them all, as in one pass.
      if (availableParallelism() > 1) assert.equal(helped, i < 2, `case ${i}: whether the helper thread's half was used`);
      assert.deepEqual(chunks.map((c) => [c.offset, c.length, c.hash.toString('hex')]), chunkBytes(data).map((c) => [c.offset, c.length, c.hash.toString('hex')]), `case ${i}`);
      assert.equal(seen[seen.length - 1], chunks.length, 'the last progress call has every chunk');
    }
    const helper = startCutHelper(-1, 10 * 1024 * 1024, 5 * 1024 * 1024, 1000);
    if (helper) {
      assert.equal(await helper.records, undefined, 'a helper that cannot read gives nothing, and does not throw');
      await helper.stop();
    }
  });

  it('many large files cut at once use at most MAX_CUT_HELPERS helper threads (never more than the cores but one); the rest are cut in one pass, exactly', async () => {
    const dir = tempDir();
    const files = await Promise.all(
      [0, 1, 2, 3, 4, 5].map(async (i) => {
        const data = pseudoRandom(3 * 1024 * 1024, 100 + i);
        const file = path.join(dir, `m${i}`);
        await fs.writeFile(file, data);
        return { file, data };
      }),
    );
    const cuts = await Promise.all(files.map(({ file }) => chunkFile(file, { maxFileChunks: 1_000_000 }, undefined, 1024 * 1024)));
    const helped = cuts.filter((c) => c.helped).length;
    assert.ok(helped <= Math.min(MAX_CUT_HELPERS, availableParallelism() - 1), `${helped} helper threads at once`);
    if (availableParallelism() > 1) assert.ok(helped >= 1, 'one was used');
    cuts.forEach((cut, i) => assert.deepEqual(cut.chunks.map((c) => c.hash.toString('hex')), chunkBytes(files[i].data).map((c) => c.hash.toString('hex'))));
  });

  it('refuses a file of more chunks than maxFileChunks: TOO_LARGE', async () => {
    const file = path.join(tempDir(), 'big');
    await fs.writeFile(file, pseudoRandom(2 << 20, 5));
    await rejectsWithCode(chunkFile(file, { maxFileChunks: 4 }), 'TOO_LARGE');
  });

  it('encodes chunk records and decodes only lists that describe the file exactly', () => {
    const data = pseudoRandom(1 << 20, 1);
    const chunks = chunkBytes(data);
    const bytes = encodeChunks(chunks);
    assert.equal(bytes.length, chunks.length * CHUNK_RECORD_BYTES);
    assert.deepEqual(decodeChunks(bytes, data.length).map((c) => [c.offset, c.length, c.hash.toString('hex')]), chunks.map((c) => [c.offset, c.length, c.hash.toString('hex')]));
    assert.throws(() => decodeChunks(bytes, data.length + 1), { code: 'PROTOCOL_ERROR' });
    assert.throws(() => decodeChunks(bytes.subarray(1), data.length), { code: 'PROTOCOL_ERROR' });
    const zero = Buffer.from(bytes);
    zero.writeUInt32LE(0, 0);
    assert.throws(() => decodeChunks(zero, data.length), { code: 'PROTOCOL_ERROR' });
    const huge = Buffer.from(bytes);
    huge.writeUInt32LE(CDC_MAX_BYTES + 1, 0);
    assert.throws(() => decodeChunks(huge, data.length), { code: 'PROTOCOL_ERROR' });
  });

  it('caches chunk lists by version, not when the file changed just before, and evicts the least recently used', () => {
    const version = (ino: bigint, changedMs: number) => ({ dev: 1n, ino, size: 10n, mtimeNs: BigInt(changedMs) * 1_000_000n, ctimeNs: BigInt(changedMs) * 1_000_000n }) as never;
    const list = chunkBytes(pseudoRandom(100, 1));
    const cache = new ChunkListCache(3 * CHUNK_MEMORY_BYTES * list.length);
    cache.put(version(1n, 0), list, 1000); // changed 1 s before: racy, not kept
    assert.equal(cache.get(version(1n, 0)), undefined);
    cache.put(version(1n, 0), list, 10_000);
    cache.put(version(2n, 0), list, 10_000);
    cache.put(version(3n, 0), list, 10_000);
    assert.equal(cache.get(version(1n, 0)), list); // now the most recent
    cache.put(version(4n, 0), list, 10_000);
    assert.equal(cache.get(version(2n, 0)), undefined);
    assert.equal(cache.get(version(1n, 0)), list);
    assert.equal(cache.get(version(1n, 5)), undefined, 'another version of the same file');
  });
});
