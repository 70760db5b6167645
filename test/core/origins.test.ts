import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { MAX_ORIGINS, OriginStore } from '../../src/core/origins';
import { tempDir } from '../helpers';

/** The record of what came from where (origins.ts): kept across restarts, read back only when well formed, bounded. */
describe('origin record', () => {
  it('remembers a folder taken from a peer across a restart, and tells an edited local copy from the same one', async () => {
    const dir = await tempDir();
    const store = await OriginStore.open(path.join(dir, 'state', 'origins.json'));
    const local = path.join(dir, 'mirror');
    await fs.mkdir(path.join(local, 'sub'), { recursive: true });
    const origin = store.begin('peer-a', 'work/fixtures', local, 'dir');
    await fs.writeFile(path.join(local, 'sub', 'a.txt'), 'alpha');
    await fs.utimes(path.join(local, 'sub', 'a.txt'), 1_700_000_000.0005, 1_700_000_000.0005);
    store.setFile(origin, 'sub/a.txt', { size: 5, mtimeMs: 1_700_000_000_000, fileHash: 'ab'.repeat(32), created: true });
    await store.flush();
    assert.equal(((await fs.stat(path.join(dir, 'state', 'origins.json'))).mode & 0o777), 0o600);

    const again = await OriginStore.open(path.join(dir, 'state', 'origins.json'));
    const found = again.lookup(path.join(local, 'sub', 'a.txt'));
    assert.ok(found);
    assert.equal(found.origin.peerId, 'peer-a');
    assert.equal(found.rel, 'sub/a.txt');
    assert.deepEqual(found.origin.files.get('sub/a.txt'), { size: 5, mtimeMs: 1_700_000_000_000, fileHash: 'ab'.repeat(32), created: true });
    assert.deepEqual(again.byRemote('peer-a', 'work/fixtures/sub/a.txt').map((f) => f.rel), ['sub/a.txt']);
    assert.deepEqual(again.byRemote('peer-b', 'work/fixtures/sub/a.txt'), []);
    assert.equal(await again.localState(found.origin, 'sub/a.txt'), 'same');

    await fs.appendFile(path.join(local, 'sub', 'a.txt'), '!');
    assert.equal(await again.localState(found.origin, 'sub/a.txt'), 'edited');
    await fs.rm(path.join(local, 'sub', 'a.txt'));
    assert.equal(await again.localState(found.origin, 'sub/a.txt'), 'missing');
  });

  it('counts a file with no record, or a link in its place, as edited', async () => {
    const dir = await tempDir();
    const store = await OriginStore.open(path.join(dir, 'origins.json'));
    const origin = store.begin('peer-a', 'f', dir, 'dir');
    await fs.writeFile(path.join(dir, 'unrecorded'), 'x');
    assert.equal(await store.localState(origin, 'unrecorded'), 'edited');
    await fs.symlink('/etc/hostname', path.join(dir, 'link'));
    const st = await fs.stat('/etc/hostname');
    store.setFile(origin, 'link', { size: st.size, mtimeMs: Math.floor(st.mtimeMs) });
    assert.equal(await store.localState(origin, 'link'), 'edited');
  });

  it('reads a broken or hostile record as an empty one, and never a path outside its origin', async () => {
    const dir = await tempDir();
    const file = path.join(dir, 'origins.json');
    await fs.writeFile(file, '{"version":1,"origins":[');
    assert.deepEqual((await OriginStore.open(file)).list(), []);
    await fs.writeFile(
      file,
      JSON.stringify({
        version: 1,
        origins: [
          { peerId: 'p', remotePath: 'r', localPath: 'relative/path', type: 'dir', files: {} },
          { peerId: 'p', remotePath: 'r', localPath: dir, type: 'dir', files: { '../../etc/passwd': [1, 1, '', 1], 'a/./b': [1, 1, '', 1], ok: [3, 7, 'zz', 1], neg: [-1, 1, '', 0] } },
        ],
      }),
    );
    const store = await OriginStore.open(file);
    assert.equal(store.list().length, 1);
    assert.deepEqual([...store.list()[0].files], [['ok', { size: 3, mtimeMs: 7, fileHash: undefined, created: true }]]);
  });

  it('keeps only paths a sync could have written: unsafe folders or names anywhere, or too long, are dropped', async () => {
    const dir = await tempDir();
    const file = path.join(dir, 'origins.json');
    const long = 'd'.repeat(200);
    const deep = Array.from({ length: 20 }, () => long).join('/'); // 4,019 bytes
    const kept = ['a/b/ok.txt', 'a/b/also.txt', 'top.txt', `${deep}/${'n'.repeat(76)}`];
    const dropped = ['.git/config', 'a/.git/config', 'a/b/.vscode', 'a/CON/x.txt', 'a/b/nul', 'a/b/x\u200B.txt', 'a/b:c/x', `${deep}/${'n'.repeat(77)}`];
    const files = Object.fromEntries([...kept, ...dropped].map((rel) => [rel, [1, 1, '', 1]]));
    await fs.writeFile(file, JSON.stringify({ version: 1, origins: [{ peerId: 'p', remotePath: 'r', localPath: dir, type: 'dir', files }] }));
    const store = await OriginStore.open(file);
    assert.deepEqual([...store.list()[0].files.keys()].sort(), [...kept].sort());
  });

  it('a new peer or path at the same place starts a new record; the oldest are forgotten past the bound', async () => {
    const dir = await tempDir();
    const store = await OriginStore.open(path.join(dir, 'origins.json'));
    const first = store.begin('peer-a', 'x', path.join(dir, 'm'), 'dir');
    store.setFile(first, 'f', { size: 1, mtimeMs: 1, created: true });
    const other = store.begin('peer-b', 'x', path.join(dir, 'm'), 'dir');
    assert.equal(other.files.size, 0);
    for (let i = 0; i < MAX_ORIGINS + 5; i++) store.begin('peer-a', `f${i}`, path.join(dir, `f${i}`), 'file');
    assert.equal(store.list().length, MAX_ORIGINS);
    assert.equal(store.lookup(path.join(dir, 'f0')), undefined);
    assert.ok(store.lookup(path.join(dir, `f${MAX_ORIGINS + 4}`)));
  });
});
