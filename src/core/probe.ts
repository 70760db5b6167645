import * as tls from 'node:tls';
import { PeerShareError, toPeerShareError } from './errors';
import type { Identity } from './identity';
import { parseAddress } from './invite';
import { DEFAULT_LIMITS } from './limits';
import { normalizePeerId, peerIdOfCert } from './peer-id';
import { TLS_OPTIONS } from './tls-options';

export interface HandshakeOptions {
  identity: Identity;
  /** `host:port`. */
  address: string;
  /** The handshake must finish within this time (default: the handshake limit, 10 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * A TLS 1.3 handshake with our certificate, and nothing sent after it: returns the open socket and
 * the peer ID of the certificate the other end presented. Self-signed peers: the caller compares
 * the ID with the one it expects before it sends a single byte.
 * Coded errors: INVALID_ARGUMENT, TIMEOUT, CANCELLED, CONNECTION_FAILED, PEER_MISMATCH (no certificate).
 */
export function tlsHandshake(options: HandshakeOptions): Promise<{ socket: tls.TLSSocket; peerId: string }> {
  const parsed = typeof options.address === 'string' ? parseAddress(options.address) : undefined;
  if (!parsed) throw new PeerShareError('INVALID_ARGUMENT', `Not an address (host:port): ${JSON.stringify(String(options.address).slice(0, 80))}`);
  const timeoutMs = options.timeoutMs ?? DEFAULT_LIMITS.handshakeTimeoutMs;
  if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new PeerShareError('INVALID_ARGUMENT', `The handshake timeout must be a positive number of milliseconds, got ${String(timeoutMs)}.`);
  }
  const { address, identity, signal } = options;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new PeerShareError('CANCELLED'));
    const socket = tls.connect({
      ...TLS_OPTIONS,
      host: parsed.host,
      port: parsed.port,
      key: identity.keyPem,
      cert: identity.certPem,
      // Self-signed peers: the certificate's ID is the check, made by the caller.
      rejectUnauthorized: false,
      servername: undefined,
    });
    const timer = setTimeout(() => fail(new PeerShareError('TIMEOUT', `No TLS handshake with ${address} within ${timeoutMs} ms.`)), timeoutMs);
    const onAbort = (): void => fail(new PeerShareError('CANCELLED'));
    signal?.addEventListener('abort', onAbort, { once: true });
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
    };
    function fail(err: PeerShareError): void {
      done();
      socket.on('error', () => undefined); // late errors of a socket we gave up on
      socket.destroy();
      reject(err);
    }
    const onError = (err: Error): void => fail(toPeerShareError(err, 'CONNECTION_FAILED'));
    const onClose = (): void => fail(new PeerShareError('CONNECTION_FAILED', `The peer at ${address} closed the connection during the handshake.`));
    socket.once('error', onError);
    socket.once('close', onClose);
    socket.once('secureConnect', () => {
      const cert = socket.getPeerCertificate(false);
      if (!cert?.raw) return fail(new PeerShareError('PEER_MISMATCH', `The peer at ${address} presented no certificate.`));
      done();
      resolve({ socket, peerId: peerIdOfCert(cert.raw) });
    });
  });
}

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
  let opened: Promise<{ socket: tls.TLSSocket; peerId: string }>;
  try {
    opened = tlsHandshake(options);
  } catch (err) {
    throw toPeerShareError(err, 'INVALID_ARGUMENT');
  }
  try {
    const { socket, peerId } = await opened;
    closeGently(socket);
    return peerId === expected;
  } catch {
    return false;
  }
}

/** How long a closed probe waits for the other end to close too before it cuts the socket. */
const CLOSE_GRACE_MS = 1000;

/**
 * Ends the socket after our last handshake flight (our certificate and Finished) has gone out, so
 * the other end sees a completed handshake and a clean close, not a failed one; cut if it lingers.
 */
function closeGently(socket: tls.TLSSocket): void {
  socket.on('error', () => undefined);
  socket.end();
  setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
}
