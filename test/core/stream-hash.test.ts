import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { allocateBlock, createStreamHash } from '../../src/core/stream-hash';

describe('stream hash', () => {
  for (const offThread of [false, true]) {
    it(`${offThread ? 'on a worker thread' : 'inline'}: equals SHA-256 of the blocks in order, whatever their sizes`, async () => {
      const hash = createStreamHash(offThread);
      const reference = createHash('sha256');
      try {
        for (const size of [0, 1, 4096, 1024 * 1024, 333_333]) {
          const block = allocateBlock(size, offThread);
          randomBytes(size).copy(block);
          reference.update(block);
          await hash.update(block);
        }
        assert.equal(await hash.digest(), reference.digest('hex'));
      } finally {
        hash.close();
      }
    });
  }

  it('refuses blocks the worker cannot share, and fails cleanly once closed', async () => {
    const hash = createStreamHash(true);
    assert.throws(() => hash.update(Buffer.alloc(10)), TypeError);
    hash.close();
    hash.close();
    await assert.rejects(hash.update(allocateBlock(10, true)), { code: 'CANCELLED' });
  });
});
