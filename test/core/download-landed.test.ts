import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { download, type LandedFile, type PeerConnection } from '../../src/core';
import { SMALL_FILE_BYTES } from '../../src/core/limits';
import { connectWithInvite, startSharer, tempDir, writeRandomFile, type Sharer } from '../helpers';

/** download()'s onFileLanded: each file that took its name, with the sharer's version, for the record of what came from where. */
describe('download reports each file it landed', () => {
  let ws: string;
  let sharer: Sharer;
  let conn: PeerConnection;

  before(async () => {
    ws = path.join(tempDir(), 'ws');
    await writeRandomFile(path.join(ws, 'tree', 'small.txt'), 100);
    await writeRandomFile(path.join(ws, 'tree', 'sub', 'large.bin'), SMALL_FILE_BYTES * 2 + 5);
    sharer = await startSharer([ws]);
    ({ conn } = await connectWithInvite(sharer.invite));
  });

  after(async () => {
    conn.close();
    await sharer.server.close();
  });

  async function sharerVersion(rel: string): Promise<{ size: number; mtimeMs: number }> {
    const st = await fs.stat(path.join(ws, 'tree', ...rel.split('/')));
    return { size: st.size, mtimeMs: Math.floor(st.mtimeMs) };
  }

  it('a folder: every file (inline and fetched as blocks) with the sharer\'s size and time, created; replaced ones not created; keep-both copies not reported', async () => {
    const dest = tempDir();
    const landed = new Map<string, LandedFile>();
    await download(conn, 'ws/tree', dest, { onFileLanded: (rel, file) => landed.set(rel, file) });
    assert.deepEqual([...landed.keys()].sort(), ['small.txt', 'sub/large.bin']);
    for (const [rel, file] of landed) {
      const version = await sharerVersion(rel);
      assert.equal(file.size, version.size, rel);
      assert.equal(file.mtimeMs, version.mtimeMs, rel);
      assert.equal(file.created, true, rel);
    }
    assert.match(landed.get('sub/large.bin')!.fileHash ?? '', /^[0-9a-f]{64}$/, 'a file fetched as blocks knows its block-list hash');

    const again = new Map<string, LandedFile>();
    await download(conn, 'ws/tree', dest, { onConflict: 'overwrite', onFileLanded: (rel, file) => again.set(rel, file) });
    assert.deepEqual([...again.keys()].sort(), ['small.txt', 'sub/large.bin']);
    for (const file of again.values()) assert.equal(file.created, false, 'an overwritten file was not created by this download');

    const copies: string[] = [];
    const both = await download(conn, 'ws/tree', dest, { onConflict: 'keepBoth', onFileLanded: (rel) => copies.push(rel) });
    assert.equal(both.files, 2, 'both files landed as copies');
    assert.deepEqual(copies, [], 'copies under other names are not the sharer\'s paths');
  });

  it('a single file: reported as \'\', the result\'s target', async () => {
    const dest = tempDir();
    const landed: [string, LandedFile][] = [];
    const result = await download(conn, 'ws/tree/small.txt', dest, { onFileLanded: (rel, file) => landed.push([rel, file]) });
    assert.equal(landed.length, 1);
    assert.equal(landed[0][0], '');
    assert.deepEqual({ size: landed[0][1].size, mtimeMs: landed[0][1].mtimeMs, created: landed[0][1].created }, { ...(await sharerVersion('small.txt')), created: true });
    assert.equal(result.target, path.join(dest, 'small.txt'));
    const skipped: string[] = [];
    await download(conn, 'ws/tree/small.txt', dest, { onConflict: 'skip', onFileLanded: (rel) => skipped.push(rel) });
    assert.deepEqual(skipped, [], 'a skipped file did not land');
  });
});

describe('a landed file keeps the sharer\'s whole millisecond', () => {
  it('every time set by timesOf reads back as the same millisecond (t / 1000 read back as t - 1 for some)', async () => {
    const { timesOf } = await import('../../src/core/landing');
    const file = path.join(tempDir(), 'f');
    await fs.writeFile(file, 'x');
    let naiveShort = 0;
    for (let i = 0; i < 400; i++) {
      const t = 1_700_000_000_000 + i * 7919 + (i % 13);
      await fs.utimes(file, t / 1000, t / 1000);
      if (Math.floor((await fs.stat(file)).mtimeMs) !== t) naiveShort++;
      await fs.utimes(file, ...timesOf(t));
      assert.equal(Math.floor((await fs.stat(file)).mtimeMs), t);
    }
    // The reason for timesOf: the plain division reads back a millisecond early for some times.
    assert.ok(naiveShort > 0, 'the naive conversion was never short: the test would not catch it');
  });
});
