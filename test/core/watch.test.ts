import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { TrustStore, type Limits, type PeerConnection } from '../../src/core';
import type { FolderChange, WatchBatch } from '../../src/core/watch';
import fc from 'fast-check';
import { parseWatchReply, parseWatchRequest } from '../../src/core/v2/watch-messages';
import { fuzzer, refusedWith } from '../security/fuzz-kit';
import { connectWithInvite, rejectsWithCode, startSharer, tempDir, until, type Sharer, type TestPeer } from '../helpers';

/**
 * share.watch (docs/protocol-v2.md 14) end to end: a real sharer on loopback over TLS, real files,
 * a real client. Nothing asserts tight timing: each expectation is polled with a generous deadline.
 */

const DEADLINE_MS = 20_000;

/** Until no batch has arrived for a second. */
async function quiet(heard: Heard): Promise<void> {
  let count = -1;
  let since = Date.now();
  const end = Date.now() + DEADLINE_MS;
  while (Date.now() - since < 1000) {
    if (Date.now() > end) throw new Error('The batches never stopped');
    if (heard.batches.length !== count) {
      count = heard.batches.length;
      since = Date.now();
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** What a watch heard: every batch, in order. */
class Heard {
  readonly batches: WatchBatch[] = [];
  readonly onChanges = (batch: WatchBatch): void => void this.batches.push(batch);

  get changes(): FolderChange[] {
    return this.batches.flatMap((b) => (b.kind === 'changes' ? b.changes : []));
  }

  last(name: string): FolderChange | undefined {
    return this.changes.filter((c) => c.path === name).pop();
  }

  get resyncs(): number {
    return this.batches.filter((b) => b.kind === 'resync').length;
  }
}

const opened: { sharer: Sharer; conn: PeerConnection }[] = [];
after(async () => {
  for (const { sharer, conn } of opened) {
    conn.close();
    await sharer.server.close();
  }
});

/** A sharer of one folder `proj`, and a paired client; `prepare` runs before the share starts. */
async function setUp(
  options: { sharer?: Partial<Limits>; client?: Partial<Limits>; prepare?: (proj: string) => Promise<void>; privateNames?: string[] } = {},
): Promise<{ proj: string; sharer: Sharer; conn: PeerConnection; client: TestPeer; watchers: () => Promise<number> }> {
  const proj = path.join(tempDir(), 'proj');
  await fs.mkdir(proj);
  await options.prepare?.(proj);
  const sharer = await startSharer([proj], {
    limits: options.sharer,
    ...(options.privateNames ? { share: { privatePaths: options.privateNames.map((name) => path.join(proj, name)) } } : {}),
  });
  const { conn, client } = await connectWithInvite(sharer.invite, undefined, options.client);
  opened.push({ sharer, conn });
  const watchers = async (): Promise<number> => (await sharer.server.shareProvider()).watches.hub.watcherCount('proj');
  return { proj, sharer, conn, client, watchers };
}

describe('share.watch: a live tree', () => {
  it('reports a file added, changed (size and time) and removed, with its new entry', async () => {
    const { proj, conn } = await setUp();
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges });
    await fs.writeFile(path.join(proj, 'a.txt'), 'hello');
    await until('a.txt added', () => heard.last('a.txt')?.type === 'added');
    const added = heard.last('a.txt')!;
    assert.equal(added.entry?.type, 'file');
    assert.equal(added.entry?.size, 5);
    const before = added.entry!.mtimeMs;

    await fs.appendFile(path.join(proj, 'a.txt'), ', world');
    await fs.utimes(path.join(proj, 'a.txt'), new Date(), new Date(before + 60_000));
    await until('a.txt changed to 12 bytes', () => heard.last('a.txt')?.type === 'changed' && heard.last('a.txt')?.entry?.size === 12);
    // Within a millisecond: utimes goes through seconds as a float.
    await until('a.txt changed time', () => Math.abs((heard.last('a.txt')?.entry?.mtimeMs ?? 0) - (before + 60_000)) <= 1);

    await fs.mkdir(path.join(proj, 'sub'));
    await until('sub added as a folder', () => heard.last('sub')?.entry?.type === 'dir');
    await fs.rm(path.join(proj, 'a.txt'));
    await until('a.txt removed', () => heard.last('a.txt')?.type === 'removed');
    assert.equal(heard.last('a.txt')?.entry, undefined);
    // What a listing now shows agrees with the changes.
    assert.deepEqual((await conn.list('proj')).map((e) => e.name), ['sub']);
    watch.stop();
    await watch.ended;
  });

  it('coalesces: 100 writes to one file arrive as a few batches, the last state winning', async () => {
    const { proj, conn } = await setUp();
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges });
    const file = path.join(proj, 'busy.log');
    for (let i = 1; i <= 100; i++) {
      await fs.appendFile(file, 'x');
      await new Promise((resolve) => setImmediate(resolve));
    }
    await until('the last size', () => heard.last('busy.log')?.entry?.size === 100);
    const batchesNamingIt = heard.batches.filter((b) => b.kind === 'changes' && b.changes.some((c) => c.path === 'busy.log')).length;
    // At most 4 batches a second: 100 writes make a handful, never one each.
    assert.ok(batchesNamingIt <= 20, `${batchesNamingIt} batches for 100 writes`);
    assert.equal(heard.changes.filter((c) => c.path === 'busy.log' && c.type === 'added').length, 1);
    watch.stop();
    await watch.ended;
  });

  it('bounds a burst of 1,000 files: batches within the bound, or resyncs, and a listing has them all', async () => {
    const { proj, conn } = await setUp({ sharer: { maxWatchChanges: 100 } });
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges });
    for (let i = 0; i < 1000; i++) await fs.writeFile(path.join(proj, `f${String(i).padStart(4, '0')}.txt`), String(i));
    await until('a resync', () => heard.resyncs > 0);
    // The burst's tail may still turn into more resyncs: wait for it to be over (a second without a batch).
    await quiet(heard);
    for (const batch of heard.batches) if (batch.kind === 'changes') assert.ok(batch.changes.length <= 100, `a batch of ${batch.changes.length} changes`);
    assert.equal((await conn.list('proj')).length, 1000);
    // The watch goes on after a resync.
    await fs.writeFile(path.join(proj, 'after.txt'), 'later');
    await until('a change after the resync', () => heard.last('after.txt')?.type === 'added');
    watch.stop();
    await watch.ended;
  });

  it('with the default bounds, a burst of 1,000 files is all reported or becomes a resync', async () => {
    const { proj, conn } = await setUp();
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges });
    for (let i = 0; i < 1000; i++) await fs.writeFile(path.join(proj, `g${i}.txt`), 'x');
    const added = (): number => new Set(heard.changes.filter((c) => c.type === 'added').map((c) => c.path)).size;
    await until('1,000 added or a resync', () => added() === 1000 || heard.resyncs > 0);
    for (const batch of heard.batches) if (batch.kind === 'changes') assert.ok(batch.changes.length <= 1000);
    watch.stop();
    await watch.ended;
  });

  it('never names an excluded file: .env, a .gitignored file, a private path, a symbolic link, a FIFO', async () => {
    const { proj, conn } = await setUp({
      prepare: (dir) => fs.writeFile(path.join(dir, '.gitignore'), 'ignored.txt\n'),
      privateNames: ['private.key.txt'],
    });
    const outside = path.join(tempDir(), 'outside.txt');
    await fs.writeFile(outside, 'secret');
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges });
    await fs.writeFile(path.join(proj, '.env'), 'TOKEN=1');
    await fs.writeFile(path.join(proj, 'ignored.txt'), 'ignored');
    await fs.writeFile(path.join(proj, 'private.key.txt'), 'private');
    await fs.symlink(outside, path.join(proj, 'link.txt'));
    execFileSync('mkfifo', [path.join(proj, 'pipe')]);
    await fs.appendFile(path.join(proj, '.env'), '\nMORE=2');
    // A sentinel written after them all: once it is heard, they have been looked at.
    await fs.writeFile(path.join(proj, 'visible.txt'), 'ok');
    await until('visible.txt added', () => heard.last('visible.txt')?.type === 'added');
    await new Promise((resolve) => setTimeout(resolve, 600));
    const named = new Set(heard.changes.map((c) => c.path));
    for (const hidden of ['.env', 'ignored.txt', 'private.key.txt', 'link.txt', 'pipe']) assert.ok(!named.has(hidden), `${hidden} was named`);
    // A listed file replaced by a symbolic link disappears from the tree.
    await fs.rm(path.join(proj, 'visible.txt'));
    await fs.symlink(outside, path.join(proj, 'visible.txt'));
    await until('visible.txt removed', () => heard.last('visible.txt')?.type === 'removed');
    watch.stop();
    await watch.ended;
  });

  it('a .gitignore written while watched removes the names it now excludes, and a revoke ends the watch (PEER_UNTRUSTED) before the next batch', async () => {
    const { proj, sharer, conn, client } = await setUp();
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges });
    await fs.writeFile(path.join(proj, 'build.log'), 'x');
    await until('build.log added', () => heard.last('build.log')?.type === 'added');
    await fs.writeFile(path.join(proj, '.gitignore'), '*.log\n');
    await until('build.log removed once ignored', () => heard.last('build.log')?.type === 'removed');
    assert.equal(heard.last('.gitignore')?.type, 'added');

    // `trust rm` in another process: the sharer is not told, and finds out at its next batch.
    const elsewhere = await TrustStore.open(sharer.home);
    assert.equal(await elsewhere.remove(client.identity.peerId), true);
    await fs.writeFile(path.join(proj, 'after-revoke.txt'), 'x');
    await rejectsWithCode(watch.ended, 'PEER_UNTRUSTED');
    assert.equal(heard.last('after-revoke.txt'), undefined, 'a change reached a revoked peer');
  });

  it('cancel stops the watch and releases the folder watcher; the last of two watches releases it', async () => {
    const { proj, conn, watchers } = await setUp();
    assert.equal(await watchers(), 0, 'nothing is watched before a watch');
    const one = await conn.share.watch('proj', { onChanges: () => undefined });
    const heard = new Heard();
    const two = await conn.share.watch('proj', { onChanges: heard.onChanges });
    assert.equal(await watchers(), 1, 'one watcher for the folder, whatever the number of watches');
    one.stop();
    await one.ended;
    await fs.writeFile(path.join(proj, 'still.txt'), 'x');
    await until('the other watch still hears', () => heard.last('still.txt')?.type === 'added');
    assert.equal(await watchers(), 1);
    two.stop();
    await two.ended;
    const end = Date.now() + DEADLINE_MS;
    while ((await watchers()) !== 0 && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 25));
    assert.equal(await watchers(), 0, 'the folder is no longer watched');
    // Nothing arrives after the stop.
    const count = heard.batches.length;
    await fs.writeFile(path.join(proj, 'late.txt'), 'x');
    await new Promise((resolve) => setTimeout(resolve, 600));
    assert.equal(heard.batches.length, count);
    // The connection is still good: still.txt and late.txt.
    assert.equal((await conn.list('proj')).length, 2);
  });

  it('refuses a watch of an excluded, missing, symbolic-link or non-folder path with a coded error', async () => {
    const { conn, watchers } = await setUp({
      prepare: async (dir) => {
        await fs.mkdir(path.join(dir, '.git'));
        await fs.writeFile(path.join(dir, 'file.txt'), 'x');
        await fs.symlink(tempDir(), path.join(dir, 'linked'));
      },
    });
    const watchOf = (p: string): Promise<unknown> => conn.share.watch(p, { onChanges: () => undefined });
    await rejectsWithCode(watchOf('proj/.git'), 'EXCLUDED');
    await rejectsWithCode(watchOf('proj/missing'), 'NOT_FOUND');
    await rejectsWithCode(watchOf('nosuchroot'), 'NOT_FOUND');
    await rejectsWithCode(watchOf('proj/file.txt'), 'NOT_A_DIRECTORY');
    await rejectsWithCode(watchOf('proj/linked'), 'OUTSIDE_SHARE');
    await rejectsWithCode(watchOf('proj/../etc'), 'OUTSIDE_SHARE');
    await rejectsWithCode(watchOf(''), 'INVALID_ARGUMENT');
    assert.equal(await watchers(), 0);
    // The connection stays; the listing shows the one file (not .git, not the link).
    assert.deepEqual((await conn.list('proj')).map((e) => e.name), ['file.txt']);
  });

  it('refuses a requester that opens more watches than maxWatchesPerConnection (BUSY), and serves it again once one ends', async () => {
    const { proj, conn } = await setUp({ sharer: { maxWatchesPerConnection: 2 } });
    await fs.mkdir(path.join(proj, 'a'));
    await fs.mkdir(path.join(proj, 'b'));
    const first = await conn.share.watch('proj', { onChanges: () => undefined });
    const second = await conn.share.watch('proj/a', { onChanges: () => undefined });
    await rejectsWithCode(conn.share.watch('proj/b', { onChanges: () => undefined }), 'BUSY');
    // A transfer is not refused for it.
    assert.equal((await conn.list('proj')).length, 2);
    first.stop();
    await first.ended;
    const third = await conn.share.watch('proj/b', { onChanges: () => undefined });
    second.stop();
    third.stop();
    await Promise.all([second.ended, third.ended]);
  });

  it('outlives the request deadlines: quiet is a watch\'s normal state', async () => {
    const { proj, conn } = await setUp({ client: { stallTimeoutMs: 300, requestTimeoutMs: 500 } });
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges });
    let ended = false;
    void watch.ended.then(
      () => (ended = true),
      () => (ended = true),
    );
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(ended, false, 'the watch ended by itself');
    await fs.writeFile(path.join(proj, 'late.txt'), 'x');
    await until('a change after the deadlines', () => heard.last('late.txt')?.type === 'added');
    watch.stop();
    await watch.ended;
  });

  it('the share\'s stop ends the watch and releases the watcher', async () => {
    const { sharer, conn, watchers } = await setUp();
    const watch = await conn.share.watch('proj', { onChanges: () => undefined });
    assert.equal(await watchers(), 1);
    await sharer.server.close();
    await assert.rejects(watch.ended);
    const end = Date.now() + DEADLINE_MS;
    while ((await watchers()) !== 0 && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 25));
    assert.equal(await watchers(), 0);
  });

  it('ends with NOT_FOUND when the watched folder is removed', async () => {
    const { proj, conn, watchers } = await setUp();
    await fs.mkdir(path.join(proj, 'gone'));
    const watch = await conn.share.watch('proj/gone', { onChanges: () => undefined });
    await fs.rm(path.join(proj, 'gone'), { recursive: true });
    await rejectsWithCode(watch.ended, 'NOT_FOUND');
    const end = Date.now() + DEADLINE_MS;
    while ((await watchers()) !== 0 && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 25));
    assert.equal(await watchers(), 0);
  });
});

describe('share.watch of a subtree (tree: true): what Follow and sync --watch hear', () => {
  it('names changes by their path below the folder, at any depth, and joins folders made while it watches', async () => {
    const { proj, conn, watchers } = await setUp({ prepare: async (p) => void (await fs.mkdir(path.join(p, 'a', 'b'), { recursive: true })) });
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges, tree: true });
    assert.equal(await watchers(), 3, 'one watcher per folder of the tree');
    await fs.writeFile(path.join(proj, 'a', 'b', 'deep.txt'), 'deep');
    await until('a/b/deep.txt added', () => heard.last('a/b/deep.txt')?.type === 'added');
    assert.equal(heard.last('a/b/deep.txt')?.entry?.size, 4);

    // A folder made with a file already in it (before its watcher could run): the file is told as added.
    await fs.mkdir(path.join(proj, 'new', 'inner'), { recursive: true });
    await fs.writeFile(path.join(proj, 'new', 'inner', 'x.txt'), 'x');
    await until('new/inner/x.txt added', () => heard.last('new/inner/x.txt')?.type === 'added');
    await until('the new folders watched', async () => (await watchers()) === 5);
    await fs.writeFile(path.join(proj, 'new', 'inner', 'y.txt'), 'yy');
    await until('new/inner/y.txt added', () => heard.last('new/inner/y.txt')?.type === 'added');

    // A folder removed: its name goes, and its watchers with it.
    await fs.rm(path.join(proj, 'new'), { recursive: true });
    await until('new removed', () => heard.last('new')?.type === 'removed');
    await until('the removed folders are no longer watched', async () => (await watchers()) === 3);
    watch.stop();
    await watch.ended;
    await until('every watcher released', async () => (await watchers()) === 0);
  });

  it('never names an excluded file or anything below an excluded folder', async () => {
    const { proj, conn, watchers } = await setUp({ prepare: async (p) => {
      await fs.mkdir(path.join(p, '.git', 'objects'), { recursive: true });
      await fs.mkdir(path.join(p, 'src'));
      await fs.writeFile(path.join(p, '.gitignore'), 'build/\n');
    } });
    const heard = new Heard();
    const watch = await conn.share.watch('proj', { onChanges: heard.onChanges, tree: true });
    await fs.mkdir(path.join(proj, 'build'));
    await fs.writeFile(path.join(proj, 'build', 'out.js'), 'x');
    await fs.writeFile(path.join(proj, '.git', 'objects', 'ab12'), 'x');
    await fs.writeFile(path.join(proj, 'src', '.env'), 'SECRET=1');
    await fs.writeFile(path.join(proj, 'src', 'ok.ts'), 'ok');
    await until('src/ok.ts added', () => heard.last('src/ok.ts')?.type === 'added');
    await quiet(heard);
    const named = heard.changes.map((c) => c.path);
    assert.deepEqual(named.filter((n) => /build|\.git|\.env/.test(n)), [], `named: ${named.join(', ')}`);
    assert.equal(await watchers(), 2, 'no watcher in an excluded folder: proj and src only');
    watch.stop();
    await watch.ended;
  });

  it('refuses a tree of more folders than maxTreeWatchFolders (TOO_LARGE), and one growing past it ends so', async () => {
    const { proj, conn, watchers } = await setUp({
      sharer: { maxTreeWatchFolders: 3 },
      prepare: async (p) => {
        for (const name of ['a', 'b', 'c']) await fs.mkdir(path.join(p, name));
      },
    });
    await rejectsWithCode(conn.share.watch('proj', { onChanges: () => undefined, tree: true }), 'TOO_LARGE');
    await until('nothing stays watched', async () => (await watchers()) === 0);
    await fs.rm(path.join(proj, 'c'), { recursive: true });
    const watch = await conn.share.watch('proj', { onChanges: () => undefined, tree: true });
    await fs.mkdir(path.join(proj, 'd'));
    await rejectsWithCode(watch.ended, 'TOO_LARGE');
    await until('nothing stays watched', async () => (await watchers()) === 0);
  });
});

describe('share.watch of a subtree: a budget per peer', () => {
  it('one peer may hold maxTreeWatchesPerPeer tree watches across its connections; the next is BUSY, a plain watch and another peer still get in, and a stopped one frees its room', async () => {
    const { sharer, conn, client } = await setUp({
      sharer: { maxTreeWatchesPerPeer: 2 },
      prepare: async (p) => {
        for (const name of ['a', 'b']) await fs.mkdir(path.join(p, name));
      },
    });
    const second = (await connectWithInvite(sharer.invite, client)).conn;
    opened.push({ sharer, conn: second });
    const quiet = { onChanges: () => undefined, tree: true };
    const first = await conn.share.watch('proj', quiet);
    await second.share.watch('proj/a', quiet);
    const refused = await conn.share.watch('proj/b', quiet).then(
      () => assert.fail('a third tree watch of one peer should be refused'),
      (err: { code: string; message: string }) => err,
    );
    assert.equal(refused.code, 'BUSY');
    assert.match(refused.message, /At most 2 folders may be watched with everything in them/);
    await (await conn.share.watch('proj/b', { onChanges: () => undefined })).stop?.();
    const other = (await connectWithInvite(sharer.invite)).conn;
    opened.push({ sharer, conn: other });
    await other.share.watch('proj/b', quiet);
    first.stop();
    await first.ended;
    await until('the stopped watch frees its room', async () =>
      conn.share.watch('proj/b', quiet).then(
        () => true,
        () => false,
      ),
    );
  });
});

describe('share.watch messages: any input is parsed or refused with a code', () => {
  const { check } = fuzzer(300);
  const anyName = fc.oneof(fc.constantFrom('', '.', '..', 'a/b', 'a//b', '/a', 'a/../b', 'a/./b', 'ok.txt', '\u001b[31m', 'x'.repeat(1025), 'a/'.repeat(3000)), fc.string({ maxLength: 20 }), fc.integer());
  const anyEntry = fc.oneof(
    fc.record({ type: fc.constantFrom('file', 'dir', 'link'), size: fc.oneof(fc.nat(), fc.integer(), fc.double()), mtimeMs: fc.oneof(fc.integer(), fc.double(), fc.constant(9e15)) }, { requiredKeys: [] }),
    fc.anything(),
  );
  const anyChange = fc.oneof(fc.record({ path: anyName, type: fc.constantFrom('added', 'removed', 'changed', 'moved'), entry: anyEntry }, { requiredKeys: [] }), fc.anything());
  const anyReply = fc.oneof(
    fc.record({ type: fc.constantFrom('watching', 'resync', 'changes', 'entries'), changes: fc.oneof(fc.array(anyChange, { maxLength: 5 }), fc.anything()) }, { requiredKeys: ['type'] }),
    fc.record({ type: fc.string({ maxLength: 12 }) }),
  );

  it('a reply from a hostile sharer: PROTOCOL_ERROR, BAD_NAME or TOO_LARGE, never another failure; what passes is well-formed', async () => {
    await check(fc.tuple(anyReply, fc.boolean()), ([reply, tree]) => {
      let parsed;
      try {
        parsed = parseWatchReply(reply as { type: string }, tree);
      } catch (err) {
        refusedWith(err, ['PROTOCOL_ERROR', 'BAD_NAME', 'TOO_LARGE']);
        return;
      }
      if (parsed.kind !== 'changes') return;
      const names = new Set<string>();
      for (const change of parsed.changes) {
        const components = change.path.split('/');
        assert.ok(tree || components.length === 1, 'one name unless the watch is of a tree');
        assert.ok(components.every((c) => c !== '' && c !== '.' && c !== '..') && !names.has(change.path));
        names.add(change.path);
        assert.equal(change.entry === undefined, change.type === 'removed');
        if (change.entry) assert.ok(['file', 'dir'].includes(change.entry.type) && Number.isSafeInteger(change.entry.size) && change.entry.size >= 0);
      }
    });
  });

  it('a request: a string path or PROTOCOL_ERROR', async () => {
    await check(fc.record({ path: fc.anything() }), (request) => {
      try {
        assert.equal(typeof parseWatchRequest({ type: 'share.watch', ...request }).path, 'string');
      } catch (err) {
        refusedWith(err, ['PROTOCOL_ERROR']);
      }
    });
  });
});
