import * as os from 'node:os';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { DEFAULT_PORT, checkReceivedName } from '../core';

export const DEFAULT_INBOX_FOLDER = 'PeerShare Inbox';

/** The `peershare.*` settings, read fresh each time so changes apply without a reload. */
export interface Settings {
  port: number;
  bindAddress: string;
  displayName: string;
  exclude: string[];
  useGitignore: boolean;
  useFilesExclude: boolean;
  shareOnStartup: boolean;
  downloadLocation: string;
  discovery: { enabled: boolean; interfaces: string[]; port: number };
  allowNearbyRequests: boolean;
  requestTimeoutSeconds: number;
  /** Where files trusted peers send land (Save to Inbox, and peers set to inbox): absolute, or below the first workspace folder. */
  inboxFolder: string;
  /** Internet reach through HyperDHT; `bootstrap` empty means HyperDHT's public bootstrap nodes. */
  internet: { enabled: boolean; bootstrap: string[] };
}

export function readSettings(): Settings {
  const c = vscode.workspace.getConfiguration('peershare');
  return {
    port: c.get<number>('port', DEFAULT_PORT),
    bindAddress: c.get<string>('bindAddress', '0.0.0.0') || '0.0.0.0',
    displayName: c.get<string>('displayName', '') || `${os.userInfo().username}@${os.hostname()}`,
    exclude: c.get<string[]>('exclude', []).filter((p) => typeof p === 'string' && p.length > 0),
    useGitignore: c.get<boolean>('useGitignore', true),
    useFilesExclude: c.get<boolean>('useFilesExclude', true),
    shareOnStartup: c.get<boolean>('shareOnStartup', false),
    downloadLocation: c.get<string>('downloadLocation', ''),
    discovery: {
      enabled: c.get<boolean>('discovery.enabled', true),
      interfaces: c.get<string[]>('discovery.interfaces', []).filter((a) => typeof a === 'string' && a.length > 0),
      port: c.get<number>('discovery.port', 47475),
    },
    allowNearbyRequests: c.get<boolean>('allowNearbyRequests', true),
    requestTimeoutSeconds: Math.max(5, c.get<number>('requestTimeoutSeconds', 60)),
    inboxFolder: inboxSetting(c),
    internet: {
      enabled: c.get<boolean>('internet.enabled', false) === true,
      // Only an empty list means the public network: anything else is passed on as written, and
      // the core refuses an entry that is not HOST:PORT (a typo never falls back to the public DHT).
      bootstrap: listOf(c.get<unknown>('internet.bootstrap', [])).map((b) => (typeof b === 'string' ? b.trim() : String(b))),
    },
  };
}

/** A setting meant to be a list, as one: a hand-edited settings.json may hold a single value instead. */
function listOf(value: unknown): unknown[] {
  return Array.isArray(value) ? value : value === undefined || value === null ? [] : [value];
}

/**
 * Where PeerShareNode meets the DHT, from the settings: false when internet reach is off. The
 * public network is named ('public') only when the bootstrap list is empty: the core never takes
 * an empty list for it.
 */
export function internetOption(settings: Settings): { bootstrap: string[] | 'public' } | false {
  if (!settings.internet.enabled) return false;
  return { bootstrap: settings.internet.bootstrap.length ? settings.internet.bootstrap : 'public' };
}

/** `files.exclude` patterns that are switched on, for a folder, in .gitignore syntax. */
export function filesExcludePatterns(folder: vscode.WorkspaceFolder): string[] {
  const patterns = vscode.workspace.getConfiguration('files', folder.uri).get<Record<string, unknown>>('exclude', {});
  // Conditional entries ({ when: ... }) are skipped: they depend on sibling files, which .gitignore cannot say.
  return Object.entries(patterns)
    .filter(([, value]) => value === true)
    .map(([glob]) => glob);
}

/** Where downloads go: the setting (absolute, or relative to the first folder), else the first folder. */
export function downloadFolder(settings: Settings, sharedFolderName?: string): string | undefined {
  const folders = (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file');
  const first = folders[0];
  if (settings.downloadLocation) {
    if (path.isAbsolute(settings.downloadLocation)) return settings.downloadLocation;
    if (first) return path.join(first.uri.fsPath, settings.downloadLocation);
  }
  return (folders.find((f) => f.name === sharedFolderName) ?? first)?.uri.fsPath;
}

/**
 * Where a peer's file or folder belongs here, the one mapping Download, Compare with Local and the
 * overwrite question share: pair programming is on the same project, so a peer's
 * `app/src/main.ts` (shared folder `app`) is `src/main.ts` in the workspace folder of the same
 * name, else the first one, or below `peershare.downloadLocation` when that is set. A shared folder
 * itself lands inside it, as `app`. Undefined when there is no folder to map to. The peer chose
 * every name on the way: a path the name rules refuse (`.vscode/...`) is BAD_NAME; Download To...
 * still takes such a file into a folder of the user's choosing.
 */
export function localPathFor(remotePath: string, settings: Settings): string | undefined {
  const place = localPlaceFor(remotePath, settings);
  return place && path.join(place.base, ...place.components);
}

/** The same place as localPathFor, as the folder it starts from and the (checked) names below it. */
export function localPlaceFor(remotePath: string, settings: Settings): { base: string; components: string[] } | undefined {
  const [root, ...rest] = remotePath.split('/').filter((part) => part !== '');
  const base = downloadFolder(settings, root);
  if (!base || !root) return undefined;
  return { base, components: checkReceivedName(rest.length ? rest.join('/') : root) };
}

/** The first workspace folder on this machine (virtual folders cannot take files). */
export function firstLocalFolder(): vscode.WorkspaceFolder | undefined {
  return (vscode.workspace.workspaceFolders ?? []).find((f) => f.uri.scheme === 'file');
}

/**
 * `peershare.inboxFolder`. A workspace's own settings (a cloned repository's .vscode/settings.json)
 * may only name a folder inside the workspace: an absolute path set there is ignored (the user's
 * own setting, or the default, applies), so a repository cannot aim what peers send at ~/.ssh.
 */
function inboxSetting(c: vscode.WorkspaceConfiguration): string {
  const inspected = c.inspect<string>('inboxFolder');
  const fromWorkspace = inspected?.workspaceFolderValue ?? inspected?.workspaceValue;
  const value = typeof fromWorkspace === 'string' && path.isAbsolute(fromWorkspace.trim()) ? inspected?.globalValue : c.get<string>('inboxFolder');
  return (typeof value === 'string' ? value.trim() : '') || DEFAULT_INBOX_FOLDER;
}

/**
 * The inbox: `peershare.inboxFolder` as is when absolute, else below the first workspace folder;
 * undefined without one, or when a relative setting leads out of it (`../..`).
 */
export function inboxRoot(settings: Settings): string | undefined {
  if (path.isAbsolute(settings.inboxFolder)) return settings.inboxFolder;
  const first = firstLocalFolder();
  if (!first) return undefined;
  const inbox = path.join(first.uri.fsPath, settings.inboxFolder);
  const inside = path.relative(first.uri.fsPath, inbox);
  return !inside || inside === '..' || inside.startsWith(`..${path.sep}`) || path.isAbsolute(inside) ? undefined : inbox;
}
