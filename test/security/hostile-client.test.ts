import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { PeerServer, Share, connectToPeer, resolveLimits, type Identity, type PeerConnection } from '../../src/core';
import { FrameType, encodeDataHeader, encodeMessage } from '../../src/core/frames';
import { ConnectionFrameType, encodeMessageFrame } from '../../src/core/v2/frames';
import { makePeer, type TestPeer } from '../helpers';
import { dripUntilClosed, rawClient, tcpConnect, waitFor, type RawClient, helloV2 } from '../hostile';
import { buildWorld, type World } from './world';

/**
 * A hostile client against a real PeerShare server: every class of the security checklist that a
 * peer reading from us can try, as named scenarios. After each one the suite checks, beyond the
 * error codes, that no byte any attacker received holds the world's secret, that the file system
 * is exactly as before (nothing created, changed or removed, inside or outside the share), that
 * the server let go of every attacking connection, and that a well-behaved peer is still served.
 */

interface Ctx {
  world: World;
  server: PeerServer;
  address: string;
  /** A peer the sharer trusts that turned hostile. */
  insider: TestPeer;
  /** A peer the sharer has never met. */
  stranger: TestPeer;
  /** A raw connection; with `hello`, already past hello and welcome. */
  open(identity?: Identity, options?: { hello?: boolean; tls?: tls.ConnectionOptions }): Promise<RawClient>;
  /** Sends a request and collects the answer up to its last message (or the connection's end). */
  ask(client: RawClient, request: object): Promise<Record<string, unknown>[]>;
  refuses(request: object, codes: string[]): Promise<void>;
}

interface Attack {
  cls: string;
  name: string;
  run(ctx: Ctx): Promise<void>;
}

/** A share.read of `blocks` of ws/README.md (its manifest asked first, for its fileHash): refused with one of `codes`. */
async function readBlocksRefused(ctx: Ctx, blocks: unknown, codes: string[]): Promise<void> {
  const client = await ctx.open(ctx.insider.identity, { hello: true });
  const manifest = (await ctx.ask(client, { type: 'read', path: 'ws/README.md' })).find((m) => m.type === 'manifest');
  assert.ok(manifest, 'the manifest was served');
  const answer = await ctx.ask(client, { type: 'share.read', path: 'ws/README.md', fileHash: manifest.fileHash, blocks });
  const got = codesOf(answer);
  assert.equal(got.length, 1, `expected a refusal, got ${JSON.stringify(answer).slice(0, 200)}`);
  assert.ok(codes.includes(got[0] as string), `refused with ${String(got[0])}, expected ${codes.join('/')}`);
}

/** v1's request types as share/1 (protocol v2, 6) names them: a read begins with the manifest. */
const V2_REQUEST: Record<string, string> = { stat: 'share.stat', list: 'share.list', tree: 'share.tree', read: 'share.manifest' };
const LIMITS = {
  handshakeTimeoutMs: 600,
  helloTimeoutMs: 600,
  messageTimeoutMs: 600,
  stallTimeoutMs: 800,
  maxConnections: 12,
  maxConcurrentRequests: 6,
  maxListEntries: 350,
  listBatchEntries: 25,
  maxTreeFiles: 300,
  maxTreeDepth: 10,
  // The suite opens a connection or more per scenario, all from 127.0.0.1, faster than the
  // default handshake rate; that rate has its own scenarios (preauth-flood.test.ts).
  handshakesPerSecondPerSource: 10_000,
};

/** The codes of refusals: a handshake or END `error`, and a CLOSE that carries one (protocol v2). */
const codesOf = (messages: Record<string, unknown>[]): unknown[] => messages.filter((m) => m.type === 'error' || (m.type === 'close' && m.code !== undefined)).map((m) => m.code);

function readTraversal(cls: string, paths: string[], codes = ['OUTSIDE_SHARE', 'NOT_FOUND']): Attack[] {
  return paths.flatMap((p) =>
    (['read', 'stat', 'list', 'tree'] as const).map((type) => ({
      cls,
      name: `${type} ${JSON.stringify(p).slice(0, 70)}`,
      run: (ctx: Ctx) =>
        ctx.refuses(type === 'read' ? { type, path: p, offset: 0 } : { type, path: p }, [...codes, ...(type === 'list' || type === 'tree' ? ['NOT_A_DIRECTORY'] : []), ...(type === 'read' ? ['NOT_A_FILE'] : [])]),
    })),
  );
}

const ATTACKS: Attack[] = [
  // ---- traversal in every spelling
  ...readTraversal('traversal', [
    '..',
    'ws/..',
    'ws/../outside/secret.txt',
    'ws/src/../../outside/secret.txt',
    'ws/./README.md',
    '/etc/passwd',
    'ws\\..\\outside\\secret.txt',
    'ws/..\\..\\outside\\secret.txt',
    'C:/Windows/win.ini',
    'c:\\outside\\secret.txt',
    '\\\\server\\share\\secret.txt',
    '//server/share/secret.txt',
    'ws/%2e%2e/outside/secret.txt',
    'ws/%252e%252e/outside/secret.txt',
    'ws/..%2f..%2foutside%2fsecret.txt',
    'ws/README.md\u0000.txt',
    'ws/\u0000',
    'ws/\ud800',
    'ws/\uFFFD',
    'ws/\u202egnp.exe',
  ]),
  { cls: 'traversal', name: 'absolute path of a file outside', run: (ctx) => ctx.refuses({ type: 'read', path: path.join(ctx.world.outside, 'secret.txt'), offset: 0 }, ['OUTSIDE_SHARE']) },
  { cls: 'traversal', name: 'over-long path (64 KiB)', run: (ctx) => ctx.refuses({ type: 'stat', path: `ws/${'a/'.repeat(32_000)}x` }, ['TOO_LARGE']) },
  { cls: 'traversal', name: 'over-long component', run: (ctx) => ctx.refuses({ type: 'stat', path: `ws/${'é'.repeat(200)}` }, ['OUTSIDE_SHARE']) },
  {
    cls: 'traversal',
    name: 'invalid UTF-8 in a request',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      const body = Buffer.concat([Buffer.from('{"type":"read","offset":0,"path":"ws/'), Buffer.from([0xc0, 0xae, 0xc0, 0xae]), Buffer.from('/outside/secret.txt"}')]);
      const header = Buffer.alloc(5);
      header[0] = FrameType.MESSAGE;
      header.writeUInt32BE(body.length, 1);
      client.socket.write(Buffer.concat([header, body]));
      await client.closed;
      assert.deepEqual(codesOf(client.messages.slice(1)), ['PROTOCOL_ERROR']);
    },
  },
  {
    cls: 'traversal',
    name: 'a request that is not a plain path (number, object, array)',
    run: async (ctx) => {
      for (const bad of [42, { toString: 'ws/README.md' }, ['ws', 'README.md'], null]) {
        const client = await ctx.open(ctx.insider.identity, { hello: true });
        assert.deepEqual(codesOf(await ctx.ask(client, { type: 'read', path: bad, offset: 0 })), ['PROTOCOL_ERROR']);
      }
    },
  },
  // v1's offsets are v2's block ranges (share.read, spec 6.2): a negative one breaks the protocol, one past the end is refused.
  { cls: 'traversal', name: 'a negative block index', run: (ctx) => readBlocksRefused(ctx, [[-5, 1]], ['PROTOCOL_ERROR']) },
  { cls: 'traversal', name: 'a block past the end', run: (ctx) => readBlocksRefused(ctx, [[0, 1e9]], ['INVALID_ARGUMENT', 'PROTOCOL_ERROR']) },

  // ---- the sibling-prefix case
  ...readTraversal('sibling prefix', ['ws-secret/x', 'ws/../ws-secret/x', 'ws-secret', 'ws /README.md', 'WS/README.md']),

  // ---- symlinks
  ...readTraversal('symlinks', ['ws/file-link', 'ws/link-out/secret.txt', 'ws/link-out', 'ws/loop', 'ws/loop/x', 'ws/dev-zero'], ['OUTSIDE_SHARE', 'NOT_FOUND', 'NOT_A_FILE']),
  { cls: 'symlinks', name: 'read a FIFO (must not block)', run: (ctx) => ctx.refuses({ type: 'read', path: 'ws/fifo', offset: 0 }, ['NOT_A_FILE', 'NOT_FOUND']) },
  {
    cls: 'symlinks',
    name: 'listing and tree show no symlink, FIFO or device',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      const listed = (await ctx.ask(client, { type: 'list', path: 'ws' })).flatMap((m) => (m.type === 'entries' ? (m.entries as { name: string }[]).map((e) => e.name) : []));
      assert.deepEqual(listed.sort(), ['README.md', 'big.bin', 'bomb-deep', 'bomb-wide', 'bomb-wider', 'src', 'sub', 'swap-target']);
      const tree = await ctx.ask(client, { type: 'tree', path: 'ws/sub' });
      assert.deepEqual(tree.map((m) => `${m.type}:${m.path ?? ''}`), ['dir:deep', 'file:deep/note.txt', 'end:']);
    },
  },
  {
    cls: 'symlinks',
    name: 'a folder swapped for a symlink while it is being read (race, 300 tries)',
    run: async (ctx) => {
      // `swap` flips between a real folder holding harmless.txt and a symlink to `outside`,
      // which holds secret.txt; the attacker asks for swap/secret.txt and swap/harmless.txt.
      const swap = path.join(ctx.world.ws, 'swap');
      const real = path.join(ctx.world.ws, 'swap-target');
      let flipping = true;
      const flipper = (async () => {
        while (flipping) {
          await fs.rm(swap, { force: true, recursive: false }).catch(() => undefined);
          await fs.symlink(Math.random() < 0.5 ? real : ctx.world.outside, swap).catch(() => undefined);
          await new Promise((r) => setImmediate(r));
        }
        await fs.rm(swap, { force: true });
      })();
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      const outcomes = new Map<string, number>();
      for (let i = 0; i < 300; i++) {
        const answer = await ctx.ask(client, { type: 'read', path: i % 2 ? 'ws/swap/secret.txt' : 'ws/swap/harmless.txt', offset: 0 });
        const key = String(answer[0].code ?? answer[0].type);
        outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      }
      flipping = false;
      await flipper;
      assert.ok(!outcomes.has('file'), `never served through the swapped link: ${JSON.stringify([...outcomes])}`);
    },
  },

  // ---- excluded paths through aliases
  ...readTraversal(
    'excluded aliases',
    ['ws/.git/config', 'ws/.GIT/config', 'ws/.git./config', 'ws/.git /config', 'ws/.Git/hooks/pre-commit', 'ws/.git', 'ws/.env', 'ws/.ENV', 'ws/.env.', 'ws/server.pem', 'ws/server.PEM', 'ws/.ssh/id_rsa', 'ws/.SSH/id_rsa', 'ws/home/key.pem', 'ws/home/trusted-peers.json', 'ws/home', 'ws/.\uFF45nv'],
    ['EXCLUDED', 'NOT_FOUND'],
  ),

  // ---- listing bombs
  {
    cls: 'listing bombs',
    name: 'a folder over the entry limit: TOO_LARGE, in bounded batches until then',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      const answer = await ctx.ask(client, { type: 'list', path: 'ws/bomb-wider' });
      assert.deepEqual(codesOf(answer), ['TOO_LARGE']);
      for (const m of answer) if (m.type === 'entries') assert.ok((m.entries as unknown[]).length <= LIMITS.listBatchEntries);
    },
  },
  {
    cls: 'listing bombs',
    name: 'a wide folder under the limit comes in batches of at most listBatchEntries',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      const answer = await ctx.ask(client, { type: 'list', path: 'ws/bomb-wide' });
      const batches = answer.filter((m) => m.type === 'entries').map((m) => (m.entries as unknown[]).length);
      assert.equal(batches.reduce((a, b) => a + b, 0), 250);
      assert.ok(batches.every((n) => n <= LIMITS.listBatchEntries));
    },
  },
  { cls: 'listing bombs', name: 'a tree deeper than maxTreeDepth: TOO_LARGE', run: (ctx) => ctx.refuses({ type: 'tree', path: 'ws/bomb-deep' }, ['TOO_LARGE']) },
  { cls: 'listing bombs', name: 'a tree with more files than maxTreeFiles: TOO_LARGE', run: (ctx) => ctx.refuses({ type: 'tree', path: 'ws/bomb-wider' }, ['TOO_LARGE']) },

  // ---- identity and transport
  {
    cls: 'identity and transport',
    name: 'no certificate: one PEER_UNTRUSTED, and a request after it gets nothing',
    run: async (ctx) => {
      const client = await ctx.open(undefined);
      client.send({ type: 'read', path: 'ws/README.md', offset: 0 });
      await client.closed;
      assert.deepEqual(client.messages.map((m) => m.code), ['PEER_UNTRUSTED']);
    },
  },
  {
    cls: 'identity and transport',
    name: 'an unknown certificate: PEER_UNTRUSTED',
    run: async (ctx) => {
      const client = await ctx.open(ctx.stranger.identity);
      client.send(helloV2('stranger'));
      client.send({ type: 'read', path: 'ws/README.md', offset: 0 });
      await client.closed;
      assert.deepEqual(codesOf(client.messages), ['PEER_UNTRUSTED']);
    },
  },
  {
    cls: 'identity and transport',
    name: "the sharer's own certificate is the same installation (another window): let in, since TLS proved it holds our key",
    run: async (ctx) => {
      const client = await ctx.open(ctx.server.options.identity, { hello: true });
      assert.equal(client.messages[0].id, ctx.server.options.identity.peerId);
    },
  },
  {
    cls: 'identity and transport',
    name: 'a chain whose CA key is the trusted peer’s: a chain is refused, PEER_UNTRUSTED',
    run: async (ctx) => {
      const { keyPem, chainPem } = await leafSignedBy(ctx.insider.identity);
      const client = await ctx.open(undefined, { tls: { key: keyPem, cert: chainPem } });
      client.send(helloV2('chain'));
      await client.closed;
      assert.deepEqual(client.messages.map((m) => [m.code, m.message]), [['PEER_UNTRUSTED', 'Present one self-signed certificate, not a chain.']]);
    },
  },
  {
    cls: 'identity and transport',
    name: 'a hello claiming a trusted peer’s ID from another certificate: PEER_UNTRUSTED',
    run: async (ctx) => {
      const client = await ctx.open(ctx.stranger.identity);
      client.send(helloV2('insider', { id: ctx.insider.identity.peerId, peerId: ctx.insider.identity.peerId }));
      await client.closed;
      assert.deepEqual(codesOf(client.messages), ['PEER_UNTRUSTED']);
    },
  },
  {
    cls: 'identity and transport',
    name: 'a wrong, a malformed and an over-long invite token: TOKEN_INVALID',
    run: async (ctx) => {
      for (const token of ['A'.repeat(32), 'not a token', 'x'.repeat(256)]) {
        const client = await ctx.open(ctx.stranger.identity);
        client.send(helloV2('guesser', { token }));
        await client.closed;
        assert.deepEqual(codesOf(client.messages), ['TOKEN_INVALID']);
      }
      assert.equal(ctx.server.options.trust.knows(ctx.stranger.identity.peerId), false);
    },
  },
  {
    cls: 'identity and transport',
    name: 'a used-up invite token: TOKEN_INVALID the second time',
    run: async (ctx) => {
      const token = new URL(ctx.server.createInvite({ uses: 1, ttlMs: 60_000 })).searchParams.get('token');
      const first = await makePeer();
      const a = await ctx.open(first.identity);
      a.send(helloV2('first', { token }));
      await waitFor(() => a.messages.length > 0);
      assert.equal(a.messages[0].type, 'welcome');
      a.socket.destroy();
      const b = await ctx.open(ctx.stranger.identity);
      b.send(helloV2('second', { token }));
      await b.closed;
      assert.deepEqual(codesOf(b.messages), ['TOKEN_INVALID']);
      await ctx.server.options.trust.remove(first.identity.peerId);
    },
  },
  {
    cls: 'identity and transport',
    name: 'an expired invite token: TOKEN_INVALID',
    run: async (ctx) => {
      const token = new URL(ctx.server.createInvite({ uses: 5, ttlMs: 1 })).searchParams.get('token');
      await new Promise((r) => setTimeout(r, 20));
      const client = await ctx.open(ctx.stranger.identity);
      client.send(helloV2('late', { token }));
      await client.closed;
      assert.deepEqual(codesOf(client.messages), ['TOKEN_INVALID']);
    },
  },
  {
    cls: 'identity and transport',
    name: 'TLS 1.2 is refused at the handshake',
    run: async (ctx) => {
      await assert.rejects(ctx.open(ctx.insider.identity, { tls: { maxVersion: 'TLSv1.2' } }));
    },
  },
  {
    cls: 'identity and transport',
    name: 'plaintext HTTP to the TLS port: closed, nothing answered in the clear',
    run: async (ctx) => {
      const socket = await tcpConnect(ctx.address);
      const received: Buffer[] = [];
      socket.on('data', (b: Buffer) => received.push(b));
      socket.on('error', () => undefined);
      socket.write('GET /ws/README.md HTTP/1.1\r\nHost: x\r\n\r\n');
      await new Promise((r) => socket.on('close', r));
      assert.ok(!Buffer.concat(received).toString('latin1').includes('hello from the share'));
      assert.ok(!Buffer.concat(received).toString('latin1').startsWith('HTTP'));
    },
  },
  {
    cls: 'identity and transport',
    name: 'a request before hello: PROTOCOL_ERROR',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity);
      client.send({ type: 'read', path: 'ws/README.md', offset: 0 });
      await client.closed;
      assert.deepEqual(codesOf(client.messages), ['PROTOCOL_ERROR']);
    },
  },
  {
    cls: 'identity and transport',
    name: 'unknown versions only: VERSION_UNSUPPORTED',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity);
      client.send({ type: 'hello', versions: [0, 1, 99], name: 'future' });
      await client.closed;
      assert.deepEqual(codesOf(client.messages), ['VERSION_UNSUPPORTED']);
    },
  },
  {
    cls: 'identity and transport',
    name: 'an unknown message type after hello: PROTOCOL_ERROR',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      assert.deepEqual(codesOf(await ctx.ask(client, { type: 'delete', path: 'ws/README.md' })), ['PROTOCOL_ERROR']);
    },
  },
  {
    cls: 'identity and transport',
    name: 'a second hello: PROTOCOL_ERROR',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      assert.deepEqual(codesOf(await ctx.ask(client, helloV2('again'))), ['PROTOCOL_ERROR']);
    },
  },
  {
    cls: 'identity and transport',
    name: 'a DATA frame from a client: PROTOCOL_ERROR',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      client.socket.write(Buffer.concat([encodeDataHeader(4), Buffer.from('evil')]));
      await client.closed;
      assert.deepEqual(codesOf(client.messages.slice(1)), ['PROTOCOL_ERROR']);
    },
  },

  // ---- exhaustion
  {
    cls: 'exhaustion',
    name: 'a TCP connection that never starts TLS is closed by the handshake timeout',
    run: async (ctx) => {
      const socket = await tcpConnect(ctx.address);
      socket.on('error', () => undefined);
      await new Promise((r) => socket.on('close', r));
    },
  },
  {
    cls: 'exhaustion',
    name: 'a TLS connection that never says hello: TIMEOUT',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity);
      await client.closed;
      assert.deepEqual(codesOf(client.messages), ['TIMEOUT']);
    },
  },
  {
    cls: 'exhaustion',
    name: 'a request dripped a byte at a time is cut off by the absolute deadline',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      const bytes = encodeMessageFrame('REQUEST', 1, { type: 'share.stat', path: 'ws/README.md' });
      const sent = await dripUntilClosed(client, bytes, 100);
      assert.ok(sent < bytes.length, 'closed before the request completed');
      assert.deepEqual(codesOf(client.messages.slice(1)), ['TIMEOUT']);
    },
  },
  ...[
    ['a message length of 4 GiB', ConnectionFrameType.REQUEST, 0xffffffff, 'TOO_LARGE'],
    ['a message length just over the limit', ConnectionFrameType.REQUEST, 1024 * 1024 + 1, 'TOO_LARGE'],
    ['a message length of 0', ConnectionFrameType.REQUEST, 0, 'PROTOCOL_ERROR'],
    ['an unknown frame type', 0x7f, 10, 'PROTOCOL_ERROR'],
  ].map(
    ([what, type, length, code]): Attack => ({
      cls: 'exhaustion',
      name: `${what}: ${code}, refused from the header alone`,
      run: async (ctx) => {
        const client = await ctx.open(ctx.insider.identity, { hello: true });
        // A v2 frame header (type, length, request id 1), and nothing after it.
        const header = Buffer.alloc(9);
        header[0] = type as number;
        header.writeUInt32BE(length as number, 1);
        header.writeUInt32BE(1, 5);
        client.socket.write(header);
        await client.closed;
        assert.deepEqual(codesOf(client.messages.slice(1)), [code]);
      },
    }),
  ),
  {
    cls: 'exhaustion',
    name: '1,000 tiny requests pipelined on one connection: PROTOCOL_ERROR, not 1,000 answers',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      client.socket.write(Buffer.concat(Array.from({ length: 1000 }, () => encodeMessage({ type: 'stat', path: 'ws/README.md' }))));
      await client.closed;
      assert.ok(client.messages.length <= 4, `${client.messages.length} answers`);
      assert.deepEqual(codesOf(client.messages), ['PROTOCOL_ERROR']);
    },
  },
  {
    cls: 'exhaustion',
    name: 'more connections than the limit: BUSY for the excess, served again after',
    run: async (ctx) => {
      const clients = await Promise.all(Array.from({ length: LIMITS.maxConnections + 4 }, () => ctx.open(ctx.insider.identity)));
      for (const c of clients) c.send(helloV2('many'));
      await waitFor(() => clients.every((c) => c.messages.length > 0));
      const busy = clients.filter((c) => c.messages[0].code === 'BUSY').length;
      assert.ok(busy >= 4, `${busy} connections told BUSY`);
      for (const c of clients) c.socket.destroy();
    },
  },
  {
    cls: 'exhaustion',
    name: 'more concurrent requests than the limit: BUSY for the excess',
    run: async (ctx) => {
      // Readers that do not read hold every request slot; three more requests find none free.
      const holders = await Promise.all(Array.from({ length: LIMITS.maxConcurrentRequests }, () => ctx.open(ctx.insider.identity, { hello: true })));
      for (const c of holders) {
        const manifest = (await ctx.ask(c, { type: 'read', path: 'ws/big.bin' })).find((m) => m.type === 'manifest')!;
        c.socket.pause();
        // Every block of 48 MiB: far past the window it grants, so the answer waits on it, holding its slot.
        c.request({ type: 'share.read', path: 'ws/big.bin', fileHash: manifest.fileHash, blocks: [[0, Math.ceil(Number(manifest.size) / Number(manifest.blockSize))]] });
      }
      await new Promise((r) => setTimeout(r, 150));
      for (let i = 0; i < 3; i++) {
        const late = await ctx.open(ctx.insider.identity, { hello: true });
        assert.deepEqual(codesOf(await ctx.ask(late, { type: 'stat', path: 'ws/README.md' })), ['BUSY']);
      }
      for (const c of holders) c.socket.destroy();
    },
  },
  {
    cls: 'exhaustion',
    name: 'a reader that never reads is dropped after the stall timeout, with bounded bytes sent',
    run: async (ctx) => {
      const client = await ctx.open(ctx.insider.identity, { hello: true });
      const before = ctx.server.stats.fileBytesSent;
      client.socket.pause();
      client.send({ type: 'read', path: 'ws/big.bin', offset: 0 });
      await waitFor(() => ctx.server.connectedPeers().length === 1, 8000);
      const sent = ctx.server.stats.fileBytesSent - before;
      assert.ok(sent < 24 * 1024 * 1024, `${sent} bytes queued for a reader that never read`);
      client.socket.destroy();
    },
  },
];

/** A key and certificate signed by `issuer`'s key, sent as a chain of two. */
async function leafSignedBy(issuer: Identity): Promise<{ keyPem: string; chainPem: string }> {
  x509.cryptoProvider.set(webcrypto as unknown as Crypto);
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const issuerKey = await webcrypto.subtle.importKey('pkcs8', pemBody(issuer.keyPem), alg, false, ['sign']);
  const issuerCert = new x509.X509Certificate(issuer.certPem);
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject: 'CN=leaf',
    issuer: issuerCert.subject,
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + 3600_000),
    signingAlgorithm: alg,
    publicKey: keys.publicKey,
    signingKey: issuerKey,
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64')}\n-----END PRIVATE KEY-----\n`;
  return { keyPem, chainPem: `${leaf.toString('pem')}\n${issuer.certPem}` };
}

function pemBody(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

/** How many scenarios ran and passed per class, printed for docs/security.md. */
const tally = new Map<string, { tried: number; passed: number }>();

describe('a hostile client against a real server', () => {
  let world: World;
  let server: PeerServer;
  let address: string;
  let insider: TestPeer;
  let stranger: TestPeer;
  let good: PeerConnection;
  const opened: RawClient[] = [];

  before(async () => {
    world = await buildWorld(async (base) => {
      const ws = path.join(base, 'ws');
      for (const [dir, count] of [['bomb-wide', 250], ['bomb-wider', 400]] as const) {
        await fs.mkdir(path.join(ws, dir));
        await Promise.all(Array.from({ length: count }, (_, i) => fs.writeFile(path.join(ws, dir, `f${i}`), '')));
      }
      await fs.mkdir(path.join(ws, 'bomb-deep', ...Array.from({ length: 14 }, (_, i) => `d${i}`)), { recursive: true });
      await fs.mkdir(path.join(ws, 'swap-target'));
      await fs.writeFile(path.join(ws, 'swap-target', 'harmless.txt'), 'harmless\n');
      // Big enough that a reader that never reads leaves the server with bytes it cannot send.
      await fs.writeFile(path.join(ws, 'big.bin'), Buffer.alloc(48 * 1024 * 1024, 1));
    });
    const sharer = await makePeer();
    insider = await makePeer();
    stranger = await makePeer();
    const wellBehaved = await makePeer();
    const limits = resolveLimits(LIMITS);
    const share = await Share.create({ folders: [world.ws], privatePaths: [world.home, sharer.home] }, limits);
    server = new PeerServer({ ...sharer, share, name: 'sharer', limits });
    await server.listen(0, '127.0.0.1');
    address = `127.0.0.1:${server.port}`;
    await sharer.trust.addReader({ id: insider.identity.peerId, name: 'insider' });
    await sharer.trust.addReader({ id: wellBehaved.identity.peerId, name: 'good' });
    await wellBehaved.trust.addSharer({ id: sharer.identity.peerId, name: 'sharer', addresses: [address] });
    good = await connectToPeer({ identity: wellBehaved.identity, trust: wellBehaved.trust, addresses: [address], expectedPeerId: sharer.identity.peerId, name: 'good' });
  });

  after(async () => {
    good.close();
    await server.close();
    const lines = [...tally].map(([cls, t]) => `${cls}: ${t.passed}/${t.tried}`);
    console.log(`# hostile client scenarios passed per class: ${lines.join('; ')}`);
  });

  const ctx = (): Ctx => ({
    world,
    server,
    address,
    insider,
    stranger,
    async open(identity, options = {}) {
      const client = await rawClient(address, identity, options.tls);
      client.socket.on('error', () => undefined);
      opened.push(client);
      if (options.hello) {
        client.send(helloV2('attacker'));
        await waitFor(() => client.messages.length > 0 || client.socket.destroyed);
        assert.equal(client.messages[0]?.type, 'welcome');
      }
      return client;
    },
    async ask(client, request) {
      const from = client.messages.length;
      const { type, offset: _offset, ...fields } = request as { type: string; offset?: number; [key: string]: unknown };
      if (type === 'hello') {
        // A handshake frame where the connection's frames belong.
        client.send(request);
        await Promise.race([client.closed, waitFor(() => client.messages.length > from, 10_000)]);
        return client.messages.slice(from);
      }
      // v1's requests as share/1 names them; a read starts with the file's manifest, where its path is checked.
      const id = client.request({ ...fields, type: type.startsWith('share.') ? type : (V2_REQUEST[type] ?? `share.${type}`) });
      await Promise.race([client.closed, waitFor(() => client.messages.slice(from).some((m) => m.frame === 'CLOSE' || (m.frame === 'END' && m.id === id)), 10_000)]);
      return client.messages.slice(from);
    },
    async refuses(request, codes) {
      const client = await this.open(insider.identity, { hello: true });
      const answer = await this.ask(client, request);
      const got = codesOf(answer);
      assert.equal(got.length, 1, `expected a refusal, got ${JSON.stringify(answer).slice(0, 200)}`);
      assert.ok(codes.includes(got[0] as string), `refused with ${String(got[0])}, expected ${codes.join('/')}`);
    },
  });

  for (const attack of ATTACKS) {
    it(`[${attack.cls}] ${attack.name}`, async () => {
      const t = tally.get(attack.cls) ?? { tried: 0, passed: 0 };
      tally.set(attack.cls, t);
      t.tried++;
      opened.length = 0;
      try {
        await attack.run(ctx());
      } finally {
        // What every attack must leave behind: no secret on the wire, the disk as it was, no
        // attacking connection held open (even when the attack's own check failed, so one failure
        // does not hold the next scenarios up), and a server that still serves a well-behaved peer.
        for (const client of opened) {
          const seen = Buffer.concat([...client.messages.map((m) => Buffer.from(JSON.stringify(m))), ...client.data]).toString('latin1');
          client.socket.destroy();
          assert.ok(!seen.includes(world.secret), 'a secret reached the attacker');
        }
      }
      assert.deepEqual(await world.snapshot(), world.initial, 'the file system is exactly as before');
      await waitFor(() => server.connectedPeers().length === 1, 5000);
      assert.equal((await good.stat('ws/README.md')).size, 21, 'a well-behaved peer is still served');
      t.passed++;
    });
  }
});
