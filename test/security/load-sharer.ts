import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PeerServer, Share, TrustStore, loadOrCreateIdentity, resolveLimits, type AccessDecision } from '../../src/core';

/**
 * A sharer in its own process, for the load and flood tests: its memory, CPU and event loop are
 * then its own. Started with the folder to share, the limits as JSON and, optionally, options as
 * JSON (`{"ask":"never"}`: requests to connect are asked about and never answered, as a person
 * away from the screen). Reports its address and invite once, then, every 100 ms and on request
 * after a garbage collection, its memory, connection count, statistics and prompts over IPC.
 */
async function main(): Promise<void> {
  const [folder, limitsJson, optionsJson] = process.argv.slice(2);
  const options = JSON.parse(optionsJson ?? '{}') as { ask?: 'never' };
  const home = mkdtempSync(path.join(os.tmpdir(), 'peershare-load-home-'));
  const identity = await loadOrCreateIdentity(home);
  const trust = await TrustStore.open(home);
  const limits = resolveLimits(JSON.parse(limitsJson));
  const share = await Share.create({ folders: [folder], privatePaths: [home] }, limits);
  const prompts = { open: 0, most: 0, total: 0 };
  const server = new PeerServer({
    identity,
    trust,
    share,
    name: 'load sharer',
    limits,
    onAccessRequest:
      options.ask === 'never'
        ? (_request, signal) => {
            prompts.open++;
            prompts.total++;
            prompts.most = Math.max(prompts.most, prompts.open);
            return new Promise<AccessDecision>((resolve) =>
              signal.addEventListener('abort', () => {
                prompts.open--;
                resolve('deny');
              }),
            );
          }
        : undefined,
  });
  await server.listen(0, '127.0.0.1');
  const report = (kind: string): void => {
    const { rss, heapUsed } = process.memoryUsage();
    const cpu = process.cpuUsage();
    process.send!({
      kind,
      rss,
      heapUsed,
      cpuMs: (cpu.user + cpu.system) / 1000,
      peers: server.connectedPeers().length,
      requests: server.stats.requests,
      accepted: server.stats.connectionsAccepted,
      stats: { ...server.stats },
      prompts: { ...prompts },
      readers: trust.list().filter((p) => p.mayReadUs).length,
    });
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
