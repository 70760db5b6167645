// Child of bench/list.mjs, run as `node --import tsx bench/probes/list-client.mjs` so it can use
// the peer core from src/ directly: connects to a running sharer with an invite, lists one
// folder `runs` times on that connection, and prints one JSON line with, per listing, the time
// from sending the request to the first page of entries and to the last.
//
// Arguments (JSON in argv[2]): { invite, remotePath, runs, home }.

import { performance } from 'node:perf_hooks';
// src/ is CommonJS TypeScript (tsx compiles it); its `export *` re-exports are only visible
// through the default export from an ES module.
import core from '../../src/core/index.ts';

const { TrustStore, connectToPeer, loadOrCreateIdentity, parseInvite } = core;

const { invite, remotePath, runs, home } = JSON.parse(process.argv[2]);
const identity = await loadOrCreateIdentity(home);
const trust = await TrustStore.open(home);
const parsed = parseInvite(invite);
const connectStarted = performance.now();
const conn = await connectToPeer({ identity, trust, addresses: parsed.addresses, expectedPeerId: parsed.peerId, token: parsed.token, name: 'bench-list' });
const connectMs = performance.now() - connectStarted;

const listings = [];
try {
  for (let i = 0; i < runs; i++) {
    let firstPageMs;
    let firstPageEntries;
    const started = performance.now();
    const entries = await conn.list(remotePath, (batch) => {
      if (firstPageMs === undefined) {
        firstPageMs = performance.now() - started;
        firstPageEntries = batch.length;
      }
    });
    listings.push({ firstPageMs, firstPageEntries, totalMs: performance.now() - started, entries: entries.length });
  }
} finally {
  conn.close();
}
process.stdout.write(`${JSON.stringify({ connectMs, listings })}\n`);
