import { PeerShareError } from './errors';

/**
 * Wire framing (see docs/protocol.md): every frame is
 *   [1 byte type][4 bytes big-endian payload length][payload]
 * MESSAGE frames carry one UTF-8 JSON object; DATA frames carry raw file bytes.
 * DATA payloads are handed on in the slices the socket delivers them in, never gathered,
 * so a 1 MiB frame costs no extra copy and no extra memory.
 */
export const FrameType = { MESSAGE: 0x01, DATA: 0x02 } as const;
export const FRAME_HEADER_BYTES = 5;

export interface FrameHandlers {
  onMessage(message: Record<string, unknown>): void;
  onData(chunk: Buffer): void;
  /** Called when a frame starts arriving and when it is complete, for message deadlines. */
  onFrameProgress?(inFrame: boolean): void;
}

export function encodeMessage(message: object): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  frame[0] = FrameType.MESSAGE;
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, FRAME_HEADER_BYTES);
  return frame;
}

export function encodeDataHeader(length: number): Buffer {
  return writeDataHeader(Buffer.allocUnsafe(FRAME_HEADER_BYTES), length);
}

/** Writes a DATA frame header into the first bytes of `target`. */
export function writeDataHeader(target: Buffer, length: number): Buffer {
  target[0] = FrameType.DATA;
  target.writeUInt32BE(length, 1);
  return target;
}

type State = 'header' | 'message' | 'data';

/** An explicit state machine: header, then message body or data body, then header again. */
export class FrameParser {
  private state: State = 'header';
  private header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFilled = 0;
  private remaining = 0;
  private messageParts: Buffer[] = [];
  private failed = false;

  constructor(
    private readonly limits: { maxMessageBytes: number; maxDataFrameBytes: number },
    private readonly handlers: FrameHandlers,
    private readonly acceptData = true,
  ) {}

  /** Feeds bytes from the socket; throws a PeerShareError on the first violation and stays failed. */
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
        const take = Math.min(FRAME_HEADER_BYTES - this.headerFilled, chunk.length - offset);
        chunk.copy(this.header, this.headerFilled, offset, offset + take);
        this.headerFilled += take;
        offset += take;
        if (this.headerFilled < FRAME_HEADER_BYTES) return;
        this.headerFilled = 0;
        this.startFrame(this.header[0], this.header.readUInt32BE(1));
        continue;
      }
      const take = Math.min(this.remaining, chunk.length - offset);
      const piece = chunk.subarray(offset, offset + take);
      offset += take;
      this.remaining -= take;
      if (this.state === 'data') {
        this.handlers.onData(piece);
        if (this.remaining === 0) this.endFrame();
      } else {
        this.messageParts.push(piece);
        if (this.remaining === 0) {
          const body = this.messageParts.length === 1 ? this.messageParts[0] : Buffer.concat(this.messageParts);
          this.messageParts = [];
          this.endFrame();
          this.handlers.onMessage(decodeMessage(body));
        }
      }
    }
  }

  private startFrame(type: number, length: number): void {
    if (type === FrameType.MESSAGE) {
      // Checked before anything is allocated for the body.
      if (length > this.limits.maxMessageBytes) {
        throw new PeerShareError('TOO_LARGE', `A message of ${length} bytes is over the limit of ${this.limits.maxMessageBytes}.`);
      }
      if (length === 0) throw new PeerShareError('PROTOCOL_ERROR', 'Empty message frame.');
      this.state = 'message';
    } else if (type === FrameType.DATA && this.acceptData) {
      if (length > this.limits.maxDataFrameBytes) {
        throw new PeerShareError('TOO_LARGE', `A data frame of ${length} bytes is over the limit of ${this.limits.maxDataFrameBytes}.`);
      }
      this.state = 'data';
      if (length === 0) this.endFrame();
    } else {
      throw new PeerShareError('PROTOCOL_ERROR', `Unexpected frame type 0x${type.toString(16).padStart(2, '0')}.`);
    }
    this.remaining = length;
  }

  private endFrame(): void {
    this.state = 'header';
    this.handlers.onFrameProgress?.(false);
  }
}

// fatal: invalid UTF-8 is refused rather than silently replaced.
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/** A JSON payload: strict UTF-8, one object, with a string `type`. (v2's frames add a bound on `type`.) */
export function decodeMessage(body: Buffer): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(STRICT_UTF8.decode(body));
  } catch {
    throw new PeerShareError('PROTOCOL_ERROR', 'A message is not valid UTF-8 JSON.');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new PeerShareError('PROTOCOL_ERROR', 'A message is not a JSON object.');
  }
  const type = (parsed as Record<string, unknown>).type;
  if (typeof type !== 'string') throw new PeerShareError('PROTOCOL_ERROR', 'A message has no type.');
  return parsed as Record<string, unknown>;
}
