#!/usr/bin/env node
// Folder: 10,000 small random files (512 B to 8 KiB each) in 100 folders, over loopback.
//
//   BENCH_FILES=500 BENCH_RUNS=2 node bench/folder.mjs
//
// Runs `peershare get` of the folder and two anchors over a loopback sshd (OpenSSH's default
// cipher): `rsync -a` and `scp -r`, alternating within each run. Each whole command is timed; the
// download is checked (file count and bytes); each run writes into a new folder, and dirty pages
// are synced to disk between runs. Reports
// medians and the ratio PeerShare/rsync (the goal: <= 0.8), in two variants: on shared cores, and
// pinned (sshd and the sharer on CPU 0, the clients on CPU 1: the "two machines").
//
// Environment: BENCH_FILES (default 10000), BENCH_FOLDERS (100), BENCH_RUNS (5), BENCH_PINNED
// (both, only, off), BENCH_TMP, BENCH_KEEP_TMP.

import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  alternate,
  benchVariants,
  closeScope,
  cpuBudget,
  cpuFigure,
  dropCaches,
  goal,
  intEnv,
  isMain,
  mib,
  openScope,
  peershareGet,
  PINNING_TOOLS,
  printTable,
  processCpuSeconds,
  round,
  run as runCommand,
  runStandalone,
  startPeerShare,
  startSshd,
  summariseRuns,
  timedCommand,
  toMiB,
  treeStats,
  vmHwm,
} from './lib.mjs';

export const name = 'folder';
export const title = 'folder of 10,000 files of 0.5 to 8 KiB in 100 folders';
export const tools = ['/usr/bin/time', '/usr/sbin/sshd', 'ssh', 'scp', 'ssh-keygen', 'rsync', ...PINNING_TOOLS];

const GOAL_RATIO_TO_RSYNC = 0.8;
const MIN_FILE_BYTES = 512;
const MAX_FILE_BYTES = 8192;

/** A small seeded generator (mulberry32), so every run of the benchmark gets the same sizes. */
function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `files` files of uniformly random size in [512, 8192] bytes, spread evenly over `folders` folders. */
export function writeTree(root, files, folders) {
  const random = seededRandom(20261125);
  let bytes = 0;
  let allocated = 0;
  for (let i = 0; i < files; i++) {
    const dir = path.join(root, `dir-${String(i % folders).padStart(3, '0')}`);
    if (i < folders) fs.mkdirSync(dir, { recursive: true });
    const size = MIN_FILE_BYTES + Math.floor(random() * (MAX_FILE_BYTES - MIN_FILE_BYTES + 1));
    const file = path.join(dir, `file-${String(Math.floor(i / folders)).padStart(5, '0')}.bin`);
    fs.writeFileSync(file, randomBytes(size)); // incompressible: no tool gets a free ride
    bytes += size;
    allocated += fs.statSync(file).blocks * 512;
  }
  return { files, bytes, allocated };
}

export async function run(ctx) {
  const fileCount = intEnv('BENCH_FILES', 10_000, 1);
  const folderCount = Math.min(intEnv('BENCH_FOLDERS', 100, 1), fileCount);
  const runs = intEnv('BENCH_RUNS', 5, 1);
  const variants = benchVariants();
  const { scratch } = ctx;

  // 1. The data.
  const dataDir = path.join(scratch, 'data');
  const source = path.join(dataDir, 'tree');
  // Creating files is what this scenario measures: start from a file system where earlier runs'
  // deletions do not slow every create (see dropCaches). The warm-up runs read the data back in.
  const droppedCaches = dropCaches();
  ctx.log(droppedCaches ? 'dropped the kernel caches (deleted inodes of earlier runs)' : 'could not drop the kernel caches (not root): earlier deletions may slow file creation');
  ctx.log(`writing ${fileCount} files in ${folderCount} folders`);
  const made = writeTree(source, fileCount, folderCount);
  ctx.log(`${made.files} files, ${toMiB(made.bytes)} MiB (${toMiB(made.allocated)} MiB on disk)`);

  // 2. Each variant with servers of its own (shared cores, then pinned). Every destination folder
  // stays until the scenario ends (see below), so the variants number theirs apart.
  const measured = [];
  for (const variant of variants) measured.push(await measureVariant(ctx, variant, { dataDir, source, made, runs }));

  return {
    measured: `${made.files} files (${toMiB(made.bytes)} MiB, ${toMiB(made.allocated)} MiB on disk) in ${folderCount} folders; medians of ${runs} alternating runs in each of ${variants.length} variant(s)`,
    summary: {
      files: made.files,
      folders: folderCount,
      bytes: made.bytes,
      bytesOnDisk: made.allocated,
      runs,
      order: 'alternating peershare, rsync, scp; one untimed warm-up of each first; each variant with servers of its own',
      droppedCaches,
      ssh: measured[0].ssh,
      variants: Object.fromEntries(measured.map((m) => [m.variant, m.summary])),
    },
    goals: measured.map((m) => m.goal),
    figures: measured.flatMap((m) => m.figures),
    raw: Object.fromEntries(measured.map((m) => [m.variant, m.raw])),
  };
}

/** The three tools on one variant's servers and cores: alternating runs, then their medians, ratio and CPU. */
async function measureVariant(ctx, variant, { dataDir, source, made, runs }) {
  const { scratch } = ctx;
  const scope = openScope(`${name} (${variant.name})`);
  try {
    ctx.log(`-- ${variant.label}`);
    const sshd = await startSshd(scope, scratch, { cpus: variant.serverCpus });
    const server = await startPeerShare(scope, { folders: [dataDir], home: path.join(scratch, 'home-server'), logFile: path.join(scratch, 'serve.log'), cpus: variant.serverCpus });
    ctx.log(`peershare serve on port ${server.info.port} (pid ${server.pid})`);
    const cpus = variant.clientCpus;

    // Every tool produces <destDir>/tree, a copy of the source folder. Each run gets a new destDir,
    // removed only at the end: on this VM's ext4 (mounted with discard), creating files right after
    // deleting 10,000 others takes several times longer (cp -r: 0.3 s fresh, 3-6 s after rm -rf),
    // which would swamp the difference between the tools.
    let runNumber = 0;
    const destFor = (n) => path.join(scratch, `dest-${variant.name}-${n}`);
    let destDir = destFor(0);
    let target = path.join(destDir, 'tree');
    const check = (tool) => {
      const got = treeStats(target);
      if (got.files !== made.files || got.bytes !== made.bytes) {
        throw new Error(`${tool}: got ${got.files} files, ${got.bytes} bytes; expected ${made.files}, ${made.bytes}`);
      }
    };
    const fresh = () => fs.mkdirSync(destDir, { recursive: true });
    const tools = {
      peershare: {
        serverCpu: () => processCpuSeconds(server.pid),
        async run() {
          fresh();
          const r = await peershareGet({ invite: server.invite, remote: 'data/tree', dest: destDir, home: path.join(scratch, 'home-client'), scratch, cpus });
          if (r.result.files !== made.files) throw new Error(`peershare get: ${r.stdout}`);
          check('peershare');
          return { seconds: r.seconds, reportedSeconds: r.result.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
        },
      },
      rsync: {
        serverCpu: () => sshd.cpuSeconds(),
        async run() {
          fresh();
          const r = await timedCommand('rsync', ['-a', '-e', sshd.rsyncShell, `${sshd.host}:${source}/`, `${target}/`], scratch, { cpus });
          check('rsync');
          await sshd.settle();
          return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
        },
      },
      scp: {
        serverCpu: () => sshd.cpuSeconds(),
        async run() {
          fresh();
          const r = await timedCommand('scp', ['-r', '-q', ...sshd.scpArgs, `${sshd.host}:${source}`, `${destDir}/`], scratch, { cpus });
          check('scp');
          await sshd.settle();
          return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
        },
      },
    };

    const { warmupSeconds, results, affinity } = await alternate(ctx, tools, {
      runs,
      between: () => {
        runNumber++;
        destDir = destFor(runNumber);
        target = path.join(destDir, 'tree');
        runCommand('sync', []);
      },
      describe: (r) => `${r.seconds.toFixed(3)} s  ${Math.round(made.files / r.seconds)} files/s`,
      pinning: variant.serverCpus === undefined ? undefined : { serverPids: [sshd.child.pid, server.pid], serverCpus: variant.serverCpus, clientCpus: variant.clientCpus },
    });
    const serverVmHwm = vmHwm(server.pid);

    const peershare = summariseRuns(results.peershare, {
      command: 'node dist/cli.js get <invite> data/tree <dir> --json',
      reportedSeconds: results.peershare.map((r) => round(r.reportedSeconds)),
      serverVmHwmBytes: serverVmHwm,
    });
    const rsync = summariseRuns(results.rsync, { command: 'rsync -a -e "ssh -i <key> -p <port> ..." <user>@127.0.0.1:<src>/ <dir>/tree/' });
    const scp = summariseRuns(results.scp, { command: 'scp -r -q -i <key> -P <port> <user>@127.0.0.1:<src> <dir>/' });
    const ratio = round(peershare.medianSeconds / rsync.medianSeconds, 2);
    const ratioToScp = round(peershare.medianSeconds / scp.medianSeconds, 2);
    const cpu = cpuBudget({ peershare, rsync }, { pinned: variant.serverCpus !== undefined });

    console.log(`folder, ${variant.label}:`);
    printTable([
      ['', 'median', 'files/s', 'runs (s)', 'client peak RSS'],
      ...[
        ['peershare get', peershare],
        ['rsync -a (ssh)', rsync],
        ['scp -r (ssh)', scp],
      ].map(([label, t]) => [label, `${t.medianSeconds.toFixed(2)} s`, Math.round(made.files / t.medianSeconds), t.seconds.map((x) => x.toFixed(2)).join(' '), mib(t.clientMaxRssBytes)]),
    ]);

    const fmt = (t) => `${t.medianSeconds.toFixed(2)} s (${Math.round(made.files / t.medianSeconds)} files/s)`;
    const v = variant.name;
    return {
      variant: v,
      ssh: sshd.negotiated,
      summary: {
        label: variant.label,
        ...(affinity ? { affinity } : {}),
        peershareMedianSeconds: peershare.medianSeconds,
        rsyncMedianSeconds: rsync.medianSeconds,
        scpMedianSeconds: scp.medianSeconds,
        ratio,
        ratioToScp,
        cpu,
        serverPeakRssBytes: serverVmHwm,
      },
      goal: { ...goal({ label: `folder: PeerShare / rsync time, ${variant.label}`, measured: ratio, op: '<=', target: GOAL_RATIO_TO_RSYNC }), variant: v },
      figures: [
        { variant: v, label: 'PeerShare', text: `${fmt(peershare)}; PeerShare/rsync ${ratio}` },
        { variant: v, ...cpuFigure(cpu, 'rsync', 'rsync+ssh+sshd') },
        { variant: v, label: 'rsync -a over ssh', text: fmt(rsync) },
        { variant: v, label: 'scp -r', text: `${fmt(scp)}; PeerShare/scp ${ratioToScp}` },
      ],
      raw: { warmupSeconds, affinity, peershare, rsync, scp },
    };
  } finally {
    await closeScope(scope);
  }
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
