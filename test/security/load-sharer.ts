import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PeerServer, Share, TrustStore, loadOrCreateIdentity, resolveLimits } from '../../src/core';

/**
 * A sharer in its own process, for the load test: its memory is then its own. Started with the
 * folder to share and the limits as JSON; reports its address and invite once, then, every 100 ms
 * and on request after a garbage collection, its memory and connection count over IPC.
 */
async function main(): Promise<void> {
  const [folder, limitsJson] = process.argv.slice(2);
  const home = mkdtempSync(path.join(os.tmpdir(), 'peershare-load-home-'));
  const identity = await loadOrCreateIdentity(home);
  const trust = await TrustStore.open(home);
  const limits = resolveLimits(JSON.parse(limitsJson));
  const share = await Share.create({ folders: [folder], privatePaths: [home] }, limits);
  const server = new PeerServer({ identity, trust, share, name: 'load sharer', limits });
  await server.listen(0, '127.0.0.1');
  const report = (kind: string): void => {
    const { rss, heapUsed } = process.memoryUsage();
    process.send!({ kind, rss, heapUsed, peers: server.connectedPeers().length, requests: server.stats.requests, accepted: server.stats.connectionsAccepted });
  };
  process.send!({ kind: 'ready', address: `127.0.0.1:${server.port}`, invite: server.createInvite({ uses: 100, ttlMs: 600_000 }), peerId: identity.peerId });
  const timer = setInterval(() => report('sample'), 100);
  process.on('message', (m) => {
    if (m === 'measure') {
      (globalThis as { gc?: () => void }).gc?.();
      report('measured');
    } else if (m === 'stop') {
      clearInterval(timer);
      void server.close().then(() => {
        rmSync(home, { recursive: true, force: true });
        process.exit(0);
      });
    }
  });
}

void main();
