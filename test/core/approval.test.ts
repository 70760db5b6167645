import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { PeerServer, Share, connectToPeer, downloadFile, resolveLimits, type AccessDecision, type AccessRequest, type Limits } from '../../src/core';
import * as tls from 'node:tls';
import { connectWithInvite, makePeer, rejectsWithCode, tempDir, writeRandomFile } from '../helpers';
import { rawClient, waitFor, type RawClient, helloV2 } from '../hostile';

/** A sharer whose "person" answers access requests with `answer`. */
async function sharerAsking(answer: (request: AccessRequest, signal: AbortSignal) => Promise<AccessDecision>, limits: Partial<Limits> = {}) {
  const peer = await makePeer();
  const ws = path.join(tempDir(), 'ws');
  await fs.mkdir(ws);
  await fs.writeFile(path.join(ws, 'a.txt'), 'A');
  const resolved = resolveLimits(limits);
  const share = await Share.create({ folders: [ws] }, resolved);
  const asked: AccessRequest[] = [];
  const server = new PeerServer({
    ...peer,
    share,
    name: 'sharer',
    limits: resolved,
    onAccessRequest: (request, signal) => {
      asked.push(request);
      return answer(request, signal);
    },
  });
  await server.listen(0, '127.0.0.1');
  return { ...peer, server, ws, asked, address: `127.0.0.1:${server.port}` };
}

async function ask(sharer: Awaited<ReturnType<typeof sharerAsking>>, client?: Awaited<ReturnType<typeof makePeer>>) {
  const me = client ?? (await makePeer());
  let code = '';
  const conn = await connectToPeer({ ...me, addresses: [sharer.address], expectedPeerId: sharer.identity.peerId, name: 'Nearby Ned', requestAccess: true, onVerificationCode: (c) => (code = c) });
  return { conn, me, code };
}

describe('a nearby peer asks to connect', () => {
  it('allow once: served now, for every request of that connection, not trusted afterwards; both sides saw the same code', async () => {
    const sharer = await sharerAsking(async () => 'once');
    const { conn, me, code } = await ask(sharer);
    assert.deepEqual((await conn.list('ws')).map((e) => e.name), ['a.txt']);
    assert.equal((await conn.stat('ws/a.txt')).size, 1, 'a second request on the same connection is served too');
    assert.equal(sharer.asked.length, 1);
    assert.equal(sharer.asked[0].name, 'Nearby Ned');
    assert.equal(sharer.asked[0].id, me.identity.peerId);
    assert.match(code, /^\d{3} \d{3}$/);
    assert.equal(sharer.asked[0].verificationCode, code);
    assert.equal(sharer.trust.knows(me.identity.peerId), false);
    assert.equal(me.trust.knows(sharer.identity.peerId), false);
    conn.close();
    await sharer.server.close();
  });

  it('always allow: trusted from then on, without asking again', async () => {
    const sharer = await sharerAsking(async () => 'always');
    const { conn, me } = await ask(sharer);
    conn.close();
    assert.equal(sharer.trust.allowsReader(me.identity.peerId), true);
    assert.equal(me.trust.readsFrom(sharer.identity.peerId), true);
    assert.equal(me.trust.allowsReader(sharer.identity.peerId), false, 'being let in never lets the sharer read us');
    const again = await connectToPeer({ ...me, addresses: [sharer.address], name: 'Nearby Ned' });
    again.close();
    assert.equal(sharer.asked.length, 1);
    await sharer.server.close();
  });

  it('deny: ACCESS_DENIED in plain words, nothing served', async () => {
    const sharer = await sharerAsking(async () => 'deny');
    await rejectsWithCode(ask(sharer), 'ACCESS_DENIED');
    assert.equal(sharer.server.stats.requests, 0);
    await sharer.server.close();
  });

  it('no answer in time counts as Deny, and the prompt is told to go away', async () => {
    let aborted = false;
    const sharer = await sharerAsking(
      (_request, signal) =>
        new Promise<AccessDecision>(() => {
          signal.addEventListener('abort', () => (aborted = true));
        }),
      { approvalTimeoutMs: 300 },
    );
    const started = Date.now();
    await rejectsWithCode(ask(sharer), 'ACCESS_DENIED');
    assert.ok(Date.now() - started < 3000);
    assert.equal(aborted, true);
    await sharer.server.close();
  });

  it('without an answering sharer (no prompt), a request is refused like any stranger', async () => {
    const peer = await makePeer();
    const ws = tempDir();
    const server = new PeerServer({ ...peer, share: await Share.create({ folders: [ws] }, resolveLimits()), name: 's' });
    await server.listen(0, '127.0.0.1');
    const me = await makePeer();
    await rejectsWithCode(connectToPeer({ ...me, addresses: [`127.0.0.1:${server.port}`], expectedPeerId: peer.identity.peerId, name: 'x', requestAccess: true }), 'PEER_UNTRUSTED');
    await server.close();
  });

  it('requests to connect past maxPendingApprovals, in all or from one address, are told BUSY at once and nobody is asked; waiting ones hold no trusted slot', async () => {
    const sharer = await sharerAsking((_request, signal) => new Promise<AccessDecision>((resolve) => signal.addEventListener('abort', () => resolve('deny'))), {
      maxPendingApprovals: 2,
      maxPendingApprovalsPerSource: 1,
      maxConnections: 1,
      approvalTimeoutMs: 30_000,
    });
    const stranger = await makePeer();
    const request = async (source: string): Promise<RawClient> => {
      const client = await rawClient(sharer.address, stranger.identity, { localAddress: source } as tls.ConnectionOptions);
      client.socket.on('error', () => undefined);
      client.send(helloV2('Nearby Ned', { request: true }));
      return client;
    };
    const first = await request('127.0.0.2');
    await waitFor(() => sharer.asked.length === 1);
    const sameSource = await request('127.0.0.2');
    const second = await request('127.0.0.3');
    await waitFor(() => sharer.asked.length === 2);
    const beyond = await request('127.0.0.4');
    const started = Date.now();
    await Promise.all([sameSource.closed, beyond.closed]);
    assert.ok(Date.now() - started < 5000, 'told at once, not after the approval time');
    assert.deepEqual([sameSource, beyond].map((c) => c.messages.map((m) => m.code)), [['BUSY'], ['BUSY']]);
    assert.deepEqual(sharer.asked.map((r) => r.address), ['127.0.0.2', '127.0.0.3'], 'only two prompts');
    // Two requests wait for an answer, and the only trusted slot is still free.
    const invited = await connectWithInvite(sharer.server.createInvite());
    assert.deepEqual((await invited.conn.list('ws')).map((e) => e.name), ['a.txt']);
    assert.equal(first.messages.length + second.messages.length, 0, 'the waiting requests are still waiting');
    invited.conn.close();
    first.socket.destroy();
    second.socket.destroy();
    await sharer.server.close();
  });

  it('revoking a peer while it downloads stops the download; nothing lands under the final name', async () => {
    const sharer = await sharerAsking(async () => 'always');
    await writeRandomFile(path.join(sharer.ws, 'big.bin'), 64 * 1024 * 1024);
    const { conn, me } = await ask(sharer);
    const dest = tempDir();
    let revoked = false;
    await assert.rejects(
      downloadFile(conn, 'ws/big.bin', path.join(dest, 'big.bin'), {
        onProgress: (p) => {
          if (!revoked && p.bytes > 4 * 1024 * 1024) {
            revoked = true;
            void sharer.trust.remove(me.identity.peerId).then(() => sharer.server.disconnectPeer(me.identity.peerId));
          }
        },
      }),
    );
    await assert.rejects(fs.stat(path.join(dest, 'big.bin')));
    await rejectsWithCode(connectToPeer({ ...me, addresses: [sharer.address], expectedPeerId: sharer.identity.peerId, name: 'Ned' }), 'PEER_UNTRUSTED');
    await sharer.server.close();
  });
});
