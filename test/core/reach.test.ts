import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { describe, it } from 'node:test';
import {
  DISCOVERY_GROUP,
  Discovery,
  PeerServer,
  connectToKnownPeer,
  listenOnPort,
} from '../../src/core';
import { TLS_OPTIONS } from '../../src/core/tls-options';
import { connectWithInvite, freePort, makePeer, options, rejectsWithCode, rememberedAddresses, startSharer, tempDir, trustFile, type Sharer, type TestPeer } from '../helpers';
import { waitFor } from '../hostile';

// Each test uses its own discovery port, so parallel test files and other runs do not mix.
let nextDiscoveryPort = 48_600 + Math.floor(Math.random() * 1000);

/** A plain TCP listener that counts connections and drops each at once (nothing PeerShare there). */
async function occupy(port = 0): Promise<{ port: number; connections: () => number; close: () => Promise<void> }> {
  let count = 0;
  const server = net.createServer((socket) => {
    count++;
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => count,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** A sharer the client paired with by invite; the client remembers it at its first port. */
async function pairedSharer(): Promise<{ sharer: Sharer; client: TestPeer; firstAddress: string }> {
  const sharer = await startSharer([tempDir()]);
  const { conn, client } = await connectWithInvite(sharer.invite);
  conn.close();
  return { sharer, client, firstAddress: sharer.address };
}

/** The same sharer (same certificate, same share) started again on `port` (0: any). */
async function restart(sharer: Sharer, port: number): Promise<PeerServer> {
  await sharer.server.close();
  const server = new PeerServer({ identity: sharer.identity, trust: sharer.trust, share: sharer.share, name: 'sharer' });
  await server.listen(port, '127.0.0.1');
  return server;
}

async function loopbackDiscovery(selfId: string, port: number): Promise<Discovery> {
  const discovery = new Discovery({ selfId, interfaces: ['127.0.0.1'], port });
  await discovery.start();
  return discovery;
}

describe('listenOnPort: the default port, with a fallback; an exact port, or a coded error', () => {
  it('listens on the default port when it is free', async () => {
    const sharer = await startSharer([tempDir()]);
    await sharer.server.close();
    const server = new PeerServer({ identity: sharer.identity, trust: sharer.trust, share: sharer.share, name: 'x' });
    const defaultPort = await freePort();
    try {
      assert.deepEqual(await listenOnPort(server, '127.0.0.1', { defaultPort }), { port: defaultPort });
      assert.equal(server.port, defaultPort);
    } finally {
      await server.close();
    }
  });

  it('takes any free port when the default one is taken, and says which was taken', async () => {
    const taken = await occupy();
    const sharer = await startSharer([tempDir()]);
    await sharer.server.close();
    const server = new PeerServer({ identity: sharer.identity, trust: sharer.trust, share: sharer.share, name: 'x' });
    try {
      const chosen = await listenOnPort(server, '127.0.0.1', { defaultPort: taken.port });
      assert.equal(chosen.defaultPortInUse, taken.port);
      assert.notEqual(chosen.port, taken.port);
      assert.equal(server.port, chosen.port);
      // And it is a real listener: a client pairs through it.
      const { conn } = await connectWithInvite(server.createInvite({ uses: 1, ttlMs: 60_000 }));
      conn.close();
    } finally {
      await server.close();
      await taken.close();
    }
  });

  it('fails with ADDRESS_IN_USE, naming the port, when an exact port is taken (even the default one asked for by number)', async () => {
    const taken = await occupy();
    const sharer = await startSharer([tempDir()]);
    await sharer.server.close();
    try {
      for (const choice of [{ port: taken.port }, { port: taken.port, defaultPort: taken.port, previousPort: await freePort() }]) {
        const server = new PeerServer({ identity: sharer.identity, trust: sharer.trust, share: sharer.share, name: 'x' });
        await assert.rejects(listenOnPort(server, '127.0.0.1', choice), (err: Error & { code?: string }) => {
          assert.equal(err.code, 'ADDRESS_IN_USE');
          assert.match(err.message, new RegExp(`^Port ${taken.port} on 127\\.0\\.0\\.1 is already in use.*choose another port`));
          return true;
        });
        await server.close();
      }
    } finally {
      await taken.close();
    }
  });

  it('tries the previous port first; 0 means any free port and never the default one', async () => {
    const sharer = await startSharer([tempDir()]);
    await sharer.server.close();
    const previousPort = await freePort();
    const defaultHolder = await occupy(); // were the default tried, it would be in use and reported
    const first = new PeerServer({ identity: sharer.identity, trust: sharer.trust, share: sharer.share, name: 'x' });
    const second = new PeerServer({ identity: sharer.identity, trust: sharer.trust, share: sharer.share, name: 'x' });
    try {
      assert.deepEqual(await listenOnPort(first, '127.0.0.1', { previousPort, defaultPort: defaultHolder.port }), { port: previousPort });
      const anyPort = await listenOnPort(second, '127.0.0.1', { port: 0, defaultPort: defaultHolder.port });
      assert.equal(anyPort.defaultPortInUse, undefined, 'the default port was not tried');
      assert.ok(anyPort.port > 0 && anyPort.port !== previousPort && anyPort.port !== defaultHolder.port);
    } finally {
      await first.close();
      await second.close();
      await defaultHolder.close();
    }
  });
});

describe('connectToKnownPeer: finding a trusted peer that moved', () => {
  it('connects at the remembered address, as connectToPeer does', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    try {
      const conn = await connectToKnownPeer(options(client, sharer.identity.peerId, { discovery: false }));
      assert.equal(conn.address, firstAddress);
      conn.close();
    } finally {
      await sharer.server.close();
    }
  });

  it('finds a sharer back at its host’s default port, and remembers that address first', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const defaultPort = await freePort();
    const server = await restart(sharer, defaultPort);
    try {
      const conn = await connectToKnownPeer(options(client, sharer.identity.peerId, { defaultPort, discovery: false }));
      assert.equal(conn.address, `127.0.0.1:${defaultPort}`);
      assert.equal(conn.peerId, sharer.identity.peerId);
      conn.close();
      assert.deepEqual(await rememberedAddresses(client, sharer.identity.peerId), [`127.0.0.1:${defaultPort}`, firstAddress]);
    } finally {
      await server.close();
    }
  });

  it('finds a sharer that moved by its announcements (discovery started for the look, then stopped), and remembers the new address first', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    const discoveryPort = nextDiscoveryPort++;
    const nobodyAtDefault = await occupy();
    const server = await restart(sharer, 0);
    const announcing = await loopbackDiscovery(sharer.identity.peerId, discoveryPort);
    announcing.announce({ name: 'sharer', port: server.port });
    try {
      const conn = await connectToKnownPeer(
        options(client, sharer.identity.peerId, {
          defaultPort: nobodyAtDefault.port,
          discovery: { interfaces: ['127.0.0.1'], port: discoveryPort },
          // Generous: success returns as soon as the answer to our query arrives; only a failure waits it out.
          limits: { announcementWaitMs: 10_000 },
        }),
      );
      assert.equal(conn.address, `127.0.0.1:${server.port}`);
      conn.close();
      assert.equal(nobodyAtDefault.connections(), 1, 'the default port was tried first, once');
      assert.deepEqual(await rememberedAddresses(client, sharer.identity.peerId), [`127.0.0.1:${server.port}`, firstAddress]);
    } finally {
      await announcing.stop();
      await server.close();
      await nobodyAtDefault.close();
    }
  });

  it('uses a running Discovery as it is and leaves it running (the editor’s)', async () => {
    const { sharer, client } = await pairedSharer();
    const discoveryPort = nextDiscoveryPort++;
    const browsing = await loopbackDiscovery(client.identity.peerId, discoveryPort);
    const server = await restart(sharer, 0);
    const announcing = await loopbackDiscovery(sharer.identity.peerId, discoveryPort);
    announcing.announce({ name: 'sharer', port: server.port });
    const nobodyAtDefault = await occupy();
    try {
      const conn = await connectToKnownPeer(
        options(client, sharer.identity.peerId, { defaultPort: nobodyAtDefault.port, discovery: browsing, limits: { announcementWaitMs: 10_000 } }),
      );
      assert.equal(conn.address, `127.0.0.1:${server.port}`);
      conn.close();
      const listed = browsing.list().find((p) => p.id === sharer.identity.peerId);
      assert.ok(listed?.proved, 'still running, and the address is marked proved by the handshake');
    } finally {
      await nobodyAtDefault.close();
      await browsing.stop();
      await announcing.stop();
      await server.close();
    }
  });

  it('passes over another certificate announcing the peer’s ID: the first error, and the trust file unchanged', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    await sharer.server.close();
    const impostor = await makePeer();
    // It would serve anyone: the client alone must refuse it, on the certificate it presents.
    const impostorServer = tls.createServer({ ...TLS_OPTIONS, key: impostor.identity.keyPem, cert: impostor.identity.certPem, requestCert: true, rejectUnauthorized: false }, (socket) => socket.destroy());
    let connections = 0;
    impostorServer.on('connection', () => connections++);
    await new Promise<void>((resolve) => impostorServer.listen(0, '127.0.0.1', () => resolve()));
    const impostorPort = (impostorServer.address() as net.AddressInfo).port;
    const discoveryPort = nextDiscoveryPort++;
    // Anyone may claim any ID in an announcement; only the certificate proves it.
    const claiming = await loopbackDiscovery(sharer.identity.peerId, discoveryPort);
    claiming.announce({ name: 'sharer', port: impostorPort });
    const before = await trustFile(client);
    const nobodyAtDefault = await occupy();
    const defaultPort = nobodyAtDefault.port;
    try {
      await assert.rejects(
        connectToKnownPeer(options(client, sharer.identity.peerId, { defaultPort, discovery: { interfaces: ['127.0.0.1'], port: discoveryPort } })),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, 'CONNECTION_FAILED');
          assert.equal(
            err.message,
            `sharer did not answer at ${firstAddress}, 127.0.0.1:${defaultPort}, nor among the peers announcing themselves on your network. Is it sharing? If it is, it may have a new address: ask for a new invite.`,
          );
          return true;
        },
      );
      assert.equal(connections, 1, 'the announced address was tried, once, and its certificate refused');
      assert.equal(await trustFile(client), before, 'the trust file is byte for byte what it was');
    } finally {
      await claiming.stop();
      await nobodyAtDefault.close();
      await new Promise<void>((resolve) => impostorServer.close(() => resolve()));
    }
  });

  it('tries at most maxAnnouncedAddressesTried addresses claimed for one ID, however many are announced', async () => {
    const { sharer, client } = await pairedSharer();
    await sharer.server.close();
    const discoveryPort = nextDiscoveryPort++;
    const browsing = await loopbackDiscovery(client.identity.peerId, discoveryPort);
    const decoys = await Promise.all(Array.from({ length: 6 }, () => occupy()));
    const nobodyAtDefault = await occupy();
    const stranger = dgram.createSocket({ type: 'udp4' });
    await new Promise<void>((resolve) => stranger.bind(0, '127.0.0.1', () => resolve()));
    stranger.setMulticastInterface('127.0.0.1');
    try {
      for (const decoy of decoys) {
        stranger.send(JSON.stringify({ t: 'announce', v: 1, id: sharer.identity.peerId, name: 'sharer', port: decoy.port }), discoveryPort, DISCOVERY_GROUP);
      }
      await waitFor(() => browsing.list().filter((p) => p.id === sharer.identity.peerId).length === decoys.length);
      await rejectsWithCode(
        connectToKnownPeer(options(client, sharer.identity.peerId, { defaultPort: nobodyAtDefault.port, discovery: browsing, limits: { maxAnnouncedAddressesTried: 3, announcementWaitMs: 200 } })),
        'CONNECTION_FAILED',
      );
      assert.equal(decoys.reduce((sum, d) => sum + d.connections(), 0), 3);
    } finally {
      stranger.close();
      await browsing.stop();
      await Promise.all([...decoys, nobodyAtDefault].map((d) => d.close()));
    }
  });

  it('passes over another certificate at the remembered address (its port was taken meanwhile) and looks on; a failure of the peer itself ends the search at once', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    await sharer.server.close();
    const other = await startSharer([tempDir()]);
    await other.server.close();
    const squatter = new PeerServer({ identity: other.identity, trust: other.trust, share: other.share, name: 'other' });
    await squatter.listen(Number(firstAddress.split(':')[1]), '127.0.0.1');
    const atDefault = await occupy();
    try {
      await rejectsWithCode(connectToKnownPeer(options(client, sharer.identity.peerId, { defaultPort: atDefault.port, discovery: false })), 'CONNECTION_FAILED');
      assert.equal(atDefault.connections(), 1, 'the default port was tried after the squatter');
    } finally {
      await squatter.close();
    }
    // The peer itself, answering that it no longer lets us in: nothing else is tried.
    const server = await restart(sharer, Number(firstAddress.split(':')[1]));
    await sharer.trust.remove(client.identity.peerId);
    try {
      await rejectsWithCode(connectToKnownPeer(options(client, sharer.identity.peerId, { defaultPort: atDefault.port, discovery: false })), 'PEER_UNTRUSTED');
      assert.equal(atDefault.connections(), 1, 'the default port was not tried again');
    } finally {
      await server.close();
      await atDefault.close();
    }
  });

  it('nobody anywhere, discovery off: the first error’s code, with a message that names the peer and where it looked', async () => {
    const { sharer, client, firstAddress } = await pairedSharer();
    await sharer.server.close();
    const defaultPort = await freePort();
    await assert.rejects(connectToKnownPeer(options(client, sharer.identity.peerId, { defaultPort, discovery: false })), (err: Error & { code?: string; detail?: string }) => {
      assert.equal(err.code, 'CONNECTION_FAILED');
      assert.equal(err.message, `sharer did not answer at ${firstAddress}, 127.0.0.1:${defaultPort}. Is it sharing? If it is, it may have a new address: ask for a new invite.`);
      assert.match(err.detail ?? '', /nothing is listening there/);
      return true;
    });
  });

  it('is cancelled while it listens for announcements', async () => {
    const { sharer, client } = await pairedSharer();
    await sharer.server.close();
    const abort = new AbortController();
    const discoveryPort = nextDiscoveryPort++;
    const looking = connectToKnownPeer(
      options(client, sharer.identity.peerId, { defaultPort: await freePort(), discovery: { interfaces: ['127.0.0.1'], port: discoveryPort }, signal: abort.signal, limits: { announcementWaitMs: 60_000 } }),
    );
    setTimeout(() => abort.abort(), 100);
    await rejectsWithCode(looking, 'CANCELLED');
  });

  it('finds a known peer with no remembered address by its announcements; without discovery, UNKNOWN_PEER that says so', async () => {
    const sharer = await startSharer([tempDir()]);
    const client = await makePeer();
    // Each knows the other only as a reader of its own share: the client never had the sharer's address.
    await client.trust.addReader({ id: sharer.identity.peerId, name: 'sharer' });
    await sharer.trust.addReader({ id: client.identity.peerId, name: 'client' });
    const discoveryPort = nextDiscoveryPort++;
    const announcing = await loopbackDiscovery(sharer.identity.peerId, discoveryPort);
    announcing.announce({ name: 'sharer', port: sharer.server.port });
    try {
      await assert.rejects(connectToKnownPeer(options(client, sharer.identity.peerId, { discovery: false })), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'UNKNOWN_PEER');
        assert.equal(err.message, 'sharer has no address we know of. Is it sharing? Ask for an invite.');
        return true;
      });
      const conn = await connectToKnownPeer(options(client, sharer.identity.peerId, { discovery: { interfaces: ['127.0.0.1'], port: discoveryPort }, limits: { announcementWaitMs: 10_000 } }));
      assert.equal(conn.address, sharer.address);
      conn.close();
      assert.deepEqual(await rememberedAddresses(client, sharer.identity.peerId), [sharer.address]);
    } finally {
      await announcing.stop();
      await sharer.server.close();
    }
  });

  it('refuses a peer that is not trusted', async () => {
    const client = await makePeer();
    const stranger = await makePeer();
    await rejectsWithCode(connectToKnownPeer(options(client, stranger.identity.peerId, { discovery: false })), 'UNKNOWN_PEER');
  });
});
