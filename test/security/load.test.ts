import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type * as tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import type { PeerConnection } from '../../src/core';
import { blockSizeFor } from '../../src/core/blocks';
import { encodeMessage } from '../../src/core/frames';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { connectWithInvite, makePeer, tempDir, writeRandomFile, type TestPeer } from '../helpers';
import { dripUntilClosed, helloV2, rawClient, waitFor, type RawClient } from '../hostile';

/**
 * Load on a sharer in its own process, with its default limits but short timeouts: 200
 * connections and 1,000 requests in a burst from two rogue (trusted) peers, clients that drip a
 * byte at a time, clients that never read, and connections past the limit, all at once, while a
 * well-behaved peer keeps asking. The sharer must answer every one of the well-behaved peer's
 * requests, refuse the excess with BUSY, a timeout or a close before TLS, and hold its memory. A
 * client that never reads starves only its own request (protocol-v2 3.4): the sharer sends it no
 * more than the credit it advertised and ends that request with TIMEOUT; its connection stays.
 *
 * Each group connects from loopback addresses of its own (127.0.0.2 and up; the well-behaved peer
 * from 127.0.0.1): the sharer counts handshakes and unauthenticated connections per source
 * address, and a burst from one address past that is closed before TLS.
 */

const MiB = 1024 * 1024;
const LIMITS = { handshakeTimeoutMs: 2000, helloTimeoutMs: 2000, messageTimeoutMs: 2000, stallTimeoutMs: 2000 };
/** Loopback addresses `first`, `first + 1`, ... to connect from. */
const addresses = (first: number, count: number): string[] => Array.from({ length: count }, (_, i) => `127.0.0.${first + i}`);
/** Connects from this local address (a net option that tls accepts, though its types omit it). */
const from = (localAddress: string): tls.ConnectionOptions => ({ localAddress }) as tls.ConnectionOptions;

interface Sample {
  kind: string;
  rss: number;
  heapUsed: number;
  peers: number;
  requests: number;
  accepted: number;
}

describe('load', () => {
  let child: ChildProcess;
  let address: string;
  let invite: string;
  const samples: Sample[] = [];
  let measured: ((s: Sample) => void) | undefined;

  let ws: string;

  before(async () => {
    ws = path.join(tempDir(), 'ws');
    for (let i = 0; i < 20; i++) await writeRandomFile(path.join(ws, `small-${i}.txt`), 2000);
    await writeRandomFile(path.join(ws, 'big.bin'), 64 * MiB);
    child = fork(path.join(__dirname, 'load-sharer.ts'), [ws, JSON.stringify(LIMITS)], { execArgv: ['--import', 'tsx', '--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const ready = await new Promise<{ address: string; invite: string }>((resolve, reject) => {
      child.on('message', (m: Sample & { address: string; invite: string }) => {
        if (m.kind === 'ready') resolve(m);
        else if (m.kind === 'sample') samples.push(m);
        else if (m.kind === 'measured') measured?.(m);
      });
      child.once('exit', (code) => reject(new Error(`the sharer exited with ${code}`)));
    });
    ({ address, invite } = ready);
  });

  after(async () => {
    child.send('stop');
    await new Promise((r) => child.once('exit', r));
  });

  const measure = (): Promise<Sample> =>
    new Promise((resolve) => {
      measured = resolve;
      child.send('measure');
    });

  /** A peer paired with the sharer (by invite), ready to open raw connections. */
  const paired = async (): Promise<TestPeer> => {
    const { conn, client } = await connectWithInvite(invite);
    conn.close();
    return client;
  };

  /**
   * Opens a connection from `source` and says hello. The sharer closes a socket before TLS when
   * its address starts handshakes faster than its rate, or to make room for newer ones when that
   * address already has `maxUnauthenticatedPerSource` connections in their handshake (the oldest
   * goes, even when the client already thinks its handshake is done): in a burst that outruns the
   * handshakes, that is how the excess is refused, and it counts as `'dropped'`. (Until issue 16 the sharer dropped every socket past twice
   * `maxConnections` instead, trusted peers' included.)
   */
  async function openHello(peer: TestPeer, source: string, settings: Record<string, unknown> = {}): Promise<RawClient | 'dropped'> {
    let c: RawClient;
    try {
        c = await rawClient(address, peer.identity, from(source));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ECONNRESET') return 'dropped';
        throw err;
      }
      c.socket.on('error', () => undefined);
      c.send(helloV2('rogue', settings));
      await waitFor(() => c.messages.length > 0 || c.socket.destroyed, 15_000);
      // Closed with no answer: made room for newer ones before the sharer saw its handshake end.
      return c.messages.length === 0 ? 'dropped' : c;
    }

    it('200 connections, 1,000 requests, drips, non-readers and over-limit connections at once: the well-behaved peer is always answered; memory is bounded', async () => {
      const good = await connectWithInvite(invite);
      const rogues = [await paired(), await paired()];
      const lazy = await paired();
      const crowd = await paired();
      const baseline = await measure();

      // The well-behaved peer asks every 50 ms throughout.
      const latencies: number[] = [];
      let polling = true;
      const goodConn: PeerConnection = good.conn;
      // It stops at its first failure and keeps it for the assertion below, so a failure elsewhere
      // in the test cannot leave it asking a stopped sharer after the test has ended.
      let pollFailure: unknown;
      const poller = (async () => {
        try {
          while (polling) {
            const started = performance.now();
            await goodConn.stat('ws/small-0.txt');
            latencies.push(performance.now() - started);
            await new Promise((r) => setTimeout(r, 50));
          }
        } catch (err) {
          pollFailure = err;
        }
      })();
      try {

      // 200 connections from two rogue peers at once, from 10 addresses.
      const burstFrom = addresses(2, 10);
      const opened = await Promise.all(Array.from({ length: 200 }, (_, i) => openHello(rogues[i % 2], burstFrom[i % burstFrom.length])));
      const connections = opened.filter((c): c is RawClient => c !== 'dropped');
      const dropped = opened.length - connections.length;
      const welcomed = connections.filter((c) => c.messages[0]?.type === 'welcome');
      const refused = connections.filter((c) => c.messages[0]?.code === 'BUSY');
      assert.equal(welcomed.length + refused.length + dropped, 200, 'every connection got welcome, BUSY or was closed before it was authenticated');

      // 1,000 requests in a burst over the connections that got in, each asking again at once.
      let sent = 0;
      const answers = new Map<string, number>();
      await Promise.all(
        welcomed.map(async (c) => {
          while (sent < 1000 && !c.socket.destroyed) {
            sent++;
            const from = c.messages.length;
            c.request({ type: 'share.stat', path: `ws/small-${sent % 20}.txt` });
            await waitFor(() => c.messages.length > from || c.socket.destroyed, 15_000);
            const answer = c.messages[from];
            // END {type:"end", entry} is an answer, END error a refusal (its code), CLOSE the end.
            const key = String(answer?.type === 'end' && answer.entry ? 'entry' : (answer?.code ?? answer?.type ?? 'closed'));
            answers.set(key, (answers.get(key) ?? 0) + 1);
          }
        }),
      );

      // Drippers, non-readers and a crowd past the connection limit, all at once.
      const drippers = await Promise.all(Array.from({ length: 10 }, () => rawClient(address, crowd.identity, from('127.0.0.12'))));
      const hello = encodeMessage(helloV2('drip'.repeat(20)));
      const dripped = Promise.all(drippers.map((d) => dripUntilClosed(d, hello, 500)));
      // The smallest credit a requester may advertise (window 2 x frame, 4.1): all of it fits in the
      // socket buffers of a reader that reads nothing, so what ends its request is the sharer's
      // starvation deadline (spec 3.4), not the transport's (a socket that takes no bytes).
      const readerSettings = { frame: 16 * 1024, window: 32 * 1024 };
      const readers = (await Promise.all(Array.from({ length: 5 }, () => openHello(lazy, '127.0.0.13', readerSettings)))).filter((r): r is RawClient => r !== 'dropped');
      assert.equal(readers.length, 5, 'the non-readers got in (the burst has gone)');
      // Each asks for every block of the 64 MiB file (its block list made here, as the sharer makes it), reads nothing and never grants credit.
      const bigManifest = manifestOfBytes(await fs.readFile(path.join(ws, 'big.bin')), blockSizeFor(64 * MiB));
      const readerRequests = readers.map((r) => {
        r.socket.pause();
        return r.request({ type: 'share.read', path: 'ws/big.bin', fileHash: bigManifest.fileHash.toString('hex'), blocks: [[0, bigManifest.blockHashes.length]] });
      });
      const crowdFrom = addresses(14, 8);
      const overLimit = await Promise.all(Array.from({ length: 80 }, (_, i) => rawClient(address, crowd.identity, from(crowdFrom[i % crowdFrom.length])).catch(() => undefined)));
      for (const c of overLimit) c?.socket.on('error', () => undefined);
      await waitFor(() => overLimit.every((c) => !c || c.messages.length > 0 || c.socket.destroyed), 15_000);
      const overLimitBusy = overLimit.filter((c) => c?.messages[0]?.code === 'BUSY').length;

      // Every dripper and non-reader is let go by the deadlines, not by us.
      const drippedBytes = await dripped;
      assert.ok(drippedBytes.every((n) => n < hello.length), 'every dripper was cut off before its hello was whole');
      // Each non-reader's request ends with TIMEOUT after stallTimeoutMs without credit. It reads
      // now to see that END; it still grants nothing, so only the sharer's deadline can end it.
      for (const r of readers) r.socket.resume();
      const endOf = (r: RawClient, id: number): Record<string, unknown> | undefined => r.messages.find((m) => m.frame === 'END' && m.id === id);
      await waitFor(() => readers.every((r, i) => endOf(r, readerRequests[i]) !== undefined || r.socket.destroyed), 15_000);
      for (const [i, r] of readers.entries()) {
        const end = endOf(r, readerRequests[i]);
        assert.equal(end?.code, 'TIMEOUT', `non-reader ${i}: its request ended with ${JSON.stringify(end)}${r.socket.destroyed ? ' (its connection was closed)' : ''}`);
        const received = r.data.reduce((n, chunk) => n + chunk.length, 0);
        assert.ok(received <= readerSettings.window, `non-reader ${i} was sent ${received} bytes, more than the ${readerSettings.window} of credit it advertised`);
        assert.ok(!r.socket.destroyed && !r.messages.some((m) => m.frame === 'CLOSE'), `non-reader ${i}: the starved request ended, its connection stays`);
      }
      // The sharer holds the non-readers' connections, no more, beside the rogues' and the well-behaved peer's.
      await waitFor(() => samples[samples.length - 1]?.peers === welcomed.filter((c) => !c.socket.destroyed).length + readers.length + 1, 15_000).catch((err: Error) => {
        throw new Error(`${err.message}: peers ${samples[samples.length - 1]?.peers}, expected ${welcomed.filter((c) => !c.socket.destroyed).length + readers.length + 1}`);
      });
      const peak = Math.max(...samples.map((s) => s.rss));

      polling = false;
      await poller;
      assert.equal(pollFailure, undefined, 'every request of the well-behaved peer was answered');
      for (const c of [...connections, ...readers, ...overLimit]) c?.socket.destroy();
      await waitFor(() => samples[samples.length - 1]?.peers === 1, 10_000);
      const afterAll = await measure();
      good.conn.close();

      const sorted = [...latencies].sort((a, b) => a - b);
      const p = (q: number): number => Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]);
      console.log(
        `# load: 200 connections -> ${welcomed.length} welcomed, ${refused.length} BUSY, ${dropped} closed before they were authenticated; ${sent} requests -> ${JSON.stringify(Object.fromEntries(answers))}; ` +
          `10 drippers closed by the deadline; 5 non-readers, each request ended with TIMEOUT; ${overLimit.length} past the limit -> ${overLimitBusy} BUSY; ` +
          `well-behaved peer: ${latencies.length} requests, all answered, p50 ${p(0.5)} ms, p99 ${p(0.99)} ms, max ${p(1)} ms; ` +
          `sharer RSS ${(baseline.rss / MiB).toFixed(0)} MiB before, ${(peak / MiB).toFixed(0)} MiB peak, ${(afterAll.rss / MiB).toFixed(0)} MiB after; ` +
          `heap ${(baseline.heapUsed / MiB).toFixed(1)} -> ${(afterAll.heapUsed / MiB).toFixed(1)} MiB`,
      );

      assert.ok(welcomed.length <= 32 && welcomed.length > 0, `${welcomed.length} connections past hello for two peers (at most 16 each)`);
      assert.equal(sent, 1000);
      assert.equal([...answers.keys()].filter((k) => k !== 'entry' && k !== 'BUSY').length, 0, `only answers or BUSY: ${JSON.stringify(Object.fromEntries(answers))}`);
      // A BUSY answer comes back sooner than a real one, so a refused connection asks again
      // sooner: how the burst splits depends on scheduling (about 60/40 here, 40/60 on busy cores).
      assert.ok((answers.get('entry') ?? 0) >= 100, 'the sharer kept serving the rogues within their limits');
      assert.ok(overLimitBusy > 0, 'connections past the limit were told BUSY');
      assert.ok(latencies.length > 10, 'the well-behaved peer kept asking');
      assert.ok(p(1) < 5000, `the well-behaved peer waited at most ${p(1)} ms`);
      assert.ok(peak < 400 * MiB, `peak RSS ${peak / MiB} MiB`);
      assert.ok(afterAll.heapUsed < baseline.heapUsed + 16 * MiB, `heap after ${afterAll.heapUsed / MiB} MiB vs before ${baseline.heapUsed / MiB} MiB`);
    } finally {
      polling = false;
      await poller;
    }
  });
});
