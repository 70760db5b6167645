// Child of bench/multiplex.mjs: the requester. The other end is the real `peershare serve`; this
// is the real client, the core the CLI and the extension use (PeerShareNode.connect, then
// download: share/1 over TLS 1.3 with pinned certificates, files as BLAKE3-verified blocks written
// through a partial file and renamed into place). The CLI's `get` takes one path per run, so the
// probe is what asks for several files at once. The scenario bundles this file with esbuild into
// its scratch folder and runs the bundle with plain Node, so the code measured is compiled as the
// CLI's is.
//
//   <bundle> fetch '<json>'   {home, address, remotes: [path], dest, connections}: opens
//                             `connections` connections to `address` (a peer `home` already reads
//                             from), asks for every file at once (spread over the connections in
//                             turn), downloads each into `dest`; prints one JSON line
//                             {seconds, dialSeconds, bytes, files, connections, blake3}

import { performance } from 'node:perf_hooks';
import { blake3Backend } from '../../src/core/blake3.ts';
import { download } from '../../src/core/download.ts';
import { PeerShareNode } from '../../src/core/node.ts';

async function fetch({ home, address, remotes, dest, connections: count }) {
  const node = await PeerShareNode.open({ home, name: () => 'bench requester' });
  const started = performance.now();
  const connections = await Promise.all(Array.from({ length: count }, () => node.connect(address)));
  const dialed = performance.now();
  const results = await Promise.all(remotes.map((remote, i) => download(connections[i % count], remote, dest)));
  const seconds = (performance.now() - started) / 1000;
  connections.forEach((c) => c.close());
  const bytes = results.reduce((sum, r) => sum + r.bytes, 0);
  process.stdout.write(`${JSON.stringify({ seconds, dialSeconds: (dialed - started) / 1000, bytes, files: results.length, connections: count, blake3: blake3Backend() })}\n`);
}

async function main() {
  const [role, arg] = process.argv.slice(2);
  if (role !== 'fetch') throw new Error(`unknown role ${role}: fetch`);
  await fetch(JSON.parse(arg));
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});
