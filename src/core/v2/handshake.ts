import type { Duplex } from 'node:stream';
import { PeerShareError, toPeerShareError } from '../errors';
import { FRAME_HEADER_BYTES, FrameParser, encodeMessage } from '../frames';
import { resolveLimits, type Limits } from '../limits';
import { endWithMessage } from '../transport';
import { parseHello, sanitizeForDisplay, shownType } from '../protocol';
import { Connection, advertisedSettings, type ConnectionSettings, type RequestHandler, type Side } from './connection';
import type { CapabilityMessage } from './messages';
import { MAX_CREDIT, MAX_FRAME_CEILING_BYTES } from './frames';
import { HANDSHAKE_ERROR_CODES, MAX_PEER_MESSAGE_CHARS, PeerSentError, errorFromPeer, isOneOf, type HandshakeErrorCode } from './messages';

/**
 * The v2 handshake (docs/protocol-v2.md 4): one frame each way in v1's layout (frames.ts), so a
 * v1 peer and a v2 peer read each other's first message and each can say who must update (4.7).
 * The dialer sends `hello`, the acceptor `welcome` or `error`; then both run a Connection. Who
 * is let in (trust, invite tokens, asking a person) is the caller's `admit`: the sharer's rules
 * live with the trust store, not here.
 */
export const PROTOCOL_V2 = 2;
/** What this build offers: 2 only, never a silent fallback to 1. */
export const V2_VERSIONS: readonly number[] = [PROTOCOL_V2];

/** What a side serves the other, by capability (`share/1`), with that capability's parameters. */
export type Capabilities = Record<string, Record<string, unknown>>;

/** What a side serves: by capability, the parameters it advertises and the handler of its requests. */
export type Served = Record<string, { params: Record<string, unknown>; handler: RequestHandler }>;

function advertise(serve: Served): Capabilities {
  return Object.fromEntries(Object.entries(serve).map(([key, { params }]) => [key, params]));
}

function handlersOf(serve: Served): Record<string, RequestHandler> {
  return Object.fromEntries(Object.entries(serve).map(([key, { handler }]) => [key, handler]));
}

export interface HelloV2 extends ConnectionSettings {
  type: 'hello';
  versions: number[];
  /** As the dialer calls itself: escaped and at most 100 chars. */
  name: string;
  token?: string;
  request: boolean;
  caps: Capabilities;
}

export interface WelcomeV2 extends ConnectionSettings {
  type: 'welcome';
  version: number;
  name: string;
  id: string;
  paired: boolean;
  caps: Capabilities;
}

export interface HandshakeError {
  type: 'error';
  code: HandshakeErrorCode;
  message: string;
  versions?: number[];
}

/** The stream a transport hands over, with the remote already proved (transport.ts's AuthenticatedStream fits). */
export interface HandshakeStream {
  stream: Duplex;
  peerId: string;
  address: string;
  side: Side;
}

function fail(message: string): never {
  throw new PeerShareError('PROTOCOL_ERROR', message);
}

function intIn(m: Record<string, unknown>, key: string, min: number, max: number): number {
  const v = m[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) fail(`"${key}" must be an integer from ${min} to ${max}.`);
  return v;
}

/** `caps`: at most 16 capabilities named like `share/1`, each with an object of parameters (4.1). */
export function parseCapabilities(value: unknown): Capabilities {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail('"caps" must be an object.');
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length > 16) fail('"caps" names more than 16 capabilities.');
  const caps: Capabilities = {};
  for (const [key, params] of entries) {
    if (!/^[a-z][a-z0-9-]{0,31}\/[1-9][0-9]{0,3}$/.test(key)) fail(`"${shownType(key)}" is not a capability name.`);
    if (params === null || typeof params !== 'object' || Array.isArray(params)) fail(`The parameters of "${key}" must be an object.`);
    caps[key] = params as Record<string, unknown>;
  }
  return caps;
}

/** frame 16 KiB..1 MiB; window 2 × frame..2³¹−1 (so a REPLY always fits once credit is granted back); requests 1..256 (4.1). */
export function parseSettings(m: Record<string, unknown>): ConnectionSettings {
  const frame = intIn(m, 'frame', 16 * 1024, MAX_FRAME_CEILING_BYTES);
  return { frame, window: intIn(m, 'window', 2 * frame, MAX_CREDIT), requests: intIn(m, 'requests', 1, 256) };
}

/**
 * The acceptor's answer when the hello offers no version we speak (4.4 row 2, before anything
 * else, so no invite is used up and nobody is asked): it names our version and who must update.
 */
export function versionRefusal(offered: readonly number[]): HandshakeError | undefined {
  if (offered.includes(PROTOCOL_V2)) return undefined;
  const theyAreNewer = offered.some((v) => v > PROTOCOL_V2);
  return {
    type: 'error',
    code: 'VERSION_UNSUPPORTED',
    versions: [...V2_VERSIONS],
    message: theyAreNewer
      ? `This peer runs an older PeerShare (protocol version ${PROTOCOL_V2}). Ask them to update PeerShare; yours cannot connect to it.`
      : `This peer runs a newer PeerShare (protocol version ${PROTOCOL_V2}). Update PeerShare to connect to it.`,
  };
}

/**
 * Checks a hello in the acceptor's order (4.4 rows 1-3): its v1 fields (v1's parser, so both
 * versions bound them alike), then the version, then v2's fields. A hello without version 2 is
 * answered with `refusal`, not parsed further (a v1 hello has no `caps`).
 */
export function parseHelloV2(m: Record<string, unknown>, limits: Limits): { hello: HelloV2 } | { refusal: HandshakeError } {
  const common = parseHello(m, limits.maxPathBytes);
  const refusal = versionRefusal(common.versions);
  if (refusal) return { refusal };
  return {
    hello: {
      ...common,
      name: sanitizeForDisplay(common.name),
      request: common.request === true,
      caps: parseCapabilities(m.caps),
      ...parseSettings(m),
    },
  };
}

/** The dialer's check of a welcome (4.2): our version, the transport's identity, bounded fields. */
export function parseWelcomeV2(m: Record<string, unknown>, transportPeerId: string): WelcomeV2 {
  if (m.type !== 'welcome') fail(`Expected welcome, got ${shownType(m.type)}.`);
  if (m.version !== PROTOCOL_V2) throw new PeerShareError('VERSION_UNSUPPORTED', `The peer chose protocol version ${shownType(m.version)}, which we did not offer.`);
  const name = m.name;
  const id = m.id;
  if (typeof name !== 'string' || name.length > 100) fail('"name" must be a string of at most 100 characters.');
  if (typeof id !== 'string' || id.length > 100) fail('"id" must be a peer ID.');
  // The ID the peer claims in the protocol must be the one the transport proved.
  if (id !== transportPeerId) throw new PeerShareError('PEER_MISMATCH', 'The peer claims an ID other than the one its transport proved.');
  return { type: 'welcome', version: PROTOCOL_V2, name: sanitizeForDisplay(name), id, paired: m.paired === true, caps: parseCapabilities(m.caps), ...parseSettings(m) };
}

/**
 * A handshake `error` as the dialer reports it (4.3, 4.7): a code a handshake may carry, marked as
 * the peer's; VERSION_UNSUPPORTED says who must update, from the versions the peer speaks (none
 * given: a v1 peer, which never sends them).
 */
export function errorFromHandshake(m: Record<string, unknown>, peer: string): PeerShareError {
  const { error, allowed } = errorFromPeer(HANDSHAKE_ERROR_CODES, m, peer);
  if (!allowed || error.code !== 'VERSION_UNSUPPORTED') return error;
  const versions = Array.isArray(m.versions) ? m.versions.filter((v): v is number => Number.isSafeInteger(v)).slice(0, 16) : [];
  const theirs = versions.length > 0 ? Math.max(...versions) : 1;
  // A peer that says it speaks our version, yet refuses it, is not following the protocol.
  if (versions.includes(PROTOCOL_V2)) return new PeerShareError('PROTOCOL_ERROR', `${peer} refused protocol version ${PROTOCOL_V2} although it says it speaks it.`);
  const sentence =
    theirs > PROTOCOL_V2
      ? `${peer} runs a newer PeerShare (protocol version ${theirs}). Update PeerShare to connect to it.`
      : `${peer} runs an older PeerShare (protocol version ${theirs}). Ask them to update PeerShare; this version cannot connect to it.`;
  // Marked as the peer's, as every code it sends is (spec 8): never taken for our own refusal.
  return new PeerSentError('VERSION_UNSUPPORTED', sentence, { detail: error.message });
}

/**
 * Reads exactly one handshake frame with v1's parser (a DATA frame, an unknown type, a length
 * over maxMessageBytes are refused there) and hands back the bytes that followed it, which
 * belong to the connection. Within `timeoutMs` of being called, or TIMEOUT.
 */
export function readHandshakeFrame(stream: Duplex, limits: Limits, timeoutMs: number, signal?: AbortSignal): Promise<{ message: Record<string, unknown>; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const header = Buffer.alloc(FRAME_HEADER_BYTES);
    let headerFilled = 0;
    let remaining = 0;
    let message: Record<string, unknown> | undefined;
    const parser = new FrameParser(limits, { onMessage: (m) => (message = m), onData: () => undefined }, false);
    const done = (err: PeerShareError | undefined, rest: Buffer = Buffer.alloc(0)): void => {
      clearTimeout(timer);
      stream.pause();
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve({ message: message!, rest });
    };
    const onData = (chunk: Buffer): void => {
      try {
        let offset = 0;
        while (offset < chunk.length) {
          if (headerFilled < FRAME_HEADER_BYTES) {
            const take = Math.min(FRAME_HEADER_BYTES - headerFilled, chunk.length - offset);
            chunk.copy(header, headerFilled, offset, offset + take);
            headerFilled += take;
            offset += take;
            if (headerFilled < FRAME_HEADER_BYTES) return;
            remaining = header.readUInt32BE(1);
            parser.push(header); // its type and length are checked here, before the body
            continue;
          }
          const take = Math.min(remaining, chunk.length - offset);
          parser.push(chunk.subarray(offset, offset + take));
          offset += take;
          remaining -= take;
          if (remaining === 0) return done(undefined, chunk.subarray(offset));
        }
      } catch (err) {
        done(toPeerShareError(err, 'PROTOCOL_ERROR'));
      }
    };
    const onEnd = (): void => done(new PeerShareError('CONNECTION_CLOSED', 'The peer hung up during the handshake.'));
    const onError = (err: Error): void => done(toPeerShareError(err, 'CONNECTION_CLOSED'));
    const onAbort = (): void => done(new PeerShareError('CANCELLED'));
    const timer = setTimeout(() => done(new PeerShareError('TIMEOUT', `No handshake message within ${timeoutMs} ms.`)), timeoutMs);
    timer.unref();
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.on('error', onError);
    stream.resume();
  });
}

/** Sends a handshake `error` and closes, without waiting on a peer that will not read or hang up. */
export function refuseHandshake(stream: Duplex, error: HandshakeError): void {
  endWithMessage(stream, { ...error, message: error.message.slice(0, MAX_PEER_MESSAGE_CHARS) });
}

function handshakeErrorFor(err: PeerShareError): HandshakeError {
  return isOneOf(HANDSHAKE_ERROR_CODES, err.code)
    ? { type: 'error', code: err.code, message: err.message }
    : { type: 'error', code: 'INTERNAL', message: 'The peer could not complete the handshake.' };
}

export interface DialOptions {
  /**
   * The peer we meant to reach: checked against the ID the transport proved before a byte is
   * written, so a hello (and an invite's token) never reaches anyone else (spec 2).
   */
  expectedPeerId: string;
  /** The name the peer will see for us. */
  name: string;
  token?: string;
  /** Ask the acceptor to let us in (a nearby peer); we wait up to approvalTimeoutMs more. */
  request?: boolean;
  /** What we serve the acceptor. */
  serve: Served;
  onEvent?: (event: CapabilityMessage) => void;
  limits?: Partial<Limits>;
  signal?: AbortSignal;
}

/** The dialer's side: hello, then welcome (a Connection) or the acceptor's error. */
export async function dialV2(transport: HandshakeStream, options: DialOptions): Promise<{ connection: Connection; welcome: WelcomeV2 }> {
  if (transport.peerId !== options.expectedPeerId) {
    throw new PeerShareError('PEER_MISMATCH', `The peer at ${sanitizeForDisplay(transport.address.slice(0, 100))} is not the one you meant to reach: it presented ${transport.peerId}.`);
  }
  const limits = resolveLimits(options.limits);
  const local = advertisedSettings(limits);
  const hello = {
    type: 'hello',
    versions: [...V2_VERSIONS],
    name: options.name,
    ...(options.token ? { token: options.token } : {}),
    ...(options.request ? { request: true } : {}),
    caps: advertise(options.serve),
    ...local,
  };
  transport.stream.write(encodeMessage(hello));
  const wait = limits.helloTimeoutMs + (options.request && !options.token ? limits.approvalTimeoutMs : 0);
  const peer = `The peer at ${sanitizeForDisplay(transport.address.slice(0, 100))}`;
  let answer: { message: Record<string, unknown>; rest: Buffer };
  try {
    answer = await readHandshakeFrame(transport.stream, limits, wait, options.signal);
    if (answer.message.type === 'error') throw errorFromHandshake(answer.message, peer);
    const welcome = parseWelcomeV2(answer.message, transport.peerId);
    const connection = new Connection(transport.stream, {
      ...transport,
      peerName: welcome.name,
      limits: options.limits,
      local,
      remote: welcome,
      peerCapabilities: Object.keys(welcome.caps),
      initialBytes: answer.rest,
      handlers: handlersOf(options.serve),
      onEvent: options.onEvent,
    });
    return { connection, welcome };
  } catch (err) {
    transport.stream.destroy();
    throw toPeerShareError(err, 'PROTOCOL_ERROR');
  }
}

export interface AcceptOptions {
  name: string;
  /** Our peer ID, as the welcome states it (the dialer checks it against the transport's). */
  ownPeerId: string;
  limits?: Partial<Limits>;
  /**
   * Who is let in (4.4 rows 4-7) and what we serve them: resolves with what to serve this peer
   * and whether it was just paired; throws a PeerShareError with a handshake code to refuse.
   * Only called for a hello that offers version 2 and is well formed; `signal` fires if the
   * dialer hangs up or breaks the protocol meanwhile.
   */
  admit(hello: HelloV2, signal: AbortSignal): Promise<{ serve: Served; paired: boolean }>;
  onEvent?: (event: CapabilityMessage) => void;
}

/** The acceptor's side: hello within helloTimeoutMs, the version first, `admit`, then welcome (a Connection). */
export async function acceptV2(transport: HandshakeStream, options: AcceptOptions): Promise<{ connection: Connection; hello: HelloV2 }> {
  const limits = resolveLimits(options.limits);
  const local = advertisedSettings(limits);
  const hangUp = new AbortController();
  const onClose = (): void => hangUp.abort(new PeerShareError('CONNECTION_CLOSED', 'The dialer hung up.'));
  // admit may wait minutes (a person asked): a reset meanwhile ends the handshake, never the process.
  const onError = (err: Error): void => hangUp.abort(toPeerShareError(err, 'CONNECTION_CLOSED'));
  let refused = false;
  try {
    const { message, rest } = await readHandshakeFrame(transport.stream, limits, limits.helloTimeoutMs);
    if (message.type !== 'hello') fail('The first message must be hello.');
    const parsed = parseHelloV2(message, limits);
    if ('refusal' in parsed) {
      refuseHandshake(transport.stream, parsed.refusal);
      refused = true;
      throw new PeerShareError('VERSION_UNSUPPORTED', `${sanitizeForDisplay(transport.address.slice(0, 100))} offered protocol versions ${(message.versions as number[]).join(', ')}; this build speaks ${PROTOCOL_V2}.`);
    }
    // The dialer sends nothing between hello and welcome (4.6: "meanwhile any frame").
    if (rest.length > 0) fail('The dialer sent frames before the welcome.');
    const early = (): void => {
      hangUp.abort(new PeerShareError('PROTOCOL_ERROR', 'The dialer sent frames before the welcome.'));
    };
    transport.stream.once('data', early);
    transport.stream.once('close', onClose);
    transport.stream.on('error', onError);
    transport.stream.resume();
    let admitted: { serve: Served; paired: boolean };
    try {
      admitted = await Promise.race([
        options.admit(parsed.hello, hangUp.signal),
        new Promise<never>((_, reject) => hangUp.signal.addEventListener('abort', () => reject(hangUp.signal.reason), { once: true })),
      ]);
    } finally {
      transport.stream.off('data', early);
      transport.stream.off('close', onClose);
      transport.stream.off('error', onError);
      transport.stream.pause();
    }
    const welcome = { type: 'welcome', version: PROTOCOL_V2, name: options.name, id: options.ownPeerId, paired: admitted.paired, caps: advertise(admitted.serve), ...local };
    transport.stream.write(encodeMessage(welcome));
    const connection = new Connection(transport.stream, {
      ...transport,
      peerName: parsed.hello.name,
      limits: options.limits,
      local,
      remote: parsed.hello,
      peerCapabilities: Object.keys(parsed.hello.caps),
      handlers: handlersOf(admitted.serve),
      onEvent: options.onEvent,
    });
    return { connection, hello: parsed.hello };
  } catch (err) {
    const coded = toPeerShareError(err, 'PROTOCOL_ERROR');
    if (!refused) {
      if (coded.code === 'CONNECTION_CLOSED') transport.stream.destroy();
      else refuseHandshake(transport.stream, handshakeErrorFor(coded));
    }
    throw coded;
  }
}
