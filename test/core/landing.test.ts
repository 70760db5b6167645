import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { PeerShareError } from '../../src/core';
import { FlushBehind, partialPathFor } from '../../src/core/landing';
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

describe('partialPathFor: a temporary name ties a partial file to one version', () => {
  // The name must not depend on whether this Node has crypto.hash (landing.ts takes it when there):
  // a partial file left by one Node is resumed by another.
  const tagOf = (text: string): string => createHash('sha256').update(text).digest('hex').slice(0, 16);

  it('is the SHA-256 tag of peer, remote path, size and time, beside the target', () => {
    const target = path.join('/dl', 'notes.txt');
    const name = partialPathFor(target, 'PEER', 'data/notes.txt', 1234, 1700000000000);
    assert.equal(name, path.join('/dl', `.notes.txt.${tagOf('PEER\ndata/notes.txt\n1234\n1700000000000')}.peershare-part`));
    assert.notEqual(partialPathFor(target, 'PEER', 'data/notes.txt', 1234, 1700000000001), name, 'another version, another name');
  });

  it('shortens a long name to its first bytes and a digest of the whole', () => {
    const long = `${'é'.repeat(120)}.txt`;
    const name = path.basename(partialPathFor(path.join('/dl', long), '', 'blake3:ab', 1, 0));
    const stemDigest = createHash('sha256').update(long).digest('hex').slice(0, 8);
    assert.ok(name.startsWith(`.${'é'.repeat(10)}`), name);
    assert.ok(name.includes(`~${stemDigest}.`), name);
    assert.ok(Buffer.byteLength(name, 'utf8') <= 255, 'fits where the final name fits');
  });
});
