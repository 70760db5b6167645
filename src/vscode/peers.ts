import * as path from 'node:path';
import * as vscode from 'vscode';
import {
  PeerShareError,
  PeerShareNode,
  isUnreachable,
  looksLikeInvite,
  parseAddress,
  sanitizeForDisplay,
  type Discovery,
  type Identity,
  type NearbyPeer,
  type PeerConnection,
  type ReceivePolicy,
  type StreamRoute,
  type TrustStore,
  type TrustedPeer,
} from '../core';
import { internetOption, readSettings } from './settings';

export type PeerState = 'unknown' | 'online' | 'offline';

/**
 * The peers this installation trusts, and connections to them. Browsing shares one connection
 * per peer (requests queue on it); each download opens its own, so they run in parallel.
 */
export class Peers implements vscode.Disposable {
  private nodePromise?: Promise<PeerShareNode>;
  private readonly browsing = new Map<string, Promise<PeerConnection>>();
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly states = new Map<string, PeerState>();
  /** Each peer's open browsing connection, for the route the view shows (removed when it closes). */
  private readonly routed = new Map<string, PeerConnection>();
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChange = this.changed.event;
  private discoveryStarting?: Promise<Discovery | undefined>;
  /** Nearby peers that let us in once: browsable while that connection lasts. */
  private readonly allowedOnce = new Map<string, NearbyPeer>();
  /** Peers whose connection dropped and did not come back: checked again, less often each time. */
  private readonly rechecks = new Map<string, { timer: NodeJS.Timeout; delayMs: number }>();
  private disposed = false;
  /** Who decides about files peers send us (receive.ts); handed to the node when it opens. */
  receivePolicy?: ReceivePolicy;
  private opened?: PeerShareNode;

  constructor(
    /** The identity folder: key, certificate and trusted peers. */
    readonly home: string,
    private readonly log: vscode.LogOutputChannel,
  ) {}

  /** This installation (identity, trust, discovery, connections), opened on first use. */
  node(): Promise<PeerShareNode> {
    this.nodePromise ??= PeerShareNode.open({
      home: this.home,
      name: () => readSettings().displayName,
      discovery: () => {
        const { enabled, interfaces, port } = readSettings().discovery;
        return enabled ? { interfaces: interfaces.length ? interfaces : undefined, port } : false;
      },
      log: (level, message) => this.log[level === 'debug' ? 'debug' : level](message),
      // Read when internet reach first starts (sharing with it on, or dialing a peer with a DHT key).
      internet: () => internetOption(readSettings()),
    }).then((node) => {
      // Before any connection: without a policy, every offer would be refused.
      node.setReceivePolicy(this.receivePolicy);
      this.opened = node;
      return node;
    });
    this.nodePromise.catch(() => (this.nodePromise = undefined));
    return this.nodePromise;
  }

  /** This installation's identity and trust store, created on first use. */
  async load(): Promise<{ identity: Identity; trust: TrustStore; node: PeerShareNode }> {
    const node = await this.node();
    return { identity: node.identity, trust: node.trust, node };
  }

  async list(): Promise<TrustedPeer[]> {
    const { trust } = await this.load();
    await trust.reload();
    return trust.list().sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id));
  }

  /** The name this installation gave a trusted peer, once the node is open. */
  trustedName(id: string): string | undefined {
    return this.opened?.trust.get(id)?.name || undefined;
  }

  state(id: string): PeerState {
    return this.states.get(id) ?? 'unknown';
  }

  /** How the open browsing connection to a peer runs (LAN or DHT); undefined when none is open. */
  route(id: string): StreamRoute | undefined {
    const conn = this.routed.get(id);
    return conn && !conn.closed ? conn.route : undefined;
  }

  /** Connects with an invite or a trusted peer's address; returns the peer now trusted. */
  async connect(text: string): Promise<TrustedPeer> {
    const { node, trust } = await this.load();
    if (!looksLikeInvite(text) && !parseAddress(text.trim())) {
      throw new PeerShareError('INVALID_INVITE', 'Paste an invite (peershare://… or vscode://…) or the address (host:port) of a peer you already trust.');
    }
    const conn = await node.connect(text);
    this.adoptBrowsingConnection(conn);
    this.log.info(`Connected to ${sanitizeForDisplay(conn.peerName)} (${conn.peerId}) at ${conn.address}`);
    this.changed.fire();
    return trust.get(conn.peerId)!;
  }

  async rename(id: string, name: string): Promise<void> {
    const { trust } = await this.load();
    if (!(await trust.update(id, { name }))) throw new PeerShareError('UNKNOWN_PEER', 'That peer is no longer trusted.');
    this.changed.fire();
  }

  async forget(id: string): Promise<void> {
    const { trust } = await this.load();
    await trust.remove(id);
    this.stopRechecking(id);
    this.closeBrowsing(id);
    this.states.delete(id);
    this.log.info(`Forgot peer ${id}`);
    this.changed.fire();
  }

  /** Runs `work` on the peer's browsing connection, one request at a time. */
  async browse<T>(id: string, work: (conn: PeerConnection) => Promise<T>): Promise<T> {
    const previous = this.queues.get(id) ?? Promise.resolve();
    const run = previous.catch(() => undefined).then(async () => {
      const conn = await this.browsingConnection(id);
      return work(conn);
    });
    this.queues.set(id, run);
    return run;
  }

  /**
   * Runs a transfer: on a fresh connection for a trusted peer (so transfers run in parallel), or,
   * for a nearby peer that let us in once, on that one connection (asking again is not an option).
   */
  async transfer<T>(id: string, signal: AbortSignal, work: (conn: PeerConnection) => Promise<T>): Promise<T> {
    const { trust } = await this.load();
    if (!trust.readsFrom(id) && this.allowedOnce.has(id)) return this.browse(id, work);
    const conn = await this.openConnection(id, signal);
    try {
      return await work(conn);
    } finally {
      conn.close();
    }
  }

  /** A fresh connection, for a download; the caller closes it. */
  async openConnection(id: string, signal?: AbortSignal): Promise<PeerConnection> {
    const { node, trust } = await this.load();
    if (!trust.get(id)) throw new PeerShareError('UNKNOWN_PEER', 'That peer is no longer trusted.');
    try {
      // Where it was, else at its host's default port, else wherever it announces itself nearby
      // (on the running discovery, started here so its events reach the view).
      await this.discovery();
      const conn = await node.connectToPeer(id, { signal });
      this.setState(id, 'online');
      return conn;
    } catch (err) {
      if (isUnreachable(err)) this.setState(id, 'offline');
      throw err;
    }
  }

  /**
   * The browsing connection closed without us asking: the peer stopped sharing, its machine went
   * away, or it closed an idle connection. One connection attempt tells which; the view then shows
   * the peer offline (its files are no longer listed) or, if it answered, fresh.
   */
  private connectionDropped(id: string): void {
    if (this.disposed) return;
    this.log.info(`The connection to ${id} closed; checking whether it still shares`);
    this.states.delete(id);
    void this.browsingConnection(id).then(
      () => this.stopRechecking(id),
      (err: unknown) => {
        if (isUnreachable(err)) this.recheckLater(id);
      },
    );
    this.changed.fire();
  }

  /** While a dropped peer stays unreachable, try again after 5 s, 10 s, 20 s, ... at most every 60 s. */
  private recheckLater(id: string): void {
    const delayMs = Math.min((this.rechecks.get(id)?.delayMs ?? 2_500) * 2, 60_000);
    clearTimeout(this.rechecks.get(id)?.timer);
    const timer = setTimeout(() => {
      if (this.disposed || this.state(id) !== 'offline') return this.stopRechecking(id);
      void this.browsingConnection(id).then(
        () => {
          this.stopRechecking(id);
          this.changed.fire();
        },
        (err: unknown) => (isUnreachable(err) ? this.recheckLater(id) : this.stopRechecking(id)),
      );
    }, delayMs);
    timer.unref?.();
    this.rechecks.set(id, { timer, delayMs });
  }

  private stopRechecking(id: string): void {
    clearTimeout(this.rechecks.get(id)?.timer);
    this.rechecks.delete(id);
  }

  /** The LAN discovery (browse, and announce while sharing), started on first use if enabled. */
  discovery(): Promise<Discovery | undefined> {
    const settings = readSettings().discovery;
    if (!settings.enabled) return Promise.resolve(undefined);
    this.discoveryStarting ??= (async () => {
      const discovery = await (await this.node()).discovery();
      if (!discovery) {
        this.discoveryStarting = undefined;
        return undefined;
      }
      // Debounced: a peer heard while the view is still loading its first level must not be lost,
      // and a burst of announcements should redraw the view once.
      discovery.on('up', () => this.changedSoon());
      discovery.on('down', () => this.changedSoon());
      this.changedSoon();
      this.log.info(`Looking for nearby peers on ${settings.interfaces.length ? settings.interfaces.join(', ') : 'every network interface'}`);
      return discovery;
    })();
    return this.discoveryStarting;
  }

  async stopDiscovery(): Promise<void> {
    const starting = this.discoveryStarting;
    this.discoveryStarting = undefined;
    await starting;
    await this.nodePromise?.then((node) => node.stopDiscovery(), () => undefined);
    this.changed.fire();
  }

  /** Peers announcing themselves nearby that we do not trust (yet). */
  async nearby(): Promise<{ peer: NearbyPeer; allowedOnce: boolean }[]> {
    const discovery = await this.discovery();
    const { trust } = await this.load();
    const seen = (discovery?.list() ?? []).filter((p) => !trust.knows(p.id));
    for (const [id, peer] of this.allowedOnce) if (!seen.some((p) => p.id === id)) seen.push(peer);
    return seen.map((peer) => ({ peer, allowedOnce: this.allowedOnce.has(peer.id) }));
  }

  /** Asks a nearby peer to let us in; the sharer sees the same verification code as `onCode`. */
  async requestAccess(peer: NearbyPeer, onCode: (code: string) => void): Promise<'always' | 'once'> {
    const conn = await (await this.node()).requestAccess(peer, onCode);
    this.adoptBrowsingConnection(conn);
    if (conn.welcome.paired) return 'always';
    this.allowedOnce.set(peer.id, peer);
    conn.onClose(() => {
      this.allowedOnce.delete(peer.id);
      this.changed.fire();
    });
    this.changed.fire();
    return 'once';
  }

  private changeTimer?: NodeJS.Timeout;

  private changedSoon(): void {
    clearTimeout(this.changeTimer);
    this.changeTimer = setTimeout(() => this.changed.fire(), 150);
  }

  isAllowedOnce(id: string): boolean {
    return this.allowedOnce.has(id);
  }

  dispose(): void {
    this.disposed = true;
    for (const id of [...this.rechecks.keys()]) this.stopRechecking(id);
    for (const id of [...this.browsing.keys()]) this.closeBrowsing(id);
    clearTimeout(this.changeTimer);
    void this.stopDiscovery();
    this.changed.dispose();
  }

  private browsingConnection(id: string): Promise<PeerConnection> {
    const existing = this.browsing.get(id);
    if (existing) {
      return existing.then((conn) => {
        if (!conn.closed) return conn;
        this.browsing.delete(id);
        return this.browsingConnection(id);
      });
    }
    const opening = this.openConnection(id);
    this.browsing.set(id, opening);
    opening.then(
      (conn) => {
        this.noteRoute(id, conn);
        conn.onClose(() => this.browsing.get(id) === opening && this.dropBrowsing(id));
      },
      () => this.browsing.get(id) === opening && this.browsing.delete(id),
    );
    return opening;
  }

  private adoptBrowsingConnection(conn: PeerConnection): void {
    this.closeBrowsing(conn.peerId);
    const ready = Promise.resolve(conn);
    this.browsing.set(conn.peerId, ready);
    conn.onClose(() => this.browsing.get(conn.peerId) === ready && this.dropBrowsing(conn.peerId));
    this.noteRoute(conn.peerId, conn);
    this.setState(conn.peerId, 'online');
  }

  /** Remembers how a browsing connection runs until it closes; the view shows it. */
  private noteRoute(id: string, conn: PeerConnection): void {
    this.routed.set(id, conn);
    conn.onClose(() => this.routed.get(id) === conn && this.routed.delete(id));
    this.changed.fire();
  }

  /** A browsing connection we did not close has closed (closeBrowsing unregisters first). */
  private dropBrowsing(id: string): void {
    this.browsing.delete(id);
    this.queues.delete(id);
    this.connectionDropped(id);
  }

  private closeBrowsing(id: string): void {
    const conn = this.browsing.get(id);
    this.browsing.delete(id);
    this.queues.delete(id);
    void conn?.then((c) => c.close(), () => undefined);
  }

  private setState(id: string, state: PeerState): void {
    if (this.states.get(id) === state) return;
    this.states.set(id, state);
    this.changed.fire();
  }
}

/** `peershare://<peer ID without dashes>/<remote path>`: the URI of a peer's file. */
export function peerFileUri(peerId: string, remotePath: string): vscode.Uri {
  return vscode.Uri.from({ scheme: 'peershare', authority: peerId.replace(/-/g, '').toLowerCase(), path: `/${remotePath}` });
}

export function parsePeerFileUri(uri: vscode.Uri): { peerId: string; remotePath: string } {
  const compact = uri.authority.toUpperCase();
  return { peerId: compact.match(/.{1,4}/g)?.join('-') ?? '', remotePath: uri.path.replace(/^\/+/, '') };
}

export function baseName(remotePath: string): string {
  return path.posix.basename(remotePath.replace(/\/+$/, ''));
}
