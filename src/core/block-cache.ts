import { randomBytes } from 'node:crypto';
import { constants as fsc, promises as fsp, type BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { BLAKE3_DIGEST_BYTES, blake3 } from './blake3';
import { MANIFEST_HEADER_BYTES, blockSizeFor, decodeBlockManifest, encodeBlockManifest, hashFileBlocks, type BlockManifest } from './blocks';
import { lastChangeNs, sameVersion } from './hash-cache';
import { checkGuardedFile, checkHomeIsPrivate } from './identity';
import { RACY_TIMESTAMP_MS, SMALL_FILE_BYTES, STALE_CACHE_TEMP_MS, type Limits } from './limits';

/**
 * The sharer's block lists of files it has hashed, kept on disk under the identity home, so a file
 * sent again (to another peer, on a resume, after the sharer restarted) costs no hashing.
 *
 * AN ENTRY is valid for one version of one file: its identity (device, inode) and its version
 * (size, mtime and ctime to the nanosecond), as the in-memory SHA-256 cache of v1 (hash-cache.ts).
 * The ctime is what makes it safe: any write, truncate, chmod or rename sets it, and only the
 * kernel can, so setting the mtime back with `touch -d` or `utimes` after a change still misses.
 *
 * RACY TIMESTAMPS (git's "racily clean" entries, Documentation/technical/racy-git.txt): a file
 * system stamps times from a coarse clock (a kernel tick of a few ms; 1 s on ext3 and HFS+, 2 s
 * on FAT), so a same-size rewrite within the tick of the last change leaves size, mtime and ctime
 * as they were. git re-reads such entries; we do the simplest safe thing instead: a list is kept
 * only if the file's last change (mtime or ctime, whichever is later) is at least `racyMs` older
 * than the moment its hashing started. Every write after that start then lands in a later tick
 * and shows in the ctime. A file changed within `racyMs` before it is hashed is hashed every time
 * until it has been quiet that long. The window (3 s) covers FAT's 2 s and a small clock skew.
 *
 * ON DISK: `<home>/block-cache/` (0700), one file per entry named `<dev>-<ino>` in hex (0600),
 * written to a temporary file opened exclusively (never through a link) and renamed over the
 * old one. Per-entry files need no lock: a rename is atomic, so two processes that share a home
 * (two `serve`s, the CLI beside the editor) each leave a whole entry, the last one wins, and a
 * reader sees the old or the new file, never half of one. A new version of a file replaces its
 * old entry by name.
 *
 *   bytes 0-15   "PeerShare/bc v1\n" (ASCII)
 *   bytes 16-55  device, inode, size (u64 LE), mtime, ctime (ns, i64 LE): the version it is for
 *   bytes 56-63  when its hashing started (ms since 1970, i64 LE), for the racy rule
 *   then         the block list, as blocks.ts encodes it
 *   last 32      BLAKE3 of everything before (a torn or rotted entry is told from a good one)
 *
 * NOTHING IN IT IS TRUSTED until checked: an entry that is not a regular file of ours (or root's),
 * that others may write, that is larger than the largest list allowed, or whose checksum, version,
 * block list (blocks.ts's own decoder), size or block size does not match is ignored, removed, and
 * written anew after the file is hashed again. No cache failure (a full disk, a read-only home)
 * ever fails a hash: the cache is only ever a shortcut.
 *
 * BOUNDS: `blockCacheEntries` entries and `blockCacheBytes` of disk (each entry counted in whole
 * 4 KiB blocks, what it takes on most file systems). Memory holds no entry: the folder is the
 * index (a lookup opens `<dev>-<ino>` and gets ENOENT on a miss), and only two counters are
 * kept. When they go over a bound, one scan of the folder evicts the least recently used (the
 * entry file's mtime, set on each use) down to 90 % of both bounds, so a scan is paid once per
 * tenth of the cache written, and it also counts what other processes added meanwhile.
 *
 * Files of at most SMALL_FILE_BYTES are never cached: the sharer reads such a file whole in one
 * call and hashes it in memory, faster than it could open and check an entry.
 */
export const BLOCK_CACHE_DIR = 'block-cache';

const ENTRY_MAGIC = 'PeerShare/bc v1\n';
const DEV_OFFSET = 16;
const INO_OFFSET = 24;
const SIZE_OFFSET = 32;
const MTIME_OFFSET = 40;
const CTIME_OFFSET = 48;
const HASHED_AT_OFFSET = 56;
export const CACHE_ENTRY_HEADER_BYTES = 64;
const ENTRY_NAME = /^[0-9a-f]{1,16}-[0-9a-f]{1,16}$/;
/** What an entry is charged against `blockCacheBytes`: whole blocks of this size. */
const DISK_BLOCK_BYTES = 4096;
/** Evictions go this far below the bounds, so the next scan is a tenth of the cache away. */
const EVICT_TO_FRACTION = 0.9;
const SCAN_CONCURRENCY = 64;
const NO_FOLLOW = fsc.O_NOFOLLOW ?? 0;

export type BlockCacheLimits = Pick<Limits, 'maxFileBlocks' | 'maxManifestBytes' | 'blockCacheEntries' | 'blockCacheBytes'>;

/** Hashes an open file into its block list: `hashFileBlocks`, unless a test counts the calls. */
export type BlockHasher = (file: FileHandle, limits: Pick<Limits, 'maxFileBlocks' | 'maxManifestBytes'>) => Promise<BlockManifest>;

export interface BlockCacheOptions {
  hasher?: BlockHasher;
  /** RACY_TIMESTAMP_MS unless a test shrinks it. */
  racyMs?: number;
  /** Files of at most this many bytes are hashed every time (SMALL_FILE_BYTES). */
  minFileBytes?: number;
  /** Told, in a sentence, why the cache is off or an entry was dropped; for the log. */
  log?: (message: string) => void;
}

/** The version of a file an entry is for: the fields of a bigint `stat` the key is made of. */
export type FileVersion = Pick<BigIntStats, 'dev' | 'ino' | 'size' | 'mtimeNs' | 'ctimeNs' | 'isFile'>;

interface ScannedEntry {
  name: string;
  lastUsedNs: bigint;
  charge: number;
}

export class BlockCache {
  /** Entries and charged bytes on disk as last counted: exact after a scan, then updated by our own writes. */
  private entryCount = 0;
  private chargedBytes = 0;
  private scanned = false;
  private maintenance: Promise<void> | undefined;
  private lastStampMs = 0;
  /** Hashings under way, by file version; and those of them that are rehashes. */
  private readonly hashing = new Map<string, Promise<BlockManifest>>();
  private readonly rehashing = new Map<string, Promise<BlockManifest>>();
  private readonly hasher: BlockHasher;
  private readonly racyNs: bigint;
  private readonly minFileBytes: number;
  private readonly log: (message: string) => void;

  private constructor(
    /** The cache folder, or undefined when the cache is off (`disabledReason` says why). */
    readonly dir: string | undefined,
    readonly disabledReason: string | undefined,
    private readonly limits: BlockCacheLimits,
    options: BlockCacheOptions,
  ) {
    this.hasher = options.hasher ?? hashFileBlocks;
    this.racyNs = BigInt(Math.ceil((options.racyMs ?? RACY_TIMESTAMP_MS) * 1e6));
    this.minFileBytes = options.minFileBytes ?? SMALL_FILE_BYTES;
    this.log = options.log ?? (() => undefined);
  }

  /**
   * Opens the cache of the identity home `home` (checked with checkHomeIsPrivate, and used by its
   * real path). A cache folder that is not a private folder of ours leaves the cache off, never
   * trusted; an unsafe home throws UNSAFE_HOME, as loading the identity there would.
   */
  static async open(home: string, limits: BlockCacheLimits, options: BlockCacheOptions = {}): Promise<BlockCache> {
    const realHome = await checkHomeIsPrivate(home);
    const dir = path.join(realHome, BLOCK_CACHE_DIR);
    const problem = await prepareCacheDir(realHome, dir);
    if (problem) options.log?.(`The block cache is off: ${problem}.`);
    return new BlockCache(problem ? undefined : dir, problem, limits, options);
  }

  /**
   * The block list of `file` (an open file, or a path opened here): from the cache when it holds
   * one for the file's current version, else hashed now and kept when the file did not change
   * while it was hashed. `rehash` skips the cache and replaces its entry (protocol-v2.md 7.2:
   * the sharer's answer when a peer reports a block that does not match).
   */
  async hashWithCache(file: FileHandle | string, options: { rehash?: boolean } = {}): Promise<BlockManifest> {
    const handle = typeof file === 'string' ? await fsp.open(file, 'r') : file;
    try {
      // Before the stat: every change after this moment lands in a later tick (the racy rule).
      const startedAtMs = Date.now();
      const before = await handle.stat({ bigint: true });
      const key = versionKey(before);
      if (!options.rehash) {
        const cached = await this.get(before);
        if (cached) return cached;
        // Two peers asking for one large file at once: the second waits for the first's hashing.
        const underWay = this.hashing.get(key);
        if (underWay) return await underWay;
      } else {
        // Rehashes of one version at once (a peer asking on each of its connections) share one
        // read of the file: it started after every one of them was asked, so it is as fresh.
        const underWay = this.rehashing.get(key);
        if (underWay) return await underWay;
      }
      const run = this.hashAndKeep(handle, before, startedAtMs, options.rehash === true);
      this.hashing.set(key, run);
      if (options.rehash) this.rehashing.set(key, run);
      try {
        return await run;
      } finally {
        if (this.hashing.get(key) === run) this.hashing.delete(key);
        if (this.rehashing.get(key) === run) this.rehashing.delete(key);
      }
    } finally {
      if (typeof file === 'string') await handle.close();
    }
  }

  private async hashAndKeep(handle: FileHandle, before: BigIntStats, startedAtMs: number, replacing: boolean): Promise<BlockManifest> {
    const manifest = await this.hasher(handle, this.limits);
    const after = await handle.stat({ bigint: true });
    const kept = sameVersion(before, after) && (await this.put(before, manifest, startedAtMs));
    // A rehash whose list cannot be kept (a racy file, say) must not leave the old entry answering
    // for this version: the next read would be served against the list the rehash replaced.
    if (!kept && replacing && this.dir) await this.drop(path.join(this.dir, entryName(before)), 'the file was hashed again');
    return manifest;
  }

  /** The cached block list of exactly this version of the file, or undefined. Never throws. */
  async get(version: FileVersion): Promise<BlockManifest | undefined> {
    if (!this.dir || !this.isCacheable(version)) return undefined;
    const file = path.join(this.dir, entryName(version));
    let handle: FileHandle;
    try {
      // Never through a link; never waiting on a FIFO planted there.
      handle = await fsp.open(file, fsc.O_RDONLY | NO_FOLLOW | (fsc.O_NONBLOCK ?? 0));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP' || code === 'EMLINK') await this.drop(file, 'it is a symbolic link');
      else if (code !== 'ENOENT') this.log(`The block cache could not read ${file}: ${String(err)}`);
      return undefined;
    }
    try {
      const st = await handle.stat({ bigint: true });
      const unsafe = this.entryFileProblem(file, st);
      if (unsafe) {
        await this.drop(file, unsafe);
        return undefined;
      }
      const bytes = Buffer.allocUnsafe(Number(st.size));
      let done = 0;
      while (done < bytes.length) {
        const { bytesRead } = await handle.read(bytes, done, bytes.length - done, done);
        if (bytesRead === 0) break; // truncated meanwhile: the checksum refuses what was read
        done += bytesRead;
      }
      const entry = this.decodeEntry(bytes.subarray(0, done), version);
      if (typeof entry === 'string') {
        await this.drop(file, entry);
        return undefined;
      }
      // Most recently used: the scan evicts by this. A failure only ages the entry.
      await handle.utimes(this.nextStamp(), this.nextStamp()).catch(() => undefined);
      return entry;
    } catch (err) {
      this.log(`The block cache could not read ${file}: ${String(err)}`);
      return undefined;
    } finally {
      await handle.close().catch(() => undefined);
    }
  }

  /**
   * Keeps `manifest` as the block list of this version of the file, whose hashing started at
   * `hashStartedAtMs`. Returns false (and keeps nothing) for a small file, a racy one, a list
   * that does not fit the version, or when the cache cannot be written. Never throws.
   */
  async put(version: FileVersion, manifest: BlockManifest, hashStartedAtMs: number): Promise<boolean> {
    if (!this.dir || !this.isCacheable(version)) return false;
    const hashedAtMs = BigInt(Math.floor(hashStartedAtMs));
    if (this.isRacy(version, hashedAtMs)) return false;
    if (manifest.size !== Number(version.size) || manifest.blockSize !== blockSizeFor(manifest.size)) return false;
    const file = path.join(this.dir, entryName(version));
    const temp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      const bytes = encodeCacheEntry(version, hashedAtMs, encodeBlockManifest(manifest));
      // 'wx' is O_CREAT|O_EXCL: never opens an existing file, nor follows a link planted there.
      const handle = await fsp.open(temp, 'wx', 0o600);
      try {
        await handle.writeFile(bytes);
        await handle.utimes(this.nextStamp(), this.nextStamp());
      } finally {
        await handle.close();
      }
      const previous = await fsp.lstat(file).catch(() => undefined);
      // A rename replaces whatever had the name (a link itself, not its target), atomically.
      await fsp.rename(temp, file);
      this.entryCount += previous ? 0 : 1;
      this.chargedBytes += diskCharge(bytes.length) - (previous ? diskCharge(previous.size) : 0);
    } catch (err) {
      await fsp.rm(temp, { force: true }).catch(() => undefined);
      this.log(`The block cache could not keep the block list of a file: ${String(err)}`);
      return false;
    }
    this.maintainSoon();
    return true;
  }

  /** Waits for a scan or an eviction under way (tests, and a clean shutdown). */
  async flush(): Promise<void> {
    while (this.maintenance) await this.maintenance;
  }

  private isCacheable(version: FileVersion): boolean {
    return version.isFile() && version.size > BigInt(this.minFileBytes);
  }

  private isRacy(version: FileVersion, hashedAtMs: bigint): boolean {
    return hashedAtMs * 1_000_000n - lastChangeNs(version) < this.racyNs;
  }

  /** Why an entry file must not be read, or undefined when it may. */
  private entryFileProblem(file: string, st: BigIntStats): string | undefined {
    if (!st.isFile()) return 'it is not a regular file';
    if (st.size > BigInt(this.maxEntryBytes())) return `it is larger (${st.size} bytes) than any block list allowed`;
    if (process.platform === 'win32') return undefined;
    try {
      checkGuardedFile(file, st);
    } catch (err) {
      return (err as Error).message;
    }
    return undefined;
  }

  private maxEntryBytes(): number {
    return CACHE_ENTRY_HEADER_BYTES + this.limits.maxManifestBytes + BLAKE3_DIGEST_BYTES;
  }

  /** The block list in `bytes` if it is a sound entry for exactly `version`, else why not. */
  private decodeEntry(bytes: Buffer, version: FileVersion): BlockManifest | string {
    const bodyLength = bytes.length - BLAKE3_DIGEST_BYTES;
    if (bodyLength < CACHE_ENTRY_HEADER_BYTES + MANIFEST_HEADER_BYTES) return 'it is truncated';
    if (bytes.toString('latin1', 0, DEV_OFFSET) !== ENTRY_MAGIC) return 'it is not a block cache entry';
    if (!blake3(bytes.subarray(0, bodyLength)).equals(bytes.subarray(bodyLength))) return 'its checksum does not match (torn or damaged)';
    const stored = {
      dev: bytes.readBigUInt64LE(DEV_OFFSET),
      ino: bytes.readBigUInt64LE(INO_OFFSET),
      size: bytes.readBigUInt64LE(SIZE_OFFSET),
      mtimeNs: bytes.readBigInt64LE(MTIME_OFFSET),
      ctimeNs: bytes.readBigInt64LE(CTIME_OFFSET),
    };
    if (stored.dev !== BigInt.asUintN(64, version.dev) || stored.ino !== BigInt.asUintN(64, version.ino)) return 'it is for another file';
    if (stored.size !== version.size || stored.mtimeNs !== version.mtimeNs || stored.ctimeNs !== version.ctimeNs) return 'the file changed since';
    if (this.isRacy(version, bytes.readBigInt64LE(HASHED_AT_OFFSET))) return 'it was hashed too soon after a change to be trusted';
    let manifest: BlockManifest;
    try {
      manifest = decodeBlockManifest(bytes.subarray(CACHE_ENTRY_HEADER_BYTES, bodyLength), this.limits);
    } catch (err) {
      return `its block list is not valid (${(err as Error).message})`;
    }
    if (manifest.size !== Number(version.size)) return 'its block list is for another size';
    if (manifest.blockSize !== blockSizeFor(manifest.size)) return 'its block size is not the one this version chooses';
    return manifest;
  }

  /** Removes an entry that must not be used, so it is neither read again nor counted. */
  private async drop(file: string, why: string): Promise<void> {
    this.log(`The block cache ignored ${file}: ${why}.`);
    await fsp.rm(file, { force: true }).catch(() => undefined);
  }

  /** A strictly increasing time (seconds) for this process's uses, so LRU order holds within a clock tick. */
  private nextStamp(): number {
    this.lastStampMs = Math.max(Date.now(), this.lastStampMs + 1);
    return this.lastStampMs / 1000;
  }

  /** Counts the folder on the first write, and evicts whenever a bound is passed; in the background. */
  private maintainSoon(): void {
    if (this.maintenance) return;
    if (this.scanned && this.entryCount <= this.limits.blockCacheEntries && this.chargedBytes <= this.limits.blockCacheBytes) return;
    this.maintenance = this.maintain()
      .catch((err) => this.log(`The block cache could not be tidied: ${String(err)}`))
      .finally(() => (this.maintenance = undefined));
  }

  private async maintain(): Promise<void> {
    const names = await fsp.readdir(this.dir!);
    // Our writes from here on may be missing from `names`: they are added to what the scan finds.
    const [countBefore, bytesBefore] = [this.entryCount, this.chargedBytes];
    const entries = await this.scan(names);
    this.entryCount = entries.length + (this.entryCount - countBefore);
    this.chargedBytes = entries.reduce((sum, entry) => sum + entry.charge, 0) + (this.chargedBytes - bytesBefore);
    this.scanned = true;
    if (this.entryCount <= this.limits.blockCacheEntries && this.chargedBytes <= this.limits.blockCacheBytes) return;
    const entryTarget = Math.floor(this.limits.blockCacheEntries * EVICT_TO_FRACTION);
    const byteTarget = Math.floor(this.limits.blockCacheBytes * EVICT_TO_FRACTION);
    entries.sort((a, b) => (a.lastUsedNs < b.lastUsedNs ? -1 : a.lastUsedNs > b.lastUsedNs ? 1 : 0));
    for (const entry of entries) {
      if (this.entryCount <= entryTarget && this.chargedBytes <= byteTarget) break;
      await fsp.rm(path.join(this.dir!, entry.name), { force: true });
      this.entryCount -= 1;
      this.chargedBytes -= entry.charge;
    }
  }

  /** The usable entries among `names`; removes what must not be there (bad entries, a dead writer's temporary files). */
  private async scan(names: string[]): Promise<ScannedEntry[]> {
    const dir = this.dir!;
    const entries: ScannedEntry[] = [];
    const now = Date.now();
    for (let start = 0; start < names.length; start += SCAN_CONCURRENCY) {
      await Promise.all(
        names.slice(start, start + SCAN_CONCURRENCY).map(async (name) => {
          const file = path.join(dir, name);
          const st = await fsp.lstat(file, { bigint: true }).catch(() => undefined);
          if (!st) return;
          if (name.endsWith('.tmp')) {
            if (now - Number(st.mtimeMs) > STALE_CACHE_TEMP_MS) await fsp.rm(file, { force: true }).catch(() => undefined);
            return;
          }
          if (!ENTRY_NAME.test(name)) return;
          const problem = this.entryFileProblem(file, st);
          if (problem) {
            await this.drop(file, problem);
            return;
          }
          entries.push({ name, lastUsedNs: st.mtimeNs, charge: diskCharge(Number(st.size)) });
        }),
      );
    }
    return entries;
  }
}

/**
 * The entry's bytes (layout in the comment at the top). Exported for tests that write entries
 * the cache must refuse.
 */
export function encodeCacheEntry(version: Pick<FileVersion, 'dev' | 'ino' | 'size' | 'mtimeNs' | 'ctimeNs'>, hashedAtMs: bigint, blockList: Buffer): Buffer {
  const bodyLength = CACHE_ENTRY_HEADER_BYTES + blockList.length;
  const bytes = Buffer.allocUnsafe(bodyLength + BLAKE3_DIGEST_BYTES);
  bytes.write(ENTRY_MAGIC, 0, 'latin1');
  bytes.writeBigUInt64LE(BigInt.asUintN(64, version.dev), DEV_OFFSET);
  bytes.writeBigUInt64LE(BigInt.asUintN(64, version.ino), INO_OFFSET);
  bytes.writeBigUInt64LE(version.size, SIZE_OFFSET);
  bytes.writeBigInt64LE(version.mtimeNs, MTIME_OFFSET);
  bytes.writeBigInt64LE(version.ctimeNs, CTIME_OFFSET);
  bytes.writeBigInt64LE(hashedAtMs, HASHED_AT_OFFSET);
  blockList.copy(bytes, CACHE_ENTRY_HEADER_BYTES);
  blake3(bytes.subarray(0, bodyLength)).copy(bytes, bodyLength);
  return bytes;
}

/** The entry file's name: one per file (device, inode), so a new version replaces the old. */
export function entryName(version: Pick<FileVersion, 'dev' | 'ino'>): string {
  return `${BigInt.asUintN(64, version.dev).toString(16)}-${BigInt.asUintN(64, version.ino).toString(16)}`;
}

function versionKey(version: FileVersion): string {
  return `${entryName(version)}:${version.size}:${version.mtimeNs}:${version.ctimeNs}`;
}

function diskCharge(bytes: number): number {
  return Math.max(1, Math.ceil(bytes / DISK_BLOCK_BYTES)) * DISK_BLOCK_BYTES;
}

/**
 * Makes the cache folder private (0700) in the real home, or says why it cannot be used. A link
 * or a file where the folder belongs is removed (the link itself, never its target) and the
 * folder made anew; a folder of another user is left alone and the cache stays off.
 */
async function prepareCacheDir(realHome: string, dir: string): Promise<string | undefined> {
  try {
    await fsp.mkdir(realHome, { recursive: true, mode: 0o700 });
    let st = await fsp.lstat(dir).catch(() => undefined);
    if (st && !st.isDirectory()) {
      await fsp.rm(dir, { force: true });
      st = undefined;
    }
    if (!st) {
      await fsp.mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
      st = await fsp.lstat(dir);
      if (!st.isDirectory()) return `${dir} is not a folder`;
    }
    if (process.platform === 'win32' || typeof process.getuid !== 'function') return undefined;
    const uid = process.getuid();
    if (st.uid !== uid && st.uid !== 0) return `${dir} belongs to another user (uid ${st.uid})`;
    if ((st.mode & 0o077) !== 0) await fsp.chmod(dir, 0o700);
    return undefined;
  } catch (err) {
    return `${dir} cannot be used (${String(err)})`;
  }
}
