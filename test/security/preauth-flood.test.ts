import assert from 'node:assert/strict';
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { webcrypto } from 'node:crypto';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { after, describe, it } from 'node:test';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { DEFAULT_LIMITS, connectToPeer, dialTls, type Identity, type Limits } from '../../src/core';
import { TLS_OPTIONS } from '../../src/core/tls-options';
import { connectWithInvite, makePeer, startSharer, tempDir, writeRandomFile, type TestPeer } from '../helpers';
import { rawClient, waitFor, helloV2 } from '../hostile';

/**
 * Floods before authentication (issue 16, findings 6 and 7), against a real sharer over TLS on
 * loopback. Three processes, as on a network: the sharer (load-sharer.ts, default limits), the
 * attacker (this file, started with PREAUTH_FLOOD) and the trusted peer (the test). Attackers
 * connect from other loopback addresses (127.0.0.2 and up) and keep their flood going the whole
 * time, re-opening whatever is closed; the trusted peer connects from 127.0.0.1 with a new
 * connection each time and lists the share. Every try must succeed, and the sharer must do no
 * more TLS work than its rate allows.
 */

/**
 * Each try of the trusted peer must be served within this. The requirement is a second, and the
 * measured times (tens of milliseconds, at most about 350 ms) are printed and kept in
 * docs/security.md; the test allows three times the requirement so a loaded CI machine does not
 * fail it for speed. A lock-out, the failure this catches, is every try timing out (10 s).
 */
const SERVED_WITHIN_MS = 3000;
const TRIES = 15;
const RATE = DEFAULT_LIMITS.handshakesPerSecondPerSource;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const loopback = (i: number): string => `127.0.0.${i}`;
const sources = (count: number): string[] => Array.from({ length: count }, (_, i) => loopback(i + 2));
/** Connects from this local address (a net option that tls accepts, though its types omit it). */
const from = (localAddress: string): tls.ConnectionOptions => ({ localAddress }) as tls.ConnectionOptions;

// ---- the attacker's process

/** One kind of flood: `slots` connections kept going from `sources`, each re-opened `reopenMs` after it closes. */
type FloodSpec = { address: string; sources: string[]; slots: number; reopenMs: number } & (
  | { kind: 'stranger handshakes'; keyPem: string; certPem: string; hangUpAfterMs?: number }
  | { kind: 'tcp' }
  | { kind: 'requests to connect'; keyPem: string; certPem: string }
  | { kind: 'replayed ClientHello'; clientHello: string }
);

interface FloodCounts {
  attempts: number;
  /** TLS handshakes completed (the client's view), or TCP connections made for `tcp`. */
  connected: number;
  /** First answers by code (requests to connect), or any answer at all (replayed ClientHello). */
  answers: Record<string, number>;
}

function runFlood(spec: FloodSpec): void {
  const counts: FloodCounts = { attempts: 0, connected: 0, answers: {} };
  const answered = (code: string): void => void (counts.answers[code] = (counts.answers[code] ?? 0) + 1);
  const [host, portText] = spec.address.split(':');
  const port = Number(portText);
  let on = true;
  const sockets = new Set<net.Socket>();
  const untilClosed = (socket: net.Socket): Promise<void> => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    // One that connected after the stop goes at once.
    if (!on) socket.destroy();
    return new Promise((resolve) => socket.once('close', () => (sockets.delete(socket), resolve())));
  };
  const openOne = async (source: string): Promise<void> => {
    counts.attempts++;
    switch (spec.kind) {
      case 'tcp': {
        const socket = net.connect({ host, port, localAddress: source }, () => counts.connected++);
        return untilClosed(socket);
      }
      case 'stranger handshakes': {
        const socket = tls.connect({ ...TLS_OPTIONS, ...from(source), host, port, key: spec.keyPem, cert: spec.certPem, rejectUnauthorized: false }, () => {
          counts.connected++;
          if (spec.hangUpAfterMs !== undefined) setTimeout(() => socket.destroy(), spec.hangUpAfterMs);
        });
        return untilClosed(socket);
      }
      case 'requests to connect': {
        const client = await rawClient(spec.address, undefined, { ...TLS_OPTIONS, ...from(source), key: spec.keyPem, cert: spec.certPem });
        counts.connected++;
        const closed = untilClosed(client.socket);
        client.send(helloV2('Nearby Ned', { request: true }));
        await waitFor(() => client.messages.length > 0 || client.socket.destroyed, 120_000).catch(() => undefined);
        answered(String(client.messages[0]?.code ?? 'closed'));
        return closed;
      }
      case 'replayed ClientHello': {
        // No crypto on the attacker's side: the same captured bytes every time.
        const socket = net.connect({ host, port, localAddress: source }, () => {
          counts.connected++;
          socket.write(Buffer.from(spec.clientHello, 'base64'));
        });
        socket.once('data', () => (answered('answered'), socket.destroy()));
        setTimeout(() => socket.destroy(), 2000).unref();
        return untilClosed(socket);
      }
    }
  };
  const loops = Array.from({ length: spec.slots }, async (_, slot) => {
    while (on) {
      await openOne(spec.sources[slot % spec.sources.length]).catch(() => undefined);
      await sleep(spec.reopenMs);
    }
  });
  const report = setInterval(() => process.send!({ kind: 'counts', counts }), 100);
  process.on('message', (m) => {
    if (m !== 'stop') return;
    on = false;
    for (const s of sockets) s.destroy();
    void Promise.all(loops).then(() => {
      clearInterval(report);
      process.send!({ kind: 'stopped', counts }, () => process.exit(0));
    });
  });
}

// ---- the test's side

interface Flood {
  counts(): FloodCounts;
  /** Stops the flood (every attacking socket closed); resolves with the final counts and how long it ran. */
  stop(): Promise<FloodCounts & { seconds: number }>;
}

const children: ChildProcess[] = [];

/** Starts a flood in its own process and waits until it has made `warmUp` connections. */
async function startFlood(spec: FloodSpec, warmUp: number): Promise<Flood> {
  const env: NodeJS.ProcessEnv = { ...process.env, PREAUTH_FLOOD: JSON.stringify(spec) };
  delete env.NODE_TEST_CONTEXT;
  const child = fork(__filename, [], { env, execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(child);
  const started = performance.now();
  let last: FloodCounts = { attempts: 0, connected: 0, answers: {} };
  let stopped: ((c: FloodCounts) => void) | undefined;
  child.on('message', (m: { kind: string; counts: FloodCounts }) => {
    last = m.counts;
    if (m.kind === 'stopped') stopped?.(m.counts);
  });
  await waitFor(() => last.connected >= warmUp, 20_000);
  let stopping: Promise<FloodCounts & { seconds: number }> | undefined;
  return {
    counts: () => last,
    stop: () =>
      (stopping ??= (async () => {
        const final = new Promise<FloodCounts>((resolve) => (stopped = resolve));
        child.send('stop');
        const counts = await final;
        return { ...counts, seconds: (performance.now() - started) / 1000 };
      })()),
  };
}

interface Sample {
  kind: string;
  cpuMs: number;
  peers: number;
  accepted: number;
  stats: { handshakesRateLimited?: number; unauthenticatedEvicted?: number; connectionsAccepted: number };
  prompts: { open: number; most: number; total: number };
  readers: number;
}

interface FloodSharer {
  address: string;
  peerId: string;
  trusted: TestPeer;
  latest(): Sample;
  stop(): Promise<void>;
}

/** A sharer in its own process (load-sharer.ts), with one peer paired by invite from 127.0.0.1. */
async function startFloodSharer(options: { ask?: 'never' } = {}, limits: Partial<Limits> = {}): Promise<FloodSharer> {
  const ws = path.join(tempDir(), 'ws');
  for (let i = 0; i < 5; i++) await writeRandomFile(path.join(ws, `f${i}.txt`), 100);
  const child = fork(path.join(__dirname, 'load-sharer.ts'), [ws, JSON.stringify(limits), JSON.stringify(options)], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.push(child);
  let last: Sample | undefined;
  const ready = await new Promise<{ address: string; invite: string; peerId: string }>((resolve, reject) => {
    child.on('message', (m: Sample & { address: string; invite: string; peerId: string }) => {
      if (m.kind === 'ready') resolve(m);
      else if (m.kind === 'sample') last = m;
    });
    child.once('exit', (code) => reject(new Error(`the sharer exited with ${code}`)));
  });
  const { conn, client } = await connectWithInvite(ready.invite);
  conn.close();
  await waitFor(() => last !== undefined);
  return {
    address: ready.address,
    peerId: ready.peerId,
    trusted: client,
    latest: () => last!,
    stop: async () => {
      if (child.exitCode !== null) return;
      child.send('stop');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

/** One try of the trusted peer: a new connection from 127.0.0.1, a listing, closed. Resolves with its time. */
async function trustedTry(sharer: FloodSharer): Promise<number> {
  const started = performance.now();
  const conn = await connectToPeer({ identity: sharer.trusted.identity, trust: sharer.trusted.trust, addresses: [sharer.address], expectedPeerId: sharer.peerId, name: 'trusted' });
  try {
    assert.deepEqual((await conn.list('ws')).map((e) => e.name).sort(), ['f0.txt', 'f1.txt', 'f2.txt', 'f3.txt', 'f4.txt']);
  } finally {
    conn.close();
  }
  return performance.now() - started;
}

interface Tries {
  times: number[];
  failures: string[];
  /** The sharer's CPU meanwhile, as a share of one core. */
  cpu: string;
}

/** `tries` of `once`, 200 ms apart; failures are kept, not thrown (the flood is stopped before asserting). */
async function tryRepeatedly(sharer: FloodSharer, tries: number, once: () => Promise<number>): Promise<Tries> {
  const times: number[] = [];
  const failures: string[] = [];
  const cpuBefore = sharer.latest().cpuMs;
  const started = performance.now();
  for (let i = 0; i < tries; i++) {
    try {
      times.push(await once());
    } catch (err) {
      failures.push(`${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
    }
    await sleep(200);
  }
  const cpu = `sharer CPU ${Math.round(((sharer.latest().cpuMs - cpuBefore) / (performance.now() - started)) * 100)}%`;
  return { times, failures, cpu };
}

function summary(tries: Tries): string {
  const sorted = [...tries.times].sort((a, b) => a - b);
  const times = sorted.length === 0 ? 'none' : `median ${Math.round(sorted[Math.floor(sorted.length / 2)])} ms, max ${Math.round(sorted[sorted.length - 1])} ms`;
  return `${tries.times.length}/${tries.times.length + tries.failures.length} served, ${times}, ${tries.cpu}`;
}

function assertServed(what: string, tries: Tries): void {
  assert.deepEqual(tries.failures, [], `${what}: every try of the trusted peer succeeded`);
  for (const t of tries.times) assert.ok(t < SERVED_WITHIN_MS, `${what}: served in ${Math.round(t)} ms (${summary(tries)})`);
}

/** At most what the handshake rate lets one source start in `seconds` (its burst, then the rate), with slack. */
const rateAllows = (seconds: number, sourceCount = 1): number => sourceCount * (2 * RATE + RATE * seconds) + 5;

if (process.env.PREAUTH_FLOOD) {
  runFlood(JSON.parse(process.env.PREAUTH_FLOOD) as FloodSpec);
} else {
  after(() => {
    for (const child of children) child.kill();
  });

  describe('a trusted peer is served under pre-authentication floods (finding 6)', () => {
    it('80 completed TLS handshakes with a stranger’s certificate that never send hello, re-opened continuously from 8 addresses', async (t) => {
      const sharer = await startFloodSharer();
      t.after(() => sharer.stop());
      const stranger = (await makePeer()).identity;
      const flood = await startFlood({ kind: 'stranger handshakes', address: sharer.address, keyPem: stranger.keyPem, certPem: stranger.certPem, sources: sources(8), slots: 80, reopenMs: 20 }, 64);
      t.after(() => flood.stop());
      const tries = await tryRepeatedly(sharer, TRIES, () => trustedTry(sharer));
      const counts = await flood.stop();
      const { stats, readers } = sharer.latest();
      console.log(`# stranger handshakes, 80 kept open from 8 addresses (${counts.connected} completed, ${counts.attempts} tried): trusted peer ${summary(tries)}; sharer evicted ${stats.unauthenticatedEvicted}, rate-limited ${stats.handshakesRateLimited}`);
      assertServed('stranger handshakes', tries);
      assert.ok(counts.connected >= 64, `${counts.connected} stranger handshakes completed`);
      assert.equal(readers, 1, 'no stranger became a reader');
    });

    it('300 plain TCP sockets that never start TLS, re-opened continuously from 10 addresses', async (t) => {
      const sharer = await startFloodSharer();
      t.after(() => sharer.stop());
      const flood = await startFlood({ kind: 'tcp', address: sharer.address, sources: sources(10), slots: 300, reopenMs: 20 }, 300);
      t.after(() => flood.stop());
      const tries = await tryRepeatedly(sharer, TRIES, () => trustedTry(sharer));
      const counts = await flood.stop();
      const { stats } = sharer.latest();
      console.log(`# 300 TCP sockets kept open from 10 addresses (${counts.connected} opened in ${counts.seconds.toFixed(1)} s): trusted peer ${summary(tries)}; sharer evicted ${stats.unauthenticatedEvicted}, rate-limited ${stats.handshakesRateLimited}`);
      assertServed('plain TCP sockets', tries);
    });

    it('requests to connect that the sharer never answers, 80 at a time from 8 addresses: at most maxPendingApprovals prompts, the rest BUSY at once', async (t) => {
      const sharer = await startFloodSharer({ ask: 'never' });
      t.after(() => sharer.stop());
      const stranger = (await makePeer()).identity;
      const flood = await startFlood({ kind: 'requests to connect', address: sharer.address, keyPem: stranger.keyPem, certPem: stranger.certPem, sources: sources(8), slots: 80, reopenMs: 20 }, 80);
      t.after(() => flood.stop());
      const tries = await tryRepeatedly(sharer, TRIES, () => trustedTry(sharer));
      const counts = await flood.stop();
      const { prompts, readers } = sharer.latest();
      console.log(`# requests to connect, 80 at a time from 8 addresses (${counts.connected} made): trusted peer ${summary(tries)}; prompts at most ${prompts.most} at once (${prompts.total} in all); answers ${JSON.stringify(counts.answers)}`);
      assertServed('pending requests to connect', tries);
      assert.ok(prompts.most <= DEFAULT_LIMITS.maxPendingApprovals, `${prompts.most} prompts at once`);
      assert.ok((counts.answers.BUSY ?? 0) > 0, 'requests beyond the bound were told BUSY');
      assert.equal(readers, 1, 'no stranger became a reader');
    });

    it('the attacker shares the trusted peer’s address (127.0.0.1), handshaking with 80 sockets and hanging up after 200 ms: the open connection stays served, the flood is held to the handshake rate, a new connection gets in once it stops', async (t) => {
      const sharer = await startFloodSharer();
      t.after(() => sharer.stop());
      const stranger = (await makePeer()).identity;
      const established = await connectToPeer({ identity: sharer.trusted.identity, trust: sharer.trusted.trust, addresses: [sharer.address], expectedPeerId: sharer.peerId, name: 'trusted' });
      t.after(() => established.close());
      const acceptedBefore = sharer.latest().accepted;
      const flood = await startFlood({ kind: 'stranger handshakes', address: sharer.address, keyPem: stranger.keyPem, certPem: stranger.certPem, sources: [loopback(1)], slots: 80, reopenMs: 20, hangUpAfterMs: 200 }, 20);
      t.after(() => flood.stop());
      const served = await tryRepeatedly(sharer, TRIES, async () => {
        const started = performance.now();
        assert.equal((await established.list('ws')).length, 5);
        return performance.now() - started;
      });
      // New connections from the flooded address compete with the flood for that address's rate: reported, not asserted.
      const fresh = await tryRepeatedly(sharer, 5, () => trustedTry(sharer));
      const counts = await flood.stop();
      await sleep(300);
      const handshakes = sharer.latest().accepted - acceptedBefore;
      const stoppedAt = performance.now();
      let waitedMs = -1;
      while (waitedMs < 0 && performance.now() - stoppedAt < 5000) {
        await trustedTry(sharer).then(
          () => (waitedMs = performance.now() - stoppedAt),
          () => sleep(100),
        );
      }
      console.log(
        `# shared address, 80 stranger handshakes from 127.0.0.1 hung up after 200 ms and re-opened: open connection ${summary(served)}; new connections during the flood ${summary(fresh)}; ` +
          `sharer completed ${handshakes} handshakes in ${counts.seconds.toFixed(1)} s (${counts.attempts} tried); a new connection got in ${Math.round(waitedMs)} ms after the flood stopped`,
      );
      assertServed('shared address, open connection', served);
      assert.ok(handshakes <= rateAllows(counts.seconds), `${handshakes} handshakes from one address in ${counts.seconds.toFixed(1)} s; the rate allows ${Math.floor(rateAllows(counts.seconds))}`);
      assert.ok(waitedMs >= 0 && waitedMs < 5000, `a new connection got in ${Math.round(waitedMs)} ms after the flood stopped`);
    });
  });

  describe('handshake CPU amplification (finding 7)', () => {
    it('offers only X25519 and P-256: openssl s_client with ffdhe8192 or ffdhe2048 fails the handshake, with X25519 or P-256 it completes', async (t) => {
      const sharer = await startSharer([tempDir()]);
      t.after(() => sharer.server.close());
      for (const group of ['ffdhe8192', 'ffdhe2048']) {
        const { code, out } = await opensslWithGroup(sharer.address, group);
        assert.notEqual(code, 0, `${group}: ${out}`);
        assert.match(out, /handshake failure/, `${group}: ${out}`);
        assert.doesNotMatch(out, /CONNECTION ESTABLISHED/);
      }
      for (const [group, shown] of [['X25519', /Server Temp Key: X25519/], ['P-256', /Server Temp Key: ECDH, prime256v1/]] as const) {
        const { out } = await opensslWithGroup(sharer.address, group);
        assert.match(out, /CONNECTION ESTABLISHED/, `${group}: ${out}`);
        assert.match(out, shown, `${group}: ${out}`);
      }
    });

    it('refuses a certificate chain: two certificates PEER_UNTRUSTED; 100 (past maxHandshakeBytes) TOO_LARGE, and their source is charged a token per KiB, while others are served', async (t) => {
      const sharer = await startSharer([tempDir()], { limits: { maxHandshakeBytes: 8 * 1024 } });
      t.after(() => sharer.server.close());
      const { client, conn } = await connectWithInvite(sharer.invite);
      conn.close();
      const short = await chainOf(2);
      const two = await rawClient(sharer.address, undefined, { key: short.keyPem, cert: short.chainPem, ...from(loopback(2)) });
      two.send(helloV2('chain'));
      await two.closed;
      assert.deepEqual(two.messages.map((m) => [m.code, m.message]), [['PEER_UNTRUSTED', 'Present one self-signed certificate, not a chain.']]);

      const long = await chainOf(100);
      const hundred = await rawClient(sharer.address, undefined, { key: long.keyPem, cert: long.chainPem, ...from(loopback(3)) });
      await hundred.closed;
      assert.deepEqual(hundred.messages.map((m) => m.code), ['TOO_LARGE']);
      assert.equal(sharer.server.stats.oversizedHandshakes, 1);
      // About 30 KiB, so 30 tokens, more than the burst: its next handshake is closed before any TLS work.
      const limited = sharer.server.stats.handshakesRateLimited;
      await assert.rejects(rawClient(sharer.address, client.identity, from(loopback(3))));
      assert.equal(sharer.server.stats.handshakesRateLimited, limited + 1);
      const again = await connectToPeer({ ...client, addresses: [sharer.address], expectedPeerId: sharer.identity.peerId, name: 'c' });
      assert.equal((await again.list(sharer.share.roots[0].name)).length, 0);
      again.close();
      assert.equal(sharer.trust.list().length, 1, 'only the paired peer is trusted');
    });

    it('the dialer refuses a sharer that presents a certificate chain, before a byte of the protocol (found in review)', async (t) => {
      const { keyPem, chainPem } = await chainOf(2);
      let received = 0;
      const hostile = tls.createServer({ ...TLS_OPTIONS, key: keyPem, cert: chainPem, requestCert: true, rejectUnauthorized: false }, (socket) => {
        socket.on('data', (d: Buffer) => (received += d.length));
        socket.on('error', () => undefined);
      });
      await new Promise<void>((resolve) => hostile.listen(0, '127.0.0.1', () => resolve()));
      t.after(() => hostile.close());
      const { port } = hostile.address() as net.AddressInfo;
      const me = await makePeer();
      await assert.rejects(dialTls({ identity: me.identity, address: `127.0.0.1:${port}` }), { code: 'PEER_UNTRUSTED', message: /certificate chain/ });
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(received, 0, 'nothing sent after the handshake');
    });

    it('a replayed ClientHello, sent as fast as the attacker likes from one address, is held to the handshake rate while a trusted peer from another is served', async (t) => {
      const sharer = await startFloodSharer();
      t.after(() => sharer.stop());
      const clientHello = (await captureClientHello((await makePeer()).identity)).toString('base64');
      const flood = await startFlood({ kind: 'replayed ClientHello', address: sharer.address, clientHello, sources: [loopback(2)], slots: 4, reopenMs: 5 }, 20);
      t.after(() => flood.stop());
      const tries = await tryRepeatedly(sharer, TRIES, () => trustedTry(sharer));
      const counts = await flood.stop();
      const answered = counts.answers.answered ?? 0;
      console.log(
        `# replayed ClientHello from one address: ${counts.attempts} sent in ${counts.seconds.toFixed(1)} s, ${answered} answered (rate ${RATE}/s, burst ${2 * RATE}); sharer rate-limited ${sharer.latest().stats.handshakesRateLimited}; trusted peer ${summary(tries)}`,
      );
      assertServed('replayed ClientHello', tries);
      assert.ok(counts.attempts > 2 * rateAllows(counts.seconds), `the flood was real: ${counts.attempts} ClientHellos`);
      assert.ok(answered <= rateAllows(counts.seconds), `${answered} of ${counts.attempts} ClientHellos answered in ${counts.seconds.toFixed(1)} s; the rate allows ${Math.floor(rateAllows(counts.seconds))}`);
    });
  });
}

/** Runs `openssl s_client` offering only `group`; resolves with its exit code and output. */
function opensslWithGroup(address: string, group: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('openssl', ['s_client', '-connect', address, '-tls1_3', '-groups', group, '-brief'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', (err) => reject(new Error(`openssl is installed (scripts/ensure-test-deps.sh): ${err.message}`)));
    child.on('close', (code) => resolve({ code, out }));
    child.stdin.end();
  });
}

/** The first flight of a real PeerShare client: what an attacker captures once and replays. */
async function captureClientHello(identity: Identity): Promise<Buffer> {
  const catcher = net.createServer();
  await new Promise<void>((r) => catcher.listen(0, '127.0.0.1', r));
  const port = (catcher.address() as net.AddressInfo).port;
  const caught = new Promise<Buffer>((resolve) => catcher.once('connection', (s) => s.once('data', (d: Buffer) => (resolve(d), s.destroy()))));
  const client = tls.connect({ ...TLS_OPTIONS, host: '127.0.0.1', port, key: identity.keyPem, cert: identity.certPem, rejectUnauthorized: false });
  client.on('error', () => undefined);
  const hello = await caught;
  client.destroy();
  catcher.close();
  return hello;
}

/** A key and a chain of `length` certificates, each signed by the next (the last self-signed). */
async function chainOf(length: number): Promise<{ keyPem: string; chainPem: string }> {
  x509.cryptoProvider.set(webcrypto as unknown as Crypto);
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const dates = { notBefore: new Date(Date.now() - 3600_000), notAfter: new Date(Date.now() + 3600_000) };
  let issuerKeys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  let issuerName = `CN=ca${length}`;
  const pems = [(await x509.X509CertificateGenerator.createSelfSigned({ serialNumber: '01', name: issuerName, ...dates, signingAlgorithm: alg, keys: issuerKeys })).toString('pem')];
  for (let i = length - 1; i >= 1; i--) {
    const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
    const name = i === 1 ? 'CN=leaf' : `CN=ca${i}`;
    const cert = await x509.X509CertificateGenerator.create({ serialNumber: String(i + 1).padStart(2, '0'), subject: name, issuer: issuerName, ...dates, signingAlgorithm: alg, publicKey: keys.publicKey, signingKey: issuerKeys.privateKey });
    pems.unshift(cert.toString('pem'));
    issuerKeys = keys;
    issuerName = name;
  }
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', issuerKeys.privateKey));
  return { keyPem: `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64')}\n-----END PRIVATE KEY-----\n`, chainPem: pems.join('\n') };
}
