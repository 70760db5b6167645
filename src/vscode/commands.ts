import * as vscode from 'vscode';
import { toPeerShareError } from '../core';

/** Registers a command whose failures become a message. */
export type CommandRegistrar = (id: string, handler: (...args: never[]) => unknown) => void;

/**
 * The one way PeerShare registers commands: into the extension's subscriptions, and every failure
 * turned into a message and a log line, never a crash of the extension host. Each feature module
 * registers its own commands with it (extension.ts only wires).
 */
export function commandRegistrar(context: vscode.ExtensionContext, log: vscode.LogOutputChannel): CommandRegistrar {
  return (id, handler) => {
    context.subscriptions.push(
      vscode.commands.registerCommand(id, async (...args: never[]) => {
        try {
          return await handler(...args);
        } catch (err) {
          showFailure(log, id, err);
          return undefined;
        }
      }),
    );
  };
}

/** A failure as a message (with the log a click away) and a log line with its code and detail. */
export function showFailure(log: vscode.LogOutputChannel, what: string, err: unknown, prefix = ''): void {
  const coded = toPeerShareError(err);
  log.error(`${what} failed: ${coded.code} ${coded.message}${coded.detail ? ` (${coded.detail})` : ''}`);
  void vscode.window.showErrorMessage(`${prefix}${coded.message}`, 'Show Log').then((c) => c && log.show());
}
