import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { Discovery, PeerServer, Share, TrustStore, connectToPeer, download, loadOrCreateIdentity, parseInvite, resolveLimits, type AccessDecision } from '../../../src/core';
import { TlsListener, dialTls } from '../../../src/core/transport-tls';
import type { Connection } from '../../../src/core/v2/connection';
import { acceptV2, dialV2 } from '../../../src/core/v2/handshake';
import type { EntryNode, NearbyNode, Node, PeerNode } from '../../../src/vscode/tree';
import { ROOT, api, startHeadlessPeer, tempDir, waitFor, type HeadlessPeer } from './helpers';

const manifest = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));

function workspaceDir(): string {
  return vscode.workspace.workspaceFolders![0].uri.fsPath;
}

async function childrenOf(node: Node | undefined): Promise<Node[]> {
  const { tree } = await api();
  return tree.getChildren(node);
}

async function findPeerNode(peerId: string): Promise<PeerNode> {
  return waitFor(async () => (await childrenOf(undefined)).find((n): n is PeerNode => n.kind === 'peer' && n.peer.id === peerId));
}

async function findEntry(parent: Node, name: string): Promise<EntryNode> {
  const found = (await childrenOf(parent)).find((n): n is EntryNode => n.kind === 'entry' && n.entry.name === name);
  if (!found) throw new Error(`no ${name} under ${parent.kind}`);
  return found;
}

describe('PeerShare in a real VS Code', function () {
  this.timeout(120_000);
  let peer: HeadlessPeer;
  const big = randomBytes(8 * 1024 * 1024);
  const errors: string[] = [];
  const originalShowError = vscode.window.showErrorMessage;

  before(async () => {
    peer = await startHeadlessPeer('fixtures', {
      'hello.txt': 'hello from the headless peer\n',
      'data/users/1.json': '{"id":1}\n',
      'data/users/2.json': '{"id":2}\n',
      'data/big.bin': big,
      'compare.txt': 'peer version\n',
      '.env': 'SECRET=1\n',
    });
    (vscode.window as { showErrorMessage: unknown }).showErrorMessage = (message: string, ...rest: unknown[]) => {
      errors.push(message);
      return (originalShowError as (...a: unknown[]) => Thenable<unknown>)(message, ...rest);
    };
  });

  after(async () => {
    (vscode.window as { showErrorMessage: unknown }).showErrorMessage = originalShowError;
    await peer?.stop();
    await vscode.commands.executeCommand('peershare.stopSharing');
  });

  it('activates quickly and registers every command declared in package.json', async () => {
    const { activationMs, activationParts } = await api();
    console.log(`activation parts: bundle ${activationParts.loadMs.toFixed(1)} ms, activate() ${activationParts.activateMs.toFixed(1)} ms`);
    // Reported in docs/benchmarks.md; the target (under 50 ms) is the benchmark's, not this test's.
    console.log(`activation: ${activationMs.toFixed(1)} ms from bundle load to the end of activate()`);
    assert.ok(activationMs > 0);
    const registered = new Set(await vscode.commands.getCommands(true));
    const declared: string[] = manifest.contributes.commands.map((c: { command: string }) => c.command);
    const missing = declared.filter((c) => !registered.has(c));
    assert.deepEqual(missing, [], 'declared but not registered');
    // VS Code adds focus/toggle commands for every view (peershare.peers.*): not ours to declare.
    const ours = [...registered].filter((c) => c.startsWith('peershare.') && !c.startsWith('peershare.peers.'));
    assert.deepEqual(ours.filter((c) => !declared.includes(c)), [], 'registered but not declared');
  });

  it("this extension host's Node lets both ends of a TLS connection read into one reused buffer", async () => {
    // reused-read-buffer.ts finds Node's own fields by name; a Node without them falls back to a
    // Buffer per read, slower but correct. This says which one the editor's Node is.
    const [dialer, acceptor] = await Promise.all([loadOrCreateIdentity(tempDir()), loadOrCreateIdentity(tempDir())]);
    const accepted: Connection[] = [];
    const listener = new TlsListener({
      identity: acceptor,
      limits: resolveLimits(),
      stats: { connectionsAccepted: 0, handshakesRateLimited: 0, unauthenticatedEvicted: 0, oversizedHandshakes: 0 },
      log: () => undefined,
      onStream: (stream, admission) => {
        void acceptV2(stream, { name: 'acceptor', ownPeerId: acceptor.peerId, admit: async () => (admission.leave(), { serve: {}, paired: false }) }).then(({ connection }) => accepted.push(connection));
      },
    });
    const port = await listener.listen(0, '127.0.0.1');
    try {
      const stream = await dialTls({ identity: dialer, address: `127.0.0.1:${port}` });
      const { connection } = await dialV2(stream, { expectedPeerId: acceptor.peerId, name: 'dialer', serve: {} });
      const other = await waitFor(async () => accepted[0]);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(connection.stats.readsIntoReusedBuffer, true, `the dialer (Node ${process.versions.node})`);
      assert.equal(other.stats.readsIntoReusedBuffer, true, `the acceptor (Node ${process.versions.node})`);
      connection.close();
    } finally {
      await listener.close(() => accepted.forEach((c) => c.close()));
    }
  });

  it('starts sharing; a headless peer pairs with the invite and downloads a workspace file', async () => {
    await fs.writeFile(path.join(workspaceDir(), 'shared.txt'), 'shared from the editor\n');
    await vscode.commands.executeCommand('peershare.startSharing');
    const { sharing } = await api();
    assert.equal(sharing.isSharing, true, `sharing did not start: ${errors.join(' | ')} (trusted: ${vscode.workspace.isTrusted})`);
    const invite = (await vscode.commands.executeCommand<string>('peershare.copyInvite'))!;
    assert.match(invite, /^vscode:\/\/peershare\.peershare\/invite\?/);
    assert.equal(await vscode.env.clipboard.readText(), invite);
    const home = tempDir();
    const identity = await loadOrCreateIdentity(home);
    const trust = await TrustStore.open(home);
    const parsed = parseInvite(invite);
    const conn = await connectToPeer({ identity, trust, addresses: parsed.addresses.filter((a) => a.startsWith('127.')).concat(`127.0.0.1:${sharing.port}`), expectedPeerId: parsed.peerId, token: parsed.token, name: 'headless' });
    const dest = tempDir();
    const root = path.basename(workspaceDir());
    const result = await download(conn, `${root}/shared.txt`, dest);
    assert.equal(await fs.readFile(result.target, 'utf8'), 'shared from the editor\n');
    await waitFor(() => sharing.connectedCount() === 1);
    conn.close();
  });

  it('connects to a headless peer with its invite and shows its files in the tree', async () => {
    await vscode.commands.executeCommand('peershare.connect', peer.invite);
    const peerNode = await findPeerNode(peer.peerId);
    const item = (await api()).tree.getTreeItem(peerNode);
    assert.equal(item.label, 'Headless fixtures');
    assert.match(String(item.description), /online/);
    const [root] = await childrenOf(peerNode);
    assert.equal(root.kind === 'entry' && root.entry.name, 'fixtures');
    const names = (await childrenOf(root)).map((n) => (n.kind === 'entry' ? n.entry.name : n.kind));
    assert.deepEqual(names, ['data', 'compare.txt', 'hello.txt'], 'folders first, .env never shared');
    const hello = await findEntry(root, 'hello.txt');
    const helloItem = (await api()).tree.getTreeItem(hello);
    assert.equal(helloItem.resourceUri?.scheme, 'peershare');
    assert.equal(helloItem.description, '29 B');
    assert.equal(helloItem.contextValue, 'peershare.file');
  });

  it('an open folder of a peer redraws itself when the peer\'s files change (added, changed, removed), without a Refresh', async () => {
    const { tree } = await api();
    const [root] = await childrenOf(await findPeerNode(peer.peerId));
    const users = await findEntry(await findEntry(root, 'data'), 'users');
    const redrawn: unknown[] = [];
    const listening = tree.onDidChangeTreeData((node) => redrawn.push(node));
    const namesIn = async () => (await childrenOf(users)).map((n) => (n.kind === 'entry' ? `${n.entry.name} ${n.entry.size}` : n.kind));
    try {
      assert.deepEqual(await namesIn(), ['1.json 9', '2.json 9']);
      const folder = path.join(peer.folder, 'data', 'users');
      await fs.writeFile(path.join(folder, '3.json'), '{"id":3}\n');
      await fs.writeFile(path.join(folder, '1.json'), '{"id":1,"x":true}\n');
      await fs.rm(path.join(folder, '2.json'));
      // The view is told to redraw that folder (the very node it showed), and its listing is the new one.
      await waitFor(() => redrawn.includes(users), 15_000);
      await waitFor(async () => JSON.stringify(await namesIn()) === JSON.stringify(['1.json 18', '3.json 9']) || undefined, 15_000);
      // Closed in the view: no longer watched, so a later change redraws nothing.
      tree.collapsed(users);
      redrawn.length = 0;
      await fs.writeFile(path.join(folder, '4.json'), '{}');
      await new Promise((r) => setTimeout(r, 1500));
      assert.ok(!redrawn.includes(users), 'a closed folder is not watched');
    } finally {
      listening.dispose();
      await fs.rm(path.join(peer.folder, 'data', 'users', '3.json'), { force: true });
      await fs.rm(path.join(peer.folder, 'data', 'users', '4.json'), { force: true });
      await fs.writeFile(path.join(peer.folder, 'data', 'users', '1.json'), '{"id":1}\n');
      await fs.writeFile(path.join(peer.folder, 'data', 'users', '2.json'), '{"id":2}\n');
    }
  });

  it('downloads a file and a folder into the workspace, byte for byte', async () => {
    const peerNode = await findPeerNode(peer.peerId);
    const [root] = await childrenOf(peerNode);
    await vscode.commands.executeCommand('peershare.download', await findEntry(root, 'hello.txt'));
    assert.equal(await fs.readFile(path.join(workspaceDir(), 'hello.txt'), 'utf8'), 'hello from the headless peer\n');
    await vscode.commands.executeCommand('peershare.download', await findEntry(root, 'data'));
    assert.deepEqual(await fs.readFile(path.join(workspaceDir(), 'data', 'big.bin')), big);
    assert.equal(await fs.readFile(path.join(workspaceDir(), 'data', 'users', '2.json'), 'utf8'), '{"id":2}\n');
  });

  it('asks before overwriting: skip, keep both, overwrite', async () => {
    const { downloads } = await api();
    const [root] = await childrenOf(await findPeerNode(peer.peerId));
    const node = await findEntry(root, 'compare.txt');
    const target = path.join(workspaceDir(), 'compare.txt');
    await fs.writeFile(target, 'my version\n');
    const asked: string[] = [];
    const answer = (choice: 'skip' | 'keepBoth' | 'overwrite') => {
      downloads.conflictPrompt = async (t) => {
        asked.push(path.basename(t));
        return choice;
      };
    };
    answer('skip');
    await vscode.commands.executeCommand('peershare.download', node);
    assert.equal(await fs.readFile(target, 'utf8'), 'my version\n');
    answer('keepBoth');
    await vscode.commands.executeCommand('peershare.download', node);
    assert.equal(await fs.readFile(path.join(workspaceDir(), 'compare (2).txt'), 'utf8'), 'peer version\n');
    assert.equal(await fs.readFile(target, 'utf8'), 'my version\n');
    answer('overwrite');
    await vscode.commands.executeCommand('peershare.download', node);
    assert.equal(await fs.readFile(target, 'utf8'), 'peer version\n');
    assert.deepEqual(asked, ['compare.txt', 'compare.txt', 'compare.txt']);
  });

  it('cancelling a download leaves nothing under the final name and no partial file', async () => {
    const { downloads } = await api();
    const [root] = await childrenOf(await findPeerNode(peer.peerId));
    const data = await findEntry(root, 'data');
    const bigNode = await findEntry(data, 'big.bin');
    const dest = tempDir();
    const running = downloads.download(bigNode, dest);
    await new Promise((r) => setTimeout(r, 20));
    downloads.cancelAll();
    assert.equal(await running, undefined);
    assert.deepEqual(await fs.readdir(dest), []);
  });

  it('opens a preview of a peer file, read-only, without downloading it', async () => {
    const [root] = await childrenOf(await findPeerNode(peer.peerId));
    const dest = path.join(workspaceDir(), 'data', 'users', '1.json');
    const users = await findEntry(await findEntry(root, 'data'), 'users');
    await vscode.commands.executeCommand('peershare.openPreview', await findEntry(users, '1.json'));
    const editor = await waitFor(() => (vscode.window.activeTextEditor?.document.uri.scheme === 'peershare' ? vscode.window.activeTextEditor : undefined));
    assert.equal(editor.document.getText(), '{"id":1}\n');
    assert.equal(vscode.workspace.fs.isWritableFileSystem('peershare'), false);
    await assert.rejects(Promise.resolve(vscode.workspace.fs.writeFile(editor.document.uri, Buffer.from('x'))));
    assert.ok(dest);
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
  });

  it('compares a peer file with the local one in a diff editor', async () => {
    const [root] = await childrenOf(await findPeerNode(peer.peerId));
    await fs.mkdir(path.join(workspaceDir()), { recursive: true });
    await vscode.commands.executeCommand('peershare.compareWithLocal', await findEntry(root, 'hello.txt'));
    const tab = await waitFor(() => {
      const input = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
      return input instanceof vscode.TabInputTextDiff ? input : undefined;
    });
    assert.equal(tab.original.scheme, 'peershare');
    assert.equal(tab.modified.fsPath, path.join(workspaceDir(), 'hello.txt'));
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
  });

  it('Download and Compare with Local agree where a peer’s file is here: the same path below the workspace', async () => {
    const [root] = await childrenOf(await findPeerNode(peer.peerId));
    const users = await findEntry(await findEntry(root, 'data'), 'users');
    const one = await findEntry(users, '1.json');
    const local = path.join(workspaceDir(), 'data', 'users', '1.json');
    await fs.rm(local, { force: true });
    const infos: string[] = [];
    const originalInfo = vscode.window.showInformationMessage;
    (vscode.window as { showInformationMessage: unknown }).showInformationMessage = (message: string, ...rest: unknown[]) => {
      infos.push(message);
      return (originalInfo as (...a: unknown[]) => Thenable<unknown>)(message, ...rest);
    };
    try {
      await vscode.commands.executeCommand('peershare.compareWithLocal', one);
      assert.deepEqual(infos, ['There is no local 1.json to compare with.'], 'PeerShare’s own message, not VS Code’s "could not be opened"');
      await vscode.commands.executeCommand('peershare.download', one);
      assert.equal(await fs.readFile(local, 'utf8'), '{"id":1}\n', 'downloaded to data/users/1.json, not to the workspace root');
      await vscode.commands.executeCommand('peershare.compareWithLocal', one);
      const tab = await waitFor(() => {
        const input = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
        return input instanceof vscode.TabInputTextDiff ? input : undefined;
      });
      assert.equal(tab.modified.fsPath, local);
      assert.match(vscode.window.tabGroups.activeTabGroup.activeTab?.label ?? '', /1\.json \(Headless fixtures\) ↔ \(yours\)/);
      await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
    } finally {
      (vscode.window as { showInformationMessage: unknown }).showInformationMessage = originalInfo;
    }
  });

  it('Download never follows a link in the workspace on the way to the peer’s path', async () => {
    const [root] = await childrenOf(await findPeerNode(peer.peerId));
    const two = await findEntry(await findEntry(await findEntry(root, 'data'), 'users'), '2.json');
    const users = path.join(workspaceDir(), 'data', 'users');
    const outside = await fs.mkdtemp(path.join(os.tmpdir(), 'peershare-outside-'));
    await fs.rename(users, `${users}.kept`);
    await fs.symlink(outside, users);
    try {
      errors.length = 0;
      await vscode.commands.executeCommand('peershare.download', two);
      assert.equal(errors.length, 1, 'one message');
      assert.match(errors[0], /Could not download 2\.json\. .*symbolic link/);
      assert.deepEqual(await fs.readdir(outside), [], 'nothing written through the link');
    } finally {
      await fs.rm(users);
      await fs.rename(`${users}.kept`, users);
      await fs.rm(outside, { recursive: true, force: true });
    }
  });

  it('an error from a peer shows a message, and the extension host stays up', async () => {
    const [root] = await childrenOf(await findPeerNode(peer.peerId));
    const ghost: EntryNode = { ...(root as EntryNode), remotePath: 'fixtures/../../etc/passwd', entry: { name: 'passwd', type: 'file', size: 1, mtimeMs: 0 } };
    errors.length = 0;
    const result = await vscode.commands.executeCommand('peershare.download', ghost);
    assert.equal(result, undefined);
    assert.equal(errors.length, 1);
    assert.match(errors[0], /Could not download passwd\. The peer sent an unsafe file name/);
    const missing: EntryNode = { ...(root as EntryNode), remotePath: 'fixtures/nope.txt', entry: { name: 'nope.txt', type: 'file', size: 1, mtimeMs: 0 } };
    await vscode.commands.executeCommand('peershare.download', missing);
    assert.match(errors[1], /No such file/);
    // Still alive and answering:
    assert.ok((await childrenOf(root)).length > 0);
  });

  it('a command run on a row that has left the view does nothing and shows no error', async () => {
    // What VS Code passes when the row is gone before the command runs: only the row's handle.
    const handle = { $treeViewId: 'peershare.peers', $treeItemHandle: '0/gone' };
    errors.length = 0;
    for (const id of ['peershare.download', 'peershare.downloadTo', 'peershare.openPreview', 'peershare.compareWithLocal', 'peershare.renamePeer', 'peershare.forgetPeer', 'peershare.requestAccess']) {
      assert.equal(await vscode.commands.executeCommand(id, handle), undefined, id);
    }
    assert.deepEqual(errors, []);
  });

  it('shows a peer offline as soon as its connection drops, and online again when it is back', async () => {
    const gone = await startHeadlessPeer('gone', { 'a.txt': 'a' });
    await vscode.commands.executeCommand('peershare.connect', gone.invite);
    const { peers, tree } = await api();
    const node = await findPeerNode(gone.peerId);
    assert.deepEqual((await childrenOf(await findEntry(node, 'gone'))).map((n) => n.kind === 'entry' && n.entry.name), ['a.txt']);
    assert.equal(peers.state(gone.peerId), 'online');
    await gone.stop();
    // Nobody asks the tree: the dropped connection alone must mark the peer offline.
    await waitFor(() => peers.state(gone.peerId) === 'offline', 15_000);
    assert.match(String(tree.getTreeItem(node).description), /offline/);
    const children = await childrenOf(node);
    assert.equal(children.length, 1);
    assert.equal(children[0].kind, 'message');
    assert.equal((children[0] as { text: string }).text, 'Not reachable right now');
    assert.match(String((children[0] as { tooltip?: string }).tooltip), /Refresh to try again/);
    // Back on its port (as after a restart): found again without a Refresh.
    await gone.restart();
    await waitFor(() => peers.state(gone.peerId) === 'online', 30_000);
    assert.deepEqual((await childrenOf(await findEntry(node, 'gone'))).map((n) => n.kind === 'entry' && n.entry.name), ['a.txt']);
    await gone.stop();
    await peers.forget(gone.peerId);
  });

  it('applies a changed setting without a reload: a new exclude hides files from peers', async () => {
    const { sharing } = await api();
    await fs.writeFile(path.join(workspaceDir(), 'notes.log'), 'log\n');
    const home = tempDir();
    const identity = await loadOrCreateIdentity(home);
    const trust = await TrustStore.open(home);
    const invite = parseInvite((await vscode.commands.executeCommand<string>('peershare.copyInvite'))!);
    const root = path.basename(workspaceDir());
    const list = async () => {
      const conn = await connectToPeer({ identity, trust, addresses: [`127.0.0.1:${sharing.port}`], expectedPeerId: invite.peerId, token: invite.token, name: 'watcher' });
      try {
        return (await conn.list(root)).map((e) => e.name);
      } finally {
        conn.close();
      }
    };
    assert.ok((await list()).includes('notes.log'));
    const portBefore = sharing.port;
    await vscode.workspace.getConfiguration('peershare').update('exclude', ['*.log'], vscode.ConfigurationTarget.Workspace);
    try {
      await waitFor(async () => sharing.isSharing && !(await list().catch(() => ['notes.log'])).includes('notes.log'));
      assert.equal(sharing.port, portBefore, 'the restart keeps the port');
    } finally {
      await vscode.workspace.getConfiguration('peershare').update('exclude', undefined, vscode.ConfigurationTarget.Workspace);
    }
  });

  it('lists a folder of 10,000 files in the tree (timing reported, not asserted)', async () => {
    const many: Record<string, string> = {};
    for (let i = 0; i < 10_000; i++) many[`big-folder/file-${String(i).padStart(5, '0')}.txt`] = 'x';
    const wide = await startHeadlessPeer('wide', many);
    try {
      await vscode.commands.executeCommand('peershare.connect', wide.invite);
      const [root] = await childrenOf(await findPeerNode(wide.peerId));
      const folder = await findEntry(root, 'big-folder');
      const started = performance.now();
      const children = await childrenOf(folder);
      const ms = performance.now() - started;
      console.log(`tree: expanding a folder of 10,000 files took ${ms.toFixed(0)} ms`);
      assert.equal(children.length, 10_000);
      assert.equal(children[0].kind === 'entry' && children[0].entry.name, 'file-00000.txt');
      await (await api()).peers.forget(wide.peerId);
    } finally {
      await wide.stop();
    }
  });

  it('lists a peer announcing itself nearby under Nearby, as not trusted', async () => {
    const port = String(vscode.workspace.getConfiguration('peershare').get<number>('discovery.port'));
    const announcer = await startHeadlessPeer('announcer', { 'x.txt': 'x' }, ['--announce', '--interface', '127.0.0.1', '--discovery-port', port]);
    try {
      const node = await waitFor(async () => {
        const group = (await childrenOf(undefined)).find((n) => n.kind === 'nearbyGroup');
        return group ? (await childrenOf(group)).find((n): n is NearbyNode => n.kind === 'nearby' && n.peer.id === announcer.peerId) : undefined;
      }, 5000);
      const item = (await api()).tree.getTreeItem(node);
      assert.equal(item.label, 'Headless announcer');
      assert.equal(item.description, 'not trusted');
      assert.equal(item.contextValue, 'peershare.nearby');
    } finally {
      await announcer.stop();
    }
  });

  it('asks a nearby peer to connect; allowed once, its files can be browsed', async () => {
    const home = tempDir();
    const identity = await loadOrCreateIdentity(home);
    const trust = await TrustStore.open(home);
    const folder = path.join(tempDir(), 'nearby-share');
    await fs.mkdir(folder);
    await fs.writeFile(path.join(folder, 'n.txt'), 'n');
    const codes: string[] = [];
    const server = new PeerServer({
      identity,
      trust,
      share: await Share.create({ folders: [folder] }, resolveLimits()),
      name: 'Nearby Nina',
      onAccessRequest: async (request) => {
        codes.push(request.verificationCode);
        return 'once';
      },
    });
    await server.listen(0, '127.0.0.1');
    const port = vscode.workspace.getConfiguration('peershare').get<number>('discovery.port')!;
    const discovery = new Discovery({ selfId: identity.peerId, interfaces: ['127.0.0.1'], port });
    await discovery.start();
    discovery.announce({ name: 'Nearby Nina', port: server.port });
    try {
      const node = await waitFor(async () => {
        const group = (await childrenOf(undefined)).find((n) => n.kind === 'nearbyGroup');
        return group ? (await childrenOf(group)).find((n): n is NearbyNode => n.kind === 'nearby' && n.peer.id === identity.peerId) : undefined;
      }, 5000);
      const outcome = await vscode.commands.executeCommand('peershare.requestAccess', node);
      assert.equal(outcome, 'once');
      assert.equal(codes.length, 1);
      const allowed = await waitFor(async () => {
        const group = (await childrenOf(undefined)).find((n) => n.kind === 'nearbyGroup');
        return group ? (await childrenOf(group)).find((n): n is NearbyNode => n.kind === 'nearby' && n.peer.id === identity.peerId && n.allowedOnce) : undefined;
      });
      const [root] = await childrenOf(allowed);
      assert.equal(root.kind === 'entry' && root.entry.name, 'nearby-share');
      // Downloads work too, over the connection that was allowed (a new one would need asking again).
      await vscode.commands.executeCommand('peershare.download', await findEntry(root, 'n.txt'));
      assert.equal(await fs.readFile(path.join(workspaceDir(), 'n.txt'), 'utf8'), 'n');
      assert.equal(codes.length, 1, 'asked only once');
      assert.equal(trust.allowsReader((await (await api()).peers.load()).identity.peerId), false, 'allowed once is not trusted');
    } finally {
      await discovery.stop();
      await server.close();
    }
  });

  it('answers a nearby peer’s request: allow once, always allow, deny', async () => {
    const { sharing } = await api();
    await vscode.commands.executeCommand('peershare.startSharing');
    const invite = parseInvite((await vscode.commands.executeCommand<string>('peershare.copyInvite'))!);
    const root = path.basename(workspaceDir());
    const asked: string[] = [];
    const answer = (decision: AccessDecision) => {
      sharing.accessPrompt = async (request) => {
        asked.push(request.verificationCode);
        return decision;
      };
    };
    const request = async () => {
      const home = tempDir();
      const identity = await loadOrCreateIdentity(home);
      const trust = await TrustStore.open(home);
      let code = '';
      const conn = await connectToPeer({ identity, trust, addresses: [`127.0.0.1:${sharing.port}`], expectedPeerId: invite.peerId, name: 'Asker', requestAccess: true, onVerificationCode: (c) => (code = c) });
      return { conn, code, identity };
    };
    answer('once');
    const once = await request();
    assert.ok((await once.conn.list(root)).length > 0);
    assert.equal(asked.at(-1), once.code, 'both sides show the same code');
    once.conn.close();
    answer('always');
    const always = await request();
    always.conn.close();
    const { trust } = await (await api()).peers.load();
    await trust.reload();
    assert.equal(trust.allowsReader(always.identity.peerId), true);
    answer('deny');
    await assert.rejects(request(), (err: { code?: string }) => err.code === 'ACCESS_DENIED');
    await (await api()).peers.forget(always.identity.peerId);
  });

  it('a request nobody answers is denied after the configured time', async () => {
    const { sharing } = await api();
    await vscode.workspace.getConfiguration('peershare').update('requestTimeoutSeconds', 5, vscode.ConfigurationTarget.Workspace);
    try {
      await waitFor(() => sharing.isSharing);
      await new Promise((r) => setTimeout(r, 500)); // the restart that applies the setting
      await waitFor(() => sharing.isSharing);
      const invite = parseInvite((await vscode.commands.executeCommand<string>('peershare.copyInvite'))!);
      let dismissed = false;
      sharing.accessPrompt = (_request, signal) =>
        new Promise<AccessDecision>(() => signal.addEventListener('abort', () => (dismissed = true)));
      const home = tempDir();
      const started = Date.now();
      await assert.rejects(
        connectToPeer({ identity: await loadOrCreateIdentity(home), trust: await TrustStore.open(home), addresses: [`127.0.0.1:${sharing.port}`], expectedPeerId: invite.peerId, name: 'Silent', requestAccess: true }),
        (err: { code?: string }) => err.code === 'ACCESS_DENIED',
      );
      const seconds = (Date.now() - started) / 1000;
      assert.ok(seconds >= 4.5 && seconds < 15, `denied after ${seconds} s`);
      assert.equal(dismissed, true, 'the prompt is told the request is gone');
    } finally {
      await vscode.workspace.getConfiguration('peershare').update('requestTimeoutSeconds', undefined, vscode.ConfigurationTarget.Workspace);
    }
  });

  it('forgetting a peer while it downloads stops the download; nothing lands under the final name', async () => {
    const { sharing, peers } = await api();
    await waitFor(() => sharing.isSharing);
    const big = randomBytes(48 * 1024 * 1024);
    await fs.writeFile(path.join(workspaceDir(), 'big-shared.bin'), big);
    const invite = parseInvite((await vscode.commands.executeCommand<string>('peershare.copyInvite'))!);
    const home = tempDir();
    const identity = await loadOrCreateIdentity(home);
    const conn = await connectToPeer({ identity, trust: await TrustStore.open(home), addresses: [`127.0.0.1:${sharing.port}`], expectedPeerId: invite.peerId, token: invite.token, name: 'Soon forgotten', limits: {} });
    const dest = tempDir();
    let forgotten = false;
    await assert.rejects(
      download(conn, `${path.basename(workspaceDir())}/big-shared.bin`, dest, {
        onProgress: (p) => {
          if (!forgotten && p.bytes > 2 * 1024 * 1024) {
            forgotten = true;
            // What Forget Peer does after its confirmation.
            void peers.forget(identity.peerId).then(() => sharing.disconnect(identity.peerId));
          }
        },
      }),
    );
    assert.equal(forgotten, true);
    await assert.rejects(fs.stat(path.join(dest, 'big-shared.bin')));
    await fs.rm(path.join(workspaceDir(), 'big-shared.bin'));
  });

  it('stop sharing closes the port', async () => {
    const { sharing } = await api();
    const port = sharing.port!;
    await vscode.commands.executeCommand('peershare.stopSharing');
    assert.equal(sharing.isSharing, false);
    const refused = await new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' }, () => {
        s.destroy();
        resolve(false);
      });
      s.on('error', () => resolve(true));
    });
    assert.equal(refused, true);
  });

  it('renames a trusted peer', async () => {
    const { peers, tree } = await api();
    await peers.rename(peer.peerId, 'Renamed fixtures');
    assert.equal(tree.getTreeItem(await findPeerNode(peer.peerId)).label, 'Renamed fixtures');
  });

  it('forgetting a peer removes it from the tree', async () => {
    const { peers } = await api();
    await peers.forget(peer.peerId);
    const nodes = await childrenOf(undefined);
    assert.equal(nodes.some((n) => n.kind === 'peer' && n.peer.id === peer.peerId), false);
  });
});
