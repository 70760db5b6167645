import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { OriginStore, deltaFile, deltaFolder, withPinnedFolders, sameAs, sanitizeForDisplay, shortPeerId, toPeerShareError, PeerShareError, type Entry, type Origin, type PeerConnection } from '../core';
import { countOf, formatBytes } from '../core/format';
import { MAX_INLINE_CHUNKS_FILE_BYTES } from '../core/v2/share-messages';
import type { CommandRegistrar } from './commands';
import { peerDiffTitle } from './downloads';
import type { Origins } from './origins';
import { baseName, peerFileUri, type Peers } from './peers';
import type { EntryNode } from './tree';

/** The answer to "edited here, and changed on the peer too". */
export type LocalEditChoice = 'mine' | 'theirs' | 'mineAll' | 'theirsAll';

/** How the user answers it; replaceable in tests, which cannot click a modal (as Downloads.conflictPrompt). */
export type LocalEditPrompt = (localFile: string, isFolder: boolean, peerFile: vscode.Uri, peerName: string) => Promise<LocalEditChoice>;

/** What one Update from Peer did. */
export interface UpdateOutcome {
  /** The local file or folder updated. */
  localPath: string;
  filesChecked: number;
  filesChanged: number;
  bytesReceived: number;
  bytesReused: number;
  /** Files left as they are here (edited here; kept by choice, or only changed here), '/'-separated below `localPath`. */
  kept: string[];
  /** Files left alone for another reason, with why (escaped). */
  leftAlone: { path: string; why: string }[];
}

/** A local copy and where it came from. */
interface Copy {
  origin: Origin;
  /** Its path below the origin ('' for the origin itself). */
  rel: string;
}

/** Reports of files left alone shown in the log, at most. */
const MAX_LOGGED = 50;

/**
 * Update from Peer (issue 13): takes the peer's newer version of a file or folder that came from
 * it, moving only the chunks that changed (src/core/delta.ts). A local copy edited since it landed
 * is never replaced silently: when the peer's copy changed too, the person chooses (Compare, Keep
 * Mine, Take Theirs); when only the local copy changed, it is kept. Update never deletes: a file
 * the peer removed stays here (Follow Folder applies deletions, by the delete rule).
 */
export class Updates implements vscode.Disposable {
  localEditPrompt: LocalEditPrompt = askLocalEdit;
  private readonly active = new Set<AbortController>();
  /** Every update from its start to its last cleanup (deltaFile removes its temporary file). */
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(
    private readonly peers: Peers,
    private readonly origins: Origins,
    private readonly log: vscode.LogOutputChannel,
  ) {}

  register(command: CommandRegistrar): void {
    // From the Explorer (a file or folder, or several selected), the Peers view (a row), or the palette (the active editor's file).
    command('peershare.updateFromPeer', async (arg?: unknown, selected?: unknown) => {
      const copies = await this.copiesFor(arg, selected);
      const outcomes: UpdateOutcome[] = [];
      for (const copy of copies) {
        const outcome = await this.update(copy.origin, copy.rel);
        if (outcome) outcomes.push(outcome);
      }
      return outcomes;
    });
  }

  /** The local copies a command names: Explorer resources, a Peers view row, or the active editor's file. */
  private async copiesFor(arg: unknown, selected: unknown): Promise<Copy[]> {
    if (arg instanceof vscode.Uri || arg === undefined) {
      const uris = Array.isArray(selected) && selected.every((u) => u instanceof vscode.Uri) ? (selected as vscode.Uri[]) : arg ? [arg] : [];
      if (uris.length === 0) {
        const active = vscode.window.activeTextEditor?.document.uri;
        if (active?.scheme !== 'file') {
          void vscode.window.showInformationMessage('Open a file that came from a peer (or right-click it in the Explorer) to update it from the peer.');
          return [];
        }
        uris.push(active);
      }
      const copies: Copy[] = [];
      for (const uri of uris) {
        const found = uri.scheme === 'file' ? await this.origins.lookup(uri.fsPath) : undefined;
        if (found) copies.push(found);
        else void vscode.window.showInformationMessage(`${sanitizeForDisplay(path.basename(uri.fsPath))} did not come from a peer (it was not downloaded, received or followed here), so there is nothing to update it from.`);
      }
      return copies;
    }
    const node = arg as Partial<EntryNode>;
    if (node?.kind !== 'entry' || typeof node.peerId !== 'string' || typeof node.remotePath !== 'string') return [];
    await this.origins.store;
    const copies = this.origins.copiesOf(node.peerId, node.remotePath);
    if (copies.length === 0) {
      void vscode.window.showInformationMessage(`You have no copy of ${sanitizeForDisplay(baseName(node.remotePath))} from this peer yet: download it first.`);
      return [];
    }
    if (copies.length === 1) return copies;
    const pick = await vscode.window.showQuickPick(
      copies.map((copy) => ({ label: OriginStore.localFile(copy.origin, copy.rel), copy })),
      { title: `Update which copy of ${sanitizeForDisplay(baseName(node.remotePath))}?` },
    );
    return pick ? [pick.copy] : [];
  }

  /** Updates the local copy `rel` of `origin` from its peer, with progress and Cancel; undefined when cancelled or failed (said). */
  update(origin: Origin, rel: string): Promise<UpdateOutcome | undefined> {
    const running = this.run(origin, rel);
    this.inFlight.add(running);
    void running.finally(() => this.inFlight.delete(running));
    return running;
  }

  private async run(origin: Origin, rel: string): Promise<UpdateOutcome | undefined> {
    const localPath = OriginStore.localFile(origin, rel);
    const remotePath = rel ? `${origin.remotePath.replace(/\/+$/, '')}/${rel}` : origin.remotePath;
    const name = sanitizeForDisplay(path.basename(localPath));
    const from = this.peerName(origin.peerId);
    const abort = new AbortController();
    this.active.add(abort);
    try {
      return await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: `Updating ${name} from ${from}`, cancellable: true },
        async (progress, token) => {
          const cancel = token.onCancellationRequested(() => abort.abort());
          try {
            const outcome = await this.peers.transfer(origin.peerId, abort.signal, async (conn) => {
              const entry = await conn.stat(remotePath, { signal: abort.signal });
              const isFolder = entry.type === 'dir';
              const local = await fs.lstat(localPath).catch(() => undefined);
              const localIsFolder = local ? local.isDirectory() : origin.type === 'dir' && !origin.files.has(rel);
              if (isFolder !== localIsFolder) {
                throw new PeerShareError('NOT_A_FILE', `${from}’s ${name} is now a ${isFolder ? 'folder' : 'file'}; download it again instead.`);
              }
              return isFolder
                ? this.updateFolder(conn, origin, rel, remotePath, from, abort.signal, (message) => progress.report({ message }))
                : this.updateFile(conn, origin, rel, remotePath, entry, from, abort.signal);
            });
            this.origins.updated();
            this.report(outcome, name, from, remotePath);
            return outcome;
          } finally {
            cancel.dispose();
          }
        },
      );
    } catch (err) {
      const coded = toPeerShareError(err);
      if (coded.code === 'CANCELLED' || abort.signal.aborted) {
        this.log.info(`Update of ${name} cancelled`);
        return undefined;
      }
      this.log.error(`Update of ${sanitizeForDisplay(localPath)} from ${origin.peerId} failed: ${coded.code} ${coded.message}${coded.detail ? ` (${coded.detail})` : ''}`);
      void vscode.window.showErrorMessage(`Could not update ${name} from ${from}. ${coded.message}`, 'Show Log').then((c) => c && this.log.show());
      return undefined;
    } finally {
      this.active.delete(abort);
    }
  }

  private async updateFile(conn: PeerConnection, origin: Origin, rel: string, remotePath: string, entry: Entry, from: string, signal: AbortSignal): Promise<UpdateOutcome> {
    const store = await this.origins.store;
    const localPath = OriginStore.localFile(origin, rel);
    const outcome = emptyOutcome(localPath);
    outcome.filesChecked = 1;
    const state = await this.localState(store, origin, rel);
    const version = origin.files.get(rel);
    const peerChanged = !version || !sameAs(version, entry.size, entry.mtimeMs);
    if (state === 'same' && !peerChanged) return outcome;
    if (state === 'edited') {
      const keep = !peerChanged || (await this.oneAtATime(() => this.localEditPrompt(localPath, false, peerFileUri(conn.peerId, remotePath), from))) !== 'theirs';
      if (keep) {
        outcome.kept.push(path.basename(localPath));
        return outcome;
      }
    }
    // Through the folder holding it, opened once: a folder swapped for a link meanwhile is not followed.
    const updated = await withPinnedFolders(path.dirname(localPath), (folders) =>
      folders.use([], path.basename(localPath), (local) =>
        deltaFile(conn, remotePath, state === 'missing' ? undefined : local, local, { overwrite: true, signal, inline: entry.size <= MAX_INLINE_CHUNKS_FILE_BYTES }),
      ),
    );
    store.setFile(origin, rel, { ...updated.version, created: state === 'missing' });
    if (updated.changed) outcome.filesChanged = 1;
    outcome.bytesReceived = updated.bytesReceived;
    outcome.bytesReused = updated.bytesReused;
    return outcome;
  }

  private async updateFolder(conn: PeerConnection, origin: Origin, rel: string, remotePath: string, from: string, signal: AbortSignal, say: (message: string) => void): Promise<UpdateOutcome> {
    const store = await this.origins.store;
    const localPath = OriginStore.localFile(origin, rel);
    const outcome = emptyOutcome(localPath);
    const below = (relPath: string): string => (rel ? `${rel}/${relPath}` : relPath);
    let applyToAll: 'mine' | 'theirs' | undefined;
    let checked = 0;
    const result = await deltaFolder(conn, remotePath, localPath, {
      signal,
      onFileSynced: (relPath, synced) => {
        const fileRel = below(relPath);
        store.setFile(origin, fileRel, { size: synced.size, mtimeMs: synced.mtimeMs, fileHash: synced.fileHash ?? origin.files.get(fileRel)?.fileHash, created: synced.created });
        say(`${countOf(++checked, 'file')} checked`);
      },
      // Asked only for a local file that differs from the peer's: edited here, changed there, or both.
      keepLocal: async (relPath) => {
        const fileRel = below(relPath);
        if ((await this.localState(store, origin, fileRel)) !== 'edited') return false;
        const version = origin.files.get(fileRel);
        const entry = await conn.stat(`${remotePath.replace(/\/+$/, '')}/${relPath}`, { signal });
        const peerChanged = !version || !sameAs(version, entry.size, entry.mtimeMs);
        let keep = !peerChanged;
        if (peerChanged) {
          // Files are synced several at once: the questions come one at a time, and an "all" answer settles the ones waiting too.
          const choice = await this.oneAtATime(async () => {
            if (applyToAll) return applyToAll;
            const answer = await this.localEditPrompt(OriginStore.localFile(origin, fileRel), true, peerFileUri(conn.peerId, `${remotePath.replace(/\/+$/, '')}/${relPath}`), from);
            if (answer === 'mineAll' || answer === 'theirsAll') applyToAll = answer === 'mineAll' ? 'mine' : 'theirs';
            return answer === 'mineAll' ? 'mine' : answer === 'theirsAll' ? 'theirs' : answer;
          });
          keep = choice !== 'theirs';
        }
        if (keep) outcome.kept.push(relPath);
        return keep;
      },
    });
    outcome.filesChecked = result.filesChecked;
    outcome.filesChanged = result.filesChanged;
    outcome.bytesReceived = result.bytesReceived;
    outcome.bytesReused = result.bytesReused;
    const kept = new Set(outcome.kept);
    outcome.leftAlone = result.leftAlone.filter((l) => !kept.has(l.path)).map((l) => ({ path: sanitizeForDisplay(l.path), why: sanitizeForDisplay(l.why) }));
    return outcome;
  }

  /** The local copy against its record; a file open with unsaved changes counts as edited. */
  private async localState(store: OriginStore, origin: Origin, rel: string): Promise<'same' | 'edited' | 'missing'> {
    const state = await store.localState(origin, rel);
    if (state !== 'same') return state;
    const file = OriginStore.localFile(origin, rel);
    return vscode.workspace.textDocuments.some((d) => d.isDirty && d.uri.scheme === 'file' && d.uri.fsPath === file) ? 'edited' : 'same';
  }

  /** Questions about files edited here, one at a time (updates and a folder's files run at once). */
  private asking: Promise<unknown> = Promise.resolve();
  private oneAtATime<T>(ask: () => Promise<T>): Promise<T> {
    const answer = this.asking.then(ask);
    this.asking = answer.catch(() => undefined);
    return answer;
  }

  private report(outcome: UpdateOutcome, name: string, from: string, remotePath: string): void {
    const moved = `${formatBytes(outcome.bytesReceived)} received, ${formatBytes(outcome.bytesReused)} reused`;
    const kept = outcome.kept.length ? `; kept yours of ${countOf(outcome.kept.length, 'file')} edited here` : '';
    const left = outcome.leftAlone.length ? `; ${countOf(outcome.leftAlone.length, 'file')} left alone (see the log)` : '';
    let sentence: string;
    if (outcome.filesChanged === 0 && outcome.kept.length === 0) sentence = `${name} is already the same as ${from}’s.`;
    else if (outcome.filesChanged === 0 && outcome.filesChecked === 1) sentence = `Kept your ${name}: it was edited here.`;
    else if (outcome.filesChecked > 1) sentence = `Updated ${name} from ${from}: ${outcome.filesChanged} of ${countOf(outcome.filesChecked, 'file')} changed, ${moved}${kept}${left}.`;
    else sentence = `Updated ${name} from ${from}: ${moved}.`;
    this.log.info(`${sentence} (${sanitizeForDisplay(remotePath)} into ${outcome.localPath})`);
    for (const l of outcome.leftAlone.slice(0, MAX_LOGGED)) this.log.warn(`Left alone ${l.path}: ${l.why}`);
    void vscode.window.showInformationMessage(sentence);
  }

  private peerName(peerId: string): string {
    const name = sanitizeForDisplay(this.peers.trustedName(peerId) || shortPeerId(peerId));
    return name.length > 60 ? `${name.slice(0, 59)}…` : name;
  }

  /** For deactivation: running updates are cancelled; resolves once each has removed its temporary file. */
  async close(): Promise<void> {
    for (const abort of this.active) abort.abort();
    await Promise.allSettled([...this.inFlight]);
  }

  dispose(): void {
    void this.close();
  }
}

function emptyOutcome(localPath: string): UpdateOutcome {
  return { localPath, filesChecked: 0, filesChanged: 0, bytesReceived: 0, bytesReused: 0, kept: [], leftAlone: [] };
}

/**
 * "Edited here, and changed on the peer too": a modal whose first (default) answer is Compare and
 * whose Escape keeps yours; Compare opens the diff, then asks again in a notification so the diff
 * can be read first (closing it keeps yours). Take Theirs replaces the local file.
 */
async function askLocalEdit(localFile: string, isFolder: boolean, peerFile: vscode.Uri, peerName: string): Promise<LocalEditChoice> {
  const name = path.basename(localFile);
  const buttons = isFolder ? ['Compare', 'Keep Mine', 'Take Theirs', 'Keep Mine for All', 'Take Theirs for All'] : ['Compare', 'Keep Mine', 'Take Theirs'];
  const question = `${name} was edited here since it came from ${peerName}, and ${peerName}’s copy changed too.`;
  const detail = 'Keep yours (nothing is changed here), take theirs (yours is replaced), or compare them first?';
  let choice = await vscode.window.showWarningMessage(question, { modal: true, detail }, ...buttons);
  while (choice === 'Compare') {
    const exists = await fs.lstat(localFile).then((st) => st.isFile(), () => false);
    if (exists) {
      await vscode.commands.executeCommand('vscode.diff', peerFile, vscode.Uri.file(localFile), peerDiffTitle(name, peerName));
      // The focus in the diff, not left on the progress notification: VS Code holds back a new
      // toast while the focus is in the corner where toasts show, and the question went unseen.
      await vscode.commands.executeCommand('workbench.action.focusActiveEditorGroup');
    }
    choice = await vscode.window.showWarningMessage(`${question} ${detail}`, ...buttons);
  }
  switch (choice) {
    case 'Take Theirs':
      return 'theirs';
    case 'Take Theirs for All':
      return 'theirsAll';
    case 'Keep Mine for All':
      return 'mineAll';
    default:
      return 'mine';
  }
}
