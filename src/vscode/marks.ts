import * as vscode from 'vscode';

/** What the mark means, in its tooltip and the row's. */
export const CHANGED_ON_PEER = 'Changed on the peer since you downloaded it: Update from Peer takes the new version (only what changed moves).';

/**
 * The Peers view's mark on a peer's file that changed since a local copy was taken from it (issue
 * 13): a badge and a colour on its row, carried up to the folders holding it (a decoration that
 * propagates), with a tooltip that says what to do. The tree (tree.ts) decides which rows are
 * changed each time it lists a folder; this only draws them.
 */
export class ChangedMarks implements vscode.FileDecorationProvider, vscode.Disposable {
  private readonly changed = new Set<string>();
  private readonly emitter = new vscode.EventEmitter<vscode.Uri[]>();
  readonly onDidChangeFileDecorations = this.emitter.event;

  /** Sets whether `uri` (a peer's file) is marked; redraws it only when that changed. */
  set(uri: vscode.Uri, isChanged: boolean): void {
    const key = uri.toString();
    if (isChanged === this.changed.has(key)) return;
    if (isChanged) this.changed.add(key);
    else this.changed.delete(key);
    this.emitter.fire([uri]);
  }

  isMarked(uri: vscode.Uri): boolean {
    return this.changed.has(uri.toString());
  }

  provideFileDecoration(uri: vscode.Uri): vscode.FileDecoration | undefined {
    if (uri.scheme !== 'peershare' || !this.changed.has(uri.toString())) return undefined;
    const mark = new vscode.FileDecoration('↓', CHANGED_ON_PEER, new vscode.ThemeColor('gitDecoration.modifiedResourceForeground'));
    mark.propagate = true;
    return mark;
  }

  dispose(): void {
    this.emitter.dispose();
    this.changed.clear();
  }
}
