import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { PeerShareError } from '../../src/core';
import { FlushBehind } from '../../src/core/landing';
import { tempDir } from '../helpers';

describe('FlushBehind: a large file is flushed behind its writes', () => {
  it('starts one flush per stretch written, never two at once, and settles', async () => {
    const file = path.join(tempDir(), 'f');
    const fd = openSync(file, 'w');
    try {
      const flush = new FlushBehind(fd, 1000);
      writeSync(fd, Buffer.alloc(999, 1));
      assert.equal(flush.wrote(999), undefined, 'no flush before a whole stretch');
      writeSync(fd, Buffer.alloc(1, 2));
      const first = flush.wrote(1);
      assert.ok(first, 'a flush once the stretch is complete');
      writeSync(fd, Buffer.alloc(5000, 3));
      assert.equal(flush.wrote(5000), undefined, 'not a second while the first runs');
      await flush.settled();
      await first;
      assert.ok(flush.wrote(0), 'a new flush once the first has ended: the 5000 bytes written meanwhile count');
      await flush.settled();
      assert.equal(readFileSync(file).length, 6000);
    } finally {
      closeSync(fd);
    }
  });

  it('keeps a flush that fails: settled() still resolves (cleanup awaits it), and throwIfFailed() throws it, coded', async () => {
    // Linux reports a writeback error to one fsync of the file: the final fsync after a failed
    // background flush may succeed, so the failure must not be dropped (round 17).
    const fd = openSync(path.join(tempDir(), 'g'), 'w');
    closeSync(fd);
    const flush = new FlushBehind(fd, 1);
    flush.throwIfFailed(); // nothing failed yet
    const failing = flush.wrote(10);
    assert.ok(failing);
    await failing;
    await flush.settled();
    assert.throws(() => flush.throwIfFailed(), (err: unknown) => err instanceof PeerShareError && err.code === 'IO_ERROR');
  });
});
