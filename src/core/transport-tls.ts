import type { X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { PeerShareError, toPeerShareError } from './errors';
import type { Identity } from './identity';
import { formatAddress, parseAddress } from './invite';
import { DEFAULT_LIMITS, type Limits } from './limits';
import { peerIdOfCert } from './peer-id';
import type { Logger } from './server';
import { TLS_OPTIONS } from './tls-options';
import { endWithError, type Admission, type AuthenticatedStream } from './transport';
import { TokenBucket } from './token-bucket';

/*
 * The first transport: TLS 1.3 over TCP, each side presenting one self-signed certificate whose
 * fingerprint is its peer ID (docs/protocol-v2.md 2.1). This is the one module of the core that
 * calls into node:tls; everything past it sees an AuthenticatedStream (transport.ts). Named by
 * what it carries, so a later transport (transport-hyperdht.ts) sits beside it.
 */

export interface HandshakeOptions {
  identity: Identity;
  /** `host:port`. */
  address: string;
  /** The handshake must finish within this time (default: the handshake limit, 10 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Dials `address` and completes a TLS 1.3 handshake with our certificate, sending nothing after
 * it: returns the stream and the peer ID of the certificate the other end presented. Self-signed
 * peers: the caller compares the ID with the one it expects before it sends a single byte.
 * Coded errors: INVALID_ARGUMENT, TIMEOUT, CANCELLED, CONNECTION_FAILED, PEER_MISMATCH (no certificate).
 */
export function dialTls(options: HandshakeOptions): Promise<AuthenticatedStream> {
  const parsed = typeof options.address === 'string' ? parseAddress(options.address) : undefined;
  if (!parsed) throw new PeerShareError('INVALID_ARGUMENT', `Not an address (host:port): ${JSON.stringify(String(options.address).slice(0, 80))}`);
  const timeoutMs = options.timeoutMs ?? DEFAULT_LIMITS.handshakeTimeoutMs;
  if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new PeerShareError('INVALID_ARGUMENT', `The handshake timeout must be a positive number of milliseconds, got ${String(timeoutMs)}.`);
  }
  const { identity, signal } = options;
  if (signal?.aborted) return Promise.reject(new PeerShareError('CANCELLED'));
  const socket = tls.connect({
    ...TLS_OPTIONS,
    host: parsed.host,
    port: parsed.port,
    key: identity.keyPem,
    cert: identity.certPem,
    // Self-signed peers: the certificate's ID is the check, made by the caller.
    rejectUnauthorized: false,
    servername: undefined,
  });
  return completeDial(socket, { address: options.address, host: parsed.host, timeoutMs, signal });
}

/**
 * TLS 1.3 as the dialer over a stream another transport opened (HyperDHT's, transport-dht.ts):
 * the same certificate, settings and checks as dialTls, so the peer ID is proved exactly as over
 * TCP and the other transport's own keys decide nothing. `address` and `host` are for display.
 */
export function dialTlsOver(raw: Duplex, options: { identity: Identity; address: string; host: string; timeoutMs: number; signal?: AbortSignal }): Promise<AuthenticatedStream> {
  const { identity, signal } = options;
  if (signal?.aborted) {
    raw.destroy();
    return Promise.reject(new PeerShareError('CANCELLED'));
  }
  const socket = tls.connect({ ...TLS_OPTIONS, socket: raw, key: identity.keyPem, cert: identity.certPem, rejectUnauthorized: false, servername: undefined });
  // As over TCP: the peer's end ends ours (a TLS socket over a stream inherits that stream's half-open setting).
  socket.allowHalfOpen = false;
  return completeDial(socket, options);
}

/** The dialer's handshake on `socket`, within `timeoutMs`: the stream and the peer ID its one certificate proves. */
function completeDial(socket: tls.TLSSocket, options: { address: string; host: string; timeoutMs: number; signal?: AbortSignal }): Promise<AuthenticatedStream> {
  const { address, timeoutMs, signal } = options;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new PeerShareError('TIMEOUT', `No TLS handshake with ${address} within ${timeoutMs} ms.`)), timeoutMs);
    const onAbort = (): void => fail(new PeerShareError('CANCELLED'));
    signal?.addEventListener('abort', onAbort, { once: true });
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
    };
    function fail(err: PeerShareError): void {
      done();
      socket.on('error', () => undefined); // late errors of a socket we gave up on
      socket.destroy();
      reject(err);
    }
    const onError = (err: Error): void => fail(toPeerShareError(err, 'CONNECTION_FAILED'));
    const onClose = (): void => fail(new PeerShareError('CONNECTION_FAILED', `The peer at ${address} closed the connection during the handshake.`));
    socket.once('error', onError);
    socket.once('close', onClose);
    socket.once('secureConnect', () => {
      // One self-signed certificate, as the acceptor demands of us (spec 2.1): a chain from a
      // hostile sharer is refused here, before anything else looks at it.
      const cert = singleCertificate(socket);
      if (cert === 'chain') return fail(new PeerShareError('PEER_UNTRUSTED', `The peer at ${address} presented a certificate chain; PeerShare peers present one self-signed certificate.`));
      if (cert === 'none') return fail(new PeerShareError('PEER_MISMATCH', `The peer at ${address} presented no certificate.`));
      done();
      // Requests and answers are small writes each waiting on the other: no Nagle delay.
      socket.setNoDelay(true);
      resolve({ stream: socket, peerId: peerIdOfCert(cert.raw), address, host: options.host, side: 'dialer' });
    });
  });
}

/** What the TLS front counts, for the sharer's stats (ServerStats). */
export interface TlsListenerStats {
  /** TLS handshakes completed. */
  connectionsAccepted: number;
  /** Sockets closed before any TLS work because their source started handshakes too fast. */
  handshakesRateLimited: number;
  /** Unauthenticated connections closed to make room for newer ones. */
  unauthenticatedEvicted: number;
  /** Handshakes refused for bringing more than `maxHandshakeBytes` (a certificate chain, say). */
  oversizedHandshakes: number;
}

export interface TlsListenerOptions {
  identity: Identity;
  limits: Limits;
  /** Counted into as things happen (the sharer's own stats object). */
  stats: TlsListenerStats;
  log: Logger;
  /** A connection completed its handshake and proved a certificate: the core takes it from here. */
  onStream(stream: AuthenticatedStream, admission: Admission): void;
}

/**
 * The accepting side: a TLS 1.3 server with mutual authentication behind a plain TCP front.
 *
 * Who holds what before authentication (issue 16, finding 6): a connection still in its TLS
 * handshake, or past it with a certificate the core does not trust yet, is *unauthenticated* and
 * lives in a small budget of its own, per source and in all; when that is full the oldest goes,
 * so a new connection is never refused for strangers' sake. Each source may start
 * `handshakesPerSecondPerSource` handshakes (those that prove a trusted certificate are given
 * back); over that, its sockets are closed before any TLS work. A handshake that brought more than
 * `maxHandshakeBytes`, a certificate chain or no certificate is refused here, before the core
 * sees the stream.
 */
export class TlsListener {
  /** Accepts TCP connections; only admitted ones are handed to the TLS server. */
  private readonly listener: net.Server;
  private readonly server: tls.Server;
  /** Every TCP socket, handshaking ones included, so close() need not wait out a stalled handshake. */
  private readonly sockets = new Set<net.Socket>();
  private readonly unauthenticated: UnauthenticatedBudget;
  private readonly handshakeRate: HandshakeRate;
  /** Sockets in their TLS handshake, by remote address and port: the TLS socket is matched to its own. */
  private readonly handshaking = new Map<string, Unauthenticated>();
  private readonly limits: Limits;
  private readonly stats: TlsListenerStats;
  private readonly log: Logger;

  constructor(private readonly options: TlsListenerOptions) {
    const { identity, limits, stats, log } = options;
    this.limits = limits;
    this.stats = stats;
    this.log = log;
    this.unauthenticated = new UnauthenticatedBudget(limits, () => stats.unauthenticatedEvicted++);
    this.handshakeRate = new HandshakeRate(limits.handshakesPerSecondPerSource);
    this.server = tls.createServer({
      ...TLS_OPTIONS,
      key: identity.keyPem,
      cert: identity.certPem,
      requestCert: true,
      // Peers' certificates are self-signed: we decide trust by fingerprint after the handshake.
      rejectUnauthorized: false,
      handshakeTimeout: limits.handshakeTimeoutMs,
    });
    // A plain TCP listener in front, so a socket over its source's rate is closed before Node
    // gives it any TLS state. No cap on sockets (Node's maxConnections would drop a trusted
    // peer's socket before TLS): the budgets below bound them instead.
    this.listener = net.createServer((socket) => this.onSocket(socket));
    // An error before listening (EADDRINUSE) is listen()'s to report, as its rejection.
    this.listener.on('error', (err) => this.listener.listening && this.log('error', `Server error: ${err.message}`));
    this.server.on('secureConnection', (socket) => this.accept(socket));
    this.server.on('tlsClientError', (err, socket) => {
      this.log('debug', `TLS handshake failed from ${socket.remoteAddress ?? '?'}: ${err.message}`);
      socket.destroy();
    });
    this.server.on('error', (err) => this.log('error', `Server error: ${err.message}`));
  }

  /** Listens on `port` (0: any free one); resolves with the port bound. */
  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(toPeerShareError(err, 'CONNECTION_FAILED'));
      this.listener.once('error', onError);
      this.listener.listen(port, host, () => {
        this.listener.off('error', onError);
        const addr = this.listener.address();
        resolve(typeof addr === 'object' && addr ? addr.port : port);
      });
    });
  }

  /**
   * Stops accepting and cuts every socket, handshaking ones included; resolves once all are gone.
   * `closeStreams` runs first, so the core closes the streams it holds in its own way.
   */
  close(closeStreams: () => void): Promise<void> {
    const closed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    closeStreams();
    for (const socket of this.sockets) socket.destroy();
    return closed;
  }

  /** A new TCP socket: rate-limited per source, admitted to the unauthenticated budget, then to TLS. */
  private onSocket(socket: net.Socket): void {
    const source = sourceOf(socket.remoteAddress);
    if (!this.handshakeRate.tryStart(source)) {
      this.stats.handshakesRateLimited++;
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    const key = socketKey(socket);
    const waiting: Unauthenticated = { source, received: () => socket.bytesRead, evict: () => socket.destroy() };
    this.handshaking.set(key, waiting);
    this.unauthenticated.admit(waiting);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.unauthenticated.leave(waiting);
      if (this.handshaking.get(key) === waiting) this.handshaking.delete(key);
    });
    this.server.emit('connection', socket);
  }

  /** A completed handshake: refused here if it cost too much or proved no single certificate. */
  private accept(socket: tls.TLSSocket): void {
    this.stats.connectionsAccepted++;
    const key = socketKey(socket);
    const waiting = this.handshaking.get(key);
    this.handshaking.delete(key);
    if (!waiting) {
      // Evicted or closed as its handshake completed.
      socket.destroy();
      return;
    }
    const host = socket.remoteAddress ?? '';
    handOver(this.front, socket, waiting, { host, address: formatAddress(host || '?', socket.remotePort ?? 0) });
  }

  private get front(): AcceptorFront {
    return { ...this.options, unauthenticated: this.unauthenticated, handshakeRate: this.handshakeRate };
  }
}

/**
 * The acceptor's TLS over streams another transport accepted (HyperDHT's, transport-dht.ts): the
 * same per-source rate, unauthenticated budget, handshake deadline and checks as TlsListener, so
 * a stranger is the same stranger whichever way it came, and the peer ID is proved the same way.
 * It has no port of its own; its budgets are its own, so strangers on one transport cannot evict
 * those waiting on the other.
 */
export class TlsStreamAcceptor {
  private readonly unauthenticated: UnauthenticatedBudget;
  private readonly handshakeRate: HandshakeRate;
  private readonly secureContext: tls.SecureContext;
  /** Every stream handed in and not yet closed, so close() cuts handshaking ones too. */
  private readonly streams = new Set<Duplex>();

  constructor(private readonly options: TlsListenerOptions) {
    const { identity, limits, stats } = options;
    this.unauthenticated = new UnauthenticatedBudget(limits, () => stats.unauthenticatedEvicted++);
    this.handshakeRate = new HandshakeRate(limits.handshakesPerSecondPerSource);
    this.secureContext = tls.createSecureContext({ ...TLS_OPTIONS, key: identity.keyPem, cert: identity.certPem });
  }

  /** A stream from `remote` (its host counts for the per-source limits): TLS 1.3 as the acceptor, then the core. */
  accept(raw: Duplex, remote: { address: string; host: string }): void {
    const { limits, stats, log } = this.options;
    const source = sourceOf(remote.host);
    if (!this.handshakeRate.tryStart(source)) {
      stats.handshakesRateLimited++;
      raw.destroy();
      return;
    }
    this.streams.add(raw);
    // The bytes as they came, before decryption, as TlsListener counts them on its TCP socket.
    let received = 0;
    const count = (chunk: Buffer): void => {
      received += chunk.length;
    };
    raw.on('data', count);
    const socket = new tls.TLSSocket(raw, { isServer: true, secureContext: this.secureContext, requestCert: true, rejectUnauthorized: false });
    socket.allowHalfOpen = false; // as over TCP (see dialTlsOver)
    const waiting: Unauthenticated = { source, received: () => received, evict: () => socket.destroy() };
    this.unauthenticated.admit(waiting);
    const timer = setTimeout(() => socket.destroy(), limits.handshakeTimeoutMs);
    socket.on('error', (err) => {
      log('debug', `TLS with ${remote.address} failed: ${err.message}`);
      socket.destroy();
    });
    socket.once('secure', () => {
      clearTimeout(timer);
      raw.off('data', count);
      stats.connectionsAccepted++;
      handOver({ ...this.options, unauthenticated: this.unauthenticated, handshakeRate: this.handshakeRate }, socket, waiting, remote);
    });
    socket.once('close', () => {
      clearTimeout(timer);
      this.streams.delete(raw);
      this.unauthenticated.leave(waiting);
      raw.destroy();
    });
  }

  /** Cuts every stream, handshaking ones included (the core closes its own first). */
  close(): void {
    for (const raw of this.streams) raw.destroy();
  }
}

/** What judging and handing over a completed acceptor handshake needs. */
interface AcceptorFront extends TlsListenerOptions {
  unauthenticated: UnauthenticatedBudget;
  handshakeRate: HandshakeRate;
}

/**
 * A completed acceptor handshake: refused here if it cost too much or proved no single
 * certificate, else handed to the core with its place in the unauthenticated budget.
 */
function handOver(front: AcceptorFront, socket: tls.TLSSocket, waiting: Unauthenticated, remote: { address: string; host: string }): void {
  const { limits, stats, log } = front;
  // The handshake's cost grows with what the client sent (a chain of 240 certificates costs
  // about 80 ms); one certificate needs about 1 KiB. More is refused and charged to its source.
  const received = waiting.received();
  if (received > limits.maxHandshakeBytes) {
    stats.oversizedHandshakes++;
    front.handshakeRate.charge(waiting.source, Math.ceil(received / 1024));
    endWithError(socket, new PeerShareError('TOO_LARGE', `The TLS handshake brought ${received} bytes; at most ${limits.maxHandshakeBytes} are accepted. Present one certificate, not a chain.`));
    return;
  }
  const { address, host } = remote;
  const cert = singleCertificate(socket);
  if (typeof cert === 'string') {
    const refused =
      cert === 'chain' ? new PeerShareError('PEER_UNTRUSTED', 'Present one self-signed certificate, not a chain.') : new PeerShareError('PEER_UNTRUSTED', 'A client certificate is required.');
    // Its goodbye may take a second to flush; it holds no slot meanwhile.
    front.unauthenticated.leave(waiting);
    log('warn', `Closing ${address}: ${refused.code} ${refused.message}`);
    endWithError(socket, refused);
    return;
  }
  // Requests and answers are small writes each waiting on the other: no Nagle delay.
  socket.setNoDelay(true);
  const admission: Admission = {
    source: waiting.source,
    refundHandshake: () => front.handshakeRate.refund(waiting.source),
    leave: () => front.unauthenticated.leave(waiting),
    onEvict: (goodbye) => {
      waiting.evict = goodbye;
    },
  };
  front.onStream({ stream: socket, peerId: peerIdOfCert(cert.raw), address, host, side: 'acceptor' }, admission);
}

/**
 * The one certificate the other end proved, or why it is refused. Peers' certificates are
 * self-signed and pinned, so a chain has no use here and only costs verification work.
 */
function singleCertificate(socket: tls.TLSSocket): X509Certificate | 'chain' | 'none' {
  // Before getPeerX509Certificate(): after it, Node (20) no longer shows the chain.
  const leaf = socket.getPeerCertificate(true);
  if (leaf.issuerCertificate !== undefined && leaf.issuerCertificate !== leaf) return 'chain';
  return socket.getPeerX509Certificate() ?? 'none';
}

/** A connection not yet authenticated: where it comes from, and how to close it to make room. */
interface Unauthenticated {
  source: string;
  /** Bytes received on the stream under TLS so far, before decryption: the handshake's cost. */
  received(): number;
  evict(): void;
}

/** Identifies a live TCP connection on both its raw and its TLS socket. */
function socketKey(socket: net.Socket): string {
  return `${socket.remoteAddress ?? '?'}|${socket.remotePort ?? '?'}`;
}

/**
 * The address per-source limits count by: an IPv4 address, or an IPv6 /64 (one host is usually
 * given a whole /64, so counting single IPv6 addresses would let it pose as millions of sources).
 */
export function sourceOf(address: string | undefined): string {
  if (!address) return '?';
  const plain = address.split('%')[0];
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(plain);
  if (mapped) return mapped[1];
  if (!plain.includes(':')) return plain;
  const [head, tail] = plain.split('::');
  const front = head ? head.split(':') : [];
  const back = tail ? tail.split(':') : [];
  const groups = tail === undefined ? front : [...front, ...Array<string>(Math.max(0, 8 - front.length - back.length)).fill('0'), ...back];
  return `${groups
    .slice(0, 4)
    .map((g) => (parseInt(g, 16) || 0).toString(16))
    .join(':')}::/64`;
}

/**
 * Unauthenticated connections, oldest first, per source and in all. Admission never refuses:
 * when a budget is full its oldest connection is closed to make room (OpenSSH's MaxStartups,
 * nginx's limit_conn), so strangers cannot keep anyone out for long, and a trusted peer, whose
 * connection leaves this budget the moment its handshake completes, is always let through.
 */
class UnauthenticatedBudget {
  private readonly all = new Set<Unauthenticated>();
  private readonly bySource = new Map<string, Set<Unauthenticated>>();

  constructor(
    private readonly limits: Limits,
    private readonly onEvict: () => void,
  ) {}

  admit(entry: Unauthenticated): void {
    const mine = this.bySource.get(entry.source);
    if (mine && mine.size >= this.limits.maxUnauthenticatedPerSource) this.evict(mine.values().next().value!);
    if (this.all.size >= this.limits.maxUnauthenticatedConnections) this.evict(this.all.values().next().value!);
    this.all.add(entry);
    const set = this.bySource.get(entry.source) ?? new Set<Unauthenticated>();
    set.add(entry);
    this.bySource.set(entry.source, set);
  }

  leave(entry: Unauthenticated): void {
    if (!this.all.delete(entry)) return;
    const set = this.bySource.get(entry.source);
    set?.delete(entry);
    if (set?.size === 0) this.bySource.delete(entry.source);
  }

  private evict(entry: Unauthenticated): void {
    this.leave(entry);
    this.onEvict();
    entry.evict();
  }
}

/** Sources whose handshake rate we remember; past this, sources back at a full burst are forgotten. */
const MAX_RATE_SOURCES = 4096;

/**
 * TLS handshakes each source may start: a token bucket per source, refilled at `perSecond`, with
 * a burst of twice that. A handshake that cost more than usual is charged extra, into debt.
 */
class HandshakeRate {
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly burst: number;

  constructor(private readonly perSecond: number) {
    this.burst = 2 * perSecond;
  }

  /** Takes one token for a new handshake; false (nothing taken) if the source has none. */
  tryStart(source: string): boolean {
    return this.bucket(source).take();
  }

  /** Gives a token back: the handshake proved a trusted certificate. */
  refund(source: string): void {
    this.bucket(source).give();
  }

  /** Charges `tokens` more; the debt is bounded to a minute of the rate. */
  charge(source: string, tokens: number): void {
    this.bucket(source).charge(tokens, 60 * this.perSecond);
  }

  private bucket(source: string): TokenBucket {
    let bucket = this.buckets.get(source);
    if (bucket) return bucket;
    if (this.buckets.size >= MAX_RATE_SOURCES) this.forgetRested();
    bucket = new TokenBucket(this.perSecond, this.burst);
    this.buckets.set(source, bucket);
    return bucket;
  }

  /** Drops sources whose bucket has refilled (they are as if new); if none, the oldest. */
  private forgetRested(): void {
    const now = performance.now();
    for (const [source, bucket] of this.buckets) if (bucket.isFull(now)) this.buckets.delete(source);
    if (this.buckets.size >= MAX_RATE_SOURCES) this.buckets.delete(this.buckets.keys().next().value!);
  }
}
