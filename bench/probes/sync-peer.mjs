// Child of bench/delta.mjs: `peershare sync` of a folder as a long-lived process runs it (the
// editor's extension host, where Follow Folder and Update from Peer run): one process, one
// connection and one record of what came from where, kept across syncs. The other end is the real
// `peershare serve`; this is the core's own code (PeerShareNode.connect, then follow.ts's
// syncFolder, which the CLI's `sync` and the editor's Follow Folder call; Update from Peer calls
// the deltaFolder beneath it), bundled with esbuild as the CLI is.
//
//   <bundle> '<json>'   {home, address, remotePath}: connects, then reads one JSON line per sync
//                       from stdin, {dest}, syncs the peer's remotePath into dest, saves the record,
//                       and prints one JSON line {seconds, filesChecked, filesChanged,
//                       bytesReceived, cpuSeconds}. Ends at the end of stdin.

import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { syncFolder } from '../../src/core/follow.ts';
import { PeerShareNode } from '../../src/core/node.ts';
import { OriginStore, originFileFor } from '../../src/core/origins.ts';

async function main() {
  const { home, address, remotePath } = JSON.parse(process.argv[2]);
  const node = await PeerShareNode.open({ home, name: () => 'bench follower' });
  const conn = await node.connect(address);
  const stores = new Map();
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const { dest } = JSON.parse(line);
    const cpu = process.cpuUsage();
    const started = performance.now();
    let origins = stores.get(dest);
    if (!origins) stores.set(dest, (origins = await OriginStore.open(originFileFor(home, dest))));
    const report = await syncFolder(conn, remotePath, dest, { origins });
    await origins.flush();
    const seconds = (performance.now() - started) / 1000;
    const used = process.cpuUsage(cpu);
    process.stdout.write(`${JSON.stringify({ seconds, filesChecked: report.filesChecked, filesChanged: report.filesChanged, bytesReceived: report.bytesReceived, cpuSeconds: (used.user + used.system) / 1e6 })}\n`);
  }
  conn.close();
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});
