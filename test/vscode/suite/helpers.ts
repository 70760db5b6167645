import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import * as vscode from 'vscode';
import type { PeerShareApi } from '../../../src/extension';

export const ROOT = path.resolve(__dirname, '..', '..', '..');

export async function api(): Promise<PeerShareApi> {
  const ext = vscode.extensions.getExtension<PeerShareApi>('peershare.peershare');
  if (!ext) throw new Error('the PeerShare extension is not loaded');
  return ext.activate();
}

export function tempDir(prefix = 'peershare-vsc-'): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface HeadlessPeer {
  invite: string;
  peerId: string;
  port: number;
  folder: string;
  stop(): Promise<void>;
  /** Starts it again after `stop()`: same identity, folder and port, as after a restart of its machine. */
  restart(): Promise<void>;
}

/** A headless peer: the real CLI, `peershare serve`, sharing `files` from a new folder. */
export async function startHeadlessPeer(name: string, files: Record<string, string | Buffer>, extraArgs: string[] = []): Promise<HeadlessPeer> {
  const base = tempDir();
  const folder = path.join(base, name);
  await fs.mkdir(folder, { recursive: true });
  for (const [rel, content] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(folder, rel)), { recursive: true });
    await fs.writeFile(path.join(folder, rel), content);
  }
  const home = path.join(base, 'home');
  const serve = async (args: string[]): Promise<{ child: ChildProcess; info: { invite: string; peerId: string; port: number } }> => {
    const child: ChildProcess = spawn(
      process.execPath,
      [path.join(ROOT, 'dist', 'cli.js'), 'serve', folder, '--json', '--home', home, '--invite-uses', '20', '--name', `Headless ${name}`, ...args],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' } },
    );
    const line = await new Promise<string>((resolve, reject) => {
      readline.createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`peershare serve exited with ${code}`)));
    });
    return { child, info: JSON.parse(line) };
  };
  let { child, info } = await serve(extraArgs);
  const stop = (): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  return {
    ...info,
    folder,
    stop,
    restart: async () => {
      await stop();
      ({ child } = await serve([...extraArgs, '--port', String(info.port)]));
    },
  };
}

export async function waitFor<T>(probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const started = Date.now();
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() - started > timeoutMs) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}
