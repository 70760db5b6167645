import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { OriginStore, sameAs, toPeerShareError, type Entry, type LandedFile, type Origin } from '../core';

/** Paths put in the `peershare.originPaths` context key at most; past it, Update from Peer shows on every local file and explains. */
const MAX_CONTEXT_PATHS = 5_000;

/**
 * What came from where, for the editor (issue 13): every download and every received file is
 * recorded in an OriginStore (src/core/origins.ts) kept in the extension's storage, never in the
 * workspace. Update from Peer, Follow and the Peers view's "changed" marks read it. It keeps the
 * `peershare.originPaths` context key (the local files and folders that have an origin) so the
 * Explorer offers Update from Peer only where it can act.
 */
export class Origins implements vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<void>();
  /** Fires after a record changed (a download, an update, a follow's batch): the marks redraw. */
  readonly onDidChange = this.changed.event;
  private contextTimer?: NodeJS.Timeout;
  private loaded?: OriginStore;
  /** The record, once read (at activation, off the startup path). */
  readonly store: Promise<OriginStore>;

  /** Reads the record at `file` (the extension's storage); a record that cannot be read is an empty one. */
  constructor(
    file: string,
    private readonly log: vscode.LogOutputChannel,
  ) {
    this.store = OriginStore.open(file).then((store) => {
      this.loaded = store;
      this.updated();
      return store;
    });
  }

  /** The recorder for one download of `remotePath` from `peerId` into `localPath` (known when it ends: keep-both may rename it). */
  recorder(peerId: string, remotePath: string, type: 'file' | 'dir'): { onFileLanded: (rel: string, landed: LandedFile) => void; landedAt: (localPath: string) => Promise<void> } {
    const landed = new Map<string, LandedFile>();
    return {
      onFileLanded: (rel, file) => landed.set(rel, file),
      landedAt: async (localPath) => {
        if (landed.size === 0) return;
        const store = await this.store;
        const origin = store.begin(peerId, remotePath, localPath, type);
        for (const [rel, file] of landed) store.setFile(origin, rel, file);
        this.updated();
      },
    };
  }

  /**
   * Records a file that arrived some other way than a download (a file a peer sent, accepted into
   * the workspace or the inbox): its version is the landed file's own size and time.
   */
  async recordReceived(peerId: string, remotePath: string, localPath: string, sendersTime?: number): Promise<void> {
    const st = await fs.lstat(localPath).catch(() => undefined);
    if (!st) return;
    const store = await this.store;
    if (st.isFile()) {
      const origin = store.begin(peerId, remotePath, localPath, 'file');
      // The sender's time as it offered it, when the landed file has it (to within the rounding settleTime mends).
      const landed = { size: st.size, mtimeMs: sendersTime !== undefined && Math.abs(st.mtimeMs - sendersTime) < 1 ? sendersTime : Math.floor(st.mtimeMs), created: true };
      await settleTime(localPath, landed);
      store.setFile(origin, '', landed);
    } else if (st.isDirectory()) {
      const origin = store.begin(peerId, remotePath, localPath, 'dir');
      for (const rel of await filesBelow(localPath)) {
        const f = await fs.lstat(path.join(localPath, ...rel.split('/')));
        store.setFile(origin, rel, { size: f.size, mtimeMs: Math.floor(f.mtimeMs), created: true });
      }
    }
    this.updated();
  }

  /** The origin of a local file or folder, and its path below the origin ('' for the origin itself). */
  async lookup(localPath: string): Promise<{ origin: Origin; rel: string } | undefined> {
    return (await this.store).lookup(localPath);
  }

  /** Local copies of a peer's file or folder (none while the record is still being read). */
  copiesOf(peerId: string, remotePath: string): { origin: Origin; rel: string }[] {
    return this.loaded?.byRemote(peerId, remotePath) ?? [];
  }

  /**
   * Whether the peer's file (as a listing shows it) differs from every version recorded for a local
   * copy: the Peers view marks it. False when it was never taken, or a copy has that version.
   */
  changedOnPeer(peerId: string, remotePath: string, entry: Entry): boolean {
    if (entry.type !== 'file') return false;
    const versions = this.copiesOf(peerId, remotePath).flatMap(({ origin, rel }) => {
      const version = origin.files.get(rel);
      return version ? [version] : [];
    });
    return versions.length > 0 && !versions.some((v) => sameAs(v, entry.size, entry.mtimeMs));
  }

  /** Whether some local copy of the peer's file or folder is recorded. */
  isTaken(peerId: string, remotePath: string): boolean {
    return this.copiesOf(peerId, remotePath).length > 0;
  }

  /** A record changed: redraw the marks, and (soon, once for a burst) the Explorer's context key. */
  updated(): void {
    this.changed.fire();
    if (this.contextTimer) return;
    this.contextTimer = setTimeout(() => {
      this.contextTimer = undefined;
      void this.setContext();
    }, 200);
  }

  private async setContext(): Promise<void> {
    const paths: string[] = [];
    for (const origin of this.loaded?.list() ?? []) {
      paths.push(origin.localPath);
      for (const rel of origin.files.keys()) if (rel !== '') paths.push(OriginStore.localFile(origin, rel));
      if (paths.length > MAX_CONTEXT_PATHS) break;
    }
    const many = paths.length > MAX_CONTEXT_PATHS;
    await vscode.commands.executeCommand('setContext', 'peershare.originPaths', many ? [] : paths);
    await vscode.commands.executeCommand('setContext', 'peershare.manyOrigins', many);
  }

  /** Writes the record now; a failure is logged (the record is a shortcut, not the files). */
  async flush(): Promise<void> {
    await (await this.store).flush().catch((err: unknown) => this.log.warn(`Could not save what came from where: ${toPeerShareError(err).message}`));
  }

  dispose(): void {
    clearTimeout(this.contextTimer);
    void this.flush();
    this.changed.dispose();
  }
}

/**
 * A received file's time, made exactly the sender's whole millisecond when the way it reached the
 * workspace (a copy out of the staging folder) left it a fraction short (a time in seconds as a double can read back as the millisecond before), so its
 * record says "as it landed" and not "edited". Only a file still of the landed size, within that
 * millisecond, is touched.
 */
async function settleTime(file: string, landed: LandedFile): Promise<void> {
  const st = await fs.lstat(file).catch(() => undefined);
  if (!st?.isFile() || sameAs(landed, st.size, st.mtimeMs) || st.size !== landed.size || Math.abs(st.mtimeMs - landed.mtimeMs) >= 1) return;
  const seconds = (landed.mtimeMs + 0.5) / 1000;
  await fs.utimes(file, seconds, seconds).catch(() => undefined);
}

/** Regular files below `dir` ('/'-separated), not following links; bounded. */
async function filesBelow(dir: string, max = 10_000): Promise<string[]> {
  const found: string[] = [];
  const walk = async (rel: string[]): Promise<void> => {
    for (const d of await fs.readdir(path.join(dir, ...rel), { withFileTypes: true }).catch(() => [])) {
      if (found.length >= max) return;
      if (d.isFile()) found.push([...rel, d.name].join('/'));
      else if (d.isDirectory()) await walk([...rel, d.name]);
    }
  };
  await walk([]);
  return found;
}
