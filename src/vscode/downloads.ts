import * as path from 'node:path';
import * as vscode from 'vscode';
import { DEFAULT_LIMITS, download, makeFoldersWithin, resolveTarget, sanitizeForDisplay, toPeerShareError, type ConflictChoice, type DownloadResult } from '../core';
import { describeDownload, formatBytes } from '../core/format';
import { baseName, peerFileUri, type Peers } from './peers';
import type { Origins } from './origins';
import { localPlaceFor, readSettings } from './settings';
import type { EntryNode } from './tree';

/** How the user answers "the target exists". Replaceable in tests, which cannot click a modal. */
export type ConflictPrompt = (target: string, isFolder: boolean, peerFile: vscode.Uri, peerName: string) => Promise<ConflictChoice | 'overwriteAll' | 'skipAll'>;


export class Downloads implements vscode.Disposable {
  private running = 0;
  private readonly active = new Set<AbortController>();
  private readonly waiting: (() => void)[] = [];
  /** Every download from its start (queued included) to its last cleanup. */
  private readonly inFlight = new Set<Promise<unknown>>();
  private closed = false;
  conflictPrompt: ConflictPrompt = askConflict;

  constructor(
    private readonly peers: Peers,
    private readonly log: vscode.LogOutputChannel,
    /** Where each download is recorded (what came from where), for Update from Peer and the marks. */
    private readonly origins?: Origins,
  ) {}

  /** Downloads a peer's file or folder into `destFolder` (default: the download location). */
  download(node: EntryNode, destFolder?: string): Promise<DownloadResult | undefined> {
    const running = this.run(node, destFolder);
    this.inFlight.add(running);
    void running.finally(() => this.inFlight.delete(running));
    return running;
  }

  private async run(node: EntryNode, destFolder?: string): Promise<DownloadResult | undefined> {
    if (this.closed) return undefined;
    const name = sanitizeForDisplay(baseName(node.remotePath));
    const from = sanitizeForDisplay(node.peerName || 'peer');
    let dest: string | undefined;
    try {
      // Download puts it where Compare with Local looks (localPlaceFor); Download To..., in the folder chosen.
      const place = destFolder ? undefined : localPlaceFor(node.remotePath, readSettings());
      if (place) {
        // The folders on the way are named by the peer: made without ever following a link in the
        // workspace, so a peer's path cannot lead the download out through one.
        const folders = place.components.slice(0, -1);
        await makeFoldersWithin(place.base, folders);
        dest = path.join(place.base, ...folders);
      } else dest = destFolder;
    } catch (err) {
      return this.failed(node, name, err);
    }
    if (!dest) {
      void vscode.window.showErrorMessage('Open a folder, or set peershare.downloadLocation, to download into.');
      return undefined;
    }
    await this.slot();
    try {
      if (this.closed) return undefined;
      return await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: `Downloading ${name} from ${from}`, cancellable: true },
        async (progress, token) => {
          const abort = new AbortController();
          this.active.add(abort);
          const cancel = token.onCancellationRequested(() => abort.abort());
          const started = Date.now();
          let reported = 0;
          let lastUpdate = 0;
          let applyToAll: ConflictChoice | undefined;
          try {
            return await this.peers.transfer(node.peerId, abort.signal, async (conn) => {
              const target = await resolveTarget(node.remotePath, dest);
              const recorder = this.origins?.recorder(node.peerId, node.remotePath, node.entry.type);
              const downloading = download(conn, node.remotePath, dest, {
                signal: abort.signal,
                keepPartial: false,
                onFileLanded: recorder?.onFileLanded,
                onConflict: async (existing) => {
                  if (applyToAll) return applyToAll;
                  const rel = path.relative(target, existing);
                  const remote = node.entry.type === 'dir' ? `${node.remotePath}/${rel.split(path.sep).join('/')}` : node.remotePath;
                  progress.report({ message: `${sanitizeForDisplay(path.basename(existing))} exists here: waiting for your answer` });
                  const answer = await this.conflictPrompt(existing, node.entry.type === 'dir', peerFileUri(node.peerId, remote), from);
                  if (answer === 'overwriteAll') return (applyToAll = 'overwrite');
                  if (answer === 'skipAll') return (applyToAll = 'skip');
                  return answer;
                },
                onProgress: (p) => {
                  // A resumed download counts from what is already on disk; the speed from what arrives now.
                  const done = (p.resumedBytes ?? 0) + p.bytes;
                  const now = Date.now();
                  if (now - lastUpdate < 100 && done !== p.totalBytes && !p.checking) return;
                  lastUpdate = now;
                  if (p.checking) {
                    progress.report({ message: `checking the ${formatBytes(p.resumedBytes ?? 0)} already downloaded` });
                    return;
                  }
                  const speed = p.bytes / Math.max((now - started) / 1000, 0.001);
                  const increment = p.totalBytes ? ((done - reported) / p.totalBytes) * 100 : undefined;
                  reported = done;
                  progress.report({
                    increment,
                    message: `${formatBytes(done)}${p.totalBytes !== undefined ? ` of ${formatBytes(p.totalBytes)}` : ''} · ${formatBytes(speed)}/s`,
                  });
                },
              });
              // What landed before a folder download stopped is recorded too (a cancelled single file never lands).
              const result = await downloading.catch(async (err: unknown) => {
                if (node.entry.type === 'dir') await recorder?.landedAt(target);
                throw err;
              });
              await recorder?.landedAt(result.target);
              this.report(result, name, from);
              return result;
            });
          } finally {
            this.active.delete(abort);
            cancel.dispose();
          }
        },
      );
    } catch (err) {
      return this.failed(node, name, err);
    } finally {
      this.release();
    }
  }

  /** A failed download: a message with the reason, the detail in the log; a cancel is no failure. */
  private failed(node: EntryNode, name: string, err: unknown): undefined {
    const coded = toPeerShareError(err);
    if (coded.code === 'CANCELLED') {
      this.log.info(`Download of ${name} cancelled`);
      return undefined;
    }
    this.log.error(`Download of ${sanitizeForDisplay(node.remotePath)} from ${node.peerId} failed: ${coded.code} ${coded.message}${coded.detail ? ` (${coded.detail})` : ''}`);
    void vscode.window.showErrorMessage(`Could not download ${name}. ${coded.message}`, 'Show Log').then((choice) => {
      if (choice) this.log.show();
    });
    return undefined;
  }

  /** Cancels every running download (deactivation does this too); nothing partial is kept. */
  cancelAll(): void {
    for (const abort of this.active) abort.abort();
  }

  /**
   * For deactivation: no new download starts, running ones are cancelled, and this resolves once
   * each has removed its temporary files.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.cancelAll();
    for (const wake of this.waiting.splice(0)) wake();
    await Promise.allSettled([...this.inFlight]);
  }

  dispose(): void {
    void this.close();
  }

  private report(result: DownloadResult, name: string, from: string): void {
    const sentence = describeDownload(result, name, from);
    this.log.info(result.files === 0 ? `${sentence} (${result.target})` : `${sentence} Saved in ${result.target}; ${formatBytes(result.bytes)} received, every file verified.`);
    for (const l of result.leftOut) this.log.warn(`Left out ${l.path}: its name is not safe here (${l.why}).`);
    if (result.files === 0) {
      void vscode.window.showInformationMessage(sentence);
      return;
    }
    const target = vscode.Uri.file(result.target);
    void vscode.window
      .showInformationMessage(sentence, result.type === 'file' ? 'Open' : 'Reveal')
      .then((choice) => {
        if (choice === 'Open') void vscode.commands.executeCommand('vscode.open', target);
        if (choice === 'Reveal') void vscode.commands.executeCommand('revealInExplorer', target);
      });
  }

  private async slot(): Promise<void> {
    if (this.running < DEFAULT_LIMITS.maxParallelDownloads) {
      this.running++;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.running++;
  }

  private release(): void {
    this.running--;
    this.waiting.shift()?.();
  }
}

/**
 * Asks what to do about an existing file. The safe answers come first, so Enter never overwrites:
 * a single file offers Keep Both, Overwrite and Compare (the dialog's own Cancel skips it); a
 * folder's file also Skip, Skip All and Overwrite All, with Skip first. Compare opens the diff and
 * asks again in a notification rather than a modal, so the diff can be read before choosing.
 */
async function askConflict(target: string, isFolder: boolean, peerFile: vscode.Uri, peerName: string): Promise<ConflictChoice | 'overwriteAll' | 'skipAll'> {
  const buttons = isFolder ? ['Skip', 'Keep Both', 'Overwrite', 'Compare', 'Skip All', 'Overwrite All'] : ['Keep Both', 'Overwrite', 'Compare'];
  const question = `${path.basename(target)} already exists in ${path.dirname(target)}.`;
  const detail = 'Keep both (the download gets a new name), overwrite yours with the peer’s file, or skip it?';
  let choice = await vscode.window.showWarningMessage(question, { modal: true, detail }, ...buttons);
  while (choice === 'Compare') {
    await vscode.commands.executeCommand('vscode.diff', peerFile, vscode.Uri.file(target), peerDiffTitle(path.basename(target), peerName));
    choice = await vscode.window.showWarningMessage(`${question} ${detail}`, ...buttons);
  }
  switch (choice) {
    case 'Overwrite':
      return 'overwrite';
    case 'Keep Both':
      return 'keepBoth';
    case 'Overwrite All':
      return 'overwriteAll';
    case 'Skip All':
      return 'skipAll';
    default:
      return 'skip';
  }
}

/** One title for every diff of a peer's file against ours: "app.ts (Ann) ↔ (yours)". */
export function peerDiffTitle(fileName: string, peerName: string): string {
  return `${fileName} (${peerName}) ↔ (yours)`;
}
