import * as path from 'node:path';
import * as vscode from 'vscode';
import {
  MAX_NOTE_CHARS,
  PeerShareError,
  inspectReceivedName,
  isUnreachable,
  sanitizeForDisplay,
  shortPeerId,
  toPeerShareError,
  type SendOptions,
  type SendResult,
  type SendSession,
  type Snippet,
  type TrustedPeer,
} from '../core';
import { countOf, formatBytes } from '../core/format';
import type { CommandRegistrar } from './commands';
import type { Peers } from './peers';
import type { PeerNode } from './tree';

/**
 * Sending to a peer (issue 12): files and folders from the Explorer, an editor's tab or its
 * context menu, the Peers view or the palette, and a selection as a snippet. The core offers,
 * serves what the receiver accepts and reports per entry; this layer picks the peer, shows
 * progress with Cancel, and says how it went.
 */

/** What the commands take after their menu arguments: a peer and a note (given, no question is asked), for tests and other commands. */
export interface SendArgs {
  peerId?: string;
  note?: string;
}

/** Languages ids the protocol takes (spec 13.2); another id is sent as none. */
const LANGUAGE_ID = /^[A-Za-z0-9_+#.-]{0,64}$/;
/** Names listed in a result; the rest are counted. */
const LISTED_NAMES = 3;

/** Menus pass their own arguments (a URI, editor context); only an object with these fields is taken as SendArgs. */
function sendArgs(value: unknown): SendArgs {
  if (typeof value !== 'object' || value === null || value instanceof vscode.Uri) return {};
  const { peerId, note } = value as Record<string, unknown>;
  return { ...(typeof peerId === 'string' ? { peerId } : {}), ...(typeof note === 'string' ? { note } : {}) };
}

function shown(text: string, max = 60): string {
  const s = sanitizeForDisplay(text);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

function listed(names: string[]): string {
  const head = names.slice(0, LISTED_NAMES).map((n) => shown(n, 40));
  if (names.length <= LISTED_NAMES) return head.length > 1 ? `${head.slice(0, -1).join(', ')} and ${head[head.length - 1]}` : head.join('');
  return `${head.join(', ')} and ${names.length - LISTED_NAMES} more`;
}

export class Sending {
  constructor(
    private readonly peers: Peers,
    private readonly log: vscode.LogOutputChannel,
  ) {}

  register(command: CommandRegistrar): void {
    // Explorer (clicked, all selected), an editor tab or the editor itself (its resource), or the palette (a file dialog).
    command('peershare.sendToPeer', async (clicked?: unknown, selected?: unknown, args?: unknown) => {
      const many = Array.isArray(selected) ? selected.filter((u): u is vscode.Uri => u instanceof vscode.Uri) : [];
      const uris = many.length ? many : clicked instanceof vscode.Uri ? [clicked] : await this.pickFiles();
      if (!uris?.length) return undefined;
      return this.sendFiles(uris, sendArgs(args));
    });
    // The Peers view: a peer's *Send Files...*.
    command('peershare.sendFiles', async (arg?: unknown, uris?: unknown, args?: unknown) => {
      const peerId = (arg as PeerNode | undefined)?.kind === 'peer' ? (arg as PeerNode).peer.id : sendArgs(args).peerId;
      const given = Array.isArray(uris) ? uris.filter((u): u is vscode.Uri => u instanceof vscode.Uri) : [];
      const files = given.length ? given : await this.pickFiles();
      if (!files?.length) return undefined;
      return this.sendFiles(files, { ...sendArgs(args), peerId });
    });
    command('peershare.sendSelection', async (...menuArgs: unknown[]) => {
      // From a menu the first argument is the editor's URI; from a test or another command, SendArgs.
      const args = sendArgs(menuArgs.find((a) => !(a instanceof vscode.Uri)));
      const editor = vscode.window.activeTextEditor;
      if (!editor) {
        void vscode.window.showInformationMessage('Open a file and select the lines to send.');
        return undefined;
      }
      return this.sendSelection(editor, args);
    });
  }

  /** Offers files and folders to a peer (asked for when not given) and reports how it went. */
  async sendFiles(uris: vscode.Uri[], args: SendArgs = {}): Promise<SendResult | undefined> {
    const local = uris.filter((u) => u.scheme === 'file');
    if (local.length < uris.length) {
      void vscode.window.showWarningMessage('Only files on this machine can be sent; the others were left out.');
      if (!local.length) return undefined;
    }
    const paths = [...new Set(local.map((u) => u.fsPath))];
    const peer = await this.choosePeer(args.peerId, `Send ${paths.length === 1 ? path.basename(paths[0]) : countOf(paths.length, 'item')} to…`);
    if (!peer) return undefined;
    const note = args.note !== undefined ? args.note : await this.askNote(peer);
    if (note === null) return undefined;
    const name = shown(peer.name || shortPeerId(peer.id));
    const what = paths.length === 1 ? shown(path.basename(paths[0])) : countOf(paths.length, 'item');
    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `Sending ${what} to ${name}`, cancellable: true },
      async (progress, token) => {
        const abort = new AbortController();
        const cancel = token.onCancellationRequested(() => abort.abort());
        progress.report({ message: `waiting for ${name} to answer…` });
        let reported = 0;
        let lastUpdate = 0;
        const options: SendOptions = {
          ...(note ? { note } : {}),
          signal: abort.signal,
          // The receiver reviews each file against the same path in its workspace.
          placesFrom: (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file').map((f) => f.uri.fsPath),
          onAnswer: (accepted) => progress.report({ message: `${name} accepted ${accepted.filter(Boolean).length} of ${accepted.length}` }),
          onProgress: (p) => {
            const now = Date.now();
            if (now - lastUpdate < 100 && p.bytes !== p.totalBytes) return;
            lastUpdate = now;
            const increment = p.totalBytes ? ((p.bytes - reported) / p.totalBytes) * 100 : undefined;
            reported = p.bytes;
            progress.report({ increment, message: `${formatBytes(p.bytes)} of ${formatBytes(p.totalBytes)}` });
          },
        };
        try {
          return await this.withSession(peer, abort.signal, (session) => session.offerFiles(paths, options));
        } finally {
          cancel.dispose();
        }
      },
    ).then(undefined, (err: unknown) => this.failed(err, what, name));
    if (result) this.report(result, name);
    return result;
  }

  /** The selection (or, with none, the cursor's line) as a snippet: text, workspace-relative path, lines, language. */
  async sendSelection(editor: vscode.TextEditor, args: SendArgs = {}): Promise<SendResult | undefined> {
    const { document, selection } = editor;
    const range = selection.isEmpty ? document.lineAt(selection.active.line).range : selection;
    // A selection that ends at the start of a line does not take that line.
    const endLine = range.end.character === 0 && range.end.line > range.start.line ? range.end.line - 1 : range.end.line;
    const text = document.getText(range);
    const snippet: Snippet = {
      text,
      path: snippetPath(document),
      startLine: range.start.line + 1,
      endLine: endLine + 1,
      language: LANGUAGE_ID.test(document.languageId) ? document.languageId : '',
    };
    const max = (await this.peers.node()).limits.maxSnippetBytes;
    if (Buffer.byteLength(text, 'utf8') > max) {
      void vscode.window.showWarningMessage(`A snippet may have at most ${formatBytes(max)}; select fewer lines, or send the file.`);
      return undefined;
    }
    const peer = await this.choosePeer(args.peerId, `Send lines ${snippet.startLine}-${snippet.endLine} of ${snippet.path} to…`);
    if (!peer) return undefined;
    const note = args.note !== undefined ? args.note : await this.askNote(peer);
    if (note === null) return undefined;
    const name = shown(peer.name || shortPeerId(peer.id));
    const lines = snippet.startLine === snippet.endLine ? `line ${snippet.startLine}` : `lines ${snippet.startLine}-${snippet.endLine}`;
    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `Sending ${lines} of ${shown(snippet.path)} to ${name}`, cancellable: true },
      async (_progress, token) => {
        const abort = new AbortController();
        const cancel = token.onCancellationRequested(() => abort.abort());
        try {
          return await this.withSession(peer, abort.signal, (session) => session.offerSnippet(snippet, { ...(note ? { note } : {}), signal: abort.signal }));
        } finally {
          cancel.dispose();
        }
      },
    ).then(undefined, (err: unknown) => this.failed(err, lines, name));
    if (!result) return undefined;
    if (result.refused) void vscode.window.showWarningMessage(`${name} takes nothing from you: they set PeerShare to refuse what you send, or cannot receive.`);
    else void vscode.window.showInformationMessage(`Sent ${lines} of ${shown(snippet.path)} to ${name}.`);
    this.log.info(`Snippet ${snippet.path}:${snippet.startLine}-${snippet.endLine} to ${peer.id}: ${result.refused ? 'refused' : 'shown'}`);
    return result;
  }

  /**
   * Runs an offer on a connection with the peer that takes offers: one open now (theirs to us
   * while we share, or ours to their share), else a new one to wherever the peer shares.
   */
  private async withSession(peer: TrustedPeer, signal: AbortSignal, offer: (session: SendSession) => Promise<SendResult>): Promise<SendResult> {
    const { node } = await this.peers.load();
    const open = node.send.sessionFor(peer.id);
    if (open) return offer(open);
    if (!peer.addresses.length && !peer.dht) {
      throw new PeerShareError('CONNECTION_CLOSED', `${shown(peer.name || shortPeerId(peer.id))} is not connected and shares nothing we could reach: ask them to start sharing, or to connect to you while you share.`);
    }
    return this.peers.transfer(peer.id, signal, (conn) => {
      if (!conn.sendSession?.peerTakesOffers) {
        throw new PeerShareError('VERSION_UNSUPPORTED', `${shown(conn.peerName) || 'The peer'} runs a PeerShare that cannot receive files; ask them to update PeerShare.`);
      }
      return offer(conn.sendSession);
    });
  }

  /** A quick pick of trusted peers, those connected now first. */
  private async choosePeer(peerId: string | undefined, title: string): Promise<TrustedPeer | undefined> {
    const list = await this.peers.list();
    if (peerId !== undefined) {
      const peer = list.find((p) => p.id === peerId);
      if (!peer) throw new PeerShareError('UNKNOWN_PEER', 'That peer is no longer trusted.');
      return peer;
    }
    if (list.length === 0) {
      void vscode.window.showInformationMessage('No peers yet. Pair with one (an invite, or Nearby) before sending.');
      return undefined;
    }
    const { node } = await this.peers.load();
    const rank = (p: TrustedPeer): number => (node.send.sessionFor(p.id) ? 0 : this.peers.state(p.id) === 'online' ? 1 : 2);
    const items = [...list]
      .sort((a, b) => rank(a) - rank(b))
      .map((peer) => ({
        label: `${rank(peer) < 2 ? '$(circle-filled)' : '$(circle-outline)'} ${shown(peer.name || shortPeerId(peer.id))}`,
        description: rank(peer) === 0 ? 'connected' : rank(peer) === 1 ? 'online' : peer.addresses.length ? 'not connected: PeerShare will try to reach them' : 'not connected',
        detail: shortPeerId(peer.id),
        peer,
      }));
    const pick = await vscode.window.showQuickPick(items, { title, placeHolder: 'Choose a peer; they are asked before anything is sent' });
    return pick?.peer;
  }

  /** An optional note shown with the offer; null when the person pressed Escape (nothing is sent). */
  private async askNote(peer: TrustedPeer): Promise<string | null> {
    const note = await vscode.window.showInputBox({
      title: `A note for ${shown(peer.name || shortPeerId(peer.id))} (optional)`,
      prompt: 'Shown with the offer. Press Enter to send, Escape to cancel.',
      validateInput: (v) => (v.length > MAX_NOTE_CHARS ? `At most ${MAX_NOTE_CHARS} characters.` : undefined),
    });
    return note === undefined ? null : note.trim();
  }

  private async pickFiles(): Promise<vscode.Uri[] | undefined> {
    return vscode.window.showOpenDialog({ canSelectFiles: true, canSelectFolders: true, canSelectMany: true, openLabel: 'Send', title: 'Send to a peer' });
  }

  private failed(err: unknown, what: string, name: string): undefined {
    const coded = toPeerShareError(err);
    if (coded.code === 'CANCELLED') {
      this.log.info(`Sending ${what} to ${name} cancelled`);
      return undefined;
    }
    const why = isUnreachable(coded) ? `${name} is not reachable right now.` : coded.message;
    this.log.error(`Sending ${what} to ${name} failed: ${coded.code} ${coded.message}${coded.detail ? ` (${coded.detail})` : ''}`);
    void vscode.window.showErrorMessage(`Could not send ${what}. ${why}`, 'Show Log').then((c) => c && this.log.show());
    return undefined;
  }

  /** The result in one notification: received, declined, failed, each named when the answer was mixed. */
  private report(result: SendResult, name: string): void {
    const received = result.entries.filter((e) => e.status === 'received').map((e) => e.name);
    const declined = result.entries.filter((e) => e.status === 'declined').map((e) => e.name);
    const failed = result.entries.filter((e) => e.status === 'failed');
    for (const e of failed) this.log.warn(`${name} could not receive ${shown(e.name, 200)}: ${e.code ?? ''} ${shown(e.message ?? '', 300)}`);
    if (result.refused) {
      void vscode.window.showWarningMessage(`${name} takes no files from you: they set PeerShare to refuse what you send, or cannot receive.`);
      return;
    }
    const parts: string[] = [];
    if (received.length) parts.push(`${name} received ${listed(received)} (${formatBytes(result.bytes)}, verified)`);
    if (declined.length) parts.push(`${received.length ? 'declined' : `${name} declined`} ${listed(declined)}`);
    if (failed.length) parts.push(`${parts.length ? '' : `${name} `}could not receive ${listed(failed.map((e) => e.name))}: ${shown(failed[0].message ?? 'no reason given', 160)}`);
    const sentence = `${parts.join('; ')}.`;
    this.log.info(sentence);
    const show = failed.length ? vscode.window.showWarningMessage : vscode.window.showInformationMessage;
    void show(sentence);
  }
}

/**
 * A snippet's path as the receiver needs it: relative to its workspace folder, in the form the
 * protocol takes (a checked relative path); else the file's own name.
 */
export function snippetPath(document: vscode.TextDocument): string {
  const relative = document.uri.scheme === 'file' ? vscode.workspace.asRelativePath(document.uri, false) : '';
  const name = path.basename(document.uri.path) || 'snippet.txt';
  for (const candidate of [relative.split(path.sep).join('/'), name]) {
    if (!candidate || path.isAbsolute(candidate)) continue;
    try {
      inspectReceivedName(candidate);
      return candidate;
    } catch {
      // another form next
    }
  }
  return 'snippet.txt';
}
