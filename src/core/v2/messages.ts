import { PeerShareError, type ErrorCode } from '../errors';
import { sanitizeForDisplay } from '../protocol';
import type { WireMessage } from './frames';

/**
 * The messages of v2's connection layer (docs/protocol-v2.md 3, 5, 8), typed per direction. What a
 * capability puts inside a request, reply or event is the capability's; this layer fixes only the
 * envelope, the END and CLOSE messages and which error codes may cross the wire where.
 */

/** A request or an event: `<capability>.<name>`, e.g. `share.read` for capability `share/1`. */
export interface CapabilityMessage extends WireMessage {
  type: `${string}.${string}`;
}
/** What a responder sends before its END (REPLY): the capability's message. */
export type ReplyMessage = WireMessage;
/** The last frame of a successful answer; its other members are the capability's (`count`, `entry`…). */
export interface EndOkMessage extends WireMessage {
  type: 'end';
  /** Set when the answer stopped because its requester cancelled it. */
  cancelled?: true;
}
export interface EndErrorMessage {
  type: 'error';
  code: EndErrorCode;
  message: string;
  [member: string]: unknown;
}
export type EndMessage = EndOkMessage | EndErrorMessage;
/** CLOSE's payload: no code is a normal goodbye. (The spec's `CLOSE {code}` is written without its `type`.) */
export interface CloseMessage {
  type: 'close';
  code?: CloseErrorCode;
  message?: string;
  [member: string]: unknown;
}

// ---- The one union per direction: what a requester sends, what a responder sends, and what either
// sends about the connection. The connection's send() takes only these.
export type RequesterFrame =
  | { kind: 'REQUEST'; id: number; message: CapabilityMessage }
  | { kind: 'WINDOW'; id: number; increment: number }
  | { kind: 'CANCEL'; id: number };
export type ResponderFrame =
  | { kind: 'REPLY'; id: number; message: ReplyMessage }
  | { kind: 'DATA'; id: number; bytes: Buffer }
  | { kind: 'END'; id: number; message: EndMessage };
export type ConnectionWideFrame = { kind: 'EVENT'; message: CapabilityMessage } | { kind: 'CLOSE'; message: CloseMessage };
export type OutgoingFrame = RequesterFrame | ResponderFrame | ConnectionWideFrame;

/**
 * Codes a peer may send, by where (spec 8). A code outside its place's list (a local code such as
 * CANCELLED or IO_ERROR, or an unknown one) is refused as PROTOCOL_ERROR: a peer must never make
 * its failure look like the user's own Cancel or disk.
 */
export const END_ERROR_CODES = [
  'PEER_UNTRUSTED',
  'TOO_LARGE',
  'TIMEOUT',
  'BUSY',
  'NOT_FOUND',
  'OUTSIDE_SHARE',
  'EXCLUDED',
  'NOT_A_FILE',
  'NOT_A_DIRECTORY',
  'PERMISSION_DENIED',
  'FILE_CHANGED',
  'INVALID_ARGUMENT',
  'INTERNAL',
] as const satisfies readonly ErrorCode[];
export const CLOSE_ERROR_CODES = ['PEER_UNTRUSTED', 'PROTOCOL_ERROR', 'TOO_LARGE', 'TIMEOUT', 'INTERNAL'] as const satisfies readonly ErrorCode[];
export const HANDSHAKE_ERROR_CODES = [
  'PEER_UNTRUSTED',
  'ACCESS_DENIED',
  'TOKEN_INVALID',
  'VERSION_UNSUPPORTED',
  'PROTOCOL_ERROR',
  'TOO_LARGE',
  'TIMEOUT',
  'BUSY',
  'INTERNAL',
] as const satisfies readonly ErrorCode[];
export type EndErrorCode = (typeof END_ERROR_CODES)[number];
export type CloseErrorCode = (typeof CLOSE_ERROR_CODES)[number];
export type HandshakeErrorCode = (typeof HANDSHAKE_ERROR_CODES)[number];

export function isOneOf<T extends string>(codes: readonly T[], value: unknown): value is T {
  return typeof value === 'string' && (codes as readonly string[]).includes(value);
}

/** Longest peer-sent message kept (spec 9: `message` ≤ 500 chars). */
export const MAX_PEER_MESSAGE_CHARS = 500;

/**
 * A failure the peer reported with a wire code. It keeps that code, but its sentence names the
 * peer and `sentByPeer` marks it, so it is never taken for a failure of ours.
 */
export class PeerSentError extends PeerShareError {
  readonly sentByPeer = true;
}

/**
 * Turns a peer's `{code, message}` into an error: a code allowed in this place keeps its code,
 * marked as the peer's; anything else is PROTOCOL_ERROR (and the caller closes the connection).
 */
export function errorFromPeer<T extends ErrorCode>(
  allowed: readonly T[],
  m: Record<string, unknown>,
  peer: string,
): { error: PeerShareError; allowed: boolean } {
  if (!isOneOf(allowed, m.code)) {
    const shown = sanitizeForDisplay(String(m.code).slice(0, 40));
    return { error: new PeerShareError('PROTOCOL_ERROR', `${peer} sent the error code "${shown}", which a peer may not send here.`), allowed: false };
  }
  const text = typeof m.message === 'string' ? sanitizeForDisplay(m.message.slice(0, MAX_PEER_MESSAGE_CHARS)) : '';
  return { error: new PeerSentError(m.code, `${peer} says: ${text || m.code}`), allowed: true };
}

/** Our own error as a peer may see it: its wire code if it has one here, else INTERNAL without detail. */
export function endErrorFor(err: PeerShareError): EndErrorMessage {
  if (isOneOf(END_ERROR_CODES, err.code)) return { type: 'error', code: err.code, message: err.message.slice(0, MAX_PEER_MESSAGE_CHARS) };
  return { type: 'error', code: 'INTERNAL', message: 'The peer could not answer this request.' };
}

/** A CLOSE carrying our reason, bounded to the spec's 500 chars (and so to CLOSE's 4 KiB). */
export function closeMessageFor(err: PeerShareError | undefined): CloseMessage {
  if (!err || !isOneOf(CLOSE_ERROR_CODES, err.code)) return { type: 'close' };
  return { type: 'close', code: err.code, message: err.message.slice(0, MAX_PEER_MESSAGE_CHARS) };
}

/** `share.read` → `share`: the capability a request or event belongs to; undefined when the type has no such form. */
export function capabilityOf(type: string): string | undefined {
  const match = /^([a-z][a-z0-9-]{0,31})\.[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.exec(type);
  return match?.[1];
}

/** `share/1` → `share`. */
export function capabilityName(key: string): string {
  const match = /^([a-z][a-z0-9-]{0,31})\/[1-9][0-9]{0,3}$/.exec(key);
  if (!match) throw new PeerShareError('INVALID_ARGUMENT', `"${sanitizeForDisplay(key.slice(0, 40))}" is not a capability such as "share/1".`);
  return match[1];
}
