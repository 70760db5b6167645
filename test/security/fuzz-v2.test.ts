import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { PeerShareError } from '../../src/core/errors';
import { DISGUISING_CHARS } from '../../src/core/protocol';
import { Connection } from '../../src/core/v2/connection';
import {
  ConnectionFrameParser,
  ConnectionFrameType,
  encodeCancelFrame,
  encodeConnectionHeader,
  encodeMessageFrame,
  encodeWindowFrame,
  type WireMessage,
} from '../../src/core/v2/frames';
import { duplexPair } from '../core/v2-duplex-pair';
import { fuzzer, refusedWith } from './fuzz-kit';

/**
 * Property-based tests of v2's connection frames (docs/protocol-v2.md 3), as test/security/fuzz.test.ts
 * does for v1: the parser on any bytes split anywhere, and a whole Connection fed hostile frame
 * sequences. Each property runs FUZZ_RUNS cases (default 300) or until FUZZ_SECONDS (default 2)
 * pass; the seed is printed with any failure and replayed with FUZZ_SEED.
 */
const { runs: RUNS, check, cases } = fuzzer(300);

after(() => {
  console.log(`# fuzz-v2: ${cases()} cases run`);
});

const MESSAGE_TYPES = ['REQUEST', 'REPLY', 'END', 'EVENT', 'CLOSE'] as const;
const id = fc.oneof(fc.integer({ min: 0, max: 12 }), fc.constantFrom(2 ** 31, 2 ** 32 - 1, 2 ** 32 - 2));
const jsonish: fc.Arbitrary<WireMessage> = fc.record(
  {
    type: fc.oneof(fc.constantFrom('test.get', 'test.changed', 'end', 'error', 'close', 'share.read', 'x', ''), fc.string({ maxLength: 120 })),
    code: fc.oneof(fc.constantFrom('PROTOCOL_ERROR', 'NOT_FOUND', 'CANCELLED', 'IO_ERROR', 'TIMEOUT', 'BUSY'), fc.string({ maxLength: 10 }), fc.integer()),
    message: fc.oneof(fc.string({ maxLength: 600 }), fc.constant('\u202e\u001b[2J'.repeat(100)), fc.integer()),
    cancelled: fc.oneof(fc.constant(true), fc.boolean(), fc.integer()),
    n: fc.jsonValue({ maxDepth: 2 }),
  },
  { requiredKeys: ['type'] },
) as fc.Arbitrary<WireMessage>;

/** Frames a hostile peer might send: well-formed, malformed, oversized or plain noise. */
const hostileFrame: fc.Arbitrary<Buffer> = fc.oneof(
  fc.tuple(fc.constantFrom(...MESSAGE_TYPES), id, jsonish).map(([type, i, m]) => encodeMessageFrame(type, i, m)),
  fc.tuple(id, fc.integer({ min: 1, max: 70_000 })).map(([i, n]) => Buffer.concat([encodeConnectionHeader(ConnectionFrameType.DATA, n, i), Buffer.alloc(n, 7)])),
  fc.tuple(id, fc.oneof(fc.integer({ min: 0, max: 300_000 }), fc.constantFrom(2 ** 31 - 1, 2 ** 32 - 1))).map(([i, k]) => encodeWindowFrame(i, k >>> 0)),
  id.map((i) => encodeCancelFrame(i)),
  fc.tuple(fc.integer({ min: 0, max: 255 }), fc.nat(), id).map(([type, length, i]) => encodeConnectionHeader(type as 0x10, length >>> 0, i)),
  fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)),
);

describe('fuzzing: v2 connection frames', () => {
  it('ConnectionFrameParser: any byte stream, split anywhere, yields bounded frames or a coded refusal', async () => {
    const bounds = { frameBytes: 65_536, maxEventBytes: 1024 };
    await check(fc.record({ frames: fc.array(hostileFrame, { maxLength: 8 }), cuts: fc.array(fc.nat({ max: 100 }), { maxLength: 12 }) }), ({ frames, cuts }) => {
      const stream = Buffer.concat(frames);
      let dataInFrame = 0;
      let dataBound = 0;
      const parser = new ConnectionFrameParser(bounds, {
        onHeader: (h) => {
          assert.ok(Object.hasOwn(ConnectionFrameType, h.type));
          assert.ok(h.length <= (h.type === 'EVENT' ? bounds.maxEventBytes : h.type === 'CLOSE' ? 4096 : bounds.frameBytes));
          assert.equal(h.id === 0, h.type === 'EVENT' || h.type === 'CLOSE');
          dataInFrame = 0;
          dataBound = h.length;
        },
        onMessage: (_type, _id, m) => {
          assert.ok(m !== null && typeof m === 'object' && !Array.isArray(m));
          assert.equal(typeof m.type, 'string');
        },
        onData: (_id, chunk) => {
          assert.ok(chunk.length > 0);
          dataInFrame += chunk.length;
          assert.ok(dataInFrame <= dataBound, 'no DATA past its header');
        },
        onWindow: (_id, k) => assert.ok(k >= 1 && k <= 2 ** 31 - 1),
        onCancel: () => undefined,
      });
      let at = 0;
      try {
        for (const cut of [...cuts, stream.length]) {
          const end = Math.min(stream.length, at + cut);
          parser.push(stream.subarray(at, end));
          at = end;
        }
      } catch (err) {
        refusedWith(err, ['PROTOCOL_ERROR', 'TOO_LARGE']);
        // Once failed, it stays failed and quiet.
        parser.push(encodeMessageFrame('EVENT', 0, { type: 'x' }));
      }
    });
  });

  it('what the encoder writes, the parser reads back the same, however the stream is split', async () => {
    const validFrame = fc.oneof(
      fc.tuple(fc.constantFrom('REQUEST', 'REPLY', 'END'), fc.integer({ min: 1, max: 2 ** 32 - 1 }), fc.jsonValue({ maxDepth: 2 })).map(([type, i, v]) => ({
        bytes: encodeMessageFrame(type, i, { type: 'a.b', v }),
        shown: `${type} ${i} ${JSON.stringify({ type: 'a.b', v })}`,
      })),
      fc.tuple(fc.integer({ min: 1, max: 2 ** 32 - 1 }), fc.uint8Array({ minLength: 1, maxLength: 300 })).map(([i, b]) => ({
        bytes: Buffer.concat([encodeConnectionHeader(ConnectionFrameType.DATA, b.length, i), b]),
        shown: `DATA ${i} ${Buffer.from(b).toString('hex')}`,
      })),
      fc.tuple(fc.integer({ min: 1, max: 2 ** 32 - 1 }), fc.integer({ min: 1, max: 2 ** 31 - 1 })).map(([i, k]) => ({ bytes: encodeWindowFrame(i, k), shown: `WINDOW ${i} ${k}` })),
      fc.integer({ min: 1, max: 2 ** 32 - 1 }).map((i) => ({ bytes: encodeCancelFrame(i), shown: `CANCEL ${i}` })),
    );
    await check(fc.record({ frames: fc.array(validFrame, { maxLength: 10 }), cuts: fc.array(fc.nat({ max: 64 }), { maxLength: 20 }) }), ({ frames, cuts }) => {
      const seen: string[] = [];
      let data: Buffer[] = [];
      let dataId = 0;
      const flush = (): void => {
        if (data.length > 0) seen.push(`DATA ${dataId} ${Buffer.concat(data).toString('hex')}`);
        data = [];
      };
      const parser = new ConnectionFrameParser({ frameBytes: 1 << 20, maxEventBytes: 1 << 16 }, {
        onHeader: (h) => {
          flush();
          dataId = h.id;
        },
        onMessage: (type, i, m) => void seen.push(`${type} ${i} ${JSON.stringify(m)}`),
        onData: (_i, chunk) => void data.push(Buffer.from(chunk)),
        onWindow: (i, k) => void seen.push(`WINDOW ${i} ${k}`),
        onCancel: (i) => void seen.push(`CANCEL ${i}`),
      });
      const stream = Buffer.concat(frames.map((f) => f.bytes));
      let at = 0;
      for (const cut of [...cuts, stream.length]) {
        const end = Math.min(stream.length, at + cut);
        parser.push(stream.subarray(at, end));
        at = end;
      }
      flush();
      assert.deepEqual(seen, frames.map((f) => f.shown));
    });
  });

  it('a Connection fed hostile frames stays up or closes with a coded, bounded reason, and never sends past credit', async () => {
    await check(fc.record({ side: fc.constantFrom('dialer', 'acceptor') as fc.Arbitrary<'dialer' | 'acceptor'>, frames: fc.array(hostileFrame, { maxLength: 10 }), ask: fc.boolean() }), async ({ side, frames, ask }) => {
      const [mine, theirs] = duplexPair();
      const window = 64 * 1024;
      const connection = new Connection(mine, {
        peerId: 'fuzz',
        address: 'memory:fuzz',
        side,
        peerCapabilities: ['test/1'],
        local: { frame: 32_768, window, requests: 4 },
        remote: { frame: 16_384, window, requests: 4 },
        limits: { maxEventBytes: 1024, maxEventBurst: 3 },
      });
      connection.handle('test/1', async (_req, reply) => {
        await reply.message({ type: 'part' });
        await reply.data(Buffer.alloc(100_000, 1));
        return { count: 1 };
      });
      let reason: PeerShareError | undefined;
      let closed = false;
      connection.onClose((r) => {
        closed = true;
        reason = r;
      });
      if (ask) void connection.request({ type: 'test.get' }).result.catch(() => undefined);
      // What the connection sends, and the credit the hostile side gave it per request id.
      const credit = new Map<number, number>();
      const sent = new Map<number, number>();
      const fromConnection: { type: string; id: number; length: number; message?: WireMessage }[] = [];
      const tapParser = new ConnectionFrameParser({ frameBytes: 1 << 20, maxEventBytes: 1 << 20 }, {
        onHeader: (h) => {
          fromConnection.push({ ...h });
          if (h.type === 'DATA' || h.type === 'REPLY') sent.set(h.id, (sent.get(h.id) ?? 0) + h.length);
        },
        onMessage: (_t, _i, m) => void (fromConnection[fromConnection.length - 1].message = m),
        onData: () => undefined,
        onWindow: () => undefined,
        onCancel: () => undefined,
      });
      theirs.on('data', (chunk: Buffer) => tapParser.push(chunk));
      const grants = new ConnectionFrameParser({ frameBytes: 1 << 30, maxEventBytes: 1 << 30 }, {
        onHeader: (h) => {
          if (h.type === 'REQUEST' && !credit.has(h.id)) credit.set(h.id, window);
        },
        onMessage: () => undefined,
        onData: () => undefined,
        onWindow: (i, k) => credit.set(i, (credit.get(i) ?? window) + k),
        onCancel: () => undefined,
      });
      for (const frame of frames) {
        try {
          grants.push(frame);
        } catch {
          // Past a malformed frame the connection reads nothing more either.
        }
        theirs.write(frame);
      }
      for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
      for (const [requestId, bytes] of sent) {
        assert.ok(bytes <= (credit.get(requestId) ?? 0), `sent ${bytes} bytes on ${requestId}, granted ${credit.get(requestId)}`);
      }
      if (closed && reason) {
        assert.ok(reason instanceof PeerShareError);
        assert.ok(['PROTOCOL_ERROR', 'TOO_LARGE', 'TIMEOUT', 'CONNECTION_CLOSED', 'PEER_UNTRUSTED', 'INTERNAL'].includes(reason.code), reason.code);
        assert.doesNotMatch(reason.message, DISGUISING_CHARS);
      }
      const close = fromConnection.find((f) => f.type === 'CLOSE');
      if (close) {
        assert.ok(close.length <= 4096);
        assert.ok(close.message!.message === undefined || (typeof close.message!.message === 'string' && close.message!.message.length <= 500));
        assert.ok(fromConnection.indexOf(close) === fromConnection.length - 1, 'nothing after CLOSE');
      }
      connection.close();
      theirs.destroy();
    });
  });
});
