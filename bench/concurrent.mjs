#!/usr/bin/env node
// Concurrent: 8 clients download the same 1 GiB file from one sharer at once. Is the aggregate
// throughput at least that of a single client?
//
//   BENCH_SIZE_MIB=32 BENCH_CONCURRENT_RUNS=2 node bench/concurrent.mjs
//
// Each run times one client alone (throughput = size / its time) and then 8 clients started
// together, each with its own identity and destination folder (aggregate = 8 x size / time until
// the last one finishes). The two configurations alternate; downloads are deleted and synced to
// disk between them. Each client is paired beforehand (a cheap `peershare ls`), so only the
// transfers are timed. Also records the sharer's peak RSS (VmHWM).
//
// Environment: BENCH_SIZE_MIB (default 1024), BENCH_CONCURRENT_RUNS (default 3: a run moves
// 9 x the file), BENCH_CLIENTS (8), BENCH_TMP, BENCH_KEEP_TMP.

import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  MiB,
  clearAndSync,
  goal,
  intEnv,
  isMain,
  median,
  mib,
  pairClient,
  peershareGet,
  printTable,
  processCpuSeconds,
  requireFreeSpace,
  round,
  runStandalone,
  startPeerShare,
  vmHwm,
  withNoiseGauge,
  writeRandomFile,
} from './lib.mjs';

export const name = 'concurrent';
export const title = '8 clients downloading the 1 GiB file at once';
export const tools = ['/usr/bin/time'];

export async function run(ctx) {
  const sizeMiB = intEnv('BENCH_SIZE_MIB', 1024, 1);
  const runs = intEnv('BENCH_CONCURRENT_RUNS', 3, 1);
  const clients = intEnv('BENCH_CLIENTS', 8, 2);
  const sizeBytes = sizeMiB * MiB;
  const fileName = `random-${sizeMiB}MiB.bin`;
  const { scope, scratch } = ctx;
  // The source, plus every client's copy at once.
  requireFreeSpace(scratch, (clients + 1) * sizeBytes + 64 * MiB, 'the concurrent scenario');

  const dataDir = path.join(scratch, 'data');
  ctx.log(`writing ${sizeMiB} MiB of random data`);
  writeRandomFile(path.join(dataDir, fileName), sizeBytes);
  const server = await startPeerShare(scope, { folders: [dataDir], home: path.join(scratch, 'home-server'), logFile: path.join(scratch, 'serve.log') });
  ctx.log(`peershare serve on port ${server.info.port} (pid ${server.pid})`);

  const homes = Array.from({ length: clients }, (_, i) => path.join(scratch, `home-client-${i + 1}`));
  const dests = homes.map((_, i) => path.join(scratch, `dest-${i + 1}`));
  ctx.log(`pairing ${clients} clients`);
  for (const home of homes) pairClient(server.invite, home);

  const getOne = async (i) => {
    fs.mkdirSync(dests[i], { recursive: true });
    const r = await peershareGet({ invite: server.invite, remote: `data/${fileName}`, dest: dests[i], home: homes[i], scratch });
    if (r.result.bytes !== sizeBytes || fs.statSync(path.join(dests[i], fileName)).size !== sizeBytes) throw new Error(`client ${i + 1}: wrong size ${r.stdout}`);
    return { seconds: round(r.seconds), maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
  };
  const configurations = {
    single: async () => {
      const r = await getOne(0);
      return { ...r, mibPerSecond: round(sizeMiB / r.seconds, 1) };
    },
    together: async () => {
      const started = process.hrtime.bigint();
      const each = await Promise.all(homes.map((_, i) => getOne(i)));
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      return {
        seconds: round(seconds),
        mibPerSecond: round((clients * sizeMiB) / seconds, 1),
        clientSeconds: each.map((r) => r.seconds),
        cpuSeconds: round(each.reduce((sum, r) => sum + (r.cpuSeconds ?? 0), 0), 2),
        maxRssBytes: Math.max(...each.map((r) => r.maxRssBytes ?? 0)) || undefined,
      };
    },
  };

  // One untimed single download first: brings the file into the page cache.
  ctx.log('warm-up: one untimed single download');
  await configurations.single();
  clearAndSync(...dests);

  const results = { single: [], together: [] };
  for (let i = 1; i <= runs; i++) {
    for (const [config, fn] of Object.entries(configurations)) {
      const r = await withNoiseGauge(() => processCpuSeconds(server.pid), fn);
      results[config].push(r);
      ctx.log(`run ${i}/${runs} ${config.padEnd(8)} ${r.seconds.toFixed(2)} s  ${r.mibPerSecond} MiB/s${r.clientSeconds ? `  (clients: ${r.clientSeconds.join(' ')} s)` : ''}  server cpu ${r.serverCpuSeconds} s`);
      clearAndSync(...dests);
    }
  }
  const serverVmHwm = vmHwm(server.pid);

  const single = round(median(results.single.map((r) => r.mibPerSecond)), 1);
  const together = round(median(results.together.map((r) => r.mibPerSecond)), 1);
  const ratio = round(together / single, 2);
  printTable([
    ['', 'median MiB/s', 'runs (MiB/s)', 'wall (s)'],
    ['1 client', single, results.single.map((r) => r.mibPerSecond).join(' '), results.single.map((r) => r.seconds).join(' ')],
    [`${clients} clients, aggregate`, together, results.together.map((r) => r.mibPerSecond).join(' '), results.together.map((r) => r.seconds).join(' ')],
  ]);
  console.log(`sharer peak RSS ${mib(serverVmHwm)}`);
  return {
    measured: `${sizeMiB} MiB file, 1 client vs ${clients} at once; medians of ${runs} alternating runs`,
    summary: {
      fileBytes: sizeBytes,
      clients,
      runs,
      singleMiBps: single,
      aggregateMiBps: together,
      ratio,
      serverPeakRssBytes: serverVmHwm,
    },
    goals: [goal({ label: `concurrent: ${clients} clients' aggregate / 1 client throughput`, measured: ratio, op: '>=', target: 1 })],
    figures: [
      { label: '1 client', text: `${single} MiB/s` },
      { label: `${clients} clients at once`, text: `${together} MiB/s aggregate (${ratio}x); sharer peak RSS ${mib(serverVmHwm)}` },
    ],
    raw: results,
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
