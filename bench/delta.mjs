#!/usr/bin/env node
// Delta: updating an older copy with `peershare sync`, against rsync's delta transfer over ssh
// (issue 13's figures).
//
//   BENCH_DELTA_MIB=64 BENCH_DELTA_FILES=500 BENCH_RUNS=1 node bench/delta.mjs
//
// 1. A file of BENCH_DELTA_MIB (1 GiB): the sharer's version has 100 bytes inserted at the start
//    and three 4 KiB regions changed (at a quarter, a half and three quarters); the receiver
//    holds the old version. Timed: `peershare sync <invite> data/big.bin <old copy> --json` and
//    `rsync -a --no-whole-file` of the same file into the same old copy over a loopback sshd.
//    Goals: PeerShare's bytes of file data received ≤ 1 % of the file; time ≤ 0.8 × rsync's.
// 2. A folder of BENCH_DELTA_FILES (10,000) small files (as the folder scenario), of which 1 % (100)
//    changed on the sharer (new content, new size); the receiver holds the old folder (cp -a, so
//    unchanged files keep size and time). Timed: `peershare sync` of the folder, `rsync -a`.
//    Goals: time ≤ 0.8 × rsync's; exactly the changed files updated.
// Each run starts from a fresh copy of the old version (made untimed, then `sync`); tools
// alternate; one untimed warm-up each (the sharer's block and chunk lists are then cached, as on a
// sharer that serves a file more than once; rsync has no cache and hashes both sides every time).
// Then the file again, PeerShare only, with the sharer's copy touched before each run (as just
// changed: nothing cached on the sharer), against the same rsync median: a figure, not a goal.
// rsync also runs with --fsync in the same rotation (a figure, not a goal): PeerShare flushes the
// new file to disk before it takes the name, rsync by default does not, and on this VM that flush
// of 1 GiB is a large part of the time.
// The folder again in a long-lived process, as the editor's extension host runs Follow Folder and
// Update from Peer (bench/probes/sync-peer.mjs: the core's syncFolder, the function the CLI's
// `sync` calls, on one connection opened once, with its record of what came from where kept
// between syncs), in the same rotation: a figure, not a goal. Its time runs from the sync's call
// to the record saved; it has no process to start and no connection to open, where rsync's
// includes its own start and ssh's.
// Shared cores only (no pinned variant).
//
// Environment: BENCH_DELTA_MIB (1024), BENCH_DELTA_FILES (10000), BENCH_FOLDERS (100), BENCH_RUNS (5),
// BENCH_TMP, BENCH_KEEP_TMP.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { writeTree } from './folder.mjs';
import {
  CLI,
  MiB,
  ROOT,
  alternate,
  bundleProbe,
  closeScope,
  goal,
  intEnv,
  isMain,
  lastJsonLine,
  openScope,
  pairClient,
  printTable,
  processCpuSeconds,
  requireFreeSpace,
  round,
  run as runCommand,
  runStandalone,
  startPeerShare,
  startSshd,
  stopChild,
  summariseRuns,
  timedCommand,
  toMiB,
  writeRandomFile,
} from './lib.mjs';

export const name = 'delta';
export const title = 'updating an older copy: a 1 GiB file with 100 bytes inserted and 3 × 4 KiB changed; 10,000 files of which 100 changed';
export const tools = ['/usr/bin/time', '/usr/sbin/sshd', 'ssh', 'ssh-keygen', 'rsync', 'cp'];

const GOAL_RATIO_TO_RSYNC = 0.8;
const GOAL_RECEIVED_FRACTION = 0.01;
const INSERTED_BYTES = 100;
const CHANGED_REGION_BYTES = 4096;
const SYNC_PROBE = path.join(ROOT, 'bench', 'probes', 'sync-peer.mjs');

/**
 * The long-lived syncing process (bench/probes/sync-peer.mjs), started once with a connection to
 * the sharer at `address`: sync(dest) syncs the peer's `remotePath` into dest and resolves with the
 * probe's line {seconds, filesChecked, filesChanged, bytesReceived, cpuSeconds}.
 */
async function startSyncProbe(scope, scratch, { home, address, remotePath }) {
  const bundle = path.join(scratch, 'sync-peer.cjs');
  await bundleProbe(SYNC_PROBE, bundle);
  const env = { ...process.env, NODE_PATH: path.join(ROOT, 'node_modules') };
  const child = spawn(process.execPath, [bundle, JSON.stringify({ home, address, remotePath })], { stdio: ['pipe', 'pipe', 'inherit'], env });
  scope.defer(() => stopChild(child));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    pid: child.pid,
    async sync(dest) {
      child.stdin.write(`${JSON.stringify({ dest })}\n`);
      const line = await lines.next();
      if (line.done) throw new Error(`the sync probe ended (exit ${child.exitCode})`);
      return JSON.parse(line.value);
    },
  };
}

/** The sharer's new version of `oldFile`: INSERTED_BYTES at the start, then the old bytes with three regions changed. */
function writeNewVersion(oldFile, newFile) {
  const size = fs.statSync(oldFile).size;
  const input = fs.openSync(oldFile, 'r');
  const output = fs.openSync(newFile, 'w');
  try {
    fs.writeSync(output, randomBytes(INSERTED_BYTES));
    const buffer = Buffer.allocUnsafe(8 * MiB);
    for (let position = 0; position < size; ) {
      const n = fs.readSync(input, buffer, 0, buffer.length, position);
      fs.writeSync(output, buffer, 0, n);
      position += n;
    }
    for (const fraction of [0.25, 0.5, 0.75]) {
      fs.writeSync(output, randomBytes(CHANGED_REGION_BYTES), 0, CHANGED_REGION_BYTES, INSERTED_BYTES + Math.floor(size * fraction));
    }
  } finally {
    fs.closeSync(input);
    fs.closeSync(output);
  }
}

/** Rewrites every hundredth file of `tree` with new content of another size; returns how many. */
function changeTree(tree) {
  let changed = 0;
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && files++ % 100 === 0) {
        fs.writeFileSync(p, randomBytes(fs.statSync(p).size + 1));
        changed++;
      }
    }
  };
  let files = 0;
  walk(tree);
  return changed;
}

/** rsync --stats: literal (sent) bytes and files transferred. */
function rsyncStats(stdout) {
  const number = (label) => Number((new RegExp(`${label}: ([\\d,]+)`).exec(stdout)?.[1] ?? 'NaN').replace(/,/g, ''));
  return { literalBytes: number('Literal data'), filesTransferred: number('Number of regular files transferred') };
}

export async function run(ctx) {
  const fileBytes = intEnv('BENCH_DELTA_MIB', 1024, 1) * MiB;
  const fileCount = intEnv('BENCH_DELTA_FILES', 10_000, 100);
  const folderCount = Math.min(intEnv('BENCH_FOLDERS', 100, 1), fileCount);
  const runs = intEnv('BENCH_RUNS', 5, 1);
  const { scratch } = ctx;
  requireFreeSpace(scratch, 5 * fileBytes + 200 * MiB, 'the delta scenario'); // the old and new versions, and a copy per tool

  // The old versions (what the receivers hold) and the sharer's new ones.
  const old = path.join(scratch, 'old');
  const data = path.join(scratch, 'data');
  ctx.log(`writing a file of ${toMiB(fileBytes)} MiB and ${fileCount} small files`);
  writeRandomFile(path.join(old, 'big.bin'), fileBytes);
  const made = writeTree(path.join(old, 'tree'), fileCount, folderCount);
  fs.mkdirSync(data, { recursive: true });
  writeNewVersion(path.join(old, 'big.bin'), path.join(data, 'big.bin'));
  runCommand('cp', ['-a', path.join(old, 'tree'), path.join(data, 'tree')]);
  const changedFiles = changeTree(path.join(data, 'tree'));
  ctx.log(`new versions: big.bin (+${INSERTED_BYTES} B at the start, 3 × ${CHANGED_REGION_BYTES} B changed), ${changedFiles} of ${made.files} files changed`);

  const scope = openScope(name);
  try {
    const sshd = await startSshd(scope, scratch);
    const server = await startPeerShare(scope, { folders: [data], home: path.join(scratch, 'home-server'), logFile: path.join(scratch, 'serve.log') });
    const home = path.join(scratch, 'home-client');
    pairClient(server.invite, home);
    const sync = (remote, dest) => timedCommand(process.execPath, [CLI, 'sync', server.invite, remote, dest, '--json', '--home', home], scratch);
    const rsync = (source, dest, extra = []) => timedCommand('rsync', ['-a', '--no-whole-file', '--stats', ...extra, '-e', sshd.rsyncShell, `${sshd.host}:${source}`, dest], scratch);

    // 1. The large file.
    const fileDest = (tool) => path.join(scratch, `file-${tool}`, 'big.bin');
    const freshFile = (tool) => {
      fs.mkdirSync(path.dirname(fileDest(tool)), { recursive: true });
      fs.copyFileSync(path.join(old, 'big.bin'), fileDest(tool));
      fs.utimesSync(fileDest(tool), 0, 0); // another time than the sharer's: both tools must look at it
    };
    const expectedSize = fileBytes + INSERTED_BYTES;
    /** rsync (delta mode) of the large file into a fresh copy of the old version, with `extra` options. */
    const rsyncFileTool = (tool, extra) => ({
      serverCpu: () => sshd.cpuSeconds(),
      async run() {
        freshFile(tool);
        runCommand('sync', []);
        const r = await rsync(path.join(data, 'big.bin'), fileDest(tool), extra);
        if (fs.statSync(fileDest(tool)).size !== expectedSize) throw new Error(`rsync ${extra.join(' ')}: wrong size`);
        await sshd.settle();
        return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds, bytesReceived: rsyncStats(r.stdout).literalBytes };
      },
    });
    const fileTools = {
      peershare: {
        serverCpu: () => processCpuSeconds(server.pid),
        async run() {
          freshFile('peershare');
          runCommand('sync', []);
          const r = await sync('data/big.bin', fileDest('peershare'));
          const result = lastJsonLine(r.stdout);
          if (result.filesChanged !== 1 || fs.statSync(fileDest('peershare')).size !== expectedSize) throw new Error(`peershare sync: ${r.stdout}`);
          return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds, bytesReceived: result.bytesReceived, bytesReused: result.bytesReused };
        },
      },
      rsync: rsyncFileTool('rsync', []),
      // Flushed to disk before it takes its name, as PeerShare's new file is (a figure, not a goal).
      rsyncFsync: rsyncFileTool('rsyncFsync', ['--fsync']),
    };
    ctx.log('-- the large file');
    const file = await alternate(ctx, fileTools, { runs, between: () => undefined, describe: (r) => `${r.seconds.toFixed(3)} s, ${r.bytesReceived} B of file data` });
    // The same update just after the sharer's file changed, as in real use: a new modification
    // time is a new version, so the sharer has no chunk list or block hashes for it and cuts and
    // hashes the file first (and a version changed within the last 3 s is never cached, so each of
    // these runs is cold). Compared with the rsync runs above: rsync caches nothing either way.
    ctx.log('-- the large file, the sharer\'s copy just changed before each run (nothing cached on the sharer)');
    const coldResults = [];
    for (let i = 0; i < runs; i++) {
      const now = new Date();
      fs.utimesSync(path.join(data, 'big.bin'), now, now);
      const result = await fileTools.peershare.run();
      ctx.log(`cold run ${i + 1}/${runs} peershare ${result.seconds.toFixed(3)} s, ${result.bytesReceived} B of file data`);
      coldResults.push(result);
    }

    // 2. The folder.
    const treeDest = (tool) => path.join(scratch, `tree-${tool}`);
    const freshTree = (tool) => {
      fs.rmSync(treeDest(tool), { recursive: true, force: true });
      runCommand('cp', ['-a', path.join(old, 'tree'), treeDest(tool)]);
    };
    const treeTools = {
      peershare: {
        serverCpu: () => processCpuSeconds(server.pid),
        async run() {
          freshTree('peershare');
          runCommand('sync', []);
          const r = await sync('data/tree', treeDest('peershare'));
          const result = lastJsonLine(r.stdout);
          if (result.filesChanged !== changedFiles || result.filesChecked !== made.files) throw new Error(`peershare sync: ${r.stdout}`);
          return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds, bytesReceived: result.bytesReceived, filesChanged: result.filesChanged };
        },
      },
      peershareWarm: {
        serverCpu: () => processCpuSeconds(server.pid),
        async run() {
          freshTree('peershareWarm');
          runCommand('sync', []);
          const result = await warm.sync(treeDest('peershareWarm'));
          if (result.filesChanged !== changedFiles || result.filesChecked !== made.files) throw new Error(`sync probe: ${JSON.stringify(result)}`);
          return { seconds: result.seconds, cpuSeconds: round(result.cpuSeconds, 2), bytesReceived: result.bytesReceived, filesChanged: result.filesChanged };
        },
      },
      rsync: {
        serverCpu: () => sshd.cpuSeconds(),
        async run() {
          freshTree('rsync');
          runCommand('sync', []);
          const r = await rsync(`${path.join(data, 'tree')}/`, `${treeDest('rsync')}/`);
          const stats = rsyncStats(r.stdout);
          if (stats.filesTransferred !== changedFiles) throw new Error(`rsync transferred ${stats.filesTransferred} files, not ${changedFiles}`);
          await sshd.settle();
          return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds, bytesReceived: stats.literalBytes, filesChanged: stats.filesTransferred };
        },
      },
    };
    const warmHome = path.join(scratch, 'home-warm');
    pairClient(server.invite, warmHome);
    const warm = await startSyncProbe(scope, scratch, { home: warmHome, address: `127.0.0.1:${server.info.port}`, remotePath: 'data/tree' });
    ctx.log('-- the folder');
    const tree = await alternate(ctx, treeTools, { runs, between: () => undefined, describe: (r) => `${r.seconds.toFixed(3)} s, ${r.filesChanged} files, ${r.bytesReceived} B` });

    const summarise = (results, extra) => summariseRuns(results, { bytesReceived: results.map((r) => r.bytesReceived), ...extra });
    const filePeer = summarise(file.results.peershare, { command: 'node dist/cli.js sync <invite> data/big.bin <old copy> --json' });
    const filePeerCold = summarise(coldResults, { command: 'touch data/big.bin on the sharer, then node dist/cli.js sync <invite> data/big.bin <old copy> --json' });
    const fileRsync = summarise(file.results.rsync, { command: 'rsync -a --no-whole-file --stats -e "ssh ..." <user>@127.0.0.1:<data>/big.bin <old copy>' });
    const fileRsyncFsync = summarise(file.results.rsyncFsync, { command: 'rsync -a --no-whole-file --stats --fsync -e "ssh ..." <user>@127.0.0.1:<data>/big.bin <old copy>' });
    const fileRatioFsync = round(filePeer.medianSeconds / fileRsyncFsync.medianSeconds, 2);
    const treePeer = summarise(tree.results.peershare, { command: 'node dist/cli.js sync <invite> data/tree <old copy> --json' });
    const treeRsync = summarise(tree.results.rsync, { command: 'rsync -a --no-whole-file --stats -e "ssh ..." <user>@127.0.0.1:<data>/tree/ <old copy>/' });
    const treeWarm = summarise(tree.results.peershareWarm, { command: 'bench/probes/sync-peer.mjs: syncFolder(data/tree, <old copy>) on an open connection, in a long-lived process' });
    const treeWarmRatio = round(treeWarm.medianSeconds / treeRsync.medianSeconds, 2);
    const fileRatio = round(filePeer.medianSeconds / fileRsync.medianSeconds, 2);
    const fileColdRatio = round(filePeerCold.medianSeconds / fileRsync.medianSeconds, 2);
    const treeRatio = round(treePeer.medianSeconds / treeRsync.medianSeconds, 2);
    const receivedFraction = Math.max(...filePeer.bytesReceived) / fileBytes;

    console.log('delta:');
    printTable([
      ['', 'median', 'runs (s)', 'file data received', 'client peak RSS'],
      ['peershare sync, file', `${filePeer.medianSeconds.toFixed(2)} s`, filePeer.seconds.join(' '), `${Math.max(...filePeer.bytesReceived)} B`, toMiB(filePeer.clientMaxRssBytes ?? 0)],
      ['peershare sync, file, sharer cold', `${filePeerCold.medianSeconds.toFixed(2)} s`, filePeerCold.seconds.join(' '), `${Math.max(...filePeerCold.bytesReceived)} B`, toMiB(filePeerCold.clientMaxRssBytes ?? 0)],
      ['rsync, file', `${fileRsync.medianSeconds.toFixed(2)} s`, fileRsync.seconds.join(' '), `${Math.max(...fileRsync.bytesReceived)} B literal`, toMiB(fileRsync.clientMaxRssBytes ?? 0)],
      ['rsync --fsync, file', `${fileRsyncFsync.medianSeconds.toFixed(2)} s`, fileRsyncFsync.seconds.join(' '), `${Math.max(...fileRsyncFsync.bytesReceived)} B literal`, toMiB(fileRsyncFsync.clientMaxRssBytes ?? 0)],
      ['peershare sync, folder', `${treePeer.medianSeconds.toFixed(2)} s`, treePeer.seconds.join(' '), `${Math.max(...treePeer.bytesReceived)} B`, toMiB(treePeer.clientMaxRssBytes ?? 0)],
      ['peershare sync, folder, long-lived process', `${treeWarm.medianSeconds.toFixed(2)} s`, treeWarm.seconds.join(' '), `${Math.max(...treeWarm.bytesReceived)} B`, '-'],
      ['rsync, folder', `${treeRsync.medianSeconds.toFixed(2)} s`, treeRsync.seconds.join(' '), `${Math.max(...treeRsync.bytesReceived)} B literal`, toMiB(treeRsync.clientMaxRssBytes ?? 0)],
    ]);

    return {
      measured: `a ${toMiB(fileBytes)} MiB file (+${INSERTED_BYTES} B at the start, 3 × 4 KiB changed) and ${made.files} files of which ${changedFiles} changed; medians of ${runs} alternating runs, shared cores`,
      summary: {
        fileBytes,
        files: made.files,
        changedFiles,
        runs,
        ssh: sshd.negotiated,
        file: { peershare: filePeer, rsync: fileRsync, ratio: fileRatio, receivedFraction: round(receivedFraction, 5), peershareSharerCold: filePeerCold, ratioSharerCold: fileColdRatio, rsyncFsync: fileRsyncFsync, ratioToRsyncFsync: fileRatioFsync },
        folder: { peershare: treePeer, rsync: treeRsync, ratio: treeRatio, peershareLongLived: treeWarm, ratioLongLived: treeWarmRatio },
      },
      goals: [
        goal({ label: 'delta: file data received / file size, 1 GiB file updated', measured: round(receivedFraction * 100, 3), op: '<=', target: GOAL_RECEIVED_FRACTION * 100, unit: '%' }),
        goal({ label: 'delta: PeerShare / rsync time, 1 GiB file updated', measured: fileRatio, op: '<=', target: GOAL_RATIO_TO_RSYNC }),
        goal({ label: 'delta: PeerShare / rsync time, 10,000 files, 100 changed', measured: treeRatio, op: '<=', target: GOAL_RATIO_TO_RSYNC }),
      ],
      figures: [
        { label: 'PeerShare sync, file', text: `${filePeer.medianSeconds.toFixed(2)} s, ${Math.max(...filePeer.bytesReceived)} B received (${round(receivedFraction * 100, 3)} %); PeerShare/rsync ${fileRatio}` },
        { label: 'PeerShare sync, file, the sharer\'s copy just changed (nothing cached)', text: `${filePeerCold.medianSeconds.toFixed(2)} s; PeerShare/rsync ${fileColdRatio}` },
        { label: 'rsync (delta), file', text: `${fileRsync.medianSeconds.toFixed(2)} s, ${Math.max(...fileRsync.bytesReceived)} B literal data` },
        { label: 'rsync --fsync (delta), file: flushed to disk as PeerShare flushes', text: `${fileRsyncFsync.medianSeconds.toFixed(2)} s; PeerShare/rsync --fsync ${fileRatioFsync}` },
        { label: 'PeerShare sync, folder', text: `${treePeer.medianSeconds.toFixed(2)} s, ${changedFiles} files updated; PeerShare/rsync ${treeRatio}` },
        { label: 'PeerShare sync, folder, in a long-lived process (as the editor runs it; no start, connection open)', text: `${treeWarm.medianSeconds.toFixed(2)} s, CPU ${treeWarm.medianCpuSeconds} s; PeerShare/rsync ${treeWarmRatio}` },
        { label: 'rsync -a, folder', text: `${treeRsync.medianSeconds.toFixed(2)} s` },
      ],
      raw: { file: { warmupSeconds: file.warmupSeconds, ...file.results, peershareSharerCold: coldResults }, folder: { warmupSeconds: tree.warmupSeconds, ...tree.results } },
    };
  } finally {
    await closeScope(scope);
  }
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
