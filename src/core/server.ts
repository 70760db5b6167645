import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import { blake3Backend } from './blake3';
import { BlockCache } from './block-cache';
import type { Identity } from './identity';
import { PeerShareError, toPeerShareError } from './errors';
import { formatAddress, formatInvite, TokenBook } from './invite';
import { resolveLimits, type Limits } from './limits';
import { fingerprintFromPeerId, shortPeerId, verificationCode } from './peer-id';
import { formatBytes } from './format';
import { sanitizeForDisplay, shownType } from './protocol';
import type { Share } from './share';
import type { TrustStore } from './trust';
import { endWithError, type Admission, type AuthenticatedStream, type StreamRoute } from './transport';
import { TlsListener, type TlsListenerStats } from './transport-tls';
import type { Connection, ReplyWriter, RequestHandler } from './v2/connection';
import { acceptV2, type HelloV2, type Served } from './v2/handshake';
import type { CapabilityMessage } from './v2/messages';
import { ShareProvider } from './v2/share-provider';
import type { SendService, SendSession } from './send';
import { SHARE_CAPABILITY } from './v2/share-messages';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type Logger = (level: LogLevel, message: string) => void;

/** What the sharer answers when a peer that is not trusted asks to connect. */
export type AccessDecision = 'once' | 'always' | 'deny';

export interface AccessRequest {
  id: string;
  /** As the peer calls itself: shown with control characters escaped, never trusted. */
  name: string;
  address: string;
  /** Six digits both sides show; the same on both screens means nobody sits in between. */
  verificationCode: string;
}

export interface PeerServerOptions {
  identity: Identity;
  trust: TrustStore;
  share: Share;
  /** The name other peers see. */
  name: string;
  limits?: Partial<Limits>;
  log?: Logger;
  /**
   * Asked when a peer with no invite requests access (a nearby peer). Without it such requests
   * are refused. No answer within `approvalTimeoutMs` counts as Deny.
   */
  onAccessRequest?: (request: AccessRequest, signal: AbortSignal) => Promise<AccessDecision>;
  /**
   * The block cache manifests come from, or how to open it when first needed (a node shares one
   * between its server and what it sends); default: the one in the identity's home.
   */
  blockCache?: BlockCache | (() => Promise<BlockCache>);
  /** Capability send/1 (send.ts): served to every admitted peer, so either side may offer files. */
  send?: SendService;
}

export interface ConnectedPeer {
  id: string;
  name: string;
  remoteAddress: string;
  /** How it reached us: a direct connection (the LAN, or any address), or through the DHT. */
  route: StreamRoute;
}

/** What the sharer counts; the handshake figures come from its transport (TlsListenerStats). */
export interface ServerStats extends TlsListenerStats {
  /** File bytes sent, all transfers together. */
  fileBytesSent: number;
  requests: number;
}

/**
 * The sharing side. Its transport (TlsListener: TLS 1.3 with mutual authentication) hands it
 * streams whose peer ID is proved; a peer whose certificate is trusted is served; an unknown one
 * may present an invite token once; anyone else gets one PEER_UNTRUSTED error and the connection
 * closes.
 *
 * Who holds what (issue 16, finding 6): a connection that has not proved it belongs here (still
 * in its handshake, or past it with a certificate we do not trust and no token or approval yet)
 * stays in the transport's unauthenticated budget (see TlsListener and Admission). Trusted peers'
 * connections have `maxConnections` to themselves; requests to connect wait in
 * `maxPendingApprovals`. Trust is checked against the trust file on every request, so a revoke
 * holds at once.
 */
export class PeerServer extends EventEmitter {
  readonly limits: Limits;
  readonly tokens = new TokenBook();
  readonly stats: ServerStats;
  private readonly transport: TlsListener;
  private readonly connections = new Set<ServerConnection>();
  /** Connections that hold a trusted peer's slot (`maxConnections`). */
  private readonly trustedConnections = new Set<ServerConnection>();
  /** Requests to connect waiting for the sharer's answer, with their source. */
  private readonly pendingApprovals = new Map<ServerConnection, string>();
  private provider?: Promise<ShareProvider>;
  private boundPort = 0;
  private boundHost = '';
  /** The DHT key this sharer also listens on, while internet reach is on (PeerShareNode sets it): invites carry it. */
  internetKey?: string;
  private readonly log: Logger;

  constructor(readonly options: PeerServerOptions) {
    super();
    this.limits = resolveLimits(options.limits);
    // File bytes and requests are the share provider's figures, read when asked.
    const provided = (): { fileBytesSent: number; requests: number } => this.providerStats ?? { fileBytesSent: 0, requests: 0 };
    this.stats = {
      get fileBytesSent() {
        return provided().fileBytesSent;
      },
      get requests() {
        return provided().requests;
      },
      connectionsAccepted: 0,
      handshakesRateLimited: 0,
      unauthenticatedEvicted: 0,
      oversizedHandshakes: 0,
    };
    // Log lines quote names, paths and messages peers chose: every one is escaped on its way out.
    const log = options.log;
    this.log = log ? (level, message) => log(level, sanitizeForDisplay(message)) : () => undefined;
    this.transport = new TlsListener({
      identity: options.identity,
      limits: this.limits,
      stats: this.stats,
      log: this.log,
      onStream: (stream, admission) => this.acceptStream(stream, admission),
    });
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<{ host: string; port: number }> {
    // BLAKE3 is loaded before we serve, not at the first file asked for: its native binding's
    // loader asks Node for a process report (to tell musl from glibc), which walks every open
    // handle and held the event loop, every peer's requests with it, for 5 s with 200 sockets open.
    blake3Backend();
    this.boundPort = await this.transport.listen(port, host);
    this.boundHost = host;
    return { host, port: this.boundPort };
  }

  get port(): number {
    return this.boundPort;
  }

  /** Addresses a peer can reach us at: the bound host, or every interface when bound to all. */
  addresses(): string[] {
    if (this.boundHost !== '0.0.0.0' && this.boundHost !== '::') return [formatAddress(this.boundHost, this.boundPort)];
    const external: string[] = [];
    const internal: string[] = [];
    for (const infos of Object.values(os.networkInterfaces())) {
      for (const info of infos ?? []) {
        if (info.family !== 'IPv4' && this.boundHost === '0.0.0.0') continue;
        if (info.family === 'IPv6' && info.address.startsWith('fe80')) continue;
        (info.internal ? internal : external).push(formatAddress(info.address, this.boundPort));
      }
    }
    return [...external, ...internal];
  }

  /** A one-line invite; its token lets `uses` new peers pair within `ttlMs`. */
  createInvite(options: { ttlMs?: number; uses?: number } = {}): string {
    const token = this.tokens.issue({ ttlMs: options.ttlMs ?? 60 * 60_000, uses: options.uses ?? 1 });
    return formatInvite({ peerId: this.options.identity.peerId, addresses: this.addresses(), dht: this.internetKey, token, name: this.options.name });
  }

  connectedPeers(): ConnectedPeer[] {
    const peers: ConnectedPeer[] = [];
    for (const c of this.connections) if (c.peer) peers.push(c.peer);
    return peers;
  }

  /** Closes every connection of a peer, e.g. after its trust was revoked. */
  disconnectPeer(id: string): void {
    for (const c of this.connections) if (c.peer?.id === id) c.close();
  }

  async close(): Promise<void> {
    this.tokens.revokeAll();
    await this.transport.close(() => {
      for (const c of this.connections) c.close();
    });
  }

  private providerStats?: { fileBytesSent: number; requests: number };

  /** @internal The one provider of share/1 for every connection, with its block cache (opened on first use). */
  shareProvider(): Promise<ShareProvider> {
    this.provider ??= (async () => {
      const { identity, share } = this.options;
      const given = this.options.blockCache;
      const blockCache =
        typeof given === 'function' ? await given() : (given ?? (await BlockCache.open(identity.home, this.limits, { log: (message) => this.log('warn', message) })));
      const provider = new ShareProvider({ share, blockCache, limits: this.limits });
      this.providerStats = provider.stats;
      return provider;
    })();
    return this.provider;
  }

  /**
   * @internal May this certificate read our share, as the trust file says now? Our own may
   * (another window). A trust file that cannot be read trusts nobody.
   */
  mayRead(peerId: string): boolean {
    if (peerId === this.options.identity.peerId) return true;
    try {
      return this.options.trust.allowsReader(peerId);
    } catch (err) {
      this.log('error', `Refusing ${peerId}: ${toPeerShareError(err, 'IO_ERROR').message}`);
      return false;
    }
  }

  /**
   * @internal Gives a connection a trusted peer's slot, taking it out of the unauthenticated
   * budget or the approvals; refuses with BUSY when the server or this peer has none free.
   */
  takeTrustedSlot(connection: ServerConnection, peerId: string): PeerShareError | undefined {
    if (this.trustedConnections.has(connection)) return undefined;
    if (this.trustedConnections.size >= this.limits.maxConnections) {
      return new PeerShareError('BUSY', 'Too many connections; try again shortly.');
    }
    let mine = 0;
    for (const c of this.trustedConnections) if (c.peerId === peerId) mine++;
    if (mine >= this.limits.maxConnectionsPerPeer) return new PeerShareError('BUSY', 'Too many connections from this peer; try again shortly.');
    this.leaveBudgets(connection);
    this.trustedConnections.add(connection);
    return undefined;
  }

  /**
   * @internal Moves a request to connect from the unauthenticated budget to the approvals, if
   * there is room in all and for its source; otherwise BUSY at once, and nobody is asked.
   */
  takeApprovalSlot(connection: ServerConnection, source: string): PeerShareError | undefined {
    let fromSource = 0;
    for (const s of this.pendingApprovals.values()) if (s === source) fromSource++;
    if (this.pendingApprovals.size >= this.limits.maxPendingApprovals || fromSource >= this.limits.maxPendingApprovalsPerSource) {
      return new PeerShareError('BUSY', 'Too many requests to connect are waiting for an answer; try again later.');
    }
    this.leaveBudgets(connection);
    this.pendingApprovals.set(connection, source);
    return undefined;
  }

  /** @internal A connection gives back whatever slot it held (it closed, or moves on). */
  leaveBudgets(connection: ServerConnection): void {
    connection.admission.leave();
    this.trustedConnections.delete(connection);
    this.pendingApprovals.delete(connection);
  }

  /**
   * Serves a stream its transport proved, on a connection of its own until it closes. The TLS
   * listener hands over each of its streams here; another transport (or a test's in-memory pair)
   * may too. Without an admission the stream is in no budget of strangers: its transport bounds
   * them itself.
   */
  acceptStream(stream: AuthenticatedStream, admission: Admission = outsideAnyBudget(stream)): void {
    const connection = new ServerConnection(this, stream, admission, this.log);
    this.connections.add(connection);
    stream.stream.once('close', () => {
      this.connections.delete(connection);
      this.leaveBudgets(connection);
      if (connection.peer) this.emit('peer-disconnected', connection.peer);
    });
  }
}

/** The admission of a stream whose transport keeps no budget of strangers: nothing to leave or give back. */
function outsideAnyBudget(stream: AuthenticatedStream): Admission {
  return { source: stream.host || stream.address, refundHandshake: () => undefined, leave: () => undefined, onEvict: () => undefined };
}

/**
 * One accepted stream: the v2 handshake (acceptV2) with the sharer's rules as its `admit`
 * (docs/protocol-v2.md 4.4: trust, invite tokens, asking the sharer, slots), then a v2
 * Connection that serves `share/1` to a peer that may read us.
 */
class ServerConnection {
  peer?: ConnectedPeer;
  /** The peer ID its transport proved. */
  readonly peerId: string;
  private connection?: Connection;
  private closed = false;
  private paired = false;
  /** Aborted when this connection ends: a prompt still open is told to go away. */
  private readonly closing = new AbortController();
  /** Allowed once by the sharer: for this connection only, not in the trust file. */
  private allowedOnce = false;
  /** send/1 on this connection, once admitted. */
  private sendSession?: SendSession;
  private peerCapabilities: string[] = [];

  constructor(
    private readonly server: PeerServer,
    private readonly remote: AuthenticatedStream,
    /** Its place in the unauthenticated budget, until it proves it belongs here. */
    readonly admission: Admission,
    private readonly log: Logger,
  ) {
    this.peerId = remote.peerId;
    remote.stream.on('error', (err) => {
      this.log('debug', `Connection error from ${this.describe()}: ${err.message}`);
      this.close();
    });
    remote.stream.on('close', () => this.close());
    // A trusted certificate leaves the unauthenticated budget now, before its hello. Its
    // handshake is given back: the rate binds strangers, and a peer that opens a connection per
    // download is never refused.
    if (server.mayRead(this.peerId)) {
      admission.refundHandshake();
      const busy = server.takeTrustedSlot(this, this.peerId);
      if (busy) {
        this.fail(busy);
        return;
      }
    } else {
      admission.onEvict(() => this.fail(new PeerShareError('BUSY', 'Too many connections are waiting to authenticate; try again shortly.')));
    }
    acceptV2(remote, {
      name: server.options.name,
      ownPeerId: server.options.identity.peerId,
      limits: server.limits,
      admit: (hello, signal) => this.admit(hello, signal),
    }).then(
      ({ connection }) => this.ready(connection),
      (err: unknown) => {
        if (this.closed) return;
        const coded = toPeerShareError(err, 'PROTOCOL_ERROR');
        this.log(coded.code === 'TIMEOUT' || coded.code === 'CONNECTION_CLOSED' ? 'debug' : 'warn', `Closing ${this.describe()}: ${coded.code} ${coded.message}`);
        this.closed = true;
        this.server.leaveBudgets(this);
      },
    );
  }

  close(): void {
    this.closing.abort();
    if (this.closed && !this.connection) return void this.remote.stream.destroy();
    this.closed = true;
    const connection = this.connection;
    this.connection = undefined;
    if (connection) connection.close();
    else this.remote.stream.destroy();
  }

  /** The peer as a sharer's log names it: its chosen name, escaped and short, and its short ID. */
  private who(): string {
    if (!this.peer) return this.describe();
    return `${sanitizeForDisplay(this.peer.name).slice(0, 64) || 'A peer'} (${shortPeerId(this.peer.id)})`;
  }

  private describe(): string {
    return `${this.peer?.name ? `${this.peer.name} ` : ''}${this.remote.address}`;
  }

  /** Refuses before the handshake is through (BUSY, evicted): one error in the handshake's frame, then the end. */
  private fail(err: PeerShareError): void {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    // Its goodbye may take a second to flush; it holds no slot meanwhile.
    this.server.leaveBudgets(this);
    this.log(err.code === 'TIMEOUT' ? 'debug' : 'warn', `Closing ${this.describe()}: ${err.code} ${err.message}`);
    if (this.connection) this.connection.close(err);
    else endWithError(this.remote.stream, err);
  }

  /** Spec 4.4 rows 4-7, for a well-formed hello that offers version 2. */
  private async admit(hello: HelloV2, signal: AbortSignal): Promise<{ serve: Served; paired: boolean }> {
    const { trust } = this.server.options;
    const id = this.peerId;
    const name = sanitizeForDisplay(hello.name).slice(0, 100);
    const provider = await this.server.shareProvider();
    if (this.server.mayRead(id)) {
      const busy = this.server.takeTrustedSlot(this, id);
      if (busy) throw busy;
      return this.admitted(provider, hello, name, false);
    }
    if (hello.token === undefined && hello.request && this.server.options.onAccessRequest) {
      const decision = await this.askSharer(id, name, signal);
      this.allowedOnce = decision === 'once';
      return this.admitted(provider, hello, name, decision === 'always');
    }
    if (hello.token === undefined) throw new PeerShareError('PEER_UNTRUSTED');
    // Room first, so a BUSY sharer does not use up the invite.
    const busy = this.server.takeTrustedSlot(this, id);
    if (busy) throw busy;
    if (!this.server.tokens.redeem(hello.token)) throw new PeerShareError('TOKEN_INVALID');
    // Pairing is acknowledged only once it is on disk.
    await trust.addReader({ id, name });
    return this.admitted(provider, hello, name, true);
  }

  /** A nearby peer asks to connect: the sharer decides, within a time limit. */
  private async askSharer(id: string, name: string, signal: AbortSignal): Promise<'once' | 'always'> {
    // Bounded in all and per source; beyond, BUSY at once rather than another prompt.
    const busy = this.server.takeApprovalSlot(this, this.admission.source);
    if (busy) throw busy;
    const { identity, trust, onAccessRequest } = this.server.options;
    const request: AccessRequest = { id, name, address: this.remote.host, verificationCode: verificationCode(identity.fingerprint, fingerprintFromPeerId(id)) };
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.server.limits.approvalTimeoutMs);
    });
    // The prompt goes away when the dialer hangs up, the connection ends or the time is up.
    const prompt = new AbortController();
    const goAway = (): void => prompt.abort();
    signal.addEventListener('abort', goAway, { once: true });
    this.closing.signal.addEventListener('abort', goAway, { once: true });
    const asked = onAccessRequest!(request, prompt.signal).catch(() => 'deny' as const);
    const decision = await Promise.race([asked, timedOut]).finally(() => {
      clearTimeout(timer);
      signal.removeEventListener('abort', goAway);
      this.closing.signal.removeEventListener('abort', goAway);
    });
    if (decision === 'timeout') prompt.abort();
    if (decision === 'timeout') throw new PeerShareError('ACCESS_DENIED', 'The sharer did not answer in time.');
    if (decision === 'deny') throw new PeerShareError('ACCESS_DENIED', 'The sharer declined the request.');
    if (decision === 'always') await trust.addReader({ id, name });
    if (signal.aborted) throw signal.reason instanceof PeerShareError ? signal.reason : new PeerShareError('CONNECTION_CLOSED');
    const full = this.server.takeTrustedSlot(this, id);
    if (full) throw full;
    this.log('info', `${name} (${id}) allowed ${decision === 'always' ? 'always' : 'once'}`);
    return decision;
  }

  /** What an admitted peer is served: share/1, its requests logged, its trust checked on each. */
  private admitted(provider: ShareProvider, hello: HelloV2, name: string, paired: boolean): { serve: Served; paired: boolean } {
    const id = this.peerId;
    this.peer = { id, name, remoteAddress: this.remote.host, route: this.remote.route ?? 'direct' };
    this.paired = paired;
    const handler = provider.handler({ peerId: id, peerFrameBytes: hello.frame, stillAllowed: () => this.allowedOnce || this.server.mayRead(id) });
    const logged: RequestHandler = async (request, reply, signal) => {
      let bytes = 0;
      const counted: ReplyWriter = {
        message: (message) => reply.message(message),
        data: (chunk) => {
          bytes += chunk.length;
          return reply.data(chunk);
        },
      };
      try {
        const end = await handler(request, counted, signal);
        this.logRequest(request, end, bytes);
        return end;
      } catch (err) {
        const coded = toPeerShareError(err, 'INTERNAL');
        // A peer that lost all trust loses the connection too, not only this request.
        if (coded.code === 'PEER_UNTRUSTED') setImmediate(() => this.fail(coded));
        if (coded.code === 'INTERNAL' || coded.code === 'IO_ERROR') {
          this.log('error', `Request ${shownType(request.type)} from ${this.describe()} failed: ${coded.detail ?? coded.message}`);
        }
        throw coded;
      }
    };
    this.peerCapabilities = Object.keys(hello.caps);
    this.sendSession = this.server.options.send?.session(id);
    return { serve: { [SHARE_CAPABILITY]: { params: provider.params(), handler: logged }, ...this.sendSession?.served() }, paired };
  }

  private ready(connection: Connection): void {
    if (this.closed) return void connection.close();
    this.connection = connection;
    connection.onClose(() => this.close());
    this.sendSession?.attach(connection, { name: this.peer?.name ?? '', capabilities: this.peerCapabilities });
    this.log('info', `${this.paired ? 'Paired with' : 'Connected:'} ${this.who()} from ${this.remote.host || '?'}`);
    this.server.emit(this.paired ? 'peer-paired' : 'peer-connected', this.peer);
  }

  /** v1's log lines: who took which file or folder, and how many bytes. */
  private logRequest(request: CapabilityMessage, end: unknown, bytes: number): void {
    const remotePath = typeof request.path === 'string' ? request.path : '';
    if (request.type === 'share.read') {
      this.log('info', `${this.who()} took ${shownPath(remotePath)} (${formatBytes(bytes)})`);
    } else if (request.type === 'share.tree') {
      const count = (end as { count?: unknown } | undefined)?.count;
      const files = typeof count === 'number' ? count : 0;
      this.log('info', `${this.who()} took the folder ${shownPath(remotePath)} (${files} file${files === 1 ? '' : 's'}, ${formatBytes(bytes)})`);
    }
  }
}

/** A path a peer asked for, as a log shows it: escaped and bounded. */
function shownPath(remotePath: string): string {
  const shown = sanitizeForDisplay(remotePath);
  return shown.length > 120 ? `${shown.slice(0, 119)}…` : shown;
}
