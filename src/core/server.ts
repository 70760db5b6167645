import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import * as os from 'node:os';
import type { Identity } from './identity';
import { PeerShareError, toPeerShareError } from './errors';
import { FRAME_HEADER_BYTES, FrameParser, encodeMessage, writeDataHeader } from './frames';
import { formatAddress, formatInvite, TokenBook } from './invite';
import { FramePool } from './frame-pool';
import { HashCache, sameVersion } from './hash-cache';
import { resolveLimits, SMALL_FILE_BYTES, SMALL_FILE_PIPELINE, TRANSFER_CHUNK_BYTES, type Limits } from './limits';
import { fingerprintFromPeerId, shortPeerId, verificationCode } from './peer-id';
import { formatBytes } from './format';
import { PROTOCOL_VERSIONS, parseHello, parseRequest, sanitizeForDisplay, type Request } from './protocol';
import type { Share, WalkItem } from './share';
import type { TrustStore } from './trust';
import { endWithError, type Admission, type AuthenticatedStream } from './transport';
import { TlsListener, type TlsListenerStats } from './transport-tls';

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
}

export interface ConnectedPeer {
  id: string;
  name: string;
  remoteAddress: string;
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
  readonly stats: ServerStats = {
    fileBytesSent: 0,
    connectionsAccepted: 0,
    requests: 0,
    handshakesRateLimited: 0,
    unauthenticatedEvicted: 0,
    oversizedHandshakes: 0,
  };
  readonly hashCache: HashCache;
  private readonly transport: TlsListener;
  private readonly connections = new Set<ServerConnection>();
  /** Connections that hold a trusted peer's slot (`maxConnections`). */
  private readonly trustedConnections = new Set<ServerConnection>();
  /** Requests to connect waiting for the sharer's answer, with their source. */
  private readonly pendingApprovals = new Map<ServerConnection, string>();
  private activeRequests = 0;
  private readonly requestsByPeer = new Map<string, number>();
  private boundPort = 0;
  private boundHost = '';
  private readonly log: Logger;

  constructor(readonly options: PeerServerOptions) {
    super();
    this.limits = resolveLimits(options.limits);
    this.hashCache = new HashCache(this.limits.hashCacheEntries);
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
    return formatInvite({ peerId: this.options.identity.peerId, addresses: this.addresses(), token, name: this.options.name });
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

  /** @internal Takes a request slot, if both the server and this peer have one free. */
  tryStartRequest(peerId: string): boolean {
    const mine = this.requestsByPeer.get(peerId) ?? 0;
    if (this.activeRequests >= this.limits.maxConcurrentRequests || mine >= this.limits.maxRequestsPerPeer) return false;
    this.activeRequests++;
    this.requestsByPeer.set(peerId, mine + 1);
    this.stats.requests++;
    return true;
  }

  /** @internal */
  endRequest(peerId: string): void {
    this.activeRequests--;
    const mine = (this.requestsByPeer.get(peerId) ?? 1) - 1;
    if (mine > 0) this.requestsByPeer.set(peerId, mine);
    else this.requestsByPeer.delete(peerId);
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

/** During a transfer, trust is re-checked at most this often (see checkStillTrusted). */
const TRUST_RECHECK_MS = 50;

class ServerConnection {
  peer?: ConnectedPeer;
  /** File bytes this connection has sent, for the sharer's log. */
  private sentBytes = 0;
  private state: 'hello' | 'approval' | 'ready' | 'closed' = 'hello';
  private readonly closing = new AbortController();
  private busy = false;
  private next?: Request;
  private readonly parser: FrameParser;
  private timer?: NodeJS.Timeout;
  private messageTimer?: NodeJS.Timeout;
  private readonly limits: Limits;
  /** The peer ID its transport proved. */
  readonly peerId: string;
  /** The bytes to and from the peer; the transport below encrypts them. */
  private readonly stream: Duplex;
  /** Allowed once by the sharer: for this connection only, not in the trust file. */
  private allowedOnce = false;
  /** When trust was last checked against the file (performance.now()). */
  private trustCheckedAt = 0;

  constructor(
    private readonly server: PeerServer,
    private readonly remote: AuthenticatedStream,
    /** Its place in the unauthenticated budget, until it proves it belongs here. */
    readonly admission: Admission,
    private readonly log: Logger,
  ) {
    this.limits = server.limits;
    this.stream = remote.stream;
    this.peerId = remote.peerId;
    this.stream.on('error', (err) => {
      this.log('debug', `Connection error from ${this.describe()}: ${err.message}`);
      this.close();
    });
    this.stream.on('close', () => this.close());
    this.parser = new FrameParser(
      this.limits,
      {
        onMessage: (m) => this.onMessage(m),
        onData: () => undefined, // refused by the parser: clients never send data
        onFrameProgress: (inFrame) => this.onFrameProgress(inFrame),
      },
      false,
    );
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
    this.setTimer(this.limits.helloTimeoutMs, 'hello');
    this.stream.on('data', (chunk: Buffer) => {
      try {
        this.parser.push(chunk);
      } catch (err) {
        this.fail(toPeerShareError(err, 'PROTOCOL_ERROR'));
      }
    });
  }

  close(): void {
    this.closing.abort();
    this.state = 'closed';
    clearTimeout(this.timer);
    clearTimeout(this.messageTimer);
    // Also ends a connection still flushing its goodbye after fail().
    this.stream.destroy();
  }

  /** The peer as a sharer's log names it: its chosen name, escaped and short, and its short ID. */
  private who(): string {
    if (!this.peer) return this.describe();
    return `${sanitizeForDisplay(this.peer.name).slice(0, 64) || 'A peer'} (${shortPeerId(this.peer.id)})`;
  }

  private describe(): string {
    return `${this.peer?.name ? `${this.peer.name} ` : ''}${this.remote.address}`;
  }

  private setTimer(ms: number, what: string): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fail(new PeerShareError('TIMEOUT', `No ${what} within ${ms} ms; closing.`)), ms);
    this.timer.unref();
  }

  private onFrameProgress(inFrame: boolean): void {
    clearTimeout(this.messageTimer);
    if (inFrame) {
      // An absolute deadline per message: a byte every few seconds does not keep a connection alive.
      this.messageTimer = setTimeout(
        () => this.fail(new PeerShareError('TIMEOUT', 'A message took too long to arrive; closing.')),
        this.limits.messageTimeoutMs,
      );
      this.messageTimer.unref();
    }
  }

  /** Sends an error and closes: for anything that breaks the protocol or trust. */
  private fail(err: PeerShareError): void {
    if (this.state === 'closed') return;
    // Its goodbye may take a second to flush; it holds no slot meanwhile.
    this.server.leaveBudgets(this);
    this.log(err.code === 'TIMEOUT' ? 'debug' : 'warn', `Closing ${this.describe()}: ${err.code} ${err.message}`);
    this.closing.abort();
    this.state = 'closed';
    clearTimeout(this.timer);
    clearTimeout(this.messageTimer);
    endWithError(this.stream, err);
  }

  private onMessage(m: Record<string, unknown>): void {
    if (this.state === 'closed') return;
    try {
      if (this.state === 'hello') {
        this.onHello(m);
        return;
      }
      if (this.state === 'approval') throw new PeerShareError('PROTOCOL_ERROR', 'Wait for the sharer’s answer before sending requests.');
      const request = parseRequest(m);
      if (this.busy) {
        // The client may send its next request as soon as it has read our last byte, which can
        // be before our write has drained here. One waits; a second is a protocol error.
        if (this.next) throw new PeerShareError('PROTOCOL_ERROR', 'One request at a time per connection.');
        this.next = request;
        return;
      }
      this.start(request);
    } catch (err) {
      this.fail(toPeerShareError(err, 'PROTOCOL_ERROR'));
    }
  }

  /**
   * Throws PEER_UNTRUSTED once the peer is revoked. Checked on every request, so a revoke (`trust
   * rm`, even from another process) refuses the very next one; and during a transfer, between
   * files and chunks, so it also ends one already running. There it is checked at most every
   * TRUST_RECHECK_MS: each check is a stat of the trust file (about 10 µs), which once per small
   * file would slow a folder of 10,000 by some 5 %. Allowed once lasts for this connection: it is
   * in no file.
   */
  private checkStillTrusted(duringTransfer: boolean): void {
    if (this.allowedOnce) return;
    const now = performance.now();
    if (duringTransfer && now - this.trustCheckedAt < TRUST_RECHECK_MS) return;
    this.trustCheckedAt = now;
    if (!this.server.mayRead(this.peerId)) throw new PeerShareError('PEER_UNTRUSTED', 'This peer is no longer trusted by the sharer.');
  }

  private start(request: Request): void {
    try {
      this.checkStillTrusted(false);
    } catch (err) {
      this.fail(err as PeerShareError);
      return;
    }
    if (!this.server.tryStartRequest(this.peerId)) {
      void this.send({ type: 'error', code: 'BUSY', message: 'Too many requests at once; try again shortly.' }).catch(() => undefined);
      return;
    }
    this.busy = true;
    clearTimeout(this.timer);
    void this.serve(request).finally(() => {
      this.server.endRequest(this.peerId);
      this.busy = false;
      const next = this.next;
      this.next = undefined;
      if (this.state !== 'ready') return;
      if (next) this.start(next);
      else this.setTimer(this.limits.idleTimeoutMs, 'request');
    });
  }

  private onHello(m: Record<string, unknown>): void {
    const hello = parseHello(m, this.limits.maxPathBytes);
    const version = Math.max(...hello.versions.filter((v) => (PROTOCOL_VERSIONS as readonly number[]).includes(v)));
    if (!Number.isFinite(version)) {
      throw new PeerShareError('VERSION_UNSUPPORTED', `This peer speaks protocol versions ${PROTOCOL_VERSIONS.join(', ')}.`);
    }
    const { trust } = this.server.options;
    const id = this.peerId;
    const name = sanitizeForDisplay(hello.name).slice(0, 100);
    if (this.server.mayRead(id)) {
      const busy = this.server.takeTrustedSlot(this, id);
      if (busy) throw busy;
      this.afterHello(id, name, version, false);
      return;
    }
    if (hello.token === undefined && hello.request && this.server.options.onAccessRequest) {
      this.askSharer(id, name, version);
      return;
    }
    if (hello.token === undefined) throw new PeerShareError('PEER_UNTRUSTED');
    // Room first, so a BUSY sharer does not use up the invite.
    const busy = this.server.takeTrustedSlot(this, id);
    if (busy) throw busy;
    if (!this.server.tokens.redeem(hello.token)) throw new PeerShareError('TOKEN_INVALID');
    // Pairing is acknowledged only once it is on disk.
    trust.addReader({ id, name }).then(
      () => this.afterHello(id, name, version, true),
      (err: unknown) => this.fail(toPeerShareError(err, 'IO_ERROR')),
    );
    this.state = 'ready';
    clearTimeout(this.timer);
  }

  /** A nearby peer asks to connect: the sharer decides, within a time limit. */
  private askSharer(id: string, name: string, version: number): void {
    // Bounded in all and per source; beyond, BUSY at once rather than another prompt.
    const busy = this.server.takeApprovalSlot(this, this.admission.source);
    if (busy) throw busy;
    this.state = 'approval';
    clearTimeout(this.timer);
    const { identity, trust, onAccessRequest } = this.server.options;
    const fingerprint = fingerprintFromPeerId(id);
    const request: AccessRequest = { id, name, address: this.remote.host, verificationCode: verificationCode(identity.fingerprint, fingerprint) };
    const timedOut = new Promise<'timeout'>((resolve) => {
      this.timer = setTimeout(() => resolve('timeout'), this.limits.approvalTimeoutMs);
    });
    const asked = onAccessRequest!(request, this.closing.signal).catch(() => 'deny' as const);
    void Promise.race([asked, timedOut]).then(async (decision) => {
      clearTimeout(this.timer);
      if (this.state !== 'approval') return;
      if (decision === 'timeout') return this.fail(new PeerShareError('ACCESS_DENIED', 'The sharer did not answer in time.'));
      if (decision === 'deny') return this.fail(new PeerShareError('ACCESS_DENIED', 'The sharer declined the request.'));
      if (decision === 'always') {
        try {
          await trust.addReader({ id, name });
        } catch (err) {
          return this.fail(toPeerShareError(err, 'IO_ERROR'));
        }
      }
      if (this.state !== 'approval') return;
      const full = this.server.takeTrustedSlot(this, id);
      if (full) return this.fail(full);
      this.allowedOnce = decision === 'once';
      this.log('info', `${name} (${id}) allowed ${decision === 'always' ? 'always' : 'once'}`);
      this.afterHello(id, name, version, decision === 'always');
    });
  }

  private afterHello(id: string, name: string, version: number, paired: boolean): void {
    if (this.state === 'closed') return;
    this.state = 'ready';
    this.peer = { id, name, remoteAddress: this.remote.host };
    const { identity, share } = this.server.options;
    this.send({
      type: 'welcome',
      version,
      name: this.server.options.name,
      id: identity.peerId,
      roots: share.roots.map((r) => r.name),
      paired,
    });
    this.setTimer(this.limits.idleTimeoutMs, 'request');
    this.log('info', `${paired ? 'Paired with' : 'Connected:'} ${this.who()} from ${this.remote.host || '?'}`);
    this.server.emit(paired ? 'peer-paired' : 'peer-connected', this.peer);
  }

  private send(message: object): Promise<void> {
    if (this.state === 'closed') return Promise.reject(new PeerShareError('CONNECTION_CLOSED'));
    return this.waitDrain(this.stream.write(encodeMessage(message)));
  }

  /**
   * Sends a DATA frame whose first FRAME_HEADER_BYTES are free for the header; a frame from
   * `pool` goes back to it once the stream has taken its bytes.
   */
  private sendDataFrame(frame: Buffer, pool?: FramePool): Promise<void> {
    if (this.state === 'closed') return Promise.reject(new PeerShareError('CONNECTION_CLOSED'));
    writeDataHeader(frame, frame.length - FRAME_HEADER_BYTES);
    return this.waitDrain(this.stream.write(frame, pool && ((err) => !err && pool.give(frame))));
  }

  /** Back-pressure: wait for the reader, but not forever (a reader that never reads is dropped). */
  private waitDrain(ok: boolean): Promise<void> {
    if (ok) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        this.fail(new PeerShareError('TIMEOUT', 'The peer stopped reading; transfer abandoned.'));
        reject(new PeerShareError('TIMEOUT'));
      }, this.limits.stallTimeoutMs);
      const onDrain = (): void => {
        cleanup();
        resolve();
      };
      const onClose = (): void => {
        cleanup();
        reject(new PeerShareError('CONNECTION_CLOSED'));
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        this.stream.off('drain', onDrain);
        this.stream.off('close', onClose);
      };
      this.stream.on('drain', onDrain);
      this.stream.on('close', onClose);
    });
  }

  private async serve(request: Request): Promise<void> {
    const { share } = this.server.options;
    try {
      switch (request.type) {
        case 'stat':
          await this.send({ type: 'entry', entry: await share.stat(request.path) });
          return;
        case 'list': {
          let count = 0;
          for await (const entries of share.list(request.path)) {
            count += entries.length;
            await this.send({ type: 'entries', entries });
          }
          await this.send({ type: 'end', count });
          return;
        }
        case 'read': {
          const before = this.sentBytes;
          await this.sendFile(request.path, '', request.offset, request.expect);
          const resumed = request.offset > 0 ? `, resumed after ${formatBytes(request.offset)}` : '';
          this.log('info', `${this.who()} took ${shownPath(request.path)} (${formatBytes(this.sentBytes - before)}${resumed})`);
          return;
        }
        case 'tree': {
          const before = this.sentBytes;
          const files = await this.sendTree(request.path);
          this.log('info', `${this.who()} took the folder ${shownPath(request.path)} (${files} file${files === 1 ? '' : 's'}, ${formatBytes(this.sentBytes - before)})`);
          return;
        }
      }
    } catch (err) {
      const coded = toPeerShareError(err, 'INTERNAL');
      if (this.state === 'closed' || coded.code === 'CONNECTION_CLOSED') return;
      if (coded.code === 'PEER_UNTRUSTED') return this.fail(coded);
      if (coded.code === 'INTERNAL' || coded.code === 'IO_ERROR') {
        this.log('error', `Request ${request.type} from ${this.describe()} failed: ${coded.detail ?? coded.message}`);
      }
      // The peer learns the code, never our internal details.
      await this.send({ type: 'error', code: coded.code, message: coded.message }).catch(() => undefined);
    }
  }

  /**
   * Sends a folder as one stream, in the walk's order. Small files are read a few ahead of the
   * stream and each leaves as a single write (header, bytes, hash), so a folder of many small
   * files costs a little more than its bytes; larger files are streamed like a single download.
   */
  private async sendTree(remotePath: string): Promise<number> {
    const { share } = this.server.options;
    const smallLimit = Math.min(SMALL_FILE_BYTES, this.limits.maxDataFrameBytes);
    const ahead: Promise<TreeItem>[] = [];
    let count = 0;
    const emit = async (item: TreeItem): Promise<void> => {
      this.checkStillTrusted(true);
      if (item.kind === 'dir') return this.send({ type: 'dir', path: item.relPath });
      if (item.kind === 'small') {
        await this.sendWhole(item);
        count++;
        return;
      }
      try {
        if (item.kind === 'skipped') throw item.error;
        await this.sendFile(item.remotePath, item.relPath, 0, undefined, true);
        count++;
      } catch (err) {
        const coded = toPeerShareError(err, 'IO_ERROR');
        if (coded.code === 'CONNECTION_CLOSED' || coded.code === 'TIMEOUT' || coded.code === 'PEER_UNTRUSTED' || this.state === 'closed') throw coded;
        await this.send({ type: 'skipped', path: item.relPath, code: coded.code, message: coded.message });
      }
    };
    try {
      for await (const item of share.walk(remotePath)) {
        ahead.push(item.kind === 'dir' ? Promise.resolve(item) : this.readAhead(item, smallLimit));
        if (ahead.length >= SMALL_FILE_PIPELINE) await emit(await ahead.shift()!);
      }
      while (ahead.length > 0) await emit(await ahead.shift()!);
    } finally {
      // readAhead never rejects and holds no descriptor once settled: nothing to close here.
      ahead.length = 0;
    }
    await this.send({ type: 'end', count });
    return count;
  }

  /** Reads a small file whole, or says it must be streamed (sendFile then opens it, checked as any read). */
  private async readAhead(item: WalkItem & { kind: 'file' }, smallLimit: number): Promise<TreeItem> {
    try {
      const whole = this.server.options.share.readWalkedFileSync(item, smallLimit);
      if (whole) return { kind: 'small', relPath: item.relPath, ...whole };
      return { kind: 'large', relPath: item.relPath, remotePath: item.remotePath };
    } catch (err) {
      return { kind: 'skipped', relPath: item.relPath, error: toPeerShareError(err, 'IO_ERROR') };
    }
  }

  /** One small file as a single write: its header, its bytes and its hash. */
  private sendWhole(item: TreeItem & { kind: 'small' }): Promise<void> {
    if (this.state === 'closed') return Promise.reject(new PeerShareError('CONNECTION_CLOSED'));
    const { data } = item;
    const parts = [encodeMessage({ type: 'file', path: item.relPath, size: data.length, mtimeMs: item.mtimeMs, offset: 0 })];
    if (data.length > 0) parts.push(writeDataHeader(Buffer.allocUnsafe(FRAME_HEADER_BYTES), data.length), data);
    parts.push(encodeMessage({ type: 'fileEnd', sha256: createHash('sha256').update(data).digest('hex') }));
    this.server.stats.fileBytesSent += data.length;
    this.sentBytes += data.length;
    return this.waitDrain(this.stream.write(Buffer.concat(parts)));
  }

  /**
   * Streams a file from `offset`. The SHA-256 in the closing message covers the whole file,
   * prefix included, so a resumed download is verified end to end.
   */
  private async sendFile(
    remotePath: string,
    label: string,
    offset: number,
    expect: { size: number; mtimeMs: number } | undefined,
    inTree = false,
  ): Promise<void> {
    const { share } = this.server.options;
    const { handle, stat } = await share.openFile(remotePath);
    try {
      const size = stat.size;
      const mtimeMs = Math.floor(stat.mtimeMs);
      if (expect && (expect.size !== size || expect.mtimeMs !== mtimeMs)) throw new PeerShareError('FILE_CHANGED');
      if (offset > size) throw new PeerShareError('INVALID_ARGUMENT', 'The offset is past the end of the file.');
      const version = await handle.stat({ bigint: true });
      // A file sent before is not hashed again: the receiver checks the bytes against this.
      const known = this.server.hashCache.get(version);
      const hash = known === undefined ? createHash('sha256') : undefined;
      let position = 0;
      const chunk = Math.min(TRANSFER_CHUNK_BYTES, this.limits.maxDataFrameBytes);
      const pool = new FramePool(FRAME_HEADER_BYTES + chunk, 4);
      // Each chunk is read in behind room for its frame header, so header and data leave in one
      // write with no copy.
      const readAt = async (at: number): Promise<Buffer> => {
        const length = Math.min(chunk, size - at);
        const frame = pool.take(FRAME_HEADER_BYTES + length);
        const { bytesRead } = await handle.read(frame, FRAME_HEADER_BYTES, length, at);
        // A file that shrank under us cannot be sent consistently.
        if (bytesRead < length) throw new PeerShareError('FILE_CHANGED');
        return frame;
      };
      if (!hash) position = offset;
      while (position < offset) {
        const frame = await readAt(position);
        const part = frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + Math.min(frame.length - FRAME_HEADER_BYTES, offset - position));
        hash!.update(part);
        position += part.length;
        pool.give(frame);
      }
      await this.send({ type: 'file', path: inTree ? label : remotePath, size, mtimeMs, offset });
      // Read the next chunk while the current one is being encrypted and sent.
      let next: Promise<Buffer> | undefined = position < size ? readAt(position) : undefined;
      while (next) {
        const frame = await next;
        // Checked with no read in flight, so nothing is left pending when it throws.
        this.checkStillTrusted(true);
        const length = frame.length - FRAME_HEADER_BYTES;
        position += length;
        next = position < size ? readAt(position) : undefined;
        next?.catch(() => undefined);
        hash?.update(frame.subarray(FRAME_HEADER_BYTES));
        await this.sendDataFrame(frame, pool);
        this.server.stats.fileBytesSent += length;
        this.sentBytes += length;
      }
      const after = await handle.stat({ bigint: true });
      if (!sameVersion(version, after)) throw new PeerShareError('FILE_CHANGED');
      const sha256 = known ?? hash!.digest('hex');
      if (!known) this.server.hashCache.set(after, sha256);
      await this.send({ type: 'fileEnd', sha256 });
    } finally {
      await handle.close();
    }
  }
}

/** A path a peer asked for, as a log shows it: escaped and bounded. */
function shownPath(remotePath: string): string {
  const shown = sanitizeForDisplay(remotePath);
  return shown.length > 120 ? `${shown.slice(0, 119)}…` : shown;
}

/** A folder download's next item, read ahead of the stream. */
type TreeItem =
  | { kind: 'dir'; relPath: string }
  | { kind: 'small'; relPath: string; data: Buffer; mtimeMs: number }
  | { kind: 'large'; relPath: string; remotePath: string }
  | { kind: 'skipped'; relPath: string; error: PeerShareError };
