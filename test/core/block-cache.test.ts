import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import {
  BLOCK_CACHE_DIR,
  BlockCache,
  encodeCacheEntry,
  entryName,
  type BlockCacheOptions,
  type BlockHasher,
} from '../../src/core/block-cache';
import { encodeBlockManifest, hashFileBlocks, manifestFromBlockHashes, type BlockManifest } from '../../src/core/blocks';
import { SMALL_FILE_BYTES, resolveLimits, type Limits } from '../../src/core/limits';
import { tempDir } from '../helpers';

const KiB = 1024;
/** Over SMALL_FILE_BYTES, so the cache keeps it; three 128 KiB blocks. */
const FILE_BYTES = 300 * KiB;
/** The racy window the tests use (the default is 3 s); files are left alone twice as long before they are hashed. */
const RACY_MS = 50;
const isRoot = process.getuid?.() === 0;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Waits until files written so far are outside the racy window (setTimeout waits at least this long). */
const settle = () => sleep(RACY_MS * 2);

/** Real hashing (blocks.ts), counted: the proof that a lookup did no hashing. */
function countingHasher(): { hasher: BlockHasher; calls: () => number } {
  let count = 0;
  return {
    hasher: async (file, limits) => {
      count += 1;
      return hashFileBlocks(file, limits);
    },
    calls: () => count,
  };
}

interface Setup {
  home: string;
  files: string;
  cacheDir: string;
  limits: Limits;
}

async function setup(limits: Partial<Limits> = {}): Promise<Setup> {
  const home = tempDir('peershare-home-');
  return { home, files: tempDir('peershare-shared-'), cacheDir: path.join(await fs.realpath(home), BLOCK_CACHE_DIR), limits: resolveLimits(limits) };
}

async function openCache(s: Setup, options: BlockCacheOptions = {}): Promise<BlockCache> {
  return BlockCache.open(s.home, s.limits, { racyMs: RACY_MS, ...options });
}

async function writeFile(s: Setup, name: string, size = FILE_BYTES): Promise<string> {
  const file = path.join(s.files, name);
  await fs.writeFile(file, randomBytes(size));
  return file;
}

/** The entry file the cache keeps for `file` as it is now. */
async function entryOf(s: Setup, file: string): Promise<string> {
  return path.join(s.cacheDir, entryName(await fs.stat(file, { bigint: true })));
}

function assertSameManifest(actual: BlockManifest, expected: BlockManifest): void {
  assert.equal(actual.fileHash.toString('hex'), expected.fileHash.toString('hex'));
  assert.equal(actual.size, expected.size);
  assert.equal(actual.blockSize, expected.blockSize);
  assert.deepEqual(actual.blockHashes.map((h) => h.toString('hex')), expected.blockHashes.map((h) => h.toString('hex')));
}

async function cacheNames(s: Setup): Promise<string[]> {
  return (await fs.readdir(s.cacheDir)).sort();
}

describe('block cache: a second hash of the same file is read from disk', () => {
  it('hashes once, answers the second time from the cache with the same block list, and after a restart too', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    await settle();
    const first = countingHasher();
    const cache = await openCache(s, { hasher: first.hasher });
    const fresh = await cache.hashWithCache(file);
    assert.equal(first.calls(), 1);
    assertSameManifest(fresh, await hashFileBlocks(file, s.limits));
    const again = await cache.hashWithCache(file);
    assert.equal(first.calls(), 1, 'the second hash came from the cache');
    assertSameManifest(again, fresh);

    // A restart: a new cache on the same home, with its own counter.
    await cache.flush();
    const second = countingHasher();
    const restarted = await openCache(s, { hasher: second.hasher });
    const handle = await fs.open(file, 'r');
    try {
      assertSameManifest(await restarted.hashWithCache(handle), fresh);
    } finally {
      await handle.close();
    }
    assert.equal(second.calls(), 0, 'a new process reads the list the first one kept');
  });

  it('keeps its folder 0700 and its entries 0600 under the real path of the home, one file per entry', async () => {
    const s = await setup();
    const link = path.join(tempDir(), 'home-link');
    await fs.symlink(s.home, link);
    const file = await writeFile(s, 'a.bin');
    await settle();
    const cache = await BlockCache.open(link, s.limits, { racyMs: RACY_MS });
    assert.equal(cache.dir, s.cacheDir);
    await cache.hashWithCache(file);
    await cache.flush();
    assert.equal((await fs.lstat(s.cacheDir)).mode & 0o777, 0o700);
    const names = await cacheNames(s);
    assert.deepEqual(names, [path.basename(await entryOf(s, file))]);
    assert.equal((await fs.lstat(path.join(s.cacheDir, names[0]))).mode & 0o777, 0o600);
  });

  it('hashes small files every time and keeps nothing for them (reading them whole is cheaper)', async () => {
    const s = await setup();
    const file = await writeFile(s, 'small.bin', SMALL_FILE_BYTES);
    await settle();
    const counter = countingHasher();
    const cache = await openCache(s, { hasher: counter.hasher });
    await cache.hashWithCache(file);
    await cache.hashWithCache(file);
    assert.equal(counter.calls(), 2);
    assert.deepEqual(await cacheNames(s), []);
  });

  it('hashes a file once when two ask for it at the same time (one waits for the other)', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    await settle();
    const counter = countingHasher();
    const cache = await openCache(s, { hasher: counter.hasher });
    const [first, second] = await Promise.all([cache.hashWithCache(file), cache.hashWithCache(file)]);
    assert.equal(counter.calls(), 1);
    assertSameManifest(second, first);
  });

  it('rehash skips the cache and replaces its entry', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    await settle();
    const counter = countingHasher();
    const cache = await openCache(s, { hasher: counter.hasher });
    const first = await cache.hashWithCache(file);
    const entry = await entryOf(s, file);
    const inodeBefore = (await fs.lstat(entry)).ino;
    assertSameManifest(await cache.hashWithCache(file, { rehash: true }), first);
    assert.equal(counter.calls(), 2);
    assert.notEqual((await fs.lstat(entry)).ino, inodeBefore, 'the entry was written anew');
    await cache.hashWithCache(file);
    assert.equal(counter.calls(), 2);
  });
});

describe('block cache: a changed file never matches', () => {
  /** Hashes `file` into a fresh cache, changes it with `change`, and returns what the next hash did. */
  async function afterChange(s: Setup, file: string, change: () => Promise<void>): Promise<{ calls: number; manifest: BlockManifest }> {
    const counter = countingHasher();
    const cache = await openCache(s, { hasher: counter.hasher });
    await cache.hashWithCache(file);
    await cache.hashWithCache(file);
    assert.equal(counter.calls(), 1, 'cached before the change');
    await change();
    const manifest = await cache.hashWithCache(file);
    assertSameManifest(manifest, await hashFileBlocks(file, s.limits));
    return { calls: counter.calls(), manifest };
  }

  it('misses after a touch (a new mtime, the same bytes)', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    await settle();
    const later = new Date(Date.now() + 60_000);
    const { calls } = await afterChange(s, file, () => fs.utimes(file, later, later));
    assert.equal(calls, 2);
  });

  it('misses after a same-size rewrite right after the hash, within the same second', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    await settle();
    const before = await fs.readFile(file);
    const { calls, manifest } = await afterChange(s, file, async () => {
      const handle = await fs.open(file, 'r+');
      await handle.write(randomBytes(KiB), 0, KiB, 0);
      await handle.close();
    });
    assert.equal(calls, 2);
    assert.equal((await fs.stat(file)).size, before.length);
    assert.notEqual(manifest.blockHashes[0].toString('hex'), (await hashOf(before)).blockHashes[0].toString('hex'));
  });

  it('misses when the content changed and the mtime was set back exactly (the ctime moved, and only the kernel sets it)', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    // A whole second, so setting it back is exact to the nanosecond.
    const mtime = Math.floor(Date.now() / 1000) - 3600;
    await fs.utimes(file, mtime, mtime);
    await settle();
    const old = await fs.stat(file, { bigint: true });
    const { calls } = await afterChange(s, file, async () => {
      const handle = await fs.open(file, 'r+');
      await handle.write(randomBytes(KiB), 0, KiB, FILE_BYTES - KiB);
      await handle.close();
      await fs.utimes(file, mtime, mtime);
    });
    const now = await fs.stat(file, { bigint: true });
    assert.equal(now.mtimeNs, old.mtimeNs, 'the premise: the same mtime');
    assert.equal(now.size, old.size, 'the premise: the same size');
    assert.equal(now.ino, old.ino, 'the premise: the same inode');
    assert.notEqual(now.ctimeNs, old.ctimeNs);
    assert.equal(calls, 2, 'the stale list was not served');
  });

  it('misses after another file of the same size and mtime is renamed over it (a new inode)', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    const replacement = await writeFile(s, 'b.bin');
    const mtime = Math.floor(Date.now() / 1000) - 3600;
    await fs.utimes(file, mtime, mtime);
    await fs.utimes(replacement, mtime, mtime);
    await settle();
    const oldIno = (await fs.stat(file)).ino;
    const { calls } = await afterChange(s, file, () => fs.rename(replacement, file));
    assert.notEqual((await fs.stat(file)).ino, oldIno);
    assert.equal(calls, 2);
  });

  it('keeps nothing for a file changed within the racy window before its hash, so a same-tick rewrite cannot be served stale', async () => {
    const s = await setup();
    const file = await writeFile(s, 'fresh.bin');
    // A window far longer than this test can take even on a loaded machine: the file is racy throughout.
    const counter = countingHasher();
    const cache = await openCache(s, { hasher: counter.hasher, racyMs: 10 * 60_000 });
    await cache.hashWithCache(file);
    await cache.hashWithCache(file);
    assert.equal(counter.calls(), 2);
    assert.deepEqual(await cacheNames(s), [], 'nothing kept');
    // And an entry someone else wrote for it that soon is not trusted either.
    const version = await fs.stat(file, { bigint: true });
    const list = encodeBlockManifest(await hashFileBlocks(file, s.limits));
    await fs.writeFile(await entryOf(s, file), encodeCacheEntry(version, BigInt(Date.now()), list), { mode: 0o600 });
    await cache.hashWithCache(file);
    assert.equal(counter.calls(), 3);
  });

  it('keeps nothing when the file changed while it was hashed', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    await settle();
    let calls = 0;
    const cache = await openCache(s, {
      hasher: async (handle, limits) => {
        calls += 1;
        const manifest = await hashFileBlocks(handle, limits);
        if (calls === 1) await fs.appendFile(file, 'more'); // a writer, just after the last block was read
        return manifest;
      },
    });
    await cache.hashWithCache(file);
    assert.deepEqual(await cacheNames(s), []);
    await settle();
    const manifest = await cache.hashWithCache(file);
    assert.equal(calls, 2);
    assert.equal(manifest.size, FILE_BYTES + 4);
  });
});

async function hashOf(content: Buffer): Promise<BlockManifest> {
  const file = path.join(tempDir(), 'content.bin');
  await fs.writeFile(file, content);
  return hashFileBlocks(file, resolveLimits());
}

describe('block cache: an entry file is trusted only when it is sound', () => {
  /**
   * Caches `file`, spoils its entry with `spoil`, and checks that the next hash ignores the entry
   * (hashes again, right answer), writes a sound one in its place, and that the one after reads it.
   */
  async function ignoredAndReplaced(s: Setup, file: string, spoil: (entry: string) => Promise<void>): Promise<void> {
    const counter = countingHasher();
    const cache = await openCache(s, { hasher: counter.hasher });
    const expected = await cache.hashWithCache(file);
    assertSameManifest(await cache.hashWithCache(file), expected);
    const cachedCalls = counter.calls();
    assert.ok(cachedCalls <= 1, 'cached before it is spoilt');
    const entry = await entryOf(s, file);
    await spoil(entry);
    assertSameManifest(await cache.hashWithCache(file), expected);
    assert.equal(counter.calls(), cachedCalls + 1, 'the spoilt entry was not used');
    const st = await fs.lstat(entry);
    assert.ok(st.isFile() && (st.mode & 0o777) === 0o600, 'a sound entry took its place');
    assert.equal(st.uid, process.getuid?.() ?? st.uid);
    assertSameManifest(await cache.hashWithCache(file), expected);
    assert.equal(counter.calls(), cachedCalls + 1, 'the new entry is used');
  }

  async function cachedFile(): Promise<{ s: Setup; file: string }> {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    await settle();
    return { s, file };
  }

  it('ignores a corrupt entry (one flipped bit in a block hash: the checksum catches it)', async () => {
    const { s, file } = await cachedFile();
    await ignoredAndReplaced(s, file, async (entry) => {
      const bytes = await fs.readFile(entry);
      bytes[64 + 28 + 5] ^= 0x01;
      await fs.writeFile(entry, bytes);
    });
  });

  it('ignores a truncated entry, an empty one, and one of another format', async () => {
    for (const spoil of [
      (entry: string) => fs.truncate(entry, 100),
      (entry: string) => fs.truncate(entry, 0),
      (entry: string) => fs.writeFile(entry, '{"not": "an entry"}'),
    ]) {
      const { s, file } = await cachedFile();
      await ignoredAndReplaced(s, file, spoil);
    }
  });

  it('ignores an entry that is a symbolic link, even to a sound entry, and replaces the link, not its target', async () => {
    const { s, file } = await cachedFile();
    const elsewhere = path.join(tempDir(), 'sound-entry');
    await ignoredAndReplaced(s, file, async (entry) => {
      await fs.copyFile(entry, elsewhere);
      await fs.rm(entry);
      await fs.symlink(elsewhere, entry);
    });
    const target = await fs.lstat(elsewhere);
    assert.ok(target.isFile(), 'the link target is untouched');
  });

  it('ignores an entry others may write (0666), even a sound one', async () => {
    const { s, file } = await cachedFile();
    await ignoredAndReplaced(s, file, (entry) => fs.chmod(entry, 0o666));
  });

  it('ignores an entry of another user (needs root to make one)', { skip: !isRoot && 'needs root to chown' }, async () => {
    const { s, file } = await cachedFile();
    await ignoredAndReplaced(s, file, (entry) => fs.chown(entry, 65534, 65534));
  });

  it('ignores an oversized entry before reading it, and a FIFO without waiting on it', async () => {
    {
      const s = await setup({ maxFileBlocks: 16, maxManifestBytes: 28 + 32 * 16 });
      const file = await writeFile(s, 'a.bin');
      await settle();
      await ignoredAndReplaced(s, file, (entry) => fs.appendFile(entry, Buffer.alloc(1024)));
    }
    {
      const { s, file } = await cachedFile();
      await ignoredAndReplaced(s, file, async (entry) => {
        await fs.rm(entry);
        execFileSync('mkfifo', ['-m', '600', entry]);
      });
    }
  });

  it("ignores another file's entry under this file's name, and a sound-looking entry whose list is for another size", async () => {
    const { s, file } = await cachedFile();
    const other = await writeFile(s, 'other.bin', FILE_BYTES * 2);
    await settle();
    const warm = await openCache(s);
    await warm.hashWithCache(other);
    const otherEntry = await entryOf(s, other);
    await ignoredAndReplaced(s, file, (entry) => fs.copyFile(otherEntry, entry));
    // The right key and checksum, with the list of a file one block longer.
    await ignoredAndReplaced(s, file, async (entry) => {
      const version = await fs.stat(file, { bigint: true });
      const real = await hashFileBlocks(file, s.limits);
      const longer = manifestFromBlockHashes(real.size + real.blockSize, real.blockSize, [...real.blockHashes, real.blockHashes[0]]);
      await fs.writeFile(entry, encodeCacheEntry(version, BigInt(Date.now()), encodeBlockManifest(longer)));
    });
  });

  it('leaves the cache off when its folder belongs to another user (needs root to make one), and still hashes', { skip: !isRoot && 'needs root to chown' }, async () => {
    const s = await setup();
    await fs.mkdir(s.cacheDir, { mode: 0o700 });
    await fs.chown(s.cacheDir, 65534, 65534);
    const file = await writeFile(s, 'a.bin');
    await settle();
    const counter = countingHasher();
    const logged: string[] = [];
    const cache = await openCache(s, { hasher: counter.hasher, log: (line) => logged.push(line) });
    assert.match(cache.disabledReason ?? '', /another user/);
    assert.match(logged.join('\n'), /block cache is off/);
    await cache.hashWithCache(file);
    await cache.hashWithCache(file);
    assert.equal(counter.calls(), 2);
    assert.deepEqual(await cacheNames(s), []);
  });

  it('replaces a cache folder that is a link with a folder of its own, writing nothing where the link pointed', async () => {
    const s = await setup();
    const pointedAt = tempDir('peershare-elsewhere-');
    await fs.symlink(pointedAt, s.cacheDir);
    const file = await writeFile(s, 'a.bin');
    await settle();
    const cache = await openCache(s);
    assert.equal(cache.disabledReason, undefined);
    await cache.hashWithCache(file);
    await cache.flush();
    const st = await fs.lstat(s.cacheDir);
    assert.ok(st.isDirectory() && !st.isSymbolicLink());
    assert.equal((await cacheNames(s)).length, 1);
    assert.deepEqual(await fs.readdir(pointedAt), []);
  });
});

describe('block cache: bounds', () => {
  async function files(s: Setup, count: number): Promise<string[]> {
    const made: string[] = [];
    for (let i = 0; i < count; i++) made.push(await writeFile(s, `f${i}.bin`));
    await settle();
    return made;
  }

  it('evicts the least recently used entries when there are more than blockCacheEntries, down to 90 %', async () => {
    const s = await setup({ blockCacheEntries: 10 });
    const list = await files(s, 11);
    const counter = countingHasher();
    const cache = await openCache(s, { hasher: counter.hasher });
    for (const file of list.slice(0, 10)) await cache.hashWithCache(file);
    await cache.flush();
    // Use the two oldest: now f2 and f3 are the least recently used.
    await cache.hashWithCache(list[0]);
    await cache.hashWithCache(list[1]);
    assert.equal(counter.calls(), 10);
    await cache.hashWithCache(list[10]);
    await cache.flush();
    const kept = new Set(await cacheNames(s));
    assert.equal(kept.size, 9);
    for (const [index, file] of list.entries()) {
      assert.equal(kept.has(path.basename(await entryOf(s, file))), index !== 2 && index !== 3, `f${index}`);
    }
    // What is kept hits, what was evicted is hashed again.
    const restarted = countingHasher();
    const again = await openCache(s, { hasher: restarted.hasher });
    await again.hashWithCache(list[0]);
    assert.equal(restarted.calls(), 0);
    await again.hashWithCache(list[2]);
    assert.equal(restarted.calls(), 1);
  });

  it('evicts by disk space (blockCacheBytes, entries counted in 4 KiB blocks), counting entries written before a restart', async () => {
    const s = await setup({ blockCacheBytes: 5 * 4096 });
    const list = await files(s, 6);
    const first = await openCache(s);
    for (const file of list.slice(0, 5)) await first.hashWithCache(file);
    await first.flush();
    assert.equal((await cacheNames(s)).length, 5);
    // A new process knows nothing of them but the folder.
    const second = await openCache(s);
    await second.hashWithCache(list[5]);
    await second.flush();
    const kept = await cacheNames(s);
    assert.equal(kept.length, 4, 'down to 90 % of 5 blocks: 4 entries');
    const expected = await Promise.all([list[3], list[4], list[5], list[2]].map(async (file) => path.basename(await entryOf(s, file))));
    assert.deepEqual(kept, expected.sort());
  });

  it('removes a temporary file a dead writer left long ago, and leaves a recent one (a writer at work)', async () => {
    const s = await setup();
    const file = await writeFile(s, 'a.bin');
    await settle();
    await fs.mkdir(s.cacheDir, { recursive: true, mode: 0o700 });
    const old = path.join(s.cacheDir, '1-2.999.abc.tmp');
    const recent = path.join(s.cacheDir, '1-3.999.def.tmp');
    await fs.writeFile(old, 'x', { mode: 0o600 });
    await fs.writeFile(recent, 'x', { mode: 0o600 });
    const hourAgo = Date.now() / 1000 - 3600;
    await fs.utimes(old, hourAgo, hourAgo);
    const cache = await openCache(s);
    await cache.hashWithCache(file);
    await cache.flush();
    const names = await cacheNames(s);
    assert.ok(!names.includes(path.basename(old)));
    assert.ok(names.includes(path.basename(recent)));
  });
});

describe('block cache: two processes on one home', () => {
  it('two caches writing the same and different entries at once leave a cache a third reads whole', async () => {
    const s = await setup();
    const list: string[] = [];
    for (let i = 0; i < 20; i++) list.push(await writeFile(s, `f${i}.bin`));
    await settle();
    const [a, b] = await Promise.all([openCache(s), openCache(s)]);
    // Both hash every file at once: the same entries written twice, concurrently.
    const results = await Promise.all(list.flatMap((file) => [a.hashWithCache(file), b.hashWithCache(file)]));
    await Promise.all([a.flush(), b.flush()]);
    const names = await cacheNames(s);
    assert.equal(names.length, 20);
    assert.ok(names.every((name) => !name.endsWith('.tmp')));
    const counter = countingHasher();
    const third = await openCache(s, { hasher: counter.hasher });
    for (const [index, file] of list.entries()) assertSameManifest(await third.hashWithCache(file), results[index * 2]);
    assert.equal(counter.calls(), 0, 'every entry is whole and readable');
  });

  it('two separate Node processes hashing the same files at once, with evictions, leave only sound entries', async () => {
    const s = await setup({ blockCacheEntries: 12 });
    const list: string[] = [];
    for (let i = 0; i < 24; i++) list.push(await writeFile(s, `f${i}.bin`));
    await settle();
    const script = path.join(tempDir(), 'writer.ts');
    const modulePath = path.resolve(__dirname, '../../src/core/block-cache.ts');
    const limitsPath = path.resolve(__dirname, '../../src/core/limits.ts');
    await fs.writeFile(
      script,
      `import { BlockCache } from ${JSON.stringify(modulePath)};
import { resolveLimits } from ${JSON.stringify(limitsPath)};
(async () => {
  const [home, ...files] = process.argv.slice(2);
  const cache = await BlockCache.open(home, resolveLimits({ blockCacheEntries: 12 }), { racyMs: ${RACY_MS} });
  for (let round = 0; round < 3; round++) {
    for (const file of round % 2 ? [...files].reverse() : files) await cache.hashWithCache(file);
  }
  await cache.flush();
})().catch((err) => { console.error(err); process.exit(1); });
`,
    );
    const run = promisify(execFile);
    const writer = () => run(process.execPath, ['--import', 'tsx', script, s.home, ...list], { cwd: path.resolve(__dirname, '../..') });
    await Promise.all([writer(), writer()]);
    const names = await cacheNames(s);
    assert.ok(names.length > 0 && names.length <= list.length);
    assert.ok(names.every((name) => !name.endsWith('.tmp')), 'no temporary file left');
    // Every entry there is read (a lookup, no hashing, no writing): none is torn or mixed.
    const reader = await openCache(s);
    const kept = new Set(names);
    for (const file of list) {
      const version = await fs.stat(file, { bigint: true });
      const cached = await reader.get(version);
      if (kept.has(entryName(version))) assertSameManifest(cached ?? assert.fail(`${path.basename(file)}: its entry was not read`), await hashFileBlocks(file, s.limits));
      else assert.equal(cached, undefined);
    }
    assert.deepEqual(await cacheNames(s), names, 'no entry was refused and removed');
  });
});
