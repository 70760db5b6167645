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
// The disk's own share, in the same run: `dd conv=fdatasync` copies the file (from the page
// cache) once, and to every client's folder at once, flushed to disk as a download is. What 8
// clients write (8 GiB) is more than this machine's disk takes at its burst rate, and one client's
// gigabyte is not: the two dd figures show where that ceiling is.
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
  timedCommand,
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
export const tools = ['/usr/bin/time', 'dd'];

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
  const source = path.join(dataDir, fileName);
  const ddOne = async (i) => {
    fs.mkdirSync(dests[i], { recursive: true });
    await timedCommand('dd', [`if=${source}`, `of=${path.join(dests[i], fileName)}`, 'bs=4M', 'conv=fdatasync', 'status=none'], scratch);
  };
  const timedTogether = async (count, fn) => {
    const started = process.hrtime.bigint();
    await Promise.all(Array.from({ length: count }, (_, i) => fn(i)));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    return { seconds: round(seconds), mibPerSecond: round((count * sizeMiB) / seconds, 1) };
  };
  const configurations = {
    diskSingle: () => timedTogether(1, ddOne),
    diskTogether: () => timedTogether(clients, ddOne),
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

  const results = { diskSingle: [], diskTogether: [], single: [], together: [] };
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
  const diskSingle = round(median(results.diskSingle.map((r) => r.mibPerSecond)), 1);
  const diskTogether = round(median(results.diskTogether.map((r) => r.mibPerSecond)), 1);
  // CPU of every client and the sharer per GiB moved, and cores kept busy: a configuration that
  // keeps both cores busy is bound by this CPU, not by the disk (the dd figures).
  const gib = sizeMiB / 1024;
  const cpuOf = (r, copies) => ({ perGiB: round(((r.cpuSeconds ?? 0) + (r.serverCpuSeconds ?? 0)) / (copies * gib), 2), coresBusy: round(((r.cpuSeconds ?? 0) + (r.serverCpuSeconds ?? 0)) / r.seconds, 2) });
  const cpu = {
    single: { perGiB: median(results.single.map((r) => cpuOf(r, 1).perGiB)), coresBusy: median(results.single.map((r) => cpuOf(r, 1).coresBusy)) },
    together: { perGiB: median(results.together.map((r) => cpuOf(r, clients).perGiB)), coresBusy: median(results.together.map((r) => cpuOf(r, clients).coresBusy)) },
  };
  printTable([
    ['', 'median MiB/s', 'runs (MiB/s)', 'wall (s)'],
    ['1 client', single, results.single.map((r) => r.mibPerSecond).join(' '), results.single.map((r) => r.seconds).join(' ')],
    [`${clients} clients, aggregate`, together, results.together.map((r) => r.mibPerSecond).join(' '), results.together.map((r) => r.seconds).join(' ')],
    ['dd to disk, 1 copy', diskSingle, results.diskSingle.map((r) => r.mibPerSecond).join(' '), results.diskSingle.map((r) => r.seconds).join(' ')],
    [`dd to disk, ${clients} copies at once`, diskTogether, results.diskTogether.map((r) => r.mibPerSecond).join(' '), results.diskTogether.map((r) => r.seconds).join(' ')],
  ]);
  console.log(`sharer peak RSS ${mib(serverVmHwm)}`);
  console.log(`CPU (clients and sharer) per GiB: 1 client ${cpu.single.perGiB} s, ${cpu.single.coresBusy} cores busy; ${clients} at once ${cpu.together.perGiB} s, ${cpu.together.coresBusy} cores busy`);
  return {
    measured: `${sizeMiB} MiB file, 1 client vs ${clients} at once; medians of ${runs} alternating runs`,
    summary: {
      fileBytes: sizeBytes,
      clients,
      runs,
      singleMiBps: single,
      aggregateMiBps: together,
      ratio,
      diskSingleMiBps: diskSingle,
      diskAggregateMiBps: diskTogether,
      aggregateOfDisk: round(together / diskTogether, 2),
      cpuSecondsPerGiB: { single: cpu.single.perGiB, together: cpu.together.perGiB },
      coresBusy: { single: cpu.single.coresBusy, together: cpu.together.coresBusy },
      serverPeakRssBytes: serverVmHwm,
    },
    goals: [goal({ label: `concurrent: ${clients} clients' aggregate / 1 client throughput`, measured: ratio, op: '>=', target: 1 })],
    figures: [
      { label: '1 client', text: `${single} MiB/s` },
      { label: `${clients} clients at once`, text: `${together} MiB/s aggregate (${ratio}x); sharer peak RSS ${mib(serverVmHwm)}` },
      { label: 'CPU per GiB moved (clients and sharer)', text: `1 client ${cpu.single.perGiB} s (${cpu.single.coresBusy} cores busy); ${clients} at once ${cpu.together.perGiB} s (${cpu.together.coresBusy} cores busy)` },
      { label: 'the disk alone (dd, flushed)', text: `1 copy ${diskSingle} MiB/s, ${clients} at once ${diskTogether} MiB/s: the ${clients} clients reach ${round(together / diskTogether, 2)}x of it` },
    ],
    raw: results,
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
