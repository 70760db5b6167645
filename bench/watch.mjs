#!/usr/bin/env node
// Watch: how soon a change on the sharer is in a follower's copy (`peershare sync --watch`,
// issue 13's figure: within 1 s at the median and 2 s at p99, with 1,000 files changing in a burst).
//
//   BENCH_WATCH_FILES=2000 BENCH_WATCH_BURST=200 BENCH_RUNS=1 node bench/watch.mjs
//
// The sharer shares a tree of BENCH_WATCH_FILES (10,000) small files in BENCH_FOLDERS (100)
// folders (as the folder scenario); a follower runs `peershare sync <invite> data/tree <mirror>
// --watch --json` and has made its first sync. Then:
// 1. Single changes: BENCH_WATCH_SINGLES (20) times, one file is rewritten with new bytes (its size
//    kept), 300 ms apart; its latency is from the end of the write to the moment the mirror's copy
//    holds the new bytes.
// 2. Bursts: BENCH_RUNS (3) times, BENCH_WATCH_BURST (1,000) files spread over every folder are
//    rewritten back to back; each file's latency is measured as above.
// Arrival is seen with inotify on the mirror's folders (an update lands by rename), each file's
// first bytes compared with what was written, and a sweep every 100 ms for anything missed.
// No anchor tool: rsync and scp have no watch mode (lsyncd and Syncthing would be the anchors, and
// neither is in Debian's base set); the goals are the absolute ones.
//
// Environment: BENCH_WATCH_FILES, BENCH_FOLDERS, BENCH_WATCH_BURST, BENCH_WATCH_SINGLES, BENCH_RUNS,
// BENCH_TMP, BENCH_KEEP_TMP.

import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { writeTree } from './folder.mjs';
import { CLI, closeScope, goal, intEnv, isMain, median, openScope, pairClient, printTable, round, runStandalone, sleep, spawnTracked, startPeerShare, stopChild } from './lib.mjs';

export const name = 'watch';
export const title = 'following a folder: how soon a change on the sharer is in the follower\'s copy, one at a time and 1,000 in a burst';
export const tools = [];

const GOAL_MEDIAN_SECONDS = 1;
const GOAL_P99_SECONDS = 2;
/** Bytes compared to tell the new version from the old. */
const MARK_BYTES = 16;
const ARRIVAL_DEADLINE_MS = 60_000;

function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Every file below `root`, relative, sorted. */
function filesOf(root) {
  const found = [];
  const walk = (rel) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const child = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(child);
      else if (e.isFile()) found.push(child);
    }
  };
  walk('');
  return found.sort();
}

/** Watches the mirror's folders; `expect(rel, mark)` resolves with the time (performance.now) its copy first holds `mark`. */
function arrivals(mirror) {
  const waiting = new Map();
  const check = (rel) => {
    const wanted = waiting.get(rel);
    if (!wanted) return;
    let fd;
    try {
      fd = fs.openSync(path.join(mirror, rel), 'r');
      const head = Buffer.alloc(MARK_BYTES);
      fs.readSync(fd, head, 0, MARK_BYTES, 0);
      if (head.equals(wanted.mark)) {
        waiting.delete(rel);
        wanted.resolve(performance.now());
      }
    } catch {
      // Not there yet, or being replaced: the next event or sweep looks again.
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  };
  const watchers = [];
  for (const dir of new Set(filesOf(mirror).map((rel) => path.dirname(rel)))) {
    watchers.push(fs.watch(path.join(mirror, dir), (_event, file) => file && check(dir === '.' ? file : `${dir}/${file}`)));
  }
  const sweep = setInterval(() => {
    for (const rel of [...waiting.keys()]) check(rel);
  }, 100);
  return {
    expect(rel, mark) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${rel} did not arrive in the mirror within ${ARRIVAL_DEADLINE_MS / 1000} s`)), ARRIVAL_DEADLINE_MS);
        waiting.set(rel, { mark, resolve: (t) => (clearTimeout(timer), resolve(t)) });
      });
    },
    close() {
      clearInterval(sweep);
      for (const w of watchers) w.close();
    },
  };
}

/** Rewrites `rel` in the shared tree with new bytes of the same size; returns the new first bytes. */
function rewrite(tree, rel) {
  const file = path.join(tree, rel);
  const bytes = randomBytes(fs.statSync(file).size);
  fs.writeFileSync(file, bytes);
  return bytes.subarray(0, MARK_BYTES);
}

export async function run(ctx) {
  const fileCount = intEnv('BENCH_WATCH_FILES', 10_000, 10);
  const folderCount = Math.min(intEnv('BENCH_FOLDERS', 100, 1), fileCount);
  const burst = Math.min(intEnv('BENCH_WATCH_BURST', 1000, 1), fileCount);
  const singles = intEnv('BENCH_WATCH_SINGLES', 20, 1);
  const runs = intEnv('BENCH_RUNS', 3, 1);
  const { scratch } = ctx;

  const data = path.join(scratch, 'data');
  const tree = path.join(data, 'tree');
  ctx.log(`writing ${fileCount} files in ${folderCount} folders`);
  writeTree(tree, fileCount, folderCount);
  const files = filesOf(tree);

  const scope = openScope(name);
  try {
    const server = await startPeerShare(scope, { folders: [data], home: path.join(scratch, 'home-server'), logFile: path.join(scratch, 'serve.log') });
    const home = path.join(scratch, 'home-client');
    pairClient(server.invite, home);
    const mirror = path.join(scratch, 'mirror');
    const follower = spawnTracked(process.execPath, [CLI, 'sync', server.invite, 'data/tree', mirror, '--watch', '--json', '--home', home]);
    scope.defer(() => stopChild(follower, 'SIGINT'));
    const reports = [];
    let failed = '';
    follower.stderr.on('data', (d) => (failed += d));
    const firstSync = new Promise((resolve, reject) => {
      readline.createInterface({ input: follower.stdout }).on('line', (line) => {
        const report = JSON.parse(line);
        reports.push(report);
        if (report.kind === 'initial') resolve(report);
      });
      follower.once('exit', (code) => reject(new Error(`sync --watch exited with ${code}: ${failed}`)));
    });
    const initial = await firstSync;
    ctx.log(`first sync: ${initial.filesChecked} files in ${initial.seconds.toFixed(2)} s`);
    const seen = arrivals(mirror);
    try {
      // 1. One change at a time.
      const single = [];
      for (let i = 0; i < singles; i++) {
        const rel = files[(i * 7919) % files.length];
        const mark = rewrite(tree, rel);
        const written = performance.now();
        single.push((await seen.expect(rel, mark)) - written);
        await sleep(300);
      }
      ctx.log(`single changes: median ${round(median(single), 1)} ms, max ${round(Math.max(...single), 1)} ms`);

      // 2. Bursts: `burst` files spread over every folder, written back to back.
      const bursts = [];
      for (let r = 0; r < runs; r++) {
        await sleep(1000);
        const step = Math.max(1, Math.floor(files.length / burst));
        const chosen = Array.from({ length: burst }, (_, i) => files[(i * step + r) % files.length]);
        const waits = [];
        const started = performance.now();
        for (const rel of chosen) {
          const mark = rewrite(tree, rel);
          const written = performance.now();
          waits.push(seen.expect(rel, mark).then((t) => t - written));
        }
        const writeMs = performance.now() - started;
        const latencies = await Promise.all(waits);
        const allInMs = performance.now() - started;
        bursts.push({ latencies, writeMs, allInMs });
        ctx.log(`burst ${r + 1}: ${burst} files written in ${round(writeMs, 0)} ms; latency median ${round(median(latencies), 0)} ms, p99 ${round(percentile(latencies, 99), 0)} ms; all in the mirror after ${round(allInMs, 0)} ms`);
      }
      const all = bursts.flatMap((b) => b.latencies);
      const burstMedian = median(all) / 1000;
      const burstP99 = percentile(all, 99) / 1000;
      const singleMedian = median(single) / 1000;
      const singleP99 = percentile(single, 99) / 1000;
      const resyncs = reports.filter((r) => r.kind === 'resync').length;

      console.log('watch:');
      printTable([
        ['', 'median', 'p99', 'max'],
        ['one change at a time', `${round(singleMedian * 1000, 0)} ms`, `${round(singleP99 * 1000, 0)} ms`, `${round(Math.max(...single), 0)} ms`],
        [`${burst} files in a burst (${runs} bursts)`, `${round(burstMedian * 1000, 0)} ms`, `${round(burstP99 * 1000, 0)} ms`, `${round(Math.max(...all), 0)} ms`],
      ]);
      return {
        measured: `a follower of ${files.length} files in ${folderCount} folders: ${singles} single changes, ${runs} bursts of ${burst} files; loopback, shared cores`,
        summary: {
          files: files.length,
          folders: folderCount,
          burst,
          runs,
          initialSyncSeconds: round(initial.seconds, 2),
          single: { medianSeconds: round(singleMedian, 3), p99Seconds: round(singleP99, 3) },
          bursts: bursts.map((b) => ({ medianSeconds: round(median(b.latencies) / 1000, 3), p99Seconds: round(percentile(b.latencies, 99) / 1000, 3), writeSeconds: round(b.writeMs / 1000, 3), allInSeconds: round(b.allInMs / 1000, 3) })),
          burstMedianSeconds: round(burstMedian, 3),
          burstP99Seconds: round(burstP99, 3),
          followerBatches: reports.filter((r) => r.kind === 'changes').length,
          followerResyncs: resyncs,
        },
        goals: [
          goal({ label: `watch: median latency, ${burst} files changing in a burst`, measured: round(burstMedian, 3), op: '<=', target: GOAL_MEDIAN_SECONDS, unit: 's' }),
          goal({ label: `watch: p99 latency, ${burst} files changing in a burst`, measured: round(burstP99, 3), op: '<=', target: GOAL_P99_SECONDS, unit: 's' }),
        ],
        figures: [
          { label: 'one change at a time', text: `median ${round(singleMedian * 1000, 0)} ms, p99 ${round(singleP99 * 1000, 0)} ms` },
          { label: `${burst} files in a burst`, text: `median ${round(burstMedian * 1000, 0)} ms, p99 ${round(burstP99 * 1000, 0)} ms, all in after ${round(median(bursts.map((b) => b.allInMs)) / 1000, 2)} s (median of ${runs}); ${resyncs} whole resyncs` },
        ],
        raw: { single, bursts: bursts.map((b) => ({ ...b, latencies: b.latencies.map((x) => round(x, 1)) })) },
      };
    } finally {
      seen.close();
    }
  } finally {
    await closeScope(scope);
  }
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
