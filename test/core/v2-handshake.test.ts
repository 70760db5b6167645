import assert from 'node:assert/strict';
import type { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { PeerShareError } from '../../src/core/errors';
import { FrameParser, encodeMessage } from '../../src/core/frames';
import { resolveLimits } from '../../src/core/limits';
import { errorFromMessage, parseHello } from '../../src/core/protocol';
import { ConnectionFrameParser, encodeMessageFrame } from '../../src/core/v2/frames';
import { acceptV2, dialV2, type AcceptOptions, type HelloV2, type Served } from '../../src/core/v2/handshake';
import { PeerSentError } from '../../src/core/v2/messages';
import { duplexPair } from './v2-duplex-pair';

const DIALER = 'dialer-id';
const ACCEPTOR = 'acceptor-id';
const caps = { 'test/1': {} };
const serve: Served = { 'test/1': { params: {}, handler: () => ({ ok: true }) } };

let keepAlive: NodeJS.Timeout;
before(() => void (keepAlive = setInterval(() => undefined, 1000)));
after(() => clearInterval(keepAlive));

/** Everything one end receives, until it closes. */
function received(end: Duplex): Promise<Buffer> {
  const chunks: Buffer[] = [];
  end.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve) => end.once('close', () => resolve(Buffer.concat(chunks))));
}

function acceptor(end: Duplex, admit: AcceptOptions['admit'] = async () => ({ serve, paired: false })) {
  return acceptV2({ stream: end, peerId: DIALER, address: 'memory:dialer', side: 'acceptor' }, { name: 'bob@desk', ownPeerId: ACCEPTOR, admit });
}

describe('v2 handshake: meeting version 1 (docs/protocol-v2.md 4.7)', () => {
  it('a v1 hello gets exactly the VERSION_UNSUPPORTED error of 4.7, then the acceptor hangs up; nobody is asked', async () => {
    const [v1, v2] = duplexPair();
    let asked = false;
    const accepting = acceptor(v2, async () => {
      asked = true;
      return { serve, paired: false };
    });
    const bytes = received(v1);
    v1.write(encodeMessage({ type: 'hello', versions: [1], name: 'ann@laptop', token: 'abcdefghijklmnopqrstuvwxyz012345' }));
    await assert.rejects(accepting, { code: 'VERSION_UNSUPPORTED' });
    const expected = encodeMessage({
      type: 'error',
      code: 'VERSION_UNSUPPORTED',
      versions: [2],
      message: 'This peer runs a newer PeerShare (protocol version 2). Update PeerShare to connect to it.',
    });
    assert.deepEqual(await bytes, expected, 'byte for byte, then closed');
    assert.equal(asked, false);
    // What v1's client makes of it: its own parser and errorFromMessage, as it does while waiting for welcome.
    const messages: Record<string, unknown>[] = [];
    new FrameParser(resolveLimits(), { onMessage: (m) => messages.push(m), onData: () => undefined }).push(expected);
    const err = errorFromMessage(messages[0]);
    assert.equal(err.code, 'VERSION_UNSUPPORTED');
    assert.equal(err.message, 'This peer runs a newer PeerShare (protocol version 2). Update PeerShare to connect to it.');
  });

  it('a hello from a newer peer (versions [3]) is told this peer is older', async () => {
    const [other, v2] = duplexPair();
    const accepting = acceptor(v2);
    const bytes = received(other);
    other.write(encodeMessage({ type: 'hello', versions: [3], name: 'x' }));
    await assert.rejects(accepting, { code: 'VERSION_UNSUPPORTED' });
    assert.match((await bytes).toString(), /runs an older PeerShare \(protocol version 2\)/);
  });

  it('our hello parses under v1\'s rules, so a v1 acceptor answers with the version, not a protocol error', async () => {
    const [mine, v1] = duplexPair();
    const dialing = dialV2({ stream: mine, peerId: ACCEPTOR, address: 'old.local:47474', side: 'dialer' }, { expectedPeerId: ACCEPTOR, name: 'ann@laptop', serve });
    const messages: Record<string, unknown>[] = [];
    const parser = new FrameParser(resolveLimits(), { onMessage: (m) => messages.push(m), onData: () => undefined }, false);
    v1.on('data', (c: Buffer) => parser.push(c));
    while (messages.length === 0) await new Promise((resolve) => setTimeout(resolve, 2));
    const hello = parseHello(messages[0], 4096);
    assert.deepEqual(hello.versions, [2], 'offers 2 only: no silent fallback');
    // v1's exact answer (server.ts onHello) when no version is common:
    v1.write(encodeMessage({ type: 'error', code: 'VERSION_UNSUPPORTED', message: 'This peer speaks protocol versions 1.' }));
    const err = await dialing.then(() => undefined, (e: PeerShareError) => e);
    assert.equal(err?.code, 'VERSION_UNSUPPORTED');
    assert.equal(err?.message, 'The peer at old.local:47474 runs an older PeerShare (protocol version 1). Ask them to update PeerShare; this version cannot connect to it.');
    // The peer's refusal, never to be taken for our own (spec 8; found in review).
    assert.equal((err as { sentByPeer?: boolean }).sentByPeer, true);
  });

  it('a refusal that lists our own version among the versions the peer speaks is a protocol error, not "older" (found in review)', async () => {
    const [mine, v1] = duplexPair();
    const dialing = dialV2({ stream: mine, peerId: ACCEPTOR, address: 'odd.local:47474', side: 'dialer' }, { expectedPeerId: ACCEPTOR, name: 'ann@laptop', serve });
    v1.once('data', () => v1.write(encodeMessage({ type: 'error', code: 'VERSION_UNSUPPORTED', message: 'no', versions: [1, 2] })));
    const err = await dialing.then(() => undefined, (e: PeerShareError) => e);
    assert.equal(err?.code, 'PROTOCOL_ERROR');
    assert.doesNotMatch(err!.message, /older/);
  });
});

describe('v2 handshake: dialer and acceptor', () => {
  it('hello and welcome exchange capabilities and limits; then either side requests', async () => {
    const [a, b] = duplexPair();
    let seen: HelloV2 | undefined;
    const accepting = acceptor(b, async (hello) => {
      seen = hello;
      return { serve: { 'test/1': { params: { roots: ['project'] }, handler: () => ({ from: 'acceptor' }) } }, paired: true };
    });
    const dialing = dialV2(
      { stream: a, peerId: ACCEPTOR, address: 'memory:acceptor', side: 'dialer' },
      { expectedPeerId: ACCEPTOR, name: 'ann\u202e@laptop', serve: { 'test/1': { params: {}, handler: () => ({ from: 'dialer' }) } }, limits: { requestWindowBytes: 2 * 1024 * 1024 } },
    );
    const [{ connection: dialer, welcome }, { connection: acceptorConnection }] = await Promise.all([dialing, accepting]);
    assert.equal(seen?.name, 'ann\\u202e@laptop', 'the name is escaped');
    assert.equal(seen?.window, 2 * 1024 * 1024);
    assert.deepEqual(welcome.caps, { 'test/1': { roots: ['project'] } });
    assert.equal(welcome.paired, true);
    assert.equal(welcome.id, ACCEPTOR);
    assert.equal((await dialer.request({ type: 'test.get' }).result).from, 'acceptor');
    assert.equal((await acceptorConnection.request({ type: 'test.get' }).result).from, 'dialer');
    dialer.close();
  });

  it('bytes right behind the welcome, in the same chunk, reach the dialer\'s connection in order', async () => {
    const [a, b] = duplexPair();
    const dialing = dialV2({ stream: a, peerId: ACCEPTOR, address: 'memory:acceptor', side: 'dialer' }, { expectedPeerId: ACCEPTOR, name: 'ann', serve });
    const fromDialer: string[] = [];
    const parser = new ConnectionFrameParser({ frameBytes: 1 << 20, maxEventBytes: 1 << 16 }, {
      onHeader: (h) => void fromDialer.push(`${h.type} ${h.id}`),
      onMessage: () => undefined,
      onData: () => undefined,
      onWindow: () => undefined,
      onCancel: () => undefined,
    });
    let helloSeen = false;
    b.on('data', (c: Buffer) => {
      if (!helloSeen) {
        helloSeen = true; // the hello: one frame, one write
        return;
      }
      parser.push(c);
    });
    while (!helloSeen) await new Promise((resolve) => setTimeout(resolve, 2));
    const welcome = { type: 'welcome', version: 2, name: 'raw', id: ACCEPTOR, paired: false, caps, frame: 65536, window: 131072, requests: 4 };
    b.write(Buffer.concat([encodeMessage(welcome), encodeMessageFrame('REQUEST', 2, { type: 'test.get' })]));
    // The request came with the welcome: the handler was in place before it was read.
    const { connection } = await dialing;
    while (!fromDialer.includes('END 2')) await new Promise((resolve) => setTimeout(resolve, 2));
    connection.close();
  });

  it('a welcome naming another ID than the transport proved is PEER_MISMATCH', async () => {
    const [a, b] = duplexPair();
    const dialing = dialV2({ stream: a, peerId: 'the-one-we-pinned', address: 'memory:acceptor', side: 'dialer' }, { expectedPeerId: 'the-one-we-pinned', name: 'ann', serve });
    await acceptor(b).catch(() => undefined);
    await assert.rejects(dialing, { code: 'PEER_MISMATCH' });
  });

  it('a transport that proved another peer than the one we meant gets PEER_MISMATCH and not a byte: no hello, no token (found in review)', async () => {
    const [a, b] = duplexPair();
    const seen: Buffer[] = [];
    b.on('data', (c: Buffer) => seen.push(c));
    const dialing = dialV2({ stream: a, peerId: 'someone-else', address: 'memory:acceptor', side: 'dialer' }, { expectedPeerId: ACCEPTOR, name: 'ann', token: 'invite-token', serve });
    await assert.rejects(dialing, { code: 'PEER_MISMATCH' });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(Buffer.concat(seen).length, 0);
  });

  it('a refusal reaches the dialer with its code, marked as the peer\'s; a local code becomes INTERNAL', async () => {
    for (const [thrown, expected] of [[new PeerShareError('PEER_UNTRUSTED'), 'PEER_UNTRUSTED'], [new PeerShareError('IO_ERROR', 'disk /home/x'), 'INTERNAL']] as const) {
      const [a, b] = duplexPair();
      const accepting = acceptor(b, async () => {
        throw thrown;
      });
      const err = await dialV2({ stream: a, peerId: ACCEPTOR, address: 'memory:acceptor', side: 'dialer' }, { expectedPeerId: ACCEPTOR, name: 'ann', serve }).then(
        () => undefined,
        (e: PeerShareError) => e,
      );
      await accepting.catch(() => undefined);
      assert.ok(err instanceof PeerSentError, String(err));
      assert.equal(err.code, expected);
      assert.doesNotMatch(err.message, /home/);
    }
  });

  it('a v2 hello out of bounds (caps, frame, window, requests) is PROTOCOL_ERROR before anyone is asked', async () => {
    const good = { type: 'hello', versions: [2], name: 'x', caps, frame: 65536, window: 131072, requests: 4 };
    const bad = [
      { ...good, caps: [] },
      { ...good, caps: { 'Share/1': {} } },
      { ...good, caps: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`c${i}/1`, {}])) },
      { ...good, frame: 1024 },
      { ...good, frame: 2 * 1024 * 1024 },
      { ...good, window: 1024 },
      { ...good, window: 65536 }, // below two frames
      { ...good, requests: 0 },
      { ...good, requests: 257 },
      { ...good, caps: undefined },
    ];
    for (const hello of bad) {
      const [other, v2] = duplexPair();
      let asked = false;
      const accepting = acceptor(v2, async () => {
        asked = true;
        return { serve, paired: false };
      });
      const bytes = received(other);
      other.write(encodeMessage(hello));
      await assert.rejects(accepting, { code: 'PROTOCOL_ERROR' });
      assert.match((await bytes).toString(), /"code":"PROTOCOL_ERROR"/);
      assert.equal(asked, false);
    }
  });

  it('frames from the dialer before the welcome, a DATA frame, or no hello in time: refused', async () => {
    {
      const [other, v2] = duplexPair();
      const accepting = acceptor(v2, () => new Promise(() => undefined));
      other.write(encodeMessage({ type: 'hello', versions: [2], name: 'x', caps, frame: 65536, window: 131072, requests: 4 }));
      await new Promise((resolve) => setTimeout(resolve, 10));
      other.write(encodeMessageFrame('REQUEST', 1, { type: 'test.get' }));
      await assert.rejects(accepting, { code: 'PROTOCOL_ERROR' });
    }
    {
      const [other, v2] = duplexPair();
      const accepting = acceptor(v2);
      other.write(Buffer.from([0x02, 0, 0, 0, 1, 0]));
      await assert.rejects(accepting, { code: 'PROTOCOL_ERROR' });
    }
    {
      const [, v2] = duplexPair();
      const accepting = acceptV2({ stream: v2, peerId: DIALER, address: 'memory', side: 'acceptor' }, { name: 'b', ownPeerId: ACCEPTOR, limits: { helloTimeoutMs: 50 }, admit: async () => ({ serve, paired: false }) });
      await assert.rejects(accepting, { code: 'TIMEOUT' });
    }
  });

  it('a transport error while admit waits (a reset during an approval prompt) ends the handshake CONNECTION_CLOSED, never as an uncaught error', async () => {
    const [other, v2] = duplexPair();
    let admitSignal: AbortSignal | undefined;
    const accepting = acceptor(v2, (_hello, signal) => {
      admitSignal = signal;
      return new Promise(() => undefined); // a person who never answers
    });
    other.write(encodeMessage({ type: 'hello', versions: [2], name: 'x', caps, frame: 65536, window: 131072, requests: 4 }));
    while (!admitSignal) await new Promise((resolve) => setTimeout(resolve, 5));
    // With no listener, this emit would throw out of the test (the extension host's process, live).
    v2.emit('error', Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }));
    await assert.rejects(accepting, { code: 'CONNECTION_CLOSED' });
    assert.equal(admitSignal.aborted, true, 'the prompt is told to go away');
  });
});
