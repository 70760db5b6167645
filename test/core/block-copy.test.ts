import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { blake3 } from '../../src/core/blake3';
import { predictedCopy, type BlockWriter, type PredictedCopy } from '../../src/core/block-copy';
import { blockSizeFor, type BlockManifest } from '../../src/core/blocks';
import { CDC_MAX_BYTES, chunkBytes, type ChunkList } from '../../src/core/cdc';
import { guidedCut } from '../../src/core/guided-cut';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { rejectsWithCode, seededBytes, tempDir } from '../helpers';

const MiB = 1024 * 1024;
const KiB = 1024;

function listOf(theirs: Buffer): ChunkList {
  return { size: theirs.length, fileHash: blake3(theirs), chunks: chunkBytes(theirs) };
}

/**
 * A writer into memory that checks what block-copy.ts promises: every byte it is given is the
 * sharer's byte at that place, and a block written whole comes with its true hash. It also counts
 * writes still under way (none may be once predictedCopy returns).
 */
function checkingWriter(theirs: Buffer): BlockWriter & { target: Buffer; inFlight: () => number; writes: number } {
  const target = Buffer.alloc(theirs.length);
  let inFlight = 0;
  const writer = {
    target,
    writes: 0,
    inFlight: () => inFlight,
    async write(data: Buffer, position: number): Promise<void> {
      assert.ok(data.equals(theirs.subarray(position, position + data.length)), `${data.length} bytes written at ${position} are not the sharer's`);
      inFlight++;
      await new Promise((resolve) => setImmediate(resolve));
      data.copy(target, position);
      writer.writes++;
      inFlight--;
    },
    async writeBlock(data: Buffer, position: number, index: number, hash: Buffer): Promise<void> {
      assert.ok(blake3(data).equals(hash), `block ${index}: the hash given is not its bytes'`);
      await writer.write(data, position);
    },
  };
  return writer;
}

async function copyOf(ours: Buffer, theirs: Buffer, manifest: BlockManifest = manifestOfBytes(theirs, blockSizeFor(theirs.length)), options: { maxFailedBlocks?: number; holdUntilDifferent?: boolean } = {}) {
  const file = path.join(tempDir('peershare-block-copy-'), 'local.bin');
  await fs.writeFile(file, ours);
  const handle = await fs.open(file, 'r');
  const writer = checkingWriter(theirs);
  try {
    const copy = await predictedCopy(handle, ours.length, listOf(theirs), manifest, writer, { maxFailedBlocks: options.maxFailedBlocks ?? 64, maxChunks: 1_000_000, holdUntilDifferent: options.holdUntilDifferent });
    assert.equal(writer.inFlight(), 0, 'a write still under way when the copy returned');
    return { copy, writer, list: listOf(theirs) };
  } finally {
    await handle.close();
  }
}

/** Every chunk given is in the target, and bytesReused is their sum. */
function assertGiven(copy: PredictedCopy, list: ChunkList, target: Buffer, theirs: Buffer): void {
  let sum = 0;
  list.chunks.forEach((chunk, i) => {
    if (!copy.given[i]) return;
    sum += chunk.length;
    assert.ok(target.subarray(chunk.offset, chunk.offset + chunk.length).equals(theirs.subarray(chunk.offset, chunk.offset + chunk.length)), `chunk ${i} given but not in the file`);
  });
  assert.equal(copy.bytesReused, sum);
}

/** What the guided cut finds of the sharer's version in `ours` (bytes of chunks named by hash and length). */
async function foundByGuidedCut(ours: Buffer, list: ChunkList): Promise<number> {
  const file = path.join(tempDir('peershare-block-copy-'), 'local.bin');
  await fs.writeFile(file, ours);
  const handle = await fs.open(file, 'r');
  try {
    const { chunks } = await guidedCut(handle, list, { maxFileChunks: 1_000_000 });
    const have = new Set(chunks.map((c) => `${c.length}:${c.hash.toString('hex')}`));
    return list.chunks.filter((c) => have.has(`${c.length}:${c.hash.toString('hex')}`)).reduce((sum, c) => sum + c.length, 0);
  } finally {
    await handle.close();
  }
}

describe('the copy predicted block by block and checked by the sharer\'s block hashes (block-copy.ts)', () => {
  const ours = seededBytes(20 * MiB, 5101);
  const edits: [string, Buffer, number][] = [
    ['100 bytes inserted at the start', Buffer.concat([seededBytes(100, 5102), ours]), 2],
    ['100 bytes inserted in the middle', Buffer.concat([ours.subarray(0, 10 * MiB + 777), seededBytes(100, 5103), ours.subarray(10 * MiB + 777)]), 2],
    ['64 KiB deleted in the middle', Buffer.concat([ours.subarray(0, 7 * MiB), ours.subarray(7 * MiB + 64 * KiB)]), 2],
    [
      'three 4 KiB regions changed',
      (() => {
        const b = Buffer.from(ours);
        for (const at of [0.25, 0.5, 0.75]) seededBytes(4 * KiB, 5104 + at * 4).copy(b, Math.floor(ours.length * at));
        return b;
      })(),
      6,
    ],
    ['1 MiB appended', Buffer.concat([ours, seededBytes(MiB, 5108)]), 2],
    ['the last 3 MiB cut off', ours.subarray(0, ours.length - 3 * MiB), 1],
  ];

  for (const [what, theirs, mostWorkedOut] of edits) {
    it(`${what}: only the sharer's bytes are written, every block whole is checked by its hash, and as much is reused as the guided cut finds`, async () => {
      const { copy, writer, list } = await copyOf(ours, theirs);
      assert.equal(copy.gaveUp, false);
      assert.ok(copy.blocksWorkedOut <= mostWorkedOut, `${copy.blocksWorkedOut} blocks worked out`);
      assertGiven(copy, list, writer.target, theirs);
      const found = await foundByGuidedCut(ours, list);
      assert.ok(copy.bytesReused >= found, `reused ${copy.bytesReused} of the ${found} bytes the guided cut finds`);
      // One hash per byte of the new file, and a few worked-out blocks again: not two passes.
      assert.ok(copy.hashedBytes < theirs.length * 1.1, `${copy.hashedBytes} bytes hashed for a file of ${theirs.length}`);
    });
  }

  it('the copy is the sharer\'s version (not in place): every chunk given, no block worked out', async () => {
    const { copy, writer, list } = await copyOf(ours, ours);
    assert.equal(copy.blocksWorkedOut, 0);
    assert.ok(copy.given.every((g) => g === 1));
    assert.ok(writer.target.equals(ours));
    assertGiven(copy, list, writer.target, ours);
  });

  it('holdUntilDifferent, the copy the sharer\'s version in place: sameVersion, nothing written', async () => {
    const { copy, writer } = await copyOf(ours, ours, undefined, { holdUntilDifferent: true });
    assert.equal(copy.sameVersion, true);
    assert.equal(writer.writes, 0);
    assert.equal(copy.hashedBytes, ours.length, 'each byte hashed once');
  });

  it('holdUntilDifferent, 4 KiB changed at 60 %: the blocks before it are written once it is found, and the whole file is the sharer\'s', async () => {
    const theirs = Buffer.from(ours);
    seededBytes(4 * KiB, 5114).copy(theirs, Math.floor(ours.length * 0.6));
    const { copy, writer, list } = await copyOf(ours, theirs, undefined, { holdUntilDifferent: true });
    assert.equal(copy.sameVersion, false);
    assertGiven(copy, list, writer.target, theirs);
    // All but the chunks around the change are in the file, the blocks before it included.
    assert.ok(copy.bytesReused > theirs.length - 512 * KiB, `reused ${copy.bytesReused}`);
  });

  it('holdUntilDifferent, the copy truncated while the blocks held are written: FILE_CHANGED, nothing still under way', async () => {
    const theirs = Buffer.from(ours);
    seededBytes(4 * KiB, 5115).copy(theirs, Math.floor(ours.length * 0.6));
    const file = path.join(tempDir('peershare-block-copy-'), 'local.bin');
    await fs.writeFile(file, ours);
    const handle = await fs.open(file, 'r');
    const writer = checkingWriter(theirs);
    let truncated = false;
    const truncating: BlockWriter = {
      write: async (data, position) => {
        if (!truncated) {
          truncated = true;
          await fs.truncate(file, MiB);
        }
        await writer.write(data, position);
      },
      writeBlock: (data, position, index, hash) => writer.writeBlock(data, position, index, hash),
    };
    try {
      await rejectsWithCode(predictedCopy(handle, ours.length, listOf(theirs), manifestOfBytes(theirs, blockSizeFor(theirs.length)), truncating, { maxFailedBlocks: 64, maxChunks: 1_000_000, holdUntilDifferent: true }), 'FILE_CHANGED');
      assert.ok(truncated, 'the blocks held were never written');
      assert.equal(writer.inFlight(), 0);
    } finally {
      await handle.close();
    }
  });

  it('a copy that holds nothing of the sharer\'s version: nothing written, the copy walked once to its end, the rest not looked at', async () => {
    const theirs = seededBytes(20 * MiB, 5110);
    const { copy, writer } = await copyOf(ours, theirs, undefined, { maxFailedBlocks: 16 });
    assert.equal(writer.writes, 0);
    assert.equal(copy.bytesReused, 0);
    assert.equal(copy.blocksWorkedOut, 1);
    // The block, the list's first chunk tried where it should be, then the whole copy cut once.
    assert.ok(copy.hashedBytes <= blockSizeFor(theirs.length) + CDC_MAX_BYTES + ours.length, `${copy.hashedBytes} bytes hashed`);
  });

  it('a walk through a long stretch the list does not name stops after maxChunks chunks: the copy gives up, having hashed about that many', async () => {
    const theirs = seededBytes(20 * MiB, 5113);
    const file = path.join(tempDir('peershare-block-copy-'), 'local.bin');
    await fs.writeFile(file, ours);
    const handle = await fs.open(file, 'r');
    try {
      const copy = await predictedCopy(handle, ours.length, listOf(theirs), manifestOfBytes(theirs, blockSizeFor(theirs.length)), checkingWriter(theirs), { maxFailedBlocks: 64, maxChunks: 20 });
      assert.ok(copy.gaveUp);
      assert.ok(copy.hashedBytes <= blockSizeFor(theirs.length) + 21 * CDC_MAX_BYTES, `${copy.hashedBytes} bytes hashed`);
    } finally {
      await handle.close();
    }
  });

  it('a block list that fits no block of the list (a sharer that lies): only bytes checked by their chunk hash are written, and the work is bounded', async () => {
    const theirs = Buffer.concat([seededBytes(100, 5111), ours]);
    const honest = manifestOfBytes(theirs, blockSizeFor(theirs.length));
    const lying = { ...honest, blockHashes: honest.blockHashes.map((_, i) => blake3(Buffer.from(`not block ${i}`))) };
    const maxFailedBlocks = 16;
    const { copy } = await copyOf(ours, theirs, lying, { maxFailedBlocks });
    assert.ok(copy.gaveUp);
    assert.equal(copy.blocksWorkedOut, maxFailedBlocks + 1);
    // Each failed block hashed once whole and once chunk by chunk (with the chunks reaching past it).
    const bound = (maxFailedBlocks + 1) * 2 * honest.blockSize + 2 * 1024 * 1024;
    assert.ok(copy.hashedBytes <= bound, `${copy.hashedBytes} bytes hashed, more than ${bound}`);
  });

  it('the sharer\'s version with its two halves swapped: what is found is the sharer\'s, or the copy gives up for the caller\'s cut', async () => {
    const theirs = Buffer.concat([ours.subarray(10 * MiB), ours.subarray(0, 10 * MiB)]);
    const { copy, writer, list } = await copyOf(ours, theirs, undefined, { maxFailedBlocks: 16 });
    assertGiven(copy, list, writer.target, theirs);
    if (!copy.gaveUp) assert.ok(copy.bytesReused >= (await foundByGuidedCut(ours, list)) - 2 * MiB);
  });

  it('a copy truncated while it is read: FILE_CHANGED, and nothing written is still under way', async () => {
    const file = path.join(tempDir('peershare-block-copy-'), 'local.bin');
    await fs.writeFile(file, ours);
    const theirs = Buffer.concat([seededBytes(100, 5112), ours]);
    const handle = await fs.open(file, 'r');
    const writer = checkingWriter(theirs);
    let truncated = false;
    const truncating: BlockWriter = {
      write: (data, position) => writer.write(data, position),
      writeBlock: async (data, position, index, hash) => {
        if (!truncated && position >= 4 * MiB) {
          truncated = true;
          await fs.truncate(file, 5 * MiB);
        }
        await writer.writeBlock(data, position, index, hash);
      },
    };
    try {
      await rejectsWithCode(predictedCopy(handle, ours.length, listOf(theirs), manifestOfBytes(theirs, blockSizeFor(theirs.length)), truncating, { maxFailedBlocks: 64, maxChunks: 1_000_000 }), 'FILE_CHANGED');
      assert.equal(writer.inFlight(), 0);
    } finally {
      await handle.close();
    }
  });

  it('cancelled: CANCELLED at the next block, and nothing written is still under way', async () => {
    const file = path.join(tempDir('peershare-block-copy-'), 'local.bin');
    await fs.writeFile(file, ours);
    const handle = await fs.open(file, 'r');
    const writer = checkingWriter(ours);
    const stop = new AbortController();
    const stopping: BlockWriter = {
      write: (data, position) => writer.write(data, position),
      writeBlock: async (data, position, index, hash) => {
        if (position >= 2 * MiB) stop.abort();
        await writer.writeBlock(data, position, index, hash);
      },
    };
    try {
      await rejectsWithCode(predictedCopy(handle, ours.length, listOf(ours), manifestOfBytes(ours, blockSizeFor(ours.length)), stopping, { maxFailedBlocks: 64, maxChunks: 1_000_000, signal: stop.signal }), 'CANCELLED');
      assert.equal(writer.inFlight(), 0);
      assert.ok(writer.writes < 40, `${writer.writes} blocks written after a cancel at 2 MiB (blocks of 128 KiB)`);
    } finally {
      await handle.close();
    }
  });
});
