import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { PeerShareNode } from '../../src/core';
import { freePort, rejectsWithCode, tempDir } from '../helpers';

async function openNode(name: string, defaultPort: number): Promise<PeerShareNode> {
  return PeerShareNode.open({ home: path.join(tempDir(), 'home'), name: () => name, defaultPort, discovery: () => false });
}

describe('PeerShareNode: one installation, as the CLI and the extension use it', () => {
  it('shares on the default port, pairs with an invite, and finds the peer by ID after it restarts', async () => {
    const defaultPort = await freePort();
    const folder = path.join(tempDir(), 'project');
    await fs.mkdir(folder, { recursive: true });
    await fs.writeFile(path.join(folder, 'a.txt'), 'a\n');
    const ann = await openNode('Ann', defaultPort);
    const bob = await openNode('Bob', defaultPort);
    try {
      const shared = await ann.share({ folders: [folder], host: '127.0.0.1' });
      assert.equal(shared.port, defaultPort);
      assert.equal(shared.defaultPortInUse, undefined);
      const invite = shared.server.createInvite({ ttlMs: 60_000, uses: 1 });
      const first = await bob.connect(invite);
      assert.deepEqual((await first.list('project')).map((e) => e.name), ['a.txt']);
      first.close();
      assert.equal(bob.trust.readsFrom(ann.identity.peerId), true);
      assert.equal(ann.trust.allowsReader(bob.identity.peerId), true);
      // Bob's trust does not let Ann read him: trust has a direction.
      assert.equal(bob.trust.allowsReader(ann.identity.peerId), false);

      await shared.stop();
      await rejectsWithCode(bob.connectToPeer(ann.identity.peerId, { lookNearby: false }), 'CONNECTION_FAILED');
      const again = await ann.share({ folders: [folder], host: '127.0.0.1' });
      assert.equal(again.port, defaultPort);
      // By ID, by name: the same peer.
      for (const target of [ann.identity.peerId, 'Ann']) {
        const conn = await bob.connect(target);
        assert.equal(conn.peerId, ann.identity.peerId);
        conn.close();
      }
      await rejectsWithCode(bob.connect('nobody-we-know'), 'UNKNOWN_PEER');
    } finally {
      await ann.close();
      await bob.close();
    }
  });

  it('a second share while the default port is taken listens elsewhere and says so; close() stops every share', async () => {
    const defaultPort = await freePort();
    const folder = tempDir();
    const node = await openNode('Ann', defaultPort);
    const first = await node.share({ folders: [folder], host: '127.0.0.1' });
    const second = await node.share({ folders: [folder], host: '127.0.0.1' });
    assert.equal(first.port, defaultPort);
    assert.notEqual(second.port, defaultPort);
    assert.equal(second.defaultPortInUse, defaultPort);
    await rejectsWithCode(node.share({ folders: [folder], host: '127.0.0.1', port: first.port }), 'ADDRESS_IN_USE');
    await node.close();
    for (const port of [first.port, second.port]) {
      const refused = await new Promise<boolean>((resolve) => {
        const socket = net.connect(port, '127.0.0.1');
        socket.once('connect', () => (socket.destroy(), resolve(false)));
        socket.once('error', () => resolve(true));
      });
      assert.equal(refused, true, `port ${port} still accepts connections after close()`);
    }
  });
});
