import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { blockSizeFor } from '../../src/core/blocks';
import { chunkBytes, encodeChunks, type Chunk } from '../../src/core/cdc';
import { deltaFile, deltaFolder } from '../../src/core/delta';
import { MAX_INLINE_CHUNKS_FILE_BYTES, manifestOfBytes, parseShareRequest } from '../../src/core/v2/share-messages';
import { codeOf, type ReplierV2 } from '../hostile';
import { connectWithInvite, listTree, seededBytes, tempDir } from '../helpers';
import { assertOnlyChanged, buildWorld, snapshot } from './world';
import { attackKit } from './attack-kit';

/**
 * share.chunks `inline` (docs/protocol-v2.md 15.2 "Inline: a file of one chunk in one answer")
 * attacked from outside: a trusted peer against a real sharer (Share.readSmallFile), and a hostile
 * sharer against the requester (ChunksMachine, landInline via deltaFile / deltaFolder). Oracles:
 * the file system (snapshots), the bytes received, the codes, the sharer's event-loop delay.
 */

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const fileHashOf = (content: Buffer): string => manifestOfBytes(content, blockSizeFor(content.length)).fileHash.toString('hex');
const leftovers = async (dir: string): Promise<string[]> => (await listTree(dir)).filter((p) => /peershare-(part|sync)/.test(p));

const kit = attackKit();
const { cleanups, hostile, sharerOf } = kit;

/** An inline answer: header, then the list, then the bytes, each as `shape` says. */
async function sendInline(
  reply: ReplierV2,
  content: Buffer,
  o: { chunks?: Chunk[]; fileHash?: string; size?: number; mtimeMs?: number; bytes?: Buffer; shape?: 'frames' | 'one' | 'bytewise'; count?: number } = {},
): Promise<Record<string, unknown>> {
  const chunks = o.chunks ?? chunkBytes(content);
  const list = encodeChunks(chunks);
  const bytes = o.bytes ?? content;
  await reply.message({ type: 'chunks', size: o.size ?? content.length, mtimeMs: o.mtimeMs ?? 1000, fileHash: o.fileHash ?? fileHashOf(content), count: o.count ?? chunks.length, inline: true });
  if (o.shape === 'one') await reply.data(Buffer.concat([list, bytes]));
  else if (o.shape === 'bytewise') for (const b of Buffer.concat([list, bytes])) await reply.data(Buffer.from([b]));
  else {
    if (list.length > 0) await reply.data(list);
    if (bytes.length > 0) await reply.data(bytes);
  }
  return {};
}

describe('a trusted peer asks a real sharer for inline files', () => {
  it('"inline" other than true is refused by the parser (PROTOCOL_ERROR); true and absent pass', () => {
    const limits = { maxReadRanges: 64 };
    for (const bad of [false, 1, 0, 'true', null, {}, [], [true]]) {
      assert.throws(() => parseShareRequest({ type: 'share.chunks', path: 'ws/a', inline: bad } as never, limits), (err: { code?: string }) => err.code === 'PROTOCOL_ERROR', `inline: ${JSON.stringify(bad)}`);
    }
    assert.deepEqual(parseShareRequest({ type: 'share.chunks', path: 'ws/a', inline: true } as never, limits), { type: 'share.chunks', path: 'ws/a', inline: true });
    assert.deepEqual(parseShareRequest({ type: 'share.chunks', path: 'ws/a' } as never, limits), { type: 'share.chunks', path: 'ws/a' });
  });

  it('nested private hard links, symlinked files inside the share, FIFOs and sockets deep down: inline answers as without, never blocks, no secret leaves', async () => {
    const world = await buildWorld(async (base) => {
      const ws = path.join(base, 'ws');
      await fs.mkdir(path.join(ws, 'd', 'e'), { recursive: true });
      await fs.link(path.join(ws, 'home', 'key.pem'), path.join(ws, 'd', 'e', 'k.txt'));
      await fs.symlink('../../README.md', path.join(ws, 'd', 'e', 'readme-link'));
      await fs.symlink('e', path.join(ws, 'd', 'elink'));
      await fs.symlink('../sub', path.join(ws, 'd', 'sublink'));
      execFileSync('mkfifo', [path.join(ws, 'd', 'e', 'fifo')]);
      execFileSync('python3', ['-c', `import socket;s=socket.socket(socket.AF_UNIX);s.bind(${JSON.stringify(path.join(ws, 'd', 'sock'))})`]);
    });
    const { conn } = await sharerOf([world.ws], {}, [world.home]);
    const targets = ['ws/d/e/k.txt', 'ws/d/e/readme-link', 'ws/d/elink/k.txt', 'ws/d/sublink/deep/note.txt', 'ws/d/e/fifo', 'ws/d/sock', 'ws/d/e', 'ws/d/e/fifo/x', 'ws/README.md/x', 'ws/home/trusted-peers.json', 'ws/.git/hooks/pre-commit', 'ws/sub/../.env', 'ws/sub/deep/../../.env'];
    const got: Record<string, [string | undefined, string | undefined]> = {};
    for (const target of targets) {
      let inlineCode: string | undefined;
      try {
        const answer = await conn.share.chunks(target, { inline: true, signal: AbortSignal.timeout(5000) });
        assert.ok(!answer.data?.toString('latin1').includes(world.secret), `${target}: a secret was sent`);
      } catch (err) {
        inlineCode = (err as { code?: string }).code;
      }
      got[target] = [await codeOf(conn.share.chunks(target, { signal: AbortSignal.timeout(5000) })), inlineCode];
    }
    for (const [target, [plain, inl]] of Object.entries(got)) {
      assert.equal(inl, plain, `${target}: inline ${inl}, without ${plain}`);
      assert.ok(inl !== undefined && inl !== 'TIMEOUT' && inl !== 'ABORTED', `${target}: ${inl}`);
    }
    assert.equal(got['ws/d/e/k.txt'][1], 'EXCLUDED');
    assert.equal((await conn.share.chunks('ws/README.md', { inline: true })).data?.toString(), 'hello from the share\n');
    assertOnlyChanged(world.initial, await world.snapshot(), []);
  });

  it('a folder swapped for a symlink to outside (and back) while inline requests run: no byte from outside, ever', async () => {
    const base = tempDir('peershare-inlineatk-');
    const ws = path.join(base, 'ws');
    const secret = `SECRET-${Date.now()}-inline-swap`;
    await fs.mkdir(path.join(base, 'outside', 'd'), { recursive: true });
    await fs.writeFile(path.join(base, 'outside', 'd', 'f.txt'), secret);
    await fs.mkdir(path.join(ws, 'd'), { recursive: true });
    await fs.writeFile(path.join(ws, 'd', 'f.txt'), 'inside\n');
    await fs.mkdir(path.join(ws, 'a', 'b'), { recursive: true });
    await fs.writeFile(path.join(ws, 'a', 'b', 'f.txt'), 'inside\n');
    const { conn } = await sharerOf([ws]);
    let stop = false;
    const swapper = (async () => {
      while (!stop) {
        // Two folders on the way, swapped in turn: the last and a middle component.
        await fs.rename(path.join(ws, 'd'), path.join(ws, 'd.real')).catch(() => undefined);
        await fs.symlink('../outside/d', path.join(ws, 'd')).catch(() => undefined);
        await fs.rename(path.join(ws, 'a'), path.join(ws, 'a.real')).catch(() => undefined);
        await fs.symlink('../outside', path.join(ws, 'a')).catch(() => undefined);
        await fs.symlink('d', path.join(base, 'outside', 'b')).catch(() => undefined);
        await sleep(0);
        await fs.unlink(path.join(ws, 'd')).catch(() => undefined);
        await fs.rename(path.join(ws, 'd.real'), path.join(ws, 'd')).catch(() => undefined);
        await fs.unlink(path.join(ws, 'a')).catch(() => undefined);
        await fs.rename(path.join(ws, 'a.real'), path.join(ws, 'a')).catch(() => undefined);
      }
    })();
    const codes = new Map<string, number>();
    let served = 0;
    try {
      for (let round = 0; round < 150; round++) {
        await Promise.all(
          ['ws/d/f.txt', 'ws/a/b/f.txt'].map(async (p) => {
            try {
              const answer = await conn.share.chunks(p, { inline: true });
              assert.ok(answer.data, `${p}: a small file came inline`);
              assert.equal(answer.data.toString(), 'inside\n', `${p}: only the inside file's bytes`);
              served++;
            } catch (err) {
              const code = (err as { code?: string }).code ?? String(err);
              if (code === 'ERR_ASSERTION') throw err;
              codes.set(code, (codes.get(code) ?? 0) + 1);
            }
          }),
        );
      }
    } finally {
      stop = true;
      await swapper;
    }
    for (const code of codes.keys()) assert.ok(['NOT_FOUND', 'OUTSIDE_SHARE', 'FILE_CHANGED', 'NOT_A_FILE'].includes(code), `unexpected ${code}`);
    assert.ok(served > 0 && codes.size > 0, `both sides of the race were seen (${served} served, ${JSON.stringify([...codes])})`);
  });

  it('a file swapped in turn for a device node (/dev/zero\'s), a FIFO and a symlink to /dev/zero while inline requests run: never a byte of them, never blocked', async () => {
    const proj = path.join(tempDir('peershare-inlineatk-'), 'proj');
    await fs.mkdir(path.join(proj, 'd'), { recursive: true });
    const f = path.join(proj, 'd', 'f.txt');
    await fs.writeFile(path.join(proj, 'real.txt'), 'real\n');
    await fs.copyFile(path.join(proj, 'real.txt'), f);
    let device = true;
    try {
      execFileSync('mknod', [path.join(proj, 'zero'), 'c', '1', '5'], { stdio: 'ignore' });
    } catch {
      device = false; // not root: the FIFO and the link still run
    }
    execFileSync('mkfifo', [path.join(proj, 'fifo')]);
    await fs.symlink('/dev/zero', path.join(proj, 'zlink'));
    const { conn } = await sharerOf([proj]);
    let stop = false;
    const swapper = (async () => {
      for (let i = 0; !stop; i++) {
        const spare = ['zero', 'fifo', 'zlink'][i % 3];
        if (spare === 'zero' && !device) continue;
        // Renames only, each atomic: the name is always something.
        await fs.copyFile(path.join(proj, 'real.txt'), path.join(proj, 'next.txt'));
        await fs.rename(path.join(proj, spare), f).catch(() => undefined);
        await sleep(0);
        await fs.rename(f, path.join(proj, spare)).catch(() => undefined);
        await fs.rename(path.join(proj, 'next.txt'), f).catch(() => undefined);
        // Now and then the regular file stays a while: only a file that has settled comes inline.
        if (i % 10 === 9) await sleep(80);
      }
    })();
    const codes = new Map<string, number>();
    let served = 0;
    try {
      for (let round = 0; round < 300; round++) {
        const answer = await Promise.race([conn.share.chunks('proj/d/f.txt', { inline: true, signal: AbortSignal.timeout(5000) }).catch((err: { code?: string }) => err.code ?? String(err)), sleep(6000).then(() => 'BLOCKED')]);
        if (typeof answer === 'string') codes.set(answer, (codes.get(answer) ?? 0) + 1);
        else if (answer.data) {
          assert.equal(answer.data.toString(), 'real\n', 'only the regular file\'s bytes');
          served++;
        } else assert.equal(answer.size, 'real\n'.length, 'a list (the file was just renamed in) is of the regular file');
      }
    } finally {
      stop = true;
      await swapper;
    }
    for (const code of codes.keys()) assert.ok(['NOT_FOUND', 'OUTSIDE_SHARE', 'FILE_CHANGED', 'NOT_A_FILE'].includes(code), `unexpected ${code}: ${JSON.stringify([...codes])}`);
    assert.ok(served > 0, JSON.stringify([...codes]));
  });

  it('a file that grows past 16 KiB, shrinks, or changes while inline requests run: every answer is one whole version, verified, and ≤ 16 KiB inline', async () => {
    const proj = path.join(tempDir('peershare-inlineatk-'), 'proj');
    await fs.mkdir(proj);
    const small = Buffer.alloc(1000, 0x61);
    const small2 = Buffer.alloc(1000, 0x62);
    const big = seededBytes(40_000, 91);
    // Empty too: the writer truncates before it writes, and the file is then empty and unchanging for a moment.
    const versions = [Buffer.alloc(0), small, small2, big, Buffer.alloc(MAX_INLINE_CHUNKS_FILE_BYTES, 0x63), Buffer.alloc(MAX_INLINE_CHUNKS_FILE_BYTES + 1, 0x64)];
    await fs.writeFile(path.join(proj, 'f.txt'), small);
    const { conn } = await sharerOf([proj]);
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        // Rewritten in place (truncate then write): the reader may see any mix in between.
        const fh = await fs.open(path.join(proj, 'f.txt'), 'r+');
        await fh.truncate(0);
        const v = versions[1 + (i % (versions.length - 1))];
        await fh.write(v, 0, v.length, 0);
        await fh.close();
        // Now and then the file stays a while: only a file that has settled comes inline. Every
        // 7th write, so the pauses fall on each version in turn (every 10th fell always on the
        // 16 KiB + 1 one, never inline: the test passed only on a machine slow enough to pause
        // the writer by itself).
        await sleep(i % 7 === 6 ? 80 : 0);
      }
    })();
    const seen = { inline: 0, listed: 0, changed: 0 };
    try {
      for (let round = 0; round < 400; round++) {
        try {
          const answer = await conn.share.chunks('proj/f.txt', { inline: true });
          if (answer.data) {
            seen.inline++;
            assert.ok(answer.data.length <= MAX_INLINE_CHUNKS_FILE_BYTES);
            assert.equal(fileHashOf(answer.data), answer.fileHash.toString('hex'), 'the fileHash is of the bytes sent');
            assert.ok(versions.some((v) => v.equals(answer.data!)), `one whole version (${answer.data.length} bytes)`);
          } else seen.listed++;
        } catch (err) {
          if ((err as { code?: string }).code !== 'FILE_CHANGED' && (err as { code?: string }).code !== 'TOO_LARGE') throw err;
          seen.changed++;
        }
      }
    } finally {
      stop = true;
      await writer;
    }
    assert.ok(seen.inline > 0, JSON.stringify(seen));
  });

  it('a file rewritten in place (same size) while inline requests run: no answer is a mix of two versions (round 9: a torn read passed the before/after fstat within one clock tick; now a file is read inline only once its last change is a tick old), and once the writes stop it comes inline whole', async () => {
    const proj = path.join(tempDir('peershare-inlineatk-'), 'proj');
    await fs.mkdir(proj);
    const size = MAX_INLINE_CHUNKS_FILE_BYTES;
    const file = path.join(proj, 'f.bin');
    await fs.writeFile(file, Buffer.alloc(size, 0x41));
    const { conn } = await sharerOf([proj]);
    // Another process (an editor saving in place, a 4 KiB page at a time): A's then B's, in a tight loop.
    const writer = spawn('python3', ['-c', `import os\nfd=os.open(${JSON.stringify(file)},os.O_WRONLY)\nbufs=[b'A'*4096,b'B'*4096]\ni=0\nwhile True:\n  for p in range(0,${size},4096): os.pwrite(fd,bufs[i&1],p)\n  i+=1`], { stdio: 'ignore' });
    cleanups.push(() => void writer.kill());
    await sleep(100);
    const seen = { whole: 0, listed: 0, changed: 0, torn: 0 };
    const ask = async (): Promise<void> => {
      try {
        const answer = await conn.share.chunks('proj/f.bin', { inline: true });
        if (!answer.data) {
          seen.listed++; // still being written: the list alone, the chunks read apart
          return;
        }
        const data = answer.data;
        assert.equal(data.length, size);
        // The sharer's own fileHash is of what it read: the requester cannot tell.
        assert.equal(fileHashOf(data), answer.fileHash.toString('hex'));
        if (data.every((b) => b === data[0])) seen.whole++;
        else seen.torn++;
      } catch (err) {
        if ((err as { code?: string }).code !== 'FILE_CHANGED') throw err;
        seen.changed++;
      }
    };
    try {
      // Against the code before the fix, a torn answer came within about 2,000 requests (a second or so).
      for (const until = Date.now() + 8000; Date.now() < until && seen.torn === 0; ) await Promise.all(Array.from({ length: 4 }, ask));
    } finally {
      writer.kill();
    }
    process.stdout.write(`# seen ${JSON.stringify(seen)}\n`);
    assert.equal(seen.torn, 0, `answers that are no version of the file, each with a valid fileHash: ${JSON.stringify(seen)}`);
    // The writes stopped (the writer may have been stopped between pages: that mix is then the
    // file's real last version): the file settles and comes inline, as it is on disk.
    await new Promise((resolve) => (writer.exitCode !== null || writer.signalCode !== null ? resolve(undefined) : writer.once('exit', resolve)));
    await sleep(100);
    const settled = await conn.share.chunks('proj/f.bin', { inline: true });
    assert.ok(settled.data?.equals(await fs.readFile(file)), 'the settled file came inline, as it is');
  });

  it('an inline answer names the same version as the plain answer and share.manifest (size, fileHash, chunks), at 0, 1 and 16 KiB bytes', async () => {
    const proj = path.join(tempDir('peershare-inlineatk-'), 'proj');
    await fs.mkdir(proj);
    const sizes = [0, 1, 4095, 4096, 4097, MAX_INLINE_CHUNKS_FILE_BYTES];
    for (const size of sizes) await fs.writeFile(path.join(proj, `f${size}`), seededBytes(size, size + 1));
    const { conn } = await sharerOf([proj]);
    for (const size of sizes) {
      const p = `proj/f${size}`;
      const inl = await conn.share.chunks(p, { inline: true });
      const plain = await conn.share.chunks(p);
      const manifest = await conn.share.manifest(p);
      assert.ok(inl.data?.equals(seededBytes(size, size + 1)), `${size}: inline`);
      assert.equal(plain.data, undefined, `${size}: not inline unasked`);
      assert.deepEqual([inl.size, inl.mtimeMs, inl.fileHash.toString('hex'), inl.chunks], [plain.size, plain.mtimeMs, plain.fileHash.toString('hex'), plain.chunks], `${size}`);
      assert.equal(inl.fileHash.toString('hex'), manifest.manifest.fileHash.toString('hex'), `${size}: the block cache's fileHash`);
    }
  });

  it('a flood of inline requests over several connections does not hold the sharer\'s event loop (max delay < 250 ms)', async () => {
    const proj = path.join(tempDir('peershare-inlineatk-'), 'proj');
    await fs.mkdir(path.join(proj, 'a', 'b', 'c', 'd', 'e'), { recursive: true });
    for (let i = 0; i < 200; i++) await fs.writeFile(path.join(proj, 'a', 'b', 'c', 'd', 'e', `f${i}.txt`), seededBytes(MAX_INLINE_CHUNKS_FILE_BYTES, i));
    const { sharer, conn } = await sharerOf([proj]);
    const conns = [conn];
    for (let i = 0; i < 3; i++) {
      const extra = await connectWithInvite(sharer.invite);
      cleanups.push(() => extra.conn.close());
      conns.push(extra.conn);
    }
    const h = monitorEventLoopDelay({ resolution: 10 });
    h.enable();
    const started = Date.now();
    let bytes = 0;
    await Promise.all(
      conns.map(async (c) => {
        for (let round = 0; round < 5; round++) {
          const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => c.share.chunks(`proj/a/b/c/d/e/f${i}.txt`, { inline: true }).catch(() => undefined)));
          for (const a of answers) bytes += a?.data?.length ?? 0;
        }
      }),
    );
    h.disable();
    const maxMs = h.max / 1e6;
    assert.ok(bytes === 4 * 5 * 200 * MAX_INLINE_CHUNKS_FILE_BYTES, `every request was answered inline (${bytes} bytes)`);
    assert.ok(maxMs < 250, `max event-loop delay ${maxMs.toFixed(1)} ms over ${Date.now() - started} ms (both sides in this process)`);
  });
});

describe('a hostile sharer answers inline; the requester is the victim', () => {
  const content = Buffer.from('the sharer\'s small file\n');
  const old = Buffer.from('the local copy, old\n');

  it('bounds: inline unasked, over 16 KiB, too many or too few bytes, a lying fileHash, a bad mtimeMs are refused; the target is untouched and no temporary file is left', async () => {
    const big = seededBytes(MAX_INLINE_CHUNKS_FILE_BYTES + 1, 92);
    const cases: Record<string, [(reply: ReplierV2) => Promise<Record<string, unknown>>, string[]]> = {
      'over 16 KiB': [(r) => sendInline(r, big), ['PROTOCOL_ERROR']],
      'more bytes than size': [(r) => sendInline(r, content, { bytes: Buffer.concat([content, Buffer.from('X')]) }), ['PROTOCOL_ERROR']],
      'fewer bytes than size': [(r) => sendInline(r, content, { bytes: content.subarray(1) }), ['PROTOCOL_ERROR', 'HASH_MISMATCH']],
      'bytes not the list': [(r) => sendInline(r, content, { bytes: Buffer.from(content.toString().toUpperCase()) }), ['HASH_MISMATCH']],
      'list true, fileHash a lie': [(r) => sendInline(r, content, { fileHash: fileHashOf(old) }), ['HASH_MISMATCH']],
      'mtimeMs 1e16': [(r) => sendInline(r, content, { mtimeMs: 1e16 }), ['PROTOCOL_ERROR']],
      'mtimeMs -1e16': [(r) => sendInline(r, content, { mtimeMs: -1e16 }), ['PROTOCOL_ERROR']],
      'mtimeMs a string': [(r) => sendInline(r, content, { mtimeMs: '1000' as never }), ['PROTOCOL_ERROR']],
      'count 0 with bytes': [(r) => sendInline(r, content, { chunks: [], count: 0 }), ['PROTOCOL_ERROR']],
      'size 0 with bytes': [(r) => sendInline(r, Buffer.alloc(0), { bytes: content, chunks: [] }), ['PROTOCOL_ERROR']],
      'two chunks with a gap': [(r) => sendInline(r, content, { chunks: [chunkBytes(content.subarray(0, 5))[0], { ...chunkBytes(content.subarray(6))[0], offset: 6 }] }), ['PROTOCOL_ERROR', 'HASH_MISMATCH']],
    };
    for (const [name, [answer, codes]] of Object.entries(cases)) {
      const { conn } = await hostile(async (req, reply) => (req.type === 'share.chunks' ? answer(reply) : undefined));
      const dest = tempDir('peershare-inlineatk-');
      const target = path.join(dest, 'f.txt');
      await fs.writeFile(target, old);
      const before = await snapshot(dest);
      const code = await codeOf(deltaFile(conn, 'ws/f.txt', target, target, { overwrite: true }));
      assert.ok(code !== undefined && codes.includes(code), `${name}: ${code}`);
      assertOnlyChanged(before, await snapshot(dest), []);
      assert.deepEqual(await leftovers(dest), [], `${name}: no temporary file`);
    }
    // Not asked for: the plain request gets an inline answer.
    const { conn } = await hostile(async (req, reply) => (req.type === 'share.chunks' ? sendInline(reply, content) : undefined));
    assert.equal(await codeOf(conn.share.chunks('ws/f.txt')), 'PROTOCOL_ERROR', 'inline when not asked');
  });

  it('odd framings (a byte a frame; list and bytes in one frame), size 0, and the extreme times in range land the sharer\'s bytes whole', async () => {
    const cases: Record<string, [(reply: ReplierV2) => Promise<Record<string, unknown>>, Buffer]> = {
      bytewise: [(r) => sendInline(r, content, { shape: 'bytewise' }), content],
      'one frame': [(r) => sendInline(r, content, { shape: 'one' }), content],
      'size 0, count 0': [(r) => sendInline(r, Buffer.alloc(0)), Buffer.alloc(0)],
      'mtimeMs 8.64e15': [(r) => sendInline(r, content, { mtimeMs: 8.64e15 }), content],
      'mtimeMs -8.64e15': [(r) => sendInline(r, content, { mtimeMs: -8.64e15 }), content],
      'mtimeMs 1.5': [(r) => sendInline(r, content, { mtimeMs: 1.5 }), content],
    };
    for (const [name, [answer, expected]] of Object.entries(cases)) {
      const { conn } = await hostile(async (req, reply) => (req.type === 'share.chunks' ? answer(reply) : undefined));
      const dest = tempDir('peershare-inlineatk-');
      const target = path.join(dest, 'f.txt');
      await fs.writeFile(target, old);
      const code = await codeOf(deltaFile(conn, 'ws/f.txt', target, target, { overwrite: true }));
      assert.equal(code, undefined, `${name}: ${code}`);
      assert.ok((await fs.readFile(target)).equals(expected), `${name}: the sharer's bytes`);
      assert.deepEqual(await listTree(dest), ['f.txt'], `${name}: no temporary file`);
    }
  });

  it('a local copy that is a hard link or a symlink to a file outside dest: the file outside is never written or touched', async () => {
    for (const same of [true, false]) {
      for (const kind of ['hard', 'sym'] as const) {
        const { conn } = await hostile(async (req, reply) => (req.type === 'share.chunks' ? sendInline(reply, content, { mtimeMs: 5000 }) : undefined));
        const base = tempDir('peershare-inlineatk-');
        const dest = path.join(base, 'dest');
        await fs.mkdir(dest);
        await fs.writeFile(path.join(base, 'outside.txt'), same ? content : old);
        if (kind === 'hard') await fs.link(path.join(base, 'outside.txt'), path.join(dest, 'f.txt'));
        else await fs.symlink('../outside.txt', path.join(dest, 'f.txt'));
        const before = await snapshot(base);
        const outsideBefore = await fs.stat(path.join(base, 'outside.txt'), { bigint: true });
        const target = path.join(dest, 'f.txt');
        const code = await codeOf(deltaFile(conn, 'ws/f.txt', target, target, { overwrite: true }));
        const label = `${kind} link, ${same ? 'same' : 'other'} bytes`;
        if (kind === 'sym') assert.equal(code, 'BAD_NAME', label);
        else assert.equal(code, undefined, label);
        // outside.txt losing a name moves its ctime (the kernel's) and nothing else of it.
        assertOnlyChanged(before, await snapshot(base), kind === 'hard' ? ['dest', 'dest/f.txt', 'outside.txt'] : []);
        const outsideAfter = await fs.stat(path.join(base, 'outside.txt'), { bigint: true });
        assert.deepEqual([outsideAfter.ino, outsideAfter.size, outsideAfter.mtimeNs], [outsideBefore.ino, outsideBefore.size, outsideBefore.mtimeNs], label);
        assert.ok((await fs.readFile(path.join(base, 'outside.txt'))).equals(same ? content : old), `${label}: the file outside holds what it held`);
        if (kind === 'hard') assert.ok((await fs.readFile(target)).equals(content), `${label}: the name has the new bytes`);
        assert.deepEqual(await leftovers(base), [], label);
      }
    }
  });

  it('the target replaced by a symlink to outside, or by a FIFO, while the inline answer travels: nothing outside changes, nothing blocks, no temporary file', async () => {
    for (const swap of ['symlink', 'fifo', 'folder'] as const) {
      let release!: () => void;
      const asked = new Promise<void>((resolve) => (release = resolve));
      let go!: () => void;
      const proceed = new Promise<void>((resolve) => (go = resolve));
      const { conn } = await hostile(async (req, reply) => {
        if (req.type !== 'share.chunks') return undefined;
        release();
        await proceed;
        return sendInline(reply, content);
      });
      const base = tempDir('peershare-inlineatk-');
      const dest = path.join(base, 'dest');
      await fs.mkdir(dest);
      await fs.writeFile(path.join(base, 'outside.txt'), old);
      const target = path.join(dest, 'f.txt');
      await fs.writeFile(target, old);
      const running = codeOf(deltaFile(conn, 'ws/f.txt', target, target, { overwrite: true }));
      await asked;
      await fs.unlink(target);
      if (swap === 'symlink') await fs.symlink('../outside.txt', target);
      else if (swap === 'fifo') execFileSync('mkfifo', [target]);
      else {
        await fs.mkdir(target);
        await fs.writeFile(path.join(target, 'inner.txt'), old);
      }
      const before = await snapshot(base);
      go();
      const code = await Promise.race([running, sleep(10_000).then(() => 'BLOCKED')]);
      assert.notEqual(code, 'BLOCKED', swap);
      assertOnlyChanged(before, await snapshot(base), swap === 'folder' ? [] : ['dest', 'dest/f.txt']);
      const st = await fs.lstat(target);
      assert.ok(!st.isFile() || (await fs.readFile(target)).equals(content), `${swap}: the name is the link/FIFO as it was, or the new file whole (${code})`);
      assert.deepEqual(await leftovers(base), [], swap);
    }
  });

  it('deltaFolder against lying inline answers: every file is left alone or failed, old copies untouched, no temporary file left', async () => {
    const names = ['lie.txt', 'short.txt', 'big.txt', 'ok.txt'];
    const { conn } = await hostile(async (req, reply) => {
      if (req.type === 'share.list') {
        await reply.message({ type: 'entries', entries: names.map((name) => ({ name, type: 'file', size: content.length, mtimeMs: 1000 })) });
        return { count: names.length };
      }
      if (req.type !== 'share.chunks') return undefined;
      const name = path.basename(String(req.path));
      if (name === 'lie.txt') return sendInline(reply, content, { fileHash: fileHashOf(old) });
      if (name === 'short.txt') return sendInline(reply, content, { bytes: content.subarray(3) });
      if (name === 'big.txt') return sendInline(reply, seededBytes(MAX_INLINE_CHUNKS_FILE_BYTES + 10, 93));
      return sendInline(reply, content);
    });
    const mirror = path.join(tempDir('peershare-inlineatk-'), 'mirror');
    await fs.mkdir(mirror);
    for (const name of names) await fs.writeFile(path.join(mirror, name), old);
    const before = await snapshot(mirror);
    await codeOf(deltaFolder(conn, 'ws', mirror, { overwrite: true }));
    assertOnlyChanged(before, await snapshot(mirror), ['ok.txt']);
    assert.deepEqual(await leftovers(mirror), []);
  });
});
