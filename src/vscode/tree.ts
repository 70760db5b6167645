import * as vscode from 'vscode';
import {
  fingerprintFromPeerId,
  isUnreachable,
  sanitizeForDisplay,
  shortPeerId,
  toPeerShareError,
  verificationCode,
  type Entry,
  type NearbyPeer,
  type StreamRoute,
  type TrustedPeer,
} from '../core';
import { formatBytes } from '../core/format';
import type { RemoteFolderWatch } from '../core/v2/share-client';
import { CHANGED_ON_PEER, type ChangedMarks } from './marks';
import type { Origins } from './origins';
import { peerFileUri, type Peers } from './peers';
import type { Sharing } from './sharing';

/** What the Peers view shows of local copies (issue 13): changed marks, and which rows can be updated or are followed. */
export interface LocalCopies {
  origins: Origins;
  marks: ChangedMarks;
  /** Whether a peer's folder is being followed (Follow Folder). */
  isFollowed(peerId: string, remotePath: string): boolean;
}

export type PeerNode = { kind: 'peer'; peer: TrustedPeer; verificationCode?: string };
export type EntryNode = { kind: 'entry'; peerId: string; peerName: string; remotePath: string; entry: Entry; isRoot: boolean };
export type MessageNode = { kind: 'message'; text: string; tooltip?: string };
export type NearbyGroupNode = { kind: 'nearbyGroup' };
export type NearbyNode = { kind: 'nearby'; peer: NearbyPeer; allowedOnce: boolean };
export type Node = PeerNode | EntryNode | MessageNode | NearbyGroupNode | NearbyNode;

/** The Peers view: trusted peers, then their shared folders, folders and files, a level at a time. */
export class PeersTree implements vscode.TreeDataProvider<Node>, vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<Node | undefined>();
  readonly onDidChangeTreeData = this.changed.event;
  private readonly subscription: vscode.Disposable;
  /**
   * Live folders (share.watch): each open folder of a peer redraws itself when the sharer says it
   * changed. Keyed by peer and path; in the order they were opened, so the oldest goes first when
   * a peer's limit of watches is reached.
   */
  private readonly watches = new Map<string, { peerId: string; watch: RemoteFolderWatch; node: EntryNode }>();

  private localCopies?: LocalCopies;
  private copiesSubscription?: vscode.Disposable;
  private copiesTimer?: NodeJS.Timeout;

  constructor(
    private readonly peers: Peers,
    /** How peers reading our share reached it, while they are connected. */
    private readonly sharing?: Pick<Sharing, 'incomingRoute'>,
  ) {
    this.subscription = peers.onDidChange(() => this.refresh());
  }

  /** Shows local copies' marks; the view redraws (once for a burst) when the record of what came from where changes. */
  showLocalCopies(copies: LocalCopies): void {
    this.localCopies = copies;
    this.copiesSubscription?.dispose();
    this.copiesSubscription = copies.origins.onDidChange(() => {
      clearTimeout(this.copiesTimer);
      this.copiesTimer = setTimeout(() => this.refresh(), 300);
    });
  }

  refresh(node?: Node): void {
    this.changed.fire(node);
  }

  async getChildren(node?: Node): Promise<Node[]> {
    if (!node) {
      const { identity } = await this.peers.load();
      const trusted: Node[] = (await this.peers.list()).map((peer) => ({
        kind: 'peer',
        peer,
        verificationCode: verificationCode(identity.fingerprint, fingerprintFromPeerId(peer.id)),
      }));
      const nearby = await this.peers.nearby();
      return nearby.length ? [...trusted, { kind: 'nearbyGroup' }] : trusted;
    }
    if (node.kind === 'message') return [];
    if (node.kind === 'nearbyGroup') return (await this.peers.nearby()).map(({ peer, allowedOnce }) => ({ kind: 'nearby', peer, allowedOnce }));
    if (node.kind === 'nearby' && !node.allowedOnce) return [];
    const peerId = node.kind === 'peer' || node.kind === 'nearby' ? node.peer.id : node.peerId;
    const peerName = node.kind === 'peer' || node.kind === 'nearby' ? node.peer.name : node.peerName;
    const remotePath = node.kind === 'entry' ? node.remotePath : '';
    if (node.kind === 'peer' && (!node.peer.weRead || !sharesSomewhere(node.peer))) {
      return [{ kind: 'message', text: 'Not sharing with you', tooltip: 'This peer paired with you to download; it shares nothing we know of.' }];
    }
    try {
      // Armed before the listing, so a change between the two is not missed.
      if (node.kind === 'entry' && node.entry.type === 'dir') await this.watchFolder(node);
      const entries = await this.peers.browse(peerId, (conn) => conn.list(remotePath));
      entries.sort((a, b) => (a.type === b.type ? a.name.localeCompare(b.name) : a.type === 'dir' ? -1 : 1));
      if (entries.length === 0) return [{ kind: 'message', text: 'Empty folder' }];
      const children: EntryNode[] = entries.map((entry) => ({
        kind: 'entry',
        peerId,
        peerName,
        remotePath: remotePath ? `${remotePath}/${entry.name}` : entry.name,
        entry,
        isRoot: remotePath === '',
      }));
      // Each listing (a live change included) sets the marks of the files it shows.
      if (this.localCopies) for (const child of children) this.localCopies.marks.set(peerFileUri(peerId, child.remotePath), this.localCopies.origins.changedOnPeer(peerId, child.remotePath, child.entry));
      return children;
    } catch (err) {
      const coded = toPeerShareError(err);
      // A tree row is one short line; the whole message is in the tooltip.
      const text = isUnreachable(coded) ? 'Not reachable right now' : shortMessage(coded.message);
      return [{ kind: 'message', text, tooltip: `${coded.message}\n\nRefresh to try again. (${coded.code})` }];
    }
  }

  getTreeItem(node: Node): vscode.TreeItem {
    if (node.kind === 'message') {
      const item = new vscode.TreeItem(node.text, vscode.TreeItemCollapsibleState.None);
      item.iconPath = new vscode.ThemeIcon('info');
      item.tooltip = node.tooltip;
      item.contextValue = 'peershare.message';
      return item;
    }
    if (node.kind === 'nearbyGroup') {
      const item = new vscode.TreeItem('Nearby', vscode.TreeItemCollapsibleState.Expanded);
      item.id = 'nearby';
      item.iconPath = new vscode.ThemeIcon('radio-tower');
      item.tooltip = 'Peers announcing themselves on your network. Nearby is not trusted: ask to connect, and compare the verification code.';
      item.contextValue = 'peershare.nearbyGroup';
      return item;
    }
    if (node.kind === 'nearby') {
      const { peer } = node;
      const name = sanitizeForDisplay(peer.name || shortPeerId(peer.id));
      const item = new vscode.TreeItem(name, node.allowedOnce ? vscode.TreeItemCollapsibleState.Collapsed : vscode.TreeItemCollapsibleState.None);
      item.id = `nearby:${peer.id}:${peer.address}`;
      item.description = node.allowedOnce ? 'allowed once' : 'not trusted';
      item.tooltip = new vscode.MarkdownString(`**${name}** (nearby, not trusted)\n\nPeer ID: \`${peer.id}\`\n\nAddress: ${peer.address}\n\nAsk to connect: the sharer approves, and you both compare a verification code.`);
      item.iconPath = new vscode.ThemeIcon(node.allowedOnce ? 'unlock' : 'shield');
      item.contextValue = node.allowedOnce ? 'peershare.nearby.allowed' : 'peershare.nearby';
      if (!node.allowedOnce) item.command = { command: 'peershare.requestAccess', title: 'Ask to Connect', arguments: [node] };
      return item;
    }
    if (node.kind === 'peer') {
      const { peer } = node;
      const state = this.peers.state(peer.id);
      const name = sanitizeForDisplay(peer.name || shortPeerId(peer.id));
      const item = new vscode.TreeItem(name, vscode.TreeItemCollapsibleState.Collapsed);
      item.id = `peer:${peer.id}`;
      // The route of the connection we read them over, else of theirs to our share.
      const route = this.peers.route(peer.id) ?? this.sharing?.incomingRoute(peer.id);
      // The address lives in the tooltip: in a narrow sidebar it would crowd out the state.
      const status = state === 'online' ? 'online' : state === 'offline' ? 'offline' : sharesSomewhere(peer) ? undefined : 'not sharing';
      item.description = [status, route && ROUTE_LABELS[route]].filter(Boolean).join(' · ') || undefined;
      item.tooltip = new vscode.MarkdownString(
        `**${name}**\n\nPeer ID: \`${peer.id}\`\n\nVerification code: **${node.verificationCode ?? '?'}** (they see the same for you)\n\n${describeTrust(peer)}\n\n${peer.addresses.length ? `Address: ${peer.addresses.join(', ')}` : peer.dht ? 'No LAN address known' : 'Not sharing'}${describeRoute(peer, route)}`,
      );
      item.iconPath = new vscode.ThemeIcon(state === 'offline' ? 'debug-disconnect' : 'account', state === 'online' ? new vscode.ThemeColor('charts.green') : undefined);
      item.contextValue = `peershare.peer.${state}`;
      return item;
    }
    const { entry } = node;
    const isDir = entry.type === 'dir';
    const item = new vscode.TreeItem(sanitizeForDisplay(entry.name), isDir ? vscode.TreeItemCollapsibleState.Collapsed : vscode.TreeItemCollapsibleState.None);
    item.id = `entry:${node.peerId}:${node.remotePath}`;
    // The resourceUri gives files and folders the icon theme's icons.
    item.resourceUri = peerFileUri(node.peerId, node.remotePath);
    item.iconPath = isDir ? vscode.ThemeIcon.Folder : vscode.ThemeIcon.File;
    const copies = this.localCopies;
    const taken = copies?.origins.isTaken(node.peerId, node.remotePath) ?? false;
    const changed = copies?.origins.changedOnPeer(node.peerId, node.remotePath, entry) ?? false;
    const followed = isDir && (copies?.isFollowed(node.peerId, node.remotePath) ?? false);
    // Short: a sidebar is narrow (the tooltip and the badge say more).
    const status = followed ? 'followed' : changed ? 'changed on peer' : undefined;
    item.description = [isDir ? (node.isRoot ? 'shared folder' : undefined) : formatBytes(entry.size), status].filter(Boolean).join(' · ') || undefined;
    const why = followed
      ? '\n\nFollowed: changes here are applied to your copy as they happen.'
      : changed
        ? `\n\n${CHANGED_ON_PEER}`
        : taken
          ? '\n\nYou have a copy of this (downloaded or received).'
          : '';
    item.tooltip = `${sanitizeForDisplay(node.remotePath)}${isDir ? '' : `\n${formatBytes(entry.size)}`}\nModified ${new Date(entry.mtimeMs).toLocaleString()}${why}`;
    // Suffixes the menus key on: .taken (Update from Peer), .changed, .followed (Stop Following).
    item.contextValue = `${isDir ? (node.isRoot ? 'peershare.folder.root' : 'peershare.folder') : 'peershare.file'}${taken ? '.taken' : ''}${changed ? '.changed' : ''}${followed ? '.followed' : ''}`;
    if (!isDir) item.command = { command: 'peershare.openPreview', title: 'Open Preview', arguments: [node] };
    return item;
  }

  /** A folder closed in the view: it stops being watched. */
  collapsed(node: Node): void {
    if (node.kind === 'entry') this.stopWatch(watchKey(node.peerId, node.remotePath));
  }

  private stopWatch(key: string): void {
    this.watches.get(key)?.watch.stop();
    this.watches.delete(key);
  }

  /**
   * Watches an open folder of a peer once (a second getChildren, after a change, reuses it), at
   * most maxWatchesPerConnection per peer (the oldest stops). A peer that cannot watch (an older
   * PeerShare, BUSY) is listed as before, without live updates.
   */
  private async watchFolder(node: EntryNode): Promise<void> {
    const key = watchKey(node.peerId, node.remotePath);
    const existing = this.watches.get(key);
    if (existing) {
      // The view asks with a new node after a full refresh; a change redraws the node it shows now
      // (VS Code ignores a redraw of a node it no longer holds).
      existing.node = node;
      return;
    }
    try {
      const watch = await this.peers.browse(node.peerId, async (conn) => {
        const mine = [...this.watches.entries()].filter(([, w]) => w.peerId === node.peerId).map(([k]) => k);
        for (const oldest of mine.slice(0, Math.max(0, mine.length - conn.limits.maxWatchesPerConnection + 1))) this.stopWatch(oldest);
        return conn.share.watch(node.remotePath, { onChanges: () => this.refresh(this.watches.get(key)?.node ?? node) });
      });
      this.watches.set(key, { peerId: node.peerId, watch, node });
      // Ended (the connection closed, the folder went): forget it; the view lists again when the peer comes back.
      void watch.ended.catch(() => undefined).finally(() => {
        if (this.watches.get(key)?.watch === watch) this.watches.delete(key);
      });
    } catch {
      // Listed without live updates.
    }
  }

  dispose(): void {
    clearTimeout(this.copiesTimer);
    this.copiesSubscription?.dispose();
    for (const { watch } of this.watches.values()) watch.stop();
    this.watches.clear();
    this.subscription.dispose();
    this.changed.dispose();
  }
}

function watchKey(peerId: string, remotePath: string): string {
  return `${peerId}\n${remotePath}`;
}

/** The first sentence of a message, cut at a word to fit a sidebar row. */
export function shortMessage(message: string, max = 48): string {
  const sentence = message.match(/^.*?[.!?](?=\s|$)/)?.[0] ?? message;
  if (sentence.length <= max) return sentence;
  const cut = sentence.slice(0, max - 1);
  return `${cut.slice(0, cut.lastIndexOf(' ') > max / 2 ? cut.lastIndexOf(' ') : cut.length)}…`;
}

/** Whether we know anywhere a peer shares: a LAN address, or its DHT key (internet reach). */
function sharesSomewhere(peer: TrustedPeer): boolean {
  return peer.addresses.length > 0 || peer.dht !== undefined;
}

/** How a peer is reached, as its row says it (short: a sidebar is narrow; the tooltip says more). */
export const ROUTE_LABELS: Record<StreamRoute, string> = { direct: 'LAN', dht: 'internet' };

/** The tooltip's line on the route: the open connection's, else the one that worked last time. */
function describeRoute(peer: TrustedPeer, route: StreamRoute | undefined): string {
  if (route) return `\n\nConnected: ${route === 'dht' ? 'through the internet (HyperDHT)' : 'directly, on your network (LAN)'}`;
  if (peer.reachedVia) return `\n\nLast reached: ${peer.reachedVia === 'dht' ? 'through the internet (HyperDHT)' : 'directly, on your network (LAN)'}`;
  return peer.dht ? '\n\nReachable over the internet (HyperDHT) when internet reach is on' : '';
}

/** Trust has a direction; the tooltip says which. */
function describeTrust(peer: TrustedPeer): string {
  if (peer.mayReadUs && peer.weRead) return 'Reads your share when you share; you read theirs.';
  return peer.mayReadUs ? 'Reads your share when you share (it used your invite, or you allowed it always).' : 'You read their share; they cannot read yours.';
}
