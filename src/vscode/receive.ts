import { randomBytes } from 'node:crypto';
import { closeSync, createReadStream, createWriteStream, futimesSync, lstatSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as vscode from 'vscode';
import {
  inboxFolderFor,
  inspectReceivedName,
  makeFoldersWithin,
  sanitizeForDisplay,
  shortPeerId,
  toPeerShareError,
  type IncomingOffer,
  type IncomingSnippet,
  type OfferDecision,
  type ReceivePolicy,
  type ReceiveProgress,
  type ReceiveResult,
  type ReceiveSetting,
} from '../core';
import { countOf, formatBytes } from '../core/format';
import { commit, exists, openTemporary, removeName } from '../core/landing';
import type { CommandRegistrar } from './commands';
import { peerDiffTitle } from './downloads';
import type { Origins } from './origins';
import type { Peers } from './peers';
import { firstLocalFolder, inboxRoot, readSettings } from './settings';
import type { PeerNode } from './tree';

/**
 * Receiving what trusted peers send (issue 12), the editor's implementation of the core's
 * ReceivePolicy (src/core/send-policy.ts): the offer prompt (Review, Save to Inbox, Save As...,
 * Decline), the review of staged files as diffs against the workspace, the inbox, snippets, and
 * the per-peer receive setting. The core decides who may offer, checks every name, hash and the
 * free space, and lands the files; this layer asks the person and moves reviewed files in.
 * Everything a peer chose (its name, the note, names, a snippet's path) is escaped and bounded.
 */
export type OfferChoice = 'review' | 'inbox' | 'saveAs' | 'decline';
export type ReviewChoice = 'accept' | 'acceptAll' | 'skip';
export type SnippetChoice = 'open' | 'compare' | 'copy';

/** One staged file of a reviewed offer and where it would go in the workspace. */
export interface ReviewFile {
  /** The verified file in the staging folder (extension storage, outside the workspace). */
  staged: string;
  /** Where Accept puts it. */
  target: string;
  /** The workspace folder `target` is in, and its (checked) path there. */
  base: string;
  components: string[];
  /** Whether `target` existed when the review began (the diff is against it). */
  replaces: boolean;
  peerName: string;
  /** The sender's modification time, as it offered the file (a file sent on its own). */
  sendersTime?: number;
}

/** The person's side of each question; replaceable in tests, which cannot click a notification. */
export interface ReceivePrompts {
  offer(offer: IncomingOffer, message: string, choices: OfferChoice[], signal: AbortSignal): Promise<OfferChoice | undefined>;
  saveAsFolder(title: string): Promise<string | undefined>;
  review(file: ReviewFile, message: string): Promise<ReviewChoice | undefined>;
  /** Not withdrawn when the sender goes away: a snippet stays usable after its sender's connection closed. */
  snippet(snippet: IncomingSnippet, message: string): Promise<SnippetChoice | undefined>;
  /** "Add the inbox to .gitignore?": asked once per workspace. */
  gitignore(message: string): Promise<boolean>;
  /** "X has unsaved changes / appeared meanwhile: replace it?" */
  replace(message: string): Promise<boolean>;
}

/** What a review did: the files taken into the workspace, and those skipped. */
export interface ReviewOutcome {
  accepted: string[];
  skipped: string[];
  failed: string[];
}

/** Peer names, notes and paths as shown: escaped, and cut to a length a notification holds. */
function shown(text: string, max = 60): string {
  const s = sanitizeForDisplay(text);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

const CHOICE_LABELS: Record<OfferChoice, string> = { review: 'Review', inbox: 'Save to Inbox', saveAs: 'Save As...', decline: 'Decline' };
const REVIEW_LABELS: Record<ReviewChoice, string> = { accept: 'Accept', acceptAll: 'Accept All', skip: 'Skip' };
const SNIPPET_LABELS: Record<SnippetChoice, string> = { open: 'Open', compare: 'Compare with Mine', copy: 'Copy' };
/** Snippets kept for their read-only documents (Compare with Mine); older ones are dropped. */
const KEPT_SNIPPETS = 20;
/** Names an offer prompt lists; the rest are counted. */
const LISTED_NAMES = 3;
/** Staging folders older than this, left by an editor that quit mid-review, are removed at start. */
const STALE_STAGING_MS = 24 * 60 * 60_000;
export const SNIPPET_SCHEME = 'peershare-snippet';

/** A notification with buttons, answered undefined when closed or when `signal` fires. */
async function ask<T extends string>(show: typeof vscode.window.showInformationMessage, message: string, labels: Record<T, string>, choices: T[], signal?: AbortSignal): Promise<T | undefined> {
  const answer = show(message, ...choices.map((c) => labels[c]));
  const picked = await (signal
    ? Promise.race([answer, new Promise<undefined>((resolve) => (signal.aborted ? resolve(undefined) : signal.addEventListener('abort', () => resolve(undefined), { once: true })))])
    : answer);
  return choices.find((c) => labels[c] === picked);
}

export const notificationPrompts: ReceivePrompts = {
  offer: (_offer, message, choices, signal) => ask(vscode.window.showInformationMessage, message, CHOICE_LABELS, choices, signal),
  async saveAsFolder(title) {
    const picked = await vscode.window.showOpenDialog({ canSelectFolders: true, canSelectFiles: false, canSelectMany: false, openLabel: 'Save Here', title });
    return picked?.[0]?.fsPath;
  },
  review: (_file, message) => ask(vscode.window.showInformationMessage, message, REVIEW_LABELS, ['accept', 'acceptAll', 'skip']),
  snippet: (_snippet, message) => ask(vscode.window.showInformationMessage, message, SNIPPET_LABELS, ['open', 'compare', 'copy']),
  async gitignore(message) {
    return (await vscode.window.showInformationMessage(message, 'Add to .gitignore', 'No')) === 'Add to .gitignore';
  },
  async replace(message) {
    return (await vscode.window.showWarningMessage(message, { modal: true }, 'Replace')) === 'Replace';
  },
};

/** An offer the person answered, until its result is in. */
interface Pending {
  how: 'review' | 'inbox' | 'saveAs';
  into: string;
  who: string;
  /** Where the sender keeps each entry (its `path` hint, by entry name): Review compares with the same path here; every file received is recorded with it. */
  places?: Map<string, string[]>;
  /** The sender's modification time of each file entry, by entry name (what it offered). */
  times?: Map<string, number>;
}

/** A running receive's notification: progress, and Cancel. */
interface Running {
  report(progress: ReceiveProgress): void;
  end(): void;
}

export class Receiving implements ReceivePolicy, vscode.Disposable {
  prompts: ReceivePrompts = notificationPrompts;
  private readonly pending = new Map<string, Pending>();
  /** The inbox-is-off warning shows once per window (the log has every one). */
  private inboxWarned = false;
  private readonly running = new Map<string, Running>();
  private readonly snippets = new Map<string, string>();
  private readonly reviewFinished = new vscode.EventEmitter<ReviewOutcome>();
  /** Fires when a review has ended (every file accepted, skipped or failed). */
  readonly onDidFinishReview = this.reviewFinished.event;
  private readonly disposables: vscode.Disposable[] = [this.reviewFinished];
  private closed = false;
  private reviewing: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly peers: Peers,
    private readonly log: vscode.LogOutputChannel,
    /** Staging for Review: outside the workspace (extension storage). */
    readonly stagingRoot: string,
    /** Remembers, per workspace, that the .gitignore question was asked. */
    private readonly memento: vscode.Memento,
    /** Where files received are recorded (what came from where). */
    private readonly origins?: Origins,
  ) {
    this.disposables.push(
      vscode.workspace.registerTextDocumentContentProvider(SNIPPET_SCHEME, { provideTextDocumentContent: (uri) => this.snippets.get(uri.toString()) ?? '' }),
    );
    void this.removeStaleStaging();
  }

  register(command: CommandRegistrar): void {
    // From the Peers view: the peer's row; from a test or another command, also the setting.
    command('peershare.setReceiveSetting', async (arg?: unknown, given?: unknown) => {
      const setting = typeof given === 'string' ? (given as ReceiveSetting) : undefined;
      const peer = (arg as PeerNode | undefined)?.kind === 'peer' ? (arg as PeerNode).peer : await this.pickPeer();
      if (!peer) return undefined;
      const { node } = await this.peers.load();
      const current = node.receiveSettings.get(peer.id);
      const name = shown(peer.name || shortPeerId(peer.id));
      const items: (vscode.QuickPickItem & { setting: ReceiveSetting })[] = [
        { label: 'Ask each time', description: 'Review, Save to Inbox, Save As or Decline', setting: 'ask' },
        { label: 'Save to Inbox automatically', description: 'without a question', setting: 'inbox' },
        { label: 'Never', description: 'refuse without asking', setting: 'never' },
      ];
      for (const item of items) if (item.setting === current) item.label = `$(check) ${item.label}`;
      const chosen = setting ?? (await vscode.window.showQuickPick(items, { title: `What ${name} may send you` }))?.setting;
      if (!chosen) return undefined;
      await node.receiveSettings.set(peer.id, chosen);
      this.log.info(`Receive setting for ${peer.id}: ${chosen}`);
      return chosen;
    });
  }

  // ---- ReceivePolicy

  async decideOffer(offer: IncomingOffer, signal: AbortSignal): Promise<OfferDecision | 'decline'> {
    const who = await this.who(offer.peer);
    const folder = firstLocalFolder();
    // Review and the inbox need a workspace folder (the inbox, unless set to an absolute path).
    const choices: OfferChoice[] = [...(folder ? (['review'] as const) : []), ...(this.inboxFor(offer.peer) ? (['inbox'] as const) : []), 'saveAs', 'decline'];
    this.log.info(`${who} offers ${countOf(offer.entries.length, 'item')} (${formatBytes(offer.totalBytes)})`);
    const timeout = AbortSignal.timeout(readSettings().requestTimeoutSeconds * 1000);
    const question = AbortSignal.any([signal, timeout]);
    const choice = await this.prompts.offer(offer, this.describeOffer(offer, who), choices, question);
    if (question.aborted || !choice || choice === 'decline' || !choices.includes(choice)) {
      this.log.info(`Declined the offer from ${who}${timeout.aborted ? ' (no answer in time)' : ''}`);
      return 'decline';
    }
    const all = offer.entries.map(() => ({}));
    const key = this.key(offer.peer.id, offer.offerId);
    const places = new Map(offer.entries.flatMap((e) => (e.path ? [[e.name, e.path.split('/')] as const] : [])));
    const times = new Map(offer.entries.flatMap((e) => (e.type === 'file' ? [[e.name, e.mtimeMs] as const] : [])));
    if (choice === 'review') {
      const into = path.join(this.stagingRoot, randomBytes(8).toString('hex'));
      await fs.mkdir(into, { recursive: true, mode: 0o700 });
      this.pending.set(key, { how: 'review', into, who, places, times });
      return { into, entries: all };
    }
    if (choice === 'inbox') {
      const into = this.inboxFor(offer.peer)!;
      this.pending.set(key, { how: 'inbox', into, who, places, times });
      return { into, entries: all };
    }
    const into = await this.prompts.saveAsFolder(`Save what ${who} sends in…`);
    if (!into || signal.aborted) return 'decline';
    this.pending.set(key, { how: 'saveAs', into, who, places, times });
    return { into, entries: all };
  }

  /**
   * The peer's inbox folder; undefined (no inbox: Review and Save As remain) when a link or a file
   * stands on its way inside the workspace: a cloned repository could hold `PeerShare Inbox` as a
   * link to `.vscode`, and what peers send would land where it points.
   */
  inboxFor(peer: { id: string; name: string }): string | undefined {
    const inbox = inboxRoot(readSettings());
    const folder = inbox && inboxFolderFor(inbox, { id: peer.id, name: this.localName(peer) });
    const base = firstLocalFolder()?.uri.fsPath;
    if (!folder || !base || !isInside(base, folder)) return folder;
    const blocked = notAFolderOnTheWay(base, path.relative(base, folder).split(path.sep));
    if (!blocked) return folder;
    const why = `The inbox is off: ${shown(path.relative(base, blocked), 120)} in the workspace is a link or a file, not a folder. Remove it, or set peershare.inboxFolder.`;
    this.log.warn(why);
    if (!this.inboxWarned) void vscode.window.showWarningMessage(why);
    this.inboxWarned = true;
    return undefined;
  }

  /**
   * The question stays answerable after the sender's connection closed (a CLI sender leaves at
   * once); the core frees the peer's place for its next offer when the person answers, or after
   * its deadline, so a peer cannot stack up snippet questions faster than that.
   */
  async showSnippet(incoming: IncomingSnippet): Promise<void> {
    const { snippet } = incoming;
    const who = await this.who(incoming.peer);
    const lines = snippet.startLine === snippet.endLine ? `line ${snippet.startLine}` : `lines ${snippet.startLine}-${snippet.endLine}`;
    const note = incoming.note ? `: “${shown(incoming.note, 200)}”` : '';
    const message = `${who} sent ${lines} of ${shown(snippet.path, 120)}${note}`;
    this.log.info(message);
    const choice = await this.prompts.snippet(incoming, message);
    try {
      if (choice === 'open') await this.openSnippet(incoming);
      if (choice === 'compare') await this.compareSnippet(incoming, who);
      if (choice === 'copy') await vscode.env.clipboard.writeText(snippet.text);
    } catch (err) {
      const coded = toPeerShareError(err);
      this.log.error(`Snippet from ${incoming.peer.id}: ${coded.code} ${coded.message}`);
      void vscode.window.showErrorMessage(coded.message);
    }
  }

  onProgress(progress: ReceiveProgress): void {
    let running = this.running.get(progress.offerId);
    if (!running) {
      running = this.showProgress(progress.offerId);
      this.running.set(progress.offerId, running);
    }
    running.report(progress);
  }

  onReceived(result: ReceiveResult): void {
    this.running.get(result.offerId)?.end();
    this.running.delete(result.offerId);
    const key = this.key(result.peer.id, result.offerId);
    const pending = this.pending.get(key);
    this.pending.delete(key);
    void this.finish(result, pending).catch((err: unknown) => this.log.error(`After receiving from ${result.peer.id}: ${toPeerShareError(err).message}`));
  }

  onNotice(message: string, offer?: IncomingOffer): void {
    const text = shown(message, 300);
    this.log.warn(text);
    void vscode.window.showWarningMessage(text);
    if (offer) {
      // An offer that ends in a notice before any result (the answer could not be sent) shows no more progress.
      this.running.get(offer.offerId)?.end();
      this.running.delete(offer.offerId);
    }
  }

  // ---- after an offer

  private async finish(result: ReceiveResult, pending: Pending | undefined): Promise<void> {
    const who = pending?.who ?? (await this.who(result.peer));
    const received = result.entries.filter((e) => e.status === 'received' && e.target);
    const failed = result.entries.filter((e) => e.status === 'failed');
    for (const e of failed) this.log.warn(`Could not receive ${shown(e.name)} from ${result.peer.id}: ${e.code ?? ''} ${shown(e.message ?? '', 300)}`);
    if (result.cancelled) {
      if (pending?.how === 'review') await fs.rm(pending.into, { recursive: true, force: true });
      void vscode.window.showInformationMessage(`The offer from ${who} was cancelled; nothing of it was kept.`);
      return;
    }
    if (failed.length) {
      const first = failed[0];
      void vscode.window.showWarningMessage(`Could not receive ${countOf(failed.length, 'item')} from ${who}: ${shown(first.name)}: ${shown(first.message ?? 'no reason given', 200)}`, 'Show Log').then((c) => c && this.log.show());
    }
    if (pending?.how === 'review') {
      // One review at a time: two offers' questions never interleave.
      const review = this.reviewing.then(() => this.review(received.map((e) => e.target!), pending, result.peer.id));
      this.reviewing = review.catch(() => undefined);
      await review;
      return;
    }
    if (received.length === 0) return;
    // Recorded by the path the sender gave (else the name): an Update from Peer finds it only if the sender shares it there.
    for (const e of received) await this.origins?.recordReceived(result.peer.id, pending?.places?.get(e.name)?.join('/') ?? e.name, e.target!, pending?.times?.get(e.name));
    const into = pending?.into ?? this.inboxFor(result.peer);
    if (!pending && into) void this.offerGitignore(into);
    if (pending?.how === 'inbox') void this.offerGitignore(pending.into);
    const names = received.map((e) => shown(path.basename(e.target!)));
    const sentence = `Received ${names.length <= LISTED_NAMES ? names.join(', ') : countOf(names.length, 'item')} from ${who} (${formatBytes(result.bytes)}, verified)${into ? ` in ${shown(into, 120)}` : ''}.`;
    this.log.info(sentence);
    const single = received.length === 1 ? vscode.Uri.file(received[0].target!) : undefined;
    const isFile = single ? await fs.stat(single.fsPath).then((st) => st.isFile(), () => false) : false;
    const choice = await vscode.window.showInformationMessage(sentence, ...(isFile ? ['Open'] : []), 'Reveal');
    if (choice === 'Open' && single) await vscode.commands.executeCommand('vscode.open', single);
    const shownPlace = vscode.Uri.file(single?.fsPath ?? into ?? received[0].target!);
    // The Explorer shows what is in the workspace; anything else, the system's file manager.
    if (choice === 'Reveal') await vscode.commands.executeCommand(vscode.workspace.getWorkspaceFolder(shownPlace) ? 'revealInExplorer' : 'revealFileInOS', shownPlace);
  }

  /**
   * Review: each staged file opens as a diff against the workspace file at the same path (or as
   * a new file), and Accept / Accept All / Skip decide; nothing is written in the workspace
   * before Accept. Closing the question stops the review (the rest is skipped). The staging
   * folder is removed at the end, whatever happened.
   */
  private async review(targets: string[], pending: Pending, peerId: string): Promise<ReviewOutcome> {
    const outcome: ReviewOutcome = { accepted: [], skipped: [], failed: [] };
    try {
      const files: ReviewFile[] = [];
      for (const landed of targets) {
        for (const staged of await regularFilesUnder(landed)) {
          const [entryName, ...inside] = path.relative(pending.into, staged).split(path.sep);
          // A path of one name says no more than the name: the name alone is matched then.
          const place = pending.places?.get(entryName);
          const placed = place !== undefined && place.length > 1;
          const file = await this.workspacePlace(placed ? [...place, ...inside] : [entryName, ...inside], staged, pending.who, placed);
          if (file && inside.length === 0) file.sendersTime = pending.times?.get(entryName);
          if (file) files.push(file);
          else outcome.failed.push(path.relative(pending.into, staged));
        }
      }
      let acceptAll = false;
      for (const [i, file] of files.entries()) {
        const rel = file.components.join('/');
        let choice: ReviewChoice | undefined = acceptAll ? 'accept' : undefined;
        if (!choice) {
          const opened = await this.openReview(file);
          const counter = files.length > 1 ? ` (${i + 1} of ${files.length})` : '';
          const what = file.replaces ? `replaces your ${shown(rel, 120)}` : `is new: ${shown(rel, 120)}`;
          choice = await this.prompts.review(file, `${pending.who}’s ${shown(path.basename(file.staged))}${counter} ${what}. Accept it?`);
          await opened.close();
          if (choice === 'acceptAll') acceptAll = true;
          if (choice === undefined) {
            outcome.skipped.push(...files.slice(i).map((f) => f.components.join('/')));
            break;
          }
        }
        if (choice === 'skip') {
          outcome.skipped.push(rel);
          continue;
        }
        try {
          if (await this.land(file)) {
            outcome.accepted.push(rel);
            // Recorded as the path Download would take it from (the same-named folder of the peer's share: pair programming is on one project).
            await this.origins?.recordReceived(peerId, `${path.basename(file.base)}/${rel}`, file.target);
          } else outcome.skipped.push(rel);
        } catch (err) {
          const coded = toPeerShareError(err, 'IO_ERROR');
          outcome.failed.push(rel);
          this.log.error(`Could not take ${shown(rel, 200)} into the workspace: ${coded.code} ${coded.message}`);
          void vscode.window.showErrorMessage(`Could not save ${shown(rel, 120)}: ${coded.message}`);
        }
      }
      const parts = [`Took ${outcome.accepted.length ? outcome.accepted.map((r) => shown(r)).slice(0, LISTED_NAMES).join(', ') + (outcome.accepted.length > LISTED_NAMES ? ` and ${outcome.accepted.length - LISTED_NAMES} more` : '') : 'nothing'} from ${pending.who}`];
      if (outcome.skipped.length) parts.push(`skipped ${countOf(outcome.skipped.length, 'file')}`);
      if (outcome.failed.length) parts.push(`${countOf(outcome.failed.length, 'file')} could not be saved`);
      const sentence = `${parts.join('; ')}.`;
      this.log.info(sentence);
      if (files.length) {
        const first = outcome.accepted.length === 1 ? files.find((f) => f.components.join('/') === outcome.accepted[0]) : undefined;
        void vscode.window.showInformationMessage(sentence, ...(first ? ['Open'] : [])).then((c) => c && first && vscode.commands.executeCommand('vscode.open', vscode.Uri.file(first.target)));
      }
      return outcome;
    } finally {
      await fs.rm(pending.into, { recursive: true, force: true }).catch(() => undefined);
      this.reviewFinished.fire(outcome);
    }
  }

  /**
   * Where a staged file belongs in the workspace: the same path below the first workspace folder
   * (the path the sender gave, `placed`, or the entry's name). A single file sent without a path
   * whose name is not at the top of the workspace but is exactly one file's name anywhere in it is
   * compared with that file.
   */
  private async workspacePlace(components: string[], staged: string, peerName: string, placed = false): Promise<ReviewFile | undefined> {
    const folder = firstLocalFolder();
    if (!folder) return undefined;
    const base = folder.uri.fsPath;
    const unsafe = safePlace(components);
    if (unsafe) {
      this.log.warn(`Not reviewed: ${shown(components.join('/'), 200)} cannot be saved here (${unsafe}).`);
      return undefined;
    }
    let place = components;
    if (!placed && components.length === 1 && !(await exists(path.join(base, components[0]))) && !/[*?[\]{}!\\]/.test(components[0])) {
      const found = await vscode.workspace.findFiles(new vscode.RelativePattern(folder, `**/${components[0]}`), '**/{node_modules,.git}/**', 2);
      const candidate = found.length === 1 ? path.relative(base, found[0].fsPath).split(path.sep) : undefined;
      // Only a place the name rules allow (never into .git or .vscode, say).
      if (candidate && !safePlace(candidate)) place = candidate;
    }
    const target = path.join(base, ...place);
    const replaces = await fs.lstat(target).then((st) => st.isFile(), () => false);
    return { staged, target, base, components: place, replaces, peerName };
  }

  /** The staged file beside the workspace file (a diff), or alone when it is new; `close` closes that tab again. */
  private async openReview(file: ReviewFile): Promise<{ close(): Promise<void> }> {
    const staged = vscode.Uri.file(file.staged);
    const name = path.basename(file.target);
    if (file.replaces) await vscode.commands.executeCommand('vscode.diff', staged, vscode.Uri.file(file.target), peerDiffTitle(name, file.peerName), { preview: true });
    else await vscode.commands.executeCommand('vscode.open', staged, { preview: true });
    return {
      close: async () => {
        const tabs = vscode.window.tabGroups.all.flatMap((g) => g.tabs).filter((tab) => {
          const input = tab.input;
          if (input instanceof vscode.TabInputTextDiff) return input.original.fsPath === file.staged;
          return input instanceof vscode.TabInputText && input.uri.fsPath === file.staged;
        });
        if (tabs.length) await vscode.window.tabGroups.close(tabs, true);
      },
    };
  }

  /**
   * Accept: the staged file is copied to a temporary file beside the target (created exclusively,
   * never through a link; its folders made without following one) and takes the final name: a new
   * file never replaces anything that appeared meanwhile, and a file is replaced only with the
   * person's consent (Accept on its diff; asked again if it has unsaved changes).
   */
  private async land(file: ReviewFile): Promise<boolean> {
    const rel = shown(file.components.join('/'), 120);
    const open = vscode.workspace.textDocuments.find((d) => d.uri.scheme === 'file' && d.uri.fsPath === file.target);
    if (open?.isDirty && !(await this.prompts.replace(`${rel} has unsaved changes. Replace them with ${file.peerName}’s version?`))) return false;
    await makeFoldersWithin(file.base, file.components.slice(0, -1));
    const st = await fs.lstat(file.target).catch(() => undefined);
    if (st && !st.isFile()) throw new Error(`${rel} is not a regular file here; it was left alone.`);
    if (st && !file.replaces && !(await this.prompts.replace(`${rel} appeared in the workspace during the review. Replace it with ${file.peerName}’s version?`))) return false;
    const temporary = path.join(path.dirname(file.target), `.${path.basename(file.target).slice(0, 200)}.${randomBytes(8).toString('hex')}.peershare-part`);
    // The sender's time (the staged file has it, to within a rounding), so the record of what came from where matches the sender's listing.
    const stagedTime = (await fs.stat(file.staged)).mtimeMs;
    const sendersTime = file.sendersTime !== undefined && Math.abs(stagedTime - file.sendersTime) < 1 ? file.sendersTime : Math.floor(stagedTime);
    const landing = openTemporary(temporary);
    try {
      await pipeline(createReadStream(file.staged), createWriteStream('', { fd: landing.fd, autoClose: false }));
    } catch (err) {
      closeSync(landing.fd);
      removeName(temporary);
      throw err;
    }
    // The middle of the millisecond: seconds as a double may read back as the millisecond before.
    futimesSync(landing.fd, (sendersTime + 0.5) / 1000, (sendersTime + 0.5) / 1000);
    closeSync(landing.fd);
    try {
      await commit(temporary, file.target, st !== undefined, landing);
    } catch (err) {
      removeName(temporary);
      throw err;
    }
    await fs.rm(file.staged, { force: true });
    return true;
  }

  // ---- snippets

  private snippetUri(incoming: IncomingSnippet, side: 'theirs' | 'mine'): vscode.Uri {
    // The file's own name, so the editor picks its language; a fresh id, so two snippets never share a document.
    const id = randomBytes(6).toString('hex');
    return vscode.Uri.from({ scheme: SNIPPET_SCHEME, path: `/${id}/${side}/${path.posix.basename(incoming.snippet.path)}` });
  }

  private keep(uri: vscode.Uri, text: string): void {
    this.snippets.set(uri.toString(), text);
    while (this.snippets.size > KEPT_SNIPPETS * 2) this.snippets.delete(this.snippets.keys().next().value!);
  }

  /** Open: an untitled editor in the snippet's language (when this editor knows it); nothing written. */
  private async openSnippet(incoming: IncomingSnippet): Promise<void> {
    const known = await vscode.languages.getLanguages();
    const language = known.includes(incoming.snippet.language) ? incoming.snippet.language : 'plaintext';
    const doc = await vscode.workspace.openTextDocument({ content: incoming.snippet.text, language });
    await vscode.window.showTextDocument(doc);
  }

  /** Compare with Mine: the snippet against the same lines of the local file at its path, both read-only. */
  private async compareSnippet(incoming: IncomingSnippet, who: string): Promise<void> {
    const { snippet } = incoming;
    const local = await this.localFileFor(snippet.path);
    if (!local) {
      void vscode.window.showInformationMessage(`There is no ${shown(snippet.path, 120)} in this workspace to compare with.`);
      return;
    }
    const doc = await vscode.workspace.openTextDocument(vscode.Uri.file(local));
    const last = Math.min(snippet.endLine, doc.lineCount);
    const mine = snippet.startLine > doc.lineCount ? '' : doc.getText(new vscode.Range(snippet.startLine - 1, 0, last, 0));
    const theirs = this.snippetUri(incoming, 'theirs');
    const ours = this.snippetUri(incoming, 'mine');
    this.keep(theirs, snippet.text);
    this.keep(ours, mine);
    const lines = snippet.startLine === snippet.endLine ? `line ${snippet.startLine}` : `lines ${snippet.startLine}-${snippet.endLine}`;
    await vscode.commands.executeCommand('vscode.diff', theirs, ours, peerDiffTitle(`${shown(path.posix.basename(snippet.path))} ${lines}`, who));
  }

  /** The workspace file at a snippet's path (a checked relative path): in the first folder that has it. */
  private async localFileFor(relative: string): Promise<string | undefined> {
    let components: string[];
    try {
      components = inspectReceivedName(relative).components;
    } catch {
      return undefined;
    }
    for (const folder of (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file')) {
      const candidate = path.join(folder.uri.fsPath, ...components);
      if (await fs.stat(candidate).then((st) => st.isFile(), () => false)) return candidate;
    }
    return undefined;
  }

  // ---- parts

  private showProgress(offerId: string): Running {
    let report: (p: ReceiveProgress) => void = () => undefined;
    let end!: () => void;
    const ended = new Promise<void>((resolve) => (end = resolve));
    let shownBytes = 0;
    let lastUpdate = 0;
    void vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: 'Receiving', cancellable: true }, (progress, token) => {
      token.onCancellationRequested(() => void this.peers.node().then((node) => node.send.cancelIncoming(offerId)));
      report = (p) => {
        const now = Date.now();
        if (now - lastUpdate < 100 && p.bytes !== p.totalBytes) return;
        lastUpdate = now;
        const increment = p.totalBytes ? ((p.bytes - shownBytes) / p.totalBytes) * 100 : undefined;
        shownBytes = p.bytes;
        progress.report({ increment, message: `${shown(p.entry)}: ${formatBytes(p.bytes)} of ${formatBytes(p.totalBytes)}` });
      };
      return ended;
    });
    return { report: (p) => report(p), end };
  }

  /** Once per workspace: offer to add the inbox to the .gitignore of the workspace folder it is in. */
  private async offerGitignore(inboxForPeer: string): Promise<void> {
    const folder = firstLocalFolder();
    const inbox = inboxRoot(readSettings());
    if (!folder || !inbox || this.memento.get('peershare.inboxGitignoreOffered')) return;
    const rel = path.relative(folder.uri.fsPath, inbox);
    if (!inboxForPeer.startsWith(inbox) || rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) return;
    const gitignore = path.join(folder.uri.fsPath, '.gitignore');
    const line = `/${rel.split(path.sep).join('/')}/`;
    const st = await fs.lstat(gitignore).catch(() => undefined);
    if (st && !st.isFile()) return;
    const text = st ? await fs.readFile(gitignore, 'utf8') : '';
    if (text.split(/\r?\n/).some((l) => [line, line.slice(1), line.slice(0, -1), line.slice(1, -1)].includes(l.trim()))) return;
    await this.memento.update('peershare.inboxGitignoreOffered', true);
    if (!(await this.prompts.gitignore(`Add ${line} to .gitignore, so files peers send stay out of git?`))) return;
    await fs.appendFile(gitignore, `${text && !text.endsWith('\n') ? '\n' : ''}${line}\n`);
  }

  private async removeStaleStaging(): Promise<void> {
    const names = await fs.readdir(this.stagingRoot).catch(() => [] as string[]);
    for (const name of names) {
      const full = path.join(this.stagingRoot, name);
      const st = await fs.lstat(full).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > STALE_STAGING_MS) await fs.rm(full, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  private key(peerId: string, offerId: string): string {
    return `${peerId}/${offerId}`;
  }

  /** The name this installation gave the peer (the trust store's), else the one it gave itself. */
  private localName(peer: { id: string; name: string }): string {
    try {
      return this.peers.trustedName(peer.id) ?? peer.name;
    } catch {
      return peer.name;
    }
  }

  /** "Ann (FLRK-XVPC-…)": the name, escaped and bounded, beside what the certificate proves. */
  private async who(peer: { id: string; name: string }): Promise<string> {
    const name = shown(this.localName(peer), 40);
    return `${name || 'A peer'} (${shortPeerId(peer.id)})`;
  }

  private describeOffer(offer: IncomingOffer, who: string): string {
    const names = offer.entries.slice(0, LISTED_NAMES).map((e) => `${e.path ? shown(e.path, 80) : shown(e.name, 40)}${e.type === 'dir' ? '/' : ''}`);
    const more = offer.entries.length > LISTED_NAMES ? ` and ${offer.entries.length - LISTED_NAMES} more` : '';
    const unsafe = offer.entries.filter((e) => e.unsafeHere).length;
    const warning = unsafe ? ` (${countOf(unsafe, 'name')} not safe here: ${unsafe === 1 ? 'it' : 'they'} would not be saved)` : '';
    const note = offer.note ? `: “${shown(offer.note, 200)}”` : '';
    return `${who} offers ${names.join(', ')}${more} (${formatBytes(offer.totalBytes)})${note}${warning}`;
  }

  private async pickPeer(): Promise<{ id: string; name: string } | undefined> {
    const list = await this.peers.list();
    const pick = await vscode.window.showQuickPick(
      list.map((peer) => ({ label: shown(peer.name || shortPeerId(peer.id)), description: shortPeerId(peer.id), peer })),
      { title: 'Choose a peer' },
    );
    return pick?.peer;
  }

  /** Deactivation: no more questions; offers being received are cancelled (what arrived of them is removed). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const offers = [...this.running.keys()];
    for (const r of this.running.values()) r.end();
    this.running.clear();
    // The node is open when anything is being received.
    if (offers.length) await this.peers.node().then((node) => offers.forEach((id) => node.send.cancelIncoming(id)), () => undefined);
    for (const p of this.pending.values()) if (p.how === 'review') await fs.rm(p.into, { recursive: true, force: true }).catch(() => undefined);
  }

  dispose(): void {
    void this.close();
    for (const d of this.disposables) d.dispose();
  }
}

/** Why a workspace path may not take a received file (the name rules), or undefined when it may. */
function safePlace(components: string[]): string | undefined {
  try {
    return inspectReceivedName(components.join('/')).unsafeHere?.why;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Regular files at or below `p` (a received folder holds no links; anything else is left out). */
async function regularFilesUnder(p: string): Promise<string[]> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st) return [];
  if (st.isFile()) return [p];
  if (!st.isDirectory()) return [];
  const found: string[] = [];
  for (const entry of await fs.readdir(p, { withFileTypes: true })) {
    found.push(...(await regularFilesUnder(path.join(p, entry.name))));
  }
  return found.sort();
}

function isInside(base: string, target: string): boolean {
  const inside = path.relative(base, target);
  return inside !== '' && inside !== '..' && !inside.startsWith(`..${path.sep}`) && !path.isAbsolute(inside);
}

/** The first of `components` below `base` that exists and is not a real folder (a link, a file); undefined when none. */
function notAFolderOnTheWay(base: string, components: string[]): string | undefined {
  let at = base;
  for (const component of components) {
    at = path.join(at, component);
    let st: ReturnType<typeof lstatSync>;
    try {
      st = lstatSync(at);
    } catch {
      return undefined; // from here on, nothing exists yet: the folders are made when files arrive
    }
    if (!st.isDirectory()) return at;
  }
  return undefined;
}
