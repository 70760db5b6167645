#!/usr/bin/env node
// Multiplex: several transfers on one v2 connection against the same transfers on a connection
// each (issue 11: 4 files of 256 MiB over one connection at least 0.95 x the throughput of 4
// connections).
//
//   BENCH_MULTIPLEX_MIB=32 BENCH_RUNS=2 node bench/multiplex.mjs
//
// Both ends are the product: the sharer is `peershare serve`, the requester is
// bench/probes/multiplex-peer.mjs (bundled with esbuild into the scratch folder), which runs the
// core's own client, PeerShareNode.connect and download, because the CLI's `get` asks for one path
// per run. share/1 over TLS 1.3 with pinned certificates on loopback, every block BLAKE3-verified,
// written through a partial file, in two processes as two peers would be. Each run: one requester
// process asks for all the files at once, either on one connection or on one connection per file,
// alternating; it times from its first dial to the last file renamed into place (Node's start-up
// is not counted: it is the same for both). Ratio = time on N connections / time on one
// connection = throughput on one / throughput on N (goal >= 0.95).
//
// Environment: BENCH_MULTIPLEX_FILES (default 4), BENCH_MULTIPLEX_MIB (256), BENCH_RUNS (5),
// BENCH_TMP, BENCH_KEEP_TMP.

import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  MiB,
  ROOT,
  alternate,
  bundleProbe,
  clearAndSync,
  goal,
  intEnv,
  isMain,
  lastJsonLine,
  mib,
  pairClient,
  printTable,
  processCpuSeconds,
  requireFreeSpace,
  round,
  runStandalone,
  startPeerShare,
  summariseRuns,
  timedCommand,
  vmHwm,
  writeRandomFile,
} from './lib.mjs';

export const name = 'multiplex';
export const title = '4 files of 256 MiB on one v2 connection vs one connection each';
export const tools = ['/usr/bin/time'];

const GOAL_RATIO = 0.95;
const PROBE = path.join(ROOT, 'bench', 'probes', 'multiplex-peer.mjs');

export async function run(ctx) {
  const fileCount = intEnv('BENCH_MULTIPLEX_FILES', 4, 2);
  const sizeMiB = intEnv('BENCH_MULTIPLEX_MIB', 256, 1);
  const runs = intEnv('BENCH_RUNS', 5, 1);
  const sizeBytes = sizeMiB * MiB;
  const totalMiB = fileCount * sizeMiB;
  const { scope, scratch } = ctx;
  requireFreeSpace(scratch, 2 * fileCount * sizeBytes + 64 * MiB, 'the multiplex scenario');

  // 1. The data (random, so incompressible) and the two peers' identities.
  const dataDir = path.join(scratch, 'data');
  const destDir = path.join(scratch, 'dest');
  fs.mkdirSync(destDir, { recursive: true });
  const files = Array.from({ length: fileCount }, (_, i) => ({ name: `random-${i + 1}-${sizeMiB}MiB.bin`, size: sizeBytes }));
  ctx.log(`writing ${fileCount} files of ${sizeMiB} MiB of random data`);
  for (const f of files) writeRandomFile(path.join(dataDir, f.name), sizeBytes);
  const bundle = path.join(scratch, 'multiplex-peer.cjs');
  await bundleProbe(PROBE, bundle);
  const requesterHome = path.join(scratch, 'home-requester');

  // 2. The sharer, then the requester on one connection and on one connection per file, in turn.
  const sharer = await startPeerShare(scope, { folders: [dataDir], home: path.join(scratch, 'home-sharer'), logFile: path.join(scratch, 'serve.log') });
  pairClient(sharer.invite, requesterHome);
  ctx.log(`peershare serve on 127.0.0.1:${sharer.info.port} (pid ${sharer.pid})`);
  const fetchWith = (connections) => ({
    serverCpu: () => processCpuSeconds(sharer.pid),
    async run() {
      const arg = { home: requesterHome, address: `127.0.0.1:${sharer.info.port}`, remotes: files.map((f) => `data/${f.name}`), dest: destDir, connections };
      // The bundle lives in the scratch folder; the native BLAKE3 binding it keeps external is
      // found in this checkout's node_modules, as the CLI's bundle finds it.
      const env = { ...process.env, NODE_PATH: path.join(ROOT, 'node_modules') };
      const r = await timedCommand(process.execPath, [bundle, 'fetch', JSON.stringify(arg)], scratch, { env });
      const result = lastJsonLine(r.stdout);
      if (result.bytes !== fileCount * sizeBytes) throw new Error(`fetch on ${connections} connection(s): ${r.stdout}`);
      if (result.blake3 !== 'native' && process.env.PEERSHARE_BLAKE3 !== 'fallback') throw new Error(`the requester hashed with the ${result.blake3} BLAKE3, not the native one the CLI uses`);
      return { seconds: result.seconds, commandSeconds: r.seconds, dialSeconds: result.dialSeconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
    },
  });
  const tools = { one: fetchWith(1), many: fetchWith(fileCount) };
  const { warmupSeconds, results } = await alternate(ctx, tools, {
    runs,
    between: () => clearAndSync(...files.map((f) => path.join(destDir, f.name))),
    describe: (r) => `${r.seconds.toFixed(3)} s  ${(totalMiB / r.seconds).toFixed(0)} MiB/s  (dial ${(r.dialSeconds * 1000).toFixed(0)} ms)`,
  });
  const sharerVmHwm = vmHwm(sharer.pid);

  // 3. Summary.
  const perMode = (mode, command) => {
    const t = summariseRuns(results[mode], { command, commandSeconds: results[mode].map((r) => round(r.commandSeconds)), dialSeconds: results[mode].map((r) => round(r.dialSeconds)) });
    return { ...t, medianMiBps: round(totalMiB / t.medianSeconds, 0) };
  };
  const one = perMode('one', `fetch: ${fileCount} requests at once on 1 connection`);
  const many = perMode('many', `fetch: ${fileCount} requests at once, one per connection`);
  const ratio = round(many.medianSeconds / one.medianSeconds, 2);

  printTable([
    ['', 'median', 'MiB/s', 'runs (s)', 'requester peak RSS', 'requester CPU'],
    ...[
      ['1 connection', one],
      [`${fileCount} connections`, many],
    ].map(([label, t]) => [label, `${t.medianSeconds.toFixed(2)} s`, t.medianMiBps, t.seconds.map((x) => x.toFixed(2)).join(' '), mib(t.clientMaxRssBytes), `${t.medianCpuSeconds} s`]),
  ]);

  const fmt = (t) => `${t.medianSeconds.toFixed(2)} s (${t.medianMiBps} MiB/s); CPU requester ${t.medianCpuSeconds} s, sharer ${t.medianServerCpuSeconds} s`;
  return {
    measured: `${fileCount} files of ${sizeMiB} MiB over share/1 (v2) on TLS 1.3 on loopback, disk to disk, BLAKE3-verified blocks; medians of ${runs} alternating runs`,
    summary: {
      files: fileCount,
      fileBytes: sizeBytes,
      runs,
      order: `alternating 1 connection and ${fileCount} connections; one untimed warm-up of each first`,
      service: 'share/1: `peershare serve` and the core client (PeerShareNode.connect + download) in bench/probes/multiplex-peer.mjs; every block BLAKE3-verified, partial file renamed into place',
      oneConnectionMedianSeconds: one.medianSeconds,
      manyConnectionsMedianSeconds: many.medianSeconds,
      ratio,
      sharerPeakRssBytes: sharerVmHwm,
      requesterPeakRssBytes: { one: one.clientMaxRssBytes, many: many.clientMaxRssBytes },
    },
    goals: [goal({ label: `multiplex: throughput of ${fileCount} transfers on 1 connection / on ${fileCount} connections`, measured: ratio, op: '>=', target: GOAL_RATIO })],
    figures: [
      { label: '1 connection', text: fmt(one) },
      { label: `${fileCount} connections`, text: fmt(many) },
      { label: 'peaks', text: `requester ${mib(one.clientMaxRssBytes)} (1 connection), ${mib(many.clientMaxRssBytes)} (${fileCount}); sharer ${mib(sharerVmHwm)}` },
    ],
    raw: { warmupSeconds, one, many },
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
