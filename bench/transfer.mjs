#!/usr/bin/env node
// Transfer: one large random file, encrypted, verified, written to disk, over loopback.
//
//   node bench/run.mjs                                   (all scenarios; see bench/SCENARIOS.md)
//   BENCH_SIZE_MIB=64 BENCH_RUNS=3 node bench/transfer.mjs   (this one alone, on an already-built dist/)
//
// Runs PeerShare (`peershare get` from `peershare serve`) and two anchors on the same file,
// alternating within each run: curl from nginx over HTTPS (TLS 1.3), and scp from a loopback sshd
// (OpenSSH's default cipher). Times each whole command and reports medians and the ratios
// PeerShare/curl (the goal: <= 0.9) and PeerShare/scp.
//
// Environment: BENCH_SIZE_MIB (default 1024), BENCH_RUNS (5), BENCH_PROFILE (1: also record one
// CPU profile of each PeerShare side; 0 skips it), BENCH_TMP, BENCH_KEEP_TMP, BENCH_OUT (results
// file when run alone; default bench/results/transfer-latest.json).

import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  MiB,
  ROOT,
  alternate,
  bundleModules,
  clearAndSync,
  cpuBudget,
  cpuFigure,
  goal,
  intEnv,
  isMain,
  mib,
  peershareGet,
  printTable,
  processCpuSeconds,
  requireFreeSpace,
  round,
  runStandalone,
  summariseRuns,
  startNginx,
  startPeerShare,
  startSshd,
  stopChild,
  summariseProfile,
  timedCommand,
  vmHwm,
  writeRandomFile,
} from './lib.mjs';

export const name = 'transfer';
export const title = '1 GiB random file, encrypted, verified, on disk';
export const tools = ['nginx', 'curl', 'openssl', '/usr/bin/time', '/usr/sbin/sshd', 'ssh', 'scp', 'ssh-keygen'];

const GOAL_RATIO_TO_CURL = 0.9;

export async function run(ctx) {
  const sizeMiB = intEnv('BENCH_SIZE_MIB', 1024, 1);
  const runs = intEnv('BENCH_RUNS', 5, 1);
  const profileWanted = (process.env.BENCH_PROFILE ?? '1') !== '0';
  const sizeBytes = sizeMiB * MiB;
  const fileName = `random-${sizeMiB}MiB.bin`;
  const { scope, scratch } = ctx;
  requireFreeSpace(scratch, 2 * sizeBytes + 64 * MiB, 'the transfer scenario');

  // 1. The data: one random file (incompressible, so nothing gets a free ride).
  const dataDir = path.join(scratch, 'data');
  const destDir = path.join(scratch, 'dest');
  fs.mkdirSync(destDir, { recursive: true });
  ctx.log(`writing ${sizeMiB} MiB of random data`);
  const source = path.join(dataDir, fileName);
  writeRandomFile(source, sizeBytes);

  // 2. The servers: PeerShare, nginx over HTTPS, sshd.
  const nginx = await startNginx(scope, scratch, dataDir);
  const sshd = await startSshd(scope, scratch);
  const server = await startPeerShare(scope, { folders: [dataDir], home: path.join(scratch, 'home-server'), logFile: path.join(scratch, 'serve.log') });
  ctx.log(`peershare serve on port ${server.info.port} (pid ${server.pid})`);

  const destFile = path.join(destDir, fileName);
  const checkSize = (tool) => {
    const size = fs.statSync(destFile).size;
    if (size !== sizeBytes) throw new Error(`${tool}: wrong size ${size}`);
  };
  const tools = {
    peershare: {
      serverCpu: () => processCpuSeconds(server.pid),
      async run() {
        const r = await peershareGet({ invite: server.invite, remote: `data/${fileName}`, dest: destDir, home: path.join(scratch, 'home-client'), scratch });
        if (r.result.bytes !== sizeBytes) throw new Error(`peershare get: wrong size ${r.stdout}`);
        checkSize('peershare');
        return { seconds: r.seconds, reportedSeconds: r.result.seconds, maxRssBytes: r.maxRssBytes ?? r.result.maxRssBytes, cpuSeconds: r.cpuSeconds };
      },
    },
    curl: {
      serverCpu: () => nginx.workerPids().reduce((sum, pid) => sum + processCpuSeconds(pid), 0),
      async run() {
        const r = await timedCommand('curl', ['-k', '-s', '--fail', '-o', destFile, nginx.url(fileName)], scratch);
        checkSize('curl');
        return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
      },
    },
    scp: {
      serverCpu: () => sshd.cpuSeconds(),
      async run() {
        const r = await timedCommand('scp', ['-q', ...sshd.scpArgs, `${sshd.host}:${source}`, destFile], scratch);
        checkSize('scp');
        await sshd.settle();
        return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
      },
    },
  };

  // 3. One untimed warm-up of each (pairs the PeerShare client, brings the file into the page
  // cache), then timed runs, alternating.
  const { warmupSeconds, results } = await alternate(ctx, tools, {
    runs,
    between: () => clearAndSync(destFile),
    describe: (r) => `${r.seconds.toFixed(3)} s  ${(sizeMiB / r.seconds).toFixed(0)} MiB/s`,
  });
  const serverVmHwm = vmHwm(server.pid);
  const nginxWorkerVmHwm = nginx.workerVmHwm();

  // 4. One CPU profile of each PeerShare side, with their own server and client identities.
  let profile;
  if (profileWanted) {
    ctx.log('profiling one transfer (node --cpu-prof, unminified bundle)');
    try {
      profile = await profileOnce(ctx, dataDir, fileName);
    } catch (err) {
      ctx.log(`profile failed: ${err.message}`);
      profile = { error: err.message };
    }
  }

  // 5. Summary.
  const perTool = (tool, command, extra = {}) => {
    const t = summariseRuns(results[tool], { command, ...extra });
    return { ...t, medianMiBps: round(sizeMiB / t.medianSeconds, 0) };
  };
  const peershare = perTool('peershare', 'node dist/cli.js get <invite> data/<file> <dir> --json', {
    reportedSeconds: results.peershare.map((r) => round(r.reportedSeconds)),
    serverVmHwmBytes: serverVmHwm,
  });
  const curl = perTool('curl', 'curl -k -s --fail -o <file> https://127.0.0.1:<port>/<file>  (nginx, sendfile on, TLS 1.3)', { nginxWorkerVmHwmBytes: nginxWorkerVmHwm });
  const scp = perTool('scp', 'scp -q -i <key> -P <port> <user>@127.0.0.1:<file> <file>  (OpenSSH defaults)', { ssh: sshd.negotiated });
  const ratio = round(peershare.medianSeconds / curl.medianSeconds, 2);
  const ratioToScp = round(peershare.medianSeconds / scp.medianSeconds, 2);

  const cpu = cpuBudget({ peershare, curl });
  const fmt = (t) => `${t.medianSeconds.toFixed(2)} s (${t.medianMiBps} MiB/s)`;
  printTable([
    ['', 'median', 'MiB/s', 'runs (s)', 'client peak RSS', 'server peak RSS'],
    ...[
      ['peershare get', peershare, serverVmHwm],
      ['curl (nginx)', curl, nginxWorkerVmHwm],
      ['scp (sshd)', scp, undefined],
    ].map(([label, t, server]) => [label, `${t.medianSeconds.toFixed(2)} s`, t.medianMiBps, t.seconds.map((s) => s.toFixed(2)).join(' '), mib(t.clientMaxRssBytes), mib(server)]),
  ]);
  if (profile?.server) {
    for (const side of ['server', 'client']) {
      console.log(`profile, ${side} (busy ${profile[side].busyMs} ms of ${profile[side].totalMs} ms):`);
      for (const t of profile[side].top.slice(0, 8)) console.log(`  ${String(t.selfMs).padStart(6)} ms ${String(t.pct).padStart(5)}%  ${t.fn}`);
    }
  }

  return {
    measured: `${sizeMiB} MiB random file over loopback, written to disk; medians of ${runs} alternating runs`,
    summary: {
      fileBytes: sizeBytes,
      runs,
      order: 'alternating peershare, curl, scp; one untimed warm-up of each first',
      peershareMedianSeconds: peershare.medianSeconds,
      curlMedianSeconds: curl.medianSeconds,
      scpMedianSeconds: scp.medianSeconds,
      ratio,
      ratioToScp,
      ssh: sshd.negotiated,
      cpu,
      clientPeakRssBytes: peershare.clientMaxRssBytes,
      serverPeakRssBytes: serverVmHwm,
    },
    goals: [goal({ label: 'transfer: PeerShare / curl (nginx) time', measured: ratio, op: '<=', target: GOAL_RATIO_TO_CURL })],
    figures: [
      { label: 'PeerShare', text: fmt(peershare) },
      cpuFigure(cpu, 'curl', 'curl+nginx'),
      { label: 'curl from nginx', text: fmt(curl) },
      { label: `scp (${sshd.negotiated.cipher ?? 'default cipher'})`, text: `${fmt(scp)}; PeerShare/scp ${ratioToScp}` },
    ],
    raw: { warmupSeconds, peershare, curl, scp, profile },
  };
}

// ---------------------------------------------------------------------------------------------
// One profiled transfer: unminified bundle in the scratch folder (function names survive; dist/
// is left alone), `node --cpu-prof` on both sides.

async function profileOnce(ctx, dataDir, fileName) {
  const { scope, scratch } = ctx;
  const require = createRequire(path.join(ROOT, 'package.json'));
  const esbuild = require('esbuild');
  const outdir = path.join(scratch, 'profile-dist');
  await esbuild.build({
    entryPoints: { cli: path.join(ROOT, 'src/cli/main.ts') },
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    outdir,
    external: ['vscode'],
    minify: false,
    logLevel: 'warning',
  });
  const cli = path.join(outdir, 'cli.js');
  const serverProf = path.join(scratch, 'prof-server');
  const clientProf = path.join(scratch, 'prof-client');
  const dest = path.join(scratch, 'dest-profile');
  fs.mkdirSync(dest, { recursive: true });
  const server = await startPeerShare(scope, {
    cli,
    folders: [dataDir],
    home: path.join(scratch, 'home-prof-server'),
    logFile: path.join(scratch, 'serve-profile.log'),
    nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${serverProf}`],
  });
  let result;
  try {
    const r = await peershareGet({
      cli,
      invite: server.invite,
      remote: `data/${fileName}`,
      dest,
      home: path.join(scratch, 'home-prof-client'),
      scratch,
      nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${clientProf}`],
    });
    result = r.result;
  } finally {
    // SIGTERM: the CLI closes its server and exits, which writes the profile.
    await stopChild(server.child);
  }
  fs.rmSync(dest, { recursive: true, force: true });
  const moduleOf = bundleModules(cli);
  const pick = (dir) => {
    const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')) : [];
    if (files.length === 0) throw new Error(`no .cpuprofile written in ${dir}`);
    return path.join(dir, files[0]);
  };
  return {
    note: 'one transfer, unminified bundle, node --cpu-prof; self time per function',
    transferSeconds: round(result.seconds, 3),
    server: summariseProfile(pick(serverProf), moduleOf),
    client: summariseProfile(pick(clientProf), moduleOf),
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
