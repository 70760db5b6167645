#!/usr/bin/env node
// Transfer benchmark: one large random file, encrypted, verified, written to disk.
//
//   npm run bench                       (builds dist/ in production mode, then runs this)
//   BENCH_SIZE_MIB=64 BENCH_RUNS=3 node bench/transfer.mjs
//
// Environment:
//   BENCH_SIZE_MIB   file size in MiB (default 1024)
//   BENCH_RUNS       timed runs of each tool (default 5)
//   BENCH_PROFILE    1 (default) also records one CPU profile of each side; 0 skips it
//   BENCH_TMP        parent folder for the scratch files (default: the OS temp folder)
//   BENCH_KEEP_TMP   1 keeps the scratch folder (profiles, logs) instead of deleting it
//   BENCH_OUT        results file (default bench/results/transfer-latest.json)
//
// Runs PeerShare (`peershare get` from `peershare serve`) and an anchor (curl from nginx over
// HTTPS, TLS 1.3) alternately on the same file, times each whole command, and prints medians.
// Plain Node ESM, no dependencies beyond what the repository already has.

import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const SIZE_MIB = intEnv('BENCH_SIZE_MIB', 1024, 1);
const RUNS = intEnv('BENCH_RUNS', 5, 1);
const PROFILE = (process.env.BENCH_PROFILE ?? '1') !== '0';
const KEEP_TMP = process.env.BENCH_KEEP_TMP === '1';
const OUT = path.resolve(process.env.BENCH_OUT ?? path.join(ROOT, 'bench', 'results', 'transfer-latest.json'));
const SIZE_BYTES = SIZE_MIB * 1024 * 1024;
const FILE_NAME = `random-${SIZE_MIB}MiB.bin`;
const TIME_BIN = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : undefined;

function intEnv(name, fallback, min) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be a whole number >= ${min}, got "${raw}"`);
  return n;
}

function log(message) {
  process.stderr.write(`[bench] ${message}\n`);
}

// ---------------------------------------------------------------------------------------------
// Cleanup: whatever we start is stopped, even when something fails half-way.

const cleanups = [];
let cleanedUp = false;
async function cleanup() {
  if (cleanedUp) return;
  cleanedUp = true;
  for (const fn of cleanups.reverse()) {
    try {
      await fn();
    } catch (err) {
      log(`cleanup: ${err?.message ?? err}`);
    }
  }
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    log(`${signal}: stopping`);
    void cleanup().finally(() => process.exit(130));
  });
}

/** Stops a child we spawned, by its own pid, and waits for it to exit. */
function stopChild(child, signal = 'SIGTERM', graceMs = 10_000) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
    }, graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

// ---------------------------------------------------------------------------------------------
// Small process helpers.

function run(cmd, args, options = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...options });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}\n${r.stderr ?? ''}`);
  }
  return r.stdout ?? '';
}

function findExecutable(name) {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/local/sbin']);
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

function ensureTools() {
  const missing = ['nginx', 'curl', 'openssl'].filter((t) => !findExecutable(t));
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`Missing ${missing.join(', ')}; install them (apt-get install nginx-light curl openssl) or run as root.`);
  log(`installing ${missing.join(', ')} with apt-get (missing)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const apt = (args) => spawnSync('apt-get', args, { env, stdio: ['ignore', 'ignore', 'inherit'] }).status === 0;
  apt(['update', '-qq']);
  const wanted = ['curl', 'openssl', 'time'];
  // Debian 12 has nginx-light; newer releases fold it into nginx.
  if (!apt(['install', '-y', '-qq', 'nginx-light', ...wanted]) && !apt(['install', '-y', '-qq', 'nginx', ...wanted])) {
    throw new Error('apt-get could not install nginx and curl');
  }
  const still = ['nginx', 'curl', 'openssl'].filter((t) => !findExecutable(t));
  if (still.length) throw new Error(`Still missing after apt-get: ${still.join(', ')}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, child, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode} before listening`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not listen on ${port} within ${timeoutMs} ms`);
}

/** Peak resident set size (VmHWM) of a live process, in bytes. */
function vmHwm(pid) {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

const CLK_TCK = 100; // USER_HZ on Linux

/** CPU seconds used by the whole machine so far (everything but idle and iowait), from /proc/stat. */
function machineBusySeconds() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + (steal ?? 0)) / CLK_TCK;
}

/** CPU seconds (user + system, all threads) of a live process. */
function processCpuSeconds(pid) {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

function childPids(pid) {
  try {
    return fs
      .readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/**
 * Runs a command to completion and times it with process.hrtime. With /usr/bin/time available
 * it is wrapped so the peak RSS (%M) and CPU seconds of the command itself are known too.
 */
const running = new Set();
// Timed commands run in their own process group (/usr/bin/time ignores SIGINT), so an interrupted
// benchmark stops the wrapper and the command under it together.
cleanups.push(() =>
  Promise.all(
    [...running].map(
      (child) =>
        new Promise((resolve) => {
          child.once('exit', resolve);
          try {
            process.kill(-child.pid, 'SIGTERM');
          } catch {
            resolve();
          }
        }),
    ),
  ),
);

function timedCommand(cmd, args, scratch) {
  const timeFile = path.join(scratch, 'time.out');
  const [file, argv] = TIME_BIN ? [TIME_BIN, ['-f', '%M %U %S', '-o', timeFile, cmd, ...args]] : [cmd, args];
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    running.add(child);
    child.once('exit', () => running.delete(child));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (code !== 0) {
        reject(new Error(`${cmd} exited with ${code ?? signal}: ${stderr.trim()}\n${stdout.trim()}`));
        return;
      }
      let maxRssBytes;
      let cpuSeconds;
      if (TIME_BIN) {
        const fields = fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop().split(' ').map(Number);
        maxRssBytes = fields[0] * 1024;
        cpuSeconds = round(fields[1] + fields[2], 2);
      }
      resolve({ seconds, stdout, stderr, maxRssBytes, cpuSeconds });
    });
  });
}

function startPeerShare(cli, dataDir, home, logFile, nodeArgs = []) {
  const args = [...nodeArgs, cli, 'serve', dataDir, '--json', '--home', home, '--port', '0', '--host', '127.0.0.1', '--invite-uses', '100'];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', fs.openSync(logFile, 'a')] });
  return new Promise((resolve, reject) => {
    let buffered = '';
    const onData = (d) => {
      buffered += d;
      const nl = buffered.indexOf('\n');
      if (nl < 0) return;
      child.stdout.off('data', onData);
      child.stdout.resume(); // keep draining, ignore the rest
      try {
        const info = JSON.parse(buffered.slice(0, nl));
        if (info.event !== 'listening' || typeof info.invite !== 'string') throw new Error(`unexpected first line: ${buffered.slice(0, nl)}`);
        resolve({ child, info });
      } catch (err) {
        reject(err);
      }
    };
    child.stdout.on('data', onData);
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`peershare serve exited with ${code}; see ${logFile}`)));
  });
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting.

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
function round(x, digits = 3) {
  return x === undefined || Number.isNaN(x) ? undefined : Number(x.toFixed(digits));
}
function mib(bytes) {
  return bytes === undefined ? '-' : `${(bytes / 1024 / 1024).toFixed(0)} MiB`;
}

/** The commit measured, and whether src/ had uncommitted changes when dist/ was built. */
function gitDescribe() {
  const git = (args) => spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' }).stdout?.trim();
  const head = git(['rev-parse', '--short', 'HEAD']);
  if (!head) return undefined;
  return git(['status', '--porcelain', '--', 'src']) ? `${head} (src/ modified)` : head;
}

function machineInfo() {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
  const flags = /^flags\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.split(' ') ?? [];
  let osName = os.type();
  try {
    osName = /^PRETTY_NAME="?([^"\n]+)"?/m.exec(fs.readFileSync('/etc/os-release', 'utf8'))?.[1] ?? osName;
  } catch {
    // keep os.type()
  }
  const version = (cmd, args, re) => {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    return re.exec(`${r.stdout ?? ''}${r.stderr ?? ''}`)?.[1];
  };
  return {
    nproc: Number(run('nproc', []).trim()),
    cpuModel: model,
    cpuFlags: ['aes', 'vaes', 'sha_ni', 'avx2'].filter((f) => flags.includes(f)),
    memTotalGiB: round(os.totalmem() / 1024 ** 3, 1),
    os: osName,
    kernel: os.release(),
    node: process.version,
    openssl: process.versions.openssl,
    nginx: version(findExecutable('nginx'), ['-v'], /nginx\/(\S+)/),
    curl: version('curl', ['--version'], /^curl (\S+)/),
  };
}

// ---------------------------------------------------------------------------------------------
// CPU profile summary: self time per function, from a .cpuprofile (V8 format).

/** esbuild's unminified bundles mark each module with a "// src/..." comment; map lines to modules. */
function bundleModules(bundlePath) {
  const marks = [];
  try {
    const lines = fs.readFileSync(bundlePath, 'utf8').split('\n');
    lines.forEach((line, i) => {
      const m = /^\/\/ ((?:src|node_modules)\/\S+)$/.exec(line);
      if (m) marks.push({ line: i, module: m[1] });
    });
  } catch {
    // no bundle, no module names
  }
  return (line) => {
    let found;
    for (const mark of marks) {
      if (mark.line > line) break;
      found = mark.module;
    }
    return found;
  };
}

function summariseProfile(file, moduleOf, top = 12) {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8'));
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map();
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i + 1] ?? 0;
    selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + dt);
  }
  const totals = new Map();
  let totalUs = 0;
  for (const [id, us] of selfUs) {
    const { functionName, url, lineNumber } = byId.get(id).callFrame;
    let where = '';
    if (url) {
      const mod = url.endsWith('/cli.js') ? (moduleOf(lineNumber) ?? 'cli.js') : undefined;
      where = mod ?? url.replace(/^file:\/\//, '').replace(/^.*\/(node_modules\/)/, '$1');
    }
    const name = functionName || '(anonymous)';
    const key = `${name}${where ? ` ${where}${functionName ? '' : `:${lineNumber + 1}`}` : ''}`;
    totals.set(key, (totals.get(key) ?? 0) + us);
    totalUs += us;
  }
  const entries = [...totals.entries()].sort((a, b) => b[1] - a[1]);
  const idleUs = totals.get('(idle)') ?? 0;
  return {
    totalMs: round(totalUs / 1000, 0),
    busyMs: round((totalUs - idleUs) / 1000, 0),
    top: entries.slice(0, top).map(([fn, us]) => ({ fn, selfMs: round(us / 1000, 0), pct: round((100 * us) / totalUs, 1) })),
  };
}

async function profileOnce(scratch, dataDir) {
  // An unminified bundle in the scratch folder, so function names survive; dist/ is left alone.
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
  const { child, info } = await startPeerShare(cli, dataDir, path.join(scratch, 'home-prof-server'), path.join(scratch, 'serve-profile.log'), [
    '--cpu-prof',
    `--cpu-prof-dir=${serverProf}`,
  ]);
  let result;
  try {
    const remote = `${path.basename(dataDir)}/${FILE_NAME}`;
    const r = await timedCommand(
      process.execPath,
      ['--cpu-prof', `--cpu-prof-dir=${clientProf}`, cli, 'get', info.invite, remote, dest, '--json', '--home', path.join(scratch, 'home-prof-client')],
      scratch,
    );
    result = JSON.parse(r.stdout.trim().split('\n').pop());
    result.wallSeconds = r.seconds;
  } finally {
    await stopChild(child); // SIGTERM: the CLI closes its server and exits, which writes the profile
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

// ---------------------------------------------------------------------------------------------

async function main() {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build:production (npm run bench does)`);
  ensureTools();
  const loadBefore = os.loadavg().map((x) => round(x, 2));
  if (loadBefore[0] > 0.5) log(`warning: load average ${loadBefore.join(' ')}; other work on this machine will skew the timings`);

  const scratch = fs.mkdtempSync(path.join(process.env.BENCH_TMP ?? os.tmpdir(), 'peershare-bench-'));
  cleanups.push(() => {
    if (KEEP_TMP) log(`scratch kept in ${scratch}`);
    else fs.rmSync(scratch, { recursive: true, force: true });
  });
  const dataDir = path.join(scratch, 'data');
  const destDir = path.join(scratch, 'dest');
  fs.mkdirSync(dataDir);
  fs.mkdirSync(destDir);

  // 1. The data: one random file (incompressible, so nothing gets a free ride).
  log(`writing ${SIZE_MIB} MiB of random data`);
  const source = path.join(dataDir, FILE_NAME);
  run('sh', ['-c', `head -c ${SIZE_BYTES} /dev/urandom > "$1"`, 'sh', source]);
  if (fs.statSync(source).size !== SIZE_BYTES) throw new Error('random file has the wrong size');

  // 2. nginx over HTTPS (TLS 1.3, ECDSA P-256), serving the same folder.
  const nginxDir = path.join(scratch, 'nginx');
  fs.mkdirSync(path.join(nginxDir, 'logs'), { recursive: true });
  run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-keyout', path.join(nginxDir, 'key.pem'), '-out', path.join(nginxDir, 'cert.pem'),
  ]);
  const nginxPort = await freePort();
  const isRoot = process.getuid?.() === 0;
  const conf = `
${isRoot ? 'user root;' : ''}
daemon off;
worker_processes 1;
pid ${nginxDir}/nginx.pid;
error_log ${nginxDir}/logs/error.log warn;
events { worker_connections 64; }
http {
  access_log ${nginxDir}/logs/access.log;
  client_body_temp_path ${nginxDir}/client_body;
  proxy_temp_path ${nginxDir}/proxy;
  fastcgi_temp_path ${nginxDir}/fastcgi;
  uwsgi_temp_path ${nginxDir}/uwsgi;
  scgi_temp_path ${nginxDir}/scgi;
  default_type application/octet-stream;
  sendfile on;
  server {
    listen 127.0.0.1:${nginxPort} ssl;
    ssl_certificate ${nginxDir}/cert.pem;
    ssl_certificate_key ${nginxDir}/key.pem;
    ssl_protocols TLSv1.3;
    root ${dataDir};
  }
}
`;
  fs.writeFileSync(path.join(nginxDir, 'nginx.conf'), conf);
  const nginx = spawn(findExecutable('nginx'), ['-c', path.join(nginxDir, 'nginx.conf'), '-p', nginxDir], {
    stdio: ['ignore', 'ignore', fs.openSync(path.join(nginxDir, 'logs', 'stderr.log'), 'a')],
  });
  cleanups.push(() => stopChild(nginx, 'SIGTERM'));
  await waitForPort(nginxPort, nginx, 'nginx');
  log(`nginx on https://127.0.0.1:${nginxPort}/ (pid ${nginx.pid})`);

  // 3. One PeerShare server for all runs.
  const serveLog = path.join(scratch, 'serve.log');
  const { child: server, info } = await startPeerShare(CLI, dataDir, path.join(scratch, 'home-server'), serveLog);
  cleanups.push(() => stopChild(server));
  log(`peershare serve on port ${info.port} (pid ${server.pid})`);

  const remote = `${path.basename(dataDir)}/${FILE_NAME}`;
  const clientHome = path.join(scratch, 'home-client');
  const destFile = path.join(destDir, FILE_NAME);
  const url = `https://127.0.0.1:${nginxPort}/${FILE_NAME}`;

  // CPU used during a run by anything but the client and the two servers: a noise gauge (other
  // work on the machine, plus kernel time not charged to a process, e.g. some loopback softirq).
  const serverPids = () => [server.pid, ...childPids(nginx.pid)];
  const withNoise = async (fn) => {
    const pids = serverPids();
    const busy0 = machineBusySeconds();
    const cpu0 = pids.map(processCpuSeconds);
    const r = await fn();
    const busy = machineBusySeconds() - busy0;
    const servers = pids.map(processCpuSeconds).reduce((a, v, i) => a + v - cpu0[i], 0);
    r.serverCpuSeconds = round(servers, 2);
    if (r.cpuSeconds !== undefined) r.otherCpuSeconds = round(Math.max(0, busy - servers - r.cpuSeconds), 2);
    return r;
  };
  const tools = {
    peershare: async () => {
      const r = await timedCommand(process.execPath, [CLI, 'get', info.invite, remote, destDir, '--json', '--home', clientHome], scratch);
      const out = JSON.parse(r.stdout.trim().split('\n').pop());
      if (out.bytes !== SIZE_BYTES || fs.statSync(destFile).size !== SIZE_BYTES) throw new Error(`peershare get: wrong size ${r.stdout}`);
      return { seconds: r.seconds, reportedSeconds: out.seconds, maxRssBytes: out.maxRssBytes, cpuSeconds: r.cpuSeconds };
    },
    curl: async () => {
      const r = await timedCommand('curl', ['-k', '-s', '--fail', '-o', destFile, url], scratch);
      if (fs.statSync(destFile).size !== SIZE_BYTES) throw new Error('curl: wrong size');
      return { seconds: r.seconds, maxRssBytes: r.maxRssBytes, cpuSeconds: r.cpuSeconds };
    },
  };
  const between = () => {
    fs.rmSync(destFile, { force: true });
    run('sync', []); // the previous run's dirty pages do not land on the next one
  };

  // 4. Warm-up (not counted): pairs the client and brings the source file into the page cache.
  log('warm-up: one untimed run of each (pairs the client)');
  const warmup = {};
  for (const [name, fn] of Object.entries(tools)) {
    warmup[name] = round((await fn()).seconds);
    between();
  }

  // 5. Timed runs, alternating.
  const results = { peershare: [], curl: [] };
  for (let i = 1; i <= RUNS; i++) {
    for (const [name, fn] of Object.entries(tools)) {
      const r = await withNoise(fn);
      results[name].push(r);
      log(
        `run ${i}/${RUNS} ${name.padEnd(9)} ${r.seconds.toFixed(3)} s  ${(SIZE_MIB / r.seconds).toFixed(0)} MiB/s  ` +
          `client rss ${mib(r.maxRssBytes)} cpu ${r.cpuSeconds ?? '-'} s  server cpu ${r.serverCpuSeconds} s  other cpu ${r.otherCpuSeconds ?? '-'} s`,
      );
      between();
    }
  }
  const serverVmHwm = vmHwm(server.pid);
  const nginxWorkerVmHwm = Math.max(0, ...childPids(nginx.pid).map((p) => vmHwm(p) ?? 0)) || undefined;

  // 6. One CPU profile of each side, with their own server and client identities.
  let profile;
  if (PROFILE) {
    log('profiling one transfer (node --cpu-prof, unminified bundle)');
    try {
      profile = await profileOnce(scratch, dataDir);
    } catch (err) {
      log(`profile failed: ${err.message}`);
      profile = { error: err.message };
    }
  }

  // 7. Report.
  const med = (name, key) => median(results[name].map((r) => r[key]).filter((v) => v !== undefined));
  const ps = med('peershare', 'seconds');
  const curl = med('curl', 'seconds');
  const summary = {
    date: new Date().toISOString(),
    commit: gitDescribe(),
    scenario: `${SIZE_MIB} MiB random file, encrypted (TLS 1.3), verified (SHA-256), on disk; loopback`,
    machine: machineInfo(),
    loadAverageBefore: loadBefore,
    fileBytes: SIZE_BYTES,
    runs: RUNS,
    order: 'alternating peershare, curl; one untimed warm-up of each first',
    warmupSeconds: warmup,
    peershare: {
      command: 'node dist/cli.js get <invite> <share>/<file> <dir> --json',
      seconds: results.peershare.map((r) => round(r.seconds)),
      reportedSeconds: results.peershare.map((r) => round(r.reportedSeconds)),
      cpuSeconds: results.peershare.map((r) => r.cpuSeconds),
      serverCpuSeconds: results.peershare.map((r) => r.serverCpuSeconds),
      otherCpuSeconds: results.peershare.map((r) => r.otherCpuSeconds),
      medianSeconds: round(ps),
      medianMiBps: round(SIZE_MIB / ps, 0),
      clientMaxRssBytes: Math.max(...results.peershare.map((r) => r.maxRssBytes)),
      serverVmHwmBytes: serverVmHwm,
    },
    curl: {
      command: 'curl -k -s -o <file> https://127.0.0.1:<port>/<file>  (nginx, sendfile on, TLS 1.3)',
      seconds: results.curl.map((r) => round(r.seconds)),
      cpuSeconds: results.curl.map((r) => r.cpuSeconds),
      serverCpuSeconds: results.curl.map((r) => r.serverCpuSeconds),
      otherCpuSeconds: results.curl.map((r) => r.otherCpuSeconds),
      medianSeconds: round(curl),
      medianMiBps: round(SIZE_MIB / curl, 0),
      clientMaxRssBytes: results.curl.every((r) => r.maxRssBytes !== undefined) ? Math.max(...results.curl.map((r) => r.maxRssBytes)) : undefined,
      nginxWorkerVmHwmBytes: nginxWorkerVmHwm,
    },
    ratio: round(ps / curl, 2),
    profile,
  };
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, `${JSON.stringify(summary, null, 2)}\n`);

  const rows = [
    ['', 'median', 'MiB/s', 'runs (s)', 'client peak RSS', 'server peak RSS'],
    ['peershare get', `${ps.toFixed(2)} s`, summary.peershare.medianMiBps, summary.peershare.seconds.map((s) => s.toFixed(2)).join(' '), mib(summary.peershare.clientMaxRssBytes), mib(serverVmHwm)],
    ['curl (nginx)', `${curl.toFixed(2)} s`, summary.curl.medianMiBps, summary.curl.seconds.map((s) => s.toFixed(2)).join(' '), mib(summary.curl.clientMaxRssBytes), mib(nginxWorkerVmHwm)],
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => String(r[c]).length)));
  const line = (r) => r.map((v, c) => String(v).padEnd(widths[c])).join('  ');
  console.log(`\n${summary.scenario}, ${RUNS} runs each, ${summary.machine.nproc} x ${summary.machine.cpuModel}, Node ${process.version}`);
  console.log(line(rows[0]));
  for (const r of rows.slice(1)) console.log(line(r));
  console.log(`ratio peershare/curl: ${summary.ratio} (lower is better; goal <= 1.0)`);
  const noisy = [...results.peershare, ...results.curl].filter((r) => (r.otherCpuSeconds ?? 0) > 0.5).length;
  if (noisy) console.log(`warning: ${noisy} run(s) overlapped other work (> 0.5 CPU-s used by other processes); see otherCpuSeconds`);
  if (profile?.server) {
    for (const side of ['server', 'client']) {
      console.log(`\nprofile, ${side} (busy ${profile[side].busyMs} ms of ${profile[side].totalMs} ms):`);
      for (const t of profile[side].top.slice(0, 8)) console.log(`  ${String(t.selfMs).padStart(6)} ms ${String(t.pct).padStart(5)}%  ${t.fn}`);
    }
  }
  console.log(`\nresults: ${path.relative(process.cwd(), OUT) || OUT}`);
}

main()
  .catch((err) => {
    log(`failed: ${err?.stack ?? err}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
