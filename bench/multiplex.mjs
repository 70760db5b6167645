#!/usr/bin/env node
// Multiplex: several transfers on one v2 connection against the same transfers on a connection
// each (issue 11: 4 files of 256 MiB over one connection at least 0.95 x the throughput of 4
// connections).
//
//   BENCH_MULTIPLEX_MIB=32 BENCH_RUNS=2 node bench/multiplex.mjs
//
// The v2 connection (src/core/v2/connection.ts) is not behind the CLI yet, so both ends are
// bench/probes/multiplex-peer.mjs, bundled with esbuild into the scratch folder: a responder that
// reads the files from disk and a requester that writes them to disk, over TLS 1.3 with pinned
// certificates on loopback (src/core/transport-tls.ts), in two processes as two peers would be.
// What they exchange is a minimal file service written in the probe (capability `bench/1`, no
// BLAKE3 blocks), because the real share/1 handler is being written now; the probe says how to
// switch to it. Each run: one requester process asks for all the files at once, either on one
// connection or on one connection per file, alternating; it times from its first dial to the
// last file closed (Node's start-up is not counted: it is the same for both). Ratio = time on N
// connections / time on one connection = throughput on one / throughput on N (goal >= 0.95).
//
// Environment: BENCH_MULTIPLEX_FILES (default 4), BENCH_MULTIPLEX_MIB (256), BENCH_RUNS (5),
// BENCH_TMP, BENCH_KEEP_TMP.

import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  MiB,
  ROOT,
  alternate,
  clearAndSync,
  goal,
  intEnv,
  isMain,
  lastJsonLine,
  mib,
  printTable,
  processCpuSeconds,
  requireFreeSpace,
  round,
  run as runCommand,
  runStandalone,
  stopChild,
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

/** The probe and the core it imports as one CommonJS file, compiled as the CLI's bundle is. */
async function bundleProbe(outFile) {
  const esbuild = createRequire(path.join(ROOT, 'package.json'))('esbuild');
  await esbuild.build({
    entryPoints: [PROBE],
    outfile: outFile,
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    external: ['vscode', '@napi-rs/blake-hash'],
    minify: true,
    logLevel: 'warning',
  });
  esbuild.stop(); // its service process would otherwise outlive the build, among the benchmark's children
}

/** The responder: serves `names` from `root` to the peer `allow` until the scope closes. */
async function startResponder(scope, { bundle, home, root, names, allow, logFile }) {
  const arg = JSON.stringify({ home, root, names, allow });
  const child = spawn(process.execPath, [bundle, 'serve', arg], { stdio: ['ignore', 'pipe', fs.openSync(logFile, 'a')] });
  scope.defer(() => stopChild(child));
  const info = await new Promise((resolve, reject) => {
    let buffered = '';
    child.stdout.on('data', (d) => {
      buffered += d;
      const nl = buffered.indexOf('\n');
      if (nl >= 0) {
        try {
          resolve(JSON.parse(buffered.slice(0, nl)));
        } catch (err) {
          reject(err);
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`the responder exited with ${code}; see ${logFile}`)));
  });
  return { child, pid: child.pid, ...info };
}

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
  await bundleProbe(bundle);
  const requesterHome = path.join(scratch, 'home-requester');
  const requesterId = JSON.parse(runCommand(process.execPath, [bundle, 'id', requesterHome])).peerId;

  // 2. The responder, then the requester on one connection and on one connection per file, in turn.
  const responder = await startResponder(scope, {
    bundle,
    home: path.join(scratch, 'home-responder'),
    root: dataDir,
    names: files.map((f) => f.name),
    allow: requesterId,
    logFile: path.join(scratch, 'responder.log'),
  });
  ctx.log(`responder on 127.0.0.1:${responder.port} (pid ${responder.pid})`);
  const fetchWith = (connections) => ({
    serverCpu: () => processCpuSeconds(responder.pid),
    async run() {
      const arg = { home: requesterHome, address: `127.0.0.1:${responder.port}`, peerId: responder.peerId, files, dest: destDir, connections };
      const r = await timedCommand(process.execPath, [bundle, 'fetch', JSON.stringify(arg)], scratch);
      const result = lastJsonLine(r.stdout);
      if (result.bytes !== fileCount * sizeBytes) throw new Error(`fetch on ${connections} connection(s): ${r.stdout}`);
      return { seconds: result.seconds, commandSeconds: r.seconds, dialSeconds: result.dialSeconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
    },
  });
  const tools = { one: fetchWith(1), many: fetchWith(fileCount) };
  const { warmupSeconds, results } = await alternate(ctx, tools, {
    runs,
    between: () => clearAndSync(...files.map((f) => path.join(destDir, f.name))),
    describe: (r) => `${r.seconds.toFixed(3)} s  ${(totalMiB / r.seconds).toFixed(0)} MiB/s  (dial ${(r.dialSeconds * 1000).toFixed(0)} ms)`,
  });
  const responderVmHwm = vmHwm(responder.pid);

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

  const fmt = (t) => `${t.medianSeconds.toFixed(2)} s (${t.medianMiBps} MiB/s); CPU requester ${t.medianCpuSeconds} s, responder ${t.medianServerCpuSeconds} s`;
  return {
    measured: `${fileCount} files of ${sizeMiB} MiB over v2 on TLS 1.3 on loopback, disk to disk, bench/1 file service (no BLAKE3 yet); medians of ${runs} alternating runs`,
    summary: {
      files: fileCount,
      fileBytes: sizeBytes,
      runs,
      order: `alternating 1 connection and ${fileCount} connections; one untimed warm-up of each first`,
      service: 'bench/1 (bench/probes/multiplex-peer.mjs): DATA read from disk in 1 MiB buffers, written in 256 KiB writes; sizes checked, no hashing. To become share/1 once its handler lands.',
      oneConnectionMedianSeconds: one.medianSeconds,
      manyConnectionsMedianSeconds: many.medianSeconds,
      ratio,
      responderPeakRssBytes: responderVmHwm,
      requesterPeakRssBytes: { one: one.clientMaxRssBytes, many: many.clientMaxRssBytes },
    },
    goals: [goal({ label: `multiplex: throughput of ${fileCount} transfers on 1 connection / on ${fileCount} connections`, measured: ratio, op: '>=', target: GOAL_RATIO })],
    figures: [
      { label: '1 connection', text: fmt(one) },
      { label: `${fileCount} connections`, text: fmt(many) },
      { label: 'peaks', text: `requester ${mib(one.clientMaxRssBytes)} (1 connection), ${mib(many.clientMaxRssBytes)} (${fileCount}); responder ${mib(responderVmHwm)}` },
    ],
    raw: { warmupSeconds, one, many },
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
