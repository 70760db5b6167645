import * as assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { inboxFolderFor, type SendResult } from '../../../src/core';
import { notificationPrompts } from '../../../src/vscode/receive';
import { api, waitFor } from './helpers';

/**
 * Editor A of the two-editor test: starts sharing, hands its invite to editor B through a file,
 * and waits until B has downloaded the folder and sent A a file (A saves it to its inbox); then A
 * sends B its notes.md over the connection B opened, and waits until B says it has it.
 */
export async function run(): Promise<void> {
  const exchange = process.env.PEERSHARE_E2E_DIR!;
  const { receiving, peers } = await api();
  // A person would click Save to Inbox; the test cannot click a notification.
  const snippets: string[] = [];
  receiving.prompts = {
    ...notificationPrompts,
    offer: async () => 'inbox',
    gitignore: async () => false,
    snippet: async (_s, message) => {
      snippets.push(message);
      return 'open';
    },
  };
  await vscode.commands.executeCommand('peershare.startSharing');
  const invite = await vscode.commands.executeCommand<string>('peershare.copyInvite');
  if (!invite) throw new Error('no invite');
  await fs.writeFile(path.join(exchange, 'invite.tmp'), invite);
  await fs.rename(path.join(exchange, 'invite.tmp'), path.join(exchange, 'invite'));
  console.log('sharer: invite written, waiting for the downloader');
  const bobSent = JSON.parse(await waitFor(async () => fs.readFile(path.join(exchange, 'bob-sent'), 'utf8').catch(() => undefined), 240_000)) as { peerId: string; file: string };
  const ws = vscode.workspace.workspaceFolders![0].uri.fsPath;
  const bob = (await peers.list()).find((p) => p.id === bobSent.peerId)!;
  const inbox = inboxFolderFor(path.join(ws, 'PeerShare Inbox'), { id: bob.id, name: bob.name });
  assert.deepEqual(await fs.readFile(path.join(inbox, path.basename(bobSent.file))), await fs.readFile(bobSent.file));
  console.log('sharer: the file the downloader sent is in the inbox, identical');
  // B also sent its README's first line as a snippet: Open shows it in an untitled editor, in its language.
  const opened = await waitFor(() => vscode.workspace.textDocuments.find((d) => d.isUntitled && d.getText() === '# bob\n'));
  assert.equal(opened.languageId, 'markdown');
  assert.match(snippets[0], /sent line 1 of README\.md: “first line”$/);
  console.log('sharer: the snippet opened in an untitled markdown editor');
  const notes = vscode.Uri.file(path.join(ws, 'notes.md'));
  const result = await vscode.commands.executeCommand<SendResult>('peershare.sendToPeer', notes, [notes], { peerId: bob.id, note: 'from alice' });
  assert.deepEqual(result?.entries.map((e) => [e.name, e.status]), [['notes.md', 'received']]);
  await fs.writeFile(path.join(exchange, 'alice-sent'), 'sent');
  console.log('sharer: sent notes.md; waiting for the downloader');
  await waitFor(async () => fs.stat(path.join(exchange, 'done')).then(() => true, () => false), 240_000);
  console.log('sharer: downloader finished');
  await vscode.commands.executeCommand('peershare.stopSharing');
}
