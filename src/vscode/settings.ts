import * as os from 'node:os';
import * as path from 'node:path';
import * as vscode from 'vscode';

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
}

export function readSettings(): Settings {
  const c = vscode.workspace.getConfiguration('peershare');
  return {
    port: c.get<number>('port', 0),
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
  };
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
export function downloadFolder(settings: Settings): string | undefined {
  const first = vscode.workspace.workspaceFolders?.find((f) => f.uri.scheme === 'file');
  if (settings.downloadLocation) {
    if (path.isAbsolute(settings.downloadLocation)) return settings.downloadLocation;
    if (first) return path.join(first.uri.fsPath, settings.downloadLocation);
  }
  return first?.uri.fsPath;
}
