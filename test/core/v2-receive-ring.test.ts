import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { Connection, type ReplyWriter } from '../../src/core/v2/connection';
import { ReceiveRing } from '../../src/core/v2/receive-ring';
import { duplexPair } from './v2-duplex-pair';

/**
 * DATA that waits for a busy consumer is copied into the request's ring (src/core/v2/receive-ring.ts)
 * so the stream's read buffers die young. The ring is reused in place, so these tests check that
 * no byte is overwritten before its consumer asked for the next part, across wraps at odd offsets,
 * a cancel, and a second request on the same ring.
 */
const MiB = 1024 * 1024;

describe('ReceiveRing', () => {
  it('copies in, wraps in two slices, and frees in order', () => {
    const ring = new ReceiveRing(10);
    const [a] = ring.put(Buffer.from('abcdef'))!;
    assert.equal(a.toString(), 'abcdef');
    ring.release(4);
    const slices = ring.put(Buffer.from('ghijkl'))!;
    assert.deepEqual(
      slices.map((s) => s.toString()),
      ['ghij', 'kl'],
      'four bytes to the end, two from the start',
    );
    assert.equal(a.subarray(4).toString(), 'ef', 'bytes not yet released are untouched');
    assert.equal(ring.bytesUsed, 8);
    assert.equal(ring.put(Buffer.from('xyz')), undefined, 'more than the free room is refused, not wrapped over');
    ring.release(8);
    assert.equal(ring.bytesUsed, 0);
    assert.equal(ring.put(Buffer.from('0123456789'))!.length, 1, 'an empty ring starts again at its beginning');
    assert.throws(() => ring.release(11), RangeError);
  });
});

function connectionPair() {
  const [a, b] = duplexPair();
  const common = { peerCapabilities: ['test/1'] };
  const dialer = new Connection(a, { peerId: 'acceptor-test', address: 'memory:acceptor', side: 'dialer', ...common });
  const acceptor = new Connection(b, { peerId: 'dialer-test', address: 'memory:dialer', side: 'acceptor', ...common });
  return { dialer, acceptor };
}

/** Sends `bytes` in pieces of `piece` bytes, an odd size so the ring wraps at odd offsets. */
async function sendPieces(reply: ReplyWriter, bytes: Buffer, piece: number): Promise<void> {
  for (let at = 0; at < bytes.length; at += piece) await reply.data(bytes.subarray(at, at + piece));
}

const sha = (b: Buffer | Buffer[]): string => {
  const h = createHash('sha256');
  for (const x of Array.isArray(b) ? b : [b]) h.update(x);
  return h.digest('hex');
};

describe('a request whose consumer is slower than the data', () => {
  it('receives every byte in order through the ring, a second request reusing it', async () => {
    const { dialer, acceptor } = connectionPair();
    const bodies = [randomBytes(13 * MiB + 12_345), randomBytes(9 * MiB + 7)];
    acceptor.handle('test/1', async (req, reply) => sendPieces(reply, bodies[req.which as number], 100_003));
    for (const which of [0, 1]) {
      const answer = dialer.request({ type: 'test.get', which });
      const hash = createHash('sha256');
      const buffersSeen = new Set<ArrayBufferLike>();
      let parts = 0;
      for await (const part of answer) {
        if (part.kind !== 'data') continue;
        hash.update(part.chunk);
        buffersSeen.add(part.chunk.buffer);
        parts++;
        // Busy elsewhere (a write, say) while more DATA arrives and waits.
        if (parts % 3 === 0) await new Promise((r) => setTimeout(r, 1));
        else await nextTurn();
      }
      await answer.result;
      assert.equal(hash.digest('hex'), sha(bodies[which]), `answer ${which}: every byte, in order`);
      // The waiting bytes were copied into one ring, not kept in the stream's own buffers.
      assert.ok(parts > 80, `${parts} parts`);
      assert.ok(buffersSeen.size < parts / 4, `${buffersSeen.size} buffers behind ${parts} parts`);
    }
    dialer.close();
  });

  it('a cancelled request leaves the ring clean for the next one', async () => {
    const { dialer, acceptor } = connectionPair();
    const body = randomBytes(24 * MiB + 1);
    acceptor.handle('test/1', async (_req, reply) => sendPieces(reply, body, 65_537));
    const first = dialer.request({ type: 'test.get' });
    let seen = 0;
    for await (const part of first) {
      if (part.kind === 'data') seen += part.chunk.length;
      await nextTurn();
      if (seen > 3 * MiB) break;
    }
    await assert.rejects(first.result, { code: 'CANCELLED' });
    const second = dialer.request({ type: 'test.get' });
    const chunks: Buffer[] = [];
    for await (const part of second) {
      if (part.kind === 'data') chunks.push(Buffer.from(part.chunk));
      await nextTurn();
    }
    await second.result;
    assert.equal(sha(chunks), sha(body));
    dialer.close();
  });
});
