import type { Duplex } from 'node:stream';
import { PeerShareError, toPeerShareError } from '../errors';
import { CLOSE_GRACE_MS, MAX_QUEUED_ANSWER_PARTS, resolveLimits, type Limits } from '../limits';
import { TokenBucket } from '../token-bucket';
import { readIntoReusedBuffer } from '../reused-read-buffer';
import { isPeerId, shortPeerId } from '../peer-id';
import { sanitizeForDisplay, shownType } from '../protocol';
import {
  CONNECTION_FRAME_HEADER_BYTES,
  ConnectionFrameParser,
  ConnectionFrameType,
  MAX_CREDIT,
  MAX_FRAME_CEILING_BYTES,
  MAX_REQUEST_ID,
  encodeCancelFrame,
  encodeConnectionHeader,
  encodeMessageFrame,
  encodeWindowFrame,
  type FrameHeader,
  type WireMessage,
} from './frames';
import {
  CLOSE_ERROR_CODES,
  END_ERROR_CODES,
  capabilityName,
  capabilityOf,
  closeMessageFor,
  endErrorFor,
  errorFromPeer,
  PeerSentError,
  type CapabilityMessage,
  type EndMessage,
  type EndOkMessage,
  type OutgoingFrame,
  type ReplyMessage,
} from './messages';

export type Side = 'dialer' | 'acceptor';

/** What each side announces in its hello/welcome (docs/protocol-v2.md 4.1) and the other must respect. */
export interface ConnectionSettings {
  /** Largest REQUEST/REPLY/DATA/END payload this side accepts. */
  frame: number;
  /** Initial credit of every request this side opens. */
  window: number;
  /** Requests the other side may have open at this side at once. */
  requests: number;
}

export interface ConnectionOptions {
  /** The remote's proved identity (the transport checked it before the first protocol byte). */
  peerId: string;
  /** For display only, never identity. */
  address: string;
  side: Side;
  /** The peer's name as it calls itself, for sentences that quote it (escaped here). */
  peerName?: string;
  limits?: Partial<Limits>;
  /** What we advertised; defaults from the limits. */
  local?: Partial<ConnectionSettings>;
  /** What the peer advertised; defaults to the same values as ours. */
  remote?: Partial<ConnectionSettings>;
  /** Capabilities the peer serves us (its hello/welcome `caps` keys, e.g. `share/1`). */
  peerCapabilities?: readonly string[];
  /** Bytes that arrived after the handshake frame, read before the stream's own. */
  initialBytes?: Buffer;
  /** Handlers by capability (`share/1`), in place before the first byte is read (see handle()). */
  handlers?: Record<string, RequestHandler>;
  /** Hears the peer's events from the first byte on (see onEvent()). */
  onEvent?: (event: CapabilityMessage) => void;
}

/** One part of an answer, in order: a REPLY message or a slice of DATA. */
export type AnswerPart<Item = never> = { kind: 'reply'; message: ReplyMessage } | { kind: 'data'; chunk: Buffer } | { kind: 'read'; items: Item[] };

/**
 * Reads an answer's REPLY messages and DATA as they arrive (share-client.ts runs its answer
 * machines so); the consumer then iterates what it made (`read` parts). Why at arrival: a stream
 * hands over every read in a fresh buffer, and one kept queued while the consumer is busy (a 4 MiB
 * block being written) outlives two scavenges, is promoted, and is freed only by a full collection:
 * on a 4 GiB download that was 40–60 MiB of dead read buffers in the receiver's peak
 * (docs/benchmarks.md, "Memory"). Read at once, each dies young, and what waits is the reader's
 * own output (verified blocks in reused buffers). A throw fails the request: the consumer meets it
 * after the parts read before it, and nothing more of that answer is read.
 */
export interface AnswerReader<Item> {
  reply(message: ReplyMessage): Item[];
  /** `chunk` is valid only during the call (the stream may lend it, reused-read-buffer.ts): copy what you keep. */
  data(chunk: Buffer): Item[];
}

/** How a handler answers: REPLY messages and DATA, in order, each resolved once written to the stream. */
export interface ReplyWriter {
  message(message: ReplyMessage): Promise<void>;
  /**
   * Never merged with another call's bytes, so a DATA frame never spans two blocks or files.
   * Resolves once the stream has taken all of `bytes`: then the buffer may be reused (a pool).
   */
  data(bytes: Buffer): Promise<void>;
}

/**
 * A capability's handler of one request. What it returns becomes `END {type:"end", …}`; a thrown
 * PeerShareError with a wire code becomes `END error` with that code (a local code becomes
 * INTERNAL, without detail); PROTOCOL_ERROR closes the connection (the request broke the spec).
 * `signal` fires when the requester cancels or the connection closes.
 */
export type RequestHandler = (
  request: CapabilityMessage,
  reply: ReplyWriter,
  signal: AbortSignal,
) => Promise<Omit<EndOkMessage, 'type'> | void> | Omit<EndOkMessage, 'type'> | void;

export interface ConnectionStats {
  /** Requests we opened whose END has not arrived (cancelled ones included). */
  outgoing: number;
  /** Requests we opened that wait for room under the peer's `requests`. */
  waiting: number;
  /** Requests of the peer we are answering. */
  incoming: number;
  framesSent: number;
  bytesSent: number;
  /** Bytes of frames received (decrypted, framing included), the handshake's not counted. */
  bytesReceived: number;
  /** The stream reads into one reused buffer (reused-read-buffer.ts), not a new Buffer per read. */
  readsIntoReusedBuffer: boolean;
}

type RequestState = 'open' | 'cancelled' | 'done';

/** A request we opened: credit we granted, parts not yet consumed, its clocks. */
class OutgoingRequest {
  id = 0;
  state: RequestState = 'open';
  /** Bytes the responder may still send: window + granted − received. */
  credit: number;
  /** Consumed bytes not yet given back with WINDOW. */
  unreported = 0;
  /** Bytes of the last part handed to the consumer: consumed once it asks for the next. */
  handedOut = 0;
  readonly parts: { part: AnswerPart<unknown>; bytes: number }[] = [];
  wake?: () => void;
  failure?: PeerShareError;
  /** Reads the answer as it arrives (AnswerReader); its failure, met by the consumer after the parts before it. */
  reader?: AnswerReader<unknown>;
  readFailure?: unknown;
  end?: EndOkMessage;
  stallAt = 0;
  deadlineAt = 0;
  /** When we sent CANCEL: the END must follow within stallTimeoutMs. */
  cancelledAt = 0;
  /** A watch (docs/protocol-v2.md 14.3): quiet is its normal state, so no stall or overall deadline. */
  longLived = false;

  constructor(
    readonly message: CapabilityMessage,
    readonly window: number,
    readonly settle: { resolve: (end: EndOkMessage) => void; reject: (err: PeerShareError) => void },
  ) {
    this.credit = window;
  }
}

/**
 * What `request()` returns: iterate it for the REPLY messages and DATA slices in order (asking for
 * the next part is what tells the peer the last one was consumed and grants it credit), and await
 * `result` for the END. Breaking out of the iteration cancels the request.
 */
export class Answer<Item = never> implements AsyncIterable<AnswerPart<Item>> {
  /** The END `{type:"end", …}`; rejects with the peer's error, TIMEOUT, CANCELLED or the connection's end. */
  readonly result: Promise<EndOkMessage>;

  /** @internal */
  constructor(
    private readonly request: OutgoingRequest | { failure: PeerShareError },
    result: Promise<EndOkMessage>,
    private readonly onNext: (request: OutgoingRequest) => void,
    private readonly onCancel: () => void,
  ) {
    this.result = result;
    // Nobody need await `result` (an iteration sees the same failure): never an unhandled rejection.
    result.catch(() => undefined);
  }

  get id(): number {
    return 'id' in this.request ? this.request.id : 0;
  }

  cancel(): void {
    this.onCancel();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<AnswerPart<Item>, void, undefined> {
    const request = this.request;
    if (!(request instanceof OutgoingRequest)) throw request.failure;
    let finished = false;
    try {
      for (;;) {
        this.onNext(request);
        const next = request.parts.shift();
        if (next) {
          request.handedOut = next.bytes;
          yield next.part as AnswerPart<Item>;
          continue;
        }
        if (request.readFailure !== undefined) throw request.readFailure;
        if (request.failure) throw request.failure;
        if (request.state === 'done') {
          finished = true;
          return;
        }
        await new Promise<void>((resolve) => (request.wake = resolve));
      }
    } finally {
      if (!finished && request.state === 'open') this.onCancel();
    }
  }
}

/** An answer we are sending: what waits to be written, and the credit the requester gave us. */
class IncomingAnswer {
  readonly items: OutgoingItem[] = [];
  credit: number;
  readonly abort = new AbortController();
  /** open: its handler runs; ending: its END is queued; done: its END is written. */
  state: 'open' | 'ending' | 'done' = 'open';
  /** Since when it has had data ready and no credit (0: it has not). */
  starvedSince = 0;
  /** In the round-robin line (ready) or parked for credit. */
  inLine = false;

  constructor(
    readonly id: number,
    window: number,
  ) {
    this.credit = window;
  }
}

type OutgoingItem =
  | { kind: 'reply'; frame: Buffer; bytes: number; done: Settle }
  | { kind: 'data'; bytes: Buffer; offset: number; done: Settle }
  | { kind: 'end'; frame: Buffer };
type Settle = { resolve: () => void; reject: (err: PeerShareError) => void };
/** A whole frame waiting its turn; `written` runs once it is handed to the stream (an END frees its id). */
type QueuedFrame = { frame: Buffer; written?: () => void };
const IGNORE: Settle = { resolve: () => undefined, reject: () => undefined };

/** What a side advertises from its limits: `frame` the smaller of its message and data bounds (ceiling 1 MiB), `window` at least two frames. */
export function advertisedSettings(limits: Limits): ConnectionSettings {
  const frame = Math.min(limits.maxMessageBytes, limits.maxDataFrameBytes, MAX_FRAME_CEILING_BYTES);
  return { frame, window: Math.max(2 * frame, limits.requestWindowBytes), requests: limits.maxRequestsPerPeer };
}

/**
 * One v2 connection (docs/protocol-v2.md 3 and 5) over a duplex stream whose remote has proved who
 * it is. Both sides are equal: either may open requests (odd ids the dialer's, even the
 * acceptor's), answer the other's through handlers registered per capability, and send events.
 * Data flows only against credit the requester grants as it consumes, answers take turns on the
 * stream in slices, and any breach of the spec closes the connection with a bounded CLOSE. The
 * connection never imports a transport: TLS, an in-memory pair or a Noise stream all do.
 */
export class Connection {
  readonly peerId: string;
  readonly address: string;
  readonly side: Side;
  readonly limits: Limits;
  readonly local: ConnectionSettings;
  readonly remote: ConnectionSettings;
  private readonly peerLabel: string;
  private readonly parser: ConnectionFrameParser;
  private readonly handlers = new Map<string, RequestHandler>();
  private readonly peerCapabilities: Set<string>;
  private readonly eventListeners: ((event: CapabilityMessage) => void)[] = [];
  private readonly closeListeners: ((reason: PeerShareError | undefined) => void)[] = [];

  // Requests we opened, by id; and those waiting for room under the peer's `requests`.
  private readonly outgoing = new Map<number, OutgoingRequest>();
  private readonly waiting: OutgoingRequest[] = [];
  private nextId: number;
  // Requests of the peer: the highest id it opened, and those we still answer.
  private highestPeerId = 0;
  private readonly incoming = new Map<number, IncomingAnswer>();

  // What waits to be written, in the spec's order (3.5): control, then messages, then answers in turn.
  private readonly control: Buffer[] = [];
  private readonly messages: QueuedFrame[] = [];
  private readonly line: IncomingAnswer[] = [];
  private writable = true;
  private pumping = false;
  private drainTimer?: NodeJS.Timeout;

  private readonly eventRate: TokenBucket;
  private messageTimer?: NodeJS.Timeout;
  private sweepTimer?: NodeJS.Timeout;
  private lastSweep = performance.now();
  private idleTimer?: NodeJS.Timeout;
  private closedWith?: { reason: PeerShareError | undefined };
  private readonly counters = { framesSent: 0, bytesSent: 0, bytesReceived: 0 };
  /** The chunk being parsed is lent (see receive()). */
  private lent = false;
  /** Reads arrive in one buffer reused for each (the chunk given to receive() is only lent). */
  private readsIntoReusedBuffer = false;

  constructor(
    private readonly stream: Duplex,
    options: ConnectionOptions,
  ) {
    this.peerId = options.peerId;
    this.address = options.address;
    this.side = options.side;
    this.limits = resolveLimits(options.limits);
    this.local = { ...advertisedSettings(this.limits), ...options.local };
    this.remote = { ...this.local, ...options.remote };
    for (const [whose, settings] of [['our', this.local], ["the peer's", this.remote]] as const) {
      // The handshake checks the peer's (spec 4.1). Below two frames, a REPLY could wait forever on
      // a half-spent window the requester has no reason yet to top up (spec 3.4).
      if (!(settings.frame >= 1 && settings.frame <= MAX_FRAME_CEILING_BYTES && settings.window >= 2 * settings.frame && settings.window <= MAX_CREDIT && settings.requests >= 1)) {
        throw new PeerShareError('INVALID_ARGUMENT', `Invalid connection settings (${whose}): frame ${settings.frame}, window ${settings.window}, requests ${settings.requests}.`);
      }
    }
    const name = options.peerName ? sanitizeForDisplay(options.peerName.slice(0, 100)) : '';
    const id = isPeerId(this.peerId) ? shortPeerId(this.peerId) : sanitizeForDisplay(this.address.slice(0, 100));
    this.peerLabel = name ? `${name} (${id})` : `The peer ${id}`;
    this.peerCapabilities = new Set((options.peerCapabilities ?? []).map(capabilityName));
    this.nextId = this.side === 'dialer' ? 1 : 2;
    this.eventRate = new TokenBucket(this.limits.maxEventsPerSecond, this.limits.maxEventBurst);
    for (const [capability, handler] of Object.entries(options.handlers ?? {})) this.handle(capability, handler);
    if (options.onEvent) this.eventListeners.push(options.onEvent);
    this.parser = new ConnectionFrameParser(
      { frameBytes: this.local.frame, maxEventBytes: this.limits.maxEventBytes },
      {
        onHeader: (header) => this.onHeader(header),
        onMessage: (type, frameId, message, bytes) => this.onMessage(type, frameId, message, bytes),
        onData: (frameId, chunk) => this.onData(frameId, chunk),
        onWindow: (frameId, increment) => this.onWindow(frameId, increment),
        onCancel: (frameId) => this.onCancel(frameId),
        onFrameProgress: (inFrame) => this.onFrameProgress(inFrame),
      },
    );
    // Nothing is read before this tick ends, so handlers registered right after construction see
    // every request (across an await, pass them as `handlers`); the bytes read past the handshake
    // frame come first, then the stream's, in order.
    stream.pause();
    stream.on('drain', () => this.onDrain());
    stream.on('error', (err) => this.shutDown(toPeerShareError(err, 'CONNECTION_CLOSED'), false));
    stream.on('end', () => this.shutDown(new PeerShareError('CONNECTION_CLOSED', `${this.peerLabel} hung up.`), false));
    stream.on('close', () => this.shutDown(new PeerShareError('CONNECTION_CLOSED', `${this.peerLabel} hung up.`), false));
    const initial = options.initialBytes;
    queueMicrotask(() => {
      if (initial && initial.length > 0) this.receive(initial);
      // What the stream already holds, then every read into one reused buffer where the stream
      // allows it (reused-read-buffer.ts says why); elsewhere 'data' events, as they come.
      for (let held: Buffer | null; (held = stream.read() as Buffer | null) !== null; ) this.receive(held);
      this.readsIntoReusedBuffer = readIntoReusedBuffer(stream, (chunk) => this.receive(chunk, true));
      if (!this.readsIntoReusedBuffer) stream.on('data', (chunk: Buffer) => this.receive(chunk));
      if (!this.closedWith) stream.resume();
    });
    this.armIdle();
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  get stats(): ConnectionStats {
    return { outgoing: this.outgoing.size, waiting: this.waiting.length, incoming: this.incoming.size, ...this.counters, readsIntoReusedBuffer: this.readsIntoReusedBuffer };
  }

  /** Serves a capability (`share/1`) to this peer: its requests `share.*` go to `handler`. */
  handle(capability: string, handler: RequestHandler): void {
    this.handlers.set(capabilityName(capability), handler);
  }

  onEvent(listener: (event: CapabilityMessage) => void): void {
    this.eventListeners.push(listener);
  }

  /** Called once, when the connection ends: no reason for a clean goodbye. */
  onClose(listener: (reason: PeerShareError | undefined) => void): void {
    if (this.closedWith) listener(this.closedWith.reason);
    else this.closeListeners.push(listener);
  }

  /**
   * Opens a request. It waits for room when the peer's `requests` are all open; `signal` cancels
   * it (locally CANCELLED; the peer sees a CANCEL). A request past its deadlines (stallTimeoutMs
   * without progress; requestTimeoutMs plus its bytes at minTransferBytesPerSecond) is cancelled
   * and fails with TIMEOUT; the connection stays. `longLived` (a watch, spec 14.3) has neither
   * deadline: quiet is its normal state; its credit and a CANCEL's END are still enforced.
   */
  request<Item = never>(message: CapabilityMessage, options: { signal?: AbortSignal; longLived?: boolean; reader?: AnswerReader<Item> } = {}): Answer<Item> {
    let settle!: OutgoingRequest['settle'];
    const result = new Promise<EndOkMessage>((resolve, reject) => (settle = { resolve, reject }));
    const refuse = (failure: PeerShareError): Answer<Item> => {
      settle.reject(failure);
      return new Answer({ failure }, result, () => undefined, () => undefined);
    };
    if (this.closedWith) return refuse(this.closedWith.reason ?? new PeerShareError('CONNECTION_CLOSED'));
    const capability = capabilityOf(message.type);
    if (!capability) return refuse(new PeerShareError('INVALID_ARGUMENT', `"${shownType(message.type)}" is not a request type such as "share.stat".`));
    if (!this.peerCapabilities.has(capability)) {
      return refuse(new PeerShareError('INVALID_ARGUMENT', `${this.peerLabel} does not serve "${capability}" on this connection.`));
    }
    const request = new OutgoingRequest(message, this.local.window, settle);
    request.longLived = options.longLived === true;
    request.reader = options.reader;
    const answer = new Answer<Item>(request, result, (r) => this.consumed(r), () => this.cancel(request, new PeerShareError('CANCELLED')));
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) {
        request.state = 'done';
        return refuse(new PeerShareError('CANCELLED'));
      }
      const onAbort = (): void => this.cancel(request, new PeerShareError('CANCELLED'));
      signal.addEventListener('abort', onAbort, { once: true });
      result.then(
        () => signal.removeEventListener('abort', onAbort),
        () => signal.removeEventListener('abort', onAbort),
      );
    }
    this.waiting.push(request);
    this.openWaiting();
    return answer;
  }

  /** Sends an event of a capability we serve to this peer; bounded by the same size the peer accepts. */
  event(message: CapabilityMessage): void {
    if (this.closedWith) throw this.closedWith.reason ?? new PeerShareError('CONNECTION_CLOSED');
    const capability = capabilityOf(message.type);
    if (!capability || !this.handlers.has(capability)) {
      throw new PeerShareError('INVALID_ARGUMENT', `Events belong to a capability this side serves; "${shownType(message.type)}" does not.`);
    }
    this.send({ kind: 'EVENT', message });
  }

  /** A clean goodbye (`CLOSE {}`), or an error that ends the connection (its code if it is one for CLOSE). */
  close(reason?: PeerShareError): void {
    this.shutDown(reason, true);
  }

  // ---- sending

  /** The one way anything goes out: typed frames, encoded here, queued in the spec's order (3.5). */
  private send(frame: OutgoingFrame, done: Settle = IGNORE): void {
    switch (frame.kind) {
      case 'WINDOW':
        this.control.push(encodeWindowFrame(frame.id, frame.increment));
        break;
      case 'CANCEL':
        this.control.push(encodeCancelFrame(frame.id));
        break;
      case 'REQUEST':
        this.messages.push({ frame: this.encodeBounded('REQUEST', frame.id, frame.message, this.remote.frame) });
        break;
      case 'EVENT':
        this.messages.push({ frame: this.encodeBounded('EVENT', 0, frame.message, this.limits.maxEventBytes) });
        break;
      case 'CLOSE':
        // Goes first and alone: nothing else is written after it.
        this.control.length = 0;
        this.messages.length = 0;
        this.line.length = 0;
        this.control.push(encodeMessageFrame('CLOSE', 0, frame.message));
        break;
      case 'REPLY':
      case 'DATA':
      case 'END': {
        const answer = this.incoming.get(frame.id);
        if (!answer) throw new PeerShareError('INTERNAL', `Answer ${frame.id} has ended.`);
        if (frame.kind === 'DATA') {
          this.queueItem(answer, { kind: 'data', bytes: frame.bytes, offset: 0, done });
        } else if (frame.kind === 'REPLY') {
          const encoded = this.encodeBounded('REPLY', frame.id, frame.message, this.remote.frame);
          this.queueItem(answer, { kind: 'reply', frame: encoded, bytes: encoded.length - CONNECTION_FRAME_HEADER_BYTES, done });
        } else {
          let encoded: Buffer;
          try {
            encoded = this.encodeBounded('END', frame.id, frame.message, this.remote.frame);
          } catch {
            encoded = encodeMessageFrame('END', frame.id, endErrorFor(new PeerShareError('INTERNAL')));
          }
          answer.state = 'ending';
          this.queueItem(answer, { kind: 'end', frame: encoded });
        }
        break;
      }
    }
    this.pump();
  }

  private encodeBounded(type: 'REQUEST' | 'REPLY' | 'END' | 'EVENT', id: number, message: WireMessage, max: number): Buffer {
    const frame = encodeMessageFrame(type, id, message);
    const length = frame.length - CONNECTION_FRAME_HEADER_BYTES;
    if (length > max) throw new PeerShareError('TOO_LARGE', `A ${type} message of ${length} bytes is over the peer's limit of ${max}.`);
    return frame;
  }

  /** REPLY, DATA and END wait in their answer's own order; the first one puts the answer in line. */
  private queueItem(answer: IncomingAnswer, item: OutgoingItem): void {
    answer.items.push(item);
    if (answer.items.length === 1) this.enterLine(answer);
  }

  /** Writes what may be written, until the stream says it is full. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.writable && !this.stream.destroyed) {
        const control = this.control.shift();
        if (control) {
          this.write(control);
          continue;
        }
        const message = this.messages.shift();
        if (message) {
          this.write(message.frame);
          message.written?.();
          continue;
        }
        if (!this.writeFromLine()) break;
      }
    } finally {
      this.pumping = false;
    }
  }

  /** One frame of the answer whose turn it is (round-robin, spec 3.5); false when none can go. */
  private writeFromLine(): boolean {
    const answer = this.line.shift();
    if (!answer) return false;
    answer.inLine = false;
    const item = answer.items[0];
    if (item.kind === 'end') {
      this.enterLine(answer);
      return true;
    } else if (item.kind === 'reply') {
      // A REPLY is never cut: it waits for credit for all of it.
      if (item.bytes > answer.credit) return this.park(answer);
      answer.items.shift();
      answer.credit -= item.bytes;
      this.write(item.frame);
      item.done.resolve();
    } else {
      if (answer.credit === 0) return this.park(answer);
      // Alone, a frame as large as the peer takes; while another answer is open, a slice: one whose
      // handler is about to queue its next bytes is waiting too, it just has not said so yet.
      const most = this.incoming.size > 1 ? Math.min(this.limits.interleaveSliceBytes, this.remote.frame) : this.remote.frame;
      const length = Math.min(item.bytes.length - item.offset, most, answer.credit);
      const payload = item.bytes.subarray(item.offset, item.offset + length);
      item.offset += length;
      answer.credit -= length;
      const last = item.offset === item.bytes.length;
      if (last) answer.items.shift();
      // The caller may reuse its buffer once the stream has taken the last slice (its write
      // callback: a TLS socket has encrypted it by then), not merely once it is queued.
      this.write(encodeConnectionHeader(ConnectionFrameType.DATA, length, answer.id), payload, last ? item.done : undefined);
    }
    answer.starvedSince = 0;
    this.enterLine(answer);
    return true;
  }

  /** An answer with nothing it may send until a WINDOW arrives. */
  private park(answer: IncomingAnswer): true {
    if (answer.starvedSince === 0) answer.starvedSince = performance.now();
    this.armSweep();
    return true;
  }

  /** Puts an answer at the back of the line if its next frame could go now; END goes with the messages. */
  private enterLine(answer: IncomingAnswer): void {
    const head = answer.items[0];
    if (!head || answer.inLine) return;
    if (head.kind === 'end') {
      // END is a message (spec 3.5), after its own answer's frames; written, it frees the id.
      answer.items.shift();
      this.messages.push({ frame: head.frame, written: () => this.answerWritten(answer) });
      return;
    }
    if (head.kind === 'reply' ? head.bytes > answer.credit : answer.credit === 0) {
      this.park(answer);
      return;
    }
    answer.inLine = true;
    this.line.push(answer);
  }

  private write(frame: Buffer, payload?: Buffer, taken?: Settle): void {
    this.counters.framesSent++;
    this.counters.bytesSent += frame.length + (payload?.length ?? 0);
    let room: boolean;
    if (payload) {
      // Header and payload leave together without a copy of the payload.
      this.stream.cork();
      this.stream.write(frame);
      room = this.stream.write(
        payload,
        taken && ((err) => (err ? taken.reject(toPeerShareError(err, 'CONNECTION_CLOSED')) : taken.resolve())),
      );
      this.stream.uncork();
    } else {
      room = this.stream.write(frame);
    }
    if (!room) {
      this.writable = false;
      // A transport that takes no bytes for stallTimeoutMs is dead (spec 3.4): TIMEOUT, locally.
      this.drainTimer = setTimeout(
        () => this.shutDown(new PeerShareError('TIMEOUT', `${this.peerLabel} took no bytes for ${this.limits.stallTimeoutMs} ms.`), false),
        this.limits.stallTimeoutMs,
      );
      this.drainTimer.unref();
    }
  }

  private onDrain(): void {
    clearTimeout(this.drainTimer);
    this.writable = true;
    this.pump();
  }

  // ---- our requests

  /** Sends waiting requests while the peer has room for them. */
  private openWaiting(): void {
    while (this.waiting.length > 0 && this.outgoing.size < this.remote.requests && !this.closedWith) {
      const request = this.waiting.shift()!;
      if (request.state !== 'open') continue;
      if (this.nextId > MAX_REQUEST_ID) {
        this.fail(request, new PeerShareError('CONNECTION_CLOSED', 'This connection has used all its request ids; open a new one.'));
        continue;
      }
      request.id = this.nextId;
      this.nextId += 2;
      const now = performance.now();
      request.stallAt = request.longLived ? Infinity : now + this.limits.stallTimeoutMs;
      request.deadlineAt = request.longLived ? Infinity : now + this.limits.requestTimeoutMs;
      // Open before it is sent: a stream that delivers synchronously (an in-memory pair) can bring
      // the answer's first frame back inside send().
      this.outgoing.set(request.id, request);
      try {
        this.send({ kind: 'REQUEST', id: request.id, message: request.message });
      } catch (err) {
        this.outgoing.delete(request.id);
        this.fail(request, toPeerShareError(err));
        continue;
      }
      this.armSweep();
    }
    this.armIdle();
  }

  /** The consumer asks for the next part: what it had is consumed, and credit goes back at window/2. */
  private consumed(request: OutgoingRequest): void {
    request.unreported += request.handedOut;
    request.handedOut = 0;
    if (request.state !== 'open' || request.unreported < request.window / 2 || this.closedWith) return;
    const increment = request.unreported;
    request.unreported = 0;
    request.credit += increment;
    this.send({ kind: 'WINDOW', id: request.id, increment });
  }

  private cancel(request: OutgoingRequest, reason: PeerShareError): void {
    if (request.state !== 'open') return;
    if (request.id === 0) {
      // Never sent: it only leaves the queue.
      request.state = 'done';
      this.fail(request, reason);
      return;
    }
    request.state = 'cancelled';
    request.cancelledAt = performance.now();
    request.parts.length = 0;
    this.fail(request, reason);
    if (!this.closedWith) this.send({ kind: 'CANCEL', id: request.id });
    this.armSweep();
  }

  private fail(request: OutgoingRequest, err: PeerShareError): void {
    if (request.failure) return;
    request.failure = err;
    request.settle.reject(err);
    request.wake?.();
  }

  private finish(request: OutgoingRequest): void {
    this.outgoing.delete(request.id);
    if (request.state === 'open') request.state = 'done';
    request.wake?.();
    this.openWaiting();
  }

  // ---- receiving

  /** `lent`: the chunk's bytes are overwritten by the next read, so whatever is kept of it is a copy. */
  private receive(chunk: Buffer, lent = false): void {
    if (this.closedWith) return;
    this.counters.bytesReceived += chunk.length;
    this.lent = lent;
    try {
      this.parser.push(chunk);
    } catch (err) {
      this.shutDown(toPeerShareError(err, 'PROTOCOL_ERROR'), true);
    }
  }

  private onFrameProgress(inFrame: boolean): void {
    clearTimeout(this.messageTimer);
    if (!inFrame) return;
    // An absolute deadline per frame: a byte every few seconds does not keep one open.
    this.messageTimer = setTimeout(
      () => this.shutDown(new PeerShareError('TIMEOUT', `A frame from ${this.peerLabel} took over ${this.limits.messageTimeoutMs} ms to arrive.`), true),
      this.limits.messageTimeoutMs,
    );
    this.messageTimer.unref();
  }

  /** The stateful checks of spec 3.3, before any payload byte is gathered. Throwing closes. */
  private onHeader({ type, id, length }: FrameHeader): void {
    const ours = id % 2 === (this.side === 'dialer' ? 1 : 0);
    switch (type) {
      case 'REQUEST':
        if (ours) throw protocolError(`${this.peerLabel} opened request ${id}, an id of ours.`);
        if (id <= this.highestPeerId) throw protocolError(`${this.peerLabel} reused request id ${id} (ids only go up).`);
        if (this.incoming.size >= this.local.requests) {
          throw protocolError(`${this.peerLabel} opened more than the ${this.local.requests} requests at once we allow.`);
        }
        this.highestPeerId = id;
        return;
      case 'REPLY':
      case 'DATA':
      case 'END': {
        const request = ours ? this.outgoing.get(id) : undefined;
        if (!request) {
          throw protocolError(
            ours && id < this.nextId
              ? `${this.peerLabel} sent ${type} for request ${id}, which has ended.`
              : `${this.peerLabel} sent ${type} for request ${id}, which was never made.`,
          );
        }
        if (type === 'END') return;
        if (length > request.credit) {
          throw protocolError(`${this.peerLabel} sent ${length} bytes for request ${id}, over its credit of ${request.credit}.`);
        }
        request.credit -= length;
        return;
      }
      case 'WINDOW':
      case 'CANCEL':
        if (ours || id > this.highestPeerId) throw protocolError(`${this.peerLabel} sent ${type} for request ${id}, which it never opened.`);
        return;
      case 'EVENT':
        // Counted from the header, before its payload costs a parse.
        if (!this.eventRate.take()) throw protocolError(`${this.peerLabel} sent events faster than ${this.limits.maxEventsPerSecond} a second.`);
        return;
      default:
        return;
    }
  }

  private onMessage(type: 'REQUEST' | 'REPLY' | 'END' | 'EVENT' | 'CLOSE', id: number, message: WireMessage, bytes: number): void {
    switch (type) {
      case 'REQUEST':
        return this.startAnswer(id, message);
      case 'REPLY': {
        const request = this.outgoing.get(id)!;
        if (request.reader) return this.read(request, (reader) => reader.reply(message), bytes);
        return this.deliver(request, { kind: 'reply', message }, bytes);
      }
      case 'END':
        return this.onEnd(this.outgoing.get(id)!, message);
      case 'EVENT':
        return this.onPeerEvent(message);
      case 'CLOSE':
        return this.onPeerClose(message);
    }
  }

  private onData(id: number, chunk: Buffer): void {
    const request = this.outgoing.get(id);
    if (!request) return;
    // A reader copies what it keeps during the call (AnswerReader); a part waits, so it must own its bytes.
    if (request.reader) this.read(request, (reader) => reader.data(chunk), chunk.length);
    else this.deliver(request, { kind: 'data', chunk: this.lent ? Buffer.from(chunk) : chunk }, chunk.length);
  }

  /** A part read at arrival (AnswerReader); after the reader failed, the rest only counts against credit. */
  private read(request: OutgoingRequest, reading: (reader: AnswerReader<unknown>) => unknown[], bytes: number): void {
    if (request.state !== 'open' || request.readFailure !== undefined) return;
    let items: unknown[];
    try {
      items = reading(request.reader!);
    } catch (err) {
      request.readFailure = err;
      request.wake?.();
      return;
    }
    this.deliver(request, { kind: 'read', items }, bytes);
  }

  /** A part for the consumer; a cancelled request's are dropped (their credit was still checked). */
  private deliver(request: OutgoingRequest, part: AnswerPart<unknown>, bytes: number): void {
    if (request.state !== 'open') return;
    const last = request.parts[request.parts.length - 1];
    if (part.kind === 'read' && last?.part.kind === 'read') {
      // Credit bounds bytes, not frames: one part per frame let a peer sending one-byte DATA make
      // the waiting parts cost a hundred times the window (found by reader-attacks). What a reader
      // made while the consumer is busy joins the part that waits; it is one part, consumed at once.
      for (const item of part.items) last.part.items.push(item);
      last.bytes += bytes;
    } else {
      // An answer no reader reads (its parts are the frames themselves) is held to a count.
      if (request.parts.length >= MAX_QUEUED_ANSWER_PARTS) {
        throw protocolError(`${this.peerLabel} sent request ${request.id}'s answer in more than ${MAX_QUEUED_ANSWER_PARTS} pieces before it was read.`);
      }
      request.parts.push({ part, bytes });
    }
    // Progress: the stall clock restarts, the overall deadline grows with the bytes.
    if (!request.longLived) request.stallAt = performance.now() + this.limits.stallTimeoutMs;
    request.deadlineAt += (bytes / this.limits.minTransferBytesPerSecond) * 1000;
    request.wake?.();
  }

  private onEnd(request: OutgoingRequest, message: WireMessage): void {
    if (message.type === 'error') {
      const { error, allowed } = errorFromPeer(END_ERROR_CODES, message, this.peerLabel);
      if (!allowed) throw error;
      this.fail(request, error);
    } else if (message.type === 'end') {
      // Only an answer we cancelled may say it was cancelled: a peer cannot pose as our Cancel.
      if (message.cancelled !== undefined && request.state !== 'cancelled') {
        throw protocolError(`${this.peerLabel} said it cancelled request ${request.id}, which we did not cancel.`);
      }
      request.end = message as EndOkMessage;
      if (request.state === 'open') request.settle.resolve(request.end);
    } else {
      throw protocolError(`${this.peerLabel} ended request ${request.id} with "${shownType(message.type)}".`);
    }
    this.finish(request);
  }

  private onPeerEvent(message: WireMessage): void {
    const capability = capabilityOf(message.type);
    // Events are advisory: one of a capability the peer does not serve us is ignored (still counted).
    if (!capability || !this.peerCapabilities.has(capability)) return;
    for (const listener of this.eventListeners) {
      try {
        listener(message as CapabilityMessage);
      } catch {
        // A listener's bug is not the peer's doing and must not end the connection.
      }
    }
  }

  private onPeerClose(message: WireMessage): void {
    if (message.type !== 'close') {
      this.shutDown(new PeerShareError('PROTOCOL_ERROR', `${this.peerLabel} sent a CLOSE frame that is not a close message.`), true);
      return;
    }
    if (message.code === undefined) {
      this.shutDown(new PeerShareError('CONNECTION_CLOSED', `${this.peerLabel} closed the connection.`), false);
      return;
    }
    const { error } = errorFromPeer(CLOSE_ERROR_CODES, message, this.peerLabel);
    // A code the peer may not send closes as our PROTOCOL_ERROR; it was closing anyway.
    this.shutDown(error, false);
  }

  // ---- answering the peer

  private startAnswer(id: number, message: WireMessage): void {
    const capability = capabilityOf(message.type);
    const handler = capability === undefined ? undefined : this.handlers.get(capability);
    // The requester knew what we serve (our hello/welcome): anything else breaks the spec (5.1).
    if (!handler) throw protocolError(`${this.peerLabel} asked for "${shownType(message.type)}", which we do not serve it.`);
    const answer = new IncomingAnswer(id, this.remote.window);
    this.incoming.set(id, answer);
    this.armIdle();
    const writer: ReplyWriter = {
      message: (reply) => this.writeItem(answer, { kind: 'REPLY', id, message: reply }),
      data: (bytes) => (bytes.length === 0 ? Promise.resolve() : this.writeItem(answer, { kind: 'DATA', id, bytes })),
    };
    let outcome: ReturnType<RequestHandler>;
    try {
      outcome = handler(message as CapabilityMessage, writer, answer.abort.signal);
    } catch (err) {
      outcome = Promise.reject(err);
    }
    Promise.resolve(outcome).then(
      (fields) => this.endAnswer(answer, { ...(fields ?? {}), type: 'end' }),
      (err: unknown) => {
        const coded = toPeerShareError(err);
        if (coded.code === 'PROTOCOL_ERROR' && answer.state === 'open') this.shutDown(coded, true);
        else this.endAnswer(answer, endErrorFor(coded));
      },
    );
  }

  private writeItem(answer: IncomingAnswer, frame: OutgoingFrame): Promise<void> {
    if (answer.state !== 'open') {
      const reason: unknown = answer.abort.signal.reason;
      return Promise.reject(reason instanceof PeerShareError ? reason : new PeerShareError('INTERNAL', 'This answer has already ended.'));
    }
    return new Promise<void>((resolve, reject) => {
      try {
        this.send(frame, { resolve, reject });
      } catch (err) {
        reject(toPeerShareError(err));
      }
    });
  }

  /** The answer's one END, after what it queued; nothing more goes on its id. */
  private endAnswer(answer: IncomingAnswer, message: EndMessage): void {
    if (answer.state !== 'open' || this.closedWith) return;
    this.send({ kind: 'END', id: answer.id, message });
  }

  private answerWritten(answer: IncomingAnswer): void {
    answer.state = 'done';
    this.incoming.delete(answer.id);
    this.armIdle();
  }

  private onWindow(id: number, increment: number): void {
    const answer = this.incoming.get(id);
    // Crossed our END: ignored (spec 3.3).
    if (!answer) return;
    if (answer.credit + increment > MAX_CREDIT) throw protocolError(`${this.peerLabel} granted credit past ${MAX_CREDIT} for request ${id}.`);
    answer.credit += increment;
    answer.starvedSince = 0;
    this.enterLine(answer);
    this.pump();
  }

  /** The peer cancelled: the handler is told, what it queued is dropped, one END says so. */
  private onCancel(id: number): void {
    const answer = this.incoming.get(id);
    // Crossed our END: ignored (spec 3.3).
    if (!answer || answer.state === 'done') return;
    const queuedEnd = answer.items.find((item) => item.kind === 'end');
    // The handler learns it from its signal; marked as the peer's doing, never as our user's Cancel.
    const reason = new PeerSentError('CANCELLED', `${this.peerLabel} cancelled this request.`);
    this.dropItems(answer, reason);
    answer.abort.abort(reason);
    if (answer.state === 'open') this.endAnswer(answer, { type: 'end', cancelled: true });
    // An END already queued behind data goes now, as it was (an END already in the messages is on its way).
    else if (queuedEnd) this.queueItem(answer, queuedEnd);
    this.pump();
  }

  private dropItems(answer: IncomingAnswer, err: PeerShareError): void {
    // With its data gone it waits for no credit: an END needs none, and a starved answer that was
    // cancelled must not be ended a second time by the starvation deadline.
    answer.starvedSince = 0;
    for (const item of answer.items.splice(0)) if (item.kind !== 'end') item.done.reject(err);
    const at = this.line.indexOf(answer);
    if (at >= 0) this.line.splice(at, 1);
    answer.inLine = false;
  }

  // ---- clocks

  /** One timer per connection (not per request) checks deadlines while any may expire. */
  private armSweep(): void {
    if (this.sweepTimer || this.closedWith) return;
    const every = Math.max(5, Math.min(1000, this.limits.stallTimeoutMs / 4, this.limits.requestTimeoutMs / 4));
    this.lastSweep = performance.now();
    this.sweepTimer = setInterval(() => this.sweep(), every);
    this.sweepTimer.unref();
  }

  private sweep(): void {
    const now = performance.now();
    const elapsed = now - this.lastSweep;
    this.lastSweep = now;
    let watching = false;
    for (const request of this.outgoing.values()) {
      if (request.state === 'cancelled') {
        if (now - request.cancelledAt >= this.limits.stallTimeoutMs) {
          return this.shutDown(new PeerShareError('TIMEOUT', `${this.peerLabel} did not end request ${request.id} within ${this.limits.stallTimeoutMs} ms of our CANCEL.`), true);
        }
        watching = true;
        continue;
      }
      if (request.state !== 'open') continue;
      watching = true;
      // Parts our consumer has not taken yet: the delay is ours (disk, a person), not the peer's.
      if (request.parts.length > 0) {
        request.stallAt += elapsed;
        request.deadlineAt += elapsed;
        continue;
      }
      if (now >= request.deadlineAt) {
        this.cancel(request, new PeerShareError('TIMEOUT', `${this.peerLabel} did not finish in time (${this.limits.requestTimeoutMs / 1000} s, plus the time its bytes take at the slowest rate allowed).`));
      } else if (now >= request.stallAt) {
        this.cancel(request, new PeerShareError('TIMEOUT', `${this.peerLabel} made no progress for ${this.limits.stallTimeoutMs} ms.`));
      }
    }
    for (const answer of [...this.incoming.values()]) {
      if (answer.starvedSince === 0 || answer.state === 'done') continue;
      watching = true;
      if (now - answer.starvedSince >= this.limits.stallTimeoutMs) {
        // A requester that grants no credit starves only its own request (spec 3.4).
        const starved = new PeerShareError('TIMEOUT', `${this.peerLabel} granted no credit for ${this.limits.stallTimeoutMs} ms.`);
        answer.abort.abort(starved);
        answer.starvedSince = 0;
        this.dropItems(answer, starved);
        answer.state = 'open';
        this.endAnswer(answer, { type: 'error', code: 'TIMEOUT', message: `No credit for ${this.limits.stallTimeoutMs} ms.` });
      }
    }
    if (!watching) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }

  /** No request open either way for idleTimeoutMs: a clean goodbye (spec 3.6). */
  private armIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.closedWith || this.outgoing.size > 0 || this.waiting.length > 0 || this.incoming.size > 0) return;
    this.idleTimer = setTimeout(() => this.close(), this.limits.idleTimeoutMs);
    this.idleTimer.unref();
  }

  // ---- the end

  /**
   * Ends the connection once: `tell` sends CLOSE first (with the reason's code when it is one a
   * CLOSE may carry). Our open requests fail with the reason (a clean goodbye: CONNECTION_CLOSED),
   * handlers see their signal, listeners hear once.
   */
  private shutDown(reason: PeerShareError | undefined, tell: boolean): void {
    if (this.closedWith) return;
    this.closedWith = { reason };
    clearTimeout(this.messageTimer);
    clearTimeout(this.idleTimer);
    clearTimeout(this.drainTimer);
    clearInterval(this.sweepTimer);
    const failure = reason ?? new PeerShareError('CONNECTION_CLOSED', 'The connection was closed.');
    for (const request of [...this.waiting, ...this.outgoing.values()]) {
      if (request.state === 'open') this.fail(request, failure);
      request.state = 'done';
      request.wake?.();
    }
    this.waiting.length = 0;
    this.outgoing.clear();
    for (const answer of this.incoming.values()) {
      answer.state = 'done';
      this.dropItems(answer, failure);
      answer.abort.abort(failure);
    }
    this.incoming.clear();
    if (tell && !this.stream.destroyed && this.stream.writable) {
      this.send({ kind: 'CLOSE', message: closeMessageFor(reason) });
      this.writable = true;
      this.pump();
      this.stream.end();
      // Give the goodbye a moment to leave; a peer that neither reads nor hangs up does not hold us.
      const force = setTimeout(() => this.stream.destroy(), CLOSE_GRACE_MS);
      force.unref();
      this.stream.once('close', () => clearTimeout(force));
    } else {
      this.stream.destroy();
    }
    for (const listener of this.closeListeners.splice(0)) {
      try {
        listener(reason);
      } catch {
        // A listener's bug must not escape into the stream's event loop.
      }
    }
  }
}

function protocolError(message: string): PeerShareError {
  return new PeerShareError('PROTOCOL_ERROR', message);
}
