import { connectToPeer, type ConnectOptions, type PeerConnection } from './client';
import { Discovery } from './discovery';
import { PeerShareError, toPeerShareError, type ErrorCode } from './errors';
import { formatAddress, parseAddress } from './invite';
import { resolveLimits } from './limits';
import { normalizePeerId, shortPeerId } from './peer-id';
import { sanitizeForDisplay } from './protocol';

/**
 * How a trusted peer is found again after it restarts, from both sides.
 *
 * The sharer listens on a fixed port unless told otherwise (so an address remembered at pairing
 * still works the next day), and takes any free port when that one is taken. A client that finds
 * nobody at a remembered address tries that host at the default port, then listens briefly for
 * the peer's announcements. Every guess is checked the same way: the pinned certificate decides,
 * and an address that answered is remembered first.
 */

/**
 * The port a sharer listens on unless told otherwise; announcements use the next one up
 * (DISCOVERY_PORT). Fixed, so a paired peer finds a restarted sharer where it was, as LocalSend
 * (53317) and Syncthing (22000) do. Kept here, beside the fallback and the client's search that
 * rely on it, rather than among the limits: it is where to meet, not a bound on anything.
 */
export const DEFAULT_PORT = 47474;

/** Failures that say only "not reached there": worth looking elsewhere. */
const UNREACHED: readonly ErrorCode[] = ['CONNECTION_FAILED', 'TIMEOUT', 'CONNECTION_CLOSED'];

export function isUnreachable(err: unknown): boolean {
  return err instanceof PeerShareError && UNREACHED.includes(err.code);
}

// ---------------------------------------------------------------------------------------------
// The sharer: which port

export interface PortChoice {
  /**
   * The port asked for. Undefined: the default port, or any free port when it is taken.
   * 0: any free port. Anything else: exactly that port, or ADDRESS_IN_USE.
   */
  port?: number;
  /** Tried first unless an exact port was asked for: the port a restarted sharer had, so peers that reached it then still do. */
  previousPort?: number;
  /** The default port (DEFAULT_PORT); tests set their own so they never contend for the real one. */
  defaultPort?: number;
}

export interface ChosenPort {
  port: number;
  /** Set when the default port was wanted but taken, so the sharer can say where it listens instead. */
  defaultPortInUse?: number;
}

/** What listenOnPort needs of a server (PeerServer has it). */
export interface Listening {
  listen(port: number, host: string): Promise<{ port: number }>;
}

/**
 * Starts `server` listening on `host` by the rule in PortChoice. Only ADDRESS_IN_USE moves on to
 * the next candidate; any other failure (a port the user may not bind, an address this machine
 * does not have) is thrown as it is.
 */
export async function listenOnPort(server: Listening, host: string, choice: PortChoice = {}): Promise<ChosenPort> {
  const defaultPort = choice.defaultPort ?? DEFAULT_PORT;
  const exact = choice.port !== undefined && choice.port !== 0 ? choice.port : undefined;
  if (exact !== undefined) {
    try {
      return { port: (await server.listen(exact, host)).port };
    } catch (err) {
      const coded = toPeerShareError(err, 'CONNECTION_FAILED');
      if (coded.code !== 'ADDRESS_IN_USE') throw coded;
      throw new PeerShareError(
        'ADDRESS_IN_USE',
        `Port ${exact} on ${host} is already in use, by another program or another PeerShare. Stop that one, or choose another port.`,
        { detail: coded.detail, cause: coded },
      );
    }
  }
  const wanted = choice.port === 0 ? undefined : defaultPort;
  const candidates = [...new Set([choice.previousPort, wanted, 0].filter((p): p is number => p !== undefined))];
  let defaultPortInUse: number | undefined;
  for (const port of candidates) {
    try {
      const bound = (await server.listen(port, host)).port;
      return defaultPortInUse === undefined ? { port: bound } : { port: bound, defaultPortInUse };
    } catch (err) {
      const coded = toPeerShareError(err, 'CONNECTION_FAILED');
      if (coded.code !== 'ADDRESS_IN_USE' || port === 0) throw coded;
      if (port === wanted) defaultPortInUse = port;
    }
  }
  throw new PeerShareError('INTERNAL', 'No port was tried.'); // unreachable: 0 is always a candidate
}

// ---------------------------------------------------------------------------------------------
// The client: finding a known peer

/** Where to listen for announcements when no Discovery is running (the CLI): as in DiscoveryOptions. */
export interface NearbyLookSettings {
  interfaces?: string[];
  port?: number;
}

export interface KnownPeerOptions extends Omit<ConnectOptions, 'addresses' | 'expectedPeerId' | 'token' | 'requestAccess' | 'onVerificationCode'> {
  /** A trusted peer's ID; its remembered addresses are read from `trust`. */
  peerId: string;
  /** The port sharers listen on by default (DEFAULT_PORT); tests set their own. */
  defaultPort?: number;
  /**
   * Where to listen for the peer's announcements if it is not where it was: a running Discovery
   * (used as it is, left running), settings to start one for the look (stopped after), or
   * undefined/false to skip that step.
   */
  discovery?: Discovery | NearbyLookSettings | false;
}

/**
 * Connects to a trusted peer wherever it now is, in this order:
 *   1. its remembered addresses, as connectToPeer does;
 *   2. if none answered, each remembered host at the default port (a sharer that restarted and got
 *      its default port back, after it had fallen back to another);
 *   3. if discovery is allowed, its announcements, heard within `announcementWaitMs`: at most
 *      `maxAnnouncedAddressesTried` addresses claimed for its ID.
 * Steps 2 and 3 are guesses, and an announcement only a claim: each is held to the peer's pinned
 * certificate (`expectedPeerId`) before a byte is sent, and one that shows another certificate is
 * passed over. A connection that works records its address first in the trust file (connectToPeer).
 * Any other failure of the peer itself (it no longer trusts us, it is busy) ends the search at once.
 * If nothing answers, the first step's error is thrown, with a message that says where we looked.
 */
export async function connectToKnownPeer(options: KnownPeerOptions): Promise<PeerConnection> {
  const peerId = normalizePeerId(options.peerId);
  const known = options.trust.get(peerId);
  if (!known) throw new PeerShareError('UNKNOWN_PEER', `${shortPeerId(peerId)}… is not a peer you trust. Pair with an invite first.`);
  const { identity, trust, name, limits, signal } = options;
  const attempt = (addresses: string[]): Promise<PeerConnection> => connectToPeer({ identity, trust, name, limits, signal, addresses, expectedPeerId: peerId });
  const tried = new Set<string>(known.addresses);
  let firstFailure: PeerShareError | undefined;

  if (known.addresses.length > 0) {
    try {
      return await attempt(known.addresses);
    } catch (err) {
      firstFailure = toPeerShareError(err, 'CONNECTION_FAILED');
      if (!isUnreachable(firstFailure)) throw firstFailure;
    }
  }

  const defaultPort = options.defaultPort ?? DEFAULT_PORT;
  const atDefaultPort = [...new Set(known.addresses.map(parseAddress).filter((a) => a !== undefined).map((a) => formatAddress(a.host, defaultPort)))].filter(
    (address) => !tried.has(address),
  );
  for (const address of atDefaultPort) {
    tried.add(address);
    const found = await guess(address);
    if (found) return found;
  }

  let listened = false;
  if (options.discovery) {
    listened = true;
    const found = await lookNearby(options, peerId, tried, guess);
    if (found) return found;
  }

  throw notFound(known.name, peerId, known.addresses, atDefaultPort, listened, firstFailure);

  /** One guessed address: the connection, or undefined if nobody (or somebody else) answered there. */
  async function guess(address: string): Promise<PeerConnection | undefined> {
    try {
      return await attempt([address]);
    } catch (err) {
      const coded = toPeerShareError(err, 'CONNECTION_FAILED');
      if (isUnreachable(coded) || coded.code === 'PEER_MISMATCH') return undefined;
      throw coded;
    }
  }
}

/**
 * Step 3: listens for announcements of `peerId` and tries each new address as it is heard, until
 * one works, the limit of addresses is reached, or the wait is over (a try under way finishes).
 */
async function lookNearby(
  options: KnownPeerOptions,
  peerId: string,
  tried: Set<string>,
  guess: (address: string) => Promise<PeerConnection | undefined>,
): Promise<PeerConnection | undefined> {
  const limits = resolveLimits(options.limits);
  const given = options.discovery;
  let discovery: Discovery;
  if (given instanceof Discovery) discovery = given;
  else {
    discovery = new Discovery({ selfId: options.identity.peerId, interfaces: given ? given.interfaces : undefined, port: given ? given.port : undefined });
    // A socket error must not throw from an emitter nobody listens to; the look simply finds less.
    discovery.on('error', () => undefined);
    try {
      await discovery.start(); // asks who is there, so sharers answer at once
    } catch {
      await discovery.stop();
      return undefined; // no network to listen on: nothing to find there
    }
  }
  let wake: (() => void) | undefined;
  const onUp = (peer: { id: string }): void => {
    if (peer.id === peerId) wake?.();
  };
  discovery.on('up', onUp);
  const deadline = performance.now() + limits.announcementWaitMs;
  try {
    let triedAnnounced = 0;
    while (triedAnnounced < limits.maxAnnouncedAddressesTried) {
      if (options.signal?.aborted) throw new PeerShareError('CANCELLED');
      const next = discovery.list().find((p) => p.id === peerId && !tried.has(p.address));
      if (next) {
        tried.add(next.address);
        triedAnnounced++;
        const found = await guess(next.address);
        if (found) {
          discovery.markProved(peerId, next.address);
          return found;
        }
        continue;
      }
      const left = deadline - performance.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        options.signal?.addEventListener('abort', done, { once: true });
        wake = done;
        function done(): void {
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', done);
          wake = undefined;
          resolve();
        }
      });
    }
    return undefined;
  } finally {
    discovery.off('up', onUp);
    if (discovery !== given) await discovery.stop();
  }
}

/** The first step's failure, reworded to say where we looked and what a person can do. */
function notFound(
  name: string,
  peerId: string,
  remembered: string[],
  atDefaultPort: string[],
  listened: boolean,
  firstFailure: PeerShareError | undefined,
): PeerShareError {
  const who = name ? sanitizeForDisplay(name).slice(0, 64) : `${shortPeerId(peerId)}…`;
  const places = [...remembered, ...atDefaultPort].map((a) => sanitizeForDisplay(a).slice(0, 64));
  const shown = places.length > 3 ? `${places.slice(0, 3).join(', ')} and ${places.length - 3} more` : places.join(', ');
  const nearby = listened ? ', nor among the peers announcing themselves on your network' : '';
  if (!firstFailure) {
    const unheard = listened ? ', and was not found among the peers announcing themselves on your network' : '';
    return new PeerShareError('UNKNOWN_PEER', `${who} has no address we know of${unheard}. Is it sharing? Ask for an invite.`);
  }
  return new PeerShareError(
    firstFailure.code,
    `${who} did not answer at ${shown}${nearby}. Is it sharing? If it is, it may have a new address: ask for a new invite.`,
    { detail: [firstFailure.message, firstFailure.detail].filter(Boolean).join(' '), cause: firstFailure },
  );
}
