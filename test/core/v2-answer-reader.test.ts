import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { PeerShareError } from '../../src/core/errors';
import { MAX_QUEUED_ANSWER_PARTS } from '../../src/core/limits';
import { Connection, type AnswerReader, type ReplyWriter } from '../../src/core/v2/connection';
import { duplexPair } from './v2-duplex-pair';

/**
 * An answer read at arrival (AnswerReader, src/core/v2/connection.ts): the stream's read buffers
 * are read at once and die young, and what waits for a busy consumer is the reader's own output.
 * These tests hold the rest of the contract: every byte in order, credit (backpressure) still set by
 * what the consumer takes, and a reader's failure met after what was read before it.
 */
const MiB = 1024 * 1024;

function connectionPair() {
  const [a, b] = duplexPair();
  const common = { peerCapabilities: ['test/1'] };
  const dialer = new Connection(a, { peerId: 'acceptor-test', address: 'memory:acceptor', side: 'dialer', ...common });
  const acceptor = new Connection(b, { peerId: 'dialer-test', address: 'memory:dialer', side: 'acceptor', ...common });
  return { dialer, acceptor };
}

/** Sends `bytes` in pieces of `piece` bytes after a `hello` REPLY. */
async function sendPieces(reply: ReplyWriter, bytes: Buffer, piece: number): Promise<void> {
  await reply.message({ type: 'hello' });
  for (let at = 0; at < bytes.length; at += piece) await reply.data(bytes.subarray(at, at + piece));
}

/** A reader that hashes what it reads and makes one item per piece: its length. */
function hashingReader() {
  const hash = createHash('sha256');
  const state = { read: 0, replies: [] as string[], hash };
  const reader: AnswerReader<number> = {
    reply: (message) => {
      state.replies.push(message.type);
      return [];
    },
    data: (chunk) => {
      hash.update(chunk);
      state.read += chunk.length;
      return [chunk.length];
    },
  };
  return { reader, state };
}

describe('an answer read as it arrives', () => {
  it('reads every byte in order ahead of a slow consumer, which gets the items', async () => {
    const { dialer, acceptor } = connectionPair();
    const body = randomBytes(13 * MiB + 12_345);
    acceptor.handle('test/1', async (_req, reply) => sendPieces(reply, body, 100_003));
    const { reader, state } = hashingReader();
    const answer = dialer.request({ type: 'test.get' }, { reader });
    let taken = 0;
    let readAhead = 0;
    for await (const part of answer) {
      assert.equal(part.kind, 'read', 'a request with a reader yields only what it read');
      if (part.kind !== 'read') continue;
      for (const length of part.items) taken += length;
      readAhead = Math.max(readAhead, state.read - taken);
      await new Promise((resolve) => setTimeout(resolve, 1)); // busy elsewhere (a write, say)
    }
    await answer.result;
    assert.deepEqual(state.replies, ['hello']);
    assert.equal(taken, body.length);
    assert.equal(state.hash.digest('hex'), createHash('sha256').update(body).digest('hex'), 'every byte, in order');
    assert.ok(readAhead > 0, 'the reader ran ahead of the consumer: it read at arrival');
    dialer.close();
  });

  it('credit still follows the consumer: a consumer that stops taking lets the reader read no more than the window', async () => {
    const { dialer, acceptor } = connectionPair();
    const body = randomBytes(32 * MiB);
    acceptor.handle('test/1', async (_req, reply) => sendPieces(reply, body, 65_536));
    const { reader, state } = hashingReader();
    const answer = dialer.request({ type: 'test.get' }, { reader });
    const parts = answer[Symbol.asyncIterator]();
    let taken = 0;
    while (taken < 2 * MiB) {
      const step = await parts.next();
      if (!step.done && step.value.kind === 'read') for (const length of step.value.items) taken += length;
    }
    await new Promise((resolve) => setTimeout(resolve, 300)); // the responder has all the time it needs
    assert.ok(state.read - taken <= dialer.local.window, `read ${state.read - taken} bytes past what was taken, window ${dialer.local.window}`);
    assert.ok(state.read < body.length / 2, `${state.read} bytes read of ${body.length}`);
    await parts.return?.(undefined);
    await assert.rejects(answer.result, { code: 'CANCELLED' });
    dialer.close();
  });

  it('parts read while the consumer is busy join one waiting part; an answer without a reader is held to MAX_QUEUED_ANSWER_PARTS pieces', async () => {
    const pieces = MAX_QUEUED_ANSWER_PARTS + 100;
    const tinyPieces = async (_req: unknown, reply: ReplyWriter): Promise<void> => {
      // Written without waiting, so each is a frame of its own; the last tells when all are out.
      for (let i = 0; i < pieces; i++) reply.data(Buffer.of(i & 0xff)).catch(() => undefined);
      await reply.data(Buffer.of(0)).catch(() => undefined);
    };
    {
      const { dialer, acceptor } = connectionPair();
      acceptor.handle('test/1', tinyPieces);
      const { reader, state } = hashingReader();
      const answer = dialer.request({ type: 'test.get' }, { reader });
      await answer.result; // nobody iterates until the whole answer is in
      const parts: number[] = [];
      for await (const part of answer) if (part.kind === 'read') parts.push(part.items.length);
      assert.equal(state.read, pieces + 1);
      assert.deepEqual(parts, [pieces + 1], 'every piece read, in one part');
      dialer.close();
    }
    {
      const { dialer, acceptor } = connectionPair();
      acceptor.handle('test/1', tinyPieces);
      const closed = new Promise<PeerShareError | undefined>((resolve) => dialer.onClose(resolve));
      const answer = dialer.request({ type: 'test.get' });
      await assert.rejects(answer.result, { code: 'PROTOCOL_ERROR' });
      assert.match(String((await closed)?.message), /more than 16384 pieces/);
    }
  });

  it("a reader's failure comes after the items read before it, cancels the request, and leaves the connection open", async () => {
    const { dialer, acceptor } = connectionPair();
    const body = randomBytes(24 * MiB);
    let aborted = false;
    acceptor.handle('test/1', async (_req, reply, signal) => {
      signal.addEventListener('abort', () => (aborted = true));
      await sendPieces(reply, body, 65_536);
    });
    let reads = 0;
    const reader: AnswerReader<number> = {
      reply: () => [],
      data: (chunk) => {
        if (++reads === 5) throw new PeerShareError('HASH_MISMATCH', 'the fifth piece is bad');
        return [chunk.length];
      },
    };
    const answer = dialer.request({ type: 'test.get' }, { reader });
    const items: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const part of answer) if (part.kind === 'read') items.push(...part.items);
      })(),
      { code: 'HASH_MISMATCH' },
    );
    assert.deepEqual(items, [65_536, 65_536, 65_536, 65_536], 'the four pieces read before the failure, then the failure');
    await assert.rejects(answer.result, { code: 'CANCELLED' });
    while (!aborted) await nextTurn();
    // The connection carries on: the same responder answers a request without a reader.
    acceptor.handle('test/1', async (_req, reply) => reply.message({ type: 'fine' }));
    const again = dialer.request({ type: 'test.get' });
    const kinds: string[] = [];
    for await (const part of again) kinds.push(part.kind === 'reply' ? part.message.type : part.kind);
    assert.deepEqual(kinds, ['fine']);
    dialer.close();
  });
});
