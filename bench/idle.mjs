#!/usr/bin/env node
// Idle: a sharer with nothing to do. How much heap does it keep, and does anything wake it up?
//
//   BENCH_IDLE_SETTLE_SECONDS=1 BENCH_IDLE_SECONDS=3 node bench/idle.mjs
//
// Runs the real CLI, `node --expose-gc --require bench/probes/heap-probe.cjs dist/cli.js serve`,
// sharing a small folder, in two phases: just started, and after one client has paired and
// listed the share (connection handling has run and ended). Each phase waits for the sharer to
// settle, then samples every thread's voluntary context switches (/proc/<pid>/task/*/status)
// once a second over a window: a thread that sleeps and is woken counts one switch, so the main
// thread's count per second is its wake-up rate (timers, I/O). Then it sends SIGUSR2, on which
// the preloaded probe runs the garbage collector and writes process.memoryUsage(). Goals: heap
// used under 30 MiB, the main thread woken less than once a second.
//
// Environment: BENCH_IDLE_SETTLE_SECONDS (default 5), BENCH_IDLE_SECONDS (sampling window, 10),
// BENCH_TMP, BENCH_KEEP_TMP.

import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CLI,
  ROOT,
  contextSwitches,
  goal,
  intEnv,
  isMain,
  mib,
  printTable,
  round,
  run as runCommand,
  runStandalone,
  sleep,
  startPeerShare,
  toMiB,
  vmHwm,
  vmRss,
} from './lib.mjs';

export const name = 'idle';
export const title = 'idle sharer';
export const tools = [];

const GOAL_HEAP_MIB = 30;
const GOAL_WAKEUPS_PER_SECOND = 1;
const PROBE = path.join(ROOT, 'bench', 'probes', 'heap-probe.cjs');

/** Voluntary switches of the main thread and of all threads together, now. */
function switchesNow(pid) {
  const threads = contextSwitches(pid);
  if (!threads) throw new Error(`the sharer (pid ${pid}) is gone`);
  return {
    main: threads.find((t) => t.tid === pid)?.voluntary ?? 0,
    all: threads.reduce((sum, t) => sum + t.voluntary, 0),
    threads,
  };
}

/** Asks the preloaded probe for the heap after a full collection. */
async function heapAfterGc(pid, outFile) {
  fs.rmSync(outFile, { force: true });
  process.kill(pid, 'SIGUSR2');
  for (let i = 0; i < 250 && !fs.existsSync(outFile); i++) await sleep(20);
  if (!fs.existsSync(outFile)) throw new Error('the heap probe did not answer SIGUSR2 within 5 s');
  const heap = JSON.parse(fs.readFileSync(outFile, 'utf8'));
  if (!heap.gcExposed) throw new Error('the heap probe could not run the garbage collector (--expose-gc missing)');
  return heap;
}

async function measurePhase(ctx, label, pid, { settleSeconds, windowSeconds, heapFile }) {
  ctx.log(`${label}: settling ${settleSeconds} s, then sampling ${windowSeconds} s`);
  await sleep(settleSeconds * 1000);
  const first = switchesNow(pid);
  let previous = first;
  const perSecond = [];
  for (let s = 0; s < windowSeconds; s++) {
    await sleep(1000);
    const now = switchesNow(pid);
    perSecond.push({ main: now.main - previous.main, all: now.all - previous.all });
    previous = now;
  }
  // Which threads woke, by name (main thread, libuv workers, V8 platform threads).
  const byThread = previous.threads
    .map((t) => ({ tid: t.tid, name: t.name, wakeups: t.voluntary - (first.threads.find((f) => f.tid === t.tid)?.voluntary ?? 0) }))
    .filter((t) => t.wakeups > 0);
  const rssBytes = vmRss(pid);
  const heap = await heapAfterGc(pid, heapFile);
  const result = {
    phase: label,
    windowSeconds,
    mainWakeupsPerSecond: round((previous.main - first.main) / windowSeconds, 2),
    allThreadsWakeupsPerSecond: round((previous.all - first.all) / windowSeconds, 2),
    mainWakeupsEachSecond: perSecond.map((p) => p.main),
    allThreadsWakeupsEachSecond: perSecond.map((p) => p.all),
    threadsThatWoke: byThread,
    threads: previous.threads.length,
    heapUsedBytes: heap.heapUsed,
    heapTotalBytes: heap.heapTotal,
    externalBytes: heap.external,
    rssBytes,
  };
  ctx.log(
    `${label}: main thread ${result.mainWakeupsPerSecond} wake-ups/s, all ${result.threads} threads ${result.allThreadsWakeupsPerSecond}/s; ` +
      `heap used ${toMiB(heap.heapUsed)} MiB (total ${toMiB(heap.heapTotal)} MiB), RSS ${mib(rssBytes)}`,
  );
  return result;
}

export async function run(ctx) {
  const settleSeconds = intEnv('BENCH_IDLE_SETTLE_SECONDS', 5, 0);
  const windowSeconds = intEnv('BENCH_IDLE_SECONDS', 10, 1);
  const { scope, scratch } = ctx;

  const dataDir = path.join(scratch, 'data');
  fs.mkdirSync(dataDir, { recursive: true });
  for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(dataDir, `note-${i}.txt`), `file ${i}\n`.repeat(100));
  const heapFile = path.join(scratch, 'heap.json');
  const server = await startPeerShare(scope, {
    folders: [dataDir],
    home: path.join(scratch, 'home-server'),
    logFile: path.join(scratch, 'serve.log'),
    nodeArgs: ['--expose-gc', '--require', PROBE],
    env: { ...process.env, BENCH_HEAP_PROBE_OUT: heapFile },
  });
  ctx.log(`peershare serve on port ${server.info.port} (pid ${server.pid})`);

  const options = { settleSeconds, windowSeconds, heapFile };
  const phases = [await measurePhase(ctx, 'just started', server.pid, options)];
  // One client pairs and lists the share, then leaves: whatever it set up must not keep ticking.
  runCommand(process.execPath, [CLI, 'ls', server.invite, 'data', '--json', '--home', path.join(scratch, 'home-client')]);
  phases.push(await measurePhase(ctx, 'after a client', server.pid, options));
  const peakRss = vmHwm(server.pid);

  const worstHeap = Math.max(...phases.map((p) => p.heapUsedBytes));
  const worstWakeups = Math.max(...phases.map((p) => p.mainWakeupsPerSecond));
  printTable([
    ['phase', 'main wake-ups/s', 'all threads/s', 'each second (main)', 'heap used', 'heap total', 'RSS'],
    ...phases.map((p) => [p.phase, p.mainWakeupsPerSecond, p.allThreadsWakeupsPerSecond, p.mainWakeupsEachSecond.join(' '), mib(p.heapUsedBytes), mib(p.heapTotalBytes), mib(p.rssBytes)]),
  ]);
  return {
    measured: `peershare serve of 10 small files, idle; ${windowSeconds} s sampled after ${settleSeconds} s, fresh and after one client`,
    summary: {
      windowSeconds,
      settleSeconds,
      heapUsedBytes: worstHeap,
      mainWakeupsPerSecond: worstWakeups,
      allThreadsWakeupsPerSecond: Math.max(...phases.map((p) => p.allThreadsWakeupsPerSecond)),
      rssBytes: Math.max(...phases.map((p) => p.rssBytes)),
      peakRssBytes: peakRss,
      method: 'heap: process.memoryUsage().heapUsed after gc() in the real CLI (preloaded probe, SIGUSR2); wake-ups: voluntary_ctxt_switches per second',
    },
    goals: [
      goal({ label: 'idle: heap used after GC', measured: toMiB(worstHeap), op: '<', target: GOAL_HEAP_MIB, unit: 'MiB' }),
      goal({ label: 'idle: main thread wake-ups', measured: worstWakeups, op: '<', target: GOAL_WAKEUPS_PER_SECOND, unit: '/s' }),
    ],
    figures: phases.map((p) => ({
      label: `idle, ${p.phase}`,
      text: `heap ${toMiB(p.heapUsedBytes)} MiB used / ${toMiB(p.heapTotalBytes)} MiB total, RSS ${mib(p.rssBytes)}; ${p.mainWakeupsPerSecond} wake-ups/s (main), ${p.allThreadsWakeupsPerSecond}/s (all threads)`,
    })),
    raw: { phases },
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
