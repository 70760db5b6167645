import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { PeerShareError } from '../../src/core/errors';
import { resolveLimits } from '../../src/core/limits';
import { TlsListener, dialTls } from '../../src/core/transport-tls';
import type { Connection } from '../../src/core/v2/connection';
import { acceptV2, dialV2, type Served } from '../../src/core/v2/handshake';
import { makePeer, type TestPeer } from '../helpers';
import { rawClient } from '../hostile';

/**
 * The v2 connection over the real first transport: TLS 1.3 with pinned certificates on loopback
 * (transport-tls.ts), and v1's own client meeting a v2 acceptor there, as docs/protocol-v2.md 4.7
 * says it will.
 */
const MiB = 1024 * 1024;
let sharer: TestPeer;
let reader: TestPeer;
let listener: TlsListener;
let port: number;
const accepted: Connection[] = [];
const refusals: PeerShareError[] = [];

/** The byte at `offset` of a lend.get answer: changes with the position, so a slice overwritten by a later read shows. */
const patternByte = (offset: number): number => (offset * 7 + Math.floor(offset / 65_536)) & 0xff;

const serve = (who: string): Served => ({
  'lend/1': {
    params: {},
    handler: async (req, reply) => {
      // A REPLY longer than one TLS record (16 KiB), so its frame arrives over several reads.
      const text = Array.from({ length: Number(req.replyChars ?? 0) }, (_, i) => String.fromCharCode(97 + ((i * 13) % 26))).join('');
      await reply.message({ type: 'text', text });
      const bytes = Number(req.bytes ?? 0);
      for (let sent = 0; sent < bytes; sent += MiB) {
        const chunk = Buffer.allocUnsafe(Math.min(MiB, bytes - sent));
        for (let i = 0; i < chunk.length; i++) chunk[i] = patternByte(sent + i);
        await reply.data(chunk);
      }
      return { from: who };
    },
  },
  'test/1': {
    params: {},
    handler: async (req, reply) => {
      const bytes = Number(req.bytes ?? 0);
      for (let sent = 0; sent < bytes; sent += MiB) await reply.data(Buffer.alloc(Math.min(MiB, bytes - sent), 5));
      return { from: who };
    },
  },
});

before(async () => {
  sharer = await makePeer();
  reader = await makePeer();
  listener = new TlsListener({
    identity: sharer.identity,
    limits: resolveLimits(),
    stats: { connectionsAccepted: 0, handshakesRateLimited: 0, unauthenticatedEvicted: 0, oversizedHandshakes: 0 },
    log: () => undefined,
    onStream: (stream, admission) => {
      acceptV2(stream, {
        name: 'sharer',
        ownPeerId: sharer.identity.peerId,
        admit: async () => {
          admission.leave();
          return { serve: serve('acceptor'), paired: false };
        },
      }).then(
        ({ connection }) => accepted.push(connection),
        (err: PeerShareError) => refusals.push(err),
      );
    },
  });
  port = await listener.listen(0, '127.0.0.1');
});

after(async () => {
  await listener.close(() => accepted.forEach((c) => c.close()));
});

describe('v2 over TLS 1.3 on loopback', () => {
  it('dial, handshake, requests both ways and a 32 MiB answer on one connection', async () => {
    const stream = await dialTls({ identity: reader.identity, address: `127.0.0.1:${port}` });
    assert.equal(stream.peerId, sharer.identity.peerId, 'the pin: the certificate the transport proved');
    const { connection, welcome } = await dialV2(stream, { expectedPeerId: sharer.identity.peerId, name: 'reader', serve: serve('dialer') });
    assert.equal(welcome.id, sharer.identity.peerId);
    let bytes = 0;
    const answer = connection.request({ type: 'test.get', bytes: 32 * MiB });
    for await (const part of answer) if (part.kind === 'data') bytes += part.chunk.length;
    assert.equal(bytes, 32 * MiB);
    assert.equal((await answer.result).from, 'acceptor');
    const mine = accepted.find((c) => c.peerId === reader.identity.peerId)!;
    assert.ok(mine, 'the acceptor knows the dialer by its certificate');
    assert.equal((await mine.request({ type: 'test.get' }).result).from, 'dialer');
    connection.close();
  });

  it('both ends read into one reused buffer, and what either keeps past a read is its own copy', async () => {
    const stream = await dialTls({ identity: reader.identity, address: `127.0.0.1:${port}` });
    const { connection } = await dialV2(stream, { expectedPeerId: sharer.identity.peerId, name: 'reader', serve: serve('dialer') });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(connection.stats.readsIntoReusedBuffer, true, "the dialer's socket reads into one buffer (Node's fields were found)");
    const mine = [...accepted].reverse().find((c) => c.peerId === reader.identity.peerId)!;
    assert.equal(mine.stats.readsIntoReusedBuffer, true, "the acceptor's socket, which a server accepted, too");

    // Parts wait while later reads reuse the buffer: the REPLY spans reads, the DATA parts queue.
    const replyChars = 200_000;
    const bytes = 4 * MiB;
    const answer = connection.request({ type: 'lend.get', bytes, replyChars });
    const parts: { kind: string; message?: Record<string, unknown>; chunk?: Buffer }[] = [];
    for await (const part of answer) {
      if (parts.length === 1) await new Promise((resolve) => setTimeout(resolve, 200));
      parts.push(part);
    }
    assert.equal((await answer.result).from, 'acceptor');
    const text = parts[0].message?.text as string;
    assert.equal(text.length, replyChars);
    for (let i = 0; i < text.length; i += 997) assert.equal(text.charCodeAt(i), 97 + ((i * 13) % 26), `character ${i} of the REPLY`);
    let offset = 0;
    for (const part of parts.slice(1)) {
      const chunk = part.chunk!;
      for (let i = 0; i < chunk.length; i++) {
        if (chunk[i] !== patternByte(offset + i)) assert.fail(`byte ${offset + i} of the answer is ${chunk[i]}, not ${patternByte(offset + i)}: a kept slice was overwritten`);
      }
      offset += chunk.length;
    }
    assert.equal(offset, bytes);
    connection.close();
  });

  it('a v1 client meeting a v2 acceptor gets VERSION_UNSUPPORTED and the sentence that says to update', async () => {
    // v1's client is gone from this build; its hello is what a v1 peer still sends (protocol.md 3).
    const old = await rawClient(`127.0.0.1:${port}`, reader.identity);
    old.send({ type: 'hello', versions: [1], name: 'an old reader' });
    await old.closed;
    assert.equal(old.messages.length, 1);
    assert.equal(old.messages[0].code, 'VERSION_UNSUPPORTED');
    assert.deepEqual(old.messages[0].versions, [2]);
    assert.equal(old.messages[0].message, 'This peer runs a newer PeerShare (protocol version 2). Update PeerShare to connect to it.');
    while (refusals.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(refusals[0].code, 'VERSION_UNSUPPORTED');
  });
});
