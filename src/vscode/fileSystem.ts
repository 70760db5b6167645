import * as vscode from 'vscode';
import { PeerShareError, readFileVerified, toPeerShareError } from '../core';
import { parsePeerFileUri, type Peers } from './peers';

/** Previews larger than this are refused: download them instead. */
const MAX_PREVIEW_BYTES = 50 * 1024 * 1024;

/**
 * `peershare://<peer>/<path>`: a peer's files, read-only, for previews and diffs. Nothing is
 * written to disk; every read is verified with BLAKE3, block by block, like a download.
 */
export class PeerFileSystem implements vscode.FileSystemProvider {
  private readonly changed = new vscode.EventEmitter<vscode.FileChangeEvent[]>();
  readonly onDidChangeFile = this.changed.event;

  constructor(private readonly peers: Peers) {}

  watch(): vscode.Disposable {
    return new vscode.Disposable(() => undefined);
  }

  async stat(uri: vscode.Uri): Promise<vscode.FileStat> {
    const { peerId, remotePath } = parsePeerFileUri(uri);
    const entry = await this.call(uri, () => this.peers.browse(peerId, (conn) => conn.stat(remotePath)));
    return {
      type: entry.type === 'dir' ? vscode.FileType.Directory : vscode.FileType.File,
      ctime: entry.mtimeMs,
      mtime: entry.mtimeMs,
      size: entry.size,
      permissions: vscode.FilePermission.Readonly,
    };
  }

  async readDirectory(uri: vscode.Uri): Promise<[string, vscode.FileType][]> {
    const { peerId, remotePath } = parsePeerFileUri(uri);
    const entries = await this.call(uri, () => this.peers.browse(peerId, (conn) => conn.list(remotePath)));
    return entries.map((e) => [e.name, e.type === 'dir' ? vscode.FileType.Directory : vscode.FileType.File]);
  }

  async readFile(uri: vscode.Uri): Promise<Uint8Array> {
    const { peerId, remotePath } = parsePeerFileUri(uri);
    return this.call(uri, () => this.peers.browse(peerId, (conn) => readFileVerified(conn, remotePath, MAX_PREVIEW_BYTES)));
  }

  createDirectory(uri: vscode.Uri): void {
    throw vscode.FileSystemError.NoPermissions(uri);
  }

  writeFile(uri: vscode.Uri): void {
    throw vscode.FileSystemError.NoPermissions(uri);
  }

  delete(uri: vscode.Uri): void {
    throw vscode.FileSystemError.NoPermissions(uri);
  }

  rename(uri: vscode.Uri): void {
    throw vscode.FileSystemError.NoPermissions(uri);
  }

  /** Maps coded errors to the FileSystemErrors VS Code understands. */
  private async call<T>(uri: vscode.Uri, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (err) {
      const coded = err instanceof PeerShareError ? err : toPeerShareError(err);
      if (coded.code === 'NOT_FOUND') throw vscode.FileSystemError.FileNotFound(uri);
      if (coded.code === 'NOT_A_FILE') throw vscode.FileSystemError.FileIsADirectory(uri);
      if (coded.code === 'NOT_A_DIRECTORY') throw vscode.FileSystemError.FileNotADirectory(uri);
      if (['OUTSIDE_SHARE', 'EXCLUDED', 'PERMISSION_DENIED', 'PEER_UNTRUSTED'].includes(coded.code)) throw vscode.FileSystemError.NoPermissions(coded.message);
      if (['CONNECTION_FAILED', 'TIMEOUT', 'CONNECTION_CLOSED'].includes(coded.code)) throw vscode.FileSystemError.Unavailable(coded.message);
      throw new vscode.FileSystemError(coded.message);
    }
  }
}
