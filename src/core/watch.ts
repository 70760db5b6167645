import { watch as watchFolder, promises as fs, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import { PeerShareError, toPeerShareError } from './errors';
import type { Limits } from './limits';
import { sleep } from './race';
import type { Entry } from './protocol';
import type { Share, ShareRoot } from './share';

/**
 * The sharer's side of a live tree (docs/protocol-v2.md 14): which entries of a watched folder
 * changed, told per watch in coalesced, bounded batches. Changes are the differences between two
 * listings made by the Share's own rules (excludes, .gitignore, private paths, regular files and
 * folders only), so an excluded name is never named.
 *
 * The watcher is Node's own `fs.watch` on the folder itself, not recursive: a watch covers one
 * folder's direct children, and one kernel watch per open folder costs nothing to start (measured
 * 4-5 ms for 100 folders, 1 MiB), where a recursive watch of a whole root costs a watch per folder
 * below it (Node 20's recursive fs.watch on Linux held the event loop 0.6-2 s for a 10,000-file
 * tree; docs/dependencies.md "Watching folders"). A folder is watched while at least one watch is
 * open on it, whoever's; the last one to close releases it, and a root has no watcher at all while
 * none of its folders is watched.
 */

/** What a change says about a name: its Entry without the name (docs/protocol-v2.md 14.1). */
export type EntryState = Omit<Entry, 'name'>;
export type ChangeType = 'added' | 'removed' | 'changed';
export interface FolderChange {
  /** The child's name (a watch covers one folder's direct children). */
  path: string;
  type: ChangeType;
  /** The new state; absent for `removed`. */
  entry?: EntryState;
}
/** One batch of a watch: changes, or `resync` (too many: list the folder again). */
export type WatchBatch = { kind: 'changes'; changes: FolderChange[] } | { kind: 'resync' };

type WatchLimits = Pick<Limits, 'watchBatchIntervalMs' | 'maxWatchChanges' | 'maxListEntries' | 'maxTreeWatchFolders' | 'maxTreeDepth'>;

/** What hears a watched folder's changes: a requester's watch of that folder, or one folder of a tree watch. */
interface WatchSink {
  /** What changed since the folder's last look; `flood` when it had to list everything and found too much. */
  push(changes: FolderChange[], flood: boolean): void;
  /** The folder's watch ended (removed, replaced, failed). */
  fail(err: PeerShareError): void;
}

/** Raw events are gathered this long before the names are looked at again (a save is several events). */
const SETTLE_MS = 20;
/**
 * After a .gitignore changes, the folders it rules are looked at again only once it has been quiet
 * this long. The Share reads a .gitignore again as soon as it is another version (share.ts), so a
 * file the new rules exclude is never named by the old ones (a script that adds `credentials.txt`
 * to .gitignore, then writes it); the wait keeps a look from using one caught half saved (a save
 * empties the file, then writes it). *It was 2.1 s while the Share kept rules for 2 s.*
 */
const GITIGNORE_QUIET_MS = 100;

/**
 * The watched folders of one Share, each with one watcher and the listing last reported, shared
 * by every watch open on it.
 */
export class WatchHub {
  private readonly folders = new Map<string, WatchedFolder>();

  constructor(
    private readonly share: Share,
    private readonly limits: WatchLimits,
  ) {}

  /**
   * Starts watching `remotePath` (a folder inside a root) for one requester. Refused with the
   * path's own coded error (NOT_FOUND, EXCLUDED, OUTSIDE_SHARE, NOT_A_DIRECTORY, TOO_LARGE), or
   * BUSY when the system gives no more watchers. Once it resolves, every later change is reported.
   * `signal` (the requester's CANCEL) ends it while the folder is still being read.
   */
  async watch(remotePath: string, signal?: AbortSignal): Promise<FolderWatch> {
    let folder: WatchedFolder | undefined;
    const watch = new FolderWatch(this.limits, () => folder?.remove(watch));
    try {
      folder = await this.join(remotePath, watch, signal);
    } catch (err) {
      watch.close();
      throw err;
    }
    return watch;
  }

  /**
   * Starts watching the whole subtree of `remotePath` (spec 14.5): a watcher on each folder in it,
   * at most `maxTreeWatchFolders`, changes named by their path below `remotePath`. Refused as
   * watch() is, or TOO_LARGE when the tree has more folders, or is deeper, than allowed.
   */
  async watchTree(remotePath: string, signal?: AbortSignal): Promise<FolderWatch> {
    const tree = new TreeWatch(this, remotePath.replace(/\/+$/, ''), this.limits);
    try {
      await tree.arm(signal);
    } catch (err) {
      tree.out.close();
      throw err;
    }
    return tree.out;
  }

  /**
   * @internal Adds `sink` to the watchers of the folder `remotePath`, starting them if it is the
   * first; resolves once the folder's watcher runs and its listing is known.
   */
  async join(remotePath: string, sink: WatchSink, signal?: AbortSignal): Promise<WatchedFolder> {
    const { root, components } = this.share.resolve(remotePath);
    if (!root) throw new PeerShareError('INVALID_ARGUMENT', 'Watch a shared folder, not the list of them.');
    // The share's own checks (path rules, excludes, symbolic links, kind), as a listing makes them.
    const entry = await this.share.stat(remotePath);
    if (entry.type !== 'dir') throw new PeerShareError('NOT_A_DIRECTORY', 'Only a folder can be watched.');
    if (signal?.aborted) throw abortReason(signal);
    const key = [root.name, ...components].join('/');
    let folder = this.folders.get(key);
    if (!folder) {
      const starting = new WatchedFolder(
        this.share,
        root,
        components,
        this.limits,
        () => {
          if (this.folders.get(key) === starting) this.folders.delete(key);
        },
        () => this.rulesChangedBelow(key),
      );
      this.folders.set(key, starting);
      folder = starting;
    }
    // Cancelled while the folder is being read: the sink leaves at once, and a folder no other
    // watch waits for stops being read (a requester cancelling and asking again costs no listing each).
    const joined = folder;
    const leave = (): void => joined.remove(sink);
    signal?.addEventListener('abort', leave, { once: true });
    try {
      await folder.add(sink);
      if (signal?.aborted) throw abortReason(signal);
    } catch (err) {
      folder.remove(sink);
      throw signal?.aborted ? abortReason(signal) : err;
    } finally {
      signal?.removeEventListener('abort', leave);
    }
    return folder;
  }

  /**
   * The .gitignore of the folder `key` changed: its rules apply to every folder below it too, so
   * each watched one looks again once the new rules are in place (a subfolder newly
   * excluded, then a secret written in it at once, was named by a tree watch; found by follow-attacks).
   */
  private rulesChangedBelow(key: string): void {
    for (const [at, folder] of this.folders) if (at.startsWith(`${key}/`)) folder.rulesChanged();
  }

  /** System watchers held for the folders of `root` (by name), or of every root: what tests and logs check. */
  watcherCount(rootName?: string): number {
    let count = 0;
    for (const folder of this.folders.values()) if (folder.watching && (rootName === undefined || folder.root.name === rootName)) count++;
    return count;
  }

  /** Ends every watch (the share stops). */
  close(): void {
    for (const folder of [...this.folders.values()]) folder.fail(new PeerShareError('CONNECTION_CLOSED', 'The share stopped.'));
  }
}

/** One watched folder: its watcher, the listing last reported, and the watches that hear of changes. */
class WatchedFolder {
  readonly root: ShareRoot;
  private readonly components: string[];
  private readonly remotePath: string;
  private readonly realPath: string;
  private readonly watches = new Set<WatchSink>();
  private watcher?: FSWatcher;
  private starting?: Promise<void>;
  private identity?: { dev: number; ino: number };
  private known = new Map<string, EntryState>();
  private readonly dirty = new Set<string>();
  private relist = false;
  private timer?: NodeJS.Timeout;
  /** When the folder's .gitignore last changed (performance.now()). */
  private gitignoreChangedAt = -Infinity;
  private running?: Promise<void>;
  private failed?: PeerShareError;

  constructor(
    private readonly share: Share,
    root: ShareRoot,
    components: string[],
    private readonly limits: WatchLimits,
    private readonly onReleased: () => void,
    /** This folder's .gitignore changed (the folders below it must wait for the new rules too). */
    private readonly onRulesChanged: () => void,
  ) {
    this.root = root;
    this.components = components;
    this.remotePath = [root.name, ...components].join('/');
    this.realPath = path.join(root.realPath, ...components);
  }

  get watching(): boolean {
    return this.watcher !== undefined;
  }

  /** Adds a watch; the first one starts the watcher, then lists the folder (events meanwhile are looked at after). */
  async add(sink: WatchSink): Promise<void> {
    if (this.failed) throw this.failed;
    this.watches.add(sink);
    this.starting ??= this.start();
    await this.starting;
  }

  remove(sink: WatchSink): void {
    if (!this.watches.delete(sink) || this.watches.size > 0) return;
    this.release();
  }

  /** The entries as last reported (the listing once add() resolved). */
  entries(): [string, EntryState][] {
    return [...this.known];
  }

  private async start(): Promise<void> {
    try {
      const stat = await fs.lstat(this.realPath);
      // Every watch left while this ran: no watcher is made that nothing would close.
      if (this.failed) throw this.failed;
      this.identity = { dev: stat.dev, ino: stat.ino };
      // Started before the listing, so a change made while it runs is looked at afterwards.
      this.watcher = watchFolder(this.realPath, { persistent: false }, (_event, name) => this.onEvent(name));
      this.watcher.on('error', (err) => void this.check(err));
      this.known = await this.listing();
      // Released meanwhile (release() closed the watcher): the watch that waited is told.
      if (this.failed) throw this.failed;
    } catch (err) {
      const coded = watcherError(err);
      this.fail(coded);
      throw coded;
    }
  }

  private onEvent(name: string | Buffer | null): void {
    // Some platforms do not say which name: the whole folder is looked at again. Past
    // maxWatchChanges names it is anyway, so a storm of new names costs no more memory than that.
    if (this.relist) {
      // Already a whole look: no name need be kept.
    } else if (typeof name === 'string' && name !== '' && !name.includes('/') && !name.includes(path.sep) && this.dirty.size < this.limits.maxWatchChanges) {
      this.dirty.add(name);
    } else {
      this.relist = true;
      this.dirty.clear();
    }
    // A changed .gitignore changes what is listed, here and in every folder below.
    if (name === '.gitignore') {
      this.rulesChanged();
      this.onRulesChanged();
      return;
    }
    this.schedule();
  }

  /** The rules of this folder (a .gitignore here or above) changed: the whole folder is looked at again, once the .gitignore is quiet. */
  rulesChanged(): void {
    this.relist = true;
    this.dirty.clear();
    this.gitignoreChangedAt = performance.now();
    // A look already waiting would use the old rules: it waits for the new ones instead.
    clearTimeout(this.timer);
    this.timer = undefined;
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.running || this.failed) return;
    const gitignoreWait = this.gitignoreChangedAt + GITIGNORE_QUIET_MS - performance.now();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // A failure of our own ends the folder's watches (INTERNAL), never an unhandled rejection.
      this.running = this.look().catch((err: unknown) => this.fail(toPeerShareError(err, 'INTERNAL'))).finally(() => {
        this.running = undefined;
        if (this.dirty.size > 0 || this.relist) this.schedule();
      });
    }, Math.max(SETTLE_MS, gitignoreWait));
    this.timer.unref();
  }

  /** Looks at the names the system reported (or the whole folder) and tells each watch what changed. */
  private async look(): Promise<void> {
    if (this.failed || !(await this.stillThere())) return;
    // A .gitignore changed again while this look waited: it waits for that one to be quiet too.
    if (performance.now() < this.gitignoreChangedAt + GITIGNORE_QUIET_MS) return;
    const names = [...this.dirty];
    this.dirty.clear();
    const whole = this.relist || names.length > this.limits.maxWatchChanges;
    this.relist = false;
    const rulesAt = this.gitignoreChangedAt;
    const changes: FolderChange[] = [];
    try {
      if (whole) {
        const now = await this.listing();
        // The rules changed while this look ran (a .gitignore here or above): what it saw may be
        // excluded now; nothing of it is told or kept, and the whole folder is looked at again.
        if (this.gitignoreChangedAt !== rulesAt) {
          this.relist = true;
          return;
        }
        for (const [name, entry] of now) {
          const before = this.known.get(name);
          if (!before) changes.push({ path: name, type: 'added', entry });
          else if (!sameState(before, entry)) changes.push({ path: name, type: 'changed', entry });
        }
        for (const name of this.known.keys()) if (!now.has(name)) changes.push({ path: name, type: 'removed' });
        this.known = now;
      } else {
        const states: [string, EntryState | undefined][] = [];
        for (const name of names) states.push([name, await this.stateOf(name)]);
        if (this.gitignoreChangedAt !== rulesAt) {
          this.relist = true;
          return;
        }
        for (const [name, entry] of states) {
          const before = this.known.get(name);
          if (entry && !before) changes.push({ path: name, type: 'added', entry });
          else if (entry && before && !sameState(before, entry)) changes.push({ path: name, type: 'changed', entry });
          else if (!entry && before) changes.push({ path: name, type: 'removed' });
          if (entry) this.known.set(name, entry);
          else this.known.delete(name);
        }
        // Held for every watch as a listing is: no larger than a listing may be (spec 14.2, TOO_LARGE).
        if (this.known.size > this.limits.maxListEntries) {
          throw new PeerShareError('TOO_LARGE', `The folder has more than ${this.limits.maxListEntries} entries.`);
        }
      }
    } catch (err) {
      await this.check(err);
      return;
    }
    // Looked at through the folder's path: if a folder above it became a link meanwhile, what was
    // seen may be outside the share, and is never told.
    if (changes.length === 0 || !(await this.stillThere())) return;
    for (const watch of this.watches) watch.push(changes, whole && changes.length > this.limits.maxWatchChanges);
  }

  /** The folder as `share.list` shows it: the share's rules, at most maxListEntries entries. */
  private async listing(): Promise<Map<string, EntryState>> {
    const entries = new Map<string, EntryState>();
    for await (const batch of this.share.list(this.remotePath)) {
      // Released meanwhile (its last watch left): the rest is not read.
      if (this.failed) throw this.failed;
      for (const { name, ...state } of batch) entries.set(name, state);
    }
    return entries;
  }

  /** One child as a listing would show it, or undefined when a listing would not show it. */
  private async stateOf(name: string): Promise<EntryState | undefined> {
    // Not valid UTF-8 (cannot be named on the wire): never listed.
    if (name.includes('\uFFFD') || name === '.' || name === '..') return undefined;
    const stat = await fs.lstat(path.join(this.realPath, name)).catch(() => undefined);
    // Only regular files and folders are ever shown: no symbolic links, devices, FIFOs or sockets.
    if (!stat || !(stat.isFile() || stat.isDirectory()) || this.share.isPrivateHardLink(stat)) return undefined;
    const isDir = stat.isDirectory();
    const excluded = await this.share.isExcluded(this.root, [...this.components, name], isDir).catch(() => true);
    if (excluded) return undefined;
    return { type: isDir ? 'dir' : 'file', size: isDir ? 0 : stat.size, mtimeMs: Math.floor(stat.mtimeMs) };
  }

  /**
   * The watched folder is still the one watched, at its place in the share (not removed, renamed,
   * replaced, or reached through a link: a folder above it moved out of the share and a link to it
   * put in its place still leads to the same folder); otherwise every watch ends NOT_FOUND.
   */
  private async stillThere(): Promise<boolean> {
    const stat = await fs.lstat(this.realPath).catch(() => undefined);
    const real = stat ? await fs.realpath(this.realPath).catch(() => undefined) : undefined;
    if (stat?.isDirectory() && stat.dev === this.identity?.dev && stat.ino === this.identity?.ino && real === this.realPath) return true;
    this.fail(new PeerShareError('NOT_FOUND', 'The folder was removed or renamed on the sharer.'));
    return false;
  }

  /** A watcher or listing error: the folder gone (NOT_FOUND), or the watcher broken (INTERNAL). */
  private async check(err: unknown): Promise<void> {
    if (!(await this.stillThere())) return;
    // A coded failure (the folder grew past maxListEntries, became excluded) keeps its code.
    this.fail(err instanceof PeerShareError ? err : new PeerShareError('INTERNAL', 'Watching the folder failed on the sharer.', { detail: String(err) }));
  }

  /** Ends every watch of this folder with `err` and releases the watcher. */
  fail(err: PeerShareError): void {
    if (this.failed) return;
    this.failed = err;
    for (const watch of this.watches) watch.fail(err);
    this.watches.clear();
    this.release();
  }

  private release(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.watcher?.close();
    this.watcher = undefined;
    // A later watch of this folder starts afresh.
    this.failed ??= new PeerShareError('CONNECTION_CLOSED', 'No longer watched.');
    this.onReleased();
  }
}

/**
 * One requester's watch of a folder: changes gathered since its last batch (the latest state of a
 * name wins), at most maxWatchChanges of them, past which they are dropped for one `resync`.
 */
export class FolderWatch implements WatchSink {
  private readonly pending = new Map<string, FolderChange>();
  private resync = false;
  private firstPendingAt = 0;
  private lastBatchAt = -Infinity;
  private failure?: PeerShareError;
  private closed = false;
  private wake?: () => void;

  constructor(
    private readonly limits: WatchLimits,
    private readonly onClose: () => void,
  ) {}

  /** @internal What changed since the last look; `flood` when it had to list everything and found too much. */
  push(changes: FolderChange[], flood: boolean): void {
    if (this.closed) return;
    if (!this.resync) {
      if (this.pending.size === 0) this.firstPendingAt = performance.now();
      for (const change of changes) mergeChange(this.pending, change);
      if (flood || this.pending.size > this.limits.maxWatchChanges) {
        this.pending.clear();
        this.resync = true;
      }
    }
    this.wake?.();
  }

  /** @internal */
  fail(err: PeerShareError): void {
    this.failure ??= err;
    this.wake?.();
  }

  /**
   * The next batch: waits for a change, then gathers for watchBatchIntervalMs (and at least that
   * long since the last batch). Throws the folder's failure (NOT_FOUND when it was removed), or
   * the signal's reason.
   */
  async next(signal: AbortSignal): Promise<WatchBatch> {
    for (;;) {
      if (signal.aborted) throw abortReason(signal);
      if (this.failure) throw this.failure;
      if (this.resync || this.pending.size > 0) {
        const due = Math.max(this.firstPendingAt, this.lastBatchAt) + this.limits.watchBatchIntervalMs;
        const wait = due - performance.now();
        if (wait > 0) {
          await sleep(wait, signal);
          continue;
        }
        this.lastBatchAt = performance.now();
        if (this.resync) {
          this.resync = false;
          return { kind: 'resync' };
        }
        const changes = [...this.pending.values()];
        this.pending.clear();
        // Every name came back to where it was: nothing to tell.
        if (changes.length > 0) return { kind: 'changes', changes };
        continue;
      }
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal.removeEventListener('abort', done);
          this.wake = undefined;
          resolve();
        };
        this.wake = done;
        signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  /** Stops this watch; the folder's watcher stops with the last one. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.pending.clear();
    this.onClose();
  }
}

/**
 * A requester's watch of a whole subtree (spec 14.5): one sink in each folder below the watched one
 * (sharing that folder's watcher with any other watch of it), each change named by its path below
 * the watched folder, all gathered into one FolderWatch (`out`) with its coalescing and bounds. A
 * folder that appears is joined and what it already holds is told as added (its watcher runs before
 * its listing, so nothing falls between); a folder that goes is left, with everything below it.
 */
class TreeWatch {
  readonly out: FolderWatch;
  /** The folders joined, by their path below the top ('' is the top itself). */
  private readonly members = new Map<string, TreeMember>();
  private closed = false;

  constructor(
    private readonly hub: WatchHub,
    private readonly top: string,
    private readonly limits: WatchLimits,
  ) {
    this.out = new FolderWatch(limits, () => this.close());
  }

  /** Joins every folder of the tree, breadth first; the top's own error (or the tree's size) refuses the watch. */
  async arm(signal?: AbortSignal): Promise<void> {
    await this.enterAll('', false, signal);
  }

  /** @internal From the folder `rel`: its changes, named below the top; folders that came or went are joined or left. */
  fromFolder(member: TreeMember, changes: FolderChange[], flood: boolean): void {
    // A folder left while it was being joined may still speak once: not heard.
    if (this.closed || this.members.get(member.rel) !== member) return;
    const rel = member.rel;
    const named = rel === '' ? changes : changes.map((c) => ({ ...c, path: `${rel}/${c.path}` }));
    this.out.push(named, flood);
    // Folders that went (or became files) are left in one pass over the members: a build writing
    // 30,000 files in a tree of 4,000 folders was 120 million comparisons, one pass per file, and
    // held the sharer's event loop (found by follow-attacks).
    this.leave(new Set(named.filter((c) => c.entry?.type !== 'dir').map((c) => c.path)));
    for (const change of named) if (change.entry?.type === 'dir' && !this.members.has(change.path)) this.enterLater(change.path);
  }

  /** @internal The folder `rel` stopped being watched (removed, replaced, failed). */
  folderFailed(member: TreeMember, err: PeerShareError): void {
    if (this.closed || this.members.get(member.rel) !== member) return;
    const rel = member.rel;
    if (rel === '') {
      this.out.fail(err);
      return;
    }
    this.leave(new Set([rel]));
    // Removed: its parent says so. Replaced by another folder of the same name: joined again, and,
    // as what the old one held is not told as removed, the requester is asked to look again.
    this.enterLater(rel, () => this.out.push([], true));
  }

  private enterLater(rel: string, onEntered?: () => void): void {
    void this.enterAll(rel, true).then(
      (entered) => {
        if (entered) onEntered?.();
      },
      (err: unknown) => this.out.fail(toPeerShareError(err, 'INTERNAL')),
    );
  }

  /** Joins `rel` and every folder below it; `announce`: tells what they hold as added. False when `rel` was not joined (gone, or already). */
  private async enterAll(rel: string, announce: boolean, signal?: AbortSignal): Promise<boolean> {
    const queue = [rel];
    let first = true;
    while (queue.length > 0) {
      const at = queue.shift()!;
      const folder = await this.enter(at, signal);
      if (!folder) {
        if (first) return false;
        continue;
      }
      first = false;
      const entries = folder.entries();
      if (announce && entries.length > 0) {
        this.out.push(entries.map(([name, entry]) => ({ path: at === '' ? name : `${at}/${name}`, type: 'added' as const, entry })), false);
      }
      for (const [name, entry] of entries) if (entry.type === 'dir') queue.push(at === '' ? name : `${at}/${name}`);
    }
    return true;
  }

  private async enter(rel: string, signal?: AbortSignal): Promise<WatchedFolder | undefined> {
    if (this.closed || this.members.has(rel)) return undefined;
    if (this.members.size >= this.limits.maxTreeWatchFolders) {
      throw new PeerShareError('TOO_LARGE', `The folder holds more than ${this.limits.maxTreeWatchFolders} folders; watch a smaller one.`);
    }
    if (rel !== '' && rel.split('/').length > this.limits.maxTreeDepth) throw new PeerShareError('TOO_LARGE', `The folder is nested deeper than ${this.limits.maxTreeDepth} levels.`);
    const member = new TreeMember(this, rel);
    this.members.set(rel, member);
    let folder: WatchedFolder;
    try {
      folder = await this.hub.join(rel === '' ? this.top : `${this.top}/${rel}`, member, signal);
    } catch (err) {
      if (this.members.get(rel) === member) this.members.delete(rel);
      const code = toPeerShareError(err).code;
      // A folder below the top that went (or became excluded or a file) before it was joined: its parent tells.
      if (rel !== '' && (code === 'NOT_FOUND' || code === 'NOT_A_DIRECTORY' || code === 'EXCLUDED' || code === 'OUTSIDE_SHARE')) return undefined;
      throw err;
    }
    member.folder = folder;
    // Left (the tree closed, the folder went) while it was being joined: nothing may stay joined.
    if (this.closed || this.members.get(rel) !== member) {
      folder.remove(member);
      return undefined;
    }
    return folder;
  }

  /** Leaves each folder of `gone` and every folder below them. */
  private leave(gone: Set<string>): void {
    if (gone.size === 0) return;
    for (const [at, member] of this.members) {
      // `at` or a folder above it went: its own path, then each shorter one.
      let inside = gone.has(at);
      for (let cut = at.lastIndexOf('/'); !inside && cut > 0; cut = at.lastIndexOf('/', cut - 1)) inside = gone.has(at.slice(0, cut));
      if (inside) {
        this.members.delete(at);
        member.folder?.remove(member);
      }
    }
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const member of this.members.values()) member.folder?.remove(member);
    this.members.clear();
  }
}

/** One folder of a tree watch. */
class TreeMember implements WatchSink {
  folder?: WatchedFolder;

  constructor(
    private readonly tree: TreeWatch,
    readonly rel: string,
  ) {}

  push(changes: FolderChange[], flood: boolean): void {
    this.tree.fromFolder(this, changes, flood);
  }

  fail(err: PeerShareError): void {
    this.tree.folderFailed(this, err);
  }
}

/**
 * Adds a change to what a watch has pending, so the requester sees the net effect: added then
 * removed is nothing; removed then added is changed; added then changed stays added.
 */
export function mergeChange(pending: Map<string, FolderChange>, change: FolderChange): void {
  const before = pending.get(change.path);
  if (!before) {
    pending.set(change.path, change);
    return;
  }
  if (before.type === 'added') {
    if (change.type === 'removed') pending.delete(change.path);
    else pending.set(change.path, { ...change, type: 'added' });
  } else if (before.type === 'removed') {
    pending.set(change.path, change.type === 'removed' ? change : { ...change, type: 'changed' });
  } else {
    pending.set(change.path, change);
  }
}

function sameState(a: EntryState, b: EntryState): boolean {
  return a.type === b.type && a.size === b.size && a.mtimeMs === b.mtimeMs;
}

/** The system refusing another watcher (inotify's limit) is BUSY, a path error keeps its code. */
function watcherError(err: unknown): PeerShareError {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EMFILE' || code === 'ENFILE') {
    return new PeerShareError('BUSY', 'The sharer cannot watch more folders now (its system limit on watchers).', { detail: String(err) });
  }
  if (code === 'ENOENT') return new PeerShareError('NOT_FOUND');
  return toPeerShareError(err, 'INTERNAL');
}

function abortReason(signal: AbortSignal): PeerShareError {
  return signal.reason instanceof PeerShareError ? signal.reason : new PeerShareError('CANCELLED');
}
