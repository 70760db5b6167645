import * as tls from 'node:tls';
import type { Identity } from './identity';
import { PeerShareError, toPeerShareError } from './errors';
import { FrameParser, encodeMessage } from './frames';
import { parseAddress } from './invite';
import { resolveLimits, type Limits } from './limits';
import { fingerprintFromPeerId, normalizePeerId, peerIdOfCert, verificationCode } from './peer-id';
import {
  PROTOCOL_VERSIONS,
  errorFromMessage,
  parseEntry,
  parseWelcome,
  type Entry,
  type WelcomeMessage,
} from './protocol';
import { TLS_OPTIONS } from './tls-options';
import type { TrustStore } from './trust';

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
}

/** What arrives from the peer while a request is open: messages and file bytes, in order. */
export type PeerEvent = { kind: 'message'; message: Record<string, unknown> } | { kind: 'data'; chunk: Buffer };

interface OpenRequest {
  handle(event: PeerEvent): void | Promise<void>;
  resolve(): void;
  reject(err: PeerShareError): void;
}

// Received bytes waiting for the disk; above HIGH the socket pauses, below LOW it resumes.
const QUEUE_HIGH_BYTES = 2 * 1024 * 1024;
const QUEUE_LOW_BYTES = 512 * 1024;

/** Connects, pins the peer's certificate, says hello, and returns a ready connection. */
export async function connectToPeer(options: ConnectOptions): Promise<PeerConnection> {
  if (options.addresses.length === 0) throw new PeerShareError('INVALID_ARGUMENT', 'No address to connect to.');
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
  const parsed = parseAddress(address);
  if (!parsed) throw new PeerShareError('INVALID_ARGUMENT', `Not an address: ${address}`);
  const limits = resolveLimits(options.limits);
  const expected = options.expectedPeerId ? normalizePeerId(options.expectedPeerId) : undefined;
  const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({
      ...TLS_OPTIONS,
      host: parsed.host,
      port: parsed.port,
      key: options.identity.keyPem,
      cert: options.identity.certPem,
      // Self-signed peers: the pin below is the check, done before we send a single byte.
      rejectUnauthorized: false,
      servername: undefined,
    });
    const timer = setTimeout(() => fail(new PeerShareError('TIMEOUT', `No TLS handshake with ${address} within ${limits.handshakeTimeoutMs} ms.`)), limits.handshakeTimeoutMs);
    const onAbort = (): void => fail(new PeerShareError('CANCELLED'));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    function fail(err: PeerShareError): void {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      s.destroy();
      reject(err);
    }
    s.once('error', (err) => fail(toPeerShareError(err, 'CONNECTION_FAILED')));
    s.once('close', () => fail(new PeerShareError('CONNECTION_FAILED', `The peer at ${address} closed the connection during the handshake.`)));
    s.once('secureConnect', () => {
      const cert = s.getPeerCertificate(false);
      const id = cert?.raw ? peerIdOfCert(cert.raw) : undefined;
      if (!id) return fail(new PeerShareError('PEER_MISMATCH', 'The peer presented no certificate.'));
      if (expected ? id !== expected : !options.trust.readsFrom(id)) {
        return fail(
          expected
            ? new PeerShareError('PEER_MISMATCH', `The peer at ${address} is not the one in the invite (it presented ${id}).`)
            : new PeerShareError('PEER_UNTRUSTED', `The peer at ${address} (${id}) is not one you trust.`),
        );
      }
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      s.removeAllListeners('error');
      s.removeAllListeners('close');
      resolve(s);
    });
  });
  const connection = new PeerConnection(socket, peerIdOfCert(socket.getPeerCertificate(false).raw), address, limits);
  const asking = options.requestAccess === true && options.token === undefined;
  if (asking) options.onVerificationCode?.(verificationCode(options.identity.fingerprint, fingerprintFromPeerId(connection.peerId)));
  try {
    await connection.hello(options.name, options.token, asking);
  } catch (err) {
    connection.close();
    throw err;
  }
  if (options.signal) {
    const onAbort = (): void => connection.close(new PeerShareError('CANCELLED'));
    options.signal.addEventListener('abort', onAbort, { once: true });
    connection.onClose(() => options.signal?.removeEventListener('abort', onAbort));
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
 * One authenticated connection to a peer. Requests run one at a time; what arrives is handed to
 * the open request in order, with back-pressure to the socket while the disk catches up.
 */
export class PeerConnection {
  welcome!: WelcomeMessage;
  /** Bytes received on this connection after decryption, framing included. */
  bytesReceived = 0;
  private readonly parser: FrameParser;
  private request?: OpenRequest;
  private queue: PeerEvent[] = [];
  private queuedBytes = 0;
  private draining = false;
  private closedWith?: PeerShareError;
  private stallTimer?: NodeJS.Timeout;
  private closeListeners: (() => void)[] = [];
  private requestStallMs?: number;

  constructor(
    private readonly socket: tls.TLSSocket,
    readonly peerId: string,
    readonly address: string,
    readonly limits: Limits,
  ) {
    socket.setNoDelay(true);
    this.parser = new FrameParser(limits, {
      onMessage: (message) => this.enqueue({ kind: 'message', message }),
      onData: (chunk) => this.enqueue({ kind: 'data', chunk }),
    });
    socket.on('data', (chunk: Buffer) => {
      this.bytesReceived += chunk.length;
      this.armStallTimer();
      try {
        this.parser.push(chunk);
      } catch (err) {
        this.close(toPeerShareError(err, 'PROTOCOL_ERROR'));
      }
    });
    socket.on('error', (err) => this.close(toPeerShareError(err, 'CONNECTION_CLOSED')));
    socket.on('close', () => this.close(new PeerShareError('CONNECTION_CLOSED')));
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
    clearTimeout(this.stallTimer);
    this.socket.destroy();
    this.queue = [];
    const request = this.request;
    this.request = undefined;
    request?.reject(reason);
    for (const listener of this.closeListeners.splice(0)) listener();
  }

  /** @internal */
  async hello(name: string, token?: string, requestAccess = false): Promise<void> {
    const hello = { type: 'hello', versions: [...PROTOCOL_VERSIONS], name, ...(token ? { token } : {}), ...(requestAccess ? { request: true } : {}) };
    // Asking a person takes longer than a peer's answer: wait as long as the sharer may.
    const waitMs = requestAccess ? this.limits.approvalTimeoutMs + this.limits.stallTimeoutMs : undefined;
    await this.exchange(hello, (event, done) => {
      const m = expectMessage(event);
      if (m.type !== 'welcome') throw new PeerShareError('PROTOCOL_ERROR', `Expected welcome, got ${String(m.type)}.`);
      const welcome = parseWelcome(m);
      if (!(PROTOCOL_VERSIONS as readonly number[]).includes(welcome.version)) throw new PeerShareError('VERSION_UNSUPPORTED');
      // The ID the peer claims in the protocol must be the one its TLS certificate proves.
      if (welcome.id !== this.peerId) throw new PeerShareError('PEER_MISMATCH', 'The peer claims an ID other than its certificate’s.');
      this.welcome = welcome;
      done();
    }, waitMs);
  }

  async stat(remotePath: string): Promise<Entry> {
    let entry: Entry | undefined;
    await this.exchange({ type: 'stat', path: remotePath }, (event, done) => {
      const m = expectMessage(event);
      if (m.type !== 'entry') throw new PeerShareError('PROTOCOL_ERROR', `Expected entry, got ${String(m.type)}.`);
      entry = parseEntry(m.entry);
      done();
    });
    return entry!;
  }

  /** Lists a folder; `onBatch` sees entries as they arrive (a big folder arrives in several). */
  async list(remotePath: string, onBatch?: (entries: Entry[]) => void): Promise<Entry[]> {
    const all: Entry[] = [];
    const seen = new Set<string>();
    await this.exchange({ type: 'list', path: remotePath }, (event, done) => {
      const m = expectMessage(event);
      if (m.type === 'end') return done();
      if (m.type !== 'entries' || !Array.isArray(m.entries)) throw new PeerShareError('PROTOCOL_ERROR', `Expected entries, got ${String(m.type)}.`);
      const batch = m.entries.map(parseEntry);
      for (const entry of batch) {
        if (entry.name === '' || entry.name.includes('/') || entry.name === '.' || entry.name === '..' || seen.has(entry.name)) {
          throw new PeerShareError('BAD_NAME', 'The peer listed an invalid or duplicate name.');
        }
        seen.add(entry.name);
      }
      if (all.length + batch.length > this.limits.maxListEntries) throw new PeerShareError('TOO_LARGE', 'The listing is over the limit.');
      all.push(...batch);
      onBatch?.(batch);
    });
    return all;
  }

  /**
   * Sends a request and feeds what comes back to `handle` until it calls `done`. An `error`
   * message from the peer ends the request with that error; the connection stays usable.
   */
  exchange(request: object, handle: (event: PeerEvent, done: () => void) => void | Promise<void>, stallMs?: number): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.request) return Promise.reject(new PeerShareError('INTERNAL', 'A request is already running on this connection.'));
    return new Promise<void>((resolve, reject) => {
      let finished = false;
      const finish = (err?: PeerShareError): void => {
        if (finished) return;
        finished = true;
        clearTimeout(this.stallTimer);
        if (this.request === open) this.request = undefined;
        if (err) reject(err);
        else resolve();
      };
      const open: OpenRequest = {
        handle: (event) => {
          if (event.kind === 'message' && event.message.type === 'error') throw errorFromMessage(event.message);
          return handle(event, () => finish());
        },
        resolve: () => finish(),
        reject: (err) => finish(err),
      };
      this.request = open;
      this.requestStallMs = stallMs;
      this.armStallTimer();
      this.socket.write(encodeMessage(request));
    });
  }

  private armStallTimer(): void {
    clearTimeout(this.stallTimer);
    if (!this.request) return;
    const ms = this.requestStallMs ?? this.limits.stallTimeoutMs;
    this.stallTimer = setTimeout(() => this.close(new PeerShareError('TIMEOUT', `The peer sent nothing for ${ms} ms.`)), ms);
    this.stallTimer.unref();
  }

  private enqueue(event: PeerEvent): void {
    if (this.closedWith) return;
    if (!this.request) {
      // An error after a request ended (e.g. a BUSY goodbye) or anything unasked-for.
      const m = event.kind === 'message' ? event.message : undefined;
      this.close(m?.type === 'error' ? errorFromMessage(m) : new PeerShareError('PROTOCOL_ERROR', 'The peer sent something nobody asked for.'));
      return;
    }
    this.queue.push(event);
    this.queuedBytes += event.kind === 'data' ? event.chunk.length : 0;
    if (this.queuedBytes > QUEUE_HIGH_BYTES) this.socket.pause();
    if (!this.draining) void this.drain();
  }

  private async drain(): Promise<void> {
    this.draining = true;
    while (this.queue.length > 0 && this.request) {
      const event = this.queue.shift()!;
      if (event.kind === 'data') this.queuedBytes -= event.chunk.length;
      const request = this.request;
      try {
        const pending = request.handle(event);
        if (pending) {
          clearTimeout(this.stallTimer); // our disk is slow, not the peer
          await pending;
          this.armStallTimer();
        }
      } catch (err) {
        const coded = toPeerShareError(err, 'PROTOCOL_ERROR');
        // Our own refusal (bad name, lying hash) leaves the stream in an unknown state: hang up.
        this.queue = [];
        this.queuedBytes = 0;
        request.reject(coded);
        if (!(event.kind === 'message' && event.message.type === 'error')) this.close(coded);
      }
      if (this.queuedBytes < QUEUE_LOW_BYTES && this.socket.isPaused()) this.socket.resume();
    }
    if (!this.request && this.queue.length > 0) {
      this.queue = [];
      this.close(new PeerShareError('PROTOCOL_ERROR', 'The peer sent more than was asked for.'));
    }
    if (this.socket.isPaused()) this.socket.resume();
    this.draining = false;
  }
}

export function expectMessage(event: PeerEvent): Record<string, unknown> {
  if (event.kind !== 'message') throw new PeerShareError('PROTOCOL_ERROR', 'Unexpected file data.');
  return event.message;
}
