import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DhtNetwork, PeerShareNode, TRUST_FILE, formatDhtKey, formatInvite, parseInvite, type ActiveShare, type Limits, type PeerShareError } from '../../src/core';
import { internetKeyPairSeed } from '../../src/core/transport-dht';
import { freePort, makePeer, tempDir, writeRandomFile } from '../helpers';

/**
 * Round 5 (issue 14): the HyperDHT listener attacked as an outsider on the internet who learned
 * the sharer's DHT key, as a trusted peer turned hostile, and as a local user. Everything runs on
 * a DHT of our own on loopback (hyperdht/testnet), never the public one. The peers' own DHT nodes
 * are on 127.0.0.1: on one loopback interface HyperDHT's answers do not reach a node bound to
 * another 127.x address (measured here with HyperDHT alone, no PeerShare), so a round trip needs
 * both ends there. Strangers whose floods need no answer come from 127.0.0.40 and up, so the
 * per-source limits see them as other machines, and the sharer's UDP sockets are counted from the
 * process itself (/proc).
 */

interface Testnet {
  bootstrap: { host: string; port: number }[];
  destroy(): Promise<void>;
}
interface RawStream extends NodeJS.EventEmitter {
  write(data: Buffer | string): boolean;
  destroy(): void;
  readonly destroyed: boolean;
}
interface RawDht {
  connect(key: Buffer): RawStream;
  findPeer(key: Buffer): AsyncIterable<{ peer: { publicKey: Buffer } }>;
  fullyBootstrapped(): Promise<void>;
  destroy(options?: { force?: boolean }): Promise<void>;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const createTestnet = require('hyperdht/testnet') as (size: number, options: { host: string }) => Promise<Testnet>;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const HyperDht = require('hyperdht') as new (options: Record<string, unknown>) => RawDht;

const SHARER_HOST = '127.0.0.1';
const TRUSTED_HOST = '127.0.0.1';
const attackerHost = (i: number): string => `127.0.0.${40 + i}`;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

let testnet: Testnet;
let bootstrap: string[];
const cleanup: (() => Promise<unknown>)[] = [];

before(async () => {
  testnet = await createTestnet(3, { host: '127.0.0.1' });
  bootstrap = testnet.bootstrap.map((node) => `${node.host}:${node.port}`);
});

after(async () => {
  for (const step of cleanup.reverse()) await step().catch(() => undefined);
  await testnet.destroy();
});

/** A PeerShare installation with internet reach on the test DHT, its DHT node bound to `host`. */
async function installation(name: string, host: string, limits: Partial<Limits> = {}): Promise<PeerShareNode> {
  const node = await PeerShareNode.open({
    home: path.join(tempDir(), 'home'),
    name: () => name,
    defaultPort: await freePort(),
    discovery: () => false,
    limits: () => limits,
    internet: () => ({ bootstrap, host }),
  });
  cleanup.push(() => node.close());
  return node;
}

/** A raw HyperDHT node (no PeerShare in it), as an attacker runs one. */
async function rawDht(host: string): Promise<RawDht> {
  const node = new HyperDht({ bootstrap, host, ephemeral: true });
  cleanup.push(() => node.destroy({ force: true }));
  await node.fullyBootstrapped();
  return node;
}

/** A sharer with internet reach and a trusted peer paired with it through the DHT alone (an invite without its LAN address). */
async function sharerAndFriend(limits: Partial<Limits> = {}): Promise<{ ann: PeerShareNode; bob: PeerShareNode; shared: ActiveShare; root: string }> {
  const folder = path.join(tempDir(), 'project');
  await writeRandomFile(path.join(folder, 'notes.txt'), 1000);
  const ann = await installation('Ann', SHARER_HOST, limits);
  const bob = await installation('Bob', TRUSTED_HOST);
  const shared = await ann.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
  assert.equal(shared.internetError, undefined);
  const invite = parseInvite(shared.server.createInvite({ ttlMs: 60_000, uses: 1 }));
  const first = await bob.connect(formatInvite({ ...invite, addresses: [] }));
  assert.equal(first.route, 'dht');
  first.close();
  return { ann, bob, shared, root: 'project' };
}

/** The trusted peer connects anew (the DHT being its only way) and lists: how long that took. */
async function trustedTry(bob: PeerShareNode, ann: PeerShareNode, root: string): Promise<number> {
  const started = performance.now();
  const conn = await bob.connectToPeer(ann.identity.peerId, { lookNearby: false });
  try {
    assert.equal(conn.route, 'dht');
    assert.deepEqual((await conn.list(root)).map((e) => e.name), ['notes.txt']);
  } finally {
    conn.close();
  }
  return performance.now() - started;
}

/** UDP sockets this process holds on `host` (the process is the oracle: /proc/self/fd and /proc/self/net/udp). */
function udpSocketsOn(host: string): number {
  const hex = host
    .split('.')
    .map((part) => Number(part).toString(16).padStart(2, '0'))
    .reverse()
    .join('')
    .toUpperCase();
  const ours = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const inode = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`))?.[1];
      if (inode) ours.add(inode);
    } catch {
      // closed while we looked
    }
  }
  let count = 0;
  for (const line of readFileSync('/proc/self/net/udp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length > 9 && fields[1].startsWith(`${hex}:`) && ours.has(fields[9])) count++;
  }
  return count;
}

async function until(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await sleep(50);
  }
}

/**
 * Strangers on `sources` addresses keep `slots` DHT connections each going to `key`: each waits
 * for its stream to open and then does `onOpen` with it (by default nothing: a Noise stream that
 * never starts TLS), and is re-opened when it closes.
 */
function flood(
  nodes: RawDht[],
  key: Buffer,
  slots: number,
  onOpen: (stream: RawStream) => void = () => undefined,
): { stop(): Promise<void>; attempts: () => number; opened: () => number } {
  let on = true;
  let attempts = 0;
  let opened = 0;
  const one = (node: RawDht): Promise<void> =>
    new Promise((resolve) => {
      attempts++;
      const stream = node.connect(key);
      stream.on('error', () => undefined);
      stream.on('data', () => undefined);
      stream.once('open', () => {
        opened++;
        onOpen(stream);
      });
      stream.once('close', () => resolve());
    });
  const loops = nodes.flatMap((node) =>
    Array.from({ length: slots }, async () => {
      while (on) {
        await one(node);
        await sleep(20);
      }
    }),
  );
  return {
    attempts: () => attempts,
    opened: () => opened,
    stop: async () => {
      on = false;
      await Promise.all(nodes.map((n) => n.destroy({ force: true })));
      await Promise.race([Promise.all(loops), sleep(5000)]);
    },
  };
}

describe('many unauthenticated DHT connections at once', () => {
  it('hundreds of Noise streams that never start TLS: the trusted peer gets in every time, the sharer holds a bounded number of sockets per stranger, and lets them all go after', async () => {
    const perSource = 4;
    const { ann, bob, shared, root } = await sharerAndFriend({ maxUnauthenticatedPerSource: perSource });
    const baseline = udpSocketsOn(SHARER_HOST);
    const rssBefore = process.memoryUsage().rss;
    const sources = 4;
    const attackers = await Promise.all(Array.from({ length: sources }, (_, i) => rawDht(attackerHost(i))));
    const attack = flood(attackers, Buffer.from(shared.internetKey!, 'hex'), 40);
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, udpSocketsOn(SHARER_HOST))), 100);
    const times: number[] = [];
    try {
      await until(() => attack.attempts() >= 300 && attack.opened() >= 20, 60_000);
      for (let i = 0; i < 5; i++) {
        times.push(await trustedTry(bob, ann, root));
        await sleep(300);
      }
    } finally {
      clearInterval(sampler);
      await attack.stop();
    }
    const rssPeak = process.memoryUsage().rss;
    console.log(
      `# figure: DHT flood, ${attack.attempts()} stranger handshakes (${attack.opened()} streams opened) from ${sources} addresses; sharer UDP sockets ${baseline} before, at most ${peak} during; ` +
        `trusted peer in ${times.map((t) => t.toFixed(0)).join(', ')} ms; refused by the DHT firewall or the TLS rate ${shared.server.stats.handshakesRateLimited}, ` +
        `evicted ${shared.server.stats.unauthenticatedEvicted}; process RSS ${(rssBefore / 2 ** 20).toFixed(0)} -> ${(rssPeak / 2 ** 20).toFixed(0)} MiB (attackers included)`,
    );
    // Each handshake HyperDHT works on holds a UDP socket for hole punching: at most `perSource`
    // per stranger's address, plus what the trusted peer's connections hold at both ends (both
    // on 127.0.0.1) and the DHT's own queries. Without the cap: 132 here.
    assert.ok(peak - baseline <= perSource * sources + 16, `the sharer held ${peak - baseline} extra sockets`);
    assert.ok(shared.server.stats.handshakesRateLimited > 0, 'strangers over their share were refused');
    // Once the strangers are gone, every socket and stream of theirs is let go (HyperDHT keeps a handshake 10 s at most).
    await until(() => udpSocketsOn(SHARER_HOST) <= baseline, 30_000);
    assert.ok((await trustedTry(bob, ann, root)) >= 0);
  });

  it('a TLS ClientHello dripped a byte at a time inside the stream is cut at the handshake deadline, bytes or not, and never reaches the core', async () => {
    const { shared } = await sharerAndFriend({ handshakeTimeoutMs: 1500 });
    const accepted = shared.server.stats.connectionsAccepted;
    const attacker = await rawDht('127.0.0.1');
    const stream = attacker.connect(Buffer.from(shared.internetKey!, 'hex'));
    stream.on('error', () => undefined);
    stream.on('data', () => undefined);
    await new Promise<void>((resolve, reject) => {
      stream.once('open', () => resolve());
      stream.once('close', () => reject(new Error('closed before it opened')));
    });
    // A record header announcing 512 bytes, then one byte every 100 ms: never idle, never done.
    const hello = Buffer.concat([Buffer.from('1603010200', 'hex'), Buffer.alloc(512, 1)]);
    let sent = 0;
    const opened = performance.now();
    const drip = setInterval(() => {
      if (!stream.destroyed && sent < hello.length) stream.write(hello.subarray(sent, ++sent));
    }, 100);
    await new Promise<void>((resolve) => stream.once('close', () => resolve()));
    clearInterval(drip);
    const lasted = performance.now() - opened;
    console.log(`# figure: a dripping ClientHello inside a DHT stream was cut after ${lasted.toFixed(0)} ms (deadline 1500 ms), ${sent} bytes in`);
    assert.ok(sent < hello.length, 'cut before the drip was done');
    assert.ok(sent >= 5, 'it was sending all along');
    assert.equal(shared.server.stats.connectionsAccepted, accepted, 'no TLS handshake completed');
  });

  it('hundreds of streams opened and dropped at once, and streams cut mid-ClientHello, crash nothing and leak nothing: the trusted peer still gets in', async () => {
    const { ann, bob, shared, root } = await sharerAndFriend();
    const baseline = udpSocketsOn(SHARER_HOST);
    const key = Buffer.from(shared.internetKey!, 'hex');
    const attackers = await Promise.all(Array.from({ length: 3 }, (_, i) => rawDht(attackerHost(20 + i))));
    const half = Buffer.concat([Buffer.from('160301020000', 'hex'), Buffer.alloc(100, 7)]);
    let cut = 0;
    // Each stream, once open, is either destroyed at once or sent half a ClientHello and destroyed.
    const attack = flood(attackers, key, 20, (stream) => {
      if (cut++ % 2 === 0) return stream.destroy();
      stream.write(half);
      setTimeout(() => stream.destroy(), 10);
    });
    await until(() => attack.attempts() >= 300 && attack.opened() >= 30, 90_000).finally(() => attack.stop());
    await until(() => udpSocketsOn(SHARER_HOST) <= baseline, 30_000);
    assert.ok((await trustedTry(bob, ann, root)) >= 0);
  });
});

describe('a DHT key alone never makes anyone trusted', () => {
  it("a stranger replaying a used invite's token over the DHT is refused, and the sharer's trust file does not change", async () => {
    const folder = path.join(tempDir(), 'shared');
    await writeRandomFile(path.join(folder, 'a.txt'), 10);
    const ann = await installation('Ann', SHARER_HOST);
    const shared = await ann.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
    const invite = shared.server.createInvite({ ttlMs: 60_000, uses: 1 });
    const bob = await installation('Bob', TRUSTED_HOST);
    (await bob.connect(invite)).close();
    const trustPath = path.join(ann.identity.home, TRUST_FILE);
    const annTrust = await fs.readFile(trustPath, 'utf8');
    // Eve saw the invite over a shoulder: over the DHT alone, then over both routes.
    const eve = await installation('Eve', '127.0.0.1');
    const noLan = formatInvite({ ...parseInvite(invite), addresses: [] });
    for (const attempt of [noLan, invite]) {
      await assert.rejects(eve.connect(attempt), (err: PeerShareError) => err.code === 'TOKEN_INVALID', attempt);
    }
    assert.equal(await fs.readFile(trustPath, 'utf8'), annTrust, 'the trust file is byte for byte the same');
    assert.ok(!ann.trust.allowsReader(eve.identity.peerId));
  });

  it("an invite whose dht= names another sharer's key fails PEER_MISMATCH before any hello, and a wrong LAN peer loses to the right DHT one", async () => {
    const folder = path.join(tempDir(), 'shared');
    await writeRandomFile(path.join(folder, 'a.txt'), 10);
    const ann = await installation('Ann', SHARER_HOST);
    const annShare = await ann.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
    // Eve is a real PeerShare sharer with internet reach, on the LAN and the DHT.
    const eve = await installation('Eve', '127.0.0.1');
    const eveShare = await eve.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
    const eveTrust = path.join(eve.identity.home, TRUST_FILE);
    const eveTrustBefore = await fs.readFile(eveTrust, 'utf8').catch(() => 'none');
    const real = parseInvite(annShare.server.createInvite({ ttlMs: 60_000, uses: 2 }));
    const bob = await installation('Bob', TRUSTED_HOST);

    // Ann's ID and token, Eve's DHT key, no LAN address: Eve is reached, and refused before a byte of hello.
    const swapped = formatInvite({ ...real, addresses: [], dht: eveShare.internetKey });
    await assert.rejects(bob.connect(swapped), (err: PeerShareError) => err.code === 'PEER_MISMATCH' && /DHT/.test(err.message));
    assert.equal(bob.trust.get(ann.identity.peerId), undefined, 'nothing remembered');
    assert.equal(eveShare.server.connectedPeers().length, 0, 'no hello reached Eve');

    // Ann's ID, token and DHT key, but a LAN address where Eve answers: the DHT route proves Ann and is kept.
    const lanIsEve = formatInvite({ ...real, addresses: eveShare.server.addresses() });
    const conn = await bob.connect(lanIsEve);
    try {
      assert.equal(conn.peerId, ann.identity.peerId);
      assert.equal(conn.route, 'dht');
    } finally {
      conn.close();
    }
    const remembered = bob.trust.get(ann.identity.peerId)!;
    assert.equal(remembered.dht, annShare.internetKey);
    assert.equal(remembered.reachedVia, 'dht');
    assert.deepEqual(remembered.addresses, [], "Eve's address is not remembered as Ann's");
    assert.equal(await fs.readFile(eveTrust, 'utf8').catch(() => 'none'), eveTrustBefore, 'Eve learned no pairing');
  });

  it('the DHT key is not derivable from what the LAN sees: a domain-separated HKDF of the private key, in no certificate, ID or announcement', async () => {
    const peer = await makePeer();
    const seed = internetKeyPairSeed(peer.identity);
    assert.equal(seed.length, 32);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { keyPair } = require('hyperdht') as { keyPair(seed: Buffer): { publicKey: Buffer } };
    const dhtKey = keyPair(seed).publicKey;
    const certKey = Buffer.from(peer.identity.certDer);
    const seen = [
      certKey,
      peer.identity.fingerprint,
      Buffer.from(peer.identity.peerId),
      Buffer.from(peer.identity.certPem),
      // What an announcement carries (discovery.ts): ID, name, port.
      Buffer.from(JSON.stringify({ t: 'announce', v: 2, id: peer.identity.peerId, name: 'Ann', port: 47474 })),
    ];
    for (const bytes of seen) {
      for (const secret of [seed, dhtKey, Buffer.from(dhtKey.toString('hex')), Buffer.from(formatDhtKey(dhtKey.toString('hex')))]) {
        assert.equal(Buffer.from(bytes).indexOf(secret), -1);
      }
    }
    // Seeds made from public things instead would give other keys.
    const { createHash } = await import('node:crypto');
    for (const bytes of seen) assert.ok(!keyPair(createHash('sha256').update(bytes).digest()).publicKey.equals(dhtKey));
  });
});

describe('happy eyeballs and the remembered route', () => {
  it("the trusted peer's remembered LAN address taken by another peer: the DHT proves the right one, and the trust file keeps no stranger's address or key", async () => {
    const folder = path.join(tempDir(), 'shared');
    await writeRandomFile(path.join(folder, 'a.txt'), 10);
    const ann = await installation('Ann', SHARER_HOST);
    const first = await ann.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
    const lanAddress = `127.0.0.1:${first.port}`;
    const invite = parseInvite(first.server.createInvite({ ttlMs: 60_000, uses: 2 }));
    const bob = await installation('Bob', TRUSTED_HOST);
    // Paired on the LAN first, then with the whole invite: the trust file has Ann's address and DHT key.
    (await bob.connect(formatInvite({ ...invite, dht: undefined }))).close();
    (await bob.connect(formatInvite(invite))).close();
    assert.deepEqual(bob.trust.get(ann.identity.peerId)!.addresses, [lanAddress]);
    assert.equal(bob.trust.get(ann.identity.peerId)!.dht, first.internetKey);
    // Ann restarts elsewhere; Eve, on the same machine, takes Ann's old port and answers there first.
    await first.stop();
    const eve = await installation('Eve', '127.0.0.1');
    const eveShare = await eve.share({ folders: [folder], host: '127.0.0.1', port: first.port, internet: true });
    assert.equal(eveShare.port, first.port);
    await ann.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
    const eveTrust = path.join(eve.identity.home, TRUST_FILE);
    const eveTrustBefore = await fs.readFile(eveTrust, 'utf8').catch(() => 'none');
    const conn = await bob.connectToPeer(ann.identity.peerId, { lookNearby: false });
    try {
      assert.equal(conn.peerId, ann.identity.peerId);
      assert.equal(conn.route, 'dht');
    } finally {
      conn.close();
    }
    const remembered = bob.trust.get(ann.identity.peerId)!;
    assert.deepEqual(remembered.addresses, [lanAddress], 'nothing learned from the address where Eve answered');
    assert.equal(remembered.dht, first.internetKey);
    assert.equal(remembered.reachedVia, 'dht');
    assert.equal(eveShare.server.connectedPeers().length, 0, 'no hello reached Eve');
    assert.equal(await fs.readFile(eveTrust, 'utf8').catch(() => 'none'), eveTrustBefore);
  });
});

describe('errors from the DHT layer', () => {
  it('a stranger that completes TLS over the DHT and then sends a huge frame header and garbage is closed, and the sharer serves on', async () => {
    const { ann, bob, shared, root } = await sharerAndFriend();
    const strangerNet = DhtNetwork.create({ bootstrap, host: '127.0.0.1' });
    cleanup.push(() => strangerNet.close());
    for (let i = 0; i < 5; i++) {
      const stranger = await makePeer();
      const stream = await strangerNet.dial(shared.internetKey!, { identity: stranger.identity, timeoutMs: 20_000 });
      const closed = new Promise<void>((resolve) => stream.stream.once('close', () => resolve()));
      stream.stream.on('error', () => undefined);
      stream.stream.resume();
      stream.stream.write(Buffer.concat([Buffer.alloc(16, 0xff), randomBytes(64 * 1024)]));
      if (i % 2 === 1) stream.stream.destroy(); // and some hang up at once
      await closed;
    }
    assert.ok((await trustedTry(bob, ann, root)) >= 0);
  });
});

describe('Stop Sharing and the DHT', () => {
  it("stop cuts the open DHT connection, takes the key off the DHT, and a later connection fails; the sharer's process goes on", async () => {
    const { ann, bob, shared, root } = await sharerAndFriend();
    const key = Buffer.from(shared.internetKey!, 'hex');
    const open = await bob.connectToPeer(ann.identity.peerId, { lookNearby: false });
    assert.equal(open.route, 'dht');
    const looker = await rawDht('127.0.0.1');
    const announced = async (): Promise<boolean> => {
      for await (const found of looker.findPeer(key)) if (found.peer?.publicKey?.equals(key)) return true;
      return false;
    };
    assert.ok(await announced(), 'listed while sharing');
    await shared.stop();
    await until(() => open.closed, 5_000);
    assert.equal(await announced(), false, 'no longer announced');
    await assert.rejects(
      bob.connectToPeer(ann.identity.peerId, { lookNearby: false }),
      (err: PeerShareError) => ['CONNECTION_FAILED', 'TIMEOUT', 'UNKNOWN_PEER'].includes(err.code),
    );
    // Sharing again listens again, on the same key.
    const again = await ann.share({ folders: [shared.share.roots[0].realPath], host: '127.0.0.1', port: 0, internet: true });
    assert.equal(again.internetKey, shared.internetKey);
    assert.ok((await trustedTry(bob, ann, root)) >= 0);
  });
  it("Stop Sharing where the DHT's nodes are gone: streams are cut at once, not after the seconds it takes to leave the DHT", async () => {
    // A DHT of its own, whose nodes vanish before the stop: unannouncing waits on them.
    const lonely = await createTestnet(3, { host: '127.0.0.1' });
    const lonelyBootstrap = lonely.bootstrap.map((node) => `${node.host}:${node.port}`);
    const folder = path.join(tempDir(), 'shared');
    await writeRandomFile(path.join(folder, 'a.txt'), 10);
    const ann = await PeerShareNode.open({ home: path.join(tempDir(), 'home'), name: () => 'Ann', defaultPort: await freePort(), discovery: () => false, internet: () => ({ bootstrap: lonelyBootstrap, host: SHARER_HOST }) });
    cleanup.push(() => ann.close());
    const shared = await ann.share({ folders: [folder], host: '127.0.0.1', port: 0, internet: true });
    const stranger = new HyperDht({ bootstrap: lonelyBootstrap, host: '127.0.0.1', ephemeral: true });
    cleanup.push(() => stranger.destroy({ force: true }));
    const stream = stranger.connect(Buffer.from(shared.internetKey!, 'hex'));
    stream.on('error', () => undefined);
    await new Promise<void>((resolve) => stream.once('open', () => resolve()));
    let cut = false;
    let stopped = false;
    let cutBeforeStopped: boolean | undefined;
    stream.once('close', () => {
      cut = true;
      cutBeforeStopped = !stopped;
    });
    await lonely.destroy();
    const started = performance.now();
    await shared.stop();
    stopped = true;
    console.log(`# figure: Stop Sharing with the DHT's nodes gone took ${(performance.now() - started).toFixed(0)} ms`);
    await until(() => cut, 10_000);
    assert.equal(cutBeforeStopped, true, "the stranger's stream was cut before leaving the DHT was over");
  });
});
