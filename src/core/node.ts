import { connectToPeer, type ConnectOptions, type PeerConnection } from './client';
import { Discovery, type DiscoveryOptions } from './discovery';
import { PeerShareError } from './errors';
import { loadOrCreateIdentity, type Identity } from './identity';
import { looksLikeInvite, parseAddress, parseInvite } from './invite';
import { resolveLimits, type Limits } from './limits';
import { connectToKnownPeer, listenOnPort, type PortChoice } from './reach';
import { PeerServer, type PeerServerOptions } from './server';
import { Share, type ShareOptions } from './share';
import { TrustStore } from './trust';
import { BlockCache } from './block-cache';
import { SendService } from './send';
import { ReceiveSettings, type ReceivePolicy } from './send-policy';

/**
 * One PeerShare installation: its identity and trust, the connections it opens, the sharing it
 * runs and the discovery both of those use. The CLI and the extension each hold one, so neither
 * assembles these parts itself, and a later transport (HyperDHT) or protocol plugs in here once.
 */
export interface NodeOptions {
  /** The identity folder (key, certificate, trusted peers); default: the user's PeerShare home. */
  home?: string;
  /** The name peers see; read on every use, so a changed setting applies at once. */
  name: () => string;
  limits?: () => Partial<Limits>;
  /** Where to listen for (and send) announcements; false: no discovery. Read when discovery starts. */
  discovery?: () => Pick<DiscoveryOptions, 'interfaces' | 'port'> | false;
  /** The port sharers listen on unless told otherwise, and where a moved peer is looked for. */
  defaultPort?: number;
  log?: (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void;
}

export interface ShareStart extends Pick<ShareOptions, 'excludes' | 'honourGitignore' | 'defaultExcludes'> {
  folders: string[];
  host: string;
  /** As in PortChoice: undefined is the default port (any free one if taken), 0 any free port, else exactly that one. */
  port?: number;
  previousPort?: number;
  /** Announce this share on the network (discovery must be on). */
  announce?: boolean;
  onAccessRequest?: PeerServerOptions['onAccessRequest'];
  limits?: Partial<Limits>;
}

/** A running share: the server, what it shares, where it listens. */
export interface ActiveShare {
  server: PeerServer;
  share: Share;
  port: number;
  /** Set when the default port was taken and the share listens elsewhere. */
  defaultPortInUse?: number;
  /** Whether it is announced on the network. */
  announced: boolean;
  stop(): Promise<void>;
}

export class PeerShareNode {
  private discoveryStarting?: Promise<Discovery | undefined>;
  private readonly shares = new Set<ActiveShare>();
  /** Per-peer receive settings (ask / inbox / never), beside the trust file. */
  readonly receiveSettings: ReceiveSettings;
  /**
   * Capability send/1 on every connection this node opens or accepts: either side may offer
   * files. Offers made to us reach `send.policy` (setReceivePolicy); without one, every offer is
   * refused without asking.
   */
  readonly send: SendService;
  private blockCache?: Promise<BlockCache>;

  private constructor(
    readonly identity: Identity,
    readonly trust: TrustStore,
    private readonly options: NodeOptions,
  ) {
    this.receiveSettings = new ReceiveSettings(identity.home);
    this.send = new SendService({
      ownPeerId: identity.peerId,
      trust,
      settings: this.receiveSettings,
      limits: resolveLimits(options.limits?.()),
      privatePaths: [identity.home],
      blockCache: () => this.openBlockCache(),
      log: options.log,
    });
  }

  /**
   * The one block cache of this installation, opened on first use: what the server shares and what
   * is sent come from the same files, so a file hashed for one is not hashed again for the other,
   * and one process never has two caches evicting over one folder.
   */
  private openBlockCache(): Promise<BlockCache> {
    this.blockCache ??= BlockCache.open(this.identity.home, resolveLimits(this.options.limits?.()), { log: (message) => this.options.log?.('warn', message) });
    return this.blockCache;
  }

  /** Who decides about offers made to us (the CLI's terminal, the editor's prompt); undefined refuses them all. */
  setReceivePolicy(policy: ReceivePolicy | undefined): void {
    this.send.policy = policy;
  }

  static async open(options: NodeOptions): Promise<PeerShareNode> {
    const identity = await loadOrCreateIdentity(options.home);
    return new PeerShareNode(identity, await TrustStore.open(identity.home), options);
  }

  get limits(): Limits {
    return resolveLimits(this.options.limits?.());
  }

  /**
   * Connects to what a person gave: an invite (pairs with its token), `host:port` of a peer we
   * already read from, or a trusted peer's ID or name (found wherever it now is: connectToKnownPeer).
   */
  async connect(target: string, options: { signal?: AbortSignal } = {}): Promise<PeerConnection> {
    return (await this.connectTarget(target, options)).conn;
  }

  /**
   * connect, saying what the target was: `movedFrom` is set when a trusted peer named by ID or
   * name was found at an address it did not have before (its remembered ones), so a caller can
   * tell the person it moved.
   */
  async connectTarget(target: string, options: { signal?: AbortSignal } = {}): Promise<{ conn: PeerConnection; movedFrom?: string[] }> {
    const base = this.connectOptions(options.signal);
    const text = target.trim();
    if (looksLikeInvite(text)) {
      const invite = parseInvite(text);
      return { conn: await connectToPeer({ ...base, addresses: invite.addresses, expectedPeerId: invite.peerId, token: invite.token }) };
    }
    if (parseAddress(text)) return { conn: await connectToPeer({ ...base, addresses: [text] }) };
    const peer = this.trust.find(text);
    if (!peer) throw new PeerShareError('UNKNOWN_PEER', `No trusted peer matches "${target}". Use an invite the first time.`);
    const known = [...peer.addresses];
    const conn = await this.connectToPeer(peer.id, options);
    return known.includes(conn.address) ? { conn } : { conn, movedFrom: known };
  }

  /** A trusted peer by ID: where it was, at its host's default port, or where it announces itself. */
  async connectToPeer(peerId: string, options: { signal?: AbortSignal; lookNearby?: boolean } = {}): Promise<PeerConnection> {
    const discovery = options.lookNearby === false ? false : await this.lookNearbyWith();
    return connectToKnownPeer({ ...this.connectOptions(options.signal), peerId, defaultPort: this.options.defaultPort, discovery });
  }

  /** Asks a nearby peer that does not know us to let us in; `onCode` gets the verification code both sides see. */
  requestAccess(peer: { id: string; address: string }, onCode: (code: string) => void): Promise<PeerConnection> {
    return connectToPeer({ ...this.connectOptions(), addresses: [peer.address], expectedPeerId: peer.id, requestAccess: true, onVerificationCode: onCode });
  }

  /**
   * Discovery, started on first use when it is on, and shared: announcing a share and looking for
   * a moved peer use the same sockets. Undefined when it is off or could not start (logged).
   */
  discovery(): Promise<Discovery | undefined> {
    const settings = this.options.discovery?.() ?? false;
    if (settings === false) return Promise.resolve(undefined);
    this.discoveryStarting ??= (async () => {
      const discovery = new Discovery({ selfId: this.identity.peerId, ...settings });
      discovery.on('error', (err: Error) => this.options.log?.('warn', `Discovery: ${err.message}`));
      await discovery.start();
      return discovery;
    })().catch((err: unknown) => {
      this.options.log?.('warn', `Discovery is off: ${String(err)}`);
      this.discoveryStarting = undefined;
      return undefined;
    });
    return this.discoveryStarting;
  }

  /** Whether discovery is running now (without starting it). */
  get discoveryRunning(): boolean {
    return this.discoveryStarting !== undefined;
  }

  async stopDiscovery(): Promise<void> {
    const starting = this.discoveryStarting;
    this.discoveryStarting = undefined;
    await (await starting)?.stop();
  }

  /** Shares folders read-only: listens by the PortChoice rule, and announces the share if asked. */
  async share(start: ShareStart): Promise<ActiveShare> {
    const limits = resolveLimits({ ...this.options.limits?.(), ...start.limits });
    const share = await Share.create(
      { folders: start.folders, excludes: start.excludes, honourGitignore: start.honourGitignore, defaultExcludes: start.defaultExcludes, privatePaths: [this.identity.home] },
      limits,
    );
    const server = new PeerServer({
      identity: this.identity,
      trust: this.trust,
      share,
      name: this.options.name(),
      limits,
      log: this.options.log,
      onAccessRequest: start.onAccessRequest,
      send: this.send,
      blockCache: () => this.openBlockCache(),
    });
    const choice: PortChoice = { port: start.port, previousPort: start.previousPort, defaultPort: this.options.defaultPort };
    const { port, defaultPortInUse } = await listenOnPort(server, start.host, choice);
    const discovery = start.announce ? await this.discovery() : undefined;
    discovery?.announce({ name: this.options.name(), port });
    const active: ActiveShare = {
      server,
      share,
      port,
      defaultPortInUse,
      announced: discovery !== undefined,
      stop: async () => {
        if (!this.shares.delete(active)) return;
        if (active.announced) discovery?.stopAnnouncing();
        await server.close();
      },
    };
    this.shares.add(active);
    return active;
  }

  /** Stops every share and discovery. */
  async close(): Promise<void> {
    await Promise.all([...this.shares].map((s) => s.stop()));
    await this.stopDiscovery();
  }

  private connectOptions(signal?: AbortSignal): Omit<ConnectOptions, 'addresses'> {
    return { identity: this.identity, trust: this.trust, name: this.options.name(), limits: this.options.limits?.(), signal, send: this.send };
  }

  /** Looking for a moved peer listens on the running discovery, or on one started for the look. */
  private async lookNearbyWith(): Promise<Discovery | { interfaces?: string[]; port?: number } | false> {
    const settings = this.options.discovery?.() ?? false;
    if (settings === false) return false;
    return this.discoveryStarting ? ((await this.discoveryStarting) ?? false) : settings;
  }
}
