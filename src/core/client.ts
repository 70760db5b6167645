import { blake3Backend } from './blake3';
import { parseDhtKey } from './dht-key';
import type { Identity } from './identity';
import { PeerShareError, toPeerShareError } from './errors';
import { resolveLimits, type Limits } from './limits';
import { fingerprintFromPeerId, normalizePeerId, verificationCode } from './peer-id';
import { sanitizeForDisplay, type Entry, type WelcomeMessage } from './protocol';
import { firstToSucceed } from './race';
import type { AuthenticatedStream, StreamRoute } from './transport';
import type { DhtNetwork } from './transport-dht';
import { dialTls } from './transport-tls';
import type { TrustStore } from './trust';
import type { Connection } from './v2/connection';
import { dialV2 } from './v2/handshake';
import { ShareClient } from './v2/share-client';
import { MAX_SHARE_ROOTS, MAX_SHARE_ROOT_CHARS, SHARE_CAPABILITY } from './v2/share-messages';
import type { SendService, SendSession } from './send';

export interface ConnectOptions {
  identity: Identity;
  trust: TrustStore;
  /** `host:port` candidates, tried in order. */
  addresses: string[];
  /** The peer ID we expect (from an invite or the trust store). Without it, any trusted peer is accepted. */
  expectedPeerId?: string;
  /** Invite token, presented only if the peer does not know us yet. */
  token?: string;
  /** The name the peer will see for us. */
  name: string;
  limits?: Partial<Limits>;
  signal?: AbortSignal;
  /**
   * With no token: ask the sharer to let us in (a nearby peer). The sharer sees a prompt and the
   * same verification code `onVerificationCode` receives; we wait up to `approvalTimeoutMs`.
   */
  requestAccess?: boolean;
  onVerificationCode?: (code: string) => void;
  /** Capability send/1 (send.ts): served to the peer, so either side may offer files. */
  send?: SendService;
  /**
   * The peer's HyperDHT key (hex or z-base-32; its invite's `dht=`, or the trust file's). With
   * `dht`, the peer is looked for there too, beside the addresses: the first route that proves the
   * expected peer is kept (happy eyeballs), and the trust file remembers which it was.
   */
  dhtKey?: string;
  /** Internet reach, when it is on (PeerShareNode starts it): without it, `dhtKey` is not used. */
  dht?: Pick<DhtNetwork, 'dial'>;
}

/** Failures that say only "not reached this way": worth trying another address or route. */
const UNREACHED = ['CONNECTION_FAILED', 'TIMEOUT', 'CONNECTION_CLOSED'];

/** Spec 6: `share/1`'s roots, at most 256 names of 1 to 255 characters; undefined when the peer broke those bounds. No share advertised: none. */
function shareRootsOf(params: Record<string, unknown> | undefined): string[] | undefined {
  if (params === undefined || params.roots === undefined) return [];
  const { roots } = params;
  if (!Array.isArray(roots) || roots.length > MAX_SHARE_ROOTS) return undefined;
  return roots.every((root) => typeof root === 'string' && root.length >= 1 && root.length <= MAX_SHARE_ROOT_CHARS) ? (roots as string[]) : undefined;
}

/** Connects, pins the peer's certificate, says hello, and returns a ready connection. */
export async function connectToPeer(options: ConnectOptions): Promise<PeerConnection> {
  const viaDht = options.dhtKey !== undefined && options.dht !== undefined;
  if (options.addresses.length === 0 && !viaDht) throw new PeerShareError('INVALID_ARGUMENT', 'No address to connect to.');
  if (options.dhtKey !== undefined && !parseDhtKey(options.dhtKey)) throw new PeerShareError('INVALID_ARGUMENT', 'That is not a HyperDHT key.');
  // BLAKE3 is loaded before the socket opens, not when the first block arrives (as the sharer
  // does at listen, server.ts): loading it stalls the event loop, less here than with a server's
  // many sockets, but never mid-transfer.
  blake3Backend();
  if (viaDht) return finishConnect(await firstProvedRoute(options), options);
  let lastError: PeerShareError | undefined;
  for (const address of options.addresses) {
    if (options.signal?.aborted) throw new PeerShareError('CANCELLED');
    try {
      return await connectOnce(address, options);
    } catch (err) {
      lastError = toPeerShareError(err, 'CONNECTION_FAILED');
      // Only a failure to reach this address is worth trying the next one for.
      if (!UNREACHED.includes(lastError.code)) throw lastError;
    }
  }
  throw lastError!;
}

async function connectOnce(address: string, options: ConnectOptions): Promise<PeerConnection> {
  const limits = resolveLimits(options.limits);
  const remote = await dialTls({ identity: options.identity, address, timeoutMs: limits.handshakeTimeoutMs, signal: options.signal });
  return finishConnect(pinned(remote, options), options);
}

/** The pin, checked before we send a single byte: the peer we meant, or (with none named) one we read from. */
function pinned(remote: AuthenticatedStream, options: ConnectOptions): AuthenticatedStream {
  const expected = options.expectedPeerId ? normalizePeerId(options.expectedPeerId) : undefined;
  const id = remote.peerId;
  if (expected ? id === expected : options.trust.readsFrom(id)) return remote;
  remote.stream.destroy();
  const where = remote.route === 'dht' ? `reached through the DHT (${remote.address})` : `at ${remote.address}`;
  const why = remote.route === 'dht' ? 'Someone else holds the DHT key it was reached by.' : 'Someone else may be answering at that address.';
  throw expected
    ? new PeerShareError('PEER_MISMATCH', `The peer ${where} is not the one you meant to reach: it presented ${id}. ${why}`)
    : new PeerShareError('PEER_UNTRUSTED', `The peer ${where} (${id}) is not one you trust.`);
}

/**
 * Happy eyeballs: the addresses (one after another, as without the DHT) and the DHT side by side;
 * the first stream that proves the expected peer is kept and the other attempt is cancelled (or
 * closed, if it proves the peer too late). Only a proved stream wins, and nothing is sent on any
 * stream before that: an invite's token goes to the winner alone. If every route fails, a
 * failure of the peer itself (another certificate, no trust) is reported before "not reached".
 */
async function firstProvedRoute(options: ConnectOptions): Promise<AuthenticatedStream> {
  const limits = resolveLimits(options.limits);
  const { identity, signal } = options;
  const race = new AbortController();
  const onAbort = (): void => race.abort();
  if (signal?.aborted) throw new PeerShareError('CANCELLED');
  signal?.addEventListener('abort', onAbort, { once: true });
  const direct = async (): Promise<AuthenticatedStream> => {
    let last: PeerShareError | undefined;
    for (const address of options.addresses) {
      if (race.signal.aborted) throw new PeerShareError('CANCELLED');
      try {
        return pinned(await dialTls({ identity, address, timeoutMs: limits.handshakeTimeoutMs, signal: race.signal }), options);
      } catch (err) {
        last = toPeerShareError(err, 'CONNECTION_FAILED');
        if (!UNREACHED.includes(last.code)) throw last;
      }
    }
    throw last!;
  };
  const dht = async (): Promise<AuthenticatedStream> =>
    pinned(await options.dht!.dial(options.dhtKey!, { identity, timeoutMs: limits.dhtConnectTimeoutMs, signal: race.signal }), options);
  const routes = options.addresses.length > 0 ? [direct(), dht()] : [dht()];
  try {
    return await firstToSucceed(routes, (late) => late.stream.destroy());
  } catch (errors) {
    if (signal?.aborted) throw new PeerShareError('CANCELLED');
    const failures = (errors as unknown[]).map((err) => toPeerShareError(err, 'CONNECTION_FAILED'));
    const ofThePeer = failures.find((f) => !UNREACHED.includes(f.code));
    if (ofThePeer || failures.length === 1) throw ofThePeer ?? failures[0];
    const [lan, internet] = failures;
    throw new PeerShareError(lan.code, `${lan.message} Through the internet (DHT): ${internet.message}`, {
      detail: [lan.detail, internet.detail].filter(Boolean).join(' ') || undefined,
      cause: lan,
    });
  } finally {
    race.abort();
    signal?.removeEventListener('abort', onAbort);
  }
}

/** After the pin: the hello on the proved stream, and the trust file told where (and how) the peer was reached. */
async function finishConnect(remote: AuthenticatedStream, options: ConnectOptions): Promise<PeerConnection> {
  const limits = resolveLimits(options.limits);
  const expected = options.expectedPeerId ? normalizePeerId(options.expectedPeerId) : undefined;
  const connection = new PeerConnection(remote, limits);
  const asking = options.requestAccess === true && options.token === undefined;
  if (asking) options.onVerificationCode?.(verificationCode(options.identity.fingerprint, fingerprintFromPeerId(connection.peerId)));
  // Wired before the hello: asking a person to let us in can take a minute, and may be cancelled.
  if (options.signal) {
    const onAbort = (): void => connection.close(new PeerShareError('CANCELLED'));
    if (options.signal.aborted) onAbort();
    options.signal.addEventListener('abort', onAbort, { once: true });
    connection.onClose(() => options.signal?.removeEventListener('abort', onAbort));
  }
  try {
    // The peer pinned above: dialV2 checks it again before writing its hello.
    await connection.hello({ expectedPeerId: expected ?? remote.peerId, name: options.name, token: options.token, requestAccess: asking, send: options.send });
  } catch (err) {
    connection.close();
    throw err;
  }
  // We remember a sharer we may read: its invite worked, it let us in for good, or we knew it.
  // That is one direction only: it never lets the sharer read *our* share (see TrustStore).
  // Allowed once is not a pairing.
  if ((expected && (!asking || connection.welcome.paired)) || options.trust.readsFrom(connection.peerId)) {
    const known = options.trust.get(connection.peerId);
    // A DHT stream's address is a UDP one of the moment, no place to look for the peer again.
    const address = remote.route === 'dht' ? undefined : remote.address;
    const addresses = address === undefined ? (known?.addresses ?? []) : [address, ...(known?.addresses ?? []).filter((a) => a !== address)].slice(0, 8);
    // Which route worked is remembered only where there was a choice (the peer has a DHT key).
    const dht = options.dhtKey !== undefined ? parseDhtKey(options.dhtKey) : undefined;
    const route = (dht ?? known?.dht) ? { reachedVia: remote.route ?? ('direct' as const) } : {};
    await options.trust.addSharer({ id: connection.peerId, name: connection.welcome.name, addresses, ...(dht ? { dht } : {}), ...route });
  }
  return connection;
}

/**
 * One authenticated connection to a peer over protocol v2 (docs/protocol-v2.md), over any stream
 * its transport proved (transport.ts): the handshake, then a multiplexed Connection on which the
 * peer's share is read through `share` (share/1). Several requests may run at once.
 */
export class PeerConnection {
  welcome!: WelcomeMessage;
  /** The peer ID its transport proved. */
  readonly peerId: string;
  /** Where the peer is (`host:port`), for display. */
  readonly address: string;
  /** How it was reached: on the LAN (`direct`) or through the DHT. */
  readonly route: StreamRoute;
  /** The peer's share (capability share/1), once the handshake is through. */
  share!: ShareClient;
  /** send/1 on this connection (offers either way), when a SendService was given. */
  sendSession?: SendSession;
  private connection?: Connection;
  private closedWith?: PeerShareError;
  private closeListeners: (() => void)[] = [];
  private readonly abortHandshake = new AbortController();

  constructor(
    private readonly remote: AuthenticatedStream,
    readonly limits: Limits,
  ) {
    this.peerId = remote.peerId;
    this.address = remote.address;
    this.route = remote.route ?? 'direct';
    remote.stream.on('error', (err) => this.close(toPeerShareError(err, 'CONNECTION_CLOSED')));
    remote.stream.on('close', () => this.close(new PeerShareError('CONNECTION_CLOSED')));
  }

  /** Bytes of frames received on this connection after the handshake (decrypted, framing included). */
  get bytesReceived(): number {
    return this.connection?.stats.bytesReceived ?? 0;
  }

  get peerName(): string {
    return this.welcome?.name ?? '';
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  onClose(listener: () => void): void {
    if (this.closedWith) listener();
    else this.closeListeners.push(listener);
  }

  close(reason: PeerShareError = new PeerShareError('CANCELLED', 'Connection closed.')): void {
    if (this.closedWith) return;
    this.closedWith = reason;
    this.abortHandshake.abort(reason);
    // Hung up at once, as v1 did: nothing of ours (a goodbye's grace timer) outlives close(), and
    // our requests fail with the reason.
    this.remote.stream.destroy();
    this.connection?.close(reason);
    for (const listener of this.closeListeners.splice(0)) listener();
  }

  /**
   * @internal The v2 handshake with the peer we meant to reach (dialV2 refuses another before a byte
   * is written); a sharer that asks a person may take up to approvalTimeoutMs.
   */
  async hello(options: { expectedPeerId: string; name: string; token?: string; requestAccess?: boolean; send?: SendService }): Promise<void> {
    const session = options.send?.session(this.peerId);
    const { connection, welcome } = await dialV2(this.remote, {
      expectedPeerId: options.expectedPeerId,
      name: options.name,
      token: options.token,
      request: options.requestAccess === true,
      serve: { ...session?.served() },
      limits: this.limits,
      signal: this.abortHandshake.signal,
    }).catch((err: unknown) => {
      throw this.closedWith ?? toPeerShareError(err, 'PROTOCOL_ERROR');
    });
    this.connection = connection;
    this.share = new ShareClient(connection);
    const roots = shareRootsOf(welcome.caps[SHARE_CAPABILITY]);
    if (!roots) {
      const breach = new PeerShareError('PROTOCOL_ERROR', `${sanitizeForDisplay(this.peerName) || 'The peer'} advertised share roots out of the protocol's bounds.`);
      connection.close(breach);
      throw breach;
    }
    if (session) {
      session.attach(connection, { name: welcome.name, capabilities: Object.keys(welcome.caps) });
      this.sendSession = session;
    }
    this.welcome = { type: 'welcome', version: welcome.version, name: welcome.name, id: welcome.id, roots, paired: welcome.paired };
    connection.onClose((reason) => this.close(reason ?? new PeerShareError('CONNECTION_CLOSED', `${sanitizeForDisplay(this.peerName) || 'The peer'} closed the connection.`)));
    if (this.closedWith) connection.close();
  }

  stat(remotePath: string, options: { signal?: AbortSignal } = {}): Promise<Entry> {
    return this.share.stat(remotePath, options);
  }

  /**
   * Lists a folder; `onBatch` sees entries as they arrive (a big folder arrives in several).
   * At most maxListEntries entries and maxListBytes of names are accepted, whatever the peer sends.
   */
  list(remotePath: string, onBatch?: (entries: Entry[]) => void, options: { signal?: AbortSignal } = {}): Promise<Entry[]> {
    return this.share.list(remotePath, { ...options, onBatch });
  }
}
