import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import type { Limits, PeerConnection } from '../../src/core';
import { follow, syncFolder, type FollowReport } from '../../src/core/follow';
import { OriginStore } from '../../src/core/origins';
import { connectWithInvite, listTree, startSharer, tempDir, until, type Sharer } from '../helpers';

/**
 * Following a peer's folder (core/follow.ts) end to end: a real sharer on loopback over TLS, real
 * files on both sides, the origin record on disk. Nothing asserts timing: each expectation is
 * polled with a generous deadline.
 */

const read = (file: string): Promise<string> => fs.readFile(file, 'utf8').catch(() => '(missing)');
const exists = (file: string): Promise<boolean> => fs.lstat(file).then(() => true, () => false);

const opened: { sharer: Sharer; conn: PeerConnection }[] = [];
after(async () => {
  for (const { sharer, conn } of opened) {
    conn.close();
    await sharer.server.close();
  }
});

async function setUp(files: Record<string, string>, limits?: Partial<Limits>): Promise<{ proj: string; conn: PeerConnection; mirror: string; origins: OriginStore }> {
  const proj = path.join(tempDir(), 'proj');
  for (const [rel, text] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(proj, rel)), { recursive: true });
    await fs.writeFile(path.join(proj, rel), text);
  }
  await fs.mkdir(proj, { recursive: true });
  const sharer = await startSharer([proj], { limits });
  const { conn } = await connectWithInvite(sharer.invite);
  opened.push({ sharer, conn });
  const origins = await OriginStore.open(path.join(tempDir(), 'origins.json'));
  return { proj, conn, mirror: path.join(tempDir(), 'mirror'), origins };
}

describe('follow: a local copy kept in step with a peer\'s folder', () => {
  it('applies an add, a change and a delete; keeps a file edited here (keepLocalEdits) and never deletes it', async () => {
    const { proj, conn, mirror, origins } = await setUp({ 'a.txt': 'a1\n', 'sub/b.txt': 'b1\n', 'sub/c.txt': 'c1\n' });
    const reports: FollowReport[] = [];
    const following = await follow(conn, 'proj', mirror, { origins, deleteRemoved: true, keepLocalEdits: true, onSynced: (r) => reports.push(r) });
    assert.deepEqual(await listTree(mirror), ['a.txt', 'sub/', 'sub/b.txt', 'sub/c.txt']);
    assert.equal(reports[0].kind, 'initial');

    await fs.writeFile(path.join(proj, 'new.txt'), 'new\n');
    await until('new.txt followed', async () => (await read(path.join(mirror, 'new.txt'))) === 'new\n');
    await fs.writeFile(path.join(proj, 'a.txt'), 'a2, longer\n');
    await until('a.txt followed', async () => (await read(path.join(mirror, 'a.txt'))) === 'a2, longer\n');

    // Edited here, then changed and removed on the sharer: ours is kept, and said so.
    await fs.writeFile(path.join(mirror, 'sub', 'b.txt'), 'b, edited here\n');
    await fs.writeFile(path.join(proj, 'sub', 'b.txt'), 'b2 from the sharer\n');
    await until('b.txt reported as kept', () => reports.some((r) => r.leftAlone.some((l) => l.path === 'sub/b.txt' && /edited here/.test(l.why))));
    assert.equal(await read(path.join(mirror, 'sub', 'b.txt')), 'b, edited here\n');

    await fs.rm(path.join(proj, 'sub'), { recursive: true });
    await until('sub/c.txt deleted', async () => !(await exists(path.join(mirror, 'sub', 'c.txt'))));
    assert.equal(await read(path.join(mirror, 'sub', 'b.txt')), 'b, edited here\n', 'an edited file is never deleted');
    assert.ok(reports.some((r) => r.kind === 'changes' && r.filesDeleted === 1));

    following.stop();
    await following.ended;
    // The record survives: what the next follow or Update from Peer reads.
    await origins.flush();
    const again = await OriginStore.open((origins as unknown as { file: string }).file);
    assert.equal(again.lookup(path.join(mirror, 'new.txt'))?.origin.files.get('new.txt')?.created, true);
    assert.ok((await listTree(path.dirname(mirror))).every((f) => !f.includes('.peershare-sync')), 'no temporary file is left');
  });

  it('a flood of changes becomes one whole sync (resync), and every file arrives', async () => {
    const { proj, conn, mirror, origins } = await setUp({ 'seed.txt': 'x' }, { maxWatchChanges: 5 });
    const reports: FollowReport[] = [];
    const following = await follow(conn, 'proj', mirror, { origins, deleteRemoved: false, onSynced: (r) => reports.push(r) });
    await fs.mkdir(path.join(proj, 'many'));
    for (let i = 0; i < 40; i++) await fs.writeFile(path.join(proj, 'many', `f${i}.txt`), `file ${i}\n`);
    await until('all 40 files followed', async () => (await fs.readdir(path.join(mirror, 'many')).catch(() => [])).length === 40);
    for (let i = 0; i < 40; i++) assert.equal(await read(path.join(mirror, 'many', `f${i}.txt`)), `file ${i}\n`);
    assert.ok(reports.some((r) => r.kind === 'resync'), reports.map((r) => r.kind).join(', '));
    following.stop();
    await following.ended;
  });

  it('follows a single file: a change, then (deleteRemoved) its removal', async () => {
    const { proj, conn, origins } = await setUp({ 'notes/todo.md': 'one\n', 'notes/other.md': 'other\n' });
    const target = path.join(tempDir(), 'todo.md');
    const following = await follow(conn, 'proj/notes/todo.md', target, { origins, deleteRemoved: true });
    assert.equal(await read(target), 'one\n');
    await fs.writeFile(path.join(proj, 'notes', 'other.md'), 'not followed\n');
    await fs.writeFile(path.join(proj, 'notes', 'todo.md'), 'one\ntwo\n');
    await until('todo.md followed', async () => (await read(target)) === 'one\ntwo\n');
    await fs.rm(path.join(proj, 'notes', 'todo.md'));
    await until('todo.md removed', async () => !(await exists(target)));
    following.stop();
    await following.ended;
  });

  it('ends with a coded error when the peer goes away', async () => {
    const { conn, mirror, origins } = await setUp({ 'a.txt': 'a' });
    const following = await follow(conn, 'proj', mirror, { origins, deleteRemoved: false });
    conn.close();
    await assert.rejects(following.ended, (err: { code?: string }) => typeof err.code === 'string' && err.code !== 'INTERNAL');
  });

  it('syncFolder --delete: a file the sync did not create, or that was edited, stays', async () => {
    const { proj, conn, mirror, origins } = await setUp({ 'made.txt': 'made\n', 'edited.txt': 'e\n', 'theirs-too.txt': 'same\n' });
    await fs.mkdir(mirror, { recursive: true });
    await fs.writeFile(path.join(mirror, 'theirs-too.txt'), 'mine first\n');
    await syncFolder(conn, 'proj', mirror, { origins, deleteRemoved: true });
    await fs.appendFile(path.join(mirror, 'edited.txt'), 'more\n');
    for (const name of ['made.txt', 'edited.txt', 'theirs-too.txt']) await fs.rm(path.join(proj, name));
    const report = await syncFolder(conn, 'proj', mirror, { origins, deleteRemoved: true });
    assert.equal(report.filesDeleted, 1);
    assert.deepEqual(await listTree(mirror), ['edited.txt', 'theirs-too.txt']);
  });
});
