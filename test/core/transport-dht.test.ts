import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  DhtNetwork,
  PeerShareError,
  PeerShareNode,
  connectToPeer,
  download,
  formatDhtKey,
  formatInvite,
  parseBootstrap,
  parseDhtKey,
  parseInvite,
  resolveLimits,
  type AuthenticatedStream,
  type PeerConnection,
} from '../../src/core';
import { internetKeyPairSeed, loadHyperDht } from '../../src/core/transport-dht';
import { dialV2 } from '../../src/core/v2/handshake';
import { freePort, listTree, makePeer, rejectsWithCode, startSharer, tempDir, writeRandomFile, type Sharer } from '../helpers';

/**
 * Internet reach (issue 14) on a DHT of our own: hyperdht/testnet starts its nodes on loopback,
 * and every DHT node here is given that testnet's bootstrap list, never the public one (the first
 * tests check that this holds, and that nothing else is accepted by accident). The peers' DHT
 * connections are real: UDP on loopback, HyperDHT's Noise, and TLS 1.3 with the pinned
 * certificates inside.
 */

interface Testnet {
  bootstrap: { host: string; port: number }[];
  nodes: { address(): { host: string; port: number } }[];
  destroy(): Promise<void>;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const createTestnet = require('hyperdht/testnet') as (size: number, options: { host: string }) => Promise<Testnet>;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const idEncoding = require('hypercore-id-encoding') as { encode(key: Buffer): string; decode(id: string): Buffer };

let testnet: Testnet;
let bootstrap: string[];
/** Every DHT node the tests start, checked at the end for where it went. */
const networks: DhtNetwork[] = [];

function network(): DhtNetwork {
  const net = DhtNetwork.create({ bootstrap, host: '127.0.0.1' });
  networks.push(net);
  return net;
}

const noStats = () => ({ connectionsAccepted: 0, handshakesRateLimited: 0, unauthenticatedEvicted: 0, oversizedHandshakes: 0 });

before(async () => {
  testnet = await createTestnet(3, { host: '127.0.0.1' });
  bootstrap = testnet.bootstrap.map((node) => `${node.host}:${node.port}`);
});

after(async () => {
  await Promise.all(networks.map((n) => n.close()));
  await testnet.destroy();
});

describe('the public DHT is never used by accident', () => {
  it('an empty or missing bootstrap list is refused, never taken for the public network', () => {
    for (const given of [[], undefined, null, '', [''], ['no-port'], ['127.0.0.1:0']]) {
      assert.throws(
        () => DhtNetwork.create({ bootstrap: given as unknown as string[], host: '127.0.0.1' }),
        (err: PeerShareError) => err.code === 'INVALID_ARGUMENT',
        JSON.stringify(given),
      );
    }
    // The public network is a choice said by name (the editor's empty setting says it), not a default.
    assert.equal(parseBootstrap('public'), 'public');
    assert.deepEqual(parseBootstrap(['127.0.0.1:1', '10.0.0.1@boot.example:49737']), ['127.0.0.1:1', '10.0.0.1@boot.example:49737']);
  });

  it('a node holds exactly the bootstrap nodes it was given, and meets only nodes on loopback', async () => {
    const net = network();
    assert.deepEqual(net.bootstrap, bootstrap);
    assert.deepEqual(net.bootstrapNodes, bootstrap, 'the DHT library was handed our list, not its public default');
    await net.ready();
    assert.ok(net.knownNodes.length > 0, 'it joined the local DHT');
    for (const node of net.knownNodes) assert.match(node, /^127\.0\.0\.1:\d+$/);
  });
});

describe('DHT keys in invites and the trust file', () => {
  it('z-base-32 and hex spell the same key, as HyperDHT itself does', () => {
    for (let i = 0; i < 50; i++) {
      const key = Buffer.from(Array.from({ length: 32 }, (_, k) => (i * 37 + k * 101 + (i === 1 ? 255 : 0)) & 0xff));
      const z32 = formatDhtKey(key.toString('hex'));
      assert.equal(z32, idEncoding.encode(key));
      assert.equal(parseDhtKey(z32), key.toString('hex'));
      assert.equal(parseDhtKey(key.toString('hex').toUpperCase()), key.toString('hex'));
    }
    for (const bad of ['', 'x'.repeat(52), '0'.repeat(63), 'y'.repeat(51) + '9', 42, undefined]) assert.equal(parseDhtKey(bad), undefined, String(bad));
  });

  it('an invite carries the key beside the addresses; old invites still parse, and one with only a key is usable', async () => {
    const peer = await makePeer();
    const dht = 'ab'.repeat(32);
    const invite = formatInvite({ peerId: peer.identity.peerId, addresses: ['192.0.2.1:47474'], dht, token: 'T'.repeat(32), name: 'Ann' });
    assert.match(invite, new RegExp(`[?&]dht=${formatDhtKey(dht)}(&|$)`));
    assert.deepEqual(parseInvite(invite), { peerId: peer.identity.peerId, addresses: ['192.0.2.1:47474'], dht, token: 'T'.repeat(32), name: 'Ann' });
    const old = formatInvite({ peerId: peer.identity.peerId, addresses: ['192.0.2.1:47474'], token: 'T'.repeat(32) });
    assert.deepEqual(parseInvite(old), { peerId: peer.identity.peerId, addresses: ['192.0.2.1:47474'], token: 'T'.repeat(32), name: undefined });
    assert.equal(parseInvite(`peershare://invite?v=1&id=${peer.identity.peerId}&dht=${dht}`).dht, dht);
    await rejectsWithCode(Promise.resolve().then(() => parseInvite(`peershare://invite?v=1&id=${peer.identity.peerId}&addr=192.0.2.1:1&dht=nope`)), 'INVALID_INVITE');
  });

  it("the DHT key comes from the identity's private key: the same for the same home, another for another identity", async () => {
    const ann = await makePeer();
    const bob = await makePeer();
    const again = await (await import('../../src/core')).loadOrCreateIdentity(ann.home);
    assert.ok(internetKeyPairSeed(ann.identity).equals(internetKeyPairSeed(again)));
    assert.ok(!internetKeyPairSeed(ann.identity).equals(internetKeyPairSeed(bob.identity)));
    // Nothing a peer sees on the LAN (certificate, ID, fingerprint) contains the seed.
    const seen = Buffer.concat([ann.identity.certDer, ann.identity.fingerprint, Buffer.from(ann.identity.peerId + ann.identity.certPem)]);
    assert.equal(seen.indexOf(internetKeyPairSeed(ann.identity)), -1);
  });
});

describe('TLS 1.3 with pinned certificates inside the DHT stream', () => {
  it('dial and accept prove both peer IDs, and bytes flow both ways', async () => {
    const ann = await makePeer();
    const bob = await makePeer();
    const annNet = network();
    const bobNet = network();
    const accepted: AuthenticatedStream[] = [];
    const listener = await annNet.listen({ identity: ann.identity, limits: resolveLimits(), stats: noStats(), log: () => undefined, onStream: (s) => void accepted.push(s) });
    const started = performance.now();
    const dialed = await bobNet.dial(formatDhtKey(listener.publicKey), { identity: bob.identity, timeoutMs: 20_000 });
    const ms = performance.now() - started;
    console.log(`# figure: dial through the local DHT, TLS included: ${ms.toFixed(0)} ms`);
    assert.equal(dialed.peerId, ann.identity.peerId, "the dialer proved the listener's certificate");
    assert.equal(dialed.route, 'dht');
    assert.equal(dialed.side, 'dialer');
    await until(() => accepted.length === 1);
    assert.equal(accepted[0].peerId, bob.identity.peerId, "the listener proved the dialer's certificate");
    assert.equal(accepted[0].route, 'dht');
    assert.match(accepted[0].host, /^127\.0\.0\.1$/);
    const echoed = new Promise<Buffer>((resolve) => dialed.stream.once('data', resolve));
    accepted[0].stream.on('data', (chunk: Buffer) => accepted[0].stream.write(Buffer.concat([Buffer.from('echo:'), chunk])));
    dialed.stream.write('hello');
    assert.equal((await echoed).toString(), 'echo:hello');
    dialed.stream.destroy();
    await listener.close();
  });

  it('a DHT key nobody listens on fails as not reached (CONNECTION_FAILED or TIMEOUT), within the time given', async () => {
    const bob = await makePeer();
    const err = await bobNet().dial('cd'.repeat(32), { identity: bob.identity, timeoutMs: 15_000 }).then(
      () => undefined,
      (e: PeerShareError) => e,
    );
    assert.ok(err && ['CONNECTION_FAILED', 'TIMEOUT'].includes(err.code), String(err));
  });
});

describe('what a stranger can do with a raw DHT stream', () => {
  it('a stream that never starts TLS, or sends something else, is closed by the handshake deadline and never reaches the core', async () => {
    const ann = await makePeer();
    const stats = noStats();
    const handed: AuthenticatedStream[] = [];
    const listener = await network().listen({
      identity: ann.identity,
      limits: resolveLimits({ handshakeTimeoutMs: 300 }),
      stats,
      log: () => undefined,
      onStream: (stream) => void handed.push(stream),
    });
    // The stranger uses the DHT library itself: a Noise stream, then no TLS at all.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const DHT = require('hyperdht') as new (options: Record<string, unknown>) => {
      connect(key: Buffer): NodeJS.EventEmitter & { write(data: string): boolean; destroy(): void };
      destroy(): Promise<void>;
    };
    const raw = new DHT({ bootstrap, host: '127.0.0.1', ephemeral: true });
    try {
      const closedBy = async (send?: string): Promise<void> => {
        const socket = raw.connect(Buffer.from(listener.publicKey, 'hex'));
        socket.on('error', () => undefined);
        await new Promise<void>((resolve) => socket.once('open', () => resolve()));
        socket.on('data', () => undefined);
        if (send !== undefined) socket.write(send);
        await new Promise<void>((resolve) => socket.once('close', () => resolve()));
      };
      await closedBy(); // silent
      await closedBy('GET / HTTP/1.1\r\nHost: x\r\n\r\n'); // plaintext
      await closedBy('\x16\x03\x01\x00\x05hello'); // a broken TLS record
      assert.equal(stats.connectionsAccepted, 0);
      assert.equal(handed.length, 0, 'nothing reached the core without a TLS handshake');
    } finally {
      await raw.destroy();
      await listener.close();
    }
  });
});

describe('a sharer on the DHT, through the v2 core', () => {
  let sharer: Sharer;
  let sharerNet: DhtNetwork;
  let dhtKey: string;
  let folder: string;
  let files: Map<string, Buffer>;

  before(async () => {
    folder = path.join(tempDir(), 'project');
    files = new Map([
      ['a.bin', await writeRandomFile(path.join(folder, 'a.bin'), 3 * 1024 * 1024 + 17)],
      ['sub/b.txt', await writeRandomFile(path.join(folder, 'sub', 'b.txt'), 1000)],
      ['sub/deeper/c.bin', await writeRandomFile(path.join(folder, 'sub', 'deeper', 'c.bin'), 256 * 1024)],
    ]);
    sharer = await startSharer([folder], { limits: { maxUnauthenticatedConnections: 2, maxUnauthenticatedPerSource: 2, handshakesPerSecondPerSource: 1000 } });
    sharerNet = network();
    const listener = await sharerNet.listen({
      identity: sharer.identity,
      limits: sharer.server.limits,
      stats: sharer.server.stats,
      log: () => undefined,
      onStream: (stream, admission) => sharer.server.acceptStream(stream, admission),
    });
    dhtKey = listener.publicKey;
    sharer.server.internetKey = dhtKey;
  });

  after(async () => {
    await sharer.server.close();
  });

  it('an invite with a DHT key and no reachable address pairs, and a folder downloads byte-exact', async () => {
    const invite = sharer.server.createInvite({ ttlMs: 60_000, uses: 1 });
    const parsed = parseInvite(invite);
    assert.equal(parsed.dht, dhtKey);
    const client = await makePeer();
    // Where the LAN addresses lead nowhere (a closed port), the DHT is what reaches the sharer.
    const closed = `127.0.0.1:${await freePort()}`;
    const conn = await connectToPeer({
      identity: client.identity,
      trust: client.trust,
      name: 'client',
      addresses: [closed],
      expectedPeerId: parsed.peerId,
      token: parsed.token,
      dhtKey: parsed.dht,
      dht: network(),
    });
    try {
      assert.equal(conn.route, 'dht');
      assert.equal(conn.welcome.paired, true);
      const dest = tempDir();
      const result = await download(conn, 'project', dest);
      assert.equal(result.files, 3);
      assert.deepEqual(await listTree(path.join(dest, 'project')), ['a.bin', 'sub/', 'sub/b.txt', 'sub/deeper/', 'sub/deeper/c.bin']);
      for (const [name, bytes] of files) assert.ok((await fs.readFile(path.join(dest, 'project', name))).equals(bytes), name);
      // The trust file remembers the key and that the DHT worked, and no UDP address as a place to look.
      const known = client.trust.get(parsed.peerId)!;
      assert.equal(known.dht, dhtKey);
      assert.equal(known.reachedVia, 'dht');
      assert.deepEqual(known.addresses, []);
      assert.ok(sharer.trust.allowsReader(client.identity.peerId), 'the invite paired the peer TLS proved');
    } finally {
      conn.close();
    }
  });

  it('with both routes open, the first to prove the peer is kept, and the trust file says which', async () => {
    const { conn, client } = await pairedThroughDht();
    conn.close();
    const again = await connectToPeer({
      identity: client.identity,
      trust: client.trust,
      name: 'client',
      addresses: [sharer.address],
      expectedPeerId: sharer.identity.peerId,
      dhtKey,
      dht: network(),
    });
    try {
      assert.ok(['direct', 'dht'].includes(again.route));
      assert.equal(client.trust.get(sharer.identity.peerId)!.reachedVia, again.route);
      assert.deepEqual((await again.list('project')).map((e) => e.name).sort(), ['a.bin', 'sub']);
    } finally {
      again.close();
    }
  });

  it('a wrong peer behind the right DHT key is refused PEER_MISMATCH before a byte is sent, and the token is not spent', async () => {
    // Eve holds the sharer's DHT key pair (say it leaked) but not its certificate's key.
    await sharerNet.close(); // the real sharer leaves the DHT: Eve alone answers at its key
    const eve = await startSharer([folder]);
    const eveNet = network();
    let eveHeard = 0;
    const stolen = await eveNet.listen({
      identity: eve.identity,
      limits: eve.server.limits,
      stats: noStats(),
      log: () => undefined,
      seed: internetKeyPairSeed(sharer.identity),
      onStream: (stream) => stream.stream.on('data', (chunk: Buffer) => (eveHeard += chunk.length)),
    });
    assert.equal(stolen.publicKey, dhtKey);
    const invite = parseInvite(sharer.server.createInvite({ ttlMs: 60_000, uses: 1 }));
    const client = await makePeer();
    try {
      await rejectsWithCode(
        connectToPeer({ identity: client.identity, trust: client.trust, name: 'client', addresses: [], expectedPeerId: invite.peerId, token: invite.token, dhtKey, dht: network() }),
        'PEER_MISMATCH',
      );
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(eveHeard, 0, 'no hello, no token: nothing but TLS reached the wrong peer');
      assert.equal(client.trust.get(invite.peerId), undefined);
    } finally {
      await stolen.close();
      await eve.server.close();
    }
    // The sharer back on the DHT, for the next tests.
    sharerNet = network();
    const listener = await sharerNet.listen({
      identity: sharer.identity,
      limits: sharer.server.limits,
      stats: sharer.server.stats,
      log: () => undefined,
      onStream: (stream, admission) => sharer.server.acceptStream(stream, admission),
    });
    assert.equal(listener.publicKey, dhtKey);
  });

  it("a stranger's DHT connection is a stranger's: refused without a token, held in the unauthenticated budget, never in a trusted peer's way", async () => {
    const { conn: paired, client: friend } = await pairedThroughDht();
    paired.close();
    const strangerNet = network();
    const evictedBefore = sharer.server.stats.unauthenticatedEvicted;
    // A stranger that says hello without a token is told it is not trusted.
    const stranger = await makePeer();
    const refused = await strangerNet.dial(dhtKey, { identity: stranger.identity, timeoutMs: 20_000 });
    await assert.rejects(dialV2(refused, { expectedPeerId: sharer.identity.peerId, name: 'stranger', serve: {} }), (err: PeerShareError) => err.code === 'PEER_UNTRUSTED');
    // Strangers that prove a certificate and then say nothing wait in the budget (2 here); a
    // third makes room by closing the oldest.
    const silent: AuthenticatedStream[] = [];
    for (let i = 0; i < 3; i++) {
      const stream = await strangerNet.dial(dhtKey, { identity: (await makePeer()).identity, timeoutMs: 20_000 });
      stream.stream.resume(); // reads what the sharer says, so its goodbye is seen
      silent.push(stream);
    }
    const firstClosed = new Promise<void>((resolve) => silent[0].stream.once('close', () => resolve()));
    await firstClosed;
    assert.ok(sharer.server.stats.unauthenticatedEvicted > evictedBefore, 'the oldest stranger was evicted to make room');
    // The trusted peer is let in while strangers hold the budget.
    const conn = await connectToPeer({ identity: friend.identity, trust: friend.trust, name: 'friend', addresses: [], expectedPeerId: sharer.identity.peerId, dhtKey, dht: strangerNet });
    try {
      assert.equal(conn.route, 'dht');
      assert.deepEqual((await conn.list('project/sub')).map((e) => e.name).sort(), ['b.txt', 'deeper']);
    } finally {
      conn.close();
      for (const s of silent) s.stream.destroy();
    }
  });

  async function pairedThroughDht(): Promise<{ conn: PeerConnection; client: Awaited<ReturnType<typeof makePeer>> }> {
    const invite = parseInvite(sharer.server.createInvite({ ttlMs: 60_000, uses: 1 }));
    const client = await makePeer();
    const conn = await connectToPeer({ identity: client.identity, trust: client.trust, name: 'client', addresses: [], expectedPeerId: invite.peerId, token: invite.token, dhtKey, dht: network() });
    return { conn, client };
  }
});

describe('PeerShareNode with internet reach', () => {
  it('shares on the DHT when asked; a peer pairs by invite through it and later finds the sharer by ID, the LAN address being gone', async () => {
    const folder = path.join(tempDir(), 'work');
    const bytes = await writeRandomFile(path.join(folder, 'notes.bin'), 100_000);
    const internet = () => ({ bootstrap, host: '127.0.0.1' });
    const ann = await PeerShareNode.open({ home: path.join(tempDir(), 'home'), name: () => 'Ann', defaultPort: await freePort(), discovery: () => false, internet });
    const bob = await PeerShareNode.open({ home: path.join(tempDir(), 'home'), name: () => 'Bob', defaultPort: await freePort(), discovery: () => false, internet });
    try {
      const shared = await ann.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
      assert.equal(shared.internetError, undefined);
      assert.match(shared.internetKey ?? '', /^[0-9a-f]{64}$/);
      const invite = shared.server.createInvite({ ttlMs: 60_000, uses: 1 });
      assert.equal(parseInvite(invite).dht, shared.internetKey);
      const first = await bob.connect(invite);
      first.close();
      assert.equal(bob.trust.get(ann.identity.peerId)!.dht, shared.internetKey);
      // Ann restarts on another port: the remembered LAN address leads nowhere, the DHT key does.
      await shared.stop();
      const again = await ann.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
      assert.equal(again.internetKey, shared.internetKey, 'the same key across restarts: it comes from the identity');
      const { conn, movedFrom } = await bob.connectTarget(ann.identity.peerId);
      try {
        assert.equal(conn.route, 'dht');
        assert.equal(movedFrom, undefined, 'reached through the DHT is not "moved"');
        const dest = tempDir();
        await download(conn, 'work/notes.bin', dest);
        assert.ok((await fs.readFile(path.join(dest, 'notes.bin'))).equals(bytes));
        assert.equal(bob.trust.get(ann.identity.peerId)!.reachedVia, 'dht');
      } finally {
        conn.close();
      }
    } finally {
      await ann.close();
      await bob.close();
    }
  });

  it('new internet settings stop the DHT node started before and start one with them; turned off, none is left', async () => {
    let settings: { bootstrap: string[]; host: string } | false = { bootstrap, host: '127.0.0.1' };
    const node = await PeerShareNode.open({ home: path.join(tempDir(), 'home'), name: () => 'Cy', defaultPort: await freePort(), discovery: () => false, internet: () => settings });
    try {
      const first = await node.internet();
      assert.ok(first, 'a node starts');
      assert.equal(await node.internet(), first, 'the same settings: the same node');
      // Another node of the same testnet as the bootstrap node: other settings.
      const { host, port } = testnet.nodes[testnet.nodes.length - 1].address();
      settings = { bootstrap: [`${host}:${port}`], host: '127.0.0.1' };
      const second = await node.internet();
      assert.ok(second && second !== first, `another node: ${second === first ? 'the same one' : String(second)}`);
      assert.deepEqual(second.bootstrap, [`${host}:${port}`]);
      assert.notDeepEqual(second.bootstrap, first.bootstrap);
      assert.equal((first as unknown as { closed: boolean }).closed, true, 'the old node was stopped');
      settings = false;
      assert.equal(await node.internet(), undefined);
      assert.equal((second as unknown as { closed: boolean }).closed, true, 'turned off: the node was stopped');
    } finally {
      await node.close();
    }
  });

  it('where the DHT library cannot load, internet reach says why and sharing and connecting on the LAN go on', async () => {
    assert.match((loadHyperDht('peershare-no-such-dht-module') as { reason: string }).reason, /did not load/);
    assert.throws(
      () => DhtNetwork.create({ bootstrap, host: '127.0.0.1', moduleId: 'peershare-no-such-dht-module' }),
      (err: PeerShareError) => err.code === 'CONNECTION_FAILED' && /Internet reach is off/.test(err.message),
    );
    // Without internet reach set up, a share asked to use it runs on the LAN and says why not.
    const folder = path.join(tempDir(), 'lan');
    await fs.mkdir(folder);
    const node = await PeerShareNode.open({ home: path.join(tempDir(), 'home'), name: () => 'Solo', defaultPort: await freePort(), discovery: () => false });
    try {
      const shared = await node.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
      assert.equal(shared.internetError?.code, 'INVALID_ARGUMENT');
      assert.equal(shared.internetKey, undefined);
      assert.equal(parseInvite(shared.server.createInvite()).dht, undefined);
      // An invite that offers the DHT, used with internet reach off: the failure says what was not tried.
      const elsewhere = formatInvite({ peerId: node.identity.peerId, addresses: [`127.0.0.1:${await freePort()}`], dht: 'ab'.repeat(32), token: 'T'.repeat(32) });
      await assert.rejects(node.connect(elsewhere), (err: PeerShareError) => err.code === 'CONNECTION_FAILED' && /also offers internet reach/.test(err.message));
    } finally {
      await node.close();
    }
  });
});

function bobNet(): DhtNetwork {
  return network();
}

async function until(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
