// Child of bench/multiplex.mjs: one end of a v2 connection (src/core/v2/) over the real first
// transport, TLS 1.3 with pinned certificates on loopback (src/core/transport-tls.ts). The scenario
// bundles this file with esbuild into its scratch folder and runs the bundle with plain Node, so
// the code measured is compiled as the CLI's is.
//
//   <bundle> id <home>                 prints {"peerId"} (creates the identity in <home>)
//   <bundle> serve '<json>'            {home, root, names, allow}: serves the files `names` of
//                                      `root` to the peer `allow`; prints {"event":"listening",
//                                      "port","peerId"}; runs until SIGTERM
//   <bundle> fetch '<json>'            {home, address, peerId, files: [{name, size}], dest,
//                                      connections}: dials `connections` connections, asks for
//                                      every file at once (spread over the connections in turn),
//                                      writes each to dest/<name>, checks sizes; prints one JSON
//                                      line {seconds, dialSeconds, bytes, files, connections}
//
// What crosses the connection is a minimal file service written here (capability `bench/1`):
// the real share/1 provider and client (src/core/v2/share-provider.ts, share-client.ts) are being
// written now. It does what a bulk transfer needs and nothing more: no manifest, no BLAKE3 blocks,
// no verification beyond sizes. To measure share/1 instead, replace the two functions of the file
// service below (serveFiles, fetchFile) with the provider's handler and the client's reader;
// nothing else in the scenario depends on them.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { PeerShareError } from '../../src/core/errors.ts';
import { loadOrCreateIdentity } from '../../src/core/identity.ts';
import { resolveLimits } from '../../src/core/limits.ts';
import { TlsListener, dialTls } from '../../src/core/transport-tls.ts';
import { acceptV2, dialV2 } from '../../src/core/v2/handshake.ts';

const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The file service: the one part to replace with share/1.

const CAPABILITY = 'bench/1';
/** What the responder reads and hands to the connection at a time: v2's largest frame. */
const READ_BYTES = MiB;
/** The requester gathers received slices (a TLS record's worth each) into writes of this size. */
const WRITE_BYTES = 256 * 1024;

/**
 * The responder's side: `bench.file {name}` answers with the file's bytes as DATA, read from disk
 * into two buffers in turn (one is read while the other is written), and ENDs with `{bytes}`.
 * Only the names it was given are served: a name from the peer is looked up, never joined to a path.
 */
function serveFiles(root, names) {
  const served = new Set(names);
  return {
    [CAPABILITY]: {
      params: {},
      handler: async (request, reply, signal) => {
        if (request.type !== 'bench.file' || typeof request.name !== 'string' || !served.has(request.name)) {
          throw new PeerShareError('NOT_FOUND', 'No such file in this benchmark.');
        }
        const file = await fs.promises.open(path.join(root, request.name), 'r');
        try {
          const buffers = [Buffer.allocUnsafe(READ_BYTES), Buffer.allocUnsafe(READ_BYTES)];
          let written = Promise.resolve();
          let bytes = 0;
          for (let i = 0; ; i++) {
            const buffer = buffers[i % 2];
            const { bytesRead } = await file.read(buffer, 0, buffer.length, null);
            await written; // the other buffer is free once the stream has taken it
            if (signal.aborted) throw new PeerShareError('CANCELLED');
            if (bytesRead === 0) break;
            written = reply.data(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead));
            bytes += bytesRead;
          }
          return { bytes };
        } finally {
          await file.close();
        }
      },
    },
  };
}

/** The requester's side: asks for one file on `connection` and writes it to `destFile` (a new file). */
async function fetchFile(connection, name, destFile) {
  const answer = connection.request({ type: 'bench.file', name });
  const file = await fs.promises.open(destFile, 'wx');
  let bytes = 0;
  try {
    let gathered = [];
    let gatheredBytes = 0;
    const flush = async () => {
      if (gatheredBytes === 0) return;
      await file.writev(gathered);
      gathered = [];
      gatheredBytes = 0;
    };
    for await (const part of answer) {
      if (part.kind !== 'data') continue;
      gathered.push(part.chunk);
      gatheredBytes += part.chunk.length;
      bytes += part.chunk.length;
      if (gatheredBytes >= WRITE_BYTES) await flush();
    }
    await flush();
    const end = await answer.result;
    if (end.bytes !== bytes) throw new Error(`${name}: the peer says ${end.bytes} bytes, ${bytes} arrived`);
  } finally {
    await file.close();
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// The two ends.

async function serve({ home, root, names, allow }) {
  const identity = await loadOrCreateIdentity(home);
  const connections = new Set();
  const listener = new TlsListener({
    identity,
    limits: resolveLimits(),
    stats: { connectionsAccepted: 0, handshakesRateLimited: 0, unauthenticatedEvicted: 0, oversizedHandshakes: 0 },
    log: () => undefined,
    onStream: (stream, admission) => {
      acceptV2(stream, {
        name: 'bench responder',
        ownPeerId: identity.peerId,
        admit: async () => {
          if (stream.peerId !== allow) throw new PeerShareError('PEER_UNTRUSTED', 'Only the benchmark requester is served.');
          admission.refundHandshake();
          admission.leave();
          return { serve: serveFiles(root, names), paired: false };
        },
      }).then(
        ({ connection }) => {
          connections.add(connection);
          connection.onClose(() => connections.delete(connection));
        },
        (err) => process.stderr.write(`refused a connection: ${err.message}\n`),
      );
    },
  });
  const port = await listener.listen(0, '127.0.0.1');
  process.once('SIGTERM', () => {
    void listener.close(() => connections.forEach((c) => c.close())).then(() => process.exit(0));
  });
  process.stdout.write(`${JSON.stringify({ event: 'listening', port, peerId: identity.peerId })}\n`);
}

async function fetch({ home, address, peerId, files, dest, connections: count }) {
  const identity = await loadOrCreateIdentity(home);
  const started = performance.now();
  const connections = await Promise.all(
    Array.from({ length: count }, async () => {
      const stream = await dialTls({ identity, address });
      return (await dialV2(stream, { expectedPeerId: peerId, name: 'bench requester', serve: {} })).connection;
    }),
  );
  const dialed = performance.now();
  const received = await Promise.all(files.map((f, i) => fetchFile(connections[i % count], f.name, path.join(dest, f.name))));
  const seconds = (performance.now() - started) / 1000;
  connections.forEach((c) => c.close());
  files.forEach((f, i) => {
    if (received[i] !== f.size || fs.statSync(path.join(dest, f.name)).size !== f.size) throw new Error(`${f.name}: ${received[i]} bytes, expected ${f.size}`);
  });
  const bytes = received.reduce((a, b) => a + b, 0);
  process.stdout.write(`${JSON.stringify({ seconds, dialSeconds: (dialed - started) / 1000, bytes, files: files.length, connections: count })}\n`);
}

async function main() {
  const [role, arg] = process.argv.slice(2);
  if (role === 'id') {
    process.stdout.write(`${JSON.stringify({ peerId: (await loadOrCreateIdentity(arg)).peerId })}\n`);
  } else if (role === 'serve') {
    await serve(JSON.parse(arg));
  } else if (role === 'fetch') {
    await fetch(JSON.parse(arg));
  } else {
    throw new Error(`unknown role ${role}: id, serve or fetch`);
  }
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});
