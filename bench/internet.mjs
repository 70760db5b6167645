#!/usr/bin/env node
// Internet: issue 14's figures through a small internet of network namespaces (two homes, each
// behind its own masquerading NAT, DHT nodes of our own in a "public" namespace; never the public
// DHT): the time from `peershare get <invite>` to the first byte, and a large file through the
// DHT against the same file over the direct route in the same namespaces (the sharer's port
// forwarded on its router).
//
//   BENCH_INTERNET_MIB=64 BENCH_RUNS=2 node bench/internet.mjs
//
// The work is in bench/probes/internet.ts (run with tsx: it builds the namespaces with
// test/netns/topology.ts); root, iproute2 and nftables are needed, as for test/netns.
// Goals: first byte in under 2 s; DHT throughput at least 0.8 x the direct route's.
//
// Environment: BENCH_INTERNET_MIB (default 1024), BENCH_INTERNET_RUNS (BENCH_RUNS, else 3).

import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { ROOT, goal, isMain, lastJsonLine, median, printTable, round, runStandalone } from './lib.mjs';

export const name = 'internet';
export const title = 'through two NATs by HyperDHT: time to the first byte, and throughput against the direct route';
export const tools = ['ip', 'nft'];

const GOAL_FIRST_BYTE_SECONDS = 2;
const GOAL_THROUGHPUT_RATIO = 0.8;

function probe(ctx) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench', 'probes', 'internet.ts')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      err += d;
      for (const line of String(d).split('\n')) if (line.startsWith('[internet]')) ctx.log(line.slice('[internet] '.length));
    });
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(lastJsonLine(out)) : reject(new Error(`the internet probe failed (${code}): ${err.trim().split('\n').slice(-3).join(' ')}`))));
  });
}

export async function run(ctx) {
  if (process.getuid?.() !== 0) throw new Error('the internet scenario needs root (network namespaces)');
  const { sizeMiB, runs, raw } = await probe(ctx);
  const med = (xs) => round(median(xs));
  const firstByte = { dht: med(raw.firstByte.dht), direct: med(raw.firstByte.direct) };
  const large = { dht: med(raw.large.dht), direct: med(raw.large.direct) };
  const mibps = (seconds) => round(sizeMiB / seconds, 0);
  const ratio = round(large.direct / large.dht, 2);
  printTable([
    ['', '1 byte, whole command', `${sizeMiB} MiB`, 'MiB/s'],
    ['through the DHT', `${firstByte.dht.toFixed(2)} s`, `${large.dht.toFixed(2)} s`, mibps(large.dht)],
    ['direct (forwarded port)', `${firstByte.direct.toFixed(2)} s`, `${large.direct.toFixed(2)} s`, mibps(large.direct)],
  ]);
  return {
    measured: `the real CLI in home2 getting from \`peershare serve --internet\` in home1, each home behind its own nftables NAT, a DHT of three nodes of our own; medians of ${runs} alternating runs`,
    summary: { sizeMiB, runs, firstByteSeconds: firstByte, largeSeconds: large, throughputRatio: ratio },
    goals: [
      goal({ label: 'internet: get <invite> of 1 byte through two NATs by the DHT, whole command', measured: firstByte.dht, op: '<', target: GOAL_FIRST_BYTE_SECONDS, unit: 's' }),
      goal({ label: `internet: ${sizeMiB} MiB throughput through the DHT / over the direct route`, measured: ratio, op: '>=', target: GOAL_THROUGHPUT_RATIO }),
    ],
    figures: [
      { label: 'first byte', text: `${firstByte.dht.toFixed(2)} s through the DHT (pairing, hole punching, TLS, the byte on disk, Node's start-up); ${firstByte.direct.toFixed(2)} s direct` },
      { label: `${sizeMiB} MiB`, text: `${large.dht.toFixed(2)} s (${mibps(large.dht)} MiB/s) through the DHT; ${large.direct.toFixed(2)} s (${mibps(large.direct)} MiB/s) direct` },
    ],
    raw,
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
