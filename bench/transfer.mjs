#!/usr/bin/env node
// Transfer: one large random file, encrypted, verified, written to disk, over loopback.
//
//   node bench/run.mjs                                   (all scenarios; see bench/SCENARIOS.md)
//   BENCH_SIZE_MIB=64 BENCH_RUNS=3 node bench/transfer.mjs   (this one alone, on an already-built dist/)
//
// Runs PeerShare (`peershare get` from `peershare serve`) and two anchors on the same file,
// alternating within each run: curl from nginx over HTTPS (TLS 1.3), and scp from a loopback sshd
// (OpenSSH's default cipher). Times each whole command and reports medians and the ratios
// PeerShare/curl (the goal: <= 0.9) and PeerShare/scp, in two variants: on shared cores, and
// pinned (every server on CPU 0, every client on CPU 1: the "two machines").
//
// Environment: BENCH_SIZE_MIB (default 1024), BENCH_RUNS (5), BENCH_PINNED (both, only, off),
// BENCH_PROFILE (1: also record one CPU profile of each PeerShare side, on shared cores; 0 skips
// it), BENCH_TMP, BENCH_KEEP_TMP, BENCH_OUT (results file when run alone; default
// bench/results/transfer-latest.json).

import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  MiB,
  ROOT,
  alternate,
  benchVariants,
  bundleModules,
  clearAndSync,
  closeScope,
  cpuBudget,
  cpuFigure,
  goal,
  intEnv,
  isMain,
  mib,
  openScope,
  peershareGet,
  printTable,
  PINNING_TOOLS,
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
export const tools = ['nginx', 'curl', 'openssl', '/usr/bin/time', '/usr/sbin/sshd', 'ssh', 'scp', 'ssh-keygen', ...PINNING_TOOLS];

const GOAL_RATIO_TO_CURL = 0.9;

export async function run(ctx) {
  const sizeMiB = intEnv('BENCH_SIZE_MIB', 1024, 1);
  const runs = intEnv('BENCH_RUNS', 5, 1);
  const profileWanted = (process.env.BENCH_PROFILE ?? '1') !== '0';
  const variants = benchVariants();
  const sizeBytes = sizeMiB * MiB;
  const fileName = `random-${sizeMiB}MiB.bin`;
  const { scratch } = ctx;
  requireFreeSpace(scratch, 2 * sizeBytes + 64 * MiB, 'the transfer scenario');

  // 1. The data: one random file (incompressible, so nothing gets a free ride).
  const dataDir = path.join(scratch, 'data');
  const destDir = path.join(scratch, 'dest');
  fs.mkdirSync(destDir, { recursive: true });
  ctx.log(`writing ${sizeMiB} MiB of random data`);
  const source = path.join(dataDir, fileName);
  writeRandomFile(source, sizeBytes);

  // 2. Each variant with servers of its own (shared cores, then pinned), the same data and client.
  const measured = {};
  for (const variant of variants) measured[variant.name] = await measureVariant(ctx, variant, { dataDir, destDir, fileName, source, sizeBytes, sizeMiB, runs });

  // 3. One CPU profile of each PeerShare side, with their own server and client identities.
  let profile;
  if (profileWanted) {
    ctx.log('profiling one transfer (node --cpu-prof, unminified bundle, shared cores)');
    try {
      profile = await profileOnce(ctx, dataDir, fileName);
    } catch (err) {
      ctx.log(`profile failed: ${err.message}`);
      profile = { error: err.message };
    }
  }
  if (profile?.server) {
    for (const side of ['server', 'client']) {
      console.log(`profile, ${side} (busy ${profile[side].busyMs} ms of ${profile[side].totalMs} ms):`);
      for (const t of profile[side].top.slice(0, 8)) console.log(`  ${String(t.selfMs).padStart(6)} ms ${String(t.pct).padStart(5)}%  ${t.fn}`);
    }
  }

  const all = Object.values(measured);
  return {
    measured: `${sizeMiB} MiB random file over loopback, written to disk; medians of ${runs} alternating runs in each of ${variants.length} variant(s)`,
    summary: {
      fileBytes: sizeBytes,
      runs,
      order: 'alternating peershare, curl, scp; one untimed warm-up of each first; each variant with servers of its own',
      ssh: all[0].ssh,
      variants: Object.fromEntries(all.map((m) => [m.variant, m.summary])),
    },
    goals: all.map((m) => m.goal),
    figures: all.flatMap((m) => m.figures),
    raw: { ...Object.fromEntries(all.map((m) => [m.variant, m.raw])), profile },
  };
}

/** The three tools on one variant's servers and cores: alternating runs, then their medians, ratios and CPU. */
async function measureVariant(ctx, variant, { dataDir, destDir, fileName, source, sizeBytes, sizeMiB, runs }) {
  const { scratch } = ctx;
  const scope = openScope(`${name} (${variant.name})`);
  try {
    ctx.log(`-- ${variant.label}`);
    const serverCpus = { cpus: variant.serverCpus };
    const nginx = await startNginx(scope, scratch, dataDir, serverCpus);
    const sshd = await startSshd(scope, scratch, serverCpus);
    const server = await startPeerShare(scope, { folders: [dataDir], home: path.join(scratch, 'home-server'), logFile: path.join(scratch, 'serve.log'), ...serverCpus });
    ctx.log(`peershare serve on port ${server.info.port} (pid ${server.pid})`);

    const cpus = variant.clientCpus;
    const destFile = path.join(destDir, fileName);
    const checkSize = (tool) => {
      const size = fs.statSync(destFile).size;
      if (size !== sizeBytes) throw new Error(`${tool}: wrong size ${size}`);
    };
    const tools = {
      peershare: {
        serverCpu: () => processCpuSeconds(server.pid),
        async run() {
          const r = await peershareGet({ invite: server.invite, remote: `data/${fileName}`, dest: destDir, home: path.join(scratch, 'home-client'), scratch, cpus });
          if (r.result.bytes !== sizeBytes) throw new Error(`peershare get: wrong size ${r.stdout}`);
          checkSize('peershare');
          return { seconds: r.seconds, reportedSeconds: r.result.seconds, maxRssBytes: r.maxRssBytes ?? r.result.maxRssBytes, cpuSeconds: r.cpuSeconds };
        },
      },
      curl: {
        serverCpu: () => nginx.workerPids().reduce((sum, pid) => sum + processCpuSeconds(pid), 0),
        async run() {
          const r = await timedCommand('curl', ['-k', '-s', '--fail', '-o', destFile, nginx.url(fileName)], scratch, { cpus });
          checkSize('curl');
          return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
        },
      },
      scp: {
        serverCpu: () => sshd.cpuSeconds(),
        async run() {
          const r = await timedCommand('scp', ['-q', ...sshd.scpArgs, `${sshd.host}:${source}`, destFile], scratch, { cpus });
          checkSize('scp');
          await sshd.settle();
          return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
        },
      },
    };

    // One untimed warm-up of each (pairs the PeerShare client, brings the file into the page
    // cache; pinned, it also checks every process's core), then timed runs, alternating.
    const { warmupSeconds, results, affinity } = await alternate(ctx, tools, {
      runs,
      between: () => clearAndSync(destFile),
      describe: (r) => `${r.seconds.toFixed(3)} s  ${(sizeMiB / r.seconds).toFixed(0)} MiB/s`,
      pinning: variant.serverCpus === undefined ? undefined : { serverPids: [nginx.child.pid, sshd.child.pid, server.pid], serverCpus: variant.serverCpus, clientCpus: variant.clientCpus },
    });
    const serverVmHwm = vmHwm(server.pid);
    const nginxWorkerVmHwm = nginx.workerVmHwm();

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
    const cpu = cpuBudget({ peershare, curl }, { pinned: variant.serverCpus !== undefined });

    console.log(`transfer, ${variant.label}:`);
    printTable([
      ['', 'median', 'MiB/s', 'runs (s)', 'client peak RSS', 'server peak RSS'],
      ...[
        ['peershare get', peershare, serverVmHwm],
        ['curl (nginx)', curl, nginxWorkerVmHwm],
        ['scp (sshd)', scp, undefined],
      ].map(([label, t, peak]) => [label, `${t.medianSeconds.toFixed(2)} s`, t.medianMiBps, t.seconds.map((x) => x.toFixed(2)).join(' '), mib(t.clientMaxRssBytes), mib(peak)]),
    ]);

    const fmt = (t) => `${t.medianSeconds.toFixed(2)} s (${t.medianMiBps} MiB/s)`;
    const v = variant.name;
    return {
      variant: v,
      ssh: sshd.negotiated,
      summary: {
        label: variant.label,
        ...(affinity ? { affinity } : {}),
        peershareMedianSeconds: peershare.medianSeconds,
        curlMedianSeconds: curl.medianSeconds,
        scpMedianSeconds: scp.medianSeconds,
        ratio,
        ratioToScp,
        cpu,
        clientPeakRssBytes: peershare.clientMaxRssBytes,
        serverPeakRssBytes: serverVmHwm,
      },
      goal: { ...goal({ label: `transfer: PeerShare / curl (nginx) time, ${variant.label}`, measured: ratio, op: '<=', target: GOAL_RATIO_TO_CURL }), variant: v },
      figures: [
        { variant: v, label: 'PeerShare', text: `${fmt(peershare)}; PeerShare/curl ${ratio}` },
        { variant: v, ...cpuFigure(cpu, 'curl', 'curl+nginx') },
        { variant: v, label: 'curl from nginx', text: fmt(curl) },
        { variant: v, label: `scp (${sshd.negotiated.cipher ?? 'default cipher'})`, text: `${fmt(scp)}; PeerShare/scp ${ratioToScp}` },
      ],
      raw: { warmupSeconds, affinity, peershare, curl, scp },
    };
  } finally {
    await closeScope(scope);
  }
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
  esbuild.stop(); // its service process would otherwise outlive the build, among the benchmark's children
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
