import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as readline from 'node:readline';
import { before, describe, it } from 'node:test';
import {
  DISCOVERY_GROUP,
  Discovery,
  PeerServer,
  TRUST_FILE,
  connectToKnownPeer,
  listenOnPort,
  peerIdOfCert,
  type Identity,
} from '../../src/core';
import { TLS_OPTIONS } from '../../src/core/tls-options';
import { connectWithInvite, makePeer, options, rememberedAddresses, startSharer, tempDir, trustFile, type Sharer, type TestPeer } from '../helpers';
import { waitFor } from '../hostile';

/*
 * An outsider who knows a trusted peer's ID (IDs are public: they are announced) attacks the way
 * a client finds that peer again (reach.ts): squatting the port it had, claiming its ID in
 * announcements, tarpits, malformed packets. Real TLS, UDP multicast and sockets on loopback; a
 * second loopback address (127.0.0.2) stands for another machine on the LAN. The oracle is the
 * trust file: it may only ever list addresses where the pinned certificate answered.
 */

// Each test uses its own discovery port, so parallel test files and other runs do not mix.
let nextDiscoveryPort = 49_700 + Math.floor(Math.random() * 1000);

/** The attacker's machine on the LAN. */
const ELSEWHERE = '127.0.0.2';

function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

interface Listener {
  port: number;
  address: string;
  /** TCP connections accepted. */
  connections(): number;
  /** Those still open. */
  open(): number;
  close(): Promise<void>;
}

/** A plain TCP listener on `host` that counts connections and either drops them at once or holds them, never answering (a tarpit). */
async function tcpListener(host: string, behaviour: 'drop' | 'tarpit', port = 0, openTogether?: { now: number; most: number }): Promise<Listener> {
  let count = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    count++;
    socket.on('error', () => undefined);
    if (behaviour === 'drop') return socket.destroy();
    // Reads (and drops) the ClientHello, never answers: reading is how the client's close is seen.
    socket.resume();
    sockets.add(socket);
    if (openTogether) openTogether.most = Math.max(openTogether.most, ++openTogether.now);
    socket.on('close', () => {
      sockets.delete(socket);
      if (openTogether) openTogether.now--;
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const bound = (server.address() as net.AddressInfo).port;
  return {
    port: bound,
    address: `${host}:${bound}`,
    connections: () => count,
    open: () => sockets.size,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Someone else's TLS server (its own certificate) that takes whatever a client sends after the handshake, and records it. */
async function squatter(identity: Identity, host: string, port: number): Promise<Listener & { bytesReceived(): number; clientIds(): string[] }> {
  let count = 0;
  let bytes = 0;
  const clientIds: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = tls.createServer({ ...TLS_OPTIONS, key: identity.keyPem, cert: identity.certPem, requestCert: true, rejectUnauthorized: false }, (socket) => {
    const cert = socket.getPeerCertificate(false);
    if (cert?.raw) clientIds.push(peerIdOfCert(cert.raw));
    socket.on('data', (chunk: Buffer) => (bytes += chunk.length));
  });
  server.on('connection', (socket: net.Socket) => {
    count++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const bound = (server.address() as net.AddressInfo).port;
  return {
    port: bound,
    address: `${host}:${bound}`,
    connections: () => count,
    open: () => sockets.size,
    bytesReceived: () => bytes,
    clientIds: () => [...clientIds],
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A UDP socket on `host` that sends announcements (or anything) to the discovery group, as any program on that machine may. */
async function announcer(host: string, discoveryPort: number): Promise<{ send(packet: string | Buffer): void; claim(id: string, name: string, port: number): void; close(): void }> {
  const socket = dgram.createSocket({ type: 'udp4' });
  await new Promise<void>((resolve) => socket.bind(0, host, () => resolve()));
  socket.setMulticastInterface('127.0.0.1');
  const send = (packet: string | Buffer): void => socket.send(packet, discoveryPort, DISCOVERY_GROUP);
  return {
    send,
    claim: (id, name, port) => send(JSON.stringify({ t: 'announce', v: 1, id, name, port })),
    close: () => socket.close(),
  };
}

async function loopbackDiscovery(selfId: string, port: number): Promise<Discovery> {
  const discovery = new Discovery({ selfId, interfaces: ['127.0.0.1'], port });
  await discovery.start();
  return discovery;
}

/** A sharer the client paired with by invite; the client remembers it at its first address. */
async function pairedSharer(): Promise<{ sharer: Sharer; client: TestPeer; firstAddress: string }> {
  const sharer = await startSharer([tempDir()]);
  const { conn, client } = await connectWithInvite(sharer.invite);
  conn.close();
  return { sharer, client, firstAddress: sharer.address };
}

/** The same sharer (same certificate and share), stopped and started again on `host`, by listenOnPort's rule with `defaultPort`. */
async function restart(sharer: Sharer, host: string, defaultPort: number): Promise<{ server: PeerServer; port: number; defaultPortInUse?: number }> {
  await sharer.server.close();
  const server = new PeerServer({ identity: sharer.identity, trust: sharer.trust, share: sharer.share, name: 'sharer' });
  const chosen = await listenOnPort(server, host, { defaultPort });
  return { server, ...chosen };
}

describe('reach attacks: someone squats the port a trusted peer had', () => {
  it('a squatter on the default port the sharer fell back from does not end the search: the sharer is found by its announcements, nothing is sent to the squatter, and only addresses that showed the pinned certificate are remembered', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const id = sharer.identity.peerId;
    // The sharer had its default port (here: its first port). Another local user takes it while the sharer is stopped.
    const defaultPort = portOf(firstAddress);
    await sharer.server.close();
    const other = await squatter((await makePeer()).identity, '127.0.0.1', defaultPort);
    const restarted = await restart(sharer, '127.0.0.1', defaultPort);
    assert.equal(restarted.defaultPortInUse, defaultPort, 'the sharer fell back and says so');
    const discoveryPort = nextDiscoveryPort++;
    const announcing = await loopbackDiscovery(id, discoveryPort);
    announcing.announce({ name: 'sharer', port: restarted.port });
    try {
      const conn = await connectToKnownPeer(
        options(client, id, { defaultPort, discovery: { interfaces: ['127.0.0.1'], port: discoveryPort }, limits: { announcementWaitMs: 10_000 } }),
      );
      assert.equal(conn.address, `127.0.0.1:${restarted.port}`);
      assert.equal(conn.peerId, id);
      conn.close();
      assert.deepEqual(await rememberedAddresses(client, id), [`127.0.0.1:${restarted.port}`, firstAddress]);
      assert.equal(other.connections(), 1, 'the squatter was reached once (remembered address = default port)');
      assert.equal(other.bytesReceived(), 0, 'not one byte after the handshake: no hello, no name, no token');
    } finally {
      await announcing.stop();
      await restarted.server.close();
      await other.close();
    }
  });

  it('with nowhere else to look, a squatter at the remembered port is named as something else answering there (CONNECTION_FAILED, so the editor keeps re-checking), not as an invite mismatch; the trust file is unchanged', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const id = sharer.identity.peerId;
    await sharer.server.close();
    const other = await squatter((await makePeer()).identity, '127.0.0.1', portOf(firstAddress));
    const nobodyAtDefault = await tcpListener('127.0.0.1', 'drop');
    const before = await trustFile(client);
    try {
      await assert.rejects(connectToKnownPeer(options(client, id, { defaultPort: nobodyAtDefault.port, discovery: false })), (err: Error & { code?: string; detail?: string }) => {
        assert.equal(err.code, 'CONNECTION_FAILED');
        assert.equal(
          err.message,
          `sharer did not answer at ${firstAddress}, 127.0.0.1:${nobodyAtDefault.port}. Something else answers at ${firstAddress} now (another program, or another PeerShare). Is it sharing? If it is, it may have a new address: ask for a new invite.`,
        );
        assert.match(err.detail ?? '', /presented/, 'the certificate seen there is in the detail, for the log');
        return true;
      });
      assert.equal(nobodyAtDefault.connections(), 1, 'the default port was still tried');
      assert.equal(other.bytesReceived(), 0);
      assert.equal(await trustFile(client), before, 'the trust file is byte for byte what it was');
    } finally {
      await other.close();
      await nobodyAtDefault.close();
    }
  });

  it('a squatter at the first remembered address does not hide the peer at the second', async () => {
    const { sharer, client } = await pairedSharer();
    const id = sharer.identity.peerId;
    const other = await squatter((await makePeer()).identity, '127.0.0.1', 0);
    await client.trust.update(id, { addresses: [other.address, sharer.address] });
    try {
      const conn = await connectToKnownPeer(options(client, id, { discovery: false }));
      assert.equal(conn.address, sharer.address);
      conn.close();
      assert.deepEqual(await rememberedAddresses(client, id), [sharer.address, other.address]);
      assert.equal(other.bytesReceived(), 0);
    } finally {
      await other.close();
      await sharer.server.close();
    }
  });
});

describe('reach attacks: announcements claiming a trusted peer’s ID', () => {
  it('claims from another machine cannot crowd out the sharer: an address at a host it was remembered at is among the tries, whatever the claims are called', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const id = sharer.identity.peerId;
    const discoveryPort = nextDiscoveryPort++;
    const browsing = await loopbackDiscovery(client.identity.peerId, discoveryPort);
    const nobodyAtDefault = await tcpListener('127.0.0.1', 'drop');
    const restarted = await restart(sharer, '127.0.0.1', nobodyAtDefault.port);
    const announcing = await loopbackDiscovery(id, discoveryPort);
    const decoys = await Promise.all(Array.from({ length: 6 }, () => tcpListener(ELSEWHERE, 'drop')));
    const attacker = await announcer(ELSEWHERE, discoveryPort);
    try {
      // Named to sort first; more claims than the client tries.
      for (const decoy of decoys) attacker.claim(id, '', decoy.port);
      announcing.announce({ name: 'sharer', port: restarted.port });
      await waitFor(() => browsing.list().filter((p) => p.id === id).length === decoys.length + 1);
      const conn = await connectToKnownPeer(options(client, id, { defaultPort: nobodyAtDefault.port, discovery: browsing }));
      assert.equal(conn.address, `127.0.0.1:${restarted.port}`);
      conn.close();
      assert.ok(decoys.reduce((sum, d) => sum + d.connections(), 0) <= 3, 'at most maxAnnouncedAddressesTried tries in all, the sharer’s one of them');
      assert.deepEqual(await rememberedAddresses(client, id), [`127.0.0.1:${restarted.port}`, firstAddress]);
    } finally {
      attacker.close();
      await browsing.stop();
      await announcing.stop();
      await restarted.server.close();
      await Promise.all([...decoys, nobodyAtDefault].map((d) => d.close()));
    }
  });

  it('claims from one other machine get one try per round: a sharer that moved to a new host is still found among them', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const id = sharer.identity.peerId;
    const discoveryPort = nextDiscoveryPort++;
    const browsing = await loopbackDiscovery(client.identity.peerId, discoveryPort);
    const nobodyAtDefault = await tcpListener('127.0.0.1', 'drop');
    // Its machine got a new address (DHCP): the remembered host is of no help.
    const newHost = '127.0.0.4';
    const restarted = await restart(sharer, newHost, nobodyAtDefault.port);
    const decoys = await Promise.all(Array.from({ length: 6 }, () => tcpListener(ELSEWHERE, 'drop')));
    const attacker = await announcer(ELSEWHERE, discoveryPort);
    const real = await announcer(newHost, discoveryPort);
    try {
      for (const decoy of decoys) attacker.claim(id, '', decoy.port);
      real.claim(id, 'sharer', restarted.port);
      await waitFor(() => browsing.list().filter((p) => p.id === id).length === decoys.length + 1);
      const conn = await connectToKnownPeer(options(client, id, { defaultPort: nobodyAtDefault.port, discovery: browsing }));
      assert.equal(conn.address, `${newHost}:${restarted.port}`);
      conn.close();
      assert.ok(decoys.reduce((sum, d) => sum + d.connections(), 0) <= 3, 'the other machine had one try, then the sharer’s turn came, within the limit of 4');
      assert.deepEqual(await rememberedAddresses(client, id), [`${newHost}:${restarted.port}`, firstAddress]);
    } finally {
      attacker.close();
      real.close();
      await browsing.stop();
      await restarted.server.close();
      await Promise.all([...decoys, nobodyAtDefault].map((d) => d.close()));
    }
  });

  it('tarpits (TCP that never answers TLS) claimed for the ID: at most maxAnnouncedAddressesTried of them, tried side by side (so the look takes one handshakeTimeoutMs, not one each), every socket closed, and the look ends', async (t) => {
    const { sharer, client } = await pairedSharer();
    const id = sharer.identity.peerId;
    await sharer.server.close();
    const discoveryPort = nextDiscoveryPort++;
    const browsing = await loopbackDiscovery(client.identity.peerId, discoveryPort);
    const nobodyAtDefault = await tcpListener('127.0.0.1', 'drop');
    const openTogether = { now: 0, most: 0 };
    const tarpits = await Promise.all(Array.from({ length: 6 }, () => tcpListener(ELSEWHERE, 'tarpit', 0, openTogether)));
    const attacker = await announcer(ELSEWHERE, discoveryPort);
    const limits = { handshakeTimeoutMs: 1000, announcementWaitMs: 200, maxAnnouncedAddressesTried: 4 };
    try {
      for (const tarpit of tarpits) attacker.claim(id, '', tarpit.port);
      await waitFor(() => browsing.list().filter((p) => p.id === id).length === tarpits.length);
      const started = performance.now();
      await assert.rejects(connectToKnownPeer(options(client, id, { defaultPort: nobodyAtDefault.port, discovery: browsing, limits })), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'CONNECTION_FAILED', 'the remembered address’s failure, not a tarpit’s');
        return true;
      });
      t.diagnostic(`look with ${limits.maxAnnouncedAddressesTried} tarpits at ${limits.handshakeTimeoutMs} ms each took ${Math.round(performance.now() - started)} ms`);
      assert.equal(tarpits.reduce((sum, p) => sum + p.connections(), 0), limits.maxAnnouncedAddressesTried);
      assert.ok(tarpits.every((p) => p.connections() <= 1), 'none twice');
      assert.equal(openTogether.most, limits.maxAnnouncedAddressesTried, 'all held open at once: no tarpit waits for another');
      await waitFor(() => tarpits.every((p) => p.open() === 0));
    } finally {
      attacker.close();
      await browsing.stop();
      await Promise.all([...tarpits, nobodyAtDefault].map((d) => d.close()));
    }
  });

  it('side-by-side tries: once one works the others are cancelled at once (a tarpit holds nothing open), and the connection found still ends when the caller cancels', async () => {
    const { sharer, client } = await pairedSharer();
    const id = sharer.identity.peerId;
    const discoveryPort = nextDiscoveryPort++;
    const browsing = await loopbackDiscovery(client.identity.peerId, discoveryPort);
    const nobodyAtDefault = await tcpListener('127.0.0.1', 'drop');
    const restarted = await restart(sharer, '127.0.0.1', nobodyAtDefault.port);
    const announcing = await loopbackDiscovery(id, discoveryPort);
    const tarpit = await tcpListener(ELSEWHERE, 'tarpit');
    const attacker = await announcer(ELSEWHERE, discoveryPort);
    const abort = new AbortController();
    try {
      attacker.claim(id, '', tarpit.port);
      announcing.announce({ name: 'sharer', port: restarted.port });
      await waitFor(() => browsing.list().filter((p) => p.id === id).length === 2);
      const conn = await connectToKnownPeer(options(client, id, { defaultPort: nobodyAtDefault.port, discovery: browsing, signal: abort.signal }));
      assert.equal(conn.address, `127.0.0.1:${restarted.port}`);
      // Well before the tarpit's handshake timeout (10 s): the loser was cancelled, not left to time out.
      await waitFor(() => tarpit.connections() === 1 && tarpit.open() === 0, 5000);
      assert.equal(conn.closed, false);
      abort.abort();
      assert.equal(conn.closed, true, 'cancelled with the caller');
    } finally {
      attacker.close();
      await browsing.stop();
      await announcing.stop();
      await restarted.server.close();
      await Promise.all([tarpit, nobodyAtDefault].map((d) => d.close()));
    }
  });

  it('malformed, oversized and hostile announcements neither crash nor stall the look; the real one still works', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const id = sharer.identity.peerId;
    const discoveryPort = nextDiscoveryPort++;
    const browsing = await loopbackDiscovery(client.identity.peerId, discoveryPort);
    const nobodyAtDefault = await tcpListener('127.0.0.1', 'drop');
    const restarted = await restart(sharer, '127.0.0.1', nobodyAtDefault.port);
    const attacker = await announcer(ELSEWHERE, discoveryPort);
    const announcing = await loopbackDiscovery(id, discoveryPort);
    try {
      const hostile = [
        '',
        'not json',
        'null',
        '[]',
        '"announce"',
        JSON.stringify({ t: 'announce', v: 1, id, name: 'x', port: 0 }),
        JSON.stringify({ t: 'announce', v: 1, id, name: 'x', port: 70_000 }),
        JSON.stringify({ t: 'announce', v: 1, id, name: 'x', port: '47474' }),
        JSON.stringify({ t: 'announce', v: 1, id, name: 'x', port: 1.5 }),
        JSON.stringify({ t: 'announce', v: 'one', id, name: 'x', port: 1 }),
        JSON.stringify({ t: 'announce', v: 1, id: 'NOT-AN-ID', name: 'x', port: 1 }),
        JSON.stringify({ t: 'announce', v: 1, id, name: { toString: 1 }, port: 1 }),
        JSON.stringify({ t: 'announce', v: 1, id, name: 'x'.repeat(5000), port: 1 }),
        `{"t":"announce","v":1,"id":"${id}","__proto__":{"port":1},"port":2}`,
        JSON.stringify({ t: 'bye', id }),
        JSON.stringify({ t: 'query' }),
      ];
      for (const packet of hostile) attacker.send(packet);
      attacker.send(Buffer.alloc(65_000, 0x7b));
      attacker.claim(id, '\u202e\u001b[31m\nevil'.repeat(10), 1);
      announcing.announce({ name: 'sharer', port: restarted.port });
      await waitFor(() => browsing.list().some((p) => p.id === id && p.address === `127.0.0.1:${restarted.port}`));
      const conn = await connectToKnownPeer(options(client, id, { defaultPort: nobodyAtDefault.port, discovery: browsing }));
      assert.equal(conn.address, `127.0.0.1:${restarted.port}`);
      conn.close();
      assert.deepEqual(await rememberedAddresses(client, id), [`127.0.0.1:${restarted.port}`, firstAddress]);
    } finally {
      attacker.close();
      await browsing.stop();
      await announcing.stop();
      await restarted.server.close();
      await nobodyAtDefault.close();
    }
  });

  it('a discovery port held by another program: the look says it could not listen for announcements, instead of claiming it looked', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const id = sharer.identity.peerId;
    await sharer.server.close();
    const discoveryPort = nextDiscoveryPort++;
    // Bound without SO_REUSEADDR, as another local user may: nobody else can bind it.
    const holder = dgram.createSocket({ type: 'udp4' });
    await new Promise<void>((resolve) => holder.bind(discoveryPort, () => resolve()));
    const nobodyAtDefault = await tcpListener('127.0.0.1', 'drop');
    try {
      await assert.rejects(
        connectToKnownPeer(options(client, id, { defaultPort: nobodyAtDefault.port, discovery: { interfaces: ['127.0.0.1'], port: discoveryPort } })),
        (err: Error & { code?: string; detail?: string }) => {
          assert.equal(err.code, 'CONNECTION_FAILED');
          assert.equal(
            err.message,
            `sharer did not answer at ${firstAddress}, 127.0.0.1:${nobodyAtDefault.port}, and announcements on your network could not be heard. Is it sharing? If it is, it may have a new address: ask for a new invite.`,
          );
          assert.match(err.detail ?? '', /EADDRINUSE|in use/i);
          return true;
        },
      );
    } finally {
      holder.close();
      await nobodyAtDefault.close();
    }
  });
});

describe('reach attacks: on the path', () => {
  it('a relay announced for the ID is remembered once the pinned certificate answered through it (accepted: it is only a locator), and it carries nothing but ciphertext', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const id = sharer.identity.peerId;
    await fs.writeFile(path.join(sharer.share.roots[0].realPath, 'plans-for-friday.txt'), 'hello');
    const discoveryPort = nextDiscoveryPort++;
    const browsing = await loopbackDiscovery(client.identity.peerId, discoveryPort);
    const nobodyAtDefault = await tcpListener('127.0.0.1', 'drop');
    // The sharer restarts on another port and does not announce; the attacker finds it (a port scan) and relays to it.
    const restarted = await restart(sharer, '127.0.0.1', nobodyAtDefault.port);
    const relayed: Buffer[] = [];
    const relay = net.createServer((inbound) => {
      const outbound = net.connect(restarted.port, '127.0.0.1');
      inbound.on('data', (b: Buffer) => relayed.push(b));
      outbound.on('data', (b: Buffer) => relayed.push(b));
      inbound.pipe(outbound).pipe(inbound);
      inbound.on('error', () => outbound.destroy());
      outbound.on('error', () => inbound.destroy());
    });
    await new Promise<void>((resolve) => relay.listen(0, ELSEWHERE, () => resolve()));
    const relayAddress = `${ELSEWHERE}:${(relay.address() as net.AddressInfo).port}`;
    const attacker = await announcer(ELSEWHERE, discoveryPort);
    try {
      attacker.claim(id, 'sharer', portOf(relayAddress));
      await waitFor(() => browsing.list().some((p) => p.id === id));
      const conn = await connectToKnownPeer(options(client, id, { defaultPort: nobodyAtDefault.port, discovery: browsing }));
      assert.equal(conn.address, relayAddress);
      assert.equal(conn.peerId, id, 'the pinned certificate, through the relay');
      const names = (await conn.list(conn.welcome.roots[0])).map((e) => e.name);
      assert.ok(names.includes('plans-for-friday.txt'));
      conn.close();
      assert.deepEqual(await rememberedAddresses(client, id), [relayAddress, firstAddress], 'remembered first: the relay holds the first place until the peer is found elsewhere');
      const seen = Buffer.concat(relayed);
      for (const clear of ['client', 'sharer', 'plans-for-friday', 'hello']) assert.equal(seen.indexOf(clear), -1, `"${clear}" never crossed the relay in clear`);
    } finally {
      attacker.close();
      await browsing.stop();
      await new Promise<void>((resolve) => relay.close(() => resolve()));
      await restarted.server.close();
      await nobodyAtDefault.close();
    }
  });
});

describe('reach attacks: the CLI, as processes (another local user squats the default port)', () => {
  const root = path.join(__dirname, '..', '..');
  const cliPath = path.join(root, 'dist', 'cli.js');

  before(() => {
    const built = spawnSync(process.execPath, [path.join(root, 'esbuild.js')], { cwd: root, stdio: 'inherit' });
    assert.equal(built.status, 0, 'the CLI builds');
  });

  function cli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, [cliPath, ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    });
  }

  async function serve(args: string[], env: NodeJS.ProcessEnv): Promise<{ proc: ChildProcess; listening: { invite: string; peerId: string; port: number; defaultPortInUse?: number } }> {
    const proc = spawn(process.execPath, [cliPath, 'serve', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const listening = await new Promise<{ invite: string; peerId: string; port: number }>((resolve, reject) => {
      readline.createInterface({ input: proc.stdout! }).once('line', (line) => resolve(JSON.parse(line)));
      proc.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
    });
    return { proc, listening };
  }

  async function stop(proc: ChildProcess): Promise<void> {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    await new Promise((resolve) => proc.once('exit', resolve));
  }

  it('ls <peer-id>: a TLS squatter on the default port is passed over and the sharer found by its announcements (exit 0); with --no-discovery, exit 3 saying something else answers there, not an attack; the trust file lists only the sharer’s addresses', async () => {
    const ws = path.join(tempDir(), 'ws');
    await fs.mkdir(ws);
    await fs.writeFile(path.join(ws, 'hello.txt'), 'hello');
    const sharerHome = tempDir();
    const home = tempDir();
    const defaultPort = await tcpListener('127.0.0.1', 'drop').then(async (l) => (await l.close(), l.port));
    const env = { PEERSHARE_DEFAULT_PORT: String(defaultPort) };
    const discovery = ['--interface', '127.0.0.1', '--discovery-port', String(nextDiscoveryPort++)];
    const first = await serve([ws, '--home', sharerHome, '--name', 'Mover'], env);
    let other: Awaited<ReturnType<typeof squatter>> | undefined;
    let second: Awaited<ReturnType<typeof serve>> | undefined;
    try {
      assert.equal(first.listening.port, defaultPort);
      assert.equal((await cli(['ls', first.listening.invite, '--home', home], env)).code, 0);
      const id = first.listening.peerId;
      await stop(first.proc);
      // Another user's program, with its own certificate, takes the port while the sharer is stopped.
      other = await squatter((await makePeer()).identity, '127.0.0.1', defaultPort);
      second = await serve([ws, '--home', sharerHome, '--name', 'Mover', '--announce', ...discovery], env);
      assert.equal(second.listening.defaultPortInUse, defaultPort);
      const moved = second.listening.port;
      const trustFile = path.join(home, TRUST_FILE);
      const before = await fs.readFile(trustFile, 'utf8');

      const unheard = await cli(['ls', id, '--home', home, '--no-discovery'], env);
      assert.equal(unheard.code, 3, unheard.stderr);
      assert.equal(
        unheard.stderr,
        `peershare: Mover did not answer at 127.0.0.1:${defaultPort}. Something else answers at 127.0.0.1:${defaultPort} now (another program, or another PeerShare). Is it sharing? If it is, it may have a new address: ask for a new invite. [CONNECTION_FAILED]\n`,
      );
      assert.equal(await fs.readFile(trustFile, 'utf8'), before, 'nothing remembered');

      const found = await cli(['ls', id, 'ws', '--home', home, ...discovery], env);
      assert.equal(found.code, 0, found.stderr);
      assert.match(found.stdout, /hello\.txt$/m);
      assert.equal(found.stderr, `Found Mover at 127.0.0.1:${moved}, a new address; remembered for next time.\n`);
      assert.deepEqual(await rememberedAddresses({ home } as TestPeer, id), [`127.0.0.1:${moved}`, `127.0.0.1:${defaultPort}`]);
      assert.equal(other.bytesReceived(), 0, 'the squatter got no hello, no name');
    } finally {
      await stop(first.proc);
      if (second) await stop(second.proc);
      await other?.close();
    }
  });
});
