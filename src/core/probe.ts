import type { Duplex } from 'node:stream';
import { toPeerShareError } from './errors';
import { normalizePeerId } from './peer-id';
import type { AuthenticatedStream } from './transport';
import { dialTls, type HandshakeOptions } from './transport-tls';

export interface ProveOptions extends HandshakeOptions {
  /** The peer ID the address claims (from an announcement). */
  expectedPeerId: string;
}

/**
 * Proves that whoever answers at `address` holds the certificate of `expectedPeerId`: one TLS
 * handshake, nothing sent after it, then closed. A nearby announcement is only a claim (anyone on
 * the network can send one, with any ID); callers show it as a trusted peer only once this said true.
 *
 * Resolves false for another certificate, no certificate, a refused or dropped connection, a
 * timeout or an abort; throws a coded INVALID_ARGUMENT only for arguments that make no sense.
 */
export async function provePeer(options: ProveOptions): Promise<boolean> {
  const expected = normalizePeerId(String(options.expectedPeerId)); // INVALID_ARGUMENT if not an ID
  let opened: Promise<AuthenticatedStream>;
  try {
    opened = dialTls(options);
  } catch (err) {
    throw toPeerShareError(err, 'INVALID_ARGUMENT');
  }
  try {
    const { stream, peerId } = await opened;
    closeGently(stream);
    return peerId === expected;
  } catch {
    return false;
  }
}

/** How long a closed probe waits for the other end to close too before it cuts the stream. */
const CLOSE_GRACE_MS = 1000;

/**
 * Ends the stream after our last handshake flight (our certificate and Finished) has gone out, so
 * the other end sees a completed handshake and a clean close, not a failed one; cut if it lingers.
 */
function closeGently(stream: Duplex): void {
  stream.on('error', () => undefined);
  stream.end();
  setTimeout(() => stream.destroy(), CLOSE_GRACE_MS).unref();
}
