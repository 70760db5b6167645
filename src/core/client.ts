import type { Duplex } from 'node:stream';
import type { Identity } from './identity';
import { PeerShareError, toPeerShareError } from './errors';
import { FrameParser, encodeMessage } from './frames';
import { resolveLimits, type Limits } from './limits';
import { fingerprintFromPeerId, normalizePeerId, verificationCode } from './peer-id';
import {
  PROTOCOL_VERSIONS,
  errorFromMessage,
  shownType,
  parseEntry,
  parseWelcome,
  type Entry,
  type WelcomeMessage,
} from './protocol';
import type { AuthenticatedStream } from './transport';
import { dialTls } from './transport-tls';
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

/**
 * Tells the connection that the open request moved forward by `bytes`: file bytes, or the worth
 * of a record that brings the request nearer its end (see recordBytes). Only this restarts the
 * stall timer and grows the overall deadline; bytes that move nothing forward (keep-alives,
 * empty batches, zero-length frames, a message dripped byte by byte) never do.
 */
export type ReportProgress = (bytes: number) => void;

/** A request's handler: sees each event in order, calls `done` at the end and `progress` on the way. */
export type RequestHandler = (event: PeerEvent, done: () => void, progress: ReportProgress) => void | Promise<void>;

const RECORD_OVERHEAD_BYTES = 64;

/** What a record (a file header, a listed name) is worth towards the deadline: its name and a little framing. */
export function recordBytes(name: string): number {
  return Buffer.byteLength(name, 'utf8') + RECORD_OVERHEAD_BYTES;
}

interface OpenRequest {
  handle(event: PeerEvent): void | Promise<void>;
  resolve(): void;
  reject(err: PeerShareError): void;
  clock: RequestClock;
}

/**
 * The two clocks every request runs against. The stall timer ends a request that makes no
 * progress for `stallMs`; the overall deadline ends one that takes longer than `deadlineMs` plus
 * the time its bytes take at `bytesPerSecond` (counted as they arrive, so a peer that announces a
 * petabyte and drips it a byte at a time still meets the deadline). While we wait for our own
 * disk or for a person's answer, neither clock runs.
 */
class RequestClock {
  private stallAt: number;
  private deadlineAt: number;
  private pausedAt?: number;
  private timer?: NodeJS.Timeout;
  private stopped = false;

  constructor(
    private readonly stallMs: number,
    private readonly deadlineMs: number,
    private readonly bytesPerSecond: number,
    private readonly expire: (err: PeerShareError) => void,
  ) {
    const now = performance.now();
    this.stallAt = now + stallMs;
    this.deadlineAt = now + deadlineMs;
    this.schedule();
  }

  progress(bytes: number): void {
    this.stallAt = performance.now() + this.stallMs;
    this.deadlineAt += (bytes / this.bytesPerSecond) * 1000;
  }

  /** Our own work (the disk, a question to a person) is not the peer's delay. */
  pause(): void {
    if (this.pausedAt !== undefined || this.stopped) return;
    this.pausedAt = performance.now();
    clearTimeout(this.timer);
  }

  resume(): void {
    if (this.pausedAt === undefined || this.stopped) return;
    // Both clocks stand still while we wait: waiting is not progress either.
    const waited = performance.now() - this.pausedAt;
    this.deadlineAt += waited;
    this.stallAt += waited;
    this.pausedAt = undefined;
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  // One timer, moved only when it fires: progress on every chunk costs two additions, not a new timer.
  private schedule(): void {
    const wait = Math.max(0, Math.min(this.stallAt, this.deadlineAt) - performance.now());
    this.timer = setTimeout(() => this.check(), Math.ceil(wait));
    this.timer.unref();
  }

  private check(): void {
    if (this.stopped || this.pausedAt !== undefined) return;
    const now = performance.now();
    if (now >= this.deadlineAt) {
      return this.expire(new PeerShareError('TIMEOUT', `The peer did not finish in time (${this.deadlineMs / 1000} s, plus the time its bytes take at the slowest rate allowed).`));
    }
    if (now >= this.stallAt) return this.expire(new PeerShareError('TIMEOUT', `The peer made no progress for ${this.stallMs} ms.`));
    this.schedule();
  }
}

// Received bytes waiting for the disk; above HIGH the stream pauses, below LOW it resumes.
const QUEUE_HIGH_BYTES = 2 * 1024 * 1024;
const QUEUE_LOW_BYTES = 512 * 1024;
// Messages waiting likewise (while we wait for the disk or a person's answer): counted, since each
// may be up to maxMessageBytes, so a flood of records is not read ahead without bound.
const QUEUE_HIGH_MESSAGES = 32;
const QUEUE_LOW_MESSAGES = 8;

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
    await connection.hello(options.name, options.token, asking);
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
 * One authenticated connection to a peer, over any stream its transport proved (transport.ts).
 * Requests run one at a time; what arrives is handed to the open request in order, with
 * back-pressure to the stream while the disk catches up.
 */
export class PeerConnection {
  welcome!: WelcomeMessage;
  /** Bytes received on this connection after decryption, framing included. */
  bytesReceived = 0;
  /** The peer ID its transport proved. */
  readonly peerId: string;
  /** Where the peer is (`host:port`), for display. */
  readonly address: string;
  private readonly stream: Duplex;
  private readonly parser: FrameParser;
  private request?: OpenRequest;
  private queue: PeerEvent[] = [];
  private queuedBytes = 0;
  private queuedMessages = 0;
  private draining = false;
  private closedWith?: PeerShareError;
  private closeListeners: (() => void)[] = [];

  constructor(
    remote: AuthenticatedStream,
    readonly limits: Limits,
  ) {
    this.peerId = remote.peerId;
    this.address = remote.address;
    this.stream = remote.stream;
    this.parser = new FrameParser(limits, {
      onMessage: (message) => this.enqueue({ kind: 'message', message }),
      onData: (chunk) => this.enqueue({ kind: 'data', chunk }),
    });
    this.stream.on('data', (chunk: Buffer) => {
      // Bytes alone are not progress (see ReportProgress): no timer moves here.
      this.bytesReceived += chunk.length;
      try {
        this.parser.push(chunk);
      } catch (err) {
        this.close(toPeerShareError(err, 'PROTOCOL_ERROR'));
      }
    });
    this.stream.on('error', (err) => this.close(toPeerShareError(err, 'CONNECTION_CLOSED')));
    this.stream.on('close', () => this.close(new PeerShareError('CONNECTION_CLOSED')));
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
    this.stream.destroy();
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
    const approvalMs = requestAccess ? this.limits.approvalTimeoutMs : 0;
    const timing = { stallMs: approvalMs + this.limits.stallTimeoutMs, deadlineMs: approvalMs + this.limits.helloTimeoutMs };
    await this.exchange(hello, (event, done) => {
      const m = expectMessage(event);
      if (m.type !== 'welcome') throw new PeerShareError('PROTOCOL_ERROR', `Expected welcome, got ${shownType(m.type)}.`);
      const welcome = parseWelcome(m);
      if (!(PROTOCOL_VERSIONS as readonly number[]).includes(welcome.version)) throw new PeerShareError('VERSION_UNSUPPORTED');
      // The ID the peer claims in the protocol must be the one its TLS certificate proves.
      if (welcome.id !== this.peerId) throw new PeerShareError('PEER_MISMATCH', 'The peer claims an ID other than its certificate’s.');
      this.welcome = welcome;
      done();
    }, timing);
  }

  async stat(remotePath: string): Promise<Entry> {
    let entry: Entry | undefined;
    await this.exchange({ type: 'stat', path: remotePath }, (event, done) => {
      const m = expectMessage(event);
      if (m.type !== 'entry') throw new PeerShareError('PROTOCOL_ERROR', `Expected entry, got ${shownType(m.type)}.`);
      entry = parseEntry(m.entry);
      done();
    });
    return entry!;
  }

  /**
   * Lists a folder; `onBatch` sees entries as they arrive (a big folder arrives in several).
   * At most maxListEntries entries and maxListBytes of names are accepted, whatever the peer sends.
   */
  async list(remotePath: string, onBatch?: (entries: Entry[]) => void): Promise<Entry[]> {
    const all: Entry[] = [];
    const seen = new Set<string>();
    let nameBytes = 0;
    await this.exchange({ type: 'list', path: remotePath }, (event, done, progress) => {
      const m = expectMessage(event);
      if (m.type === 'end') return done();
      if (m.type !== 'entries' || !Array.isArray(m.entries)) throw new PeerShareError('PROTOCOL_ERROR', `Expected entries, got ${shownType(m.type)}.`);
      // Counted before anything is parsed or kept.
      if (all.length + m.entries.length > this.limits.maxListEntries) {
        throw new PeerShareError('TOO_LARGE', `The listing has more than ${this.limits.maxListEntries} entries.`);
      }
      const batch = m.entries.map(parseEntry);
      let batchBytes = 0;
      for (const entry of batch) {
        if (entry.name === '' || entry.name.includes('/') || entry.name === '.' || entry.name === '..' || seen.has(entry.name)) {
          throw new PeerShareError('BAD_NAME', 'The peer listed an invalid or duplicate name.');
        }
        seen.add(entry.name);
        batchBytes += recordBytes(entry.name);
        nameBytes += Buffer.byteLength(entry.name, 'utf8');
      }
      if (nameBytes > this.limits.maxListBytes) {
        throw new PeerShareError('TOO_LARGE', `The listing's names take more than ${this.limits.maxListBytes} bytes.`);
      }
      all.push(...batch);
      if (batch.length > 0) progress(batchBytes);
      onBatch?.(batch);
    });
    return all;
  }

  /**
   * Sends a request and feeds what comes back to `handle` until it calls `done`. An `error`
   * message from the peer ends the request with that error; the connection stays usable.
   * The request ends with TIMEOUT when it makes no progress for `stallMs` (default stallTimeoutMs)
   * or outlives its deadline (default requestTimeoutMs, growing with its bytes; see RequestClock).
   */
  exchange(request: object, handle: RequestHandler, timing: { stallMs?: number; deadlineMs?: number } = {}): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.request) return Promise.reject(new PeerShareError('INTERNAL', 'A request is already running on this connection.'));
    return new Promise<void>((resolve, reject) => {
      let finished = false;
      const finish = (err?: PeerShareError): void => {
        if (finished) return;
        finished = true;
        clock.stop();
        if (this.request === open) this.request = undefined;
        if (err) reject(err);
        else resolve();
      };
      const clock = new RequestClock(
        timing.stallMs ?? this.limits.stallTimeoutMs,
        timing.deadlineMs ?? this.limits.requestTimeoutMs,
        this.limits.minTransferBytesPerSecond,
        (err) => this.close(err),
      );
      const progress: ReportProgress = (bytes) => clock.progress(bytes);
      const open: OpenRequest = {
        handle: (event) => {
          if (event.kind === 'message' && event.message.type === 'error') throw errorFromMessage(event.message);
          // File bytes are progress by definition (a DATA frame of no bytes never becomes an event).
          if (event.kind === 'data') clock.progress(event.chunk.length);
          return handle(event, () => finish(), progress);
        },
        resolve: () => finish(),
        reject: (err) => finish(err),
        clock,
      };
      this.request = open;
      this.stream.write(encodeMessage(request));
    });
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
    if (event.kind === 'data') this.queuedBytes += event.chunk.length;
    else this.queuedMessages++;
    if (this.queuedBytes > QUEUE_HIGH_BYTES || this.queuedMessages > QUEUE_HIGH_MESSAGES) this.stream.pause();
    if (!this.draining) void this.drain();
  }

  private async drain(): Promise<void> {
    this.draining = true;
    while (this.queue.length > 0 && this.request) {
      const event = this.queue.shift()!;
      if (event.kind === 'data') this.queuedBytes -= event.chunk.length;
      else this.queuedMessages--;
      const request = this.request;
      try {
        const pending = request.handle(event);
        if (pending) {
          request.clock.pause(); // our disk (or a person) is slow, not the peer
          try {
            await pending;
          } finally {
            request.clock.resume();
          }
        }
      } catch (err) {
        const coded = toPeerShareError(err, 'PROTOCOL_ERROR');
        // Our own refusal (bad name, lying hash) leaves the stream in an unknown state: hang up.
        this.queue = [];
        this.queuedBytes = 0;
        this.queuedMessages = 0;
        request.reject(coded);
        if (!(event.kind === 'message' && event.message.type === 'error')) this.close(coded);
      }
      if (this.queuedBytes < QUEUE_LOW_BYTES && this.queuedMessages < QUEUE_LOW_MESSAGES && this.stream.isPaused()) this.stream.resume();
    }
    if (!this.request && this.queue.length > 0) {
      this.queue = [];
      this.close(new PeerShareError('PROTOCOL_ERROR', 'The peer sent more than was asked for.'));
    }
    if (this.stream.isPaused()) this.stream.resume();
    this.draining = false;
  }
}

export function expectMessage(event: PeerEvent): Record<string, unknown> {
  if (event.kind !== 'message') throw new PeerShareError('PROTOCOL_ERROR', 'Unexpected file data.');
  return event.message;
}
