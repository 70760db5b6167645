/**
 * Issue 14's figures through the namespaced internet of test/netns/topology.ts (two homes, each
 * behind its own masquerading NAT; DHT nodes of our own in the "public" namespace). Run by
 * bench/internet.mjs as `node --import tsx bench/probes/internet.ts` (root, iproute2, nftables);
 * prints one JSON line of raw runs.
 *
 * The sharer is `peershare serve --internet` in home1; router1 also forwards its TCP port, so the
 * same sharer can be reached directly (198.18.1.2) from home2, the "direct route in the same
 * namespaces" the DHT is compared with. Each run is the real CLI in home2: `get` of the 1 byte
 * file (the whole command, from start to the byte on disk: an upper bound of the time to the first
 * byte), and `get` of the large file, alternating the DHT-only invite and the direct-only one.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { hasTools, makeTopology } from '../../test/netns/topology';

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const PORT = 47474;
const sizeMiB = Number(process.env.BENCH_INTERNET_MIB ?? 1024);
const runs = Number(process.env.BENCH_INTERNET_RUNS ?? process.env.BENCH_RUNS ?? 3);
const children = new Set<ChildProcess>();

function inNamespace(ns: string, args: string[], stderr: 'inherit' | 'ignore' = 'inherit'): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...args], { cwd: ROOT, stdio: ['pipe', 'pipe', stderr] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

async function firstLine(child: ChildProcess, what: string): Promise<string> {
  const next = await createInterface({ input: child.stdout! })[Symbol.asyncIterator]().next();
  if (next.done) throw new Error(`${what} ended without a word`);
  return next.value;
}

/** The CLI in `ns`, to completion: seconds from spawn to exit, and its JSON. */
function timedCli(ns: string, args: string[]): Promise<{ seconds: number; result: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = inNamespace(ns, [CLI, ...args]);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const last = out.trim().split('\n').pop() ?? '';
      if (code !== 0) return reject(new Error(`peershare ${args[0]} exited with ${code}: ${out.trim()}`));
      resolve({ seconds, result: JSON.parse(last) as Record<string, unknown> });
    });
  });
}

function writeRandom(file: string, bytes: number): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const fd = openSync(file, 'w');
  try {
    for (let done = 0; done < bytes; done += 1 << 20) writeSync(fd, randomBytes(Math.min(1 << 20, bytes - done)));
  } finally {
    closeSync(fd);
  }
}

/** The invite with only the DHT key (no address), or only the forwarded address (no key). */
function onlyRoute(invite: string, route: 'dht' | 'direct'): string {
  const url = new URL(invite);
  url.searchParams.delete('addr');
  if (route === 'direct') {
    url.searchParams.delete('dht');
    url.searchParams.append('addr', `198.18.1.2:${PORT}`);
  }
  return url.toString();
}

async function main(): Promise<void> {
  const missing = hasTools();
  if (missing) throw new Error(`The internet scenario cannot run here: ${missing}.`);
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'peershare-bench-internet-'));
  const topology = makeTopology({ randomPorts: false });
  try {
    // The sharer's port forwarded on router1: the direct route to compare with.
    const nft = (...args: string[]): void => void execFileSync('ip', ['netns', 'exec', topology.router1, 'nft', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    nft('add', 'chain', 'ip', 'nat', 'prerouting', '{ type nat hook prerouting priority dstnat; policy accept; }');
    nft('add', 'rule', 'ip', 'nat', 'prerouting', 'iifname', 'wan0', 'tcp', 'dport', String(PORT), 'dnat', 'to', `10.1.0.2:${PORT}`);
    nft('insert', 'rule', 'ip', 'filter', 'forward', 'iifname', 'wan0', 'ct', 'status', 'dnat', 'accept');
    const dht = inNamespace(topology.pub, ['--import', 'tsx', path.join(ROOT, 'test', 'netns', 'dht-bootstrap.ts'), ...topology.dhtNodes]);
    if ((await firstLine(dht, 'the DHT nodes')) !== 'ready') throw new Error('the DHT nodes did not start');
    const folder = path.join(scratch, 'project');
    writeRandom(path.join(folder, 'big.bin'), sizeMiB * 1024 * 1024);
    writeRandom(path.join(folder, 'one-byte.txt'), 1);
    const bootstrap = ['--internet', '--dht-bootstrap', topology.dhtNodes[0]];
    const sharer = inNamespace(topology.home1, [CLI, 'serve', folder, '--json', '--home', path.join(scratch, 'home-sharer'), '--host', '0.0.0.0', '--port', String(PORT), '--invite-uses', '1000', ...bootstrap], 'ignore');
    const listening = JSON.parse(await firstLine(sharer, 'the sharer')) as { invite?: string };
    if (!listening.invite) throw new Error(`the sharer did not start: ${JSON.stringify(listening)}`);
    const invites = { dht: onlyRoute(listening.invite, 'dht'), direct: onlyRoute(listening.invite, 'direct') };
    const get = async (route: 'dht' | 'direct', remote: string, expected: number) => {
      const dest = path.join(scratch, `dest-${route}`);
      rmSync(dest, { recursive: true, force: true });
      mkdirSync(dest);
      const r = await timedCli(topology.home2, ['get', invites[route], `project/${remote}`, dest, '--json', '--home', path.join(scratch, `home-${route}`), ...bootstrap]);
      if (statSync(path.join(dest, remote)).size !== expected) throw new Error(`${remote} over ${route}: wrong size`);
      rmSync(dest, { recursive: true, force: true });
      execFileSync('sync');
      return r.seconds;
    };
    const raw = { firstByte: { dht: [] as number[], direct: [] as number[] }, large: { dht: [] as number[], direct: [] as number[] } };
    // Warm-up: each route once (pairs each client home, reads the file into the page cache).
    for (const route of ['dht', 'direct'] as const) await get(route, 'big.bin', sizeMiB * 1024 * 1024);
    for (let i = 0; i < runs; i++) {
      for (const route of ['dht', 'direct'] as const) {
        raw.firstByte[route].push(await get(route, 'one-byte.txt', 1));
        raw.large[route].push(await get(route, 'big.bin', sizeMiB * 1024 * 1024));
        process.stderr.write(`[internet] run ${i + 1}/${runs} ${route}: 1 byte ${raw.firstByte[route][i].toFixed(2)} s, ${sizeMiB} MiB ${raw.large[route][i].toFixed(2)} s\n`);
      }
    }
    process.stdout.write(`${JSON.stringify({ sizeMiB, runs, raw })}\n`);
    sharer.kill('SIGTERM');
    dht.stdin!.end();
  } finally {
    for (const child of children) child.kill('SIGKILL');
    topology.remove();
    rmSync(scratch, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  for (const child of children) child.kill('SIGKILL');
  process.exit(1);
});
