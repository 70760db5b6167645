import * as assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { SendResult } from '../../../src/core';
import { notificationPrompts, type ReviewOutcome } from '../../../src/vscode/receive';
import type { EntryNode, Node } from '../../../src/vscode/tree';
import { api, waitFor } from './helpers';

/**
 * Editor B of the two-editor test: connects with A's invite, finds A's fixtures folder in the
 * Peers tree, downloads it into B's workspace, and compares bytes with A's files on disk; then
 * sends A a file, and reviews and accepts the file A sends back (it lands in B's workspace).
 */
export async function run(): Promise<void> {
  const exchange = process.env.PEERSHARE_E2E_DIR!;
  const source = process.env.PEERSHARE_E2E_SOURCE!;
  const dest = vscode.workspace.workspaceFolders![0].uri.fsPath;
  try {
    const invite = await waitFor(async () => fs.readFile(path.join(exchange, 'invite'), 'utf8').catch(() => undefined), 240_000);
    const { tree, receiving, peers } = await api();
    const peer = (await vscode.commands.executeCommand<{ id: string }>('peershare.connect', invite))!;
    const peerNode = (await tree.getChildren(undefined)).find((n) => n.kind === 'peer' && n.peer.id === peer.id)!;
    const find = async (parent: Node, name: string) => (await tree.getChildren(parent)).find((n): n is EntryNode => n.kind === 'entry' && n.entry.name === name)!;
    const root = (await tree.getChildren(peerNode))[0];
    const fixtures = await find(root, 'fixtures');
    await vscode.commands.executeCommand('peershare.download', fixtures);
    for (const rel of ['users/1.json', 'users/2.json', 'big.bin']) {
      assert.deepEqual(await fs.readFile(path.join(dest, 'fixtures', rel)), await fs.readFile(path.join(source, 'fixtures', rel)), rel);
    }
    console.log('downloader: fixtures downloaded and identical');

    // B sends A a file, over the connection B opened (A saves it to its inbox).
    const mine = path.join(dest, 'README.md');
    const sent = await vscode.commands.executeCommand<SendResult>('peershare.sendToPeer', vscode.Uri.file(mine), [vscode.Uri.file(mine)], { peerId: peer.id, note: 'from bob' });
    assert.deepEqual(sent?.entries.map((e) => [e.name, e.status]), [['README.md', 'received']]);
    // ...and the first line of it as a snippet (Send Selection to Peer).
    const editor = await vscode.window.showTextDocument(vscode.Uri.file(mine));
    editor.selection = new vscode.Selection(0, 0, 1, 0);
    const snippet = await vscode.commands.executeCommand<SendResult>('peershare.sendSelection', { peerId: peer.id, note: 'first line' });
    assert.equal(snippet?.shown, true);
    // A person would click Review, then Accept on the diff (here: a new file).
    receiving.prompts = { ...notificationPrompts, offer: async () => 'review', review: async () => 'accept' };
    const reviewed = new Promise<ReviewOutcome>((resolve) => receiving.onDidFinishReview(resolve));
    const { identity } = await peers.load();
    await fs.writeFile(path.join(exchange, 'bob-sent'), JSON.stringify({ peerId: identity.peerId, file: mine }));
    console.log('downloader: sent README.md; waiting for the sharer’s file');
    assert.deepEqual(await reviewed, { accepted: ['notes.md'], skipped: [], failed: [] });
    assert.deepEqual(await fs.readFile(path.join(dest, 'notes.md')), await fs.readFile(path.join(source, 'notes.md')));
    console.log('downloader: notes.md reviewed, accepted and identical');
  } finally {
    await fs.writeFile(path.join(exchange, 'done'), 'done');
  }
}
