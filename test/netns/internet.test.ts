import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { listTree, tempDir, writeRandomFile } from '../helpers';
import { hasTools, makeTopology, type Topology } from './topology';

/**
 * Issue 14 end to end: a sharer and a client in two homes, each behind its own NAT router, with no
 * route between the homes but through both NATs, pair with an invite and download a folder
 * through HyperDHT hole punching; the DHT is three nodes of our own in a "public" namespace
 * (topology.ts). With both NATs randomizing ports, the connection must fail with a sentence a
 * person can act on. The CLI's --internet is run the same way. Needs root, iproute2 and nftables,
 * and the built CLI (npm run build); it builds and removes its namespaces.
 */
const missing = hasTools();
const ROOT = path.join(__dirname, '..', '..');
const children = new Set<ChildProcess>();

const CLI = path.join(ROOT, 'dist', 'cli.js');

/**
 * Runs `node --import tsx <script> ...args` in namespace `ns` (or the built CLI, for `cli`); its
 * stdout's lines, one by one.
 */
function inNamespace(ns: string, script: string, args: string[]): { child: ChildProcess; lines: AsyncIterator<string> } {
  const program = script === 'cli' ? [CLI] : ['--import', 'tsx', path.join(__dirname, script)];
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...program, ...args], { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return { child, lines: createInterface({ input: child.stdout! })[Symbol.asyncIterator]() };
}

async function firstLine(lines: AsyncIterator<string>, what: string): Promise<string> {
  const next = await lines.next();
  if (next.done) throw new Error(`${what} ended without a word`);
  return next.value;
}

/** A world: the topology, its DHT nodes running, and a sharer in home1 sharing `folder`. */
async function world(randomPorts: boolean, folder: string, withCli = false): Promise<{ topology: Topology; invite: string; stop(): Promise<void> }> {
  const topology = makeTopology({ randomPorts });
  try {
    const dht = inNamespace(topology.pub, 'dht-bootstrap.ts', topology.dhtNodes);
    assert.equal(await firstLine(dht.lines, 'the DHT nodes'), 'ready');
    const home = path.join(tempDir(), 'home');
    const sharer = withCli
      ? inNamespace(topology.home1, 'cli', ['serve', folder, '--json', '--home', home, '--host', '0.0.0.0', '--port', '0', '--internet', '--dht-bootstrap', topology.dhtNodes[0]])
      : inNamespace(topology.home1, 'peer.ts', ['share', home, folder, topology.dhtNodes[0]]);
    const said = JSON.parse(await firstLine(sharer.lines, 'the sharer')) as { invite?: string; error?: string; message?: string };
    assert.ok(said.invite, `the sharer failed: ${said.error} ${said.message}`);
    return {
      topology,
      invite: said.invite,
      stop: async () => {
        for (const child of [sharer.child, dht.child]) {
          if (child === sharer.child && withCli) child.kill('SIGTERM'); // serve stops on a signal
          child.stdin!.end();
          await new Promise((resolve) => (child.exitCode !== null ? resolve(undefined) : child.once('exit', resolve)));
        }
        topology.remove();
      },
    };
  } catch (err) {
    for (const child of children) child.kill();
    topology.remove();
    throw err;
  }
}

/** The client in home2: connect with the invite, download the share into a fresh folder. */
async function get(topology: Topology, invite: string): Promise<{ dest: string; result: { route?: string; connectMs?: number; totalMs?: number; files?: number; error?: string; message?: string } }> {
  const dest = tempDir();
  const client = inNamespace(topology.home2, 'peer.ts', ['get', path.join(tempDir(), 'home'), invite, dest, topology.dhtNodes[0]]);
  return { dest, result: JSON.parse(await firstLine(client.lines, 'the client')) };
}

describe('two homes behind NATs pair and download through HyperDHT hole punching', () => {
  let folder: string;
  let files: Map<string, Buffer>;

  before(async () => {
    assert.equal(missing, undefined, `This test cannot run here: ${missing}.`);
    folder = path.join(tempDir(), 'project');
    files = new Map([
      ['big.bin', await writeRandomFile(path.join(folder, 'big.bin'), 8 * 1024 * 1024 + 3)],
      ['src/main.ts', await writeRandomFile(path.join(folder, 'src', 'main.ts'), 4000)],
    ]);
  });

  after(() => {
    for (const child of children) child.kill('SIGKILL');
  });

  it('through two masquerading NATs (ports kept): the invite pairs and the folder arrives byte-exact', async () => {
    const w = await world(false, folder);
    try {
      const { dest, result } = await get(w.topology, w.invite);
      assert.equal(result.error, undefined, `${result.error}: ${result.message}`);
      assert.equal(result.route, 'dht', 'the homes have no route between them but through the NATs');
      console.log(`# figure: through two NATs, invite to connected ${result.connectMs!.toFixed(0)} ms, 8 MiB folder in ${result.totalMs!.toFixed(0)} ms`);
      assert.equal(result.files, 2);
      assert.deepEqual(await listTree(path.join(dest, 'project')), ['big.bin', 'src/', 'src/main.ts']);
      for (const [name, bytes] of files) assert.ok((await fs.readFile(path.join(dest, 'project', name))).equals(bytes), name);
    } finally {
      await w.stop();
    }
  });

  it('the CLI, serve --internet and get --internet, through the same two NATs', async () => {
    const w = await world(false, folder, true);
    try {
      const dest = tempDir();
      const client = inNamespace(w.topology.home2, 'cli', ['get', w.invite, 'project/big.bin', dest, '--json', '--home', path.join(tempDir(), 'home'), '--internet', '--dht-bootstrap', w.topology.dhtNodes[0]]);
      const result = JSON.parse(await firstLine(client.lines, 'peershare get')) as { error?: { message: string } };
      assert.equal(result.error, undefined, result.error?.message);
      const code = await new Promise((resolve) => (client.child.exitCode !== null ? resolve(client.child.exitCode) : client.child.once('exit', resolve)));
      assert.equal(code, 0, 'get ends by itself: the DHT node is closed with the command');
      assert.ok((await fs.readFile(path.join(dest, 'big.bin'))).equals(files.get('big.bin')!));
    } finally {
      await w.stop();
    }
  });

  it('through two NATs that randomize ports: it fails, saying why and what a person can do', async () => {
    const w = await world(true, folder);
    try {
      const { dest, result } = await get(w.topology, w.invite);
      assert.equal(result.error, 'CONNECTION_FAILED', `expected a failure, got ${JSON.stringify(result)}`);
      assert.match(result.message ?? '', /no direct connection could be punched/);
      assert.match(result.message ?? '', /another network/);
      assert.deepEqual(await listTree(dest), [], 'nothing was written');
    } finally {
      await w.stop();
    }
  });
});
