#!/usr/bin/env node
// Memory: peak memory of sender and receiver must not grow with the file: a 1 GiB and a 4 GiB
// transfer give the same peak, under 100 MiB.
//
//   BENCH_MEMORY_MIB_SMALL=32 BENCH_MEMORY_MIB_LARGE=128 BENCH_MEMORY_RUNS=2 node bench/memory.mjs
//
// One `peershare serve` per size (so each sharer's VmHWM, read from /proc, belongs to one size),
// and `peershare get` of each file, alternating sizes, each client's peak RSS from /usr/bin/time
// (%M). Flat: the large file's peak is within 10% (or 10 MiB, whichever is more) of the small
// file's, for the client and for the sharer.
//
// Environment: BENCH_MEMORY_MIB_SMALL (default BENCH_SIZE_MIB, 1024), BENCH_MEMORY_MIB_LARGE
// (4096), BENCH_MEMORY_RUNS (default BENCH_RUNS, 5), BENCH_TMP, BENCH_KEEP_TMP.

import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  MiB,
  clearAndSync,
  goal,
  intEnv,
  isMain,
  mib,
  pairClient,
  peershareGet,
  printTable,
  requireFreeSpace,
  round,
  runStandalone,
  startPeerShare,
  toMiB,
  vmHwm,
  writeRandomFile,
} from './lib.mjs';

export const name = 'memory';
export const title = 'peak memory flat as the file grows (1 GiB vs 4 GiB)';
export const tools = ['/usr/bin/time'];

const GOAL_PEAK_MIB = 100;

/** How much the large file's peak may exceed the small one's and still count as flat. */
const allowance = (smallPeakBytes) => Math.max(0.1 * smallPeakBytes, 10 * MiB);

export async function run(ctx) {
  const smallMiB = intEnv('BENCH_MEMORY_MIB_SMALL', intEnv('BENCH_SIZE_MIB', 1024, 1), 1);
  const largeMiB = intEnv('BENCH_MEMORY_MIB_LARGE', 4096, 1);
  const runs = intEnv('BENCH_MEMORY_RUNS', intEnv('BENCH_RUNS', 5, 1), 1);
  if (largeMiB <= smallMiB) throw new Error('BENCH_MEMORY_MIB_LARGE must be larger than BENCH_MEMORY_MIB_SMALL');
  const { scope, scratch } = ctx;
  // Both sources, plus the larger download.
  requireFreeSpace(scratch, (smallMiB + 2 * largeMiB + 64) * MiB, 'the memory scenario');

  const home = path.join(scratch, 'home-client');
  const sizes = {};
  for (const [label, sizeMiB] of [
    ['small', smallMiB],
    ['large', largeMiB],
  ]) {
    const dataDir = path.join(scratch, `data-${label}`);
    const fileName = `random-${sizeMiB}MiB.bin`;
    ctx.log(`writing ${sizeMiB} MiB of random data`);
    writeRandomFile(path.join(dataDir, fileName), sizeMiB * MiB);
    const server = await startPeerShare(scope, { folders: [dataDir], home: path.join(scratch, `home-server-${label}`), logFile: path.join(scratch, `serve-${label}.log`) });
    ctx.log(`peershare serve for ${sizeMiB} MiB on port ${server.info.port} (pid ${server.pid})`);
    pairClient(server.invite, home);
    sizes[label] = { sizeMiB, fileName, remote: `${path.basename(dataDir)}/${fileName}`, server, runs: [] };
  }

  const destDir = path.join(scratch, 'dest');
  const getOnce = async (s) => {
    fs.mkdirSync(destDir, { recursive: true });
    const r = await peershareGet({ invite: s.server.invite, remote: s.remote, dest: destDir, home, scratch });
    if (r.result.bytes !== s.sizeMiB * MiB) throw new Error(`peershare get: wrong size ${r.stdout}`);
    clearAndSync(destDir);
    return r;
  };
  ctx.log('warm-up: one untimed get of each size (page cache)');
  for (const s of Object.values(sizes)) await getOnce(s);

  for (let i = 1; i <= runs; i++) {
    for (const [label, s] of Object.entries(sizes)) {
      const r = await getOnce(s);
      s.runs.push({ seconds: round(r.seconds), clientMaxRssBytes: r.maxRssBytes ?? r.result.maxRssBytes, cliReportedMaxRssBytes: r.result.maxRssBytes });
      ctx.log(`run ${i}/${runs} ${label} (${s.sizeMiB} MiB): ${r.seconds.toFixed(2)} s, client peak ${mib(r.maxRssBytes)}, sharer peak so far ${mib(vmHwm(s.server.pid))}`);
    }
  }

  for (const s of Object.values(sizes)) {
    s.clientPeakBytes = Math.max(...s.runs.map((r) => r.clientMaxRssBytes));
    s.serverPeakBytes = vmHwm(s.server.pid);
  }
  const { small, large } = sizes;
  const highestPeak = Math.max(small.clientPeakBytes, large.clientPeakBytes, small.serverPeakBytes, large.serverPeakBytes);
  printTable([
    ['file', 'client peak RSS', 'sharer peak RSS', 'runs (s)'],
    ...[small, large].map((s) => [`${s.sizeMiB} MiB`, mib(s.clientPeakBytes), mib(s.serverPeakBytes), s.runs.map((r) => r.seconds).join(' ')]),
  ]);

  const flat = (side, key) =>
    goal({
      label: `memory: ${side} peak, ${largeMiB} MiB vs ${smallMiB} MiB file (flat: within 10% or 10 MiB)`,
      measured: toMiB(large[key]),
      op: '<=',
      target: toMiB(small[key] + allowance(small[key])),
      unit: 'MiB',
    });
  const describe = (s) => ({ fileMiB: s.sizeMiB, clientPeakRssBytes: s.clientPeakBytes, serverPeakRssBytes: s.serverPeakBytes, runs: s.runs });
  return {
    measured: `peershare get of a ${smallMiB} MiB and a ${largeMiB} MiB file, ${runs} alternating runs each, one sharer per size`,
    summary: {
      runs,
      small: { fileMiB: smallMiB, clientPeakRssBytes: small.clientPeakBytes, serverPeakRssBytes: small.serverPeakBytes },
      large: { fileMiB: largeMiB, clientPeakRssBytes: large.clientPeakBytes, serverPeakRssBytes: large.serverPeakBytes },
      highestPeakBytes: highestPeak,
    },
    goals: [
      flat('client', 'clientPeakBytes'),
      flat('sharer', 'serverPeakBytes'),
      goal({ label: 'memory: highest peak RSS, either side, either size', measured: toMiB(highestPeak), op: '<', target: GOAL_PEAK_MIB, unit: 'MiB' }),
    ],
    figures: [small, large].map((s) => ({ label: `${s.sizeMiB} MiB file`, text: `client peak ${mib(s.clientPeakBytes)}, sharer peak ${mib(s.serverPeakBytes)}` })),
    raw: { small: describe(small), large: describe(large) },
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
