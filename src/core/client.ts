import { blake3Backend } from './blake3';
import type { Identity } from './identity';
import { PeerShareError, toPeerShareError } from './errors';
import { resolveLimits, type Limits } from './limits';
import { fingerprintFromPeerId, normalizePeerId, verificationCode } from './peer-id';
import { sanitizeForDisplay, type Entry, type WelcomeMessage } from './protocol';
import type { AuthenticatedStream } from './transport';
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
}

/** Spec 6: `share/1`'s roots, at most 256 names of 1 to 255 characters; undefined when the peer broke those bounds. No share advertised: none. */
function shareRootsOf(params: Record<string, unknown> | undefined): string[] | undefined {
  if (params === undefined || params.roots === undefined) return [];
  const { roots } = params;
  if (!Array.isArray(roots) || roots.length > MAX_SHARE_ROOTS) return undefined;
  return roots.every((root) => typeof root === 'string' && root.length >= 1 && root.length <= MAX_SHARE_ROOT_CHARS) ? (roots as string[]) : undefined;
}

/** Connects, pins the peer's certificate, says hello, and returns a ready connection. */
export async function connectToPeer(options: ConnectOptions): Promise<PeerConnection> {
  if (options.addresses.length === 0) throw new PeerShareError('INVALID_ARGUMENT', 'No address to connect to.');
  // BLAKE3 is loaded before the socket opens, not when the first block arrives (as the sharer
  // does at listen, server.ts): loading it stalls the event loop, less here than with a server's
  // many sockets, but never mid-transfer.
  blake3Backend();
  let lastError: PeerShareError | undefined;
  for (const address of options.addresses) {
    if (options.signal?.aborted) throw new PeerShareError('CANCELLED');
    try {
      return await connectOnce(address, options);
    } catch (err) {
      lastError = toPeerShareError(err, 'CONNECTION_FAILED');
      // Only a failure to reach this address is worth trying the next one for.
      if (!['CONNECTION_FAILED', 'TIMEOUT', 'CONNECTION_CLOSED'].includes(lastError.code)) throw lastError;
    }
  }
  throw lastError!;
}

async function connectOnce(address: string, options: ConnectOptions): Promise<PeerConnection> {
  const limits = resolveLimits(options.limits);
  const expected = options.expectedPeerId ? normalizePeerId(options.expectedPeerId) : undefined;
  const remote = await dialTls({ identity: options.identity, address, timeoutMs: limits.handshakeTimeoutMs, signal: options.signal });
  const id = remote.peerId;
  // The pin, checked before we send a single byte.
  if (expected ? id !== expected : !options.trust.readsFrom(id)) {
    remote.stream.destroy();
    throw expected
      ? new PeerShareError('PEER_MISMATCH', `The peer at ${address} is not the one you meant to reach: it presented ${id}. Someone else may be answering at that address.`)
      : new PeerShareError('PEER_UNTRUSTED', `The peer at ${address} (${id}) is not one you trust.`);
  }
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
    await connection.hello({ expectedPeerId: expected ?? id, name: options.name, token: options.token, requestAccess: asking, send: options.send });
  } catch (err) {
    connection.close();
    throw err;
  }
  // We remember a sharer we may read: its invite worked, it let us in for good, or we knew it.
  // That is one direction only: it never lets the sharer read *our* share (see TrustStore).
  // Allowed once is not a pairing.
  if ((expected && (!asking || connection.welcome.paired)) || options.trust.readsFrom(connection.peerId)) {
    const known = options.trust.get(connection.peerId);
    const addresses = [address, ...(known?.addresses ?? []).filter((a) => a !== address)].slice(0, 8);
    await options.trust.addSharer({ id: connection.peerId, name: connection.welcome.name, addresses });
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
  /** Bytes received on this connection after decryption, framing included. */
  bytesReceived = 0;
  /** The peer ID its transport proved. */
  readonly peerId: string;
  /** Where the peer is (`host:port`), for display. */
  readonly address: string;
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
    remote.stream.on('data', (chunk: Buffer) => {
      this.bytesReceived += chunk.length;
    });
    remote.stream.on('error', (err) => this.close(toPeerShareError(err, 'CONNECTION_CLOSED')));
    remote.stream.on('close', () => this.close(new PeerShareError('CONNECTION_CLOSED')));
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
