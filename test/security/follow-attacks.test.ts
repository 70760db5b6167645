import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fs, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { connectToPeer, type PeerConnection } from '../../src/core';
import { blockSizeFor } from '../../src/core/blocks';
import { chunkBytes, encodeChunks } from '../../src/core/cdc';
import { follow, syncFolder, type FollowReport } from '../../src/core/follow';
import { OriginStore, originFileFor } from '../../src/core/origins';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { connectWithInvite, listTree, makePeer, startSharer, tempDir, type Sharer, type TestPeer } from '../helpers';
import { startHostileSharerV2, type HostileServer, type ScenarioV2 } from '../hostile';
import { snapshot, type Snapshot } from './world';

/**
 * Following a folder (share.watch with `tree`, core/follow.ts, `peershare sync --watch --delete`,
 * the origin record; docs/protocol-v2.md 14.5 and 15.4) attacked from outside, over real TLS on
 * loopback with real files, as three attackers: a trusted peer that watches whole trees (the
 * sharer's inotify watches, descriptors and event loop are the oracle: the sharer runs here), a
 * hostile sharer answering a follow (the follower is the victim: the file system is the oracle,
 * inside and outside the destination), and another local user who writes into the destination or
 * the follower's home. Scenarios of test/core/watch.test.ts, test/core/follow.test.ts,
 * test/cli/sync.test.ts and test/security/watch-attacks.test.ts are not repeated. Nothing asserts
 * tight timing: each expectation is polled with a generous deadline.
 */

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const DEADLINE_MS = 30_000;
const MTIME_MS = 1_000_000;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what: string, check: () => boolean | Promise<boolean>, deadlineMs = DEADLINE_MS): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await sleep(25);
  }
}

const exists = (file: string): Promise<boolean> => fs.lstat(file).then(() => true, () => false);
const read = (file: string): Promise<string> => fs.readFile(file, 'utf8').catch(() => '(missing)');

/** The kernel watches this process holds (`inotify wd:` lines of its inotify descriptors): the sharer's folder watchers. */
function inotifyWatches(pid: number | 'self' = 'self'): number {
  let count = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== 'anon_inode:inotify') continue;
      count += readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').split('\n').filter((line) => line.startsWith('inotify wd:')).length;
    } catch {
      // Closed between the listing and the read.
    }
  }
  return count;
}

const openDescriptors = (pid: number | 'self' = 'self'): number => readdirSync(`/proc/${pid}/fd`).length;
const rssMiB = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;

const connections: PeerConnection[] = [];
const sharers: Sharer[] = [];
const hostiles: HostileServer[] = [];
after(async () => {
  for (const conn of connections) conn.close();
  for (const sharer of sharers) await sharer.server.close();
  for (const server of hostiles) await server.close().catch(() => undefined);
});

/** Every entry below `base` as snapshot() records it, except those below `dest` (where the follow may write). */
async function outside(base: string, dest: string): Promise<Snapshot> {
  const all = await snapshot(base);
  const prefix = path.relative(base, dest);
  return Object.fromEntries(Object.entries(all).filter(([p]) => p !== prefix && !p.startsWith(`${prefix}/`)));
}

// ---------------------------------------------------------------------------------------------
// A hostile sharer: an honest in-memory folder `ws` (stat, list, chunks, readChunks answered as a
// real sharer would), and a watch whose batches the test writes.

interface FakeFolder {
  /** Files by their path below `ws`, and folders (paths below `ws`). */
  files: Map<string, Buffer>;
  dirs: Set<string>;
}

type Watcher = (send: (reply: Record<string, unknown>) => Promise<void>, folder: FakeFolder, signal: AbortSignal) => Promise<void>;

function fakeFolder(files: Record<string, string>, dirs: string[] = []): FakeFolder {
  const folder: FakeFolder = { files: new Map(), dirs: new Set(dirs) };
  for (const [rel, text] of Object.entries(files)) putFile(folder, rel, text);
  return folder;
}

function putFile(folder: FakeFolder, rel: string, text: string): void {
  folder.files.set(rel, Buffer.from(text));
  const parts = rel.split('/');
  for (let i = 1; i < parts.length; i++) folder.dirs.add(parts.slice(0, i).join('/'));
}

function entryOf(folder: FakeFolder, rel: string): Record<string, unknown> | undefined {
  const name = rel === '' ? 'ws' : rel.slice(rel.lastIndexOf('/') + 1);
  if (rel === '' || folder.dirs.has(rel)) return { name, type: 'dir', size: 0, mtimeMs: MTIME_MS };
  const content = folder.files.get(rel);
  return content ? { name, type: 'file', size: content.length, mtimeMs: MTIME_MS } : undefined;
}

function fileChange(folder: FakeFolder, rel: string, text: string, type: 'added' | 'changed' = 'added'): Record<string, unknown> {
  putFile(folder, rel, text);
  return { path: rel, type, entry: { type: 'file', size: Buffer.byteLength(text), mtimeMs: MTIME_MS } };
}

const relOf = (remote: unknown): string => String(remote).replace(/^ws\/?/, '');

function fakeSharer(folder: FakeFolder, watcher: Watcher): ScenarioV2 {
  return async (req, reply) => {
    const rel = relOf(req.path);
    switch (req.type) {
      case 'share.stat': {
        const entry = entryOf(folder, rel);
        if (!entry) throw Object.assign(new Error('gone'), { code: 'NOT_FOUND' });
        return { entry };
      }
      case 'share.list': {
        const prefix = rel === '' ? '' : `${rel}/`;
        const children = [...folder.dirs, ...folder.files.keys()].filter((p) => p.startsWith(prefix) && p !== rel && !p.slice(prefix.length).includes('/'));
        const entries = children.map((p) => entryOf(folder, p)!);
        if (entries.length > 0) await reply.message({ type: 'entries', entries });
        return { count: entries.length };
      }
      case 'share.chunks': {
        const content = folder.files.get(rel)!;
        const chunks = chunkBytes(content);
        const fileHash = manifestOfBytes(content, blockSizeFor(content.length)).fileHash.toString('hex');
        await reply.message({ type: 'chunks', size: content.length, mtimeMs: MTIME_MS, fileHash, count: chunks.length });
        if (chunks.length > 0) await reply.data(encodeChunks(chunks));
        return {};
      }
      case 'share.readChunks': {
        const content = folder.files.get(rel)!;
        const chunks = chunkBytes(content);
        for (const [first, end] of req.chunks as [number, number][]) {
          for (let i = first; i < end; i++) await reply.data(content.subarray(chunks[i].offset, chunks[i].offset + chunks[i].length));
        }
        return {};
      }
      case 'share.watch': {
        await reply.message({ type: 'watching' });
        await watcher((m) => reply.message(m), folder, reply.signal).catch(() => undefined);
        await new Promise((resolve) => reply.signal.addEventListener('abort', resolve, { once: true }));
        return {};
      }
      default:
        return {};
    }
  };
}

/** The victim's connection to a hostile sharer that serves `folder` and watches it as `watcher` says. */
async function hostileFollowed(folder: FakeFolder, watcher: Watcher): Promise<{ conn: PeerConnection; victim: TestPeer; server: HostileServer; hostileId: string }> {
  const victim = await makePeer();
  const hostile = (await makePeer()).identity;
  const server = await startHostileSharerV2(hostile, fakeSharer(folder, watcher));
  hostiles.push(server);
  const conn = await connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [server.address], expectedPeerId: hostile.peerId, name: 'victim' });
  connections.push(conn);
  return { conn, victim, server, hostileId: hostile.peerId };
}

/** A watcher that sends `batches` (each a REPLY) after `ready` resolves, then `onSent`. */
function batchesAfter(ready: Promise<unknown>, batches: (folder: FakeFolder) => Record<string, unknown>[]): Watcher {
  return async (send, folder) => {
    await ready;
    for (const batch of batches(folder)) await send(batch);
  };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** Waits until a follow has applied `count` batches after its first sync (or ended). */
function reportsOf(): { reports: FollowReport[]; onSynced: (r: FollowReport) => void; changes: () => FollowReport[] } {
  const reports: FollowReport[] = [];
  return { reports, onSynced: (r) => reports.push(r), changes: () => reports.filter((r) => r.kind !== 'initial') };
}

describe('following a hostile sharer (the follower is the victim)', () => {
  /** A base folder with the destination and, beside it, files that must never change. */
  async function victimFolders(): Promise<{ base: string; dest: string; outsideDir: string; origins: OriginStore }> {
    const base = tempDir('peershare-follow-');
    const dest = path.join(base, 'dest');
    const outsideDir = path.join(base, 'outside');
    await fs.mkdir(outsideDir, { recursive: true });
    await fs.writeFile(path.join(outsideDir, 'secret.txt'), 'the victim’s own file\n');
    await fs.mkdir(path.join(base, 'etc'));
    await fs.writeFile(path.join(base, 'etc', 'x'), 'x\n');
    // The record is kept in the follower's home, elsewhere: it is the one file the follow writes outside the destination.
    const origins = await OriginStore.open(path.join(tempDir('peershare-home-'), 'origins', 'o.json'));
    return { base, dest, outsideDir, origins };
  }

  for (const [what, change, expected] of [
    ['"..": the folder above', { path: '..', type: 'added', entry: { type: 'dir', size: 0, mtimeMs: MTIME_MS } }, 'BAD_NAME'],
    ['"sub/../../etc/x"', { path: 'sub/../../etc/x', type: 'removed' }, 'BAD_NAME'],
    ['an absolute path', { path: '/etc/x', type: 'removed' }, 'BAD_NAME'],
    ['backslashes, "..\\..\\etc\\x"', { path: '..\\..\\etc\\x', type: 'added', entry: { type: 'file', size: 2, mtimeMs: MTIME_MS } }, 'BAD_NAME'],
    ['a path of 4,097 characters', { path: `${'d/'.repeat(2048)}x`, type: 'added', entry: { type: 'file', size: 2, mtimeMs: MTIME_MS } }, 'BAD_NAME'],
    ['a component of 1,000 bytes', { path: `sub/${'n'.repeat(1000)}`, type: 'added', entry: { type: 'file', size: 2, mtimeMs: MTIME_MS } }, 'BAD_NAME'],
    ['a NUL byte, "sub/a\\0b"', { path: 'sub/a\u0000b', type: 'added', entry: { type: 'file', size: 2, mtimeMs: MTIME_MS } }, 'left alone'],
    ['".git/hooks/pre-commit"', { path: '.git/hooks/pre-commit', type: 'added', entry: { type: 'file', size: 2, mtimeMs: MTIME_MS } }, 'left alone'],
    ['".vscode/tasks.json"', { path: '.vscode/tasks.json', type: 'added', entry: { type: 'file', size: 2, mtimeMs: MTIME_MS } }, 'left alone'],
    ['a ".git" folder, removed', { path: 'sub/.GIT', type: 'removed' }, 'left alone'],
  ] as const) {
    it(`a change whose path is ${what} (--delete): ${expected === 'BAD_NAME' ? 'the follow ends BAD_NAME' : 'left alone, reported, the follow goes on'}; nothing outside the destination is created, changed or removed`, async () => {
      const { base, dest, origins } = await victimFolders();
      const synced = deferred();
      const folder = fakeFolder({ 'sub/a.txt': 'a\n' });
      const { conn } = await hostileFollowed(folder, batchesAfter(synced.promise, (f) => [{ type: 'changes', changes: [change] }, { type: 'changes', changes: [fileChange(f, 'after.txt', 'still followed\n')] }]));
      const before = await outside(base, dest);
      const { reports, onSynced } = reportsOf();
      const following = await follow(conn, 'ws', dest, { origins, deleteRemoved: true, onSynced });
      synced.resolve();
      if (expected === 'BAD_NAME') {
        await assert.rejects(following.ended, (err: { code?: string }) => err.code === 'BAD_NAME');
        assert.ok(!(await exists(path.join(dest, 'after.txt'))), 'nothing after the breach was applied');
      } else {
        await until('the next change applied', () => exists(path.join(dest, 'after.txt')));
        assert.ok(reports.some((r) => r.leftAlone.some((l) => l.path === change.path && /not safe here/.test(l.why))), 'reported as left alone');
        following.stop();
        await following.ended;
      }
      assert.deepEqual(await outside(base, dest), before);
      assert.deepEqual((await listTree(dest)).filter((p) => p !== 'after.txt'), ['sub/', 'sub/a.txt']);
    });
  }

  it('removed changes (--delete) for files the follow did not create, files edited here, a folder holding the user’s files, and the user’s own folders (empty or not): only the follow’s own unedited files go', async () => {
    const { base, dest, origins } = await victimFolders();
    // The user's own, before any sync: a file the sharer also has (taken over, so recorded as not created), folders the sharer never had.
    await fs.mkdir(path.join(dest, 'empty'), { recursive: true });
    await fs.mkdir(path.join(dest, 'keep'), { recursive: true });
    await fs.writeFile(path.join(dest, 'keep', 'mine.txt'), 'mine\n');
    await fs.writeFile(path.join(dest, 'shared.txt'), 'the user’s version\n');
    const synced = deferred();
    const edited = deferred();
    const folder = fakeFolder({ 'shared.txt': 'the sharer’s version\n', 'sub/a.txt': 'a\n', 'sub/b.txt': 'b\n', 'sub/deep/c.txt': 'c\n', 'gone.txt': 'g\n' });
    const { conn } = await hostileFollowed(folder, async (send) => {
      await synced.promise;
      await edited.promise;
      await send({ type: 'changes', changes: ['shared.txt', 'sub', 'empty', 'keep', 'never-here.txt', 'gone.txt'].map((p) => ({ path: p, type: 'removed' })) });
      await send({ type: 'changes', changes: [fileChange(folder, 'done.txt', 'done\n')] });
    });
    const { reports, onSynced } = reportsOf();
    const following = await follow(conn, 'ws', dest, { origins, deleteRemoved: true, onSynced });
    synced.resolve();
    // Edited here, and the user's own file put in a folder the follow made.
    await fs.writeFile(path.join(dest, 'sub', 'b.txt'), 'b, edited here\n');
    await fs.writeFile(path.join(dest, 'sub', 'deep', 'notes.txt'), 'notes\n');
    edited.resolve();
    await until('the batch after the removals applied', () => exists(path.join(dest, 'done.txt')));
    following.stop();
    await following.ended;
    assert.deepEqual(await listTree(dest), ['done.txt', 'empty/', 'keep/', 'keep/mine.txt', 'shared.txt', 'sub/', 'sub/b.txt', 'sub/deep/', 'sub/deep/notes.txt']);
    assert.equal(await read(path.join(dest, 'sub', 'b.txt')), 'b, edited here\n');
    const kept = reports.flatMap((r) => r.leftAlone.map((l) => `${l.path}: ${l.why}`));
    assert.ok(kept.some((k) => k.startsWith('shared.txt:') && /here before the sync/.test(k)), kept.join('\n'));
    assert.ok(kept.some((k) => k.startsWith('sub/b.txt:') && /edited here/.test(k)), kept.join('\n'));
    assert.equal(reports.reduce((n, r) => n + r.filesDeleted, 0), 3, 'gone.txt, sub/a.txt and sub/deep/c.txt');
  });

  it('added folders: 5,000 of them in five batches are made, each once; one 2,000 levels deep (a path the initial sync would refuse) is left alone, not made, and the follower holds no descriptor for it', async () => {
    const { base, dest, origins } = await victimFolders();
    const synced = deferred();
    const deep = Array.from({ length: 2000 }, () => 'a').join('/');
    const dir = { type: 'dir', size: 0, mtimeMs: MTIME_MS };
    const { conn } = await hostileFollowed(fakeFolder({ 'x.txt': 'x\n' }), async (send, folder) => {
      await synced.promise;
      for (let b = 0; b < 5; b++) {
        await send({ type: 'changes', changes: Array.from({ length: 1000 }, (_, i) => ({ path: `many/d${b * 1000 + i}`, type: 'added', entry: dir })) });
      }
      await send({ type: 'changes', changes: [{ path: deep, type: 'added', entry: dir }, fileChange(folder, `${deep}/f.txt`, 'f\n')] });
      await send({ type: 'changes', changes: [fileChange(folder, 'done.txt', 'done\n')] });
    });
    const before = await outside(base, dest);
    const fdsBefore = openDescriptors();
    const { reports, onSynced } = reportsOf();
    const following = await follow(conn, 'ws', dest, { origins, deleteRemoved: true, onSynced });
    synced.resolve();
    await until('the last batch applied', () => exists(path.join(dest, 'done.txt')), 60_000);
    assert.equal((await fs.readdir(path.join(dest, 'many'))).length, 5000);
    let depth = 0;
    for (let at = path.join(dest, 'a'); await exists(at); at = path.join(at, 'a')) depth++;
    assert.ok(depth <= 64, `the deep path was made ${depth} levels deep`);
    assert.ok(reports.some((r) => r.leftAlone.some((l) => l.path === deep && /deeper/.test(l.why))), 'reported as too deep');
    assert.ok(openDescriptors() - fdsBefore < 50, `the follower holds ${openDescriptors() - fdsBefore} more descriptors`);
    following.stop();
    await following.ended;
    assert.deepEqual(await outside(base, dest), before);
  });

  it('a path told as a file, then as a folder, then as a file again (and a folder, then a file below a file): whatever is in the place is left alone, reported, and the follow goes on', async () => {
    const { base, dest, origins } = await victimFolders();
    const synced = deferred();
    const dir = { type: 'dir', size: 0, mtimeMs: MTIME_MS };
    const { conn } = await hostileFollowed(fakeFolder({ 'x.txt': 'x\n' }), async (send, folder) => {
      await synced.promise;
      await send({ type: 'changes', changes: [fileChange(folder, 'p', 'a file\n'), { path: 'q', type: 'added', entry: dir }] });
      await sleep(300);
      folder.files.delete('p');
      folder.dirs.add('p');
      await send({ type: 'changes', changes: [{ path: 'p', type: 'changed', entry: dir }, { path: 'p/inner.txt', type: 'added', entry: { type: 'file', size: 2, mtimeMs: MTIME_MS } }, fileChange(folder, 'q', 'now a file\n', 'changed')] });
      await sleep(300);
      await send({ type: 'changes', changes: [fileChange(folder, 'done.txt', 'done\n')] });
    });
    const before = await outside(base, dest);
    const { reports, onSynced } = reportsOf();
    const following = await follow(conn, 'ws', dest, { origins, deleteRemoved: true, onSynced });
    synced.resolve();
    await until('the last batch applied', () => exists(path.join(dest, 'done.txt')));
    following.stop();
    await following.ended;
    assert.deepEqual(await listTree(dest), ['done.txt', 'p', 'q/', 'x.txt']);
    assert.equal(await read(path.join(dest, 'p')), 'a file\n');
    const kept = reports.flatMap((r) => r.leftAlone.map((l) => l.path));
    for (const p of ['p', 'p/inner.txt', 'q']) assert.ok(kept.includes(p), `${p} reported: ${kept.join(', ')}`);
    assert.deepEqual(await outside(base, dest), before);
  });

  it('a link a local user planted in the destination (to a folder outside it): changes through it, added, changed and removed, never write, change or delete anything outside, and are reported', async () => {
    const { base, dest, outsideDir, origins } = await victimFolders();
    const synced = deferred();
    const planted = deferred();
    const folder = fakeFolder({ 'sub/secret.txt': 'the victim’s own file\n', 'sub/a.txt': 'a\n' });
    const { conn } = await hostileFollowed(folder, async (send) => {
      await synced.promise;
      await planted.promise;
      await send({ type: 'changes', changes: [fileChange(folder, 'sub/new.txt', 'planted?\n'), fileChange(folder, 'sub/a.txt', 'a, longer now\n', 'changed'), { path: 'sub/made', type: 'added', entry: { type: 'dir', size: 0, mtimeMs: MTIME_MS } }] });
      await send({ type: 'changes', changes: [{ path: 'sub/secret.txt', type: 'removed' }] });
      await send({ type: 'changes', changes: [{ path: 'sub', type: 'removed' }] });
      await send({ type: 'changes', changes: [fileChange(folder, 'done.txt', 'done\n')] });
    });
    const { reports, onSynced } = reportsOf();
    const following = await follow(conn, 'ws', dest, { origins, deleteRemoved: true, onSynced });
    // The follow created sub/secret.txt; the user's own outside has the same size and time, so a
    // check made through the link finds "the version that landed" there.
    const landed = await fs.stat(path.join(dest, 'sub', 'secret.txt'));
    await fs.utimes(path.join(outsideDir, 'secret.txt'), landed.atime, landed.mtime);
    await fs.writeFile(path.join(outsideDir, 'a.txt'), 'a\n');
    await fs.utimes(path.join(outsideDir, 'a.txt'), landed.atime, landed.mtime);
    await fs.rename(path.join(dest, 'sub'), path.join(base, 'moved-away'));
    await fs.symlink(outsideDir, path.join(dest, 'sub'));
    const before = await outside(base, dest);
    synced.resolve();
    planted.resolve();
    await until('the last batch applied', () => exists(path.join(dest, 'done.txt')));
    following.stop();
    await following.ended;
    assert.deepEqual(await outside(base, dest), before, 'nothing outside the destination (or moved out of it) changed');
    assert.equal((await fs.lstat(path.join(dest, 'sub'))).isSymbolicLink(), true);
    const kept = reports.flatMap((r) => r.leftAlone.map((l) => l.path));
    for (const p of ['sub/new.txt', 'sub/a.txt', 'sub/made', 'sub/secret.txt']) assert.ok(kept.includes(p), `${p} reported: ${kept.join(', ')}`);
  });
});

describe('the origin record attacked by another local user (sync --delete trusts only a record of its own)', () => {
  const OTHER_UID = 65534;

  /** A real sharer of `proj` (holding only keep.txt), the follower's home, and a destination holding the user's own files. */
  async function setUp(): Promise<{ conn: PeerConnection; home: string; dest: string; recordFile: string; record: (files: Record<string, [number, number, string, number]>) => string }> {
    const proj = path.join(tempDir(), 'proj');
    await fs.mkdir(proj, { recursive: true });
    await fs.writeFile(path.join(proj, 'keep.txt'), 'from the sharer\n');
    const sharer = await startSharer([proj]);
    sharers.push(sharer);
    const { conn } = await connectWithInvite(sharer.invite);
    connections.push(conn);
    const home = tempDir('peershare-home-');
    const dest = path.join(tempDir(), 'dest');
    await fs.mkdir(path.join(dest, '.git'), { recursive: true });
    await fs.writeFile(path.join(dest, 'thesis.tex'), 'the user’s own work\n');
    await fs.writeFile(path.join(dest, '.git', 'config'), '[core]\n');
    const recordFile = originFileFor(home, dest);
    const record = (files: Record<string, [number, number, string, number]>): string =>
      JSON.stringify({ version: 1, origins: [{ peerId: conn.peerId, remotePath: 'proj', localPath: path.resolve(dest), type: 'dir', files }] });
    return { conn, home, dest, recordFile, record };
  }

  /** What a record must claim for `file` to look like a file the sync created and nobody edited since. */
  async function createdClaim(file: string): Promise<[number, number, string, number]> {
    const st = await fs.stat(file);
    return [st.size, Math.floor(st.mtimeMs), '', 1];
  }

  for (const [what, plant] of [
    [
      'a record file of another user in an origins folder others may write to',
      async (file: string, text: string) => {
        await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
        await fs.chmod(path.dirname(file), 0o777);
        await fs.writeFile(file, text, { mode: 0o644 });
        await fs.chown(file, OTHER_UID, OTHER_UID);
      },
    ],
    [
      'a record file of ours that others may write to',
      async (file: string, text: string) => {
        await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
        await fs.writeFile(file, text);
        await fs.chmod(file, 0o666);
      },
    ],
    [
      'an origins folder that belongs to another user',
      async (file: string, text: string) => {
        await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
        await fs.writeFile(file, text, { mode: 0o600 });
        await fs.chown(path.dirname(file), OTHER_UID, OTHER_UID);
      },
    ],
    [
      'a record that is a link to a file elsewhere (another user’s, claiming the same)',
      async (file: string, text: string) => {
        const elsewhere = path.join(tempDir(), 'planted.json');
        await fs.writeFile(elsewhere, text, { mode: 0o600 });
        await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
        await fs.symlink(elsewhere, file);
      },
    ],
  ] as const) {
    it(`${what}, claiming "created" for the user’s own files (.git/config among them): sync --delete deletes none of them`, async () => {
      const { conn, dest, recordFile, record } = await setUp();
      await plant(recordFile, record({ 'thesis.tex': await createdClaim(path.join(dest, 'thesis.tex')), '.git/config': await createdClaim(path.join(dest, '.git', 'config')) }));
      const origins = await OriginStore.open(recordFile);
      const report = await syncFolder(conn, 'proj', dest, { origins, deleteRemoved: true });
      await origins.flush().catch(() => undefined);
      assert.equal(report.filesDeleted, 0);
      assert.equal(await read(path.join(dest, 'thesis.tex')), 'the user’s own work\n');
      assert.equal(await read(path.join(dest, '.git', 'config')), '[core]\n');
      assert.deepEqual(await listTree(dest), ['.git/', '.git/config', 'keep.txt', 'thesis.tex']);
    });
  }

  it('the record is written private (0600, in a 0700 folder), whole, by rename: a link planted at its name is replaced, never followed; no temporary file is left; a broken record deletes nothing', async () => {
    const { conn, dest, recordFile } = await setUp();
    const target = path.join(tempDir(), 'target-of-link.txt');
    await fs.writeFile(target, 'not the record\n');
    await fs.mkdir(path.dirname(recordFile), { recursive: true, mode: 0o700 });
    await fs.symlink(target, recordFile);
    const origins = await OriginStore.open(recordFile);
    await syncFolder(conn, 'proj', dest, { origins, deleteRemoved: true });
    await origins.flush();
    assert.equal(await read(target), 'not the record\n', 'the link’s target is untouched');
    const st = await fs.lstat(recordFile);
    assert.ok(st.isFile() && (st.mode & 0o777) === 0o600, `the record is a 0600 file (mode ${(st.mode & 0o777).toString(8)})`);
    assert.equal((await fs.stat(path.dirname(recordFile))).mode & 0o777, 0o700);
    assert.deepEqual(await fs.readdir(path.dirname(recordFile)), [path.basename(recordFile)], 'no temporary file left');
    assert.equal(JSON.parse(await fs.readFile(recordFile, 'utf8')).origins[0].files['keep.txt'][3], 1);

    // Broken records: nothing read, nothing deleted.
    for (const broken of ['{', '{"version":1,"origins":[{"peerId":1}]}', `{"version":1,"origins":[{"peerId":"${conn.peerId}","remotePath":"proj","localPath":"${path.resolve(dest)}","type":"dir","files":{"../outside.txt":[1,1,"",1],"thesis.tex":["x",1,"",1]}}]}`]) {
      await fs.writeFile(recordFile, broken, { mode: 0o600 });
      const again = await OriginStore.open(recordFile);
      const report = await syncFolder(conn, 'proj', dest, { origins: again, deleteRemoved: true });
      assert.equal(report.filesDeleted, 0);
      assert.equal(await read(path.join(dest, 'thesis.tex')), 'the user’s own work\n');
    }
    // A record of ours naming a place no sync writes (.git): that entry is not believed.
    await fs.writeFile(recordFile, JSON.stringify({ version: 1, origins: [{ peerId: conn.peerId, remotePath: 'proj', localPath: path.resolve(dest), type: 'dir', files: { '.git/config': await createdClaim(path.join(dest, '.git', 'config')) } }] }), { mode: 0o600 });
    const report = await syncFolder(conn, 'proj', dest, { origins: await OriginStore.open(recordFile), deleteRemoved: true });
    assert.equal(report.filesDeleted, 0);
    assert.equal(await read(path.join(dest, '.git', 'config')), '[core]\n');
  });
});
