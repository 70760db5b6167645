import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { promises as fs, chmodSync, linkSync, mkdirSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectToPeer, Share, resolveLimits, type Entry, type Limits, type PeerConnection } from '../../src/core';
import { blockSizeFor } from '../../src/core/blocks';
import { chunkBytes, encodeChunks } from '../../src/core/cdc';
import { deltaFolder } from '../../src/core/delta';
import { syncFolder } from '../../src/core/follow';
import { inspectReceivedName } from '../../src/core/names';
import { OriginStore } from '../../src/core/origins';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { connectWithInvite, listTree, makePeer, startSharer, tempDir, until, type TestPeer } from '../helpers';
import { startHostileSharerV2, type ScenarioV2 } from '../hostile';
import { longestStall } from './event-loop';
import { mounted, stalledMount } from './stalled-mount';
import { snapshot } from './world';

/**
 * Round 13: the listing and sync paths as changed on 2026-12-02: the sharer's folders opened, read
 * and looked at with synchronous calls on a local file system with no mount on the way or in them
 * (Share.readDirBatchesSync, openVerifiedFolderSync, openBeneathSync; share.list and walk); the
 * syncing side's quick check of a listed folder's files in one synchronous pass through the pinned
 * folder, each listed name checked alone (deltaFolder); the origin record validated a folder at a
 * time (SyncableRels) and written with plain loops; foldName's ASCII fast path.
 *
 * Attackers: a hostile local user or process on the sharer's machine (symlinks, FIFOs, sockets,
 * device nodes, names that are not UTF-8, hard links to the identity key, a folder swapped for a
 * symlink between batches or in a loop, a huge folder of entries that are never shown, a stalled
 * FUSE mount at the shared root or inside it made after the mount table was read); a hostile
 * trusted peer sending crafted listings to a syncing client; a hostile local process on the
 * syncing client's machine changing the destination between the quick check and the updates.
 * Oracles: the file system (nothing outside listed, served or written; what is kept, kept), coded
 * PeerShareError codes, unhandled rejections, the event loop's longest stall, and the synchronous
 * path against the asynchronous one (the same share with its root marked non-local).
 *
 * Tests marked FOUND failed on the code as it was attacked (eight findings, all since fixed;
 * docs/security.md, round 13): each says why, and the fix it suggested.
 */

const MTIME_MS = 1_000_000;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const cleanups: (() => Promise<void> | void)[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => void unhandled.push(reason);

before(() => {
  process.on('unhandledRejection', onUnhandled);
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  process.off('unhandledRejection', onUnhandled);
  assert.deepEqual(unhandled.map(String), [], 'no unhandled rejection while the attacks ran');
});

// ---- helpers ---------------------------------------------------------------------------------

/** The event loop's longest stall, timed every 5 ms. */
const longestStall5 = <T>(work: () => Promise<T>): ReturnType<typeof longestStall<T>> => longestStall(work, 5);

const codeOf = (err: unknown): string | undefined => (err as { code?: string } | undefined)?.code;

/**
 * Lists proj/sub (2,500 empty files) and, after the first batch, swaps it for a symlink to a folder
 * of 7-byte files of the same names; the sizes every batch gave. `local` picks the synchronous path.
 */
async function listSwappedBetweenBatches(local: boolean): Promise<{ share: Share; sizes: Set<number>; batches: number }> {
  const base = tempDir('peershare-r13-');
  const proj = path.join(base, 'proj');
  const secret = path.join(base, 'secret');
  mkdirSync(path.join(proj, 'sub'), { recursive: true });
  mkdirSync(secret);
  for (let i = 0; i < 2500; i++) {
    const name = `f${String(i).padStart(5, '0')}`;
    writeFileSync(path.join(proj, 'sub', name), '');
    writeFileSync(path.join(secret, name), 'SECRET!');
  }
  const { share } = await localShare([proj]);
  setLocal(share, local);
  const sizes = new Set<number>();
  let batches = 0;
  for await (const batch of share.list('proj/sub')) {
    if (batches++ === 0) {
      renameSync(path.join(proj, 'sub'), path.join(base, 'moved'));
      symlinkSync(secret, path.join(proj, 'sub'));
    }
    for (const e of batch) sizes.add(e.size);
  }
  return { share, sizes, batches };
}

/** A share of `folders` made here (no server), with `home` as its private folder holding key.pem. */
async function localShare(folders: string[], limits: Partial<Limits> = {}): Promise<{ share: Share; home: string; key: string }> {
  const home = tempDir('peershare-r13-home-');
  const key = path.join(home, 'key.pem');
  writeFileSync(key, '-----BEGIN PRIVATE KEY----- r13 -----END PRIVATE KEY-----\n', { mode: 0o600 });
  const share = await Share.create({ folders, privatePaths: [home] }, resolveLimits(limits));
  return { share, home, key };
}

/** Marks every root of `share` local (the synchronous path) or not (the asynchronous path, as on a network file system). */
function setLocal(share: Share, local: boolean): void {
  for (const root of share.roots) (root as { local: boolean }).local = local;
}

/** Every entry of a listing, by the share's own generator (what share.list answers with). */
async function listAll(share: Share, remotePath: string): Promise<Entry[]> {
  const out: Entry[] = [];
  for await (const batch of share.list(remotePath)) out.push(...batch);
  return out;
}

const byName = (entries: Entry[]): Entry[] => [...entries].sort((a, b) => (a.name < b.name ? -1 : 1));

/** A real sharer of `folders` and a connection to it. */
async function sharerOf(folders: string[]): Promise<{ sharer: Awaited<ReturnType<typeof startSharer>>; conn: PeerConnection }> {
  const sharer = await startSharer(folders);
  cleanups.push(() => sharer.server.close());
  const { conn } = await connectWithInvite(sharer.invite);
  cleanups.push(() => conn.close());
  return { sharer, conn };
}



// ---- a hostile sharer serving an in-memory folder `ws` ---------------------------------------

interface FakeFolder {
  files: Map<string, Buffer>;
  dirs: Set<string>;
  /** Extra or replacement entries for a folder's listing (crafted names). */
  listing?: (rel: string, honest: Record<string, unknown>[]) => Record<string, unknown>[];
  /** Awaited before a file's chunk list is answered (to hold updates while the test acts). */
  beforeChunks?: (rel: string) => Promise<void>;
}

function fakeFolder(files: Record<string, string>): FakeFolder {
  const folder: FakeFolder = { files: new Map(), dirs: new Set() };
  for (const [rel, text] of Object.entries(files)) {
    folder.files.set(rel, Buffer.from(text));
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) folder.dirs.add(parts.slice(0, i).join('/'));
  }
  return folder;
}

function fakeSharer(folder: FakeFolder): ScenarioV2 {
  return async (req, reply) => {
    const rel = String(req.path).replace(/^ws\/?/, '');
    switch (req.type) {
      case 'share.list': {
        const prefix = rel === '' ? '' : `${rel}/`;
        const children = [...folder.dirs, ...folder.files.keys()].filter((p) => p.startsWith(prefix) && p !== rel && !p.slice(prefix.length).includes('/'));
        const honest = children.map((p) => {
          const name = p.slice(prefix.length);
          return folder.dirs.has(p) ? { name, type: 'dir', size: 0, mtimeMs: MTIME_MS } : { name, type: 'file', size: folder.files.get(p)!.length, mtimeMs: MTIME_MS };
        });
        const entries = folder.listing ? folder.listing(rel, honest) : honest;
        for (let i = 0; i < entries.length; i += 500) await reply.message({ type: 'entries', entries: entries.slice(i, i + 500) });
        return { count: entries.length };
      }
      case 'share.chunks': {
        await folder.beforeChunks?.(rel);
        const content = folder.files.get(rel);
        if (!content) throw Object.assign(new Error('gone'), { code: 'NOT_FOUND' });
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
      default:
        return {};
    }
  };
}

let victim: TestPeer;
async function hostileSharer(folder: FakeFolder, limits: Partial<Limits> = {}): Promise<{ conn: PeerConnection; hostileId: string }> {
  victim ??= await makePeer();
  const hostile = (await makePeer()).identity;
  const server = await startHostileSharerV2(hostile, fakeSharer(folder));
  cleanups.push(() => server.close());
  const conn = await connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [server.address], expectedPeerId: hostile.peerId, name: 'victim', limits: { stallTimeoutMs: 10_000, ...limits } });
  cleanups.push(() => conn.close());
  return { conn, hostileId: hostile.peerId };
}

/** A destination beside an `outside` folder that must never change. */
async function victimFolders(): Promise<{ base: string; dest: string; outside: string; secret: string }> {
  const base = tempDir('peershare-r13-victim-');
  const dest = path.join(base, 'dest');
  const outside = path.join(base, 'outside');
  await fs.mkdir(dest);
  await fs.mkdir(outside);
  const secret = path.join(outside, 'secret.txt');
  await fs.writeFile(secret, 'the victim’s own file\n');
  return { base, dest, outside, secret };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** Holds the chunk lists of files whose name starts with `prefix` until released; `held` counts them. */
function holder(prefix: string): { held: () => number; release: () => void; beforeChunks: (rel: string) => Promise<void> } {
  let held = 0;
  const gate = deferred();
  return {
    held: () => held,
    release: gate.resolve,
    beforeChunks: async (rel) => {
      if (!path.basename(rel).startsWith(prefix)) return;
      held++;
      await gate.promise;
    },
  };
}

// =============================================================================================
// The sharer's synchronous listing, attacked by a local user on the sharer's machine
// =============================================================================================

describe('a hostile local user on the sharer\'s machine against the synchronous listing', () => {
  it('symlinks, a FIFO, a socket, a device node, a name that is not UTF-8, a hard link to the key, excluded names: none listed, and the synchronous and asynchronous paths list the same', async () => {
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    const mixed = path.join(proj, 'mixed');
    const outside = path.join(base, 'outside');
    mkdirSync(path.join(mixed, 'dir'), { recursive: true });
    mkdirSync(path.join(mixed, '.ssh'));
    mkdirSync(outside);
    writeFileSync(path.join(outside, 'secret.txt'), 'SECRET');
    writeFileSync(path.join(mixed, 'file.txt'), 'abc');
    writeFileSync(path.join(mixed, '.gitignore'), 'ignored.log\n');
    writeFileSync(path.join(mixed, 'ignored.log'), 'log');
    writeFileSync(path.join(mixed, '.ssh', 'id_rsa'), 'SECRET');
    symlinkSync(path.join(outside, 'secret.txt'), path.join(mixed, 'link-file'));
    symlinkSync(outside, path.join(mixed, 'link-dir'));
    symlinkSync('/dev/zero', path.join(mixed, 'link-dev'));
    assert.equal(spawnSync('mkfifo', [path.join(mixed, 'fifo')]).status, 0);
    assert.equal(spawnSync('mknod', [path.join(mixed, 'null-dev'), 'c', '1', '3']).status, 0, 'mknod needs root');
    const sock = net.createServer();
    await new Promise<void>((resolve) => sock.listen(path.join(mixed, 'sock'), resolve));
    cleanups.push(() => new Promise<void>((resolve) => sock.close(() => resolve())));
    writeFileSync(Buffer.concat([Buffer.from(path.join(mixed, 'bad-')), Buffer.from([0xff, 0xfe]), Buffer.from('.txt')]), 'not utf-8');
    const { share, key } = await localShare([proj]);
    linkSync(key, path.join(mixed, 'key-link'));

    setLocal(share, true);
    const sync = byName(await listAll(share, 'proj/mixed'));
    setLocal(share, false);
    const asyncList = byName(await listAll(share, 'proj/mixed'));
    assert.deepEqual(
      sync.map((e) => `${e.name}:${e.type}`),
      ['.gitignore:file', 'dir:dir', 'file.txt:file'],
      'only the regular files and folders the rules allow (no link, FIFO, socket, device, non-UTF-8 name, excluded name or hard link to the key)',
    );
    assert.deepEqual(sync, asyncList, 'the synchronous path lists exactly what the asynchronous one does (names, types, sizes, times)');
  });

  it('the listed folder swapped for a symlink to outside between batches (synchronous path): every batch is of the folder that was checked, no size or time from outside', async () => {
    const { share, sizes, batches } = await listSwappedBetweenBatches(true);
    assert.ok(batches >= 3, 'several batches');
    assert.deepEqual([...sizes], [0], 'every size is of the folder opened (0 bytes), never of the secret files (7 bytes)');
    await assert.rejects(listAll(share, 'proj/sub'), (err) => codeOf(err) === 'OUTSIDE_SHARE', 'the next listing refuses the symlink');
  });

  it('the same swap on the asynchronous path (a root on a network file system): no size or time from outside either', async () => {
    // FOUND, since fixed (low, pre-existing in the asynchronous path; the new synchronous path does not have it):
    // readDirBatches' asynchronous path reads the names through the verified descriptor but then
    // lstat's each entry by its *path* (path.join(dirPath, name)), which goes through whatever is
    // at dirPath now. A local user who swaps the listed folder for a symlink between batches makes
    // the listing show, under the folder's names, the size and modification time of the files of
    // the same names in any folder they can point at (here 7-byte secret files): metadata from
    // outside the share, on roots the share takes as non-local (NFS, SMB, FUSE) or with a mount in
    // them. Fix: lstat through the descriptor as the synchronous path does
    // (`${PROC_FD}/${opened.handle.fd}/${name}`), or fstatat via the opened folder.
    const { sizes } = await listSwappedBetweenBatches(false);
    assert.deepEqual([...sizes], [0], 'a size of 7 is the size of a file outside the share, read through the symlink swapped in');
  });

  it('a folder on the way, the listed folder or the root itself replaced by a symlink, a file or a FIFO: a coded refusal, nothing from outside', async () => {
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    const outside = path.join(base, 'outside');
    mkdirSync(path.join(proj, 'a', 'b'), { recursive: true });
    mkdirSync(path.join(proj, 'c'));
    mkdirSync(path.join(outside, 'b'), { recursive: true });
    writeFileSync(path.join(outside, 'b', 'SECRET'), 'x');
    writeFileSync(path.join(outside, 'SECRET'), 'x');
    const { share } = await localShare([proj]);
    setLocal(share, true);
    await fs.rm(path.join(proj, 'a'), { recursive: true });
    symlinkSync(outside, path.join(proj, 'a'));
    await fs.rm(path.join(proj, 'c'), { recursive: true });
    assert.equal(spawnSync('mkfifo', [path.join(proj, 'c')]).status, 0);
    mkdirSync(path.join(proj, 'd'));
    writeFileSync(path.join(proj, 'd', 'e'), 'a file where a folder was');
    const outcomes: Record<string, string | undefined> = {};
    for (const p of ['proj/a', 'proj/a/b', 'proj/c', 'proj/d/e', 'proj/d/e/f']) {
      const { result, error } = await longestStall5(() => listAll(share, p));
      assert.equal(result, undefined, `${p} was listed: ${JSON.stringify(result)}`);
      outcomes[p] = codeOf(error);
    }
    assert.deepEqual(outcomes, { 'proj/a': 'OUTSIDE_SHARE', 'proj/a/b': 'OUTSIDE_SHARE', 'proj/c': 'NOT_A_FILE', 'proj/d/e': 'NOT_A_DIRECTORY', 'proj/d/e/f': 'NOT_FOUND' });
    // The root itself: moved away and a symlink to outside put at its path.
    renameSync(proj, path.join(base, 'proj-moved'));
    symlinkSync(outside, proj);
    // O_DIRECTORY with O_NOFOLLOW on a symlink fails ENOTDIR on Linux: NOT_A_DIRECTORY, as the asynchronous path says.
    const refused = (err: unknown): boolean => codeOf(err) === 'OUTSIDE_SHARE' || codeOf(err) === 'NOT_A_DIRECTORY';
    await assert.rejects(listAll(share, 'proj'), refused);
    setLocal(share, false);
    await assert.rejects(listAll(share, 'proj'), refused);
    setLocal(share, true);
    const walked: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const item of share.walk('proj')) walked.push(item.relPath);
      })(),
      refused,
    );
    assert.deepEqual(walked, []);
  });

  it('a local process swapping a folder on the way with a symlink to outside in a loop while the share lists and walks it: never a name from outside, every refusal coded', async () => {
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    const outside = path.join(base, 'outside');
    mkdirSync(path.join(proj, 'on', 'inner'), { recursive: true });
    mkdirSync(path.join(outside, 'inner'), { recursive: true });
    for (let i = 0; i < 20; i++) {
      writeFileSync(path.join(proj, 'on', 'inner', `in-${i}`), 'x');
      writeFileSync(path.join(outside, 'inner', `SECRET-${i}`), 'secret');
      writeFileSync(path.join(outside, `SECRET-top-${i}`), 'secret');
    }
    symlinkSync(outside, path.join(base, 'link'));
    const { share } = await localShare([proj]);
    setLocal(share, true);
    // Four atomic renames a turn: the real folder aside, the link in, the link back, the folder back.
    const script = `const fs = require('fs'); const [on, held, link] = [process.env.ON, process.env.HELD, process.env.LINK];
      const end = Date.now() + 2000; let n = 0;
      while (Date.now() < end) { fs.renameSync(on, held); fs.renameSync(link, on); fs.renameSync(on, link); fs.renameSync(held, on); n++; }
      console.log(n);`;
    const swapper = spawn(process.execPath, ['-e', script], { env: { ...process.env, ON: path.join(proj, 'on'), HELD: path.join(base, 'held'), LINK: path.join(base, 'link') }, stdio: ['ignore', 'pipe', 'inherit'] });
    cleanups.push(() => void (swapper.exitCode === null && swapper.kill()));
    let swaps = '';
    swapper.stdout!.on('data', (d) => (swaps += String(d)));
    const exited = new Promise<void>((resolve) => swapper.on('exit', () => resolve()));
    let running = true;
    void exited.then(() => (running = false));
    const names = new Set<string>();
    const codes = new Map<string, number>();
    let listed = 0;
    while (running) {
      for (const p of ['proj/on', 'proj/on/inner']) {
        try {
          for (const e of await listAll(share, p)) names.add(e.name);
          listed++;
        } catch (err) {
          codes.set(String(codeOf(err)), (codes.get(String(codeOf(err))) ?? 0) + 1);
        }
      }
      try {
        for await (const item of share.walk('proj/on')) names.add(path.basename(item.relPath));
      } catch (err) {
        codes.set(String(codeOf(err)), (codes.get(String(codeOf(err))) ?? 0) + 1);
      }
      await sleep(0);
    }
    await exited;
    assert.ok(Number(swaps) > 100, `the swapper ran (${swaps.trim()} turns)`);
    assert.deepEqual([...names].filter((n) => n.includes('SECRET')), [], 'no name from outside was ever listed or walked');
    const allowed = new Set(['OUTSIDE_SHARE', 'NOT_FOUND', 'NOT_A_DIRECTORY']);
    assert.deepEqual([...codes.keys()].filter((c) => !allowed.has(c)), [], `only coded refusals (${JSON.stringify([...codes])}; ${listed} listings went through)`);
  });

  it('a folder swapped for a symlink to a folder without .gitignore in a loop: a name its .gitignore excludes is never listed, never opened', async () => {
    // FOUND, since fixed (medium; pre-existing, both paths; widened by readDirBatchesSync, which reads the
    // rules before it opens the folder): gitignoreRules reads root/…/folder/.gitignore by *path*
    // (fs.open(file, O_NOFOLLOW) only refuses a link at the last component), and the listing or
    // openFile then opens the folder through the verified descriptor. A local user who can rename
    // entries of the parent folder swaps the folder for a symlink to an empty folder while the rules
    // are read and back before the open: the rules are "absent", and a file the folder's .gitignore
    // excludes is listed (name, size) and served (openFile's isExcluded runs the same read).
    // Measured in 3 s of swapping: 117 listings named private.txt, 148 openFile calls opened it.
    // Fix: read each .gitignore through the descriptor of its verified folder (openBeneath of the
    // components, then `${PROC_FD}/${fd}/.gitignore`, with the readlink check), the descriptor the
    // listing then reads; or check the folder's dev/ino before and after the rules were read.
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    mkdirSync(path.join(proj, 'sec'), { recursive: true });
    writeFileSync(path.join(proj, 'sec', '.gitignore'), 'private.txt\n');
    writeFileSync(path.join(proj, 'sec', 'private.txt'), 'PRIVATE');
    writeFileSync(path.join(proj, 'sec', 'public.txt'), 'public');
    mkdirSync(path.join(base, 'empty'));
    symlinkSync(path.join(base, 'empty'), path.join(base, 'link'));
    const { share } = await localShare([proj]);
    setLocal(share, true);
    const script = `const fs = require('fs'); const [on, held, link] = [process.env.ON, process.env.HELD, process.env.LINK];
      const end = Date.now() + 2000;
      while (Date.now() < end) { fs.renameSync(on, held); fs.renameSync(link, on); fs.renameSync(on, link); fs.renameSync(held, on); }`;
    const swapper = spawn(process.execPath, ['-e', script], { env: { ...process.env, ON: path.join(proj, 'sec'), HELD: path.join(base, 'held'), LINK: path.join(base, 'link') }, stdio: 'ignore' });
    cleanups.push(() => void (swapper.exitCode === null && swapper.kill()));
    let running = true;
    const exited = new Promise<void>((resolve) => swapper.on('exit', () => resolve()));
    void exited.then(() => (running = false));
    let listedPrivate = 0;
    let openedPrivate = 0;
    let tries = 0;
    while (running) {
      tries++;
      try {
        if ((await listAll(share, 'proj/sec')).some((e) => e.name === 'private.txt')) listedPrivate++;
      } catch {
        // a coded refusal while the link is in place
      }
      try {
        const opened = await share.openFile('proj/sec/private.txt');
        await opened.handle.close();
        openedPrivate++;
      } catch {
        // EXCLUDED, or refused while the link is in place
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    await exited;
    assert.deepEqual({ listedPrivate, openedPrivate }, { listedPrivate: 0, openedPrivate: 0 }, `a file its folder's .gitignore excludes was listed or opened (${tries} tries)`);
  });

  it('a hard link to the identity key in a downloaded folder (share.tree, walk): not even its name is shown, as share.list does not show it', async () => {
    // FOUND, since fixed (low; both paths: walk passes withStats=false, which skips isPrivateHardLink): share.list
    // leaves a hard link to the identity key out entirely ("not even its name and size are shown"),
    // but walk lists its name, and the folder stream (share.tree) then reports it to the peer as
    // `skipped <path> EXCLUDED`: the peer learns the name (and that it is a private file). Fix: in
    // readDirBatchesSync/readDirBatches without stats, still lstat entries whose dirent is a file
    // when a private file with nlink > 1 could match (or lstat every file: one syscall), and drop
    // private hard links; or have the tree answer leave EXCLUDED files out silently.
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    mkdirSync(path.join(proj, 'keys'), { recursive: true });
    writeFileSync(path.join(proj, 'keys', 'real.txt'), 'x');
    const { sharer, conn } = await sharerOf([proj]);
    linkSync(path.join(sharer.home, 'key.pem'), path.join(proj, 'keys', 'innocent-name.txt'));
    assert.deepEqual((await conn.share.list('proj/keys')).map((e) => e.name), ['real.txt'], 'share.list hides it');
    const seen: string[] = [];
    for await (const record of conn.share.tree('proj/keys')) seen.push(`${record.kind}:${record.path}`);
    assert.deepEqual(seen, ['file:real.txt'], 'the folder download names nothing but real.txt');
  });

  it('40,000 hard links to the identity key in one folder: the listing does not hold the sharer\'s event loop in one piece', async () => {
    // FOUND, since fixed (medium: any local user who can write in a shared folder stalls the sharer, i.e. the
    // VS Code extension host, for as long as they like): readDirBatchesSync fills a batch with the
    // entries it *keeps*; what it skips (hard links to private files, each after an lstat;
    // excluded names; symlinks, FIFOs, sockets, devices, non-UTF-8 names) does not count, so a
    // folder of nothing but skipped entries is read and lstat'ed in one synchronous run, however
    // many there are (maxListEntries counts kept entries only). Measured: 50,000 hard links to the
    // key held the event loop 877 ms (asynchronous path: 57 ms); it grows linearly. And even a
    // full batch does not return to the event loop: `yield` in an async generator resumes its
    // consumer in a microtask, so a consumer that does no I/O between batches (walk collects every
    // batch of a folder before it yields anything) runs the whole folder in one piece (50,000
    // plain files: 173 ms synchronous, 74 ms asynchronous; share.list of them consumed directly:
    // 809 ms). Fix: count every dirent read toward the batch (skipped ones included), and after
    // each batch give the event loop a turn (`await new Promise(setImmediate)`) before reading on.
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    mkdirSync(path.join(proj, 'keys'), { recursive: true });
    const { sharer, conn } = await sharerOf([proj]);
    const key = path.join(sharer.home, 'key.pem');
    for (let i = 0; i < 40_000; i++) linkSync(key, path.join(proj, 'keys', `k${i}`));
    writeFileSync(path.join(proj, 'keys', 'real.txt'), 'x');
    const { result, stallMs } = await longestStall5(() => conn.share.list('proj/keys'));
    assert.deepEqual(result?.map((e) => e.name), ['real.txt']);
    setLocal(sharer.share, false);
    const asyncStall = (await longestStall5(() => conn.share.list('proj/keys'))).stallMs;
    assert.ok(stallMs < 250, `the sharer's event loop was held ${stallMs.toFixed(0)} ms in one piece by a folder of 40,000 hard links to its key (the asynchronous path: ${asyncStall.toFixed(0)} ms)`);
  });

  it('40,000 names a .gitignore excludes, in one folder: the listing does not hold the sharer\'s event loop in one piece', async () => {
    // FOUND, since fixed (medium, same cause as above): excluded names never fill a batch, so the whole folder
    // is read and matched against the rules in one synchronous run. Measured: 50,000 `*.log` files
    // held the event loop 454 ms (asynchronous path: 17 ms). Fix as above.
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    mkdirSync(path.join(proj, 'logs'), { recursive: true });
    writeFileSync(path.join(proj, '.gitignore'), '*.log\n');
    for (let i = 0; i < 40_000; i++) writeFileSync(path.join(proj, 'logs', `f${i}.log`), '');
    writeFileSync(path.join(proj, 'logs', 'real.txt'), 'x');
    const { sharer, conn } = await sharerOf([proj]);
    const { result, stallMs } = await longestStall5(() => conn.share.list('proj/logs'));
    assert.deepEqual(result?.map((e) => e.name), ['real.txt']);
    setLocal(sharer.share, false);
    const asyncStall = (await longestStall5(() => conn.share.list('proj/logs'))).stallMs;
    assert.ok(stallMs < 200, `the sharer's event loop was held ${stallMs.toFixed(0)} ms in one piece by 40,000 excluded names (the asynchronous path: ${asyncStall.toFixed(0)} ms)`);
  });
});

// =============================================================================================
// Mounts made after the share looked (the sharer's event loop is the victim)
// =============================================================================================

describe('a stalled mount placed after the mount table was read', () => {
  it('a stalled FUSE mount over the shared root itself: the listing does not hold the event loop', async () => {
    // FOUND, since fixed (medium): MountTable.crosses only counts mount points strictly *below* the root
    // (point.startsWith(root + '/')) and holdsMount only those directly in the listed folder, so a
    // mount made at the root itself (or above it) after Share.create is never seen: root.local
    // was decided once, at Share.create, from the file system then at that path. The listing then
    // takes the synchronous path and openSync(root.realPath) blocks the event loop for as long as
    // the mount does not answer (here 2.5 s, the holder's life; a hard NFS mount: for ever). The
    // same mount at the root's parent does the same. (readSmallFile, older, has the same gap.)
    // Fix: before the synchronous path, also require that no mount point is at or above the root
    // other than those seen when the root was judged local (keep the root's mount point and
    // st_dev from Share.create; a table entry at/above root that differs -> asynchronous path).
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    mkdirSync(path.join(proj, 'sub'), { recursive: true });
    writeFileSync(path.join(proj, 'sub', 'a.txt'), 'x');
    const { share } = await localShare([proj]);
    assert.deepEqual((await listAll(share, 'proj/sub')).map((e) => e.name), ['a.txt']);
    await sleep(2100); // the table is older than its 2 s: the next listing reads it again, with the mount in it
    const holder = stalledMount(proj, 2500, (c) => cleanups.push(c));
    await until('the stalled mount is in place', () => mounted(proj), 5000);
    const { error, stallMs } = await longestStall5(() => listAll(share, 'proj/sub'));
    holder.kill();
    assert.ok(stallMs < 1000, `the event loop was held ${stallMs.toFixed(0)} ms by a synchronous open below a stalled mount over the shared root (${codeOf(error) ?? 'listed'})`);
  });

  it('a stalled FUSE mount made inside the shared folder within 2 s of a listing: the next listing does not hold the event loop', async () => {
    // FOUND, since fixed (low-medium; round 11's fix left this window, and the synchronous path now also opens
    // and reads the folder): the table is read again only when it is over 2 s old, so a mount
    // made within 2 s of the last listing is not in it. A listing of the folder holding the mount
    // point then lstat's it synchronously and stalls until the mount answers (here 2.5 s). A
    // follower's or an editor's repeated listings keep the table young. Fix: read the table
    // before every listing that would take the synchronous path (it is one small read, cheaper
    // than the thread-pool round trips the path saves), or only skip the read when the table is
    // younger than the time one listing takes, not 2 s.
    const base = tempDir('peershare-r13-');
    const proj = path.join(base, 'proj');
    const point = path.join(proj, 'sub', 'mnt');
    mkdirSync(point, { recursive: true });
    for (let i = 0; i < 3; i++) writeFileSync(path.join(proj, 'sub', `f${i}.txt`), 'x');
    const { share } = await localShare([proj]);
    assert.equal((await listAll(share, 'proj/sub')).length, 4, 'listed once: the table is fresh');
    const holder = stalledMount(point, 2500, (c) => cleanups.push(c));
    await until('the stalled mount is in place', () => mounted(point), 1500);
    const { result, stallMs } = await longestStall5(() => listAll(share, 'proj/sub'));
    holder.kill();
    assert.ok(stallMs < 1000, `the event loop was held ${stallMs.toFixed(0)} ms by a synchronous lstat of a mount made since the table was read (listed ${JSON.stringify(result?.map((e) => e.name))})`);
  });
});

// =============================================================================================
// A hostile sharer's listings to a syncing client (the client is the victim)
// =============================================================================================

describe('a hostile sharer\'s listings to `peershare sync` (deltaFolder)', () => {
  it('names with a slash, "." or "..", empty, or listed twice: BAD_NAME, nothing written anywhere', async () => {
    const crafted: Record<string, unknown>[][] = [
      [{ name: '../escape.txt', type: 'file', size: 3, mtimeMs: MTIME_MS }],
      [{ name: 'sub/../../escape.txt', type: 'file', size: 3, mtimeMs: MTIME_MS }],
      [{ name: '..', type: 'dir', size: 0, mtimeMs: MTIME_MS }],
      [{ name: '.', type: 'dir', size: 0, mtimeMs: MTIME_MS }],
      [{ name: '', type: 'file', size: 3, mtimeMs: MTIME_MS }],
      [{ name: 'outside', type: 'dir', size: 0, mtimeMs: MTIME_MS }, { name: 'outside', type: 'file', size: 3, mtimeMs: MTIME_MS }],
      [{ name: '\uFF0E\uFF0E', type: 'dir', size: 0, mtimeMs: MTIME_MS }],
      [{ name: 'a\\b', type: 'file', size: 3, mtimeMs: MTIME_MS }],
    ];
    for (const entries of crafted) {
      const folder = fakeFolder({ 'escape.txt': 'bad', 'sub/x': 'x' });
      folder.listing = (rel, honest) => (rel === 'sub' ? entries : honest.filter((e) => e.name === 'sub'));
      const { conn } = await hostileSharer(folder);
      const { base, dest } = await victimFolders();
      const before = await snapshot(base);
      const { error } = await longestStall5(() => deltaFolder(conn, 'ws', dest));
      assert.equal(codeOf(error), 'BAD_NAME', `${JSON.stringify(entries.map((e) => e.name))}: ${String(error)}`);
      const after = await snapshot(base);
      assert.deepEqual(Object.keys(after).filter((p) => !(p in before)), ['dest/sub'], 'only the listed folder was made');
      assert.deepEqual((await listTree(dest)), ['sub/']);
    }
  });

  it('names unsafe here at depth (.git, .VSCODE, CON, a colon, a trailing dot, invisible characters): left alone one by one, the rest synced', async () => {
    const folder = fakeFolder({ 'sub/ok.txt': 'ok', 'sub/.git/config': 'c', 'sub/.VSCODE/tasks.json': 't', 'sub/CON': 'c', 'sub/a:b': 'c', 'sub/trail.': 'c', 'sub/in\u200Bvisible': 'c', 'sub/deep/.Git/hooks/post-checkout': 'h' });
    const { conn } = await hostileSharer(folder);
    const { base, dest } = await victimFolders();
    const outsideBefore = await snapshot(path.join(base, 'outside'));
    const result = await deltaFolder(conn, 'ws', dest);
    assert.deepEqual(await listTree(dest), ['sub/', 'sub/deep/', 'sub/ok.txt']);
    assert.deepEqual(result.leftAlone.map((l) => l.path).sort(), ['sub/.VSCODE', 'sub/.git', 'sub/CON', 'sub/a:b', 'sub/deep/.Git', 'sub/in\u200Bvisible', 'sub/trail.'].sort());
    assert.deepEqual(await snapshot(path.join(base, 'outside')), outsideBefore);
  });

  it('a name that fits alone but makes its path one byte longer than maxPathBytes: BAD_NAME, the path one byte shorter is written', async () => {
    // The name is now checked against what is left of the length after its folder's path: the
    // same limit as the whole path's check before.
    const folderName = 'd'.repeat(200);
    for (const [nameLength, expected] of [[99, 'written'], [100, 'BAD_NAME']] as const) {
      const name = 'n'.repeat(nameLength);
      const folder = fakeFolder({ [`${folderName}/${name}`]: 'x' });
      const { conn } = await hostileSharer(folder, { maxPathBytes: 300 });
      const { dest } = await victimFolders();
      const { error } = await longestStall5(() => deltaFolder(conn, 'ws', dest));
      if (expected === 'written') {
        assert.equal(error, undefined, String(error));
        assert.deepEqual(await listTree(dest), [`${folderName}/`, `${folderName}/${name}`]);
      } else {
        assert.equal(codeOf(error), 'BAD_NAME', String(error));
        assert.deepEqual(await listTree(dest), [`${folderName}/`]);
      }
    }
  });

  it('a destination subfolder swapped for a symlink to outside after the quick check, before the updates: nothing outside written', async () => {
    const files: Record<string, string> = {};
    for (let i = 0; i < 6; i++) files[`sub/h${i}`] = `held ${i}`;
    files['sub/x.txt'] = 'the sharer’s x';
    files['sub/secret.txt'] = 'overwritten?';
    const folder = fakeFolder(files);
    const gate = holder('h');
    folder.beforeChunks = gate.beforeChunks;
    const { conn } = await hostileSharer(folder);
    const { base, dest, outside } = await victimFolders();
    const outsideBefore = await snapshot(outside);
    const run = deltaFolder(conn, 'ws', dest);
    run.catch(() => undefined);
    await until('six updates held after the quick check', () => gate.held() === 6, 10_000);
    renameSync(path.join(dest, 'sub'), path.join(base, 'moved-sub'));
    symlinkSync(outside, path.join(dest, 'sub'));
    gate.release();
    await run.catch(() => undefined);
    assert.deepEqual(await snapshot(outside), outsideBefore, 'nothing outside the destination was created, changed or removed');
    assert.equal(await fs.readFile(path.join(outside, 'secret.txt'), 'utf8'), 'the victim’s own file\n');
  });

  it('local files replaced by a FIFO, a symlink to outside or a hard link to outside after the quick check: left alone, no hang, nothing outside changed', async () => {
    const files: Record<string, string> = {};
    for (let i = 0; i < 6; i++) files[`h${i}`] = `held ${i}`;
    files['zz-fifo'] = 'the sharer’s fifo';
    files['zz-hardlink'] = 'the sharer’s hard link';
    files['zz-link'] = 'the sharer’s link';
    const folder = fakeFolder(files);
    const gate = holder('h');
    folder.beforeChunks = gate.beforeChunks;
    const { conn } = await hostileSharer(folder);
    const { dest, outside, secret } = await victimFolders();
    for (const name of ['zz-fifo', 'zz-hardlink', 'zz-link']) await fs.writeFile(path.join(dest, name), 'old local copy, another size');
    const run = deltaFolder(conn, 'ws', dest);
    run.catch(() => undefined);
    await until('six updates held after the quick check', () => gate.held() === 6, 10_000);
    await fs.rm(path.join(dest, 'zz-fifo'));
    assert.equal(spawnSync('mkfifo', [path.join(dest, 'zz-fifo')]).status, 0);
    await fs.rm(path.join(dest, 'zz-link'));
    symlinkSync(secret, path.join(dest, 'zz-link'));
    await fs.rm(path.join(dest, 'zz-hardlink'));
    linkSync(secret, path.join(dest, 'zz-hardlink'));
    const outsideBefore = await snapshot(outside); // after the link (which changes the secret's ctime)
    gate.release();
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([run, new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), 20_000)))]).finally(() => clearTimeout(timer));
    assert.notEqual(result, 'hung', 'the sync ended');
    // The ctime may move: the destination's name for the hard link replaced drops the secret's link count.
    const noCtime = (snap: Record<string, string>): Record<string, string> => Object.fromEntries(Object.entries(snap).map(([p, v]) => [p, v.split(' ').filter((_, i) => i !== 4).join(' ')]));
    assert.deepEqual(noCtime(await snapshot(outside)), noCtime(outsideBefore), 'the secret unchanged: bytes, mode, mtime, inode');
    assert.equal(await fs.readFile(secret, 'utf8'), 'the victim’s own file\n');
    const hardlink = await fs.lstat(path.join(dest, 'zz-hardlink'));
    assert.ok(hardlink.ino !== (await fs.lstat(secret)).ino || result === undefined || (result as { leftAlone: { path: string }[] }).leftAlone.some((l) => l.path === 'zz-hardlink'), 'the hard link was replaced by a file of its own, or left alone');
    assert.ok((await fs.lstat(path.join(dest, 'zz-fifo'))).isFIFO() || (await fs.readFile(path.join(dest, 'zz-fifo'), 'utf8')) === 'the sharer’s fifo', 'the FIFO left alone or replaced, never written through');
  });

  it('a file created here after the quick check (the sync saw none) is not overwritten without asking keepLocal, nor recorded as created by the sync', async () => {
    // FOUND, since fixed (medium; regression of 0b9f8fa): deltaFolder now lstat's a whole folder's files in one
    // pass and hands each differing file's lstat to updateFileIn, which runs only when the work
    // queue reaches it (after FILES_AT_ONCE others, i.e. after their transfers). A file that did
    // not exist at the quick check but was created by the user (or an editor) before its update
    // started is overwritten with no keepLocal check (updateFileIn asks keepLocal only when its
    // stale `st` is set) and recorded `created: true`, so `--delete` will later remove it when the
    // sharer drops the name. Before 0b9f8fa syncFileIn lstat'ed when the task started, and Follow
    // (keepLocalEdits) kept the user's file. Fix: in updateFileIn, lstat `local` again (one
    // synchronous lstat per *changed* file through the pinned path) and take that; or run
    // firstLook inside the task as syncFileIn does, keeping the batch pass only as a filter.
    const files: Record<string, string> = {};
    for (let i = 0; i < 6; i++) files[`h${i}`] = `held ${i}`;
    files['zz.txt'] = 'the sharer’s version';
    const folder = fakeFolder(files);
    const gate = holder('h');
    folder.beforeChunks = gate.beforeChunks;
    const { conn, hostileId } = await hostileSharer(folder);
    const { dest } = await victimFolders();
    const origins = await OriginStore.open(path.join(tempDir('peershare-r13-home-'), 'origins', 'o.json'));
    const run = syncFolder(conn, 'ws', dest, { origins, keepLocalEdits: true });
    run.catch(() => undefined);
    await until('six updates held after the quick check', () => gate.held() === 6, 10_000);
    await fs.writeFile(path.join(dest, 'zz.txt'), 'mine, typed while the sync ran');
    gate.release();
    const report = await run;
    const recorded = origins.begin(hostileId, 'ws', dest, 'dir').files.get('zz.txt');
    assert.equal(await fs.readFile(path.join(dest, 'zz.txt'), 'utf8'), 'mine, typed while the sync ran', `the user's file was overwritten (report: ${JSON.stringify(report.leftAlone)})`);
    assert.notEqual(recorded?.created, true, 'a file the user made is never recorded as created by the sync (--delete would remove it)');
  });
});

// =============================================================================================
// The origin record (what `--delete` may remove)
// =============================================================================================

describe('the origin record', () => {
  it('a synced file named __proto__ is kept in the record across a restart', async () => {
    // FOUND, since fixed (low; regression of 1a0e4c8): recordedFiles builds the record with
    // `recorded[rel] = [...]` on a plain object; for rel '__proto__' that assignment sets the
    // object's prototype instead of a property, so JSON.stringify leaves the file out of the saved
    // record (Object.fromEntries, used before, defined it as an own property). After a restart
    // (every `peershare sync` is one) the record no longer knows that the sync created that file
    // and what version landed: Follow with keepLocalEdits then takes it as edited here and never
    // updates it again, and --delete never removes it. Fix: `Object.create(null)` for `recorded`
    // (or Object.defineProperty / Object.fromEntries).
    const home = tempDir('peershare-r13-home-');
    const file = path.join(home, 'origins', 'o.json');
    const dest = path.join(tempDir('peershare-r13-'), 'dest');
    const store = await OriginStore.open(file);
    const origin = store.begin('peer', 'ws', dest, 'dir');
    for (const rel of ['__proto__', 'constructor', 'toString', 'a/__proto__', '__proto__/x', 'plain']) store.setFile(origin, rel, { size: 1, mtimeMs: MTIME_MS, created: true });
    await store.flush();
    const again = await OriginStore.open(file);
    const reloaded = again.begin('peer', 'ws', dest, 'dir');
    assert.deepEqual([...reloaded.files.keys()].sort(), ['__proto__', '__proto__/x', 'a/__proto__', 'constructor', 'plain', 'toString'].sort());
    assert.equal(Object.getPrototypeOf({}), Object.prototype);
  });

  it('a crafted record: the folder-at-a-time check keeps exactly the paths the whole-path check keeps (unsafe folders, names, lengths to the byte)', async () => {
    const home = tempDir('peershare-r13-home-');
    const dir = path.join(home, 'origins');
    await fs.mkdir(dir, { mode: 0o700 });
    chmodSync(home, 0o700);
    const file = path.join(dir, 'o.json');
    const long = Array.from({ length: 16 }, (_, i) => String.fromCharCode(97 + i).repeat(250)).join('/'); // 4,015 bytes
    const rels = [
      'ok/a.txt',
      '.git/config',
      'a/.GIT/config',
      'a/b/.vscode/settings.json',
      'x/.Vscode',
      'CON/x',
      'x/con.txt',
      'x/aux',
      'a:b/c',
      'x/y:z',
      'x./y',
      'x/y ',
      'in\u200Bvisible/x',
      'x/in\u200Bvisible',
      'GIT~1/hooks/x',
      'ok/\uFF0E\uFF0E/x',
      '\uFF0E\uFF0E/x',
      'x/../y',
      './x',
      'x//y',
      'x\\y',
      '/abs',
      `${long}/${'n'.repeat(80)}`, // 4,096 bytes: kept
      `${long}/${'n'.repeat(81)}`, // 4,097 bytes: not
      `${long}/${'é'.repeat(40)}`, // 4,096 bytes
      `${long}/${'é'.repeat(41)}`, // 4,098 bytes
      `${'m'.repeat(256)}/x`,
      `x/${'m'.repeat(256)}`,
      'ok/\uFFFD',
      'ok/deep/er/file',
      'ok',
    ];
    const files: Record<string, unknown> = {};
    for (const rel of rels) files[rel] = [1, MTIME_MS, '', 1];
    const dest = path.join(tempDir('peershare-r13-'), 'dest');
    await fs.writeFile(file, JSON.stringify({ version: 1, origins: [{ peerId: 'peer', remotePath: 'ws', localPath: dest, type: 'dir', files }] }), { mode: 0o600 });
    const store = await OriginStore.open(file);
    const kept = [...store.begin('peer', 'ws', dest, 'dir').files.keys()].sort();
    const wholePath = (rel: string): boolean => {
      if (!rel.split('/').every((c) => c !== '' && c !== '.' && c !== '..' && !c.includes('\\') && !c.includes('\0'))) return false;
      try {
        return inspectReceivedName(rel, 4096).unsafeHere === undefined;
      } catch {
        return false;
      }
    };
    assert.deepEqual(kept, rels.filter(wholePath).sort());
    assert.ok(kept.includes(`${long}/${'n'.repeat(80)}`) && !kept.includes(`${long}/${'n'.repeat(81)}`), 'the length limit is kept to the byte');
    assert.ok(!kept.some((rel) => /\.git|\.vscode|con|aux/i.test(rel)), `nothing in .git or .vscode, no reserved name: ${kept.join(', ')}`);
  });

  it('setFile on a version found as recorded keeps `created`, and a changed version is recorded (the skip is exact)', async () => {
    const home = tempDir('peershare-r13-home-');
    const file = path.join(home, 'origins', 'o.json');
    const dest = path.join(tempDir('peershare-r13-'), 'dest');
    const store = await OriginStore.open(file);
    const origin = store.begin('peer', 'ws', dest, 'dir');
    store.setFile(origin, 'f', { size: 1, mtimeMs: MTIME_MS, fileHash: 'a'.repeat(64), created: true });
    await store.flush();
    store.setFile(origin, 'f', { size: 1, mtimeMs: MTIME_MS, fileHash: 'a'.repeat(64), created: false }); // found as recorded by the next sync
    store.setFile(origin, 'g', { size: 1, mtimeMs: MTIME_MS, created: false });
    store.setFile(origin, 'g', { size: 1, mtimeMs: MTIME_MS, created: true }); // created now: must become true
    store.setFile(origin, 'h', { size: 1, mtimeMs: MTIME_MS, created: true });
    store.setFile(origin, 'h', { size: 2, mtimeMs: MTIME_MS, created: false }); // changed on the sharer: the new version, still created
    await store.flush();
    const reloaded = (await OriginStore.open(file)).begin('peer', 'ws', dest, 'dir');
    assert.deepEqual(reloaded.files.get('f'), { size: 1, mtimeMs: MTIME_MS, fileHash: 'a'.repeat(64), created: true });
    assert.deepEqual(reloaded.files.get('g'), { size: 1, mtimeMs: MTIME_MS, fileHash: undefined, created: true });
    assert.deepEqual(reloaded.files.get('h'), { size: 2, mtimeMs: MTIME_MS, fileHash: undefined, created: true });
  });
});
