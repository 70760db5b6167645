import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as readline from 'node:readline';
import { Discovery, connectToPeer, parseInvite } from '../../src/core';
import { freePort, makePeer, tempDir, writeRandomFile } from '../helpers';

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

function json(run: Run): Record<string, unknown> {
  return JSON.parse(run.stdout.trim().split('\n').pop()!);
}

interface Serving {
  proc: ChildProcess;
  args: string[];
  /** What it has logged so far. */
  stderr: () => string;
  listening: { invite: string; peerId: string; port: number; addresses: string[] };
}

/** Starts `peershare serve --json` and waits for its listening line. */
async function startServe(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Serving> {
  const full = ['serve', ...args, '--json'];
  const proc = spawn(process.execPath, [CLI, ...full], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const listening = await new Promise<Serving['listening']>((resolve, reject) => {
    readline.createInterface({ input: proc.stdout! }).once('line', (l) => resolve(JSON.parse(l)));
    proc.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
  });
  return { proc, args, listening, stderr: () => stderr };
}

/** Something else holding a port on 127.0.0.1 (not PeerShare: it drops every connection). */
async function holdPort(port = 0): Promise<{ port: number; close: () => Promise<void> }> {
  const server = net.createServer((socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return { port: (server.address() as net.AddressInfo).port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

async function stopServe(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return;
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
}

describe('the peershare CLI', () => {
  let serveProc: ChildProcess;
  let listening: { invite: string; peerId: string; port: number; addresses: string[] };
  let ws: string;
  const sharerHome = tempDir();
  const clientHome = tempDir();
  let bigData: Buffer;

  before(async () => {
    // Every serve here has a default port of this file's own (PEERSHARE_DEFAULT_PORT), so none
    // contends for 47474 with a real serve on this machine; the test of 47474 itself clears it.
    process.env.PEERSHARE_DEFAULT_PORT = String(await freePort());
    const built = spawnSync(process.execPath, [path.join(ROOT, 'esbuild.js')], { cwd: ROOT, stdio: 'inherit' });
    assert.equal(built.status, 0, 'the CLI builds');
    ws = path.join(tempDir(), 'ws');
    await fs.mkdir(path.join(ws, 'dir', 'deeper'), { recursive: true });
    await fs.writeFile(path.join(ws, 'hello.txt'), 'hello\n');
    await fs.writeFile(path.join(ws, 'secret.txt'), 'TOP-SECRET-CONTENT');
    await fs.writeFile(path.join(ws, 'dir', 'deeper', 'x.txt'), 'x');
    bigData = await writeRandomFile(path.join(ws, 'dir', 'big.bin'), 5 * 1024 * 1024);
    serveProc = spawn(process.execPath, [CLI, 'serve', ws, '--json', '--home', sharerHome, '--invite-uses', '3', '--name', 'Sharer'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = readline.createInterface({ input: serveProc.stdout! });
    listening = await new Promise((resolve, reject) => {
      lines.once('line', (line) => resolve(JSON.parse(line)));
      serveProc.once('exit', (code) => reject(new Error(`serve exited with ${code}`)));
    });
  });

  after(async () => {
    if (serveProc.exitCode === null) {
      serveProc.kill('SIGTERM');
      await new Promise((r) => serveProc.once('exit', r));
    }
  });

  it('prints the address, peer ID and invite as JSON as soon as it listens', () => {
    assert.match(listening.invite, /^peershare:\/\/invite\?/);
    assert.match(listening.peerId, /^([A-Z2-7]{4}-){12}[A-Z2-7]{4}$/);
    assert.deepEqual(listening.addresses, [`127.0.0.1:${listening.port}`]);
  });

  it('id shows the same peer ID every time', async () => {
    const a = json(await cli(['id', '--json', '--home', sharerHome]));
    assert.equal(a.peerId, listening.peerId);
    const plain = await cli(['id'], { PEERSHARE_HOME: sharerHome });
    assert.equal(plain.stdout.trim(), listening.peerId);
  });

  it('ls with the invite lists the shared folders, then by peer ID without the invite', async () => {
    const top = json(await cli(['ls', listening.invite, '--json', '--home', clientHome]));
    assert.deepEqual((top.entries as { name: string }[]).map((e) => e.name), ['ws']);
    const byId = await cli(['ls', listening.peerId.slice(0, 9), 'ws', '--home', clientHome]);
    assert.equal(byId.code, 0, byId.stderr);
    assert.match(byId.stdout, /^d .* dir\/$/m);
    assert.match(byId.stdout, /^- +6 B .* hello\.txt$/m);
  });

  it('get downloads a file and a folder, verified, and says so', async () => {
    const dest = tempDir();
    const file = await cli(['get', listening.peerId, 'ws/hello.txt', dest, '--home', clientHome]);
    assert.equal(file.code, 0, file.stderr);
    assert.match(file.stdout, /verified with BLAKE3/);
    assert.equal(await fs.readFile(path.join(dest, 'hello.txt'), 'utf8'), 'hello\n');
    const folder = json(await cli(['get', listening.peerId, 'ws/dir', dest, '--json', '--home', clientHome]));
    assert.equal(folder.files, 2);
    assert.deepEqual(await fs.readFile(path.join(dest, 'dir', 'big.bin')), bigData);
    assert.equal(await fs.readFile(path.join(dest, 'dir', 'deeper', 'x.txt'), 'utf8'), 'x');
    assert.ok((folder.maxRssBytes as number) > 0);
  });

  it('get to a new name, and refuses to overwrite without --overwrite (exit 6)', async () => {
    const dest = tempDir();
    const target = path.join(dest, 'renamed.txt');
    assert.equal((await cli(['get', listening.peerId, 'ws/hello.txt', target, '--home', clientHome])).code, 0);
    await fs.writeFile(target, 'mine');
    const refused = await cli(['get', listening.peerId, 'ws/hello.txt', target, '--home', clientHome]);
    assert.equal(refused.code, 6);
    assert.match(refused.stderr, /DEST_EXISTS/);
    assert.equal(await fs.readFile(target, 'utf8'), 'mine');
    assert.equal((await cli(['get', listening.peerId, 'ws/hello.txt', target, '--overwrite', '--home', clientHome])).code, 0);
    assert.equal(await fs.readFile(target, 'utf8'), 'hello\n');
  });

  it('trust ls lists paired peers with a verification code both sides agree on; trust rm revokes', async () => {
    const mine = json(await cli(['trust', 'ls', '--json', '--home', clientHome]));
    const sharerSide = json(await cli(['trust', 'ls', '--json', '--home', sharerHome]));
    const clientId = json(await cli(['id', '--json', '--home', clientHome])).peerId;
    const onClient = (mine.peers as { id: string; verificationCode: string }[]).find((p) => p.id === listening.peerId)!;
    const onSharer = (sharerSide.peers as { id: string; verificationCode: string }[]).find((p) => p.id === clientId)!;
    assert.ok(onClient && onSharer);
    assert.equal(onClient.verificationCode, onSharer.verificationCode);
    const other = tempDir();
    assert.equal((await cli(['ls', listening.invite, '--home', other])).code, 0);
    const removed = await cli(['trust', 'rm', listening.peerId.slice(0, 10), '--home', other]);
    assert.equal(removed.code, 0, removed.stderr);
    const after = await cli(['ls', listening.peerId, '--home', other]);
    assert.equal(after.code, 2, 'no longer a known peer');
    assert.equal((await cli(['trust', 'rm', 'nobody', '--home', other])).code, 2);
  });

  it('nearby lists a peer that serves with --announce, as not yet trusted', async () => {
    const port = String(48_000 + Math.floor(Math.random() * 1000));
    const discovery = ['--interface', '127.0.0.1', '--discovery-port', port];
    const announcer = spawn(process.execPath, [CLI, 'serve', ws, '--json', '--home', tempDir(), '--announce', '--name', 'Announcer', ...discovery], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const first = await new Promise<{ peerId: string; port: number }>((resolve) => readline.createInterface({ input: announcer.stdout! }).once('line', (l) => resolve(JSON.parse(l))));
      const found = json(await cli(['nearby', '--json', '--timeout', '1500', '--home', tempDir(), ...discovery]));
      const peers = found.peers as { id: string; name: string; address: string; trusted: boolean }[];
      assert.deepEqual(peers.map((p) => [p.id, p.name, p.address, p.trusted]), [[first.peerId, 'Announcer', `127.0.0.1:${first.port}`, false]]);
    } finally {
      announcer.kill('SIGTERM');
      await new Promise((r) => announcer.once('exit', r));
    }
  });

  it('nearby calls an announcement trusted only where the certificate was proved; a spoof of a known ID is not', async () => {
    const port = String(48_000 + Math.floor(Math.random() * 1000));
    const discovery = ['--interface', '127.0.0.1', '--discovery-port', port];
    const announcer = await startServe([ws, '--home', tempDir(), '--announce', '--name', 'Announcer', ...discovery]);
    const home = tempDir();
    const liar = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((r) => liar.bind(0, '127.0.0.1', () => r()));
    liar.setMulticastInterface('127.0.0.1');
    const spoof = setInterval(() => liar.send(JSON.stringify({ t: 'announce', v: 1, id: announcer.listening.peerId, name: 'Announcer', port: 9 }), Number(port), '239.255.70.83'), 200);
    try {
      assert.equal((await cli(['ls', announcer.listening.invite, '--home', home])).code, 0);
      const found = await cli(['nearby', '--json', '--timeout', '1500', '--home', home, ...discovery]);
      const peers = json(found).peers as { id: string; address: string; trusted: boolean; proved: boolean }[];
      const real = peers.find((p) => p.address === `127.0.0.1:${announcer.listening.port}`);
      const fake = peers.find((p) => p.address === '127.0.0.1:9');
      assert.equal(real?.trusted, true, JSON.stringify(peers));
      assert.equal(fake?.trusted, false, 'the spoofed address is listed, but not as trusted');
      const text = await cli(['nearby', '--timeout', '1500', '--home', home, ...discovery]);
      assert.match(text.stdout, /127\.0\.0\.1:9 +claims the ID of a peer you know, but could not prove it/);
    } finally {
      clearInterval(spoof);
      liar.close();
      await stopServe(announcer.proc);
    }
  });

  it('nearby probes at most four addresses per claimed ID, within one deadline: announcements cannot hold it up or aim it (found by the outside review)', async () => {
    const port = String(48_000 + Math.floor(Math.random() * 1000));
    const discovery = ['--interface', '127.0.0.1', '--discovery-port', port];
    const home = tempDir();
    // Make the sharer's ID known to this home without pairing: trust its certificate as one we read.
    const { TrustStore } = await import('../../src/core');
    await (await TrustStore.open(home)).addSharer({ id: listening.peerId, name: 'Sharer', addresses: [] });
    // Ten addresses that accept and never answer, each announced with the known ID.
    let tarpitConnections = 0;
    const tarpits = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const tarpit = net.createServer(() => undefined);
        tarpit.on('connection', () => tarpitConnections++);
        await new Promise<void>((r) => tarpit.listen(0, '127.0.0.1', () => r()));
        return tarpit;
      }),
    );
    const liar = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((r) => liar.bind(0, '127.0.0.1', () => r()));
    liar.setMulticastInterface('127.0.0.1');
    const flood = setInterval(() => {
      for (const t of tarpits) liar.send(JSON.stringify({ t: 'announce', v: 1, id: listening.peerId, name: 'Sharer', port: (t.address() as net.AddressInfo).port }), Number(port), '239.255.70.83');
    }, 200);
    try {
      const started = Date.now();
      const found = await cli(['nearby', '--json', '--timeout', '1500', '--home', home, ...discovery]);
      const took = Date.now() - started;
      assert.equal(found.code, 0, found.stderr);
      assert.ok(took < 20_000, `nearby took ${took} ms`);
      assert.ok(tarpitConnections <= 4, `${tarpitConnections} probes went to the announced address`);
      const listed = json(found).peers as { trusted: boolean }[];
      assert.equal(listed.length, 10, 'every announcement is listed');
      assert.ok(listed.every((p) => !p.trusted));
    } finally {
      clearInterval(flood);
      liar.close();
      for (const t of tarpits) t.close();
    }
  });

  it('serve --requests ask asks at the terminal, showing the verification code; "o" allows once', async () => {
    const command = `${process.execPath} ${CLI} serve ${ws} --json --home ${tempDir()} --requests ask`;
    // `script` gives the server a terminal, as a person running it would have.
    const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    try {
      const until = async (text: string) => {
        const deadline = Date.now() + 15_000;
        while (!output.includes(text)) {
          if (Date.now() > deadline) throw new Error(`no "${text}" in: ${output}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      await until('"listening"');
      const line = output.split(/\r?\n/).find((l) => l.includes('"listening"'))!;
      const invite = parseInvite(JSON.parse(line.slice(line.indexOf('{'))).invite);
      const asker = await makePeer();
      let code = '';
      const connecting = connectToPeer({ ...asker, addresses: invite.addresses, expectedPeerId: invite.peerId, name: 'Terminal tester', requestAccess: true, onVerificationCode: (c) => (code = c) });
      await until('Allow once');
      await new Promise((r) => setTimeout(r, 400)); // a person reads the question first; quicker input counts as type-ahead
      assert.match(output, new RegExp(`Verification code +${code}`), 'the terminal shows the code the asker sees');
      assert.match(output, /Calls itself +"Terminal tester"/, 'the name the peer chose is quoted apart');
      child.stdin!.write('o\r');
      const conn = await connecting;
      assert.equal(conn.welcome.paired, false);
      assert.equal((await conn.list('')).length, 1);
      conn.close();
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('serve --requests ask refuses to start without a terminal', async () => {
    const run = await cli(['serve', ws, '--home', tempDir(), '--requests', 'ask']);
    assert.equal(run.code, 2);
  });

  it('exits with documented codes on bad input', async () => {
    assert.equal((await cli(['frobnicate'])).code, 2);
    assert.equal((await cli(['ls'])).code, 2);
    assert.equal((await cli(['ls', 'peershare://invite?id=nope', '--home', clientHome])).code, 2);
    assert.equal((await cli(['ls', 'nobody-we-know', '--home', clientHome])).code, 2);
    const missing = await cli(['get', listening.invite, 'ws/nope.txt', tempDir(), '--json', '--home', clientHome]);
    assert.equal(missing.code, 4);
    assert.equal((json(missing).error as { code: string }).code, 'NOT_FOUND');
    const traversal = await cli(['get', listening.invite, 'ws/../../etc/passwd', tempDir(), '--home', clientHome]);
    assert.equal(traversal.code, 4);
    const stranger = await cli(['ls', `127.0.0.1:${listening.port}`, '--home', tempDir()]);
    assert.equal(stranger.code, 4, 'an address alone does not make a stranger trusted');
    assert.match(stranger.stderr, /PEER_UNTRUSTED/);
    const closed = await cli(['ls', '127.0.0.1:1', '--home', clientHome]);
    assert.equal(closed.code, 3, 'nothing listens there');
  });

  it('serves nothing to curl, a client nobody here wrote, without a trusted certificate', async () => {
    const curl = spawnSync('curl', ['-sk', '--max-time', '5', `https://127.0.0.1:${listening.port}/ws/secret.txt`], { encoding: 'latin1' });
    assert.ok(curl.error === undefined, 'curl is installed (scripts/ensure-test-deps.sh)');
    assert.notEqual(curl.status, 0);
    assert.doesNotMatch(curl.stdout + curl.stderr, /TOP-SECRET/);
  });

  it('serves nothing to openssl s_client without a trusted certificate: one refusal, then the connection closes', async () => {
    const hello = Buffer.from('{"type":"hello","versions":[1],"name":"openssl"}');
    const frame = Buffer.concat([Buffer.from([1, 0, 0, 0, hello.length]), hello]);
    const read = Buffer.from('{"type":"read","path":"ws/secret.txt","offset":0}');
    const readFrame = Buffer.concat([Buffer.from([1, 0, 0, 0, read.length]), read]);
    const ssl = spawnSync('openssl', ['s_client', '-connect', `127.0.0.1:${listening.port}`, '-quiet', '-tls1_3'], {
      input: Buffer.concat([frame, readFrame]),
      timeout: 10_000,
    });
    assert.ok(ssl.error === undefined, 'openssl is installed (scripts/ensure-test-deps.sh)');
    const output = ssl.stdout.toString('latin1');
    assert.match(output, /PEER_UNTRUSTED/);
    assert.doesNotMatch(output, /TOP-SECRET/);
  });

  it('a revoke takes effect in a running serve at once, and no pairing writes the revoked peer back', async () => {
    const home = tempDir();
    const first = await startServe([ws, '--home', home, '--invite-uses', '5']);
    const second = await startServe([ws, '--home', home, '--invite-uses', '5']);
    try {
      const revoked = tempDir();
      const kept = tempDir();
      const late = tempDir();
      assert.equal((await cli(['ls', first.listening.invite, '--home', revoked])).code, 0);
      // Two serves with one home: each one's pairing survives the other's.
      assert.equal((await cli(['ls', second.listening.invite, '--home', kept])).code, 0);
      const revokedId = json(await cli(['id', '--json', '--home', revoked])).peerId as string;
      const keptId = json(await cli(['id', '--json', '--home', kept])).peerId as string;
      const readers = async () => ((json(await cli(['trust', 'ls', '--json', '--home', home])).peers as { id: string; mayReadUs: boolean }[]).filter((p) => p.mayReadUs).map((p) => p.id).sort());
      assert.deepEqual(await readers(), [revokedId, keptId].sort());
      assert.equal((await cli(['trust', 'rm', revokedId, '--home', home])).code, 0);
      const refused = await cli(['ls', first.listening.peerId, '--home', revoked]);
      assert.equal(refused.code, 4, refused.stderr);
      assert.match(refused.stderr, /PEER_UNTRUSTED/);
      // The running serve pairs someone else next: the revoked peer is not written back from memory.
      assert.equal((await cli(['ls', first.listening.invite, '--home', late])).code, 0);
      const lateId = json(await cli(['id', '--json', '--home', late])).peerId as string;
      assert.deepEqual(await readers(), [keptId, lateId].sort());
      assert.equal((await cli(['ls', first.listening.peerId, '--home', revoked])).code, 4, 'still refused after the next pairing');
    } finally {
      await stopServe(first.proc);
      await stopServe(second.proc);
    }
  });

  it('using an invite never lets the inviter read the user’s own share', async () => {
    const victimHome = tempDir();
    const inviter = await startServe([ws, '--home', tempDir()]);
    const victimShare = path.join(tempDir(), 'victim');
    await fs.mkdir(victimShare);
    await fs.writeFile(path.join(victimShare, 'private.txt'), 'VICTIM-PRIVATE');
    try {
      assert.equal((await cli(['ls', inviter.listening.invite, '--home', victimHome])).code, 0);
      const victim = await startServe([victimShare, '--home', victimHome]);
      try {
        const inviterHome = (inviter.args[inviter.args.indexOf('--home') + 1]);
        const attempt = await cli(['ls', `127.0.0.1:${victim.listening.port}`, 'victim', '--home', inviterHome]);
        assert.equal(attempt.code, 4, attempt.stderr);
        const grab = await cli(['get', victim.listening.peerId, 'victim/private.txt', tempDir(), '--home', inviterHome]);
        assert.notEqual(grab.code, 0);
        assert.doesNotMatch(grab.stdout + grab.stderr, /VICTIM-PRIVATE/);
      } finally {
        await stopServe(victim.proc);
      }
    } finally {
      await stopServe(inviter.proc);
    }
  });

  it('refuses a home folder others can write to, and a trust file others can write to (UNSAFE_HOME, exit 4)', async () => {
    const open = tempDir();
    assert.equal((await cli(['id', '--home', open])).code, 0);
    await fs.chmod(open, 0o777);
    const loose = await cli(['id', '--json', '--home', open]);
    assert.equal(loose.code, 4, loose.stderr);
    assert.equal((json(loose).error as { code: string }).code, 'UNSAFE_HOME');
    assert.match(loose.stderr, /chmod go-w/);
    await fs.chmod(open, 0o700);
    await fs.writeFile(path.join(open, 'trusted-peers.json'), '{"version":2,"peers":[]}', { mode: 0o666 });
    await fs.chmod(path.join(open, 'trusted-peers.json'), 0o666);
    const planted = await cli(['ls', listening.peerId, '--home', open]);
    assert.equal(planted.code, 4, planted.stderr);
    assert.match(planted.stderr, /trusted-peers\.json.*others can write/);
    const inShared = path.join(tempDir(), 'shared');
    await fs.mkdir(inShared);
    await fs.chmod(inShared, 0o777); // a world-writable folder without the sticky bit
    const below = await cli(['id', '--home', path.join(inShared, 'home')]);
    assert.equal(below.code, 4, below.stderr);
  });

  it('type-ahead never answers a question: "d" then "a" typed at once denies one request, and the next is asked afresh', async () => {
    const home = tempDir();
    const command = `${process.execPath} ${CLI} serve ${ws} --json --home ${home} --requests ask`;
    const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    const until = async (text: string, from = 0) => {
      const deadline = Date.now() + 15_000;
      while (!output.slice(from).includes(text)) {
        if (Date.now() > deadline) throw new Error(`no "${text}" in: ${output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    try {
      await until('"listening"');
      const line = output.split(/\r?\n/).find((l) => l.includes('"listening"'))!;
      const invite = parseInvite(JSON.parse(line.slice(line.indexOf('{'))).invite);
      const ask = async (name: string) => {
        const asker = await makePeer();
        return { asker, result: connectToPeer({ ...asker, addresses: invite.addresses, expectedPeerId: invite.peerId, name, requestAccess: true }).then(
          (c) => (c.close(), 'allowed'),
          (e: { code?: string }) => e.code,
        ) };
      };
      // Typed while no question is open: dropped.
      child.stdin!.write('a\r');
      await until('ignored: no question is open');
      const one = await ask('First');
      await until('Calls itself       "First"');
      await new Promise((r) => setTimeout(r, 400));
      const mark = output.length;
      child.stdin!.write('d\ra\r');
      assert.equal(await one.result, 'ACCESS_DENIED');
      const two = await ask('Second');
      await until('Calls itself       "Second"', mark);
      await new Promise((r) => setTimeout(r, 400));
      child.stdin!.write('d\r');
      assert.equal(await two.result, 'ACCESS_DENIED', 'the "a" typed for the first question did not allow the second');
      const trusted = json(await cli(['trust', 'ls', '--json', '--home', home])).peers as unknown[];
      assert.deepEqual(trusted, [], 'nobody became trusted');

      // Found by the outside review: "a" typed for a question that is then withdrawn, and Enter
      // pressed once the next (an attacker's) has replaced it, must not answer the new one.
      const friend = await makePeer();
      const withdraw = new AbortController();
      const friendAsks = connectToPeer({ ...friend, addresses: invite.addresses, expectedPeerId: invite.peerId, name: 'Friend', requestAccess: true, signal: withdraw.signal }).catch(() => undefined);
      const markFriend = output.length;
      await until('Calls itself       "Friend"', markFriend);
      await new Promise((r) => setTimeout(r, 400));
      child.stdin!.write('a');
      await new Promise((r) => setTimeout(r, 200));
      withdraw.abort();
      await friendAsks;
      const markAttacker = output.length;
      const attacker = await ask('Attacker');
      await until('Calls itself       "Attacker"', markAttacker);
      await new Promise((r) => setTimeout(r, 400));
      child.stdin!.write('\r');
      await new Promise((r) => setTimeout(r, 300));
      child.stdin!.write('d\r');
      assert.equal(await attacker.result, 'ACCESS_DENIED', 'the "a" typed for the withdrawn question did not answer the next');
      const after = json(await cli(['trust', 'ls', '--json', '--home', home])).peers as unknown[];
      assert.deepEqual(after, [], 'still nobody trusted');

      // Found by the second outside review: "n" typed for a question that is then withdrawn, and
      // "o" + Enter once the next has appeared, must not answer it with "o" (allow once).
      const second = await makePeer();
      const withdrawSecond = new AbortController();
      const secondAsks = connectToPeer({ ...second, addresses: invite.addresses, expectedPeerId: invite.peerId, name: 'Friend2', requestAccess: true, signal: withdrawSecond.signal }).catch(() => undefined);
      const markSecond = output.length;
      await until('Calls itself       "Friend2"', markSecond);
      await new Promise((r) => setTimeout(r, 400));
      child.stdin!.write('n');
      await new Promise((r) => setTimeout(r, 200));
      withdrawSecond.abort();
      await secondAsks;
      const markThird = output.length;
      const third = await ask('Attacker2');
      await until('Calls itself       "Attacker2"', markThird);
      await new Promise((r) => setTimeout(r, 400));
      child.stdin!.write('o\r');
      await until('typed before this question appeared', markThird);
      child.stdin!.write('d\r');
      assert.equal(await third.result, 'ACCESS_DENIED', 'the rest of a word begun for the withdrawn question answered nothing');
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('says what went wrong in words, with what to do next', async () => {
    const typo = await cli(['srve']);
    assert.equal(typo.code, 2);
    assert.match(typo.stderr, /Unknown command "srve"\. Did you mean "serve"\?/);
    const option = await cli(['ls', 'x', '--prot', '3']);
    assert.equal(option.code, 2);
    assert.match(option.stderr, /Unknown option --prot\. Did you mean --port\?/);
    assert.doesNotMatch(option.stderr, /positional argument/, 'not Node’s parser text');
    const cut = await cli(['ls', listening.invite.slice(0, listening.invite.indexOf('&')), '--home', clientHome]);
    assert.equal(cut.code, 2);
    assert.match(cut.stderr, /Quote the invite/);
    const refused = await cli(['ls', '127.0.0.1:1', '--home', tempDir()]);
    assert.doesNotMatch(refused.stderr, /ECONNREFUSED/);
    assert.match(refused.stderr, /nothing is listening there/);
    const missing = await cli(['get', listening.peerId, 'ws/no-such.txt', tempDir(), '--home', clientHome]);
    assert.match(missing.stderr, /no "ws\/no-such\.txt"/);
    const dest = tempDir();
    await fs.writeFile(path.join(dest, 'hello.txt'), 'mine');
    const exists = await cli(['get', listening.peerId, 'ws/hello.txt', dest, '--home', clientHome]);
    assert.equal(exists.code, 6);
    assert.match(exists.stderr, /--overwrite.*--keep-both/);
  });

  it('get into "file/" where a file is in the way says so (found by the second outside review)', async () => {
    const dest = tempDir();
    await fs.writeFile(path.join(dest, 'file'), 'mine');
    const run = await cli(['get', listening.peerId, 'ws/hello.txt', path.join(dest, 'file') + '/', '--home', clientHome]);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /Cannot make the folder .*file\/ to download into \(a file is in the way\)/);
    assert.equal(await fs.readFile(path.join(dest, 'file'), 'utf8'), 'mine');
  });

  it('serve --requests ask that cannot start exits with its code and leaves the terminal alone (found by the second outside review)', async () => {
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    const port = (taken.address() as net.AddressInfo).port;
    try {
      const command = `${process.execPath} ${CLI} serve ${ws} --home ${tempDir()} --requests ask --port ${port}; echo "exit=$?"`;
      const run = spawnSync('script', ['-qfec', command, '/dev/null'], { encoding: 'utf8', timeout: 20_000 });
      assert.match(run.stdout, /ADDRESS_IN_USE/);
      assert.match(run.stdout, /exit=3/, `it exited by itself with 3:\n${run.stdout}`);
    } finally {
      taken.close();
    }
  });

  it('get into "dir/" makes the folder and saves inside it, as cp and rsync read a trailing slash', async () => {
    const dest = path.join(tempDir(), 'new-folder') + '/';
    const run = await cli(['get', listening.peerId, 'ws/hello.txt', dest, '--home', clientHome]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(await fs.readFile(path.join(dest, 'hello.txt'), 'utf8'), 'hello\n');
  });

  it('serve on 127.0.0.1 says only this machine can connect, refuses to announce to the network, and logs who took what', async () => {
    const local = await startServe([ws, '--home', tempDir(), '--name', 'Logger']);
    const plain = spawn(process.execPath, [CLI, 'serve', ws, '--home', tempDir()], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let text = '';
      plain.stdout!.on('data', (d: Buffer) => (text += d.toString()));
      const deadline = Date.now() + 15_000;
      while (!text.includes('Ctrl+C') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.match(text, /Only this machine can connect \(listening on 127\.0\.0\.1\)\. To share on your network, add --host 0\.0\.0\.0/);
      const announce = await cli(['serve', ws, '--home', tempDir(), '--announce']);
      assert.equal(announce.code, 2);
      assert.match(announce.stderr, /--announce.*--host 0\.0\.0\.0/s);
      const taker = tempDir();
      assert.equal((await cli(['get', local.listening.invite, 'ws/hello.txt', tempDir(), '--home', taker, '--name', 'Ann'])).code, 0);
      await new Promise((r) => setTimeout(r, 200));
      const log = local.stderr();
      assert.match(log, /Paired with Ann \([A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}\) from 127\.0\.0\.1/);
      assert.match(log, /Ann \([A-Z2-7-]{14}\) took ws\/hello\.txt \(6 B\)/);
      assert.doesNotMatch(log, /[A-Z2-7]{4}(-[A-Z2-7]{4}){12}/, 'no full 52-character IDs in the log');
      await stopServe(local.proc);
      assert.match(local.stderr(), /Stopped sharing\./);
    } finally {
      plain.kill('SIGTERM');
      await stopServe(local.proc);
    }
  });

  it('serve without --port listens on 47474, or, only when something holds 47474, on another port and says so', async () => {
    // The real default, not this file's: the answer depends on the machine, and both are right.
    const run = await startServe([ws, '--home', tempDir()], { PEERSHARE_DEFAULT_PORT: '' });
    try {
      const { port, defaultPortInUse } = run.listening as Serving['listening'] & { defaultPortInUse?: number };
      if (port === 47474) assert.equal(defaultPortInUse, undefined);
      else assert.equal(defaultPortInUse, 47474, `listening on ${port}: only a taken 47474 may move it`);
    } finally {
      await stopServe(run.proc);
    }
  });

  it('serve: the default port taken means any free port and one line saying so (a field with --json); --port N taken is ADDRESS_IN_USE, exit 3', async () => {
    const held = await holdPort();
    const env = { PEERSHARE_DEFAULT_PORT: String(held.port) };
    const asJson = await startServe([ws, '--home', tempDir()], env);
    const plain = spawn(process.execPath, [CLI, 'serve', ws, '--home', tempDir()], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    try {
      const listening = asJson.listening as Serving['listening'] & { defaultPortInUse?: number };
      assert.equal(listening.defaultPortInUse, held.port);
      assert.notEqual(listening.port, held.port);
      assert.deepEqual(listening.addresses, [`127.0.0.1:${listening.port}`], 'the invite and the addresses carry the port it got');
      let text = '';
      plain.stdout!.on('data', (d: Buffer) => (text += d.toString()));
      const deadline = Date.now() + 15_000;
      while (!text.includes('Ctrl+C') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const got = /^Listening: 127\.0\.0\.1:(\d+)$/m.exec(text)?.[1];
      assert.ok(got && Number(got) !== held.port, text);
      assert.match(text, new RegExp(`^Port ${held.port} is in use; listening on ${got} instead\\. Peers that paired with you find you only with a new invite \\(or when you announce yourself: --announce\\)\\.$`, 'm'));
      const explicit = await cli(['serve', ws, '--home', tempDir(), '--port', String(held.port)]);
      assert.equal(explicit.code, 3);
      assert.match(explicit.stderr, new RegExp(`^peershare: Port ${held.port} on 127\\.0\\.0\\.1 is already in use, by another program or another PeerShare\\. Stop that one, or choose another port\\. \\[ADDRESS_IN_USE\\]\\nChoose another port with --port N, or --port 0 for any free port\\.\\n$`, 'm'));
      const explicitJson = await cli(['serve', ws, '--home', tempDir(), '--port', String(held.port), '--json']);
      assert.equal(explicitJson.code, 3);
      assert.equal((json(explicitJson).error as { code: string }).code, 'ADDRESS_IN_USE');
    } finally {
      plain.kill('SIGTERM');
      await stopServe(asJson.proc);
      await held.close();
    }
  });

  it('a paired peer is found again after serve restarts: at the default port, and by its announcements when it had to move', async () => {
    const sharerHome = tempDir();
    const home = tempDir();
    const defaultPort = await freePort();
    const env = { PEERSHARE_DEFAULT_PORT: String(defaultPort) };
    const discovery = ['--interface', '127.0.0.1', '--discovery-port', String(49_000 + Math.floor(Math.random() * 1000))];
    const first = await startServe([ws, '--home', sharerHome, '--name', 'Mover'], env);
    let held: Awaited<ReturnType<typeof holdPort>> | undefined;
    let third: Serving | undefined;
    try {
      assert.equal(first.listening.port, defaultPort);
      assert.equal((await cli(['ls', first.listening.invite, '--home', home], env)).code, 0);
      const id = first.listening.peerId;
      await stopServe(first.proc);

      // Restarted: the same port, so the remembered address works as it is.
      const second = await startServe([ws, '--home', sharerHome, '--name', 'Mover'], env);
      try {
        assert.equal(second.listening.port, defaultPort);
        const again = await cli(['ls', id, '--home', home], env);
        assert.equal(again.code, 0, again.stderr);
        assert.match(again.stdout, /^d .* ws\/$/m);
      } finally {
        await stopServe(second.proc);
      }

      // Restarted while something else holds the default port: it moves, and announces where.
      held = await holdPort(defaultPort);
      third = await startServe([ws, '--home', sharerHome, '--name', 'Mover', '--announce', ...discovery], env);
      const moved = third.listening.port;
      assert.equal((third.listening as Serving['listening'] & { defaultPortInUse?: number }).defaultPortInUse, defaultPort);
      const unheard = await cli(['ls', id, '--home', home, '--no-discovery'], env);
      assert.equal(unheard.code, 3, unheard.stderr);
      assert.match(unheard.stderr, new RegExp(`^peershare: Mover did not answer at 127\\.0\\.0\\.1:${defaultPort}\\. Is it sharing\\? If it is, it may have a new address: ask for a new invite\\. \\[CONNECTION_(FAILED|CLOSED)\\]$`, 'm'));
      const found = await cli(['ls', id, 'ws', '--home', home, ...discovery], env);
      assert.equal(found.code, 0, found.stderr);
      assert.match(found.stdout, /hello\.txt$/m);
      assert.equal(found.stderr, `Found Mover at 127.0.0.1:${moved}, a new address; remembered for next time.\n`);
      const peers = json(await cli(['trust', 'ls', '--json', '--home', home])).peers as { id: string; addresses: string[] }[];
      assert.deepEqual(peers.find((p) => p.id === id)?.addresses, [`127.0.0.1:${moved}`, `127.0.0.1:${defaultPort}`], 'the new address first');
    } finally {
      await stopServe(first.proc);
      if (third) await stopServe(third.proc);
      await held?.close();
    }
  });

  it('ls by peer ID never accepts another certificate announcing that ID: CONNECTION_FAILED, and the trust file unchanged', async () => {
    const home = tempDir();
    const env = { PEERSHARE_DEFAULT_PORT: String(await freePort()) };
    const discoveryPort = 49_000 + Math.floor(Math.random() * 1000);
    const sharer = await startServe([ws, '--home', tempDir(), '--name', 'Real'], env);
    assert.equal((await cli(['ls', sharer.listening.invite, '--home', home], env)).code, 0);
    await stopServe(sharer.proc);
    const trustFile = path.join(home, 'trusted-peers.json');
    const before = await fs.readFile(trustFile);
    // An impostor: its own certificate, serving anyone, and announcements that claim the real ID.
    const impostor = await makePeer();
    const { TLS_OPTIONS } = await import('../../src/core/tls-options');
    const impostorServer = tls.createServer({ ...TLS_OPTIONS, key: impostor.identity.keyPem, cert: impostor.identity.certPem, requestCert: true, rejectUnauthorized: false }, (socket) => socket.destroy());
    let tried = 0;
    impostorServer.on('connection', () => tried++);
    await new Promise<void>((r) => impostorServer.listen(0, '127.0.0.1', () => r()));
    const claiming = new Discovery({ selfId: sharer.listening.peerId, interfaces: ['127.0.0.1'], port: discoveryPort });
    await claiming.start();
    claiming.announce({ name: 'Real', port: (impostorServer.address() as net.AddressInfo).port });
    try {
      const run = await cli(['ls', sharer.listening.peerId, '--home', home, '--interface', '127.0.0.1', '--discovery-port', String(discoveryPort)], env);
      assert.equal(run.code, 3, run.stderr);
      assert.match(run.stderr, /Real did not answer at .*, nor among the peers announcing themselves on your network\. Is it sharing\? .*\[CONNECTION_FAILED\]/);
      assert.equal(tried, 1, 'the announced address was tried, and its certificate refused before anything was sent');
      assert.deepEqual(await fs.readFile(trustFile), before, 'the trust file is byte for byte what it was');
    } finally {
      await claiming.stop();
      await new Promise<void>((r) => impostorServer.close(() => r()));
    }
  });

  it('stops cleanly on SIGTERM', async () => {
    serveProc.kill('SIGTERM');
    const code = await new Promise((r) => serveProc.once('exit', r));
    assert.equal(code, 0);
  });
});
