import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { sanitizeForDisplay, shortPeerId, toPeerShareError } from './core';
import { commandRegistrar } from './vscode/commands';
import { Downloads, peerDiffTitle } from './vscode/downloads';
import { PeerFileSystem } from './vscode/fileSystem';
import { Follows } from './vscode/follow';
import { ChangedMarks } from './vscode/marks';
import { Origins } from './vscode/origins';
import { Peers, baseName, peerFileUri } from './vscode/peers';
import { Receiving } from './vscode/receive';
import { Sending } from './vscode/send';
import { localPathFor, readSettings } from './vscode/settings';
import { Sharing } from './vscode/sharing';
import { PeersTree, type EntryNode, type Node, type PeerNode } from './vscode/tree';
import { Updates } from './vscode/updates';

const moduleEvaluatedAt = performance.now();

/** What activate returns: the extension's parts, for its own integration tests. */
export interface PeerShareApi {
  /** Milliseconds from the bundle starting to load to the end of activate(). */
  activationMs: number;
  /** Of which: evaluating the bundle, and running activate(). */
  activationParts: { loadMs: number; activateMs: number };
  peers: Peers;
  sharing: Sharing;
  tree: PeersTree;
  downloads: Downloads;
  receiving: Receiving;
  sending: Sending;
  origins: Origins;
  marks: ChangedMarks;
  updates: Updates;
  follows: Follows;
  /** The extension's own deactivate(), so the editor tests can check what it leaves behind. */
  deactivate: () => Promise<void>;
}

/** What deactivate() must wind down; set by activate(). */
let running: { subscriptions: vscode.Disposable[]; downloads: Downloads; sharing: Sharing; receiving: Receiving; updates: Updates; follows: Follows; origins: Origins } | undefined;

/**
 * Wiring only: the parts live in src/vscode/, the peer itself in src/core/. Nothing listens on
 * the network until the user starts sharing (or asked for it on startup).
 */
export function activate(context: vscode.ExtensionContext): PeerShareApi {
  const activateStart = performance.now();
  const log = vscode.window.createOutputChannel('PeerShare', { log: true });
  const peers = new Peers(path.join(context.globalStorageUri.fsPath, 'identity'), log);
  const sharing = new Sharing(peers, log, context.globalState);
  const tree = new PeersTree(peers, sharing);
  const storage = (context.storageUri ?? context.globalStorageUri).fsPath;
  // What came from where: in the extension's storage, never in the workspace.
  const origins = new Origins(path.join(storage, 'origins.json'), log);
  const downloads = new Downloads(peers, log, origins);
  // Review stages received files here, outside the workspace, until they are accepted.
  const receiving = new Receiving(peers, log, path.join(storage, 'incoming'), context.workspaceState, origins);
  const updates = new Updates(peers, origins, log);
  const follows = new Follows(peers, origins, log, context.workspaceState);
  const marks = new ChangedMarks();
  tree.showLocalCopies({ origins, marks, isFollowed: (peerId, remotePath) => follows.isFollowed(peerId, remotePath) });
  peers.receivePolicy = receiving;
  const sending = new Sending(peers, log);
  const view = vscode.window.createTreeView('peershare.peers', { treeDataProvider: tree, showCollapseAll: true });
  context.subscriptions.push(log, peers, sharing, tree, view, downloads, receiving, updates, follows, marks, origins);
  context.subscriptions.push(sharing.onDidChange(() => tree.refresh()), follows.onDidChange(() => tree.refresh()));
  context.subscriptions.push(vscode.window.registerFileDecorationProvider(marks));
  // A folder closed in the view is no longer watched for changes.
  context.subscriptions.push(view.onDidCollapseElement((e) => tree.collapsed(e.element)));
  // Look for nearby peers only while someone looks at the view (or while sharing).
  context.subscriptions.push(
    view.onDidChangeVisibility((e) => {
      if (e.visible) void peers.discovery();
    }),
  );
  context.subscriptions.push(
    vscode.workspace.registerFileSystemProvider('peershare', new PeerFileSystem(peers), { isReadonly: true, isCaseSensitive: true }),
  );

  const command = commandRegistrar(context, log);
  receiving.register(command);
  sending.register(command);
  updates.register(command);
  follows.register(command);
  follows.resume();

  /**
   * A row's node, checked. VS Code passes the node of the row a command was run on; but when the
   * row left the view before the command ran (a refresh, a second click on a closing menu), it
   * passes only the row's handle, which names nothing we can act on.
   */
  function rowNode<K extends Node['kind']>(arg: unknown, kind: K): Extract<Node, { kind: K }> | undefined {
    if (typeof arg === 'object' && arg !== null && (arg as { kind?: unknown }).kind === kind) return arg as Extract<Node, { kind: K }>;
    if (arg !== undefined) log.warn(`Ignored a command for a row that is no longer in the Peers view (${kind}).`);
    return undefined;
  }
  /** The file or folder a command was run on, or, from the Command Palette, one the person picks. */
  async function entryOrPick(arg: unknown, type?: 'file'): Promise<EntryNode | undefined> {
    return arg === undefined ? pickRemote(peers, type) : rowNode(arg, 'entry');
  }

  command('peershare.startSharing', async () => {
    await sharing.start();
    const reach = sharing.internetKey ? ' and over the internet (HyperDHT)' : '';
    void vscode.window
      .showInformationMessage(
        `Sharing ${vscode.workspace.workspaceFolders?.length === 1 ? 'this folder' : 'these folders'} read-only on port ${sharing.port}${reach}. Send an invite to let someone in.`,
        'Copy Invite',
      )
      .then((choice) => choice && vscode.commands.executeCommand('peershare.copyInvite'));
  });
  command('peershare.stopSharing', () => sharing.stop());
  command('peershare.copyInvite', async () => {
    if (!sharing.isSharing) await sharing.start();
    const invite = sharing.createInvite();
    await vscode.env.clipboard.writeText(invite);
    void vscode.window.showInformationMessage('Invite copied. It lets one person pair with you within the next hour.');
    return invite;
  });
  command('peershare.connect', async (invite?: string) => {
    const text =
      typeof invite === 'string'
        ? invite
        : await vscode.window.showInputBox({
            title: 'PeerShare: Connect to Peer',
            prompt: 'Paste the invite your partner copied (or host:port of a peer you already trust)',
            placeHolder: 'peershare://invite?… or vscode://peershare.peershare/invite?…',
            ignoreFocusOut: true,
          });
    if (!text) return undefined;
    const peer = await vscode.window.withProgress({ location: { viewId: 'peershare.peers' }, title: 'Connecting…' }, () => peers.connect(text));
    void vscode.window.showInformationMessage(`Connected to ${sanitizeForDisplay(peer.name || shortPeerId(peer.id))}.`);
    return peer;
  });
  command('peershare.requestAccess', async (arg?: unknown) => {
    const node = rowNode(arg, 'nearby');
    if (!node) return undefined;
    const name = sanitizeForDisplay(node.peer.name || shortPeerId(node.peer.id));
    const outcome = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `Asking ${name} to let you connect` },
      (progress) => peers.requestAccess(node.peer, (code) => progress.report({ message: `verification code ${code}: check that ${name} sees the same` })),
    );
    void vscode.window.showInformationMessage(
      outcome === 'always' ? `${name} allowed you; they are now a trusted peer.` : `${name} allowed you once, for this connection.`,
    );
    return outcome;
  });
  command('peershare.renamePeer', async (arg?: unknown) => {
    const row = rowNode(arg, 'peer');
    const peer = row ? row.peer : arg === undefined ? await pickPeer(peers) : undefined;
    if (!peer) return;
    const name = await vscode.window.showInputBox({
      title: 'Rename Peer',
      prompt: `A name for ${peer.id}; only you see it.`,
      value: peer.name,
      validateInput: (v) => (v.trim().length === 0 || v.length > 100 ? 'Between 1 and 100 characters.' : undefined),
    });
    if (name) await peers.rename(peer.id, name.trim());
  });
  command('peershare.forgetPeer', async (arg?: unknown) => {
    const row = rowNode(arg, 'peer');
    const peer = row ? row.peer : arg === undefined ? await pickPeer(peers) : undefined;
    if (!peer) return;
    const name = sanitizeForDisplay(peer.name || shortPeerId(peer.id));
    const ok = await vscode.window.showWarningMessage(`Forget ${name}? They will need a new invite to connect again.`, { modal: true }, 'Forget');
    if (ok !== 'Forget') return;
    await peers.forget(peer.id);
    sharing.disconnect(peer.id);
  });
  command('peershare.refresh', (node?: Node) => tree.refresh(node));
  command('peershare.download', async (arg?: unknown) => {
    const target = await entryOrPick(arg);
    return target ? downloads.download(target) : undefined;
  });
  command('peershare.downloadTo', async (arg?: unknown) => {
    const target = await entryOrPick(arg);
    if (!target) return undefined;
    const folder = await vscode.window.showOpenDialog({ canSelectFolders: true, canSelectFiles: false, openLabel: 'Download Here', title: `Download ${baseName(target.remotePath)} to…` });
    return folder?.[0] ? downloads.download(target, folder[0].fsPath) : undefined;
  });
  command('peershare.openPreview', async (arg?: unknown) => {
    const target = await entryOrPick(arg, 'file');
    if (!target) return;
    const doc = await vscode.workspace.openTextDocument(peerFileUri(target.peerId, target.remotePath));
    await vscode.window.showTextDocument(doc, { preview: true });
  });
  command('peershare.compareWithLocal', async (arg?: unknown) => {
    const target = await entryOrPick(arg, 'file');
    if (!target) return;
    const localPath = localPathFor(target.remotePath, readSettings());
    const local = localPath && (await fs.stat(localPath).then((st) => st.isFile(), () => false)) ? vscode.Uri.file(localPath) : undefined;
    if (!local) {
      void vscode.window.showInformationMessage(`There is no local ${baseName(target.remotePath)} to compare with.`);
      return;
    }
    await vscode.commands.executeCommand('vscode.diff', peerFileUri(target.peerId, target.remotePath), local, peerDiffTitle(baseName(target.remotePath), sanitizeForDisplay(target.peerName || 'peer')));
  });
  command('peershare.showLog', () => log.show());
  command('peershare.showPeerId', async () => {
    const { identity } = await peers.load();
    log.info(`This installation's peer ID: ${identity.peerId}`);
    const copy = await vscode.window.showInformationMessage(
      `Your PeerShare ID: ${identity.peerId}. When someone asks to connect, you both see the same six-digit verification code.`,
      'Copy',
    );
    if (copy) await vscode.env.clipboard.writeText(identity.peerId);
  });
  command('peershare.sharingActions', async () => {
    const items = sharing.isSharing
      ? [
          { label: '$(link) Copy Invite', id: 'peershare.copyInvite' },
          { label: '$(debug-stop) Stop Sharing', id: 'peershare.stopSharing' },
        ]
      : [{ label: '$(broadcast) Start Sharing', id: 'peershare.startSharing' }];
    items.push({ label: '$(plug) Connect to Peer…', id: 'peershare.connect' }, { label: '$(output) Show Log', id: 'peershare.showLog' });
    const pick = await vscode.window.showQuickPick(items, { title: 'PeerShare' });
    if (pick) await vscode.commands.executeCommand(pick.id);
  });

  context.subscriptions.push(
    vscode.window.registerUriHandler({
      handleUri: async (uri) => {
        if (uri.path !== '/invite') return;
        const invite = `peershare://invite?${uri.query}`;
        const ok = await vscode.window.showInformationMessage('Connect to the PeerShare peer in this invite?', { modal: true, detail: 'You will be able to browse and download the files they share.' }, 'Connect');
        if (ok) await vscode.commands.executeCommand('peershare.connect', invite);
      },
    }),
  );

  if (readSettings().shareOnStartup && vscode.workspace.isTrusted) {
    sharing.start().catch((err) => log.error(`Could not start sharing on startup: ${toPeerShareError(err).message}`));
  }
  const loadStart = (globalThis as { __peershareLoadStart?: number }).__peershareLoadStart ?? activateStart;
  const activateEnd = performance.now();
  const activationMs = activateEnd - loadStart;
  const activationParts = { loadMs: moduleEvaluatedAt - loadStart, activateMs: activateEnd - activateStart };
  log.info(`Activated in ${activationMs.toFixed(1)} ms (bundle ${activationParts.loadMs.toFixed(1)} ms, activate ${activationParts.activateMs.toFixed(1)} ms)`);
  running = { subscriptions: context.subscriptions, downloads, sharing, receiving, updates, follows, origins };
  return { activationMs, activationParts, peers, sharing, tree, downloads, receiving, sending, origins, marks, updates, follows, deactivate };
}

/**
 * VS Code waits for this before it disposes the subscriptions: running downloads are cancelled and
 * their temporary files removed, and the server and every connection closed, so nothing (socket,
 * timer or file) outlives the extension. Disposing the subscriptions here too is harmless: each
 * disposable may be disposed twice.
 */
export async function deactivate(): Promise<void> {
  const parts = running;
  running = undefined;
  if (!parts) return;
  await parts.downloads.close();
  await parts.receiving.close();
  await parts.updates.close();
  await parts.follows.close();
  await parts.origins.flush();
  await parts.sharing.stop();
  for (const disposable of parts.subscriptions.splice(0)) {
    try {
      disposable.dispose();
    } catch {
      // one failing disposable must not keep the others alive
    }
  }
}

/** The local file with the same path as a peer's file: same-named workspace folder first. */
async function pickPeer(peers: Peers): Promise<PeerNode['peer'] | undefined> {
  const list = await peers.list();
  if (list.length === 0) {
    void vscode.window.showInformationMessage('No peers yet. Connect to one with an invite first.');
    return undefined;
  }
  const pick = await vscode.window.showQuickPick(
    list.map((peer) => ({ label: sanitizeForDisplay(peer.name || shortPeerId(peer.id)), description: peer.addresses[0] ?? (peer.dht ? 'over the internet (HyperDHT)' : 'not sharing'), peer })),
    { title: 'Choose a peer' },
  );
  return pick?.peer;
}

/** Browses a peer's files in a quick pick, a level at a time, for commands run from the palette. */
async function pickRemote(peers: Peers, only?: 'file'): Promise<EntryNode | undefined> {
  const peer = await pickPeer(peers);
  if (!peer) return undefined;
  let remotePath = '';
  for (;;) {
    const entries = await peers.browse(peer.id, (conn) => conn.list(remotePath));
    entries.sort((a, b) => (a.type === b.type ? a.name.localeCompare(b.name) : a.type === 'dir' ? -1 : 1));
    type Item = vscode.QuickPickItem & { action: 'open' | 'take' | 'up'; entry?: (typeof entries)[number] };
    const items: Item[] = [];
    if (remotePath && only !== 'file') items.push({ label: '$(cloud-download) Download this folder', action: 'take' });
    if (remotePath) items.push({ label: '$(arrow-up) ..', action: 'up' });
    for (const entry of entries) {
      items.push({
        label: `${entry.type === 'dir' ? '$(folder)' : '$(file)'} ${sanitizeForDisplay(entry.name)}`,
        description: entry.type === 'dir' ? undefined : `${entry.size} bytes`,
        action: entry.type === 'dir' ? 'open' : 'take',
        entry,
      });
    }
    const pick = await vscode.window.showQuickPick(items, { title: `${sanitizeForDisplay(peer.name || 'Peer')}: /${remotePath}`, placeHolder: 'Choose a file, or open a folder' });
    if (!pick) return undefined;
    if (pick.action === 'up') {
      remotePath = remotePath.split('/').slice(0, -1).join('/');
      continue;
    }
    if (pick.action === 'open' && pick.entry) {
      remotePath = remotePath ? `${remotePath}/${pick.entry.name}` : pick.entry.name;
      continue;
    }
    const entry = pick.entry ?? { name: baseName(remotePath), type: 'dir' as const, size: 0, mtimeMs: 0 };
    const full = pick.entry ? (remotePath ? `${remotePath}/${pick.entry.name}` : pick.entry.name) : remotePath;
    return { kind: 'entry', peerId: peer.id, peerName: peer.name, remotePath: full, entry, isRoot: !full.includes('/') };
  }
}
