import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BLOCK_CACHE_DIR, PeerShareError, RACY_TIMESTAMP_MS, download, downloadFile, type DownloadResult, type PeerConnection } from '../../src/core';
import { connectWithInvite, listTree, rejectsWithCode, startSharer, tempDir, writeRandomFile, type Sharer } from '../helpers';

async function sha256File(file: string): Promise<string> {
  return createHash('sha256').update(await fs.readFile(file)).digest('hex');
}

describe('downloads over a real connection', () => {
  let ws: string;
  let sharer: Sharer;
  let conn: PeerConnection;

  before(async () => {
    ws = path.join(tempDir(), 'ws');
    await fs.mkdir(ws);
    sharer = await startSharer([ws]);
    ({ conn } = await connectWithInvite(sharer.invite));
  });

  after(async () => {
    conn.close();
    await sharer.server.close();
  });

  for (const size of [0, 1, 65_535, 65_536, 65_537, 1024 * 1024 + 3]) {
    it(`round-trips a random file of ${size} B byte for byte`, async () => {
      const data = await writeRandomFile(path.join(ws, `f${size}.bin`), size);
      const dest = tempDir();
      const result = await download(conn, `ws/f${size}.bin`, dest);
      assert.equal(result.target, path.join(dest, `f${size}.bin`));
      assert.deepEqual(await fs.readFile(result.target), data);
      assert.deepEqual(await fs.readdir(dest), [`f${size}.bin`], 'no temporary file is left behind');
    });
  }

  it('round-trips a random file of 100 MiB with memory that does not grow with it', async () => {
    const file = path.join(ws, 'big.bin');
    await writeRandomFile(file, 100 * 1024 * 1024);
    const expected = await sha256File(file);
    const dest = tempDir();
    const rssBefore = process.memoryUsage().rss;
    let peakRss = rssBefore;
    const result = await download(conn, 'ws/big.bin', dest, {
      onProgress: () => {
        peakRss = Math.max(peakRss, process.memoryUsage().rss);
      },
    });
    assert.equal(await sha256File(result.target), expected);
    assert.equal(result.bytes, 100 * 1024 * 1024);
    // Sender and receiver share this process; a whole-file buffer would add 100 MiB at least.
    assert.ok(peakRss - rssBefore < 64 * 1024 * 1024, `RSS grew by ${((peakRss - rssBefore) / 1048576).toFixed(1)} MiB`);
    await fs.rm(file);
  });

  it('round-trips a nested folder, empty folders and files included', async () => {
    const tree = path.join(ws, 'tree');
    const files: Record<string, Buffer> = {};
    for (const rel of ['a.txt', 'b/c.bin', 'b/d/e.bin', 'b/d/f/g h.txt', 'ünïcödé/名前.txt', 'z/empty.txt']) {
      files[rel] = await writeRandomFile(path.join(tree, rel), rel === 'z/empty.txt' ? 0 : 1 + Math.floor(Math.random() * 200_000));
    }
    await fs.mkdir(path.join(tree, 'empty-dir', 'deeper'), { recursive: true });
    const dest = tempDir();
    const result = await download(conn, 'ws/tree', dest);
    assert.equal(result.type, 'dir');
    assert.equal(result.files, 6);
    for (const [rel, data] of Object.entries(files)) assert.deepEqual(await fs.readFile(path.join(dest, 'tree', rel)), data, rel);
    assert.deepEqual(await listTree(path.join(dest, 'tree')), [
      'a.txt', 'b/', 'b/c.bin', 'b/d/', 'b/d/e.bin', 'b/d/f/', 'b/d/f/g h.txt', 'empty-dir/', 'empty-dir/deeper/', 'z/', 'z/empty.txt', 'ünïcödé/', 'ünïcödé/名前.txt',
    ]);
  });

  it('downloads an honest folder holding names that may not be written here, leaving just those out and saying so', async () => {
    const proj = path.join(ws, 'proj');
    const files = ['.vscode/settings.json', '.vscode/tasks.json', 'notes~2.txt', 'report\u00a0final.txt', 'README', 'readme', 'src/app.ts'];
    for (const rel of files) await writeRandomFile(path.join(proj, rel), 100);
    const dest = tempDir();
    const result = await download(conn, 'ws/proj', dest);
    assert.deepEqual(
      result.leftOut.map((l) => l.path).sort(),
      ['.vscode', 'notes~2.txt', 'readme', 'report\\u00a0final.txt'].sort(),
      'each left out once, a folder for all it holds',
    );
    assert.equal(result.leftOutCount, 4);
    assert.equal(result.files, 2);
    assert.deepEqual(await listTree(path.join(dest, 'proj')), ['README', 'src/', 'src/app.ts']);
  });

  it('round-trips a folder mixing whole-sent small files and streamed large ones, in order', async () => {
    const tree = path.join(ws, 'mixed');
    const files: Record<string, Buffer> = {};
    // Around the small-file limit (256 KiB), an empty file, and one large file between small ones.
    const sizes = [0, 1, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 3 * 1024 * 1024 + 7, 12, 70_000];
    for (const [i, size] of sizes.entries()) files[`d${i % 3}/f${i}.bin`] = await writeRandomFile(path.join(tree, `d${i % 3}`, `f${i}.bin`), size);
    for (let i = 0; i < 300; i++) files[`many/${String(i).padStart(3, '0')}.txt`] = await writeRandomFile(path.join(tree, 'many', `${String(i).padStart(3, '0')}.txt`), 1 + (i % 9) * 500);
    const dest = tempDir();
    const result = await download(conn, 'ws/mixed', dest);
    assert.equal(result.files, Object.keys(files).length);
    assert.equal(result.bytes, Object.values(files).reduce((n, b) => n + b.length, 0));
    for (const [rel, data] of Object.entries(files)) assert.deepEqual(await fs.readFile(path.join(dest, 'mixed', rel)), data, rel);
    const leftovers = (await listTree(path.join(dest, 'mixed'))).filter((name) => name.includes('peershare-part'));
    assert.deepEqual(leftovers, []);
  });

  it('hashes a file once for many downloads, and never serves a stale hash for a changed file', async () => {
    const file = path.join(ws, 'cached.bin');
    await writeRandomFile(file, 2 * 1024 * 1024);
    // Past the racy window (block-cache.ts): a file changed within it is hashed but not kept.
    await new Promise((resolve) => setTimeout(resolve, RACY_TIMESTAMP_MS + 200));
    const cacheDir = path.join(await fs.realpath(sharer.home), BLOCK_CACHE_DIR);
    const entries = async (): Promise<number> => (await fs.readdir(cacheDir).catch(() => [])).length;
    const cacheBefore = await entries();
    const first = await download(conn, 'ws/cached.bin', tempDir());
    assert.equal(await entries(), cacheBefore + 1, 'its block list is kept on disk');
    await download(conn, 'ws/cached.bin', tempDir());
    assert.equal(await entries(), cacheBefore + 1, 'a second download uses the same entry');
    assert.equal(await sha256File(first.target), await sha256File(file));
    // Same size, same mtime, new bytes: only the ctime tells, and that is enough.
    const { mtime } = await fs.stat(file);
    const changed = await writeRandomFile(file, 2 * 1024 * 1024);
    await fs.utimes(file, mtime, mtime);
    const second = await download(conn, 'ws/cached.bin', tempDir());
    assert.deepEqual(await fs.readFile(second.target), changed);
  });

  it('keeps the modification time of downloaded files', async () => {
    const file = path.join(ws, 'dated.txt');
    await fs.writeFile(file, 'x');
    const when = new Date('2024-02-03T04:05:06Z');
    await fs.utimes(file, when, when);
    const result = await download(conn, 'ws/dated.txt', tempDir());
    assert.equal((await fs.stat(result.target)).mtime.getTime(), when.getTime());
  });

  it('never overwrites an existing file unless told to', async () => {
    await fs.writeFile(path.join(ws, 'conflict.txt'), 'new');
    const dest = tempDir();
    const target = path.join(dest, 'conflict.txt');
    await fs.writeFile(target, 'mine');
    await rejectsWithCode(download(conn, 'ws/conflict.txt', dest), 'DEST_EXISTS');
    assert.equal(await fs.readFile(target, 'utf8'), 'mine');
    assert.deepEqual(await fs.readdir(dest), ['conflict.txt']);

    const skipped = await download(conn, 'ws/conflict.txt', dest, { onConflict: 'skip' });
    assert.deepEqual(skipped.skippedExisting, [target]);
    assert.equal(await fs.readFile(target, 'utf8'), 'mine');

    const both = await download(conn, 'ws/conflict.txt', dest, { onConflict: 'keepBoth' });
    assert.equal(both.target, path.join(dest, 'conflict (2).txt'));
    assert.equal(await fs.readFile(both.target, 'utf8'), 'new');
    assert.equal(await fs.readFile(target, 'utf8'), 'mine');

    await download(conn, 'ws/conflict.txt', dest, { onConflict: 'overwrite' });
    assert.equal(await fs.readFile(target, 'utf8'), 'new');
  });

  it('leaves existing files in a downloaded folder alone by default, and asks per file when given a callback', async () => {
    await writeRandomFile(path.join(ws, 'merge', 'one.txt'), 10);
    await writeRandomFile(path.join(ws, 'merge', 'two.txt'), 10);
    const dest = tempDir();
    await fs.mkdir(path.join(dest, 'merge'));
    await fs.writeFile(path.join(dest, 'merge', 'one.txt'), 'mine');
    const first = await download(conn, 'ws/merge', dest);
    assert.equal(first.files, 1);
    assert.deepEqual(first.skippedExisting, [path.join(dest, 'merge', 'one.txt')]);
    assert.equal(await fs.readFile(path.join(dest, 'merge', 'one.txt'), 'utf8'), 'mine');

    const asked: string[] = [];
    const second = await download(conn, 'ws/merge', dest, {
      onConflict: async (target) => {
        asked.push(path.basename(target));
        return 'overwrite' as const;
      },
    });
    assert.deepEqual(asked.sort(), ['one.txt', 'two.txt']);
    assert.equal(second.files, 2);
    assert.deepEqual(await fs.readFile(path.join(dest, 'merge', 'one.txt')), await fs.readFile(path.join(ws, 'merge', 'one.txt')));
  });

  it('resumes after the connection is cut halfway, sending only what was missing, and verifies end to end', async () => {
    const size = 24 * 1024 * 1024;
    const data = await writeRandomFile(path.join(ws, 'resume.bin'), size);
    const dest = tempDir();
    const target = path.join(dest, 'resume.bin');
    const { conn: first } = await connectWithInvite(sharer.invite);
    const sentBefore = sharer.server.stats.fileBytesSent;
    await rejectsWithCode(
      downloadFile(first, 'ws/resume.bin', target, {
        onProgress: (p) => {
          if (p.bytes >= size / 2) first.close(new PeerShareError('CONNECTION_CLOSED'));
        },
      }),
      'CONNECTION_CLOSED',
    );
    await assert.rejects(fs.stat(target), 'nothing under the final name after the cut');
    const partials = (await fs.readdir(dest)).filter((n) => n.endsWith('.peershare-part'));
    assert.equal(partials.length, 1);
    const firstSent = sharer.server.stats.fileBytesSent - sentBefore;

    const { conn: second } = await connectWithInvite(sharer.invite);
    const sentMid = sharer.server.stats.fileBytesSent;
    const result = await downloadFile(second, 'ws/resume.bin', target);
    second.close();
    const secondSent = sharer.server.stats.fileBytesSent - sentMid;
    // The partial file holds verified blocks (any set of them); the resume found at least half.
    const kept = result.resumedBytes;
    assert.ok(kept >= size / 2 && kept < size, `kept ${kept} bytes`);
    assert.equal(result.bytes, size - kept);
    assert.equal(secondSent, size - kept, 'the second run sends exactly the missing bytes');
    assert.ok(secondSent < size && secondSent <= firstSent + (size - firstSent));
    assert.deepEqual(await fs.readFile(target), data);
    assert.deepEqual(await fs.readdir(dest), ['resume.bin']);
  });

  it('starts over when the file changed since the partial download', async () => {
    const file = path.join(ws, 'changing.bin');
    await writeRandomFile(file, 4 * 1024 * 1024);
    const dest = tempDir();
    const target = path.join(dest, 'changing.bin');
    const { conn: first } = await connectWithInvite(sharer.invite);
    await rejectsWithCode(
      downloadFile(first, 'ws/changing.bin', target, {
        onProgress: (p) => {
          if (p.bytes > 1024 * 1024) first.close();
        },
      }),
      'CANCELLED',
    );
    const newer = await writeRandomFile(file, 3 * 1024 * 1024);
    const later = new Date(Date.now() + 5000);
    await fs.utimes(file, later, later);
    const result = await downloadFile(conn, 'ws/changing.bin', target);
    assert.equal(result.resumedBytes, 0);
    assert.deepEqual(await fs.readFile(target), newer);
    assert.deepEqual(await fs.readdir(dest), ['changing.bin'], 'the stale partial file is gone');
  });

  it('cancels with an AbortSignal, leaving nothing under the final name and no partial file when asked', async () => {
    await writeRandomFile(path.join(ws, 'cancel.bin'), 16 * 1024 * 1024);
    const dest = tempDir();
    const abort = new AbortController();
    const { conn: c } = await connectWithInvite(sharer.invite);
    await rejectsWithCode(
      downloadFile(c, 'ws/cancel.bin', path.join(dest, 'cancel.bin'), {
        signal: abort.signal,
        keepPartial: false,
        onProgress: (p) => {
          if (p.bytes > 1024 * 1024) abort.abort();
        },
      }),
      'CANCELLED',
    );
    assert.deepEqual(await fs.readdir(dest), []);
  });

  it('downloads in parallel over several connections', async () => {
    const datas = await Promise.all([0, 1, 2, 3].map((i) => writeRandomFile(path.join(ws, `par${i}.bin`), 2 * 1024 * 1024)));
    const dest = tempDir();
    const conns = await Promise.all([0, 1, 2, 3].map(() => connectWithInvite(sharer.invite)));
    await Promise.all(conns.map(({ conn: c }, i) => download(c, `ws/par${i}.bin`, dest)));
    for (const { conn: c } of conns) c.close();
    for (let i = 0; i < 4; i++) assert.deepEqual(await fs.readFile(path.join(dest, `par${i}.bin`)), datas[i]);
  });

  // Finding 11 of issue 16: the temporary name added 33 bytes, so final names of 223-255 bytes failed.
  const longNames: [string, string][] = [
    ['a'.repeat(223), '223 bytes (the shortest that failed)'],
    ['n'.repeat(255), '255 ASCII bytes'],
    [`${'é'.repeat(127)}x`, '255 bytes of two-byte characters'],
    ['€'.repeat(85), '255 bytes of three-byte characters'],
    [`${'a'.repeat(221)}😀${'b'.repeat(30)}`, '255 bytes with a four-byte character where the temporary name is cut'],
  ];
  for (const [i, [name, what]] of longNames.entries()) {
    it(`downloads a file whose name is ${what}: alone, and small and streamed inside a folder`, async () => {
      assert.ok(Buffer.byteLength(name) <= 255 && Buffer.byteLength(name) >= 223);
      const small = await writeRandomFile(path.join(ws, `long${i}`, name), 1000);
      const large = await writeRandomFile(path.join(ws, `long${i}`, 'sub', name), 600 * 1024);
      const dest = tempDir();
      const single = await download(conn, `ws/long${i}/${name}`, dest);
      assert.equal(single.target, path.join(dest, name));
      assert.deepEqual(await fs.readFile(single.target), small);
      const folder = await download(conn, `ws/long${i}`, dest);
      assert.equal(folder.files, 2);
      assert.deepEqual(await fs.readFile(path.join(dest, `long${i}`, name)), small);
      assert.deepEqual(await fs.readFile(path.join(dest, `long${i}`, 'sub', name)), large);
      assert.deepEqual(await listTree(dest), [name, `long${i}/`, `long${i}/${name}`, `long${i}/sub/`, `long${i}/sub/${name}`].sort(), 'no temporary file left');
      // "Keep both" names the copy "<name> (2)<ext>", shortening the name so the copy fits too.
      const copy = await download(conn, `ws/long${i}/${name}`, dest, { onConflict: 'keepBoth' });
      assert.notEqual(copy.target, single.target);
      assert.ok(Buffer.byteLength(path.basename(copy.target)) <= 255);
      assert.match(path.basename(copy.target), / \(2\)/);
      assert.deepEqual(await fs.readFile(copy.target), small);
    });
  }

  it('keeps the partial download of one long name while another long name that begins alike downloads, then resumes it', async () => {
    const [first, second] = ['A.bin', 'B.bin'].map((end) => `${'p'.repeat(250)}${end}`);
    const size = 8 * 1024 * 1024;
    const data = await writeRandomFile(path.join(ws, 'alike', first), size);
    await writeRandomFile(path.join(ws, 'alike', second), 1000);
    const dest = tempDir();
    const { conn: cut } = await connectWithInvite(sharer.invite);
    await rejectsWithCode(
      downloadFile(cut, `ws/alike/${first}`, path.join(dest, first), {
        onProgress: (p) => {
          if (p.bytes >= 1024 * 1024) cut.close(new PeerShareError('CONNECTION_CLOSED'));
        },
      }),
      'CONNECTION_CLOSED',
    );
    const partials = (await fs.readdir(dest)).filter((n) => n.endsWith('.peershare-part'));
    assert.equal(partials.length, 1);
    assert.ok(Buffer.byteLength(partials[0]) <= 255);
    await download(conn, `ws/alike/${second}`, dest);
    assert.deepEqual((await fs.readdir(dest)).filter((n) => n.endsWith('.peershare-part')), partials, 'the other name’s stale-partial cleanup left it alone');
    const resumed = await downloadFile(conn, `ws/alike/${first}`, path.join(dest, first));
    assert.ok(resumed.resumedBytes >= 1024 * 1024, `resumed after ${resumed.resumedBytes} bytes`);
    assert.deepEqual(await fs.readFile(path.join(dest, first)), data);
    assert.deepEqual((await fs.readdir(dest)).sort(), [first, second].sort());
  });

  it('takes a folder of exactly maxTreeFiles files and folders, and maxTreeDepth levels, from an honest sharer; one more of either is TOO_LARGE', async () => {
    // 3 folders and 7 files: 10 in all; the deepest file sits 3 folders down.
    const tree = path.join(ws, 'bounded');
    for (const rel of ['a.txt', 'b.txt', 'x/c.txt', 'x/d.txt', 'x/y/e.txt', 'x/y/z/f.txt', 'x/y/z/g.txt']) await writeRandomFile(path.join(tree, rel), 10);
    // Our own refusal hangs up: a new connection for each try.
    const attempt = async (): Promise<DownloadResult> => {
      const { conn: bounded } = await connectWithInvite(sharer.invite, undefined, { maxTreeFiles: 10, maxTreeDepth: 3 });
      try {
        return await download(bounded, 'ws/bounded', tempDir());
      } finally {
        bounded.close();
      }
    };
    assert.equal((await attempt()).files, 7);
    await fs.mkdir(path.join(tree, 'one-more'));
    await rejectsWithCode(attempt(), 'TOO_LARGE');
    await fs.rmdir(path.join(tree, 'one-more'));
    assert.equal((await attempt()).files, 7);
    // Two files fewer, one folder deeper than allowed.
    await fs.rm(path.join(tree, 'a.txt'));
    await fs.rm(path.join(tree, 'b.txt'));
    await writeRandomFile(path.join(tree, 'x', 'y', 'z', 'deeper', 'h.txt'), 10);
    await rejectsWithCode(attempt(), 'TOO_LARGE');
  });

  it('answers a missing file with NOT_FOUND and stays usable', async () => {
    await rejectsWithCode(download(conn, 'ws/nope.txt', tempDir()), 'NOT_FOUND');
    assert.equal((await conn.list('ws')).length > 0, true);
  });
});
