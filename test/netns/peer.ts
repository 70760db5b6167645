import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { PeerShareNode, download } from '../../src/core';

/**
 * One PeerShare installation inside a "home" namespace, with internet reach on the namespaced DHT.
 *   share HOME FOLDER BOOTSTRAP   shares FOLDER, prints its invite as one JSON line, runs until stdin closes
 *   get HOME INVITE DEST BOOTSTRAP  connects with the invite, downloads the share's first root into DEST,
 *                                   prints {route, connectMs, files} as one JSON line
 * Errors print {error: code, message} and exit 2.
 */
async function main(): Promise<void> {
  const [mode, home, ...rest] = process.argv.slice(2);
  const bootstrap = rest[rest.length - 1].split(',');
  const node = await PeerShareNode.open({ home, name: () => mode, discovery: () => false, internet: () => ({ bootstrap }) });
  if (mode === 'share') {
    const shared = await node.share({ folders: [rest[0]], host: '0.0.0.0', port: 0, internet: true });
    if (shared.internetError) throw shared.internetError;
    process.stdout.write(`${JSON.stringify({ invite: shared.server.createInvite({ ttlMs: 600_000, uses: 10 }) })}\n`);
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on('end', resolve));
    await node.close();
    return;
  }
  const [invite, dest] = rest;
  const started = performance.now();
  const conn = await node.connect(invite);
  const connectMs = performance.now() - started;
  const root = conn.welcome.roots[0];
  await fs.mkdir(dest, { recursive: true });
  const result = await download(conn, root, dest);
  const totalMs = performance.now() - started;
  conn.close();
  await node.close();
  process.stdout.write(`${JSON.stringify({ route: conn.route, connectMs, totalMs, files: result.files, target: path.relative(dest, result.target) })}\n`);
}

main().then(
  () => process.exit(0),
  (err: { code?: string; message?: string }) => {
    process.stdout.write(`${JSON.stringify({ error: err.code ?? 'INTERNAL', message: err.message ?? String(err) })}\n`);
    process.exit(2);
  },
);
