#!/usr/bin/env node
// List: a folder of 100,000 files, shared by `peershare serve`. How soon does the first page of
// the listing arrive, and how much memory does the sharer need?
//
//   BENCH_LIST_FILES=5000 BENCH_RUNS=2 node bench/list.mjs
//
// Each run: bench/probes/list-client.mjs (the peer core from src/, through tsx) connects with the
// invite and times one listing from sending the request to the first page of entries and to the
// end; then, for the whole-command view, `peershare ls <invite> data/big --json` is timed
// (Node start-up and printing 100,000 entries included). The sharer's peak RSS (VmHWM) is read
// from /proc after all runs. Goals: first page under 100 ms, sharer under 150 MiB.
//
// Environment: BENCH_LIST_FILES (default 100000), BENCH_RUNS (5), BENCH_TMP, BENCH_KEEP_TMP.

import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CLI,
  ROOT,
  goal,
  intEnv,
  isMain,
  lastJsonLine,
  median,
  mib,
  pairClient,
  printTable,
  round,
  runStandalone,
  startPeerShare,
  timedCommand,
  toMiB,
  vmHwm,
} from './lib.mjs';

export const name = 'list';
export const title = 'list a folder of 100,000 files';
export const tools = ['/usr/bin/time'];

const GOAL_FIRST_PAGE_MS = 100;
const GOAL_SHARER_MIB = 150;
const PROBE = path.join(ROOT, 'bench', 'probes', 'list-client.mjs');

/** `count` empty files: the listing's cost is per entry, not per byte. */
function writeEmptyFiles(dir, count) {
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 0; i < count; i++) fs.closeSync(fs.openSync(path.join(dir, `file-${String(i).padStart(6, '0')}.txt`), 'w'));
}

export async function run(ctx) {
  const fileCount = intEnv('BENCH_LIST_FILES', 100_000, 1);
  const runs = intEnv('BENCH_RUNS', 5, 1);
  const { scope, scratch } = ctx;

  const dataDir = path.join(scratch, 'data');
  ctx.log(`creating ${fileCount} empty files`);
  writeEmptyFiles(path.join(dataDir, 'big'), fileCount);
  const server = await startPeerShare(scope, { folders: [dataDir], home: path.join(scratch, 'home-server'), logFile: path.join(scratch, 'serve.log') });
  ctx.log(`peershare serve on port ${server.info.port} (pid ${server.pid})`);
  const home = path.join(scratch, 'home-client');
  pairClient(server.invite, home);

  const results = [];
  for (let i = 1; i <= runs; i++) {
    // The library's view: one listing on an open connection.
    const probe = await timedCommand(process.execPath, ['--import', 'tsx', PROBE, JSON.stringify({ invite: server.invite, remotePath: 'data/big', runs: 1, home })], scratch, { cwd: ROOT });
    const { connectMs, listings } = lastJsonLine(probe.stdout);
    const [listing] = listings;
    if (listing.entries !== fileCount) throw new Error(`the probe listed ${listing.entries} entries, expected ${fileCount}`);
    // The command line's view: the whole `peershare ls`.
    const ls = await timedCommand(process.execPath, [CLI, 'ls', server.invite, 'data/big', '--json', '--home', home], scratch);
    const lsEntries = lastJsonLine(ls.stdout).entries.length;
    if (lsEntries !== fileCount) throw new Error(`peershare ls listed ${lsEntries} entries, expected ${fileCount}`);
    const r = {
      firstPageMs: round(listing.firstPageMs, 1),
      firstPageEntries: listing.firstPageEntries,
      listingMs: round(listing.totalMs, 1),
      connectMs: round(connectMs, 1),
      lsSeconds: round(ls.seconds),
      lsMaxRssBytes: ls.maxRssBytes,
      serverVmHwmBytes: vmHwm(server.pid),
    };
    results.push(r);
    ctx.log(`run ${i}/${runs}: first page (${r.firstPageEntries} entries) ${r.firstPageMs} ms, whole listing ${r.listingMs} ms; peershare ls ${r.lsSeconds} s; sharer peak ${mib(r.serverVmHwmBytes)}`);
  }
  const serverVmHwm = vmHwm(server.pid);
  const firstPageMs = round(median(results.map((r) => r.firstPageMs)), 1);
  const listingMs = round(median(results.map((r) => r.listingMs)), 1);
  const lsSeconds = round(median(results.map((r) => r.lsSeconds)), 2);

  printTable([
    ['', 'median', 'runs'],
    ['first page (ms)', firstPageMs, results.map((r) => r.firstPageMs).join(' ')],
    ['whole listing (ms)', listingMs, results.map((r) => r.listingMs).join(' ')],
    ['peershare ls (s)', lsSeconds, results.map((r) => r.lsSeconds).join(' ')],
  ]);
  console.log(`sharer peak RSS ${mib(serverVmHwm)}`);
  return {
    measured: `folder of ${fileCount} empty files; ${runs} runs`,
    summary: {
      files: fileCount,
      runs,
      firstPageMedianMs: firstPageMs,
      firstPageEntries: results[0].firstPageEntries,
      listingMedianMs: listingMs,
      lsMedianSeconds: lsSeconds,
      serverPeakRssBytes: serverVmHwm,
    },
    goals: [
      goal({ label: 'list: first page', measured: firstPageMs, op: '<', target: GOAL_FIRST_PAGE_MS, unit: 'ms' }),
      goal({ label: "list: sharer's peak RSS", measured: toMiB(serverVmHwm), op: '<', target: GOAL_SHARER_MIB, unit: 'MiB' }),
    ],
    figures: [
      { label: 'first page', text: `${firstPageMs} ms (${results[0].firstPageEntries} entries); whole listing ${listingMs} ms` },
      { label: 'peershare ls, whole command', text: `${lsSeconds} s` },
      { label: "sharer's peak RSS", text: mib(serverVmHwm) },
    ],
    raw: { results },
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
