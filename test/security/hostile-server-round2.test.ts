import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { describe, it } from 'node:test';
import { DISGUISING_CHARS, connectToPeer, download, formatInvite, isErrorCode, type DownloadResult, type Identity, type Limits, type PeerConnection } from '../../src/core';
import { encodeDataHeader, encodeMessage } from '../../src/core/frames';
import { makePeer, tempDir, type TestPeer } from '../helpers';
import { startHostileServer, type Replier, type Scenario } from '../hostile';
import { assertOnlyChanged, buildWorld, type Snapshot, type World } from './world';

/**
 * The receiving side of issue 16, as named scenarios against a real client over real TLS, with a
 * file-system oracle: temporary files planted as symlinks and hard links (finding 1), names of
 * 223-255 bytes are in transfer.test.ts (finding 11), escape sequences in skipped-file records
 * (finding 4), counts and byte totals a hostile sharer sends (findings 5 and 13), and a sharer
 * that keeps a request waiting (finding 8).
 */

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const MTIME = 1000;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');


/** The hidden temporary name a download uses, as anyone who knows the peer and the file can work out. */
function predictedTemporary(dir: string, base: string, peerId: string, remotePath: string, size: number): string {
  const tag = createHash('sha256').update(`${peerId}\n${remotePath}\n${size}\n${MTIME}`).digest('hex').slice(0, 16);
  return path.join(dir, `.${base}.${tag}.peershare-part`);
}

function sendFile(reply: Replier, name: string, content: Buffer, hash = sha(content)): void {
  reply.message({ type: 'file', path: name, size: content.length, mtimeMs: MTIME, offset: 0 });
  if (content.length) reply.data(content);
  reply.message({ type: 'fileEnd', sha256: hash });
}

/** Answers stat for `ws/d` as a folder, then plays `events` for the tree. */
function treeScenario(events: (reply: Replier) => void | Promise<void>): Scenario {
  return async (req, reply) => {
    if (req.type === 'stat') reply.message({ type: 'entry', entry: { name: 'd', type: 'dir', size: 0, mtimeMs: MTIME } });
    else if (req.type === 'tree') await events(reply);
  };
}

/** Answers stat for `ws/f.txt` with `content`'s size, and a read honestly from the offset asked for (with `hash`). */
function fileScenario(content: Buffer, hash = sha(content)): Scenario {
  return (req, reply) => {
    if (req.type === 'stat') reply.message({ type: 'entry', entry: { name: 'f.txt', type: 'file', size: content.length, mtimeMs: MTIME } });
    else if (req.type === 'read') {
      const offset = Number(req.offset);
      reply.message({ type: 'file', path: req.path, size: content.length, mtimeMs: MTIME, offset });
      if (content.length > offset) reply.data(content.subarray(offset));
      reply.message({ type: 'fileEnd', sha256: hash });
    }
  };
}

/** Writes messages as fast as the socket takes them, until `next` says stop or the socket closes. */
function pump(reply: Replier, next: () => object | undefined): void {
  const go = (): void => {
    while (!reply.socket.destroyed) {
      const m = next();
      if (!m) return;
      if (!reply.socket.write(encodeMessage(m))) {
        reply.socket.once('drain', go);
        return;
      }
    }
  };
  go();
}

/** Calls `send` every `everyMs` until the socket closes. */
function every(reply: Replier, everyMs: number, send: () => void): void {
  const timer = setInterval(() => (reply.socket.destroyed ? clearInterval(timer) : send()), everyMs);
  reply.socket.once('close', () => clearInterval(timer));
}

interface Run {
  world: World;
  victim: TestPeer;
  hostile: Identity;
  outcome: string;
  error?: Error;
  value?: unknown;
  ms: number;
  serverSawClose: boolean;
}

/**
 * Runs `action` against a hostile server in a fresh world; `plant` runs after the world is built
 * (and before the snapshot the checks compare with) and may use the hostile peer's ID.
 * A run that has not ended after `capMs` counts as a hang.
 */
async function against(
  scenario: Scenario,
  action: (conn: PeerConnection, world: World) => Promise<unknown>,
  options: { limits?: Partial<Limits>; plant?: (world: World, hostile: Identity) => Promise<void>; capMs?: number } = {},
): Promise<Run & { before: Snapshot }> {
  const world = await buildWorld();
  const victim = await makePeer();
  const hostile = (await makePeer()).identity;
  await options.plant?.(world, hostile);
  const before = await world.snapshot();
  let serverSawClose = false;
  const server = await startHostileServer(hostile, (req, reply) => {
    reply.socket.once('close', () => (serverSawClose = true));
    return scenario(req, reply);
  });
  let conn: PeerConnection | undefined;
  const started = Date.now();
  let outcome = 'ok';
  let error: Error | undefined;
  let value: unknown;
  let cap: NodeJS.Timeout | undefined;
  try {
    conn = await connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [server.address], expectedPeerId: hostile.peerId, name: 'victim', limits: { stallTimeoutMs: 2000, ...options.limits } });
    const c = conn;
    value = await Promise.race([
      action(c, world),
      new Promise((_, reject) => {
        cap = setTimeout(() => reject(Object.assign(new Error('still waiting: a hang'), { code: 'HANG' })), options.capMs ?? 30_000);
      }),
    ]);
  } catch (err) {
    error = err as Error;
    outcome = (err as { code?: string }).code ?? `uncoded: ${String(err)}`;
  }
  clearTimeout(cap);
  const ms = Date.now() - started;
  conn?.close();
  // Give the server a moment to see the close, then stop it.
  await new Promise((r) => setTimeout(r, 50));
  await server.close();
  return { world, victim, hostile, outcome, error, value, ms, serverSawClose, before };
}

/** Compared without printing: a failure must not dump megabytes. */
async function assertBytes(file: string, expected: Buffer | string, what: string): Promise<void> {
  const actual = await fs.readFile(file);
  assert.ok(actual.equals(Buffer.from(expected)), `${what}: ${actual.length} bytes, starting ${JSON.stringify(actual.subarray(0, 40).toString('latin1'))}`);
}

const assertOutsideUnchanged = (world: World): Promise<void> => assertBytes(path.join(world.outside, 'secret.txt'), world.secret, 'the outside file is byte for byte unchanged');

function assertOutcome(run: Run, expected: string): void {
  assert.equal(run.outcome, expected, `outcome ${run.outcome}${run.error ? ` (${run.error.message})` : ''}`);
}

const SMALL = Buffer.from('the peer’s verified bytes\n');
const LARGE = Buffer.alloc(600 * 1024, 0x5a);

describe('finding 1: temporary files planted as links are never written through', () => {
  for (const [content, what] of [
    [SMALL, 'small'],
    [LARGE, 'large (streamed)'],
  ] as const) {
    for (const kind of ['symlink', 'hard link'] as const) {
      it(`a ${kind} planted at the temporary name of a ${what} file in a folder download: outside unchanged, the final name is a regular file with the peer's bytes`, async () => {
        const run = await against(
          treeScenario((reply) => {
            sendFile(reply, 'f.bin', content);
            reply.message({ type: 'end', count: 1 });
          }),
          (conn, world) => download(conn, 'ws/d', world.ws),
          {
            plant: async (world, hostile) => {
              await fs.mkdir(path.join(world.ws, 'd'));
              const temporary = predictedTemporary(path.join(world.ws, 'd'), 'f.bin', hostile.peerId, 'ws/d/f.bin', content.length);
              if (kind === 'symlink') await fs.symlink(path.join(world.outside, 'secret.txt'), temporary);
              else await fs.link(path.join(world.outside, 'secret.txt'), temporary);
            },
          },
        );
        assertOutcome(run, 'ok');
        const finalName = path.join(run.world.ws, 'd', 'f.bin');
        assert.ok((await fs.lstat(finalName)).isFile(), 'the final name is a regular file, not a link');
        await assertBytes(finalName, content, 'the final name holds the peer’s verified bytes');
        await assertOutsideUnchanged(run.world);
        // A hard link's target changes its ctime when the link is removed; its bytes must not change.
        assertOnlyChanged(run.before, await run.world.snapshot(), ['ws/d*', ...(kind === 'hard link' ? ['outside/secret.txt'] : [])]);
      });
    }

    it(`a symlink planted at the temporary name of a ${what} file with a wrong hash: HASH_MISMATCH, outside unchanged, no final name`, async () => {
      const run = await against(
        treeScenario((reply) => {
          sendFile(reply, 'f.bin', content, '0'.repeat(64));
          reply.message({ type: 'end', count: 1 });
        }),
        (conn, world) => download(conn, 'ws/d', world.ws),
        {
          plant: async (world, hostile) => {
            await fs.mkdir(path.join(world.ws, 'd'));
            await fs.symlink(path.join(world.outside, 'secret.txt'), predictedTemporary(path.join(world.ws, 'd'), 'f.bin', hostile.peerId, 'ws/d/f.bin', content.length));
          },
        },
      );
      assertOutcome(run, 'HASH_MISMATCH');
      assert.equal(existsSync(path.join(run.world.ws, 'd', 'f.bin')), false, 'nothing under the final name');
      await assertOutsideUnchanged(run.world);
      assertOnlyChanged(run.before, await run.world.snapshot(), ['ws/d*']);
    });
  }

  it('a temporary file swapped for a symlink just before it is saved: IO_ERROR, the final name never stays a link, outside unchanged', async () => {
    let temporary = '';
    const run = await against(
      treeScenario(async (reply) => {
        reply.message({ type: 'file', path: 'f.bin', size: LARGE.length, mtimeMs: MTIME, offset: 0 });
        reply.data(LARGE);
        // The local accomplice swaps the temporary file meanwhile (below).
        await new Promise((r) => setTimeout(r, 500));
        reply.message({ type: 'fileEnd', sha256: sha(LARGE) });
        reply.message({ type: 'end', count: 1 });
      }),
      async (conn, world) => {
        const downloading = download(conn, 'ws/d', world.ws);
        const swapped = (async () => {
          const started = Date.now();
          while ((await fs.stat(temporary).catch(() => undefined))?.size !== LARGE.length) {
            if (Date.now() - started > 5000) throw new Error('the temporary file never filled');
            await new Promise((r) => setTimeout(r, 5));
          }
          await fs.rename(temporary, path.join(world.ws, 'd', 'moved-away'));
          await fs.symlink(path.join(world.outside, 'secret.txt'), temporary);
        })();
        try {
          return await downloading;
        } finally {
          await swapped;
        }
      },
      {
        plant: async (world, hostile) => {
          temporary = predictedTemporary(path.join(world.ws, 'd'), 'f.bin', hostile.peerId, 'ws/d/f.bin', LARGE.length);
        },
      },
    );
    assertOutcome(run, 'IO_ERROR');
    assert.equal(existsSync(path.join(run.world.ws, 'd', 'f.bin')), false, 'nothing under the final name');
    await assertOutsideUnchanged(run.world);
    assertOnlyChanged(run.before, await run.world.snapshot(), ['ws/d*']);
  });

  const single = Buffer.alloc(100, 0x61);
  for (const kind of ['symlink', 'hard link'] as const) {
    it(`a ${kind} planted at a single-file download's temporary name is not resumed nor written through`, async () => {
      const run = await against(fileScenario(single), (conn, world) => download(conn, 'ws/f.txt', world.ws), {
        plant: async (world, hostile) => {
          const temporary = predictedTemporary(world.ws, 'f.txt', hostile.peerId, 'ws/f.txt', single.length);
          if (kind === 'symlink') await fs.symlink(path.join(world.outside, 'secret.txt'), temporary);
          else await fs.link(path.join(world.outside, 'secret.txt'), temporary);
        },
      });
      assertOutcome(run, 'ok');
      assert.equal((run.value as DownloadResult).resumedBytes, 0, 'nothing planted is taken as a partial download');
      const finalName = path.join(run.world.ws, 'f.txt');
      assert.ok((await fs.lstat(finalName)).isFile());
      await assertBytes(finalName, single, 'the final name holds the peer’s verified bytes');
      await assertOutsideUnchanged(run.world);
      assertOnlyChanged(run.before, await run.world.snapshot(), ['ws/f.txt', 'ws/.f.txt.*', ...(kind === 'hard link' ? ['outside/secret.txt'] : [])]);
      assert.deepEqual((await fs.readdir(run.world.ws)).filter((n) => n.endsWith('.peershare-part')), [], 'the planted link is gone');
    });
  }

  it('a partial download that is ours (one link, our file, not too long) is still resumed', async () => {
    const run = await against(fileScenario(single), (conn, world) => download(conn, 'ws/f.txt', world.ws), {
      plant: async (world, hostile) => {
        await fs.writeFile(predictedTemporary(world.ws, 'f.txt', hostile.peerId, 'ws/f.txt', single.length), single.subarray(0, 40), { mode: 0o644 });
      },
    });
    assertOutcome(run, 'ok');
    assert.equal((run.value as DownloadResult).resumedBytes, 40);
    assert.deepEqual(await fs.readFile(path.join(run.world.ws, 'f.txt')), single);
  });
});

describe('finding 4: skipped-file records cannot write to the terminal', () => {
  const FORGED = '\u001b]0;pwned\u0007\u001b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\u0007\r\nDownloaded 1 file (1 B) to /home/you in 0.01 s, verified with SHA-256.\n\u001b[2K';
  const hostileSkips = treeScenario((reply) => {
    sendFile(reply, 'good.txt', SMALL);
    reply.message({ type: 'skipped', path: 'gone.txt', code: FORGED, message: FORGED.repeat(50) });
    reply.message({ type: 'end', count: 1 });
  });

  it('a code outside the known ones becomes PROTOCOL_ERROR; the message is escaped and bounded', async () => {
    const run = await against(hostileSkips, (conn, world) => download(conn, 'ws/d', world.ws));
    assertOutcome(run, 'ok');
    const [skipped] = (run.value as DownloadResult).skippedByPeer;
    assert.equal(skipped.code, 'PROTOCOL_ERROR');
    assert.ok(isErrorCode(skipped.code));
    assert.doesNotMatch(skipped.message, DISGUISING_CHARS);
    assert.doesNotMatch(skipped.path, DISGUISING_CHARS);
    assert.ok(skipped.message.length <= 2000, `message of ${skipped.message.length} chars`);
  });

  /** Runs `peershare get` against a hostile server; returns everything it printed. */
  async function cliGet(scenario: Scenario, args?: (invite: string, dest: string) => string[]): Promise<{ stdout: string; stderr: string; code: number }> {
    const built = spawnSync(process.execPath, [path.join(ROOT, 'esbuild.js')], { cwd: ROOT, stdio: 'inherit' });
    assert.equal(built.status, 0, 'the CLI builds');
    const hostile = (await makePeer()).identity;
    const server = await startHostileServer(hostile, scenario);
    const invite = formatInvite({ peerId: hostile.peerId, addresses: [server.address], token: 'x'.repeat(32) });
    const dest = tempDir();
    try {
      return await new Promise((resolve) => {
        execFile(process.execPath, [CLI, ...(args ? args(invite, dest) : ['get', invite, 'ws/d', dest]), '--home', tempDir()], { timeout: 60_000 }, (err, stdout, stderr) =>
          resolve({ stdout, stderr, code: err ? Number((err as { code?: number }).code ?? 1) : 0 }),
        );
      });
    } finally {
      await server.close();
    }
  }

  const assertClean = (text: string): void => {
    // eslint-disable-next-line no-control-regex
    assert.doesNotMatch(text, /[\u001b\u0007\r\u009b\u009d]/, 'no escape, bell or carriage return from the peer');
  };

  it('get prints escape sequences, OSC 52 and a forged "Downloaded" line from code and message as plain text on one line', async () => {
    const { stdout, stderr, code } = await cliGet(hostileSkips);
    assert.equal(code, 0, stderr);
    assertClean(stdout + stderr);
    const lines = stdout.trimEnd().split('\n');
    assert.equal(lines.filter((l) => l.startsWith('Downloaded')).length, 1, 'one Downloaded line, ours');
    assert.equal(lines.length, 2, `one line for the download and one for the skipped file:\n${stdout}`);
  });

  it('get shows a skipped record whose path carries escapes with every escape made visible, on one line', async () => {
    const { stdout, stderr, code } = await cliGet(
      treeScenario((reply) => {
        reply.message({ type: 'skipped', path: FORGED, code: 'NOT_FOUND', message: 'x' });
        reply.message({ type: 'end', count: 0 });
      }),
    );
    assert.equal(code, 0, stderr);
    assertClean(stdout + stderr);
    const lines = stdout.trimEnd().split('\n');
    assert.equal(lines.filter((l) => l.startsWith('Downloaded')).length, 1, `one Downloaded line, ours:\n${stdout}`);
    assert.match(lines[1], /^The peer could not send \\u001b\]0;pwned/);
    assert.equal(lines.length, 2);
  });

  // Found by the outside review of this round: the client quoted a message type the peer chose.
  for (const [command, args] of [
    ['ls', (invite: string) => ['ls', invite, 'ws']],
    ['get of a file', (invite: string, dest: string) => ['get', invite, 'ws/f.txt', dest]],
    ['get of a folder', (invite: string, dest: string) => ['get', invite, 'ws/d', dest]],
  ] as const) {
    it(`${command}: an answer whose message type carries escapes and a forged line is quoted escaped`, async () => {
      const { stdout, stderr, code } = await cliGet((req, reply) => {
        if (req.type === 'stat') reply.message({ type: 'entry', entry: { name: String(req.path).split('/').pop(), type: String(req.path).endsWith('d') ? 'dir' : 'file', size: 1, mtimeMs: 1000 } });
        else reply.message({ type: FORGED });
      }, args);
      assert.notEqual(code, 0);
      assertClean(stdout + stderr);
      assert.match(stderr, /PROTOCOL_ERROR/);
      assert.equal(stderr.trimEnd().split('\n').length, 1, `one line:\n${stderr}`);
    });
  }

  it('get stops at a skipped record whose path is malformed (a parent component): BAD_NAME', async () => {
    const { stdout, stderr, code } = await cliGet(
      treeScenario((reply) => {
        reply.message({ type: 'skipped', path: `../${FORGED}`, code: 'NOT_FOUND', message: 'x' });
        reply.message({ type: 'end', count: 0 });
      }),
    );
    assert.notEqual(code, 0);
    assertClean(stdout + stderr);
    assert.match(stderr, /BAD_NAME/);
    assert.equal(stdout.includes('Downloaded'), false);
  });
});

describe('finding 5 and 13: every count and byte total a sharer sends is bounded', () => {
  it('endless skipped records end with TOO_LARGE at the tree limit, keeping at most maxSkippedReports of them', async () => {
    let sent = 0;
    const heapBefore = process.memoryUsage().heapUsed;
    let heapPeak = heapBefore;
    const sampler = setInterval(() => (heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed)), 20);
    const run = await against(
      treeScenario((reply) =>
        // Capped so the unfixed client ends too (with every record kept).
        pump(reply, () => (sent < 300_000 ? { type: 'skipped', path: `gone-${sent++}-${'x'.repeat(100)}.txt`, code: 'PERMISSION_DENIED', message: 'y'.repeat(300) } : undefined)),
      ),
      async (conn, world) => {
        try {
          return await download(conn, 'ws/d', world.ws);
        } finally {
          heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
        }
      },
      { capMs: 120_000 },
    );
    clearInterval(sampler);
    assertOutcome(run, 'TOO_LARGE');
    assert.ok(run.serverSawClose, 'the client hung up');
    // The limit, plus what socket buffers hold; the unfixed client read all 300,000.
    assert.ok(sent <= 200_001 + 50_000, `the client stopped reading near the limit (${sent} sent)`);
    console.log(`# endless skipped records: stopped after ${sent} sent; heap grew by ${((heapPeak - heapBefore) / 1048576).toFixed(1)} MiB`);
    // Garbage included (no forced GC here): about 40 MiB measured, a few hundred MiB if every record were kept.
    assert.ok(heapPeak - heapBefore < 128 * 1024 * 1024, `heap grew by ${((heapPeak - heapBefore) / 1048576).toFixed(1)} MiB`);
    assertOnlyChanged(run.before, await run.world.snapshot(), []);
  });

  it('records flooding in while a person answers a question are not read ahead without bound', async () => {
    let sent = 0;
    let sentWhenAnswered = 0;
    const run = await against(
      treeScenario((reply) => {
        sendFile(reply, 'README.md', SMALL);
        pump(reply, () => (sent < 500_000 ? { type: 'skipped', path: `gone-${sent++}-${'x'.repeat(100)}.txt`, code: 'PERMISSION_DENIED', message: 'y'.repeat(300) } : undefined));
      }),
      (conn, world) =>
        download(conn, 'ws/d', world.ws, {
          onConflict: async () => {
            // A person takes a while; the peer keeps sending meanwhile.
            await new Promise((r) => setTimeout(r, 1500));
            sentWhenAnswered = sent;
            return 'skip' as const;
          },
        }),
      { plant: async (world) => fs.mkdir(path.join(world.ws, 'd')).then(() => fs.writeFile(path.join(world.ws, 'd', 'README.md'), 'mine')), limits: { maxTreeFiles: 1000 }, capMs: 60_000 },
    );
    assertOutcome(run, 'TOO_LARGE');
    console.log(`# records the peer got through while a question was open: ${sentWhenAnswered}`);
    // What the socket buffers hold (a few MiB on loopback), not what 1.5 s of sending makes.
    assert.ok(sentWhenAnswered < 60_000, `${sentWhenAnswered} records sent while the question was open`);
    await assertBytes(path.join(run.world.ws, 'd', 'README.md'), 'mine', 'the existing file is left alone');
  });

  it('skipped reports beyond maxSkippedReports are counted, not kept', async () => {
    const run = await against(
      treeScenario((reply) => {
        for (let i = 0; i < 25; i++) reply.message({ type: 'skipped', path: `gone-${i}.txt`, code: 'PERMISSION_DENIED', message: 'no' });
        reply.message({ type: 'end', count: 0 });
      }),
      (conn, world) => download(conn, 'ws/d', world.ws),
      { limits: { maxSkippedReports: 10 } },
    );
    assertOutcome(run, 'ok');
    const result = run.value as DownloadResult;
    assert.equal(result.skippedByPeer.length, 10);
    assert.equal(result.skippedByPeerCount, 25);
  });

  it('a listing of long names stops at maxListBytes of names (TOO_LARGE); one exactly at the limit is accepted', async () => {
    const name = (i: number): string => `${String(i).padStart(6, '0')}${'n'.repeat(994)}`; // 1000 bytes
    const listing = (count: number): Scenario => (_, reply) => {
      let i = 0;
      pump(reply, () => {
        if (i >= count) return i++ === count ? { type: 'end', count } : undefined;
        const entries = Array.from({ length: Math.min(100, count - i) }, () => ({ name: name(i++), type: 'file', size: 1, mtimeMs: 1 }));
        return { type: 'entries', entries };
      });
    };
    const atLimit = await against(listing(50), (conn) => conn.list('ws'), { limits: { maxListBytes: 50_000 } });
    assertOutcome(atLimit, 'ok');
    assert.equal((atLimit.value as unknown[]).length, 50);
    const over = await against(listing(51), (conn) => conn.list('ws'), { limits: { maxListBytes: 50_000 } });
    assertOutcome(over, 'TOO_LARGE');

    // With the default limits: a listing that never ends, of the longest names a listing carries.
    let sent = 0;
    const heapBefore = process.memoryUsage().heapUsed;
    const endless = await against(
      (_, reply) =>
        pump(reply, () =>
          sent < 100_000 ? { type: 'entries', entries: Array.from({ length: 500 }, () => ({ name: `${sent++}-${'L'.repeat(1000)}`.slice(0, 1024), type: 'file', size: 1, mtimeMs: 1 })) } : undefined,
        ),
      async (conn) => {
        try {
          return await conn.list('ws');
        } finally {
          console.log(`# endless listing of 1 KiB names: stopped after ${sent} entries sent; heap grew by ${((process.memoryUsage().heapUsed - heapBefore) / 1048576).toFixed(1)} MiB`);
        }
      },
      { capMs: 120_000 },
    );
    assertOutcome(endless, 'TOO_LARGE');
    // 16 MiB of 1 KiB names is about 16,400 entries, plus what socket buffers hold; the unfixed client read all 100,000.
    assert.ok(sent < 40_000, `stopped near 16 MiB of names (${sent} entries sent)`);
  });

  it('100 nested folders, one at a time: TOO_LARGE past maxTreeDepth, and nothing deeper than it exists', async () => {
    const run = await against(
      treeScenario((reply) => {
        for (let depth = 1; depth <= 100; depth++) reply.message({ type: 'dir', path: Array(depth).fill('n').join('/') });
        reply.message({ type: 'end', count: 0 });
      }),
      (conn, world) => download(conn, 'ws/d', world.ws),
    );
    assertOutcome(run, 'TOO_LARGE');
    let deepest = 0;
    for (let p = path.join(run.world.ws, 'd', 'n'); existsSync(p); p = path.join(p, 'n')) deepest++;
    assert.equal(deepest, 64, 'folders down to the default depth limit, none deeper');
  });

  it('a file 100 folders deep in one message: TOO_LARGE, nothing created', async () => {
    const run = await against(
      treeScenario((reply) => {
        sendFile(reply, `${Array(100).fill('n').join('/')}/deep.txt`, SMALL);
        reply.message({ type: 'end', count: 1 });
      }),
      (conn, world) => download(conn, 'ws/d', world.ws),
    );
    assertOutcome(run, 'TOO_LARGE');
    assertOnlyChanged(run.before, await run.world.snapshot(), []);
  });

  it('more files and folders than maxTreeFiles: TOO_LARGE at the first one over, what came before landed whole', async () => {
    const run = await against(
      treeScenario((reply) => {
        for (let i = 0; i < 10; i++) reply.message({ type: 'dir', path: `dir${i}` });
        for (let i = 0; i < 100; i++) sendFile(reply, `dir${i % 10}/f${i}.txt`, SMALL);
        reply.message({ type: 'end', count: 100 });
      }),
      (conn, world) => download(conn, 'ws/d', world.ws),
      { limits: { maxTreeFiles: 50 } },
    );
    assertOutcome(run, 'TOO_LARGE');
    const landed = Object.entries(await run.world.snapshot()).filter(([p, v]) => p.startsWith('ws/d/') && v.startsWith('file '));
    assert.equal(landed.length, 40, '10 folders and 40 files make the 50 allowed');
    for (const [p] of landed) assert.deepEqual(await fs.readFile(path.join(run.world.base, p)), SMALL);
  });
});

describe('finding 8: a sharer cannot keep a request waiting', () => {
  // Shrunk to milliseconds; the asserts below leave seconds of slack for a loaded machine.
  const limits: Partial<Limits> = { stallTimeoutMs: 400, requestTimeoutMs: 1500, helloTimeoutMs: 600 };
  const deadlineMs = 1500;
  const SLACK_MS = 8000;
  const ZERO_DATA = encodeDataHeader(0);

  function assertTimedOut(run: Run): void {
    assertOutcome(run, 'TIMEOUT');
    assert.ok(run.ms < deadlineMs + SLACK_MS, `ended after ${run.ms} ms`);
  }

  const big = 1024 * 1024;
  const cases: [string, Scenario, (conn: PeerConnection, world: World) => Promise<unknown>, string[]][] = [
    [
      'zero-length data frames as keep-alives after a read request',
      (req, reply) => {
        if (req.type === 'stat') reply.message({ type: 'entry', entry: { name: 'f.txt', type: 'file', size: big, mtimeMs: MTIME } });
        else every(reply, 50, () => reply.raw(ZERO_DATA));
      },
      (conn, world) => download(conn, 'ws/f.txt', world.ws),
      ['ws/.f.txt.*'],
    ],
    [
      'zero-length data frames in the middle of a file',
      (req, reply) => {
        if (req.type === 'stat') reply.message({ type: 'entry', entry: { name: 'f.txt', type: 'file', size: big, mtimeMs: MTIME } });
        else {
          reply.message({ type: 'file', path: req.path, size: big, mtimeMs: MTIME, offset: 0 });
          reply.data(Buffer.alloc(1000, 1));
          every(reply, 50, () => reply.raw(ZERO_DATA));
        }
      },
      (conn, world) => download(conn, 'ws/f.txt', world.ws),
      ['ws/.f.txt.*'],
    ],
    [
      'a message dripped one byte at a time (a keep-alive below the message layer)',
      (req, reply) => {
        if (req.type === 'stat') {
          const bytes = encodeMessage({ type: 'entry', entry: { name: 'f.txt', type: 'file', size: 1, mtimeMs: MTIME }, pad: 'p'.repeat(10_000) });
          let i = 0;
          every(reply, 50, () => i < bytes.length && reply.raw(bytes.subarray(i, ++i)));
        }
      },
      (conn) => conn.stat('ws/f.txt'),
      [],
    ],
    [
      'empty listing batches',
      (_, reply) => every(reply, 50, () => reply.message({ type: 'entries', entries: [] })),
      (conn) => conn.list('ws'),
      [],
    ],
    [
      'the same folder announced again and again in a folder download',
      treeScenario((reply) => every(reply, 50, () => reply.message({ type: 'dir', path: 'same' }))),
      (conn, world) => download(conn, 'ws/d', world.ws),
      ['ws/d*'],
    ],
    [
      'real progress, one file byte at a time (the overall deadline)',
      (req, reply) => {
        if (req.type === 'stat') reply.message({ type: 'entry', entry: { name: 'f.txt', type: 'file', size: big, mtimeMs: MTIME } });
        else {
          reply.message({ type: 'file', path: req.path, size: big, mtimeMs: MTIME, offset: 0 });
          every(reply, 50, () => reply.data(Buffer.from('z')));
        }
      },
      (conn, world) => download(conn, 'ws/f.txt', world.ws),
      ['ws/.f.txt.*'],
    ],
    [
      'a listing dripped one entry at a time (the overall deadline)',
      (_, reply) => {
        let i = 0;
        every(reply, 50, () => reply.message({ type: 'entries', entries: [{ name: `e${i++}`, type: 'file', size: 1, mtimeMs: 1 }] }));
      },
      (conn) => conn.list('ws'),
      [],
    ],
    [
      'a folder download dripped one new empty file at a time (the overall deadline)',
      treeScenario((reply) => {
        let i = 0;
        every(reply, 50, () => sendFile(reply, `e${i++}.txt`, Buffer.alloc(0)));
      }),
      (conn, world) => download(conn, 'ws/d', world.ws),
      ['ws/d*'],
    ],
  ];
  for (const [name, scenario, action, mayChange] of cases) {
    it(`${name}: TIMEOUT within the deadline, nothing under the final name`, async () => {
      const run = await against(scenario, action, { limits, capMs: deadlineMs + SLACK_MS });
      assertTimedOut(run);
      assert.equal(existsSync(path.join(run.world.ws, 'f.txt')), false);
      assertOnlyChanged(run.before, await run.world.snapshot(), mayChange);
    });
  }

  // Found by the outside review of this round: a repeated skipped record counted as progress.
  it('the same skipped record again and again: PROTOCOL_ERROR at the second, at once', async () => {
    const run = await against(
      treeScenario((reply) => every(reply, 50, () => reply.message({ type: 'skipped', path: 'gone.txt', code: 'NOT_FOUND', message: 'x' }))),
      (conn, world) => download(conn, 'ws/d', world.ws),
      { limits, capMs: deadlineMs + SLACK_MS },
    );
    // Before, each repeat counted as progress and the download ran to its overall deadline (TIMEOUT).
    assertOutcome(run, 'PROTOCOL_ERROR');
  });

  it('a listing entry with a time outside any calendar (1e300): PROTOCOL_ERROR, not an internal error', async () => {
    const run = await against(
      (_, reply) => {
        reply.message({ type: 'entries', entries: [{ name: 'when', type: 'file', size: 1, mtimeMs: 1e300 }] });
        reply.message({ type: 'end', count: 1 });
      },
      (conn) => conn.list('ws'),
      { limits },
    );
    assertOutcome(run, 'PROTOCOL_ERROR');
  });

  it('a hello never answered (only zero-length frames come back): TIMEOUT within the hello deadline', async () => {
    const victim = await makePeer();
    const hostile = (await makePeer()).identity;
    const sockets = new Set<tls.TLSSocket>();
    const server = tls.createServer({ key: hostile.keyPem, cert: hostile.certPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' }, (socket) => {
      sockets.add(socket);
      socket.on('error', () => socket.destroy());
      const timer = setInterval(() => (socket.destroyed ? clearInterval(timer) : socket.write(ZERO_DATA)), 50);
      socket.on('close', () => clearInterval(timer));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const address = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const started = Date.now();
    let cap: NodeJS.Timeout | undefined;
    try {
      await assert.rejects(
        Promise.race([
          connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [address], expectedPeerId: hostile.peerId, name: 'victim', limits }),
          new Promise((_, reject) => (cap = setTimeout(() => reject(new Error('still waiting: a hang')), 600 + SLACK_MS))),
        ]),
        (err: { code?: string }) => err.code === 'TIMEOUT',
      );
      assert.ok(Date.now() - started < 600 + SLACK_MS);
    } finally {
      clearTimeout(cap);
      for (const s of sockets) s.destroy();
      server.close();
    }
  });
});
