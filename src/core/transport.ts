import type { Duplex } from 'node:stream';
import type { PeerShareError } from './errors';
import { encodeMessage } from './frames';
import { CLOSE_GRACE_MS } from './limits';

/**
 * The seam between a transport and the protocol (docs/protocol-v2.md, section 2). A transport
 * opens or accepts a byte stream, proves who is at the other end, and hands the rest of the core
 * one of these; the protocol code never sees a socket, a certificate or a key.
 *
 * TLS 1.3 with pinned certificates over TCP (transport-tls.ts) is the first transport. A Noise
 * stream over HyperDHT, or an in-memory pair in protocol tests, implements the same interface.
 */
export interface AuthenticatedStream {
  /**
   * The bytes, reliable and ordered both ways, with backpressure (`write()` returns false, then
   * 'drain'). Encryption is the transport's. `end()` closes after what was written; `destroy()`
   * at once.
   */
  readonly stream: Duplex;
  /**
   * The remote's identity as the transport proved it before the first protocol byte: it showed
   * possession of the private key whose public key this ID names, inside the key exchange that
   * protects every later byte.
   */
  readonly peerId: string;
  /** Where the remote is, `host:port`: for display and logs only, never identity. */
  readonly address: string;
  /** The remote host alone, as a person is shown it (an accepted stream's port is ephemeral); '' if unknown. */
  readonly host: string;
  /** Who opened it: the dialer says hello first, the acceptor answers. */
  readonly side: StreamSide;
  /** How it came: `direct` (TCP to an address; the default) or `dht` (through HyperDHT, transport-dht.ts). */
  readonly route?: StreamRoute;
}

export type StreamRoute = 'direct' | 'dht';

export type StreamSide = 'dialer' | 'acceptor';

/**
 * An accepted stream's place in its transport's budget of connections that have not yet shown
 * they belong here. A proved identity is not yet a trusted one: a stranger with a valid
 * certificate stays in the budget until the core trusts it, redeems its invite or asks the sharer,
 * and may be evicted meanwhile, oldest first, to make room for newer connections.
 */
export interface Admission {
  /** What per-source limits count by (an IPv4 address, an IPv6 /64). */
  readonly source: string;
  /** The remote proved an identity we trust: its handshake does not count against its source's rate. */
  refundHandshake(): void;
  /** Leaves the budget (trusted, waiting for the sharer's answer, or closed). Safe to call again. */
  leave(): void;
  /** How to make room once the stream is the core's: `goodbye` replaces cutting the stream. */
  onEvict(goodbye: () => void): void;
}

/**
 * Sends a last error message and closes, without waiting on a peer that will not read or hang up.
 * The message goes in the handshake frames both protocol versions share (protocol-v2 3.1 and 4.3),
 * so a transport may refuse a stream this way before any protocol code has seen it.
 */
export function endWithError(stream: Duplex, error: PeerShareError): void {
  endWithMessage(stream, { type: 'error', code: error.code, message: error.message });
}

/** endWithError's way of ending, for any last handshake message (v2's refusal, handshake.ts). */
export function endWithMessage(stream: Duplex, message: Record<string, unknown>): void {
  stream.on('error', () => stream.destroy());
  if (stream.destroyed || !stream.writable) {
    stream.destroy();
    return;
  }
  stream.end(encodeMessage(message));
  // Read (and drop) whatever still arrives, so the peer's end of the connection is seen.
  stream.resume();
  const forceClose = setTimeout(() => stream.destroy(), CLOSE_GRACE_MS);
  forceClose.unref();
  stream.once('close', () => clearTimeout(forceClose));
}
