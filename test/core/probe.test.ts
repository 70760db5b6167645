import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { describe, it } from 'node:test';
import { peerIdOfCert } from '../../src/core';
import { provePeer } from '../../src/core/probe';
import { makePeer, rejectsWithCode, startSharer, tempDir, type TestPeer } from '../helpers';
import { waitFor } from '../hostile';

/** A port nothing listens on: bound, then closed. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A bare TLS 1.3 server with `peer`'s certificate that records what each client showed and sent. */
async function recordingTlsServer(peer: TestPeer) {
  const seen: { clientId?: string; bytes: number; closed: boolean }[] = [];
  const server = tls.createServer({ key: peer.identity.keyPem, cert: peer.identity.certPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' }, (socket) => {
    const cert = socket.getPeerCertificate(false);
    const record = { clientId: cert?.raw ? peerIdOfCert(cert.raw) : undefined, bytes: 0, closed: false };
    seen.push(record);
    socket.on('data', (chunk: Buffer) => (record.bytes += chunk.length));
    socket.on('error', () => undefined);
    socket.on('close', () => (record.closed = true));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return { seen, address: `127.0.0.1:${port}`, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

describe('provePeer: does this address hold that certificate? (issue 16, finding 12)', () => {
  it('says true for the peer whose certificate it is, and the sharer sees no request', async () => {
    const sharer = await startSharer([tempDir()]);
    const prover = await makePeer();
    try {
      assert.equal(await provePeer({ identity: prover.identity, address: sharer.address, expectedPeerId: sharer.identity.peerId }), true);
      // Any spelling of the ID a person might type is the same ID.
      assert.equal(await provePeer({ identity: prover.identity, address: sharer.address, expectedPeerId: sharer.identity.peerId.toLowerCase().replace(/-/g, '') }), true);
      assert.equal(sharer.server.stats.requests, 0);
      assert.deepEqual(sharer.trust.list(), [], 'a probe pairs with nobody');
    } finally {
      await sharer.server.close();
    }
  });

  it('says false for another certificate at that address (a spoofed announcement)', async () => {
    const real = await startSharer([tempDir()]);
    const impostor = await startSharer([tempDir()]);
    const prover = await makePeer();
    try {
      assert.equal(await provePeer({ identity: prover.identity, address: impostor.address, expectedPeerId: real.identity.peerId }), false);
      assert.equal(impostor.server.stats.requests, 0);
    } finally {
      await real.server.close();
      await impostor.server.close();
    }
  });

  it('presents our certificate, sends nothing after the handshake and closes', async () => {
    const target = await makePeer();
    const prover = await makePeer();
    const server = await recordingTlsServer(target);
    try {
      assert.equal(await provePeer({ identity: prover.identity, address: server.address, expectedPeerId: target.identity.peerId }), true);
      await waitFor(() => server.seen.length === 1 && server.seen[0].closed, 10_000);
      assert.deepEqual(server.seen, [{ clientId: prover.identity.peerId, bytes: 0, closed: true }]);
    } finally {
      await server.close();
    }
  });

  it('says false, without throwing, for a refused connection, a server that never speaks TLS, and an abort', async () => {
    const prover = await makePeer();
    const expectedPeerId = (await makePeer()).identity.peerId;
    assert.equal(await provePeer({ identity: prover.identity, address: `127.0.0.1:${await closedPort()}`, expectedPeerId }), false);

    // Reads (so it notices the client going away) and never answers.
    const silent = net.createServer((socket) => socket.on('error', () => undefined).resume());
    const hangUp = net.createServer((socket) => socket.on('error', () => undefined).resume().end('not TLS\n'));
    for (const s of [silent, hangUp]) await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    const addressOf = (s: net.Server) => `127.0.0.1:${(s.address() as net.AddressInfo).port}`;
    try {
      assert.equal(await provePeer({ identity: prover.identity, address: addressOf(silent), expectedPeerId, timeoutMs: 300 }), false);
      assert.equal(await provePeer({ identity: prover.identity, address: addressOf(hangUp), expectedPeerId }), false);
      const controller = new AbortController();
      const probing = provePeer({ identity: prover.identity, address: addressOf(silent), expectedPeerId, signal: controller.signal });
      controller.abort();
      assert.equal(await probing, false);
      assert.equal(await provePeer({ identity: prover.identity, address: addressOf(silent), expectedPeerId, signal: AbortSignal.abort() }), false);
    } finally {
      for (const s of [silent, hangUp]) await new Promise<void>((resolve) => s.close(() => resolve()));
    }
  });

  it('refuses arguments that make no sense with INVALID_ARGUMENT', async () => {
    const prover = await makePeer();
    const expectedPeerId = prover.identity.peerId;
    await rejectsWithCode(provePeer({ identity: prover.identity, address: 'no port', expectedPeerId }), 'INVALID_ARGUMENT');
    await rejectsWithCode(provePeer({ identity: prover.identity, address: '127.0.0.1:70000', expectedPeerId }), 'INVALID_ARGUMENT');
    await rejectsWithCode(provePeer({ identity: prover.identity, address: '127.0.0.1:1', expectedPeerId: 'not-an-id' }), 'INVALID_ARGUMENT');
    await rejectsWithCode(provePeer({ identity: prover.identity, address: '127.0.0.1:1', expectedPeerId, timeoutMs: 0 }), 'INVALID_ARGUMENT');
    await rejectsWithCode(provePeer({ identity: prover.identity, address: '127.0.0.1:1', expectedPeerId, timeoutMs: Number.NaN }), 'INVALID_ARGUMENT');
  });
});
