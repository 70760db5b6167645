import * as path from 'node:path';
import * as vscode from 'vscode';
import { follow, makeFoldersWithin, sanitizeForDisplay, shortPeerId, toPeerShareError, PeerShareError, type FollowReport } from '../core';
import { formatBytes } from '../core/format';
import { sleep } from '../core/race';
import type { CommandRegistrar } from './commands';
import type { Origins } from './origins';
import { baseName, type Peers } from './peers';
import { localPlaceFor, readSettings } from './settings';
import type { EntryNode } from './tree';

/** One folder being followed. */
export interface Followed {
  peerId: string;
  remotePath: string;
  /** The local copy kept in step. */
  localPath: string;
  state: 'syncing' | 'following' | 'reconnecting';
  /** The last sync or batch applied. */
  last?: FollowReport;
}

/** What is remembered of a follow across a window reload. */
interface Remembered {
  peerId: string;
  remotePath: string;
  localPath: string;
}

interface Running extends Followed {
  abort: AbortController;
  /** Settles when the follow has stopped and its connection is closed. */
  done: Promise<void>;
}

const MEMENTO_KEY = 'peershare.follows';
/** Waits between reconnection attempts after a lost connection: doubling from the first, at most the last. */
const RETRY_FIRST_MS = 2_000;
const RETRY_MOST_MS = 60_000;
/** Folders shown by name in a message, at most. */
const MAX_NAME_CHARS = 60;

/**
 * Follow Folder (issue 13): keeps a local copy of a peer's folder in step as changes arrive (the
 * core's follow(), src/core/follow.ts: a tree watch, only changed chunks moved). Off until asked,
 * per folder; the copy goes where Download puts it; files edited here are left alone, and a file
 * the sharer deleted is deleted here only if Follow (or a download) created it and it was not
 * edited since. The status bar shows what is followed; one click stops one, or all. Follows are
 * remembered for the workspace and resume after a window reload; a lost connection is retried,
 * less often each time, until the follow is stopped.
 */
export class Follows implements vscode.Disposable {
  private readonly running = new Map<string, Running>();
  private readonly statusItem: vscode.StatusBarItem;
  private readonly changed = new vscode.EventEmitter<void>();
  /** Fires when a follow starts, stops, or changes state. */
  readonly onDidChange = this.changed.event;
  private readonly appliedEmitter = new vscode.EventEmitter<{ followed: Followed; report: FollowReport }>();
  /** Fires after each sync or batch of changes a follow applied. */
  readonly onDidApply = this.appliedEmitter.event;
  private closed = false;

  constructor(
    private readonly peers: Peers,
    private readonly origins: Origins,
    private readonly log: vscode.LogOutputChannel,
    private readonly memento: vscode.Memento,
  ) {
    this.statusItem = vscode.window.createStatusBarItem('peershare.following', vscode.StatusBarAlignment.Left, 50);
    this.statusItem.name = 'PeerShare: Following';
    this.statusItem.command = 'peershare.stopFollowing';
  }

  register(command: CommandRegistrar): void {
    command('peershare.followFolder', async (arg?: unknown) => {
      const node = arg as Partial<EntryNode> | undefined;
      if (node?.kind !== 'entry' || node.entry?.type !== 'dir' || typeof node.peerId !== 'string' || typeof node.remotePath !== 'string') {
        void vscode.window.showInformationMessage('Choose a folder of a peer in the Peers view, then Follow Folder.');
        return undefined;
      }
      return this.start(node.peerId, node.remotePath);
    });
    command('peershare.stopFollowing', async (arg?: unknown) => {
      const node = arg as Partial<EntryNode> | undefined;
      if (node?.kind === 'entry' && typeof node.peerId === 'string' && typeof node.remotePath === 'string') return this.stop(node.peerId, node.remotePath);
      return this.pickAndStop();
    });
  }

  /** Resumes the follows remembered for this workspace (after a window reload). */
  resume(): void {
    for (const r of this.memento.get<Remembered[]>(MEMENTO_KEY, []).filter(isRemembered)) {
      this.log.info(`Resuming the follow of ${sanitizeForDisplay(r.remotePath)} from ${r.peerId} into ${r.localPath}`);
      void this.begin(r, true);
    }
  }

  /** What the status bar shows (undefined while nothing is followed). */
  get statusText(): string | undefined {
    return this.running.size > 0 ? this.statusItem.text : undefined;
  }

  isFollowed(peerId: string, remotePath: string): boolean {
    return this.running.has(key(peerId, remotePath));
  }

  list(): Followed[] {
    return [...this.running.values()].map(({ peerId, remotePath, localPath, state, last }) => ({ peerId, remotePath, localPath, state, last }));
  }

  /**
   * Follows a peer's folder into the place Download puts it (asked when there is none). Resolves
   * once the first sync is done (the follow goes on), or with undefined when it could not start (said).
   */
  async start(peerId: string, remotePath: string): Promise<Followed | undefined> {
    const existing = this.running.get(key(peerId, remotePath));
    if (existing) {
      void vscode.window.showInformationMessage(`${this.describe(existing)} is already followed.`);
      return this.list().find((f) => f.localPath === existing.localPath);
    }
    const localPath = await this.placeFor(remotePath);
    if (!localPath) return undefined;
    // Two follows writing the same files would undo each other: no copy inside another.
    const overlapping = [...this.running.values()].find((r) => isWithin(r.localPath, localPath) || isWithin(localPath, r.localPath));
    if (overlapping) {
      void vscode.window.showErrorMessage(`${sanitizeForDisplay(localPath)} overlaps ${sanitizeForDisplay(overlapping.localPath)}, where ${this.describe(overlapping)} is followed; stop that one first.`);
      return undefined;
    }
    const started = await this.begin({ peerId, remotePath, localPath }, false);
    return started ? this.list().find((f) => f.localPath === localPath) : undefined;
  }

  /** Stops following a peer's folder (its copy stays as it is). */
  async stop(peerId: string, remotePath: string): Promise<void> {
    const running = this.running.get(key(peerId, remotePath));
    if (!running) return;
    this.running.delete(key(peerId, remotePath));
    running.abort.abort(new PeerShareError('CANCELLED'));
    await this.remember();
    this.redraw();
    await running.done;
    this.log.info(`Stopped following ${this.describe(running)}`);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.running.values()].map((r) => this.stop(r.peerId, r.remotePath)));
  }

  /** The status bar's click: one item per folder (Stop), and Stop All. */
  private async pickAndStop(): Promise<void> {
    const follows = [...this.running.values()];
    if (follows.length === 0) {
      void vscode.window.showInformationMessage('No folder is being followed. Follow one from the Peers view (right-click a folder of a peer).');
      return;
    }
    type Item = vscode.QuickPickItem & { follow?: Running };
    const items: Item[] = follows.map((f) => ({ label: `$(debug-stop) Stop following ${this.describe(f)}`, description: `(${STATE_LABELS[f.state]})`, detail: `into ${f.localPath}`, follow: f }));
    if (follows.length > 1) items.push({ label: '$(close-all) Stop All' });
    const pick = await vscode.window.showQuickPick(items, { title: 'PeerShare: Following', placeHolder: 'Stop following a folder (your copy stays as it is)' });
    if (!pick) return;
    if (pick.follow) await this.stop(pick.follow.peerId, pick.follow.remotePath);
    else await this.stopAll();
  }

  /** Where the copy goes: Download's place (its folders made without following a link), else a folder the person picks. */
  private async placeFor(remotePath: string): Promise<string | undefined> {
    const place = localPlaceFor(remotePath, readSettings());
    if (place) {
      await makeFoldersWithin(place.base, place.components.slice(0, -1));
      return path.join(place.base, ...place.components);
    }
    const folder = await vscode.window.showOpenDialog({ canSelectFolders: true, canSelectFiles: false, openLabel: 'Follow Into', title: `Keep a copy of ${sanitizeForDisplay(baseName(remotePath))} in…` });
    return folder?.[0] && path.join(folder[0].fsPath, baseName(remotePath));
  }

  /**
   * Starts a follow and keeps it going: true once the first sync is done. A follow that cannot
   * start is said and dropped, unless it is resumed (then it retries, as after a lost connection).
   */
  private begin(r: Remembered, resumed: boolean): Promise<boolean> {
    const abort = new AbortController();
    let firstSync: (ok: boolean) => void = () => undefined;
    const started = new Promise<boolean>((resolve) => (firstSync = resolve));
    const running: Running = { ...r, state: 'syncing', abort, done: Promise.resolve() };
    this.running.set(key(r.peerId, r.remotePath), running);
    this.redraw();
    running.done = this.keepFollowing(running, resumed, firstSync).finally(() => firstSync(false));
    void started.then(async (ok) => {
      if (ok) await this.remember();
    });
    return started;
  }

  private async keepFollowing(running: Running, resumed: boolean, firstSync: (ok: boolean) => void): Promise<void> {
    const { signal } = running.abort;
    const store = await this.origins.store;
    let synced = false;
    let delayMs = RETRY_FIRST_MS;
    while (!signal.aborted && !this.closed) {
      try {
        await this.peers.transfer(running.peerId, signal, async (conn) => {
          const following = await follow(conn, running.remotePath, running.localPath, {
            origins: store,
            deleteRemoved: true,
            keepLocalEdits: true,
            signal,
            onSynced: (report) => this.applied(running, report),
          });
          const stopOnAbort = (): void => following.stop();
          signal.addEventListener('abort', stopOnAbort, { once: true });
          running.state = 'following';
          delayMs = RETRY_FIRST_MS;
          this.redraw();
          if (!synced) {
            synced = true;
            firstSync(true);
            this.said(running);
          }
          try {
            await following.ended;
          } finally {
            signal.removeEventListener('abort', stopOnAbort);
          }
        });
        return;
      } catch (err) {
        if (signal.aborted || this.closed) return;
        const coded = toPeerShareError(err);
        this.log.warn(`Following ${this.describe(running)}: ${coded.code} ${coded.message}`);
        // Never started (or the peer is no longer trusted): said, and dropped.
        if ((!synced && !resumed) || coded.code === 'UNKNOWN_PEER') {
          this.running.delete(key(running.peerId, running.remotePath));
          await this.remember();
          this.redraw();
          void vscode.window.showErrorMessage(`Could not follow ${this.describe(running)}. ${coded.message}`, 'Show Log').then((c) => c && this.log.show());
          return;
        }
        running.state = 'reconnecting';
        this.redraw();
        await sleep(delayMs, signal);
        delayMs = Math.min(delayMs * 2, RETRY_MOST_MS);
      }
    }
  }

  /** A sync or a batch applied: recorded, logged; what was left alone is logged. */
  private applied(running: Running, report: FollowReport): void {
    running.last = report;
    this.origins.updated();
    const what = report.kind === 'changes' ? `applied ${report.filesChecked} change(s)` : `synced ${report.filesChecked} file(s)`;
    this.log.info(
      `Following ${this.describe(running)}: ${what}, ${report.filesChanged} updated, ${report.filesDeleted} deleted, ${formatBytes(report.bytesReceived)} received, ${formatBytes(report.bytesReused)} reused, in ${report.seconds.toFixed(2)} s`,
    );
    for (const l of report.leftAlone.slice(0, 50)) this.log.info(`  left alone ${sanitizeForDisplay(l.path)}: ${sanitizeForDisplay(l.why)}`);
    this.redraw();
    this.appliedEmitter.fire({ followed: { peerId: running.peerId, remotePath: running.remotePath, localPath: running.localPath, state: running.state, last: report }, report });
  }

  private said(running: Running): void {
    const last = running.last;
    const kept = last && last.leftAloneCount ? ` ${last.leftAloneCount} left alone (edited here, or not safe here: see the log).` : '';
    void vscode.window.showInformationMessage(`Following ${this.describe(running)} into ${sanitizeForDisplay(running.localPath)}: changes there are applied here as they happen.${kept}`);
  }

  private describe(f: Pick<Followed, 'peerId' | 'remotePath'>): string {
    const name = sanitizeForDisplay(baseName(f.remotePath));
    const peer = sanitizeForDisplay(this.peers.trustedName(f.peerId) || shortPeerId(f.peerId));
    return `${name.length > MAX_NAME_CHARS ? `${name.slice(0, MAX_NAME_CHARS - 1)}…` : name} from ${peer.length > MAX_NAME_CHARS ? `${peer.slice(0, MAX_NAME_CHARS - 1)}…` : peer}`;
  }

  private redraw(): void {
    const follows = [...this.running.values()];
    void vscode.commands.executeCommand('setContext', 'peershare.following', follows.length > 0);
    if (follows.length === 0) {
      this.statusItem.hide();
    } else {
      const reconnecting = follows.some((f) => f.state === 'reconnecting');
      this.statusItem.text = `$(sync${follows.some((f) => f.state === 'syncing') ? '~spin' : ''}) Following ${follows.length}`;
      this.statusItem.backgroundColor = reconnecting ? new vscode.ThemeColor('statusBarItem.warningBackground') : undefined;
      const tooltip = new vscode.MarkdownString('**PeerShare: following**\n\n');
      for (const f of follows) tooltip.appendText(`${this.describe(f)} → ${f.localPath} (${STATE_LABELS[f.state]})\n\n`);
      tooltip.appendText('Click to stop following.');
      this.statusItem.tooltip = tooltip;
      this.statusItem.show();
    }
    // The view redraws when what is followed changed, not on every batch.
    const followed = follows.map((f) => key(f.peerId, f.remotePath)).join('\n');
    if (followed !== this.lastFollowed) {
      this.lastFollowed = followed;
      this.changed.fire();
    }
  }
  private lastFollowed = '';

  private async remember(): Promise<void> {
    if (this.closed) return;
    const list: Remembered[] = [...this.running.values()].map(({ peerId, remotePath, localPath }) => ({ peerId, remotePath, localPath }));
    await this.memento.update(MEMENTO_KEY, list);
  }

  /** Deactivation: every follow stops (and is still remembered, to resume on the next window); resolves once their connections are closed. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.running.values()];
    for (const r of all) r.abort.abort(new PeerShareError('CANCELLED'));
    await Promise.allSettled(all.map((r) => r.done));
  }

  dispose(): void {
    void this.close();
    this.statusItem.dispose();
    this.changed.dispose();
    this.appliedEmitter.dispose();
  }
}

const STATE_LABELS: Record<Followed['state'], string> = { syncing: 'syncing', following: 'in step', reconnecting: 'reconnecting' };

function key(peerId: string, remotePath: string): string {
  return `${peerId}\n${remotePath}`;
}

/** Whether `inner` is `outer` or below it (decided on path components, not prefixes). */
function isWithin(inner: string, outer: string): boolean {
  const relative = path.relative(outer, inner);
  return relative === '' || (relative !== '..' && !relative.startsWith(`..${path.sep}`) && !path.isAbsolute(relative));
}

function isRemembered(value: unknown): value is Remembered {
  const r = value as Remembered;
  return typeof r?.peerId === 'string' && typeof r.remotePath === 'string' && typeof r.localPath === 'string' && path.isAbsolute(r.localPath);
}
