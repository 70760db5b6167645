import { createPrivateKey, hkdfSync } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import { blake3Backend } from './blake3';
import { parseDhtKey } from './dht-key';
import { PeerShareError, toPeerShareError } from './errors';
import type { Identity } from './identity';
import { formatAddress, parseAddress } from './invite';
import { CLOSE_GRACE_MS, type Limits } from './limits';
import type { Logger } from './server';
import type { Admission, AuthenticatedStream } from './transport';
import { TlsStreamAcceptor, dialTlsOver, sourceOf, type TlsListenerStats } from './transport-tls';

/*
 * The internet transport (issue 14): peers find each other on HyperDHT by public key and connect
 * through UDP hole punching, with no server of ours. HyperDHT's stream is encrypted and proves
 * the remote's DHT key, but a DHT key is only where a peer is, like an address: inside that stream
 * the peers run TLS 1.3 with the same pinned certificates as over TCP (transport-tls.ts), so the
 * peer ID is proved exactly as on the LAN and a DHT key alone never makes anyone trusted.
 *
 * This is the one module that loads `hyperdht`, on first use, not at import: it is native code
 * (sodium-native, udx-native) that may not load on every platform, and when it does not, the
 * LAN keeps working and internetReach() says why the internet is off.
 */

/** The part of `hyperdht` used here (the package ships no types). */
interface HyperDhtModule {
  new (options: Record<string, unknown>): HyperDhtNode;
  keyPair(seed?: Buffer): DhtKeyPair;
}

interface DhtKeyPair {
  publicKey: Buffer;
  secretKey: Buffer;
}

interface HyperDhtNode {
  /** As dht-rpc parsed the bootstrap list it was given. */
  readonly bootstrapNodes: { host: string; port: number }[];
  createServer(
    options: { firewall?: (remotePublicKey: Buffer, remotePayload: unknown, clientAddress: { host: string; port: number }) => boolean },
    onConnection: (socket: NoiseStream) => void,
  ): HyperDhtServer;
  connect(remotePublicKey: Buffer, options?: Record<string, unknown>): NoiseStream;
  fullyBootstrapped(): Promise<void>;
  toArray(): { host: string; port: number }[];
  destroy(options?: { force?: boolean }): Promise<void>;
}

interface HyperDhtServer extends EventEmitter {
  listen(keyPair: DhtKeyPair): Promise<void>;
  close(): Promise<void>;
}

/** HyperDHT's encrypted stream, a streamx Duplex (not a Node stream). */
interface NoiseStream extends EventEmitter {
  readonly remotePublicKey: Buffer | null;
  readonly rawStream: { remoteHost?: string | null; remotePort?: number } | null;
  readonly destroyed: boolean;
  write(data: Buffer): boolean;
  end(): void;
  destroy(err?: Error): void;
  pause(): void;
  resume(): void;
}

/** Whether internet reach can work here: the DHT library loaded, or why not. */
export type InternetReach = { available: true } | { available: false; reason: string };

let loaded: { dht: HyperDhtModule } | { reason: string } | undefined;

/**
 * Loads `hyperdht` (once; `moduleId` only for tests of a library that does not load). Never
 * throws: a failure is kept as the reason internet reach is off.
 */
export function loadHyperDht(moduleId = 'hyperdht'): { dht: HyperDhtModule } | { reason: string } {
  const cached = moduleId === 'hyperdht' ? loaded : undefined;
  if (cached) return cached;
  let result: { dht: HyperDhtModule } | { reason: string };
  try {
    // Left to run time by the bundler (esbuild.js lists it as external): native parts inside.
    result = { dht: require(moduleId) as HyperDhtModule };
  } catch (err) {
    const message = err instanceof Error ? err.message.split('\n')[0] : String(err);
    result = { reason: `the HyperDHT library did not load (${process.platform}-${process.arch}): ${message}` };
  }
  if (moduleId === 'hyperdht') loaded = result;
  return result;
}

/** Can this installation reach peers over the internet? If not, a sentence saying why, for the log and the person. */
export function internetReach(): InternetReach {
  const result = loadHyperDht();
  return 'dht' in result ? { available: true } : { available: false, reason: result.reason };
}

/**
 * Where this installation meets the DHT. `public` is HyperDHT's own bootstrap nodes on the
 * internet and must be asked for by name: an empty or missing list is refused, never taken to mean
 * the public network, so a test (or a private network's setting left empty by mistake) cannot
 * reach the public DHT by accident.
 */
export type DhtBootstrap = readonly string[] | 'public';

export interface DhtNetworkOptions {
  bootstrap: DhtBootstrap;
  /** The local address its UDP sockets bind to (default: all, or loopback when every bootstrap node is on loopback). */
  host?: string;
  /** Its preferred UDP port (HyperDHT's own default, 49737, or the next free one, if unset). */
  port?: number;
  log?: Logger;
  /** The library to load (tests of a library that does not load). */
  moduleId?: string;
}

/** `[ip@]host:port`, as HyperDHT takes its bootstrap nodes. */
const BOOTSTRAP_NODE = /^(?:(\d{1,3}(?:\.\d{1,3}){3})@)?([^@\s]+)$/;

/** Checks a bootstrap list (HOST:PORT entries); throws INVALID_ARGUMENT with the entry at fault. */
export function parseBootstrap(bootstrap: DhtBootstrap): string[] | 'public' {
  if (bootstrap === 'public') return 'public';
  if (!Array.isArray(bootstrap) || bootstrap.length === 0) {
    throw new PeerShareError(
      'INVALID_ARGUMENT',
      'No DHT bootstrap nodes were given. Name your own (HOST:PORT), or choose the public HyperDHT network explicitly.',
    );
  }
  return bootstrap.map((entry) => {
    const match = typeof entry === 'string' ? BOOTSTRAP_NODE.exec(entry.trim()) : null;
    const address = match ? parseAddress(match[2]) : undefined;
    if (!match || !address) throw new PeerShareError('INVALID_ARGUMENT', `Not a DHT bootstrap node (HOST:PORT): ${JSON.stringify(String(entry).slice(0, 80))}`);
    return `${match[1] ? `${match[1]}@` : ''}${formatAddress(address.host, address.port)}`;
  });
}

/**
 * The DHT key pair this installation listens on, derived from its TLS private key: nothing to
 * keep beside it, the same in every process that shares the home, and not derivable from anything
 * a peer sees on the LAN (the certificate, the peer ID, announcements), since those carry only
 * the public key. A new identity gets a new DHT key.
 */
export function internetKeyPairSeed(identity: Identity): Buffer {
  const secret = createPrivateKey(identity.keyPem).export({ format: 'der', type: 'pkcs8' });
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'peershare hyperdht key pair v1', 32));
}

/**
 * One DHT node of this installation: dials peers by DHT key, and listens on its own key while
 * sharing with internet reach on. Dialing uses a fresh key pair of the node's, so a dialer is not
 * recognisable across sessions by its DHT key; listening uses internetKeyPairSeed's.
 */
export class DhtNetwork {
  private readonly listeners = new Set<DhtListener>();
  private closed = false;

  private constructor(
    private readonly module: HyperDhtModule,
    private readonly node: HyperDhtNode,
    /** The bootstrap nodes it was built with, as parsed (`public`: HyperDHT's own). */
    readonly bootstrap: string[] | 'public',
  ) {}

  /**
   * Starts a node on `options.bootstrap`. CONNECTION_FAILED, saying why, when the library does not
   * load here; INVALID_ARGUMENT for a bootstrap list that is empty or malformed.
   */
  static create(options: DhtNetworkOptions): DhtNetwork {
    const bootstrap = parseBootstrap(options.bootstrap);
    const loadedNow = loadHyperDht(options.moduleId);
    if (!('dht' in loadedNow)) throw new PeerShareError('CONNECTION_FAILED', `Internet reach is off: ${loadedNow.reason}. Peers on your network can still be reached.`);
    const DHT = loadedNow.dht;
    // BLAKE3 before the DHT's sockets open: its native loader asks Node for a process report,
    // which looks up the name of every open socket's address; where no DNS answers (a network
    // namespace, an offline machine) each lookup waits out the resolver, 5 s, on the first connect.
    blake3Backend();
    // A DHT whose every bootstrap node is on this machine can only ever meet peers on it: its
    // sockets stay on loopback too, and never offer this machine's other addresses to peers.
    const host = options.host ?? (bootstrap !== 'public' && bootstrap.every((b) => /^(?:[^@]*@)?127\./.test(b)) ? '127.0.0.1' : undefined);
    const settings: Record<string, unknown> = {
      // A PeerShare installation uses the DHT but does not route for others.
      ephemeral: true,
      ...(host !== undefined ? { host } : {}),
      ...(options.port !== undefined ? { port: options.port } : {}),
    };
    // `public` alone leaves the option unset, which is how HyperDHT picks its public nodes.
    if (bootstrap !== 'public') settings.bootstrap = bootstrap;
    const node = new DHT(settings);
    return new DhtNetwork(DHT, node, bootstrap);
  }

  /** The bootstrap nodes the DHT node itself holds, as `host:port` (what a test checks). */
  get bootstrapNodes(): string[] {
    return this.node.bootstrapNodes.map((n) => formatAddress(n.host, n.port));
  }

  /** Every DHT node this one has in its routing table, as `host:port` (a test checks none is public). */
  get knownNodes(): string[] {
    return this.node.toArray().map((n) => formatAddress(n.host, n.port));
  }

  /** Resolves once the node has joined the DHT (its first lookups answered). */
  ready(): Promise<void> {
    return this.node.fullyBootstrapped();
  }

  /**
   * Connects to the peer listening on `dhtKey` (hex or z-base-32), then runs TLS 1.3 in that stream
   * with our certificate: returns the stream and the peer ID the remote's certificate proves. The
   * caller pins it, as for any transport. Within `timeoutMs` in all. Coded errors:
   * INVALID_ARGUMENT, CANCELLED, TIMEOUT, CONNECTION_FAILED (not found, hole punching failed: the
   * message says what a person can do), PEER_MISMATCH (no certificate).
   */
  async dial(dhtKey: string, options: { identity: Identity; timeoutMs: number; signal?: AbortSignal }): Promise<AuthenticatedStream> {
    const hex = parseDhtKey(dhtKey);
    if (!hex) throw new PeerShareError('INVALID_ARGUMENT', `Not a DHT key: ${JSON.stringify(String(dhtKey).slice(0, 80))}`);
    if (this.closed) throw new PeerShareError('CANCELLED', 'Internet reach was stopped.');
    const { signal, timeoutMs } = options;
    if (signal?.aborted) throw new PeerShareError('CANCELLED');
    const started = performance.now();
    const socket = this.node.connect(Buffer.from(hex, 'hex'));
    const raw = await new Promise<NoiseStream>((resolve, reject) => {
      const timer = setTimeout(() => fail(new PeerShareError('TIMEOUT', `No connection through the DHT within ${timeoutMs} ms.`)), timeoutMs);
      const onAbort = (): void => fail(new PeerShareError('CANCELLED'));
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        socket.off('error', onError);
        socket.off('close', onClose);
      };
      function fail(err: PeerShareError): void {
        done();
        socket.on('error', () => undefined); // late errors of a stream we gave up on
        socket.destroy();
        reject(err);
      }
      const onError = (err: Error): void => fail(dhtFailure(err));
      const onClose = (): void => fail(new PeerShareError('CONNECTION_FAILED', 'The peer closed the DHT connection before it was open.'));
      socket.once('error', onError);
      socket.once('close', onClose);
      socket.once('open', () => {
        done();
        resolve(socket);
      });
    });
    const { host, address } = remoteOf(raw);
    const left = Math.max(1, timeoutMs - (performance.now() - started));
    const stream = await dialTlsOver(asNodeDuplex(raw), { identity: options.identity, address, host, timeoutMs: left, signal });
    return { ...stream, route: 'dht' };
  }

  /**
   * Listens on this installation's DHT key (internetKeyPairSeed): each stream that comes is run
   * through TLS as the acceptor with the TCP listener's budgets and checks (TlsStreamAcceptor),
   * then handed to `onStream` as the TCP listener hands its own.
   */
  async listen(options: DhtListenOptions): Promise<DhtListener> {
    if (this.closed) throw new PeerShareError('CANCELLED', 'Internet reach was stopped.');
    const keyPair = this.module.keyPair(options.seed ?? internetKeyPairSeed(options.identity));
    /** Set when closing starts: from then on no stream reaches the core, while the key leaves the DHT. */
    let stopping = false;
    const acceptor = new TlsStreamAcceptor({
      ...options,
      onStream: (stream, admission) => (stopping ? stream.stream.destroy() : options.onStream({ ...stream, route: 'dht' }, admission)),
    });
    const pending = new PendingHandshakes(options.limits.maxUnauthenticatedPerSource);
    // Refusing here costs us only the Noise message already read: no socket, no stream.
    const firewall = (_remoteKey: Buffer, _payload: unknown, client: { host: string; port: number }): boolean => {
      if (pending.tryStart(sourceOf(client?.host))) return false;
      options.stats.handshakesRateLimited++;
      return true;
    };
    const server = this.node.createServer({ firewall }, (socket) => {
      socket.on('error', (err: Error) => options.log('debug', `DHT stream error: ${err.message}`));
      if (stopping) return socket.destroy();
      const remote = remoteOf(socket);
      pending.settled(sourceOf(remote.host));
      acceptor.accept(asNodeDuplex(socket), remote);
    });
    server.on('error', (err: Error) => options.log('warn', `DHT server: ${err.message}`));
    try {
      await server.listen(keyPair);
    } catch (err) {
      await server.close().catch(() => undefined);
      const coded = dhtFailure(err);
      throw new PeerShareError(coded.code, `Could not listen on the DHT: ${coded.message}`, { detail: coded.detail, cause: err });
    }
    const listener = new DhtListener(keyPair.publicKey.toString('hex'), async () => {
      this.listeners.delete(listener);
      // Streams are cut at once: leaving the DHT (unannouncing) can take seconds where its nodes
      // are slow or gone, and a handshake finishing meanwhile must not be served after Stop.
      stopping = true;
      acceptor.close();
      await server.close().catch(() => undefined);
    });
    this.listeners.add(listener);
    return listener;
  }

  /** Stops listening and leaves the DHT; streams already handed on are cut by their owners. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.listeners].map((l) => l.close()));
    await this.node.destroy().catch(() => undefined);
  }
}

export interface DhtListenOptions {
  identity: Identity;
  limits: Limits;
  /** Counted into as things happen (the sharer's own stats, shared with its TCP listener). */
  stats: TlsListenerStats;
  log: Logger;
  onStream(stream: AuthenticatedStream, admission: Admission): void;
  /** The DHT key pair's seed; default internetKeyPairSeed(identity). Tests set another to put a wrong peer behind a key. */
  seed?: Buffer;
}

/**
 * This installation listening on the DHT: its key (what an invite's `dht=` carries), until
 * closed. Closing stops new streams and cuts those still open: close the core's connections over
 * it first (PeerServer.close), so they end in their own way.
 */
export class DhtListener {
  private closing?: Promise<void>;

  constructor(
    /** The public key peers dial, 64 hex characters. */
    readonly publicKey: string,
    private readonly stop: () => Promise<void>,
  ) {}

  close(): Promise<void> {
    this.closing ??= this.stop();
    return this.closing;
  }
}

/**
 * How long HyperDHT holds a handshake whose stream never opens (its HANDSHAKE_INITIAL_TIMEOUT),
 * with a UDP socket of its own for hole punching the whole time.
 */
const DHT_HANDSHAKE_HOLD_MS = 10_000;
/** Sources remembered at once; past this, those with nothing pending are forgotten. */
const MAX_PENDING_SOURCES = 4096;

/**
 * Handshakes HyperDHT is working on for each source before their streams open. Each one holds a
 * UDP socket (and hole-punching state) on the sharer for up to 10 s, before our TLS and its
 * budgets ever see a stream, so a stranger who starts handshakes and never completes them would
 * open sockets without bound. A source may have `perSource` at once (maxUnauthenticatedPerSource,
 * as many as one peer may hold in the TLS budget); more are refused by HyperDHT's firewall,
 * before any socket is made. Per source only: a cap in all would let strangers keep a trusted
 * peer out, and nothing in a DHT handshake says who is trusted. The source is the address the
 * handshake message names (HyperDHT takes a relaying node's word for it), so this binds stock
 * clients; one written to lie about it is left in docs/security.md (round 5).
 */
class PendingHandshakes {
  /** Per source, when each of its handshakes is given up by HyperDHT at the latest, oldest first. */
  private readonly bySource = new Map<string, number[]>();

  constructor(private readonly perSource: number) {}

  tryStart(source: string, now = performance.now()): boolean {
    const mine = this.live(source, now);
    if (mine.length >= this.perSource) return false;
    if (mine.length === 0) {
      if (this.bySource.size >= MAX_PENDING_SOURCES) this.forgetIdle(now);
      this.bySource.set(source, mine);
    }
    mine.push(now + DHT_HANDSHAKE_HOLD_MS);
    return true;
  }

  /** A stream from `source` opened: one of its handshakes is done (its socket released). */
  settled(source: string): void {
    const mine = this.bySource.get(source);
    mine?.shift();
    if (mine?.length === 0) this.bySource.delete(source);
  }

  private live(source: string, now: number): number[] {
    const mine = this.bySource.get(source) ?? [];
    while (mine.length > 0 && mine[0] <= now) mine.shift();
    return mine;
  }

  private forgetIdle(now: number): void {
    for (const source of [...this.bySource.keys()]) if (this.live(source, now).length === 0) this.bySource.delete(source);
  }
}

/** Where a DHT stream's other end is, for display and per-source limits: its UDP address as we see it. */
function remoteOf(socket: NoiseStream): { host: string; address: string } {
  const host = socket.rawStream?.remoteHost ?? '';
  const port = socket.rawStream?.remotePort ?? 0;
  return { host, address: host ? formatAddress(host, port) : 'dht' };
}

/** HyperDHT's failures as coded errors, with what a person can do when hole punching fails. */
function dhtFailure(err: unknown): PeerShareError {
  const code = (err as { code?: unknown } | undefined)?.code;
  const detail = err instanceof Error ? err.message : String(err);
  switch (code) {
    case 'PEER_NOT_FOUND':
      return new PeerShareError('CONNECTION_FAILED', 'The peer was not found on the DHT: it is not sharing with internet reach on, or has not announced itself yet.', { detail, cause: err });
    case 'HOLEPUNCH_DOUBLE_RANDOMIZED_NATS':
    case 'CANNOT_HOLEPUNCH':
    case 'REMOTE_NOT_HOLEPUNCHABLE':
    case 'REMOTE_NOT_HOLEPUNCHING':
    case 'HOLEPUNCH_ABORTED':
    case 'HOLEPUNCH_PROBE_TIMEOUT':
    case 'PEER_CONNECTION_FAILED':
      return new PeerShareError(
        'CONNECTION_FAILED',
        'The peer was found on the DHT, but no direct connection could be punched through the two networks (both are behind routers that change ports, or block UDP). One of you on another network (a phone hotspot, a network that allows UDP) usually works.',
        { detail, cause: err },
      );
    case 'KEYPAIR_ALREADY_USED':
    case 'ALREADY_LISTENING':
      return new PeerShareError('ADDRESS_IN_USE', 'Another PeerShare with this identity already listens on the DHT. Stop that one first.', { detail, cause: err });
    default:
      return toPeerShareError(err, 'CONNECTION_FAILED');
  }
}

/**
 * A Node Duplex over a streamx one (HyperDHT's), so node:tls can run over it: bytes both ways,
 * backpressure both ways, and an end or a destroy on either side reaching the other.
 */
function asNodeDuplex(inner: NoiseStream): Duplex {
  let drained: (() => void) | undefined;
  let ended = false;
  const outer = new Duplex({
    write(chunk: Buffer, _encoding, callback) {
      if (inner.write(chunk)) callback();
      else drained = callback;
    },
    final(callback) {
      ended = true;
      inner.end();
      callback();
    },
    read() {
      inner.resume();
    },
    destroy(err, callback) {
      drained?.();
      drained = undefined;
      if (inner.destroyed) return callback(err);
      // A TLS socket destroys its stream as soon as both sides have ended: what we wrote last (a
      // goodbye, TLS's close_notify) is still on its way, so a graceful end is left to finish,
      // within the usual grace. Anything else is cut at once.
      if (err || !ended) inner.destroy();
      else {
        const cut = setTimeout(() => inner.destroy(), CLOSE_GRACE_MS);
        cut.unref();
        inner.once('close', () => clearTimeout(cut));
      }
      callback(err);
    },
  });
  inner.on('drain', () => {
    const callback = drained;
    drained = undefined;
    callback?.();
  });
  inner.on('data', (chunk: Buffer) => {
    if (!outer.push(chunk)) inner.pause();
  });
  inner.on('end', () => outer.push(null));
  inner.on('error', (err: Error) => outer.destroy(err));
  inner.on('close', () => {
    if (!outer.destroyed) outer.destroy();
  });
  return outer;
}
