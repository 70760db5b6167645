import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { FollowReport } from '../../../src/core';
import { Follows } from '../../../src/vscode/follow';
import { peerFileUri } from '../../../src/vscode/peers';
import type { EntryNode, Node, PeerNode } from '../../../src/vscode/tree';
import type { LocalEditChoice, UpdateOutcome } from '../../../src/vscode/updates';
import { api, startHeadlessPeer, waitFor, type HeadlessPeer } from './helpers';

/**
 * Issue 13 in the editor, against a real peer (the CLI's `peershare serve`): what came from where,
 * the Peers view's changed marks redrawn by the live tree, Update from Peer (with the local-edit
 * question) and Follow Folder. Everything is asserted on the files.
 */
function workspaceDir(): string {
  return vscode.workspace.workspaceFolders![0].uri.fsPath;
}

async function childrenOf(node: Node | undefined): Promise<Node[]> {
  return (await api()).tree.getChildren(node);
}

async function findEntry(parent: Node, name: string): Promise<EntryNode> {
  const found = (await childrenOf(parent)).find((n): n is EntryNode => n.kind === 'entry' && n.entry.name === name);
  if (!found) throw new Error(`no ${name} under ${parent.kind}`);
  return found;
}

describe('Stay in step with a peer (issue 13)', function () {
  this.timeout(120_000);
  let peer: HeadlessPeer;
  let root: EntryNode;
  // Random bytes: every content-defined chunk is unique, so what is reused is what did not change.
  const big = randomBytes(3 * 1024 * 1024);
  const localBig = () => path.join(workspaceDir(), 'update-me.bin');

  before(async () => {
    peer = await startHeadlessPeer('stay', {
      'update-me.bin': big,
      'followed/a.txt': 'a, first\n',
      'followed/b.txt': 'b, to be removed\n',
      'followed/keep.txt': 'keep, as it came\n',
      'tree/v.txt': 'v, as it came\n',
      'tree/x.txt': 'x, as it came\n',
      'tree/y.txt': 'y, as it came\n',
      'tree/z.txt': 'z, as it came\n',
    });
    await vscode.commands.executeCommand('peershare.connect', peer.invite);
    const peerNode = await waitFor(async () => (await childrenOf(undefined)).find((n): n is PeerNode => n.kind === 'peer' && n.peer.id === peer.peerId));
    [root] = (await childrenOf(peerNode)) as EntryNode[];
    assert.equal(root.entry.name, 'stay');
  });

  after(async () => {
    await (await api()).follows.stopAll();
    await peer?.stop();
  });

  it('remembers a download, and marks the row when the sharer changes the file, by itself (the live tree)', async () => {
    const { tree, marks, origins } = await api();
    const node = await findEntry(root, 'update-me.bin');
    assert.equal(tree.getTreeItem(node).contextValue, 'peershare.file', 'not taken yet');
    await vscode.commands.executeCommand('peershare.download', node);
    assert.deepEqual(await fs.readFile(localBig()), big);
    const found = await origins.lookup(localBig());
    assert.ok(found, 'the download is recorded');
    assert.equal(found.origin.peerId, peer.peerId);
    assert.equal(found.origin.remotePath, 'stay/update-me.bin');
    assert.equal(await (await origins.store).localState(found.origin, found.rel), 'same', 'the landed file is the version recorded');

    const listed = await findEntry(root, 'update-me.bin');
    assert.equal(tree.getTreeItem(listed).contextValue, 'peershare.file.taken');
    assert.equal(marks.isMarked(peerFileUri(peer.peerId, 'stay/update-me.bin')), false);

    // A full redraw (the download above made one) gives the view new nodes: a change must redraw the one it holds now.
    tree.refresh();
    const peerNode = (await childrenOf(undefined)).find((n): n is PeerNode => n.kind === 'peer' && n.peer.id === peer.peerId)!;
    const [shownRoot] = (await childrenOf(peerNode)) as EntryNode[];
    assert.notEqual(shownRoot, root);
    root = shownRoot;
    await childrenOf(root);
    // The sharer changes 4 KiB in the middle: the open folder redraws itself, and the row is marked.
    const redrawn: unknown[] = [];
    const listening = tree.onDidChangeTreeData((n) => redrawn.push(n));
    try {
      const handle = await fs.open(path.join(peer.folder, 'update-me.bin'), 'r+');
      await handle.write(randomBytes(4096), 0, 4096, 1024 * 1024);
      await handle.close();
      await waitFor(() => redrawn.includes(root), 15_000);
      const changed = await waitFor(async () => {
        const again = await findEntry(root, 'update-me.bin');
        return tree.getTreeItem(again).contextValue === 'peershare.file.taken.changed' ? again : undefined;
      }, 15_000);
      const item = tree.getTreeItem(changed);
      assert.equal(item.description, '3.0 MiB · changed on peer');
      assert.match(String(item.tooltip), /Changed on the peer since you downloaded it: Update from Peer/);
      assert.equal(marks.isMarked(peerFileUri(peer.peerId, 'stay/update-me.bin')), true);
      assert.equal(marks.provideFileDecoration(peerFileUri(peer.peerId, 'stay/update-me.bin'))?.propagate, true, 'the folders holding it show it too');
    } finally {
      listening.dispose();
    }
  });

  it('Update from Peer after a local edit asks before touching it; Keep Mine leaves the file byte for byte', async () => {
    const { updates } = await api();
    await fs.appendFile(localBig(), 'my local edit\n');
    const mine = await fs.readFile(localBig());
    const before = await fs.stat(localBig());
    const asked: { file: string; peerFile: string }[] = [];
    updates.localEditPrompt = async (file, _isFolder, peerFile) => {
      asked.push({ file, peerFile: peerFile.toString() });
      return 'mine';
    };
    const [outcome] = (await vscode.commands.executeCommand<UpdateOutcome[]>('peershare.updateFromPeer', vscode.Uri.file(localBig())))!;
    assert.deepEqual(asked, [{ file: localBig(), peerFile: peerFileUri(peer.peerId, 'stay/update-me.bin').toString() }], 'asked once, about that file');
    assert.deepEqual(outcome.kept, ['update-me.bin']);
    assert.equal(outcome.filesChanged, 0);
    assert.deepEqual(await fs.readFile(localBig()), mine, 'yours, byte for byte');
    assert.equal((await fs.stat(localBig())).mtimeMs, before.mtimeMs, 'not even touched');
  });

  it('Take Theirs replaces it with the peer\'s version, moving only the changed chunks, and clears the mark', async () => {
    const { updates, origins, marks } = await api();
    const choices: LocalEditChoice[] = [];
    updates.localEditPrompt = async () => {
      choices.push('theirs');
      return 'theirs';
    };
    // From the Peers view's row this time.
    const node = await findEntry(root, 'update-me.bin');
    const [outcome] = (await vscode.commands.executeCommand<UpdateOutcome[]>('peershare.updateFromPeer', node))!;
    assert.equal(choices.length, 1, 'asked, since the file is still edited here');
    const theirs = await fs.readFile(path.join(peer.folder, 'update-me.bin'));
    assert.deepEqual(await fs.readFile(localBig()), theirs, 'the peer\'s version, byte for byte');
    assert.equal(outcome.filesChanged, 1);
    assert.ok(outcome.bytesReceived < big.length / 4, `received ${outcome.bytesReceived} B of a ${big.length} B file`);
    assert.ok(outcome.bytesReused > big.length / 2, `reused ${outcome.bytesReused} B`);
    const found = (await origins.lookup(localBig()))!;
    assert.equal(await (await origins.store).localState(found.origin, found.rel), 'same', 'the new version is recorded');
    await findEntry(root, 'update-me.bin');
    assert.equal(marks.isMarked(peerFileUri(peer.peerId, 'stay/update-me.bin')), false, 'no longer marked');
    // Nothing changed on either side now: no question, nothing moves.
    choices.length = 0;
    const [again] = (await vscode.commands.executeCommand<UpdateOutcome[]>('peershare.updateFromPeer', vscode.Uri.file(localBig())))!;
    assert.equal(choices.length, 0);
    assert.equal(again.filesChanged + again.bytesReceived, 0);
  });

  it('Update from Peer on a folder asks about each file edited here whose peer copy changed too, and updates the rest', async () => {
    const { updates } = await api();
    await vscode.commands.executeCommand('peershare.download', await findEntry(root, 'tree'));
    const local = path.join(workspaceDir(), 'tree');
    const sharer = path.join(peer.folder, 'tree');
    assert.equal(await fs.readFile(path.join(local, 'z.txt'), 'utf8'), 'z, as it came\n');
    // Here: v (only here), x and y edited. There: x, y and z changed, w added.
    for (const name of ['v', 'x', 'y']) await fs.writeFile(path.join(local, `${name}.txt`), `${name}, mine\n`);
    for (const name of ['x', 'y', 'z', 'w']) await fs.writeFile(path.join(sharer, `${name}.txt`), `${name}, theirs and longer\n`);
    const asked: string[] = [];
    updates.localEditPrompt = async (file, isFolder) => {
      assert.equal(isFolder, true, 'a folder\'s question offers the "for All" answers');
      asked.push(path.basename(file));
      return path.basename(file) === 'x.txt' ? 'mine' : 'theirs';
    };
    const [outcome] = (await vscode.commands.executeCommand<UpdateOutcome[]>('peershare.updateFromPeer', vscode.Uri.file(local)))!;
    assert.deepEqual(asked.sort(), ['x.txt', 'y.txt'], 'asked about the files edited here and changed there, one by one; not about v (only changed here) or z (not edited here)');
    const read = (name: string) => fs.readFile(path.join(local, name), 'utf8');
    assert.equal(await read('v.txt'), 'v, mine\n', 'changed only here: kept without a question');
    assert.equal(await read('x.txt'), 'x, mine\n', 'Keep Mine');
    assert.equal(await read('y.txt'), 'y, theirs and longer\n', 'Take Theirs');
    assert.equal(await read('z.txt'), 'z, theirs and longer\n', 'not edited here: updated');
    assert.equal(await read('w.txt'), 'w, theirs and longer\n', 'new there: added');
    assert.deepEqual([...outcome.kept].sort(), ['v.txt', 'x.txt']);
    assert.equal(outcome.filesChanged, 3);
  });

  it('Update from Peer from the command palette acts on the active editor\'s file; unsaved changes count as edits', async () => {
    const { updates } = await api();
    const file = path.join(workspaceDir(), 'tree', 'z.txt');
    const editor = await vscode.window.showTextDocument(vscode.Uri.file(file));
    const asked: string[] = [];
    updates.localEditPrompt = async (f) => {
      asked.push(path.basename(f));
      return 'mine';
    };
    const [same] = (await vscode.commands.executeCommand<UpdateOutcome[]>('peershare.updateFromPeer'))!;
    assert.equal(same.localPath, file);
    assert.equal(same.filesChanged + same.kept.length, 0, 'already the peer\'s version');
    await fs.writeFile(path.join(peer.folder, 'tree', 'z.txt'), 'z, changed again there\n');
    await editor.edit((edit) => edit.insert(new vscode.Position(0, 0), 'unsaved: '));
    try {
      const [kept] = (await vscode.commands.executeCommand<UpdateOutcome[]>('peershare.updateFromPeer'))!;
      assert.deepEqual(asked, ['z.txt'], 'asked: the open document has unsaved changes');
      assert.deepEqual(kept.kept, ['z.txt']);
      assert.equal(await fs.readFile(file, 'utf8'), 'z, theirs and longer\n', 'the file on disk was not touched');
    } finally {
      await vscode.commands.executeCommand('workbench.action.revertAndCloseActiveEditor');
    }
  });

  it('a folder\'s "Take Theirs for All" answers the files still to ask about', async () => {
    const { updates } = await api();
    const local = path.join(workspaceDir(), 'tree');
    const sharer = path.join(peer.folder, 'tree');
    // x is still edited here (kept above); y is edited here now; both change there again.
    await fs.writeFile(path.join(local, 'y.txt'), 'y, mine again\n');
    for (const name of ['x', 'y']) await fs.writeFile(path.join(sharer, `${name}.txt`), `${name}, theirs once more\n`);
    const asked: string[] = [];
    updates.localEditPrompt = async (file) => {
      asked.push(path.basename(file));
      return 'theirsAll';
    };
    await vscode.commands.executeCommand('peershare.updateFromPeer', vscode.Uri.file(local));
    assert.equal(asked.length, 1, `asked once, not about each (${asked})`);
    for (const name of ['x', 'y']) assert.equal(await fs.readFile(path.join(local, `${name}.txt`), 'utf8'), `${name}, theirs once more\n`);
    assert.equal(await fs.readFile(path.join(local, 'z.txt'), 'utf8'), 'z, changed again there\n', 'not edited here: updated');
  });

  it('Follow Folder applies an add, a change and a delete, and never deletes a file edited here', async () => {
    const { follows } = await api();
    const reports: FollowReport[] = [];
    const listening = follows.onDidApply(({ report }) => reports.push(report));
    const local = path.join(workspaceDir(), 'followed');
    try {
      const started = await vscode.commands.executeCommand<{ localPath: string }>('peershare.followFolder', await findEntry(root, 'followed'));
      assert.equal(started?.localPath, local, 'where Download puts it');
      assert.equal(await fs.readFile(path.join(local, 'a.txt'), 'utf8'), 'a, first\n');
      assert.equal(await fs.readFile(path.join(local, 'b.txt'), 'utf8'), 'b, to be removed\n');
      assert.equal(follows.statusText, '$(sync) Following 1');
      assert.ok(follows.isFollowed(peer.peerId, 'stay/followed'));

      await fs.appendFile(path.join(local, 'keep.txt'), 'edited here\n');
      const sharer = path.join(peer.folder, 'followed');
      await fs.rm(path.join(sharer, 'keep.txt'));
      await fs.rm(path.join(sharer, 'b.txt'));
      await fs.writeFile(path.join(sharer, 'a.txt'), 'a, second and longer\n');
      await fs.writeFile(path.join(sharer, 'c.txt'), 'c, new\n');

      await waitFor(async () => (await fs.readFile(path.join(local, 'c.txt'), 'utf8').catch(() => '')) === 'c, new\n' || undefined, 20_000);
      await waitFor(async () => (await fs.readFile(path.join(local, 'a.txt'), 'utf8')) === 'a, second and longer\n' || undefined, 20_000);
      await waitFor(async () => !(await fs.lstat(path.join(local, 'b.txt')).then(() => true, () => false)) || undefined, 20_000);
      // The sharer's delete of keep.txt was seen, and left alone: it was edited here.
      await waitFor(() => reports.some((r) => r.leftAlone.some((l) => l.path === 'keep.txt')) || undefined, 20_000);
      assert.equal(await fs.readFile(path.join(local, 'keep.txt'), 'utf8'), 'keep, as it came\nedited here\n');
      assert.ok(reports.some((r) => r.filesDeleted >= 1), 'the delete was applied');
    } finally {
      listening.dispose();
      await vscode.commands.executeCommand('peershare.stopFollowing', { kind: 'entry', peerId: peer.peerId, remotePath: 'stay/followed' });
    }
    assert.equal(follows.isFollowed(peer.peerId, 'stay/followed'), false);
    assert.equal(follows.statusText, undefined, 'the status bar item is gone');
    // Stopped: a later change on the sharer stays there.
    await fs.writeFile(path.join(peer.folder, 'followed', 'd.txt'), 'after stop\n');
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await fs.lstat(path.join(local, 'd.txt')).then(() => true, () => false), false);
  });

  it('a follow is remembered for the workspace and resumes after a window reload', async () => {
    const { follows, peers, origins } = await api();
    const local = path.join(workspaceDir(), 'followed');
    // What a window remembered of its follows (Follow Folder writes it once the first sync is done).
    const saved = new Map<string, unknown>();
    const memento = {
      keys: () => [...saved.keys()],
      get: <T>(key: string, fallback?: T) => (saved.has(key) ? (saved.get(key) as T) : fallback),
      update: async (key: string, value: unknown) => void saved.set(key, value),
    } as vscode.Memento;
    const log = vscode.window.createOutputChannel('PeerShare test follows', { log: true });
    await memento.update('peershare.follows', [{ peerId: peer.peerId, remotePath: 'stay/followed', localPath: local }]);
    // The next window: a new Follows on the same record resumes it, and catches up with what changed meanwhile.
    await fs.writeFile(path.join(peer.folder, 'followed', 'e.txt'), 'while the window was away\n');
    const next = new Follows(peers, origins, log, memento);
    try {
      assert.equal(follows.isFollowed(peer.peerId, 'stay/followed'), false);
      next.resume();
      await waitFor(() => next.list().find((f) => f.state === 'following'), 20_000);
      assert.equal(await fs.readFile(path.join(local, 'e.txt'), 'utf8'), 'while the window was away\n');
      await fs.writeFile(path.join(peer.folder, 'followed', 'f.txt'), 'after the reload\n');
      await waitFor(async () => (await fs.readFile(path.join(local, 'f.txt'), 'utf8').catch(() => '')) === 'after the reload\n' || undefined, 20_000);
      // Stopped: forgotten for the next window too.
      await next.stop(peer.peerId, 'stay/followed');
      assert.deepEqual(memento.get('peershare.follows'), []);
    } finally {
      next.dispose();
      log.dispose();
    }
  });
});
