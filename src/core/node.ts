import { connectToPeer, type ConnectOptions, type PeerConnection } from './client';
import { Discovery, type DiscoveryOptions } from './discovery';
import { PeerShareError, toPeerShareError } from './errors';
import { loadOrCreateIdentity, type Identity } from './identity';
import { looksLikeInvite, parseAddress, parseInvite } from './invite';
import { resolveLimits, type Limits } from './limits';
import { connectToKnownPeer, isUnreachable, listenOnPort, type PortChoice } from './reach';
import { PeerServer, type PeerServerOptions } from './server';
import { sanitizeForDisplay } from './protocol';
import { Share, type ShareOptions } from './share';
import { DhtNetwork, type DhtListener, type DhtNetworkOptions } from './transport-dht';
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
  /**
   * Internet reach (HyperDHT, issue 14): where to meet the DHT, read when it starts; false or
   * absent: off. The bootstrap nodes must be named, a list of HOST:PORT or 'public'.
   */
  internet?: () => Pick<DhtNetworkOptions, 'bootstrap' | 'host' | 'port'> | false;
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
  /** Also listen on the DHT, so peers beyond the LAN reach this share (internet reach must be on). */
  internet?: boolean;
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
  /** The DHT key it listens on when internet reach is on (its invites carry it). */
  internetKey?: string;
  /** Why it does not listen on the DHT though asked to (the share runs on the LAN regardless). */
  internetError?: PeerShareError;
  stop(): Promise<void>;
}

export class PeerShareNode {
  private discoveryStarting?: Promise<Discovery | undefined>;
  /** The DHT node, started on first use, and the settings it was started with (other settings: a new node). */
  private internetStarting?: { settings: string; network: Promise<DhtNetwork> };
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
      const dht = invite.dht ? await this.internetForDialing() : undefined;
      try {
        return { conn: await connectToPeer({ ...base, addresses: invite.addresses, expectedPeerId: invite.peerId, token: invite.token, dhtKey: invite.dht, dht }) };
      } catch (err) {
        // The invite offered a route we did not take: say so, where the person can act on it.
        const coded = toPeerShareError(err, 'CONNECTION_FAILED');
        if (!invite.dht || dht || !isUnreachable(coded)) throw coded;
        throw new PeerShareError(coded.code, `${coded.message} The invite also offers internet reach (HyperDHT); turn it on to try that way.`, { detail: coded.detail, cause: coded });
      }
    }
    if (parseAddress(text)) return { conn: await connectToPeer({ ...base, addresses: [text] }) };
    const peer = this.trust.find(text);
    if (!peer) throw new PeerShareError('UNKNOWN_PEER', `No trusted peer matches "${target}". Use an invite the first time.`);
    const known = [...peer.addresses];
    const conn = await this.connectToPeer(peer.id, options);
    return conn.route === 'dht' || known.includes(conn.address) ? { conn } : { conn, movedFrom: known };
  }

  /** A trusted peer by ID: where it was, at its host's default port, or where it announces itself. */
  async connectToPeer(peerId: string, options: { signal?: AbortSignal; lookNearby?: boolean } = {}): Promise<PeerConnection> {
    const discovery = options.lookNearby === false ? false : await this.lookNearbyWith();
    const dht = this.trust.get(peerId)?.dht ? await this.internetForDialing() : undefined;
    return connectToKnownPeer({ ...this.connectOptions(options.signal), peerId, defaultPort: this.options.defaultPort, discovery, dht });
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
    let onDht: DhtListener | undefined;
    let internetError: PeerShareError | undefined;
    if (start.internet) {
      try {
        const network = await this.internet();
        if (!network) throw new PeerShareError('INVALID_ARGUMENT', 'Internet reach is not set up: name its bootstrap nodes first.');
        const log = this.options.log;
        onDht = await network.listen({
          identity: this.identity,
          limits,
          stats: server.stats,
          log: (level, message) => log?.(level, sanitizeForDisplay(message)),
          onStream: (stream, admission) => server.acceptStream(stream, admission),
        });
        server.internetKey = onDht.publicKey;
      } catch (err) {
        internetError = toPeerShareError(err, 'CONNECTION_FAILED');
        this.options.log?.('warn', `Sharing on the LAN only: ${internetError.message}`);
      }
    }
    const active: ActiveShare = {
      server,
      share,
      port,
      defaultPortInUse,
      announced: discovery !== undefined,
      ...(onDht ? { internetKey: onDht.publicKey } : {}),
      ...(internetError ? { internetError } : {}),
      stop: async () => {
        if (!this.shares.delete(active)) return;
        if (active.announced) discovery?.stopAnnouncing();
        server.internetKey = undefined;
        // The DHT listener starts closing first: from then on it hands no stream to the server,
        // so none finishing its handshake meanwhile reaches a server already stopped.
        const leavingDht = onDht?.close();
        await server.close();
        await leavingDht;
      },
    };
    this.shares.add(active);
    return active;
  }

  /**
   * Internet reach, started on first use and shared by sharing and connecting: undefined when it
   * is off (not set up). Throws when it is set up but cannot start here (CONNECTION_FAILED saying
   * why: the library did not load) or its settings are wrong (INVALID_ARGUMENT).
   */
  async internet(): Promise<DhtNetwork | undefined> {
    const settings = this.options.internet?.() ?? false;
    // Turned off, or set to other bootstrap nodes: the node started before goes (the editor
    // restarts its share on such a change, so nothing listens on it any more).
    const key = settings === false ? undefined : JSON.stringify(settings);
    if (this.internetStarting && this.internetStarting.settings !== key) await this.stopInternet();
    if (settings === false || key === undefined) return undefined;
    const starting = (this.internetStarting ??= { settings: key, network: Promise.resolve().then(() => DhtNetwork.create(settings)) });
    try {
      return await starting.network;
    } catch (err) {
      if (this.internetStarting === starting) this.internetStarting = undefined;
      throw err;
    }
  }

  /** Stops the DHT node, if one was started (a share listening on it stops hearing from the DHT). */
  async stopInternet(): Promise<void> {
    const internet = this.internetStarting;
    this.internetStarting = undefined;
    await (await internet?.network.catch(() => undefined))?.close();
  }

  /** Stops every share, discovery and internet reach. */
  async close(): Promise<void> {
    await Promise.all([...this.shares].map((s) => s.stop()));
    await this.stopDiscovery();
    await this.stopInternet();
  }

  /** Internet reach for a connection that may use it: when it cannot start, the LAN alone (and the log says why). */
  private async internetForDialing(): Promise<DhtNetwork | undefined> {
    try {
      return await this.internet();
    } catch (err) {
      this.options.log?.('warn', `Connecting on the LAN only: ${toPeerShareError(err, 'CONNECTION_FAILED').message}`);
      return undefined;
    }
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
