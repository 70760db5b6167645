import { PeerShareError } from '../errors';
import { decodeMessage } from '../frames';
import { shownType } from '../protocol';

/**
 * Connection frames of protocol v2 (docs/protocol-v2.md 3.2): after the handshake every frame is
 *   [1 byte type][4 bytes big-endian payload length][4 bytes big-endian request id][payload]
 * The first five bytes read as v1's frame header, so a v1 peer and a v2 peer can still parse each
 * other's first message; the id says which request a frame belongs to (0: the connection).
 */
export const ConnectionFrameType = {
  REQUEST: 0x10,
  REPLY: 0x11,
  DATA: 0x12,
  END: 0x13,
  WINDOW: 0x14,
  CANCEL: 0x15,
  EVENT: 0x16,
  CLOSE: 0x17,
} as const;
export type ConnectionFrameTypeName = keyof typeof ConnectionFrameType;
export type ConnectionFrameTypeCode = (typeof ConnectionFrameType)[ConnectionFrameTypeName];

export const CONNECTION_FRAME_HEADER_BYTES = 9;
/** Protocol constants (not options): the largest frame anyone may advertise, a CLOSE, and credit. */
export const MAX_FRAME_CEILING_BYTES = 1024 * 1024;
export const MAX_CLOSE_BYTES = 4096;
export const MAX_CREDIT = 2 ** 31 - 1;
export const MAX_REQUEST_ID = 2 ** 32 - 1;

const NAMES = new Map<number, ConnectionFrameTypeName>(
  Object.entries(ConnectionFrameType).map(([name, code]) => [code, name as ConnectionFrameTypeName]),
);

export function frameTypeName(type: number): string {
  return NAMES.get(type) ?? `0x${type.toString(16).padStart(2, '0')}`;
}

/** A JSON payload as it travels: one object with a string `type`; members beyond are the capability's. */
export interface WireMessage {
  type: string;
  [member: string]: unknown;
}

/** The receiver's bounds on payload lengths (its own advertised `frame`, and `maxEventBytes`). */
export interface FrameBounds {
  /** Largest REQUEST, REPLY, DATA or END payload: the receiver's advertised `frame`. */
  frameBytes: number;
  maxEventBytes: number;
}

export interface FrameHeader {
  type: ConnectionFrameTypeName;
  id: number;
  length: number;
}

/**
 * What the parser hands on. `onHeader` sees every header after its stateless checks and before a
 * byte of its payload is gathered, so the connection can refuse an id or a length over credit
 * before anything is allocated (spec 3.3); throwing there refuses the frame.
 */
export interface ConnectionFrameHandlers {
  onHeader(header: FrameHeader): void;
  /** REQUEST, REPLY, END, EVENT and CLOSE: the whole JSON object, checked to have a string type. */
  onMessage(type: 'REQUEST' | 'REPLY' | 'END' | 'EVENT' | 'CLOSE', id: number, message: WireMessage, bytes: number): void;
  /** DATA in the slices the stream delivered, never gathered (no copy, no frame-sized buffer); valid only during the call. */
  onData(id: number, chunk: Buffer): void;
  onWindow(id: number, increment: number): void;
  onCancel(id: number): void;
  /** A frame's first byte arrived (true) / a frame is complete or its payload is DATA (false): for messageTimeoutMs. */
  onFrameProgress?(inFrame: boolean): void;
}

/** Writes a 9-byte header into `target` at `offset`. */
export function writeConnectionHeader(target: Buffer, type: ConnectionFrameTypeCode, length: number, id: number, offset = 0): Buffer {
  target[offset] = type;
  target.writeUInt32BE(length, offset + 1);
  target.writeUInt32BE(id, offset + 5);
  return target;
}

export function encodeConnectionHeader(type: ConnectionFrameTypeCode, length: number, id: number): Buffer {
  return writeConnectionHeader(Buffer.allocUnsafe(CONNECTION_FRAME_HEADER_BYTES), type, length, id);
}

/** A whole frame carrying a JSON message (REQUEST, REPLY, END, EVENT, CLOSE). */
export function encodeMessageFrame(type: 'REQUEST' | 'REPLY' | 'END' | 'EVENT' | 'CLOSE', id: number, message: WireMessage): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const frame = Buffer.allocUnsafe(CONNECTION_FRAME_HEADER_BYTES + body.length);
  writeConnectionHeader(frame, ConnectionFrameType[type], body.length, id);
  body.copy(frame, CONNECTION_FRAME_HEADER_BYTES);
  return frame;
}

export function encodeWindowFrame(id: number, increment: number): Buffer {
  const frame = Buffer.allocUnsafe(CONNECTION_FRAME_HEADER_BYTES + 4);
  writeConnectionHeader(frame, ConnectionFrameType.WINDOW, 4, id);
  frame.writeUInt32BE(increment, CONNECTION_FRAME_HEADER_BYTES);
  return frame;
}

export function encodeCancelFrame(id: number): Buffer {
  return encodeConnectionHeader(ConnectionFrameType.CANCEL, 0, id);
}

type State = 'header' | 'message' | 'data' | 'window';

/**
 * The one parser of connection frames: an explicit state machine (header, then a message, data or
 * window payload, then header again) that checks every header field against the receiver's
 * bounds before it gathers a payload byte. It stays failed after its first refusal.
 */
export class ConnectionFrameParser {
  private state: State = 'header';
  private readonly header = Buffer.alloc(CONNECTION_FRAME_HEADER_BYTES);
  private headerFilled = 0;
  private current: FrameHeader = { type: 'DATA', id: 0, length: 0 };
  private remaining = 0;
  private parts: Buffer[] = [];
  private failed = false;

  constructor(
    private readonly bounds: FrameBounds,
    private readonly handlers: ConnectionFrameHandlers,
  ) {}

  /** Feeds bytes from the stream; throws a PeerShareError on the first violation and stays failed. */
  push(chunk: Buffer): void {
    if (this.failed) return;
    try {
      this.consume(chunk);
    } catch (err) {
      this.failed = true;
      throw err;
    }
  }

  get midFrame(): boolean {
    return this.state !== 'header' || this.headerFilled > 0;
  }

  private consume(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.state === 'header') {
        if (this.headerFilled === 0) this.handlers.onFrameProgress?.(true);
        const take = Math.min(CONNECTION_FRAME_HEADER_BYTES - this.headerFilled, chunk.length - offset);
        chunk.copy(this.header, this.headerFilled, offset, offset + take);
        this.headerFilled += take;
        offset += take;
        if (this.headerFilled < CONNECTION_FRAME_HEADER_BYTES) return;
        this.headerFilled = 0;
        this.startFrame(this.header[0], this.header.readUInt32BE(1), this.header.readUInt32BE(5));
        continue;
      }
      const take = Math.min(this.remaining, chunk.length - offset);
      const piece = chunk.subarray(offset, offset + take);
      offset += take;
      this.remaining -= take;
      if (this.state === 'data') {
        this.handlers.onData(this.current.id, piece);
        if (this.remaining === 0) this.state = 'header';
        continue;
      }
      // A piece kept past this call is a copy: a stream may lend its chunk only for the call (reused-read-buffer.ts).
      this.parts.push(this.remaining === 0 ? piece : Buffer.from(piece));
      if (this.remaining === 0) this.finishPayload();
    }
  }

  /** Every check that needs nothing but the header (spec 3.3), then the connection's own. */
  private startFrame(typeCode: number, length: number, id: number): void {
    const type = NAMES.get(typeCode);
    if (type === undefined) throw new PeerShareError('PROTOCOL_ERROR', `Unknown frame type ${frameTypeName(typeCode)}.`);
    const bound = this.lengthBound(type);
    // WINDOW and CANCEL have one size: another is a malformed frame, not a large one.
    if (bound.min === bound.max && length !== bound.min) {
      throw new PeerShareError('PROTOCOL_ERROR', `A ${type} frame carries exactly ${bound.min} bytes, not ${length}.`);
    }
    if (length > bound.max) {
      throw new PeerShareError('TOO_LARGE', `A ${type} frame of ${length} bytes is over the limit of ${bound.max}.`);
    }
    if (length < bound.min) throw new PeerShareError('PROTOCOL_ERROR', `A ${type} frame of ${length} bytes is too short.`);
    const connectionWide = type === 'EVENT' || type === 'CLOSE';
    if (connectionWide !== (id === 0)) {
      throw new PeerShareError('PROTOCOL_ERROR', connectionWide ? `A ${type} frame must carry id 0.` : `A ${type} frame must carry a request id.`);
    }
    this.current = { type, id, length };
    this.handlers.onHeader(this.current);
    this.remaining = length;
    if (type === 'DATA') {
      // DATA is bounded by its request's deadlines and credit, not by messageTimeoutMs.
      this.handlers.onFrameProgress?.(false);
      this.state = 'data';
    } else if (type === 'CANCEL') {
      this.state = 'header';
      this.handlers.onFrameProgress?.(false);
      this.handlers.onCancel(id);
    } else {
      this.state = type === 'WINDOW' ? 'window' : 'message';
    }
  }

  private lengthBound(type: ConnectionFrameTypeName): { min: number; max: number } {
    switch (type) {
      case 'WINDOW':
        return { min: 4, max: 4 };
      case 'CANCEL':
        return { min: 0, max: 0 };
      case 'EVENT':
        return { min: 1, max: this.bounds.maxEventBytes };
      case 'CLOSE':
        return { min: 1, max: MAX_CLOSE_BYTES };
      default:
        return { min: 1, max: this.bounds.frameBytes };
    }
  }

  private finishPayload(): void {
    const body = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
    this.parts = [];
    this.state = 'header';
    this.handlers.onFrameProgress?.(false);
    const { type, id, length } = this.current;
    if (type === 'WINDOW') {
      const increment = body.readUInt32BE(0);
      if (increment === 0 || increment > MAX_CREDIT) {
        throw new PeerShareError('PROTOCOL_ERROR', `A WINDOW increment of ${increment} is outside 1..${MAX_CREDIT}.`);
      }
      this.handlers.onWindow(id, increment);
      return;
    }
    this.handlers.onMessage(type as 'REQUEST' | 'REPLY' | 'END' | 'EVENT' | 'CLOSE', id, decodeWireMessage(body), length);
  }
}

/** A JSON payload as v1 reads one (decodeMessage), with its `type` bounded to what an error may quote. */
export function decodeWireMessage(body: Buffer): WireMessage {
  const parsed = decodeMessage(body);
  const type = parsed.type as string;
  if (type.length > 100) throw new PeerShareError('PROTOCOL_ERROR', `A message type is too long ("${shownType(type)}…").`);
  return parsed as WireMessage;
}
