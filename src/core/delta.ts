import { randomBytes } from 'node:crypto';
import { closeSync, constants as fsc, fsync, futimesSync, promises as fs, write } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { blake3 } from './blake3';
import { hashFileBlocks } from './blocks';
import { chunkFile, type Chunk, type ChunkList } from './cdc';
import type { FileSource } from './download';
import { PeerShareError, toPeerShareError } from './errors';
import { commit, openTemporary, removeName, type TemporaryFile } from './landing';
import { inspectReceivedName } from './names';
import { PinnedFolders } from './pinned-folders';
import { sanitizeForDisplay } from './protocol';

/**
 * Updating a local copy of a peer's file or folder by moving only what changed (issue 13,
 * docs/protocol-v2.md 15): the local copy is cut into content-defined chunks (cdc.ts), the
 * sharer's chunk list is asked for, every chunk the local copy holds (by hash, at any offset) is
 * copied from it, only the others are fetched, each verified on arrival; the result is assembled
 * in a temporary file beside the target, verified whole against the sharer's fileHash, and only
 * then takes the target's name, atomically. A local copy is never changed in place, and nothing
 * unverified ever has the final name.
 */

export interface DeltaOptions {
  signal?: AbortSignal;
  /** Replace `target` when it exists (sync's rule); otherwise an existing target is DEST_EXISTS. Default false. */
  overwrite?: boolean;
}

export interface DeltaFileResult {
  /** False when the local copy was already the sharer's version: nothing was fetched or written. */
  changed: boolean;
  /** Bytes of file data received from the peer. */
  bytesReceived: number;
  /** Bytes taken from the local copy instead of the network. */
  bytesReused: number;
}

export interface DeltaFolderResult {
  filesChecked: number;
  filesChanged: number;
  bytesReceived: number;
  bytesReused: number;
  /** Entries left alone, with why (a name unsafe here, a link or other non-file in the way), at most MAX_REPORTED. */
  leftAlone: { path: string; why: string }[];
  leftAloneCount: number;
}

const writeAt = promisify(write);
const fsyncFd = promisify(fsync);
const NO_FOLLOW = fsc.O_NOFOLLOW ?? 0;
/** Reports of entries left alone kept in a folder's result (all are counted). */
const MAX_REPORTED = 1000;

/**
 * Updates `target` to the peer's version of `remotePath`, reusing the chunks of `localFile` (a
 * previous copy, usually `target` itself; absent: everything is fetched). The local copy is only
 * read; `target` is replaced only with `overwrite` and only by a file verified whole.
 */
export async function deltaFile(conn: FileSource, remotePath: string, localFile: string | undefined, target: string, options: DeltaOptions = {}): Promise<DeltaFileResult> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await deltaOnce(conn, remotePath, localFile, target, options);
    } catch (err) {
      // The file changed on the sharer between its chunk list and the read: once more, with the new version.
      if (attempt === 0 && err instanceof PeerShareError && err.code === 'FILE_CHANGED') continue;
      throw err;
    }
  }
}

async function deltaOnce(conn: FileSource, remotePath: string, localFile: string | undefined, target: string, options: DeltaOptions): Promise<DeltaFileResult> {
  const { signal } = options;
  const remote = await conn.share.chunks(remotePath, { signal });
  const local = localFile === undefined ? undefined : await openLocal(localFile);
  try {
    const localChunks = local ? (await chunkFile(local, conn.limits)).chunks : [];
    if (local && localFile === target && (await isSameVersion(local, localChunks, remote))) {
      // Same bytes, another time (touched): take the sharer's, so the next sync's size-and-time check passes.
      if (options.overwrite) await local.utimes(...timesOf(remote.mtimeMs)).catch(() => undefined);
      return { changed: false, bytesReceived: 0, bytesReused: 0 };
    }
    if (!options.overwrite && (await fs.lstat(target).then(() => true, () => false))) {
      throw new PeerShareError('DEST_EXISTS', `${path.basename(target)} already exists; it was left alone.`);
    }
    const byHash = new Map<string, Chunk>();
    for (const chunk of localChunks) byHash.set(chunk.hash.toString('hex'), chunk);
    const partial = path.join(path.dirname(target), `.${path.basename(target).slice(0, 180)}.${randomBytes(6).toString('hex')}.peershare-sync`);
    const file = openTemporary(partial);
    let landed = false;
    try {
      let bytesReused = 0;
      const missing: number[] = [];
      const buffer = Buffer.allocUnsafe(remote.chunks.reduce((most, c) => Math.max(most, c.length), 0));
      for (let index = 0; index < remote.chunks.length; index++) {
        const wanted = remote.chunks[index];
        const have = byHash.get(wanted.hash.toString('hex'));
        // A local chunk is used only if its bytes still hash to what is wanted (the copy may have changed since it was cut).
        if (have && local && have.length === wanted.length && (await readLocal(local, buffer, have)) && blake3(buffer.subarray(0, have.length)).equals(wanted.hash)) {
          await writeAll(file, buffer.subarray(0, have.length), wanted.offset);
          bytesReused += have.length;
        } else {
          missing.push(index);
        }
      }
      let bytesReceived = 0;
      if (missing.length > 0) {
        for await (const chunk of conn.share.readChunks(remotePath, remote, missing, { signal })) {
          await writeAll(file, chunk.data, remote.chunks[chunk.index].offset);
          bytesReceived += chunk.data.length;
        }
      }
      // End to end: the assembled file must be the version the sharer named (its block-list hash).
      const assembled = await fs.open(partial, fsc.O_RDONLY | NO_FOLLOW);
      try {
        const manifest = await hashFileBlocks(assembled, conn.limits);
        if (manifest.size !== remote.size || !manifest.fileHash.equals(remote.fileHash)) {
          throw new PeerShareError('HASH_MISMATCH', `The updated ${sanitizeForDisplay(path.basename(remotePath)).slice(0, 120)} does not match the file hash the peer gave; nothing was replaced.`);
        }
      } finally {
        await assembled.close();
      }
      futimesSync(file.fd, ...timesOf(remote.mtimeMs));
      await fsyncFd(file.fd);
      closeSync(file.fd);
      file.fd = -1;
      await commit(partial, target, options.overwrite === true, file);
      landed = true;
      return { changed: true, bytesReceived, bytesReused };
    } finally {
      if (file.fd >= 0) closeSync(file.fd);
      if (!landed) removeName(partial);
    }
  } finally {
    await local?.close();
  }
}

/**
 * A sharer's whole-millisecond time as utimes takes it: the middle of that millisecond, since
 * seconds are a double and `t / 1000` may land a few nanoseconds before `t`, which reads back as
 * the millisecond before (and the next sync would see a changed file).
 */
function timesOf(mtimeMs: number): [number, number] {
  const seconds = (mtimeMs + 0.5) / 1000;
  return [seconds, seconds];
}

/** The local copy, opened without following a link; only a regular file is a copy to reuse. */
async function openLocal(file: string): Promise<FileHandle | undefined> {
  let handle: FileHandle;
  try {
    handle = await fs.open(file, fsc.O_RDONLY | NO_FOLLOW | (fsc.O_NONBLOCK ?? 0));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new PeerShareError('BAD_NAME', `${path.basename(file)} is a symbolic link; it was left alone.`);
    throw toPeerShareError(err, 'IO_ERROR');
  }
  if (!(await handle.stat()).isFile()) {
    await handle.close();
    throw new PeerShareError('NOT_A_FILE', `${path.basename(file)} is not a regular file; it was left alone.`);
  }
  return handle;
}

/** The local copy is the sharer's version when its chunks are the sharer's, in order, and its block-list hash is the fileHash. */
async function isSameVersion(local: FileHandle, localChunks: Chunk[], remote: ChunkList): Promise<boolean> {
  if (localChunks.length !== remote.chunks.length) return false;
  if (!localChunks.every((chunk, i) => chunk.length === remote.chunks[i].length && chunk.hash.equals(remote.chunks[i].hash))) return false;
  const manifest = await hashFileBlocks(local, { maxFileBlocks: Number.MAX_SAFE_INTEGER, maxManifestBytes: Number.MAX_SAFE_INTEGER });
  return manifest.fileHash.equals(remote.fileHash);
}

/** Reads a local chunk into `buffer`; false if the file is shorter now. */
async function readLocal(handle: FileHandle, buffer: Buffer, chunk: Chunk): Promise<boolean> {
  for (let done = 0; done < chunk.length; ) {
    const { bytesRead } = await handle.read(buffer, done, chunk.length - done, chunk.offset + done);
    if (bytesRead === 0) return false;
    done += bytesRead;
  }
  return true;
}

async function writeAll(file: TemporaryFile, data: Buffer, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    done += (await writeAt(file.fd, data, done, data.length - done, position + done)).bytesWritten;
  }
}

/**
 * Makes `target` a mirror of the peer's folder `remotePath`: walks it with share.list, folder by
 * folder; a file whose size or modification time differs from the local one is updated with
 * deltaFile (its local copy's chunks reused), one whose size and time are the same costs nothing
 * (as rsync's default check; the time is set to the sharer's on every update). Never deletes.
 * Folders are made without following a link (PinnedFolders); a name of the wrong form stops the
 * sync (BAD_NAME), a well-formed name unsafe here, or a link or other non-file where a file
 * should be updated, is left alone and reported.
 */
export async function deltaFolder(conn: FileSource, remotePath: string, target: string, options: DeltaOptions = {}): Promise<DeltaFolderResult> {
  const limits = conn.limits;
  const result: DeltaFolderResult = { filesChecked: 0, filesChanged: 0, bytesReceived: 0, bytesReused: 0, leftAlone: [], leftAloneCount: 0 };
  const leaveAlone = (relPath: string, why: string): void => {
    result.leftAloneCount++;
    if (result.leftAlone.length < MAX_REPORTED) result.leftAlone.push({ path: relPath, why });
  };
  await fs.mkdir(target, { recursive: true });
  const folders = await PinnedFolders.open(target, { rootMayBeLink: true });
  const base = remotePath.replace(/\/+$/, '');
  let seen = 0;
  try {
    const pending: string[][] = [[]];
    while (pending.length > 0) {
      const components = pending.pop()!;
      if (components.length > limits.maxTreeDepth) throw new PeerShareError('TOO_LARGE', `The folder is nested deeper than ${limits.maxTreeDepth} levels.`);
      const remoteFolder = [base, ...components].join('/');
      const entries = await conn.share.list(remoteFolder, { signal: options.signal });
      for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
        if (++seen > limits.maxTreeFiles) throw new PeerShareError('TOO_LARGE', `The folder has more than ${limits.maxTreeFiles} files and folders.`);
        const relPath = [...components, entry.name].join('/');
        const { unsafeHere } = inspectReceivedName(relPath, limits.maxPathBytes);
        if (unsafeHere) {
          leaveAlone(relPath, `its name is not safe here (${unsafeHere.why})`);
          continue;
        }
        if (entry.type === 'dir') {
          try {
            await folders.makeFolders([...components, entry.name]);
          } catch (err) {
            leaveAlone(relPath, toPeerShareError(err, 'IO_ERROR').message);
            continue;
          }
          pending.push([...components, entry.name]);
          continue;
        }
        result.filesChecked++;
        const local = await folders.pathIn(components, entry.name);
        const st = await fs.lstat(local).catch(() => undefined);
        if (st && !st.isFile()) {
          leaveAlone(relPath, 'something other than a file is in its place');
          continue;
        }
        if (st && st.size === entry.size && Math.floor(st.mtimeMs) === entry.mtimeMs) continue;
        try {
          const updated = await deltaFile(conn, `${remotePath.replace(/\/+$/, '')}/${relPath}`, st ? local : undefined, local, { ...options, overwrite: true });
          if (updated.changed) result.filesChanged++;
          result.bytesReceived += updated.bytesReceived;
          result.bytesReused += updated.bytesReused;
        } catch (err) {
          const coded = toPeerShareError(err, 'IO_ERROR');
          // The peer's file went away or is not served now: reported, the rest goes on. Anything else (a lie, a closed connection) stops the sync.
          if (coded.code !== 'NOT_FOUND' && coded.code !== 'EXCLUDED' && coded.code !== 'PERMISSION_DENIED' && coded.code !== 'NOT_A_FILE' && coded.code !== 'BAD_NAME') throw coded;
          leaveAlone(relPath, coded.message);
        }
      }
    }
  } finally {
    await folders.close();
  }
  return result;
}
