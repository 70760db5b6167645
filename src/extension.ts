import * as vscode from 'vscode';
import { loadOrCreateIdentity } from './core';

/**
 * The VS Code layer is thin wiring over src/core. This first version only shows the
 * installation's peer ID; the Peers view, sharing and downloads come with the extension issue.
 */
export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel('PeerShare', { log: true });
  context.subscriptions.push(log);
  context.subscriptions.push(
    vscode.commands.registerCommand('peershare.showPeerId', async () => {
      try {
        const identity = await loadOrCreateIdentity(vscode.Uri.joinPath(context.globalStorageUri, 'identity').fsPath);
        log.info(`Peer ID: ${identity.peerId}`);
        const copy = await vscode.window.showInformationMessage(`Your PeerShare ID: ${identity.peerId}`, 'Copy');
        if (copy) await vscode.env.clipboard.writeText(identity.peerId);
      } catch (err) {
        log.error(String(err));
        void vscode.window.showErrorMessage(`PeerShare: ${(err as Error).message}`);
      }
    }),
  );
}

export function deactivate(): void {
  // Nothing runs until sharing exists; every disposable is in context.subscriptions.
}
