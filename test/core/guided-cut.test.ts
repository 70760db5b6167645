import assert from 'node:assert/strict';
import { promises as fs, truncateSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { blake3 } from '../../src/core/blake3';
import { CDC_MAX_BYTES, chunkBytes, type Chunk, type ChunkList } from '../../src/core/cdc';
import { guidedCut, guidedCutAside } from '../../src/core/guided-cut';
import { helpersRunning, helpersSeen } from '../security/cut-spies';
import { rejectsWithCode, seededBytes as pseudoRandom, tempDir } from '../helpers';

const MiB = 1024 * 1024;
const LIMITS = { maxFileChunks: 1_000_000 };

/** The sharer's list of `theirs`, as share-provider makes it. */
function listOf(theirs: Buffer, chunks: Chunk[] = chunkBytes(theirs)): ChunkList {
  return { size: theirs.length, fileHash: blake3(theirs), chunks };
}

async function fileOf(bytes: Buffer): Promise<string> {
  const file = path.join(tempDir('peershare-guided-'), 'local.bin');
  await fs.writeFile(file, bytes);
  return file;
}

async function guided(ours: Buffer, guide: ChunkList, onChunks?: (chunks: readonly Chunk[]) => void): Promise<Chunk[]> {
  return (await guidedWithCost(ours, guide, onChunks)).chunks;
}

async function guidedWithCost(ours: Buffer, guide: ChunkList, onChunks?: (chunks: readonly Chunk[]) => void): Promise<{ chunks: Chunk[]; hashedBytes: number; cutBytes: number }> {
  const handle = await fs.open(await fileOf(ours), 'r');
  try {
    return await guidedCut(handle, guide, LIMITS, onChunks);
  } finally {
    await handle.close();
  }
}

/** Every chunk is the local copy's own bytes at its offset, and the chunks tile the copy exactly. */
function assertTiles(chunks: Chunk[], ours: Buffer): void {
  let offset = 0;
  for (const chunk of chunks) {
    assert.equal(chunk.offset, offset);
    assert.ok(chunk.length >= 1 && chunk.length <= CDC_MAX_BYTES);
    assert.ok(blake3(ours.subarray(chunk.offset, chunk.offset + chunk.length)).equals(chunk.hash), `chunk at ${chunk.offset}`);
    offset += chunk.length;
  }
  assert.equal(offset, ours.length);
}

/** The bytes of the sharer's version the local chunks hold (by hash and length, each place once). */
function bytesFound(chunks: Chunk[], guide: ChunkList): number {
  const have = new Set(chunks.map((c) => `${c.length}:${c.hash.toString('hex')}`));
  return guide.chunks.filter((c) => have.has(`${c.length}:${c.hash.toString('hex')}`)).reduce((sum, c) => sum + c.length, 0);
}

describe('a local copy cut with the sharer\'s chunk list as a guide (guided-cut.ts)', () => {
  const old = pseudoRandom(12 * MiB, 4101);

  it('a copy that is the sharer\'s version: its chunks are exactly the sharer\'s list', async () => {
    const guide = listOf(old);
    const chunks = await guided(old, guide);
    assert.deepEqual(chunks.map((c) => [c.offset, c.length, c.hash.toString('hex')]), guide.chunks.map((c) => [c.offset, c.length, c.hash.toString('hex')]));
  });

  const edits: [string, (b: Buffer) => Buffer][] = [
    ['100 bytes inserted at the start', (b) => Buffer.concat([pseudoRandom(100, 1), b])],
    ['100 bytes inserted in the middle', (b) => Buffer.concat([b.subarray(0, 6 * MiB), pseudoRandom(100, 2), b.subarray(6 * MiB)])],
    ['bytes appended at the end', (b) => Buffer.concat([b, pseudoRandom(70_000, 3)])],
    ['64 KiB deleted at the start, in the middle and at the end', (b) => Buffer.concat([b.subarray(65536, 6 * MiB), b.subarray(6 * MiB + 65536, b.length - 65536)])],
    ['three 4 KiB regions changed', (b) => {
      const c = Buffer.from(b);
      for (const at of [3 * MiB, 6 * MiB, 9 * MiB]) pseudoRandom(4096, at).copy(c, at);
      return c;
    }],
    ['its two halves swapped (every chunk at another offset)', (b) => Buffer.concat([b.subarray(6 * MiB), b.subarray(0, 6 * MiB)])],
  ];
  for (const [what, edit] of edits) {
    it(`the sharer's version with ${what}: the copy is tiled by its own chunks, and as much of the sharer's version is found as a full cut finds`, async () => {
      const theirs = edit(old);
      const guide = listOf(theirs);
      const { chunks, cutBytes } = await guidedWithCost(old, guide);
      assertTiles(chunks, old);
      // Only around the edits was the copy cut; elsewhere the guide's chunks were found in place.
      assert.ok(cutBytes <= 8 * CDC_MAX_BYTES, `${cutBytes} bytes cut`);
      const full = bytesFound(chunkBytes(old), guide);
      const found = bytesFound(chunks, guide);
      assert.ok(found >= full, `guided found ${found} bytes, a full cut ${full}`);
      assert.ok(found >= theirs.length - 8 * CDC_MAX_BYTES, `only ${found} of ${theirs.length} bytes found`);
    });
  }

  it('a list that names nothing the copy holds: the copy is cut exactly as without a guide', async () => {
    const other = pseudoRandom(3 * MiB, 4102);
    const chunks = await guided(old, listOf(other));
    assert.deepEqual(hashesOf(chunks), hashesOf(chunkBytes(old)));
  });

  it('a list made to fail at every place (each chunk the cut finds is named, followed by a chunk of a wrong hash): the guide stops after hashing as much as the copy holds, and the cut is still exact', async () => {
    // The list: every chunk of the plain cut, each followed by a 256 KiB chunk the copy never holds.
    const plain = chunkBytes(old);
    const lie: Chunk[] = [];
    let offset = 0;
    for (const chunk of plain) {
      lie.push({ offset, length: chunk.length, hash: chunk.hash });
      offset += chunk.length;
      lie.push({ offset, length: CDC_MAX_BYTES, hash: Buffer.alloc(32, 7) });
      offset += CDC_MAX_BYTES;
    }
    const guide: ChunkList = { size: offset, fileHash: Buffer.alloc(32), chunks: lie };
    const { chunks, hashedBytes } = await guidedWithCost(old, guide);
    assert.deepEqual(hashesOf(chunks), hashesOf(plain));
    // The plain cut hashes the copy once; the failed tries at most as much again (and one try more).
    assert.ok(hashedBytes <= 2 * old.length + CDC_MAX_BYTES, `${hashedBytes} bytes hashed for a copy of ${old.length}`);
    assert.ok(hashedBytes > 1.5 * old.length, `${hashedBytes}: the list did make the tries fail`);
  });

  it('chunks found so far are handed on as the cut goes, the same growing list', async () => {
    const seen: number[] = [];
    let list: readonly Chunk[] | undefined;
    const chunks = await guided(old, listOf(Buffer.concat([pseudoRandom(10, 5), old])), (c) => {
      list ??= c;
      assert.equal(c, list);
      seen.push(c.length);
    });
    assert.ok(seen.length >= 3, `${seen.length} reports`);
    assert.equal(seen[seen.length - 1], chunks.length);
  });

  it('a copy truncated while it is cut: FILE_CHANGED (its chunks would describe no version of it)', async () => {
    const file = await fileOf(old);
    const handle = await fs.open(file, 'r');
    try {
      let truncated = false;
      await rejectsWithCode(
        guidedCut(handle, listOf(old), LIMITS, () => {
          if (truncated) return;
          truncated = true;
          void fs.truncate(file, 5 * MiB);
        }),
        'FILE_CHANGED',
      );
    } finally {
      await handle.close();
    }
  });

  it('a copy of more chunks than maxFileChunks: TOO_LARGE', async () => {
    const handle = await fs.open(await fileOf(old), 'r');
    try {
      await rejectsWithCode(guidedCut(handle, listOf(old), { maxFileChunks: 10 }), 'TOO_LARGE');
    } finally {
      await handle.close();
    }
  });
});

describe('the guided cut in a helper thread (guidedCutAside), as an update of a large copy runs it', () => {
  const old = pseudoRandom(12 * MiB, 4111);
  const theirs = Buffer.concat([pseudoRandom(100, 4112), old.subarray(0, 5 * MiB), pseudoRandom(4096, 4113), old.subarray(5 * MiB + 4096)]);

  it('finds the same chunks as the cut in this thread, reported as they come, and its thread has ended when it returns', async () => {
    const file = await fileOf(old);
    const inThread = await guidedWithCost(old, listOf(theirs));
    const handle = await fs.open(file, 'r');
    const before = helpersSeen.length;
    const reports: number[] = [];
    try {
      const aside = await guidedCutAside(handle, listOf(theirs), LIMITS, (chunks) => reports.push(chunks.length), undefined, 0);
      assert.equal(helpersSeen.length, before + 1, 'one helper thread cut it');
      assert.equal(helpersRunning(), 0);
      assert.deepEqual(hashesOf(aside.chunks), hashesOf(inThread.chunks));
      assert.equal(aside.hashedBytes, inThread.hashedBytes);
      assert.equal(aside.cutBytes, inThread.cutBytes);
      assert.ok(reports.length >= 2, `reported ${reports.length} times`);
      assert.ok(reports.every((n, i) => i === 0 || n >= reports[i - 1]));
      assert.equal(reports[reports.length - 1], aside.chunks.length);
      assertTiles(aside.chunks, old);
    } finally {
      await handle.close();
    }
  });

  it('cancelled: CANCELLED, and the thread has stopped reading the descriptor before it returns', async () => {
    const handle = await fs.open(await fileOf(old), 'r');
    const stop = new AbortController();
    try {
      await rejectsWithCode(guidedCutAside(handle, listOf(theirs), LIMITS, () => stop.abort(), stop.signal, 0), 'CANCELLED');
      assert.equal(helpersRunning(), 0);
    } finally {
      await handle.close();
    }
  });

  it('the copy truncated while the thread reads it: FILE_CHANGED', async () => {
    const file = await fileOf(old);
    const handle = await fs.open(file, 'r');
    try {
      let truncated = false;
      await rejectsWithCode(
        guidedCutAside(
          handle,
          listOf(theirs),
          LIMITS,
          () => {
            if (truncated) return;
            truncated = true;
            // Synchronous: before the thread's last report is handled, so before the final check
            // (with fs.truncate the thread could end first; it failed about once in many runs).
            truncateSync(file, 5 * MiB);
          },
          undefined,
          0,
        ),
        'FILE_CHANGED',
      );
      assert.equal(helpersRunning(), 0);
    } finally {
      await handle.close();
    }
  });

  it('a copy of more chunks than maxFileChunks: TOO_LARGE from the thread', async () => {
    const handle = await fs.open(await fileOf(old), 'r');
    const before = helpersSeen.length;
    try {
      await rejectsWithCode(guidedCutAside(handle, listOf(theirs), { maxFileChunks: 10 }, undefined, undefined, 0), 'TOO_LARGE');
      assert.equal(helpersSeen.length, before + 1);
    } finally {
      await handle.close();
    }
  });
});

function hashesOf(chunks: Chunk[]): string[] {
  return chunks.map((c) => `${c.offset}:${c.length}:${c.hash.toString('hex')}`);
}

