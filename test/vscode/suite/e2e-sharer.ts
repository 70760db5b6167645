import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { waitFor } from './helpers';

/**
 * Editor A of the two-editor test: starts sharing, hands its invite to editor B through a file,
 * and waits until B says it has downloaded the folder.
 */
export async function run(): Promise<void> {
  const exchange = process.env.PEERSHARE_E2E_DIR!;
  await vscode.commands.executeCommand('peershare.startSharing');
  const invite = await vscode.commands.executeCommand<string>('peershare.copyInvite');
  if (!invite) throw new Error('no invite');
  await fs.writeFile(path.join(exchange, 'invite.tmp'), invite);
  await fs.rename(path.join(exchange, 'invite.tmp'), path.join(exchange, 'invite'));
  console.log('sharer: invite written, waiting for the downloader');
  await waitFor(async () => fs.stat(path.join(exchange, 'done')).then(() => true, () => false), 240_000);
  console.log('sharer: downloader finished');
  await vscode.commands.executeCommand('peershare.stopSharing');
}
