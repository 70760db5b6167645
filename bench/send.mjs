#!/usr/bin/env node
// Send: sending a file or a folder to a peer against downloading the same from it (issue 12:
// "sending 1 GiB and 10,000 small files runs at the same speed as downloading them, within 5 %").
//
//   BENCH_SEND_MIB=64 BENCH_SEND_FILES=500 BENCH_RUNS=2 node bench/send.mjs
//
// Two peers, both the product, on loopback: `peershare serve DATA --receive-into INBOX --receive
// trusted` (shares DATA, takes offers from trusted peers into INBOX without asking), and the CLI
// in a home paired with it. Each round, for the 1 GiB file and then the folder of 10,000 files of
// 0.5-8 KiB: `peershare get <peer> data/<item> <dest>` (the serve sends) and `peershare send <peer>
// DATA/<item>` (the CLI sends, the serve receives), alternating. The same bytes go the other way
// over the same kind of connection: offer/accept is the only extra step. Each whole command is
// timed (Node's start-up, the dial, the transfer, the last rename); every arrival is checked (its
// size, or its file count and bytes) and removed, and dirty pages are synced, between runs.
// Ratio = send time / download time (goal <= 1.05).
//
// Environment: BENCH_SEND_MIB (default 1024), BENCH_SEND_FILES (10000), BENCH_RUNS (5),
// BENCH_TMP, BENCH_KEEP_TMP.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeTree } from './folder.mjs';
import {
  CLI,
  MiB,
  alternate,
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
  toMiB,
  treeStats,
  vmHwm,
  writeRandomFile,
} from './lib.mjs';

export const name = 'send';
export const title = 'sending a 1 GiB file and 10,000 small files vs downloading them';
export const tools = ['/usr/bin/time'];

const GOAL_RATIO = 1.05;

export async function run(ctx) {
  const sizeMiB = intEnv('BENCH_SEND_MIB', 1024, 1);
  const fileCount = intEnv('BENCH_SEND_FILES', 10_000, 1);
  const runs = intEnv('BENCH_RUNS', 5, 1);
  const { scope, scratch } = ctx;
  requireFreeSpace(scratch, 2 * sizeMiB * MiB + 256 * MiB, 'the send scenario');

  // 1. The data, the receiving peer (which also shares the data) and the CLI's paired home.
  const dataDir = path.join(scratch, 'data');
  const bigName = `random-${sizeMiB}MiB.bin`;
  ctx.log(`writing ${sizeMiB} MiB of random data and ${fileCount} small files`);
  writeRandomFile(path.join(dataDir, bigName), sizeMiB * MiB);
  const tree = writeTree(path.join(dataDir, 'tree'), fileCount, Math.min(100, fileCount));
  const inbox = path.join(scratch, 'inbox');
  const downloads = path.join(scratch, 'downloads');
  fs.mkdirSync(inbox, { recursive: true });
  fs.mkdirSync(downloads, { recursive: true });
  const cliHome = path.join(scratch, 'home-cli');
  const peer = await startPeerShare(scope, {
    folders: [dataDir],
    home: path.join(scratch, 'home-peer'),
    logFile: path.join(scratch, 'serve.log'),
    serveArgs: ['--receive-into', inbox, '--receive', 'trusted'],
  });
  pairClient(peer.invite, cliHome);
  const peerId = peer.info.peerId;
  ctx.log(`peershare serve on 127.0.0.1:${peer.info.port} (pid ${peer.pid}), receiving into ${inbox}`);

  const cli = (args, check) => ({
    serverCpu: () => processCpuSeconds(peer.pid),
    async run() {
      const r = await timedCommand(process.execPath, [CLI, ...args, '--json', '--home', cliHome], scratch);
      check(lastJsonLine(r.stdout));
      return r;
    },
  });
  const arrived = (where, item, expected) => {
    const target = path.join(where, item);
    const found = expected.files ? treeStats(target) : { files: 1, bytes: fs.statSync(target).size };
    if (found.files !== (expected.files ?? 1) || found.bytes !== expected.bytes) throw new Error(`${target}: ${JSON.stringify(found)}, expected ${JSON.stringify(expected)}`);
  };
  const sentAll = (result) => {
    if (result.entries?.some((e) => e.status !== 'received')) throw new Error(`send: ${JSON.stringify(result.entries.slice(0, 3))}`);
  };
  const compare = async (item, expected) => {
    const tools = {
      download: cli(['get', peerId, `data/${item}`, downloads], () => arrived(downloads, item, expected)),
      send: cli(['send', peerId, path.join(dataDir, item)], (result) => {
        sentAll(result);
        arrived(inbox, item, expected);
      }),
    };
    const { warmupSeconds, results } = await alternate(ctx, tools, {
      runs,
      between: () => clearAndSync(path.join(downloads, item), path.join(inbox, item)),
    });
    const download = summariseRuns(results.download);
    const send = summariseRuns(results.send);
    return { warmupSeconds, download, send, ratio: round(send.medianSeconds / download.medianSeconds, 2) };
  };

  // 2. The large file, then the folder.
  const big = await compare(bigName, { bytes: sizeMiB * MiB });
  const folder = await compare('tree', { files: tree.files, bytes: tree.bytes });
  const peerVmHwm = vmHwm(peer.pid);

  printTable([
    ['', 'download', 'send', 'send / download', 'CLI CPU (download, send)', 'serve CPU (download, send)'],
    ...[
      [`${sizeMiB} MiB file`, big],
      [`${tree.files} files`, folder],
    ].map(([label, c]) => [label, `${c.download.medianSeconds.toFixed(2)} s`, `${c.send.medianSeconds.toFixed(2)} s`, c.ratio, `${c.download.medianCpuSeconds} s, ${c.send.medianCpuSeconds} s`, `${c.download.medianServerCpuSeconds} s, ${c.send.medianServerCpuSeconds} s`]),
  ]);

  const fmt = (c) =>
    `download ${c.download.medianSeconds.toFixed(2)} s, send ${c.send.medianSeconds.toFixed(2)} s; CPU of the CLI ${c.download.medianCpuSeconds} s / ${c.send.medianCpuSeconds} s, of the serve ${c.download.medianServerCpuSeconds} s / ${c.send.medianServerCpuSeconds} s`;
  return {
    measured: `a ${sizeMiB} MiB file and ${tree.files} files (${toMiB(tree.bytes)} MiB) between \`peershare serve --receive-into\` and the CLI on loopback, TLS 1.3, BLAKE3-verified blocks, disk to disk; medians of ${runs} alternating runs`,
    summary: {
      fileBytes: sizeMiB * MiB,
      files: tree.files,
      filesBytes: tree.bytes,
      runs,
      order: 'for each item: alternating get and send; one untimed warm-up of each first',
      file: { downloadMedianSeconds: big.download.medianSeconds, sendMedianSeconds: big.send.medianSeconds, ratio: big.ratio },
      folder: { downloadMedianSeconds: folder.download.medianSeconds, sendMedianSeconds: folder.send.medianSeconds, ratio: folder.ratio },
      servePeakRssBytes: peerVmHwm,
    },
    goals: [
      goal({ label: `send: a ${sizeMiB} MiB file, time sending / time downloading`, measured: big.ratio, op: '<=', target: GOAL_RATIO }),
      goal({ label: `send: ${tree.files} small files, time sending / time downloading`, measured: folder.ratio, op: '<=', target: GOAL_RATIO }),
    ],
    figures: [
      { label: `${sizeMiB} MiB file`, text: fmt(big) },
      { label: `${tree.files} files`, text: fmt(folder) },
      { label: 'peaks', text: `CLI ${mib(big.send.clientMaxRssBytes)} sending, ${mib(big.download.clientMaxRssBytes)} downloading the file; serve ${mib(peerVmHwm)}` },
    ],
    raw: { big, folder },
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
