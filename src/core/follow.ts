import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { FILES_AT_ONCE, deltaFile, deltaFolder, leaveAlone, syncFileIn, type DeltaOptions, type SyncTally } from './delta';
import type { FileSource } from './download';
import { PeerShareError, toPeerShareError } from './errors';
import { inspectReceivedName } from './names';
import type { Origin, OriginStore } from './origins';
import { PinnedFolders, withPinnedFolders, type FolderIdentity } from './pinned-folders';
import { mergeChange, type FolderChange, type WatchBatch } from './watch';
import { WorkQueue } from './work-queue';

/**
 * Keeping a local copy of a peer's folder (or file) in step (issue 13: `peershare sync`, with
 * `--watch` and `--delete`, and the editor's Follow Folder). One sync walks the whole folder and
 * updates what differs (delta.ts: only changed chunks move); a follow watches the whole tree
 * (share.watch with `tree`, docs/protocol-v2.md 14.5), armed before the first sync so no change
 * falls between, and applies each batch of changes as it arrives.
 *
 * What came from where is kept in an OriginStore (origins.ts): each file's landed version, and
 * whether the sync created it. THE DELETE RULE: a file the sharer removed is removed here only if
 * this sync (or follow) created it and it was not edited here since (its size and time are still
 * the ones it landed with); anything else stays, and is reported. `keepLocalEdits` (the editor's
 * Follow) also leaves a file edited here alone when the sharer's changes; without it (the CLI's
 * sync, a mirror, as rsync) the sharer's version replaces it.
 */

export interface SyncOptions {
  origins: OriginStore;
  /** Remove what the sharer removed, by the delete rule above. */
  deleteRemoved?: boolean;
  /** Leave files edited here alone instead of taking the sharer's version. */
  keepLocalEdits?: boolean;
  signal?: AbortSignal;
  /** Work only if the destination folder (a file's: the folder holding it) is still this one (a follow's, after its first sync). */
  expectRoot?: FolderIdentity;
}

export interface SyncReport extends SyncTally {
  filesDeleted: number;
}

export interface FollowReport extends SyncReport {
  /** The first sync, a batch of changes, or a whole sync after a flood (resync). */
  kind: 'initial' | 'changes' | 'resync';
  seconds: number;
}

export interface FollowOptions extends SyncOptions {
  /** After the first sync and after each batch applied. */
  onSynced?: (report: FollowReport) => void;
}

export interface Following {
  /** Settles when the follow stops: resolves after stop() (or the signal), rejects with the coded error that stopped it (the connection lost, a lying peer). */
  readonly ended: Promise<void>;
  stop(): void;
}

/** Changes held while a batch is applied; past it they become one whole sync. */
const MAX_PENDING_CHANGES = 10_000;

/** Makes `dest` a copy of the peer's folder `remotePath` once: deltaFolder, each file recorded, then the delete rule. */
export async function syncFolder(conn: FileSource, remotePath: string, dest: string, options: SyncOptions): Promise<SyncReport> {
  const origin = options.origins.begin(conn.peerId, remotePath, dest, 'dir');
  const seen = new Set<string>();
  const perFile = deltaOptions(options, origin);
  const result = await deltaFolder(conn, remotePath, dest, {
    ...perFile,
    expectRoot: options.expectRoot,
    onFileSynced: (rel, synced) => {
      seen.add(rel);
      perFile.onFileSynced!(rel, synced);
    },
  });
  const report: SyncReport = { ...result, filesDeleted: 0 };
  for (const left of result.leftAlone) seen.add(left.path);
  if (options.deleteRemoved && result.leftAloneCount > result.leftAlone.length) {
    // The report names only the first of the files left alone (files the sharer still has but
    // could not serve now, among them): which files the sharer removed is not known, so none goes.
    // Said first, so the list (which is full) still shows it.
    report.leftAlone.unshift({ path: '.', why: `nothing was deleted: more than ${result.leftAlone.length} files were left alone, so which ones the peer removed is not known` });
    report.leftAloneCount++;
  } else if (options.deleteRemoved) {
    const gone = [...origin.files.keys()].filter((rel) => !seen.has(rel));
    await withPinnedFolders(dest, async (folders) => {
      for (const rel of gone) await removeIfOurs(options.origins, origin, rel, folders, report);
    }, options.expectRoot);
  }
  return report;
}

/** Makes `target` the peer's file `remotePath` once, recorded. */
export async function syncFile(conn: FileSource, remotePath: string, target: string, options: SyncOptions): Promise<SyncReport> {
  const origin = options.origins.begin(conn.peerId, remotePath, target, 'file');
  const report = emptyReport();
  report.filesChecked = 1;
  const st = await fs.lstat(target).catch(() => undefined);
  const state = st ? await options.origins.localState(origin, '') : 'missing';
  if (options.keepLocalEdits && state === 'edited') {
    leaveAlone(report, path.basename(target), 'it was edited here since it was taken from the peer; yours was kept');
    return report;
  }
  // As it was when it came (a sync run again): probably unchanged there too, so no bytes inline.
  const inline = state !== 'same';
  // Through the folder holding it, opened once (and, for a follow, checked to be the one it was).
  const updated = await withPinnedFolders(
    path.dirname(target),
    (folders) => folders.use([], path.basename(target), (local) => deltaFile(conn, remotePath, st ? local : undefined, local, { overwrite: true, signal: options.signal, inline })),
    options.expectRoot,
  );
  options.origins.setFile(origin, '', { ...updated.version, created: !st });
  if (updated.changed) report.filesChanged = 1;
  report.bytesReceived = updated.bytesReceived;
  report.bytesReused = updated.bytesReused;
  return report;
}

/**
 * Follows the peer's `remotePath` into `dest`: watches it (the whole tree for a folder; the folder
 * holding it for a file), syncs once, then applies each batch of changes, one batch at a time
 * (changes arriving meanwhile are merged, the latest state of a path winning). Resolves once the
 * first sync is done.
 */
export async function follow(conn: FileSource, remotePath: string, dest: string, options: FollowOptions): Promise<Following> {
  const stopper = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stopper.signal]) : stopper.signal;
  const own = { ...options, signal };
  const isFolder = (await conn.share.stat(remotePath, { signal })).type === 'dir';
  const base = remotePath.replace(/\/+$/, '');
  const fileName = base.slice(base.lastIndexOf('/') + 1);

  const pending = new Map<string, FolderChange>();
  let resync = false;
  let wake: (() => void) | undefined;
  const onChanges = (batch: WatchBatch): void => {
    if (batch.kind === 'resync' || pending.size >= MAX_PENDING_CHANGES) {
      resync = true;
      pending.clear();
    } else {
      for (const change of batch.changes) if (isFolder || change.path === fileName) mergeChange(pending, isFolder ? change : { ...change, path: '' });
    }
    wake?.();
  };
  // Armed before the first sync: a change made while it runs is applied after it.
  const watch = await conn.share.watch(isFolder ? base : base.slice(0, Math.max(0, base.lastIndexOf('/'))), { onChanges, tree: isFolder, signal });
  const syncAll = (): Promise<SyncReport> => (isFolder ? syncFolder(conn, remotePath, dest, own) : syncFile(conn, remotePath, dest, own));
  const timed = async (kind: FollowReport['kind'], run: () => Promise<SyncReport>): Promise<void> => {
    const started = performance.now();
    const report = await run();
    options.onSynced?.({ ...report, kind, seconds: (performance.now() - started) / 1000 });
  };
  // The folder written into, as it is once the first sync made it: each later batch writes only
  // there, through that folder, so a user who can write beside it and swaps it for a link to
  // another folder (the victim's) gets nothing written or deleted there.
  const destFolder = isFolder ? dest : path.dirname(dest);
  let destIdentity: FolderIdentity;
  try {
    await timed('initial', syncAll);
    destIdentity = await PinnedFolders.identify(destFolder);
    own.expectRoot = destIdentity;
  } catch (err) {
    watch.stop();
    throw err;
  }

  signal.addEventListener('abort', () => wake?.(), { once: true });
  const applying = (async (): Promise<void> => {
    while (!signal.aborted) {
      if (!resync && pending.size === 0) {
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
        continue;
      }
      // Checked before each batch (a replaced destination ends the follow even when the batch has
      // nothing to write); each batch then works through the folder it opened and checked.
      await withPinnedFolders(destFolder, async () => undefined, destIdentity);
      if (resync) {
        resync = false;
        pending.clear();
        await timed('resync', syncAll);
        continue;
      }
      const changes = [...pending.values()];
      pending.clear();
      await timed('changes', () => (isFolder ? applyChanges(conn, remotePath, dest, changes, own, destIdentity) : applyFileChange(conn, remotePath, dest, changes[0], own, destIdentity)));
    }
  })();
  // Either ends the follow: the watch's end (the peer's error, the connection, the share stopping) or a failure to apply.
  const watchEnded = watch.ended.then(() => {
    if (!signal.aborted) throw new PeerShareError('CONNECTION_CLOSED', 'The peer stopped watching the folder.');
  });
  const ended = Promise.race([watchEnded, applying]).finally(async () => {
    stopper.abort(new PeerShareError('CANCELLED'));
    watch.stop();
    // Whatever was being applied has removed its temporary file before the follow says it ended.
    await applying.catch(() => undefined);
  });
  ended.catch(() => undefined);
  let stopped = false;
  return {
    ended: ended.catch((err: unknown) => {
      // Stopped as asked (stop() or the caller's signal): whatever the stop interrupted is no failure.
      if (stopped || options.signal?.aborted) return;
      throw toPeerShareError(err, 'INTERNAL');
    }),
    stop: () => {
      stopped = true;
      stopper.abort(new PeerShareError('CANCELLED'));
    },
  };
}

/** Applies a batch of a folder's changes (paths below `remotePath`), in the order they first arrived; files several at once. */
async function applyChanges(conn: FileSource, remotePath: string, dest: string, changes: FolderChange[], options: SyncOptions, destIdentity: FolderIdentity): Promise<SyncReport> {
  const origin = options.origins.begin(conn.peerId, remotePath, dest, 'dir');
  const report = emptyReport();
  const base = remotePath.replace(/\/+$/, '');
  // The record's files below each path this batch removes, found in one pass over the record when
  // the first removal comes (a pass per removal held the event loop 25 s for 9,000 removals against
  // a record of 50,000 files: found by follow-attacks), plus those that land after that pass.
  const removed = new Set(changes.filter((c) => c.type === 'removed').map((c) => c.path));
  let recordedBelow: Map<string, string[]> | undefined;
  const landedSince: string[] = [];
  const recorded = deltaOptions(options, origin);
  const perFile: DeltaOptions = {
    ...recorded,
    onFileSynced: (rel, synced) => {
      recorded.onFileSynced!(rel, synced);
      if (recordedBelow) landedSince.push(rel);
    },
  };
  await withPinnedFolders(dest, async (folders) => {
    const work = new WorkQueue(FILES_AT_ONCE);
    try {
      for (const change of changes) {
        // A name of the wrong form is the peer's breach (it stops the follow); one unsafe here is left alone.
        const { components, unsafeHere } = inspectReceivedName(change.path, conn.limits.maxPathBytes);
        if (unsafeHere) {
          leaveAlone(report, change.path, `its name is not safe here (${unsafeHere.why})`);
          continue;
        }
        const name = components[components.length - 1];
        // As deep as a whole sync would go (deltaFolder's maxTreeDepth), no deeper: a sharer's path
        // of 2,000 names would otherwise be made here, with a descriptor held for each folder on the way.
        const folderDepth = change.entry?.type === 'dir' ? components.length : components.length - 1;
        if (folderDepth > conn.limits.maxTreeDepth) {
          leaveAlone(report, change.path, `it is nested deeper than ${conn.limits.maxTreeDepth} levels`);
          continue;
        }
        try {
          if (change.type === 'removed' || change.entry?.type === 'dir') {
            // Files still being written finish first: one may be inside a folder that is about to go.
            await work.drain();
            if (change.type !== 'removed') await folders.makeFolders(components);
            else if (options.deleteRemoved) {
              recordedBelow ??= filesBelow(origin.files.keys(), removed);
              const below = [...(recordedBelow.get(change.path) ?? []), ...landedSince.filter((f) => isAtOrBelow(f, change.path))];
              await removeTree(options.origins, origin, change.path, below, folders, report);
            }
            continue;
          }
          await folders.makeFolders(components.slice(0, -1));
        } catch (err) {
          const coded = toPeerShareError(err, 'IO_ERROR');
          if (coded.code !== 'BAD_NAME' && coded.code !== 'IO_ERROR') throw coded;
          leaveAlone(report, change.path, coded.message);
          continue;
        }
        await work.add(() => folders.use(components.slice(0, -1), name, (local) => syncFileIn(conn, `${base}/${change.path}`, local, change.path, change.entry!, perFile, report)));
      }
      await work.drain();
    } finally {
      await work.drain().catch(() => undefined);
    }
  }, destIdentity);
  return report;
}

/** The one file followed changed, or went. */
async function applyFileChange(conn: FileSource, remotePath: string, target: string, change: FolderChange, options: SyncOptions, destIdentity: FolderIdentity): Promise<SyncReport> {
  if (change.type !== 'removed') return syncFile(conn, remotePath, target, options);
  const origin = options.origins.begin(conn.peerId, remotePath, target, 'file');
  const report = emptyReport();
  if (options.deleteRemoved) await withPinnedFolders(path.dirname(target), (folders) => removeIfOurs(options.origins, origin, '', folders, report, path.basename(target)), destIdentity);
  return report;
}

/** A folder sync's options for files of `origin`: each file's version recorded; with keepLocalEdits, files edited here kept. */
function deltaOptions(options: SyncOptions, origin: Origin): DeltaOptions {
  return {
    signal: options.signal,
    onFileSynced: (rel, synced) => {
      options.origins.setFile(origin, rel, { size: synced.size, mtimeMs: synced.mtimeMs, fileHash: synced.fileHash ?? origin.files.get(rel)?.fileHash, created: synced.created });
    },
    keepLocal: options.keepLocalEdits ? async (rel) => (await options.origins.localState(origin, rel)) === 'edited' : undefined,
  };
}

/** For each of `roots`, the files of `files` at or below it: one pass, each file's own path and the folders above it looked up. */
function filesBelow(files: Iterable<string>, roots: Set<string>): Map<string, string[]> {
  const found = new Map<string, string[]>();
  const add = (root: string, file: string): void => {
    const list = found.get(root);
    if (list) list.push(file);
    else found.set(root, [file]);
  };
  for (const file of files) {
    if (roots.has(file)) add(file, file);
    for (let cut = file.lastIndexOf('/'); cut > 0; cut = file.lastIndexOf('/', cut - 1)) if (roots.has(file.slice(0, cut))) add(file.slice(0, cut), file);
  }
  return found;
}

function isAtOrBelow(file: string, rel: string): boolean {
  return file === rel || file.startsWith(`${rel}/`);
}

/** The sharer removed `rel` (a file, or a folder with everything below it; `below`: the record's files at or below it): remove what the delete rule allows, then the folders left empty. */
async function removeTree(origins: OriginStore, origin: Origin, rel: string, below: string[], folders: PinnedFolders, report: SyncReport): Promise<void> {
  for (const file of below) await removeIfOurs(origins, origin, file, folders, report);
  // Only folders that held a file of the record: a folder of the user's own that no sync wrote
  // into stays, even empty (a sharer's `removed` for any name must not clear the user's folders).
  // Deepest first; a folder that still holds anything (a file kept, one of the user's) stays.
  const made = new Set(below.filter((f) => f !== rel).flatMap((f) => f.split('/').slice(0, -1).map((_, i, parts) => parts.slice(0, i + 1).join('/'))));
  for (const folder of [...made].filter((f) => isAtOrBelow(f, rel)).sort((a, b) => b.length - a.length)) {
    const parts = folder.split('/');
    const at = await folders.pathIn(parts.slice(0, -1), parts[parts.length - 1]).catch(() => undefined);
    if (at) await fs.rmdir(at).catch(() => undefined);
  }
}

/** Removes `rel` if the sync created it and it is as it landed; else keeps it (reported when the user would wonder). Its record goes either way. */
async function removeIfOurs(origins: OriginStore, origin: Origin, rel: string, folders: PinnedFolders, report: SyncReport, fileName?: string): Promise<void> {
  const version = origin.files.get(rel);
  if (!version) return;
  const state = await origins.localState(origin, rel);
  origins.forgetFile(origin, rel);
  if (state === 'missing') return;
  if (!version.created) {
    leaveAlone(report, rel || fileName!, 'the peer removed it, but it was here before the sync; kept');
    return;
  }
  if (state === 'edited') {
    leaveAlone(report, rel || fileName!, 'the peer removed it, but it was edited here; kept');
    return;
  }
  const parts = rel === '' ? [fileName!] : rel.split('/');
  try {
    await fs.unlink(await folders.pathIn(parts.slice(0, -1), parts[parts.length - 1]));
    report.filesDeleted++;
  } catch (err) {
    leaveAlone(report, rel || fileName!, `it could not be removed (${toPeerShareError(err, 'IO_ERROR').message})`);
  }
}

function emptyReport(): SyncReport {
  return { filesChecked: 0, filesChanged: 0, filesDeleted: 0, bytesReceived: 0, bytesReused: 0, leftAlone: [], leftAloneCount: 0 };
}

