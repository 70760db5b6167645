// What every benchmark scenario shares: cleanup of what it starts, process and /proc helpers,
// timed commands, the servers it measures against (PeerShare, nginx, a loopback sshd), small
// statistics, machine facts and the CPU profile summary.
//
// Plain Node ESM with no dependencies. Each scenario (bench/<name>.mjs) exports `name`, `title`,
// `tools` and `run(ctx)`; bench/run.mjs runs several, and `node bench/<name>.mjs` runs one
// (runStandalone below).

import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// BENCH_CLI measures another build (one made from a clean checkout while dist/ serves others);
// BENCH_COMMIT then says which commit it is.
export const CLI = path.resolve(process.env.BENCH_CLI || path.join(ROOT, 'dist', 'cli.js'));
export const RESULTS_DIR = path.resolve(process.env.BENCH_RESULTS_DIR ?? path.join(ROOT, 'bench', 'results'));
export const TIME_BIN = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : undefined;
export const KEEP_TMP = process.env.BENCH_KEEP_TMP === '1';
export const MiB = 1024 * 1024;

export function intEnv(name, fallback, min = 0) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be a whole number >= ${min}, got "${raw}"`);
  return n;
}

export function log(message) {
  process.stderr.write(`[bench] ${message}\n`);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Cleanup: whatever we start is stopped, even when something fails half-way. Each scenario has
// its own scope, closed when it ends, so one scenario's servers and scratch files (gigabytes)
// are gone before the next starts; a signal closes every open scope.

const scopes = [];

export function openScope(name) {
  const scope = {
    name,
    deferred: [],
    /** Runs `fn` when the scope closes, in reverse order of registration. */
    defer(fn) {
      this.deferred.push(fn);
    },
  };
  scopes.push(scope);
  return scope;
}

export async function closeScope(scope) {
  const i = scopes.indexOf(scope);
  if (i < 0) return;
  scopes.splice(i, 1);
  for (const fn of scope.deferred.reverse()) {
    try {
      await fn();
    } catch (err) {
      log(`cleanup (${scope.name}): ${err?.message ?? err}`);
    }
  }
}

export async function closeAllScopes() {
  await stopRunningCommands();
  while (scopes.length) await closeScope(scopes[scopes.length - 1]);
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    log(`${signal}: stopping`);
    void closeAllScopes().finally(() => process.exit(130));
  });
}

/** A scratch folder under BENCH_TMP (default: the OS temp folder), removed with the scope. */
export function makeScratch(scope, label) {
  const dir = fs.mkdtempSync(path.join(process.env.BENCH_TMP ?? os.tmpdir(), `peershare-bench-${label}-`));
  scope.defer(() => {
    if (KEEP_TMP) log(`scratch kept in ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Stops a child we spawned, by its own pid, and waits for it to exit. */
export function stopChild(child, signal = 'SIGTERM', graceMs = 10_000) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

// ---------------------------------------------------------------------------------------------
// Small process helpers.

export function run(cmd, args, options = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MiB, ...options });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}\n${r.stderr ?? ''}`);
  }
  return r.stdout ?? '';
}

export function findExecutable(name) {
  if (path.isAbsolute(name)) return isExecutable(name) ? name : undefined;
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/local/sbin']);
  for (const dir of dirs) {
    if (dir && isExecutable(path.join(dir, name))) return path.join(dir, name);
  }
  return undefined;
}

function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Tool -> the Debian packages that provide it (the first that installs wins). */
const PACKAGES = {
  nginx: [['nginx-light'], ['nginx']], // Debian 12 has nginx-light; newer releases fold it into nginx
  curl: [['curl']],
  openssl: [['openssl']],
  '/usr/bin/time': [['time']],
  '/usr/sbin/sshd': [['openssh-server']],
  ssh: [['openssh-client']],
  scp: [['openssh-client']],
  'ssh-keygen': [['openssh-client']],
  rsync: [['rsync']],
  taskset: [['util-linux']], // the two-machine variant pins each end to a core of its own
  ip: [['iproute2']], // the internet scenario's namespaces and NATs
  nft: [['nftables']],
};

/** Installs missing tools with apt-get (needs root); `tools` are keys of PACKAGES. */
export function ensureTools(tools) {
  const missing = [...new Set(tools)].filter((t) => !findExecutable(t));
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`Missing ${missing.join(', ')}; install them (see bench/SCENARIOS.md) or run as root.`);
  }
  log(`installing packages for ${missing.join(', ')} with apt-get (missing)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const apt = (args) => spawnSync('apt-get', args, { env, stdio: ['ignore', 'ignore', 'inherit'] }).status === 0;
  apt(['update', '-qq']);
  for (const tool of missing) {
    if (findExecutable(tool)) continue; // a package installed for an earlier tool brought it
    const installed = (PACKAGES[tool] ?? [[tool]]).some((pkgs) => apt(['install', '-y', '-qq', ...pkgs]));
    if (!installed || !findExecutable(tool)) throw new Error(`apt-get could not install ${tool}`);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function waitForPort(port, child, what, timeoutMs = 10_000) {
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
    await sleep(50);
  }
  throw new Error(`${what} did not listen on ${port} within ${timeoutMs} ms`);
}

// ---------------------------------------------------------------------------------------------
// /proc readers. Each returns undefined when the process is gone.

function procStatusField(file, field) {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(fs.readFileSync(file, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Peak resident set size (VmHWM) of a live process, in bytes. */
export function vmHwm(pid) {
  const kb = procStatusField(`/proc/${pid}/status`, 'VmHWM');
  return kb === undefined ? undefined : kb * 1024;
}

/** Current resident set size (VmRSS) of a live process, in bytes. */
export function vmRss(pid) {
  const kb = procStatusField(`/proc/${pid}/status`, 'VmRSS');
  return kb === undefined ? undefined : kb * 1024;
}

/** Bytes a process handed to write-like system calls so far (sockets included): `wchar` of /proc/<pid>/io. */
export function writtenChars(pid) {
  try {
    const m = /^wchar:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Context switches of each thread: a voluntary switch is the thread going to sleep, so each wake-up counts one. */
export function contextSwitches(pid) {
  const threads = [];
  let tids = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    return undefined;
  }
  for (const tid of tids) {
    const file = `/proc/${pid}/task/${tid}/status`;
    const voluntary = procStatusField(file, 'voluntary_ctxt_switches');
    if (voluntary === undefined) continue; // the thread ended while we looked
    let name = '';
    try {
      name = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    } catch {
      // keep it nameless
    }
    threads.push({ tid, name, voluntary, involuntary: procStatusField(file, 'nonvoluntary_ctxt_switches') ?? 0 });
  }
  return threads;
}

const CLK_TCK = 100; // USER_HZ on Linux

/** CPU seconds used by the whole machine so far (everything but idle and iowait), from /proc/stat. */
export function machineBusySeconds() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + (steal ?? 0)) / CLK_TCK;
}

/**
 * CPU seconds (user + system, all threads) of a live process. With `reapedChildren`, also the
 * CPU of its children that have exited and been waited for (sshd's per-connection processes).
 */
export function processCpuSeconds(pid, reapedChildren = false) {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    const own = Number(f[11]) + Number(f[12]);
    return (reapedChildren ? own + Number(f[13]) + Number(f[14]) : own) / CLK_TCK;
  } catch {
    return 0;
  }
}

export function childPids(pid) {
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

// ---------------------------------------------------------------------------------------------
// The two-machine variant (issue 11): the sharer and every anchor server on one core, the client
// and every anchor client on the other, with `taskset -c`, so each end has a core of its own as
// on two laptops. taskset sets the affinity and then execs the command, so the pid we hold is the
// command's own and every process it starts (nginx's worker, sshd's per-connection processes and
// the rsync they run, ssh under rsync, Node's threads) inherits the core.

export const VARIANTS = {
  shared: { name: 'shared', label: 'shared cores', serverCpus: undefined, clientCpus: undefined },
  pinned: { name: 'pinned', label: 'pinned: servers on CPU 0, clients on CPU 1', serverCpus: '0', clientCpus: '1' },
};

/** The variants BENCH_PINNED asks for: `both` (default), `only` (pinned only) or `off` (shared cores only). */
export function benchVariants() {
  const wanted = process.env.BENCH_PINNED || 'both';
  const chosen = { both: ['shared', 'pinned'], only: ['pinned'], off: ['shared'] }[wanted];
  if (!chosen) throw new Error(`BENCH_PINNED must be both, only or off, got "${wanted}"`);
  if (chosen.includes('pinned') && os.availableParallelism() < 2) throw new Error('BENCH_PINNED: the pinned variant needs 2 cores; set BENCH_PINNED=off');
  return chosen.map((v) => VARIANTS[v]);
}

/** taskset, when some scenario will pin (BENCH_PINNED is not off), for the scenarios' `tools`. */
export const PINNING_TOOLS = (process.env.BENCH_PINNED || 'both') === 'off' ? [] : ['taskset'];

/** [file, args] that run `cmd` on `cpus` (a taskset list such as "0"), or as is when `cpus` is undefined. */
export function onCpus(cpus, cmd, args) {
  return cpus === undefined ? [cmd, args] : [findExecutable('taskset') ?? 'taskset', ['-c', cpus, cmd, ...args]];
}

/** The CPUs a process may run on (`Cpus_allowed_list` of /proc/<pid>/status), e.g. "0" or "0-1". */
export function cpusAllowed(pid) {
  try {
    return /^Cpus_allowed_list:\s+(\S+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

function processName(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function commandLine(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Watches, every 10 ms until stopped, the affinity of every process this benchmark started: those
 * below a pid of `serverPids` must run on `serverCpus`, all others (the commands under test and
 * what they start) on `clientCpus`. Skipped: a process between fork and exec (it still has our
 * command line), taskset itself before it execs, and children we already had when the watch began.
 * `stop()` returns what was seen, by side, as
 * "<name> <cpus>" with the number of samples, and the mismatches.
 */
export function watchAffinity({ serverPids, serverCpus, clientCpus }) {
  const ours = commandLine(process.pid);
  const seen = { server: {}, client: {} };
  const mismatches = [];
  const visit = (pid, side) => {
    const name = processName(pid);
    const cpus = cpusAllowed(pid);
    if (name !== undefined && cpus !== undefined && name !== 'taskset' && commandLine(pid) !== ours) {
      const key = `${name} ${cpus}`;
      seen[side][key] = (seen[side][key] ?? 0) + 1;
      const expected = side === 'server' ? serverCpus : clientCpus;
      if (cpus !== expected && !mismatches.some((m) => m.pid === pid)) mismatches.push({ pid, side, name, cpus, expected });
    }
    for (const child of childPids(pid)) visit(child, side);
  };
  // Children we had before (esbuild's service, say) are not under test.
  const before = new Set(childPids(process.pid).filter((pid) => !serverPids.includes(pid)));
  const sample = () => {
    for (const child of childPids(process.pid)) if (!before.has(child)) visit(child, serverPids.includes(child) ? 'server' : 'client');
  };
  sample();
  const timer = setInterval(sample, 10);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return { serverCpus, clientCpus, seen, mismatches, ok: mismatches.length === 0 };
    },
  };
}

/**
 * Runs `fn` (a timed run returning { cpuSeconds? }) and adds a noise gauge: CPU used during the
 * run by anything but the command and the servers (`serverCpuSeconds()`, cumulative): other work
 * on the machine, plus kernel time not charged to a process (some loopback softirq).
 */
export async function withNoiseGauge(serverCpuSeconds, fn) {
  const busy0 = machineBusySeconds();
  const servers0 = serverCpuSeconds();
  const r = await fn();
  const busy = machineBusySeconds() - busy0;
  const servers = serverCpuSeconds() - servers0;
  r.serverCpuSeconds = round(servers, 2);
  if (r.cpuSeconds !== undefined) r.otherCpuSeconds = round(Math.max(0, busy - servers - r.cpuSeconds), 2);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Commands under test. They run in their own process group (/usr/bin/time ignores SIGINT), so
// an interrupted benchmark stops the wrapper and the command under it together.

const running = new Set();

async function stopRunningCommands() {
  await Promise.all(
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
  );
}

/** spawn() in a new process group that an interrupted benchmark stops. */
export function spawnTracked(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options, detached: true });
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

let timeFiles = 0;

/**
 * Runs a command to completion and times it with process.hrtime. With /usr/bin/time available
 * it is wrapped so the peak RSS (%M) and CPU seconds of the command itself are known too.
 * Several may run at once (each has its own time file in `scratch`). `cpus` (a taskset list)
 * pins the command and everything it starts; the rest of `options` goes to spawn().
 */
export function timedCommand(cmd, args, scratch, { cpus, ...options } = {}) {
  const timeFile = path.join(scratch, `time-${process.pid}-${++timeFiles}.out`);
  const [timed, timedArgs] = TIME_BIN ? [TIME_BIN, ['-f', '%M %U %S', '-o', timeFile, cmd, ...args]] : [cmd, args];
  const [file, argv] = onCpus(cpus, timed, timedArgs);
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawnTracked(file, argv, options);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      let maxRssBytes;
      let cpuSeconds;
      let userSeconds;
      let systemSeconds;
      if (TIME_BIN && fs.existsSync(timeFile)) {
        // On failure /usr/bin/time adds a "Command exited with non-zero status" line first.
        const fields = fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop().split(' ').map(Number);
        fs.rmSync(timeFile, { force: true });
        maxRssBytes = fields[0] * 1024;
        cpuSeconds = round(fields[1] + fields[2], 2);
        userSeconds = fields[1];
        systemSeconds = fields[2];
      }
      if (code !== 0) {
        reject(new Error(`${path.basename(cmd)} exited with ${code ?? signal}: ${stderr.trim()}\n${stdout.trim()}`));
        return;
      }
      resolve({ seconds, stdout, stderr, maxRssBytes, cpuSeconds, userSeconds, systemSeconds });
    });
  });
}

/** The last line of a command's output, parsed as JSON (the CLI's --json result). */
export function lastJsonLine(stdout) {
  return JSON.parse(stdout.trim().split('\n').pop());
}

/** `node dist/cli.js get <invite> <remote> <dest> --json --home <home>`, timed (on `cpus`, if given); returns the CLI's JSON too. */
export async function peershareGet({ invite, remote, dest, home, scratch, nodeArgs = [], cli = CLI, cpus }) {
  const r = await timedCommand(process.execPath, [...nodeArgs, cli, 'get', invite, remote, dest, '--json', '--home', home], scratch, { cpus });
  return { ...r, result: lastJsonLine(r.stdout) };
}

/** Pairs a client home with a sharer cheaply (a listing of the share's roots), so later runs time transfers only. */
export function pairClient(invite, home) {
  run(process.execPath, [CLI, 'ls', invite, '--json', '--home', home]);
}

/** Starts `peershare serve` on loopback (on `cpus`, if given), stopped with the scope; resolves once it prints its invite. */
/**
 * A probe (bench/probes/*.mjs) and the core it imports as one CommonJS file at `outFile`, compiled
 * as the CLI's bundle is. Run it with NODE_PATH at this checkout's node_modules: the native BLAKE3
 * binding it keeps external is found there, as the CLI's bundle finds it.
 */
export async function bundleProbe(probeFile, outFile) {
  const esbuild = createRequire(path.join(ROOT, 'package.json'))('esbuild');
  await esbuild.build({
    entryPoints: [probeFile],
    outfile: outFile,
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    external: ['vscode', '@napi-rs/blake-hash'],
    minify: true,
    logLevel: 'warning',
  });
  esbuild.stop(); // its service process would otherwise outlive the build, among the benchmark's children
}

export async function startPeerShare(scope, { folders, home, logFile, nodeArgs = [], serveArgs = [], env, cli = CLI, cpus }) {
  const args = [...nodeArgs, cli, 'serve', ...folders, '--json', '--home', home, '--port', '0', '--host', '127.0.0.1', '--invite-uses', '1000', ...serveArgs];
  const child = spawn(...onCpus(cpus, process.execPath, args), { stdio: ['ignore', 'pipe', fs.openSync(logFile, 'a')], env: env ?? process.env });
  scope.defer(() => stopChild(child));
  const info = await new Promise((resolve, reject) => {
    let buffered = '';
    const onData = (d) => {
      buffered += d;
      const nl = buffered.indexOf('\n');
      if (nl < 0) return;
      child.stdout.off('data', onData);
      child.stdout.resume(); // keep draining, ignore the rest
      try {
        const first = JSON.parse(buffered.slice(0, nl));
        if (first.event !== 'listening' || typeof first.invite !== 'string') throw new Error(`unexpected first line: ${buffered.slice(0, nl)}`);
        resolve(first);
      } catch (err) {
        reject(err);
      }
    };
    child.stdout.on('data', onData);
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`peershare serve exited with ${code}; see ${logFile}`)));
  });
  return { child, pid: child.pid, info, invite: info.invite };
}

/**
 * The comparison loop: one untimed warm-up of each tool, then `runs` rounds in which every tool
 * runs once, in the same order, so slow drift on the machine affects them alike. `tools` maps a
 * name to { run(): Promise<{ seconds, cpuSeconds?, ... }>, serverCpu(): cumulative CPU seconds of
 * its server }. `between` runs after every run, untimed (removes the download, syncs). With
 * `pinning` ({ serverPids, serverCpus, clientCpus }), the warm-ups are watched (watchAffinity):
 * a process on the wrong core fails the scenario, and what was seen is returned as `affinity`.
 */
export async function alternate(ctx, tools, { runs, between, describe = (r) => `${r.seconds.toFixed(3)} s`, pinning }) {
  ctx.log(`warm-up: one untimed run of each of ${Object.keys(tools).join(', ')}`);
  const warmupSeconds = {};
  const watcher = pinning && watchAffinity(pinning);
  for (const [name, tool] of Object.entries(tools)) {
    warmupSeconds[name] = round((await tool.run()).seconds);
    await between();
  }
  const affinity = watcher?.stop();
  if (affinity) {
    if (!affinity.ok) throw new Error(`pinning failed: ${affinity.mismatches.map((m) => `${m.side} process ${m.name} (pid ${m.pid}) on CPUs ${m.cpus}, not ${m.expected}`).join('; ')}`);
    ctx.log(`pinning checked (Cpus_allowed_list): server side ${Object.keys(affinity.seen.server).join(', ')}; client side ${Object.keys(affinity.seen.client).join(', ')}`);
  }
  const results = Object.fromEntries(Object.keys(tools).map((name) => [name, []]));
  for (let i = 1; i <= runs; i++) {
    for (const [name, tool] of Object.entries(tools)) {
      const r = await withNoiseGauge(tool.serverCpu, () => tool.run());
      results[name].push(r);
      ctx.log(
        `run ${i}/${runs} ${name.padEnd(9)} ${describe(r)}  client rss ${mib(r.maxRssBytes)} cpu ${r.cpuSeconds ?? '-'} s  ` +
          `server cpu ${r.serverCpuSeconds} s  other cpu ${r.otherCpuSeconds ?? '-'} s`,
      );
      await between();
    }
  }
  const noisy = Object.values(results).flat().filter((r) => (r.otherCpuSeconds ?? 0) > 0.5).length;
  if (noisy) ctx.log(`warning: ${noisy} run(s) overlapped other work (> 0.5 CPU-s used by other processes); see otherCpuSeconds`);
  return { warmupSeconds, results, affinity };
}

/**
 * The CPU both ends of each tool used, from `summariseRuns` figures, and the shortest time that
 * CPU allows: on shared cores, the total over this machine's cores; pinned, each end has one core,
 * so the busier end's CPU. A ratio goal below the ratio of these floors cannot be met here by any
 * schedule, only by doing less work.
 */
export function cpuBudget(tools, { pinned = false } = {}) {
  const cores = os.availableParallelism();
  const floor = (t) => (pinned ? Math.max(t.medianCpuSeconds, t.medianServerCpuSeconds) : t.medianTotalCpuSeconds / cores);
  const entries = Object.entries(tools).map(([name, t]) => [
    name,
    { clientCpuSeconds: t.medianCpuSeconds, serverCpuSeconds: t.medianServerCpuSeconds, totalCpuSeconds: t.medianTotalCpuSeconds, floorSeconds: round(floor(t)) },
  ]);
  return { cores: pinned ? '1 each end' : cores, ...Object.fromEntries(entries) };
}

/** A chart figure from `cpuBudget`: the CPU of PeerShare and of one anchor, and the floor each sets. */
export function cpuFigure(budget, anchorName, anchorLabel) {
  const text = (b) => `${b.totalCpuSeconds.toFixed(2)} CPU-s (client ${b.clientCpuSeconds.toFixed(2)}), so at best ${b.floorSeconds.toFixed(2)} s`;
  const where = typeof budget.cores === 'number' ? `on ${budget.cores} cores` : 'one core each end';
  return { label: `CPU, both ends, ${where}`, text: `PeerShare ${text(budget.peershare)}; ${anchorLabel} ${text(budget[anchorName])}` };
}

/** Per-tool figures of `alternate`'s results: every run and the median. */
export function summariseRuns(rs, extra = {}) {
  const med = median(rs.map((r) => r.seconds));
  return {
    seconds: rs.map((r) => round(r.seconds)),
    cpuSeconds: rs.map((r) => r.cpuSeconds),
    serverCpuSeconds: rs.map((r) => r.serverCpuSeconds),
    otherCpuSeconds: rs.map((r) => r.otherCpuSeconds),
    medianSeconds: round(med),
    // CPU of the command (all its threads and processes) plus its server's, per run: on a machine
    // with N cores no schedule finishes in less than this total / N.
    medianCpuSeconds: round(median(rs.map((r) => r.cpuSeconds))),
    medianServerCpuSeconds: round(median(rs.map((r) => r.serverCpuSeconds))),
    medianTotalCpuSeconds: round(median(rs.map((r) => (r.cpuSeconds ?? NaN) + (r.serverCpuSeconds ?? NaN)))),
    clientMaxRssBytes: Math.max(...rs.map((r) => r.maxRssBytes ?? 0)) || undefined,
    ...extra,
  };
}

// ---------------------------------------------------------------------------------------------
// Anchors: nginx over HTTPS and OpenSSH, both on loopback with their own configuration.

/** nginx (TLS 1.3, ECDSA P-256 self-signed, sendfile, 1 worker) serving `root`; master and worker on `cpus`, if given. */
export async function startNginx(scope, scratch, root, { cpus } = {}) {
  const dir = fs.mkdtempSync(path.join(scratch, 'nginx-'));
  fs.mkdirSync(path.join(dir, 'logs'), { recursive: true });
  run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
  ]);
  const port = await freePort();
  const conf = `
${process.getuid?.() === 0 ? 'user root;' : ''}
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 64; }
http {
  access_log ${dir}/logs/access.log;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  default_type application/octet-stream;
  sendfile on;
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${dir}/cert.pem;
    ssl_certificate_key ${dir}/key.pem;
    ssl_protocols TLSv1.3;
    root ${root};
  }
}
`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child = spawn(...onCpus(cpus, findExecutable('nginx'), ['-c', path.join(dir, 'nginx.conf'), '-p', dir]), {
    stdio: ['ignore', 'ignore', fs.openSync(path.join(dir, 'logs', 'stderr.log'), 'a')],
  });
  scope.defer(() => stopChild(child, 'SIGTERM'));
  await waitForPort(port, child, 'nginx');
  log(`nginx on https://127.0.0.1:${port}/ (pid ${child.pid}${cpus === undefined ? '' : `, CPU ${cpus}`})`);
  return {
    child,
    port,
    url: (rel) => `https://127.0.0.1:${port}/${rel}`,
    workerPids: () => childPids(child.pid),
    workerVmHwm: () => Math.max(0, ...childPids(child.pid).map((p) => vmHwm(p) ?? 0)) || undefined,
  };
}

/**
 * OpenSSH's sshd on 127.0.0.1 with its own configuration, host key and a fresh client key, for
 * scp and rsync as the current user. Default ciphers: the one negotiated is recorded, not chosen.
 * With `cpus`, the listener runs there, and so do its per-connection processes (they inherit it).
 */
export async function startSshd(scope, scratch, { cpus } = {}) {
  const dir = fs.mkdtempSync(path.join(scratch, 'ssh-'));
  const hostKey = path.join(dir, 'host_ed25519');
  const clientKey = path.join(dir, 'client_ed25519');
  run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'peershare-bench-host', '-f', hostKey]);
  run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'peershare-bench-client', '-f', clientKey]);
  fs.copyFileSync(`${clientKey}.pub`, path.join(dir, 'authorized_keys'));
  const home = path.join(dir, 'home');
  fs.mkdirSync(home);
  const port = await freePort();
  // scp (OpenSSH 9) speaks SFTP, so the server needs the sftp subsystem Debian's own config sets.
  const sftpServer = ['/usr/lib/openssh/sftp-server', '/usr/libexec/sftp-server'].find((f) => fs.existsSync(f)) ?? 'internal-sftp';
  const conf = path.join(dir, 'sshd_config');
  fs.writeFileSync(
    conf,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no', // the scratch folder is in /tmp, which StrictModes would refuse
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      `Subsystem sftp ${sftpServer}`,
      // sshd runs rsync's and scp's remote side through the user's shell, and bash then reads
      // ~/.bashrc; one that loads a toolchain (pyenv init: 1.3-2 s here) would be timed as part of
      // every anchor run. An empty HOME keeps the anchors at what OpenSSH and rsync cost.
      `SetEnv HOME=${home}`,
      '',
    ].join('\n'),
  );
  // sshd's privilege separation folder; Debian's service creates it, so without the service we do.
  if (!fs.existsSync('/run/sshd')) {
    fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
    scope.defer(() => fs.rmSync('/run/sshd', { recursive: true, force: true }));
  }
  const child = spawn(...onCpus(cpus, '/usr/sbin/sshd', ['-D', '-e', '-f', conf]), {
    stdio: ['ignore', 'ignore', fs.openSync(path.join(dir, 'sshd.log'), 'a')],
  });
  scope.defer(() => stopChild(child, 'SIGTERM'));
  await waitForPort(port, child, 'sshd');
  const user = os.userInfo().username;
  // -F /dev/null: no user or system client configuration, so every run uses OpenSSH's defaults.
  const options = ['-F', '/dev/null', '-i', clientKey, '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR'];
  const sshArgs = [...options, '-p', String(port)];
  // Ask once, verbosely, which cipher the defaults negotiate.
  const probe = spawnSync('ssh', [...options, '-v', '-p', String(port), `${user}@127.0.0.1`, 'true'], { encoding: 'utf8' });
  if (probe.status !== 0) throw new Error(`ssh to the benchmark sshd failed: ${probe.stderr}\n(sshd log: ${path.join(dir, 'sshd.log')})`);
  const cipher = /kex: server->client cipher: (\S+) MAC: (\S+)/.exec(probe.stderr);
  const kex = /kex: algorithm: (\S+)/.exec(probe.stderr);
  log(`sshd on 127.0.0.1:${port} (pid ${child.pid}${cpus === undefined ? '' : `, CPU ${cpus}`}), cipher ${cipher?.[1] ?? '?'}`);
  return {
    child,
    port,
    user,
    host: `${user}@127.0.0.1`,
    /** ssh options, for `ssh <args> host cmd` and for rsync's -e. */
    sshArgs,
    /** scp takes the port as -P. */
    scpArgs: [...options, '-P', String(port)],
    rsyncShell: ['ssh', ...sshArgs].join(' '),
    negotiated: { cipher: cipher?.[1], mac: cipher?.[2], kex: kex?.[1], hostKey: 'ssh-ed25519', clientKey: 'ssh-ed25519' },
    /** CPU of the listener and its connections, live and finished. */
    cpuSeconds: () => processCpuSeconds(child.pid, true) + childPids(child.pid).reduce((sum, pid) => sum + processCpuSeconds(pid, true), 0),
    /** Waits (up to 2 s) for the last connection's sshd processes to exit, so they are not counted in the next run. */
    async settle() {
      for (let i = 0; i < 40 && childPids(child.pid).length > 0; i++) await sleep(50);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Data.

/** A file of random (incompressible) bytes. */
export function writeRandomFile(file, bytes) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  run('sh', ['-c', `head -c ${bytes} /dev/urandom > "$1"`, 'sh', file]);
  if (fs.statSync(file).size !== bytes) throw new Error(`${file} has the wrong size`);
}

/** Files and bytes below `dir` (regular files only; folders counted apart). */
export function treeStats(dir) {
  let files = 0;
  let bytes = 0;
  let dirs = 0;
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        dirs++;
        walk(p);
      } else if (e.isFile()) {
        files++;
        bytes += fs.statSync(p).size;
      }
    }
  };
  walk(dir);
  return { files, bytes, dirs };
}

/** Bytes free on the file system holding `dir`. */
export function freeBytes(dir) {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

export function requireFreeSpace(dir, bytes, what) {
  const free = freeBytes(dir);
  if (free < bytes) throw new Error(`${what} needs ${mib(bytes)} free in ${dir}; only ${mib(free)} is (set BENCH_TMP elsewhere)`);
}

/** Removes a download and flushes dirty pages, so one run's writeback does not land on the next. */
export function clearAndSync(...targets) {
  for (const t of targets) fs.rmSync(t, { recursive: true, force: true });
  run('sync', []);
}

/**
 * Syncs, then drops the kernel's clean caches, when this process may (root). On an ext4 without a
 * journal (this VM's), the kernel skips recently deleted inodes when it allocates one, reading
 * each one's inode-table block from its cache to check; after earlier runs deleted tens of
 * thousands of files, creating a file costs several times more (5,000 files: 0.4 s fresh, 2.7 s
 * right after deleting 5,000 others), for every tool, for as long as those blocks stay cached.
 * Dropping the caches ends that. Returns whether it did; the data must be read in again after.
 */
export function dropCaches() {
  run('sync', []);
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics, goals and formatting.

export function median(values) {
  const s = values.filter((v) => v !== undefined && !Number.isNaN(v)).sort((a, b) => a - b);
  if (s.length === 0) return undefined;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export function round(x, digits = 3) {
  return x === undefined || x === null || Number.isNaN(x) ? undefined : Number(x.toFixed(digits));
}

export function mib(bytes) {
  return bytes === undefined ? '-' : `${(bytes / MiB).toFixed(0)} MiB`;
}

export function toMiB(bytes, digits = 1) {
  return bytes === undefined ? undefined : round(bytes / MiB, digits);
}

/**
 * One goal of the issue, checked. `normalized` puts every goal on one scale for the chart:
 * measured / target for an upper bound, target / measured for a lower bound, so 1.0 is the goal
 * line and smaller is better either way.
 */
export function goal({ label, measured, op, target, unit }) {
  const known = typeof measured === 'number' && Number.isFinite(measured);
  const met = known && { '<': measured < target, '<=': measured <= target, '>': measured > target, '>=': measured >= target }[op];
  let normalized;
  if (known) normalized = op.startsWith('<') ? measured / target : measured > 0 ? target / measured : Infinity;
  return { label, measured: known ? round(measured, 3) : null, op, target, unit, met: Boolean(met), normalized: known ? round(normalized, 3) : null };
}

/** Prints rows as an aligned table (first row: header). */
export function printTable(rows) {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => String(r[c] ?? '').length)));
  for (const r of rows) console.log(r.map((v, c) => String(v ?? '').padEnd(widths[c])).join('  ').trimEnd());
}

export function printGoals(goals) {
  for (const g of goals) {
    console.log(`  ${g.met ? 'met    ' : 'NOT MET'}  ${g.label}: ${g.measured ?? '-'}${g.unit ? ` ${g.unit}` : ''} (goal ${g.op} ${g.target}${g.unit ? ` ${g.unit}` : ''})`);
  }
}

// ---------------------------------------------------------------------------------------------
// Where and on what the figures were measured.

/** The commit measured, and whether src/ had uncommitted changes when dist/ was built. */
export function gitDescribe() {
  if (process.env.BENCH_COMMIT) return process.env.BENCH_COMMIT;
  const git = (args) => spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' }).stdout?.trim();
  const head = git(['rev-parse', '--short', 'HEAD']);
  if (!head) return undefined;
  return git(['status', '--porcelain', '--', 'src']) ? `${head} (src/ modified)` : head;
}

export function machineInfo() {
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
    if (!findExecutable(cmd)) return undefined;
    const r = spawnSync(findExecutable(cmd), args, { encoding: 'utf8' });
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
    nginx: version('nginx', ['-v'], /nginx\/(\S+)/),
    curl: version('curl', ['--version'], /^curl (\S+)/),
    openssh: version('ssh', ['-V'], /^(OpenSSH_\S+)/),
    rsync: version('rsync', ['--version'], /version (\S+)/),
  };
}

// ---------------------------------------------------------------------------------------------
// CPU profile summary: self time per function, from a .cpuprofile (V8 format).

/** esbuild's unminified bundles mark each module with a "// src/..." comment; map lines to modules. */
export function bundleModules(bundlePath) {
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

export function summariseProfile(file, moduleOf, top = 12) {
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

// ---------------------------------------------------------------------------------------------
// Running a scenario: the context it gets, and what is kept of its result.

/** The BENCH_* variables set for this run, so a result says which sizes it used. */
function benchEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('BENCH_')));
}

/**
 * Runs one scenario module in its own scope and writes bench/results/<name>-latest.json (every
 * run's raw figures). Returns the record, whose `summary`, `goals` and `figures` go to
 * docs/benchmarks.json.
 */
export async function runScenario(scenario, { machine = machineInfo(), commit = gitDescribe(), out = path.join(RESULTS_DIR, `${scenario.name}-latest.json`) } = {}) {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build:production (npm run bench does)`);
  const scope = openScope(scenario.name);
  const started = Date.now();
  const loadAverageBefore = os.loadavg().map((x) => round(x, 2));
  if (loadAverageBefore[0] > 0.5) log(`warning: load average ${loadAverageBefore.join(' ')}; other work on this machine will skew the timings`);
  log(`== ${scenario.name}: ${scenario.title}`);
  try {
    const ctx = { scope, scratch: makeScratch(scope, scenario.name), log: (m) => log(`${scenario.name}: ${m}`) };
    const result = await scenario.run(ctx);
    const record = {
      scenario: scenario.name,
      title: scenario.title,
      date: new Date().toISOString(),
      commit,
      machine,
      env: benchEnv(),
      loadAverageBefore,
      durationSeconds: round((Date.now() - started) / 1000, 1),
      ...result,
    };
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, `${JSON.stringify(record, null, 2)}\n`);
    console.log(`\n${scenario.name}: ${result.measured ?? scenario.title}`);
    for (const f of result.figures ?? []) console.log(`  ${f.variant ? `[${f.variant}] ` : ''}${f.label}: ${f.text}`);
    printGoals(result.goals ?? []);
    console.log(`  raw results: ${path.relative(process.cwd(), out) || out}`);
    return record;
  } finally {
    await closeScope(scope);
  }
}

/** True when `importMetaUrl` is the script node was started with. */
export function isMain(importMetaUrl) {
  return process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(importMetaUrl);
}

/** `node bench/<name>.mjs`: one scenario, its raw results file (or BENCH_OUT), no docs/ output. */
export function runStandalone(scenario) {
  (async () => {
    ensureTools(scenario.tools ?? []);
    await runScenario(scenario, process.env.BENCH_OUT ? { out: path.resolve(process.env.BENCH_OUT) } : {});
  })()
    .catch((err) => {
      log(`failed: ${err?.stack ?? err}`);
      process.exitCode = 1;
    })
    .finally(() => closeAllScopes());
}
