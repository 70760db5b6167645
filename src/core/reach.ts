import { connectToPeer, type ConnectOptions, type PeerConnection } from './client';
import { Discovery, type NearbyPeer } from './discovery';
import { PeerShareError, toPeerShareError, type ErrorCode } from './errors';
import { formatAddress, parseAddress } from './invite';
import { resolveLimits } from './limits';
import { normalizePeerId, shortPeerId } from './peer-id';
import { sanitizeForDisplay } from './protocol';
import { firstToSucceed } from './race';

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

export interface KnownPeerOptions extends Omit<ConnectOptions, 'addresses' | 'expectedPeerId' | 'token' | 'requestAccess' | 'onVerificationCode' | 'dhtKey'> {
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
 *   1. its remembered addresses, one by one;
 *   2. if none answered, each remembered host at the default port (a sharer that restarted and got
 *      its default port back, after it had fallen back to another);
 *   3. if discovery is allowed, its announcements, heard within `announcementWaitMs`: at most
 *      `maxAnnouncedAddressesTried` addresses claimed for its ID (see nextClaim for which first).
 * Every address is held to the peer's pinned certificate (`expectedPeerId`) before a byte is sent.
 * One that shows another certificate is passed over, even a remembered one: an address is only
 * where the peer was, and while it was stopped someone else may have taken its port (it then falls
 * back to another, and announces that). A connection that works records its address first in the
 * trust file (connectToPeer). Any other failure of the peer itself (it no longer trusts us, it is
 * busy) ends the search at once. If nothing answers, CONNECTION_FAILED-like: the first step's
 * error, with a message that says where we looked and where something else answered.
 */
export async function connectToKnownPeer(options: KnownPeerOptions): Promise<PeerConnection> {
  const dhtKey = options.trust.get(normalizePeerId(options.peerId))?.dht;
  if (!options.dht || !dhtKey) return findOnLan(options);
  return findOnLanOrDht(options, options.dht, dhtKey);
}

/**
 * A trusted peer with a DHT key, while internet reach is on: the search on the LAN (findOnLan)
 * and a connection through the DHT side by side; the first to connect is kept, the other
 * cancelled (or closed, if it connects too late). If both fail, a failure of the peer itself comes
 * first; else the LAN search's sentence, with what the DHT said.
 */
async function findOnLanOrDht(options: KnownPeerOptions, dht: NonNullable<KnownPeerOptions['dht']>, dhtKey: string): Promise<PeerConnection> {
  const { signal, identity, trust, name, limits } = options;
  if (signal?.aborted) throw new PeerShareError('CANCELLED');
  // One cancel per route, so the winner's connection keeps the caller's cancel and the loser is stopped alone.
  const onLan = new AbortController();
  const onDht = new AbortController();
  const forward = (): void => {
    onLan.abort();
    onDht.abort();
  };
  signal?.addEventListener('abort', forward, { once: true });
  const attempts = [
    findOnLan({ ...options, signal: onLan.signal }),
    connectToPeer({ identity, trust, name, limits, signal: onDht.signal, addresses: [], expectedPeerId: options.peerId, dhtKey, dht }),
  ];
  try {
    const winner = await firstToSucceed(attempts, (late) => late.close());
    (winner.route === 'dht' ? onLan : onDht).abort();
    return winner;
  } catch (errors) {
    signal?.removeEventListener('abort', forward);
    if (signal?.aborted) throw new PeerShareError('CANCELLED');
    const [lan, internet] = (errors as unknown[]).map((err) => toPeerShareError(err, 'CONNECTION_FAILED'));
    const ofThePeer = [lan, internet].find((f) => !isUnreachable(f) && f.code !== 'UNKNOWN_PEER');
    if (ofThePeer) throw ofThePeer;
    throw new PeerShareError(lan.code === 'UNKNOWN_PEER' ? internet.code : lan.code, `${lan.message} Through the internet (DHT): ${internet.message}`, {
      detail: [lan.detail, internet.detail].filter(Boolean).join(' ') || undefined,
      cause: lan,
    });
  }
}

/** connectToKnownPeer on the LAN alone: the steps above. */
async function findOnLan(options: KnownPeerOptions): Promise<PeerConnection> {
  const peerId = normalizePeerId(options.peerId);
  const known = options.trust.get(peerId);
  if (!known) throw new PeerShareError('UNKNOWN_PEER', `${shortPeerId(peerId)}… is not a peer you trust. Pair with an invite first.`);
  const { identity, trust, name, limits, signal } = options;
  const tried = new Set<string>();
  const search: Search = { remembered: known.addresses, atDefaultPort: [], somethingElseAt: [], nearby: 'skipped' };

  for (const address of known.addresses) {
    const found = await guess(address, 'remembered');
    if (found) return found;
  }

  const defaultPort = options.defaultPort ?? DEFAULT_PORT;
  search.atDefaultPort = [...new Set(known.addresses.map(parseAddress).filter((a) => a !== undefined).map((a) => formatAddress(a.host, defaultPort)))].filter(
    (address) => !tried.has(address),
  );
  for (const address of search.atDefaultPort) {
    const found = await guess(address, 'default port');
    if (found) return found;
  }

  if (options.discovery) {
    const look = await lookNearby(options, peerId, known.addresses, tried, (address, trySignal) => guess(address, 'announced', trySignal));
    if (look.connection) return look.connection;
    search.nearby = look.listenError ? 'could not listen' : 'listened';
    search.listenError = look.listenError;
  }

  throw notFound(known.name, peerId, search);

  /** One address: the connection, or undefined if nobody (or somebody else) answered there. */
  async function guess(address: string, source: 'remembered' | 'default port' | 'announced', trySignal = signal): Promise<PeerConnection | undefined> {
    tried.add(address);
    try {
      return await connectToPeer({ identity, trust, name, limits, signal: trySignal, addresses: [address], expectedPeerId: peerId, send: options.send });
    } catch (err) {
      const coded = toPeerShareError(err, 'CONNECTION_FAILED');
      if (coded.code === 'PEER_MISMATCH') {
        // Only where we chose to look: a stranger's claim answered by a stranger is no news.
        if (source !== 'announced') search.somethingElseAt.push({ address, error: coded });
        return undefined;
      }
      if (!isUnreachable(coded)) throw coded;
      if (source === 'remembered') search.firstFailure ??= coded;
      return undefined;
    }
  }
}

/** Where a search looked and what it met there, for the message when the peer is not found. */
interface Search {
  remembered: string[];
  atDefaultPort: string[];
  /** The first remembered address's failure to answer. */
  firstFailure?: PeerShareError;
  /** Addresses of ours (remembered, or a remembered host's default port) where another certificate answered. */
  somethingElseAt: { address: string; error: PeerShareError }[];
  nearby: 'skipped' | 'listened' | 'could not listen';
  listenError?: PeerShareError;
}

/**
 * Step 3: listens for announcements of `peerId` and tries each new address as it is heard, until
 * one works, the limit of addresses is reached, or the wait is over. Tries run side by side and
 * none starts after the wait: a claim that never answers (a tarpit) holds up nothing, and the look
 * takes at most `announcementWaitMs` and one try (a handshake and a hello), however the claims
 * behave. `listenError` says why no announcement could be heard at all (the discovery port is
 * held by another program, say).
 */
async function lookNearby(
  options: KnownPeerOptions,
  peerId: string,
  remembered: string[],
  tried: Set<string>,
  guess: (address: string, signal: AbortSignal) => Promise<PeerConnection | undefined>,
): Promise<{ connection?: PeerConnection; listenError?: PeerShareError }> {
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
    } catch (err) {
      await discovery.stop();
      return { listenError: toPeerShareError(err, 'CONNECTION_FAILED') }; // nothing to hear there
    }
  }
  const { signal } = options;
  let wake: (() => void) | undefined;
  const onUp = (peer: { id: string }): void => {
    if (peer.id === peerId) wake?.();
  };
  const onAbort = (): void => wake?.();
  discovery.on('up', onUp);
  signal?.addEventListener('abort', onAbort);
  const deadline = performance.now() + limits.announcementWaitMs;
  const rememberedHosts = new Set(remembered.map((a) => parseAddress(a)?.host).filter((h) => h !== undefined));
  const triesByHost = new Map<string, number>();
  /** Tries under way, each cancellable on its own: once one works, the others stop. */
  const running = new Map<string, AbortController>();
  let found: PeerConnection | undefined;
  let failure: PeerShareError | undefined;
  let over = false;
  try {
    let triedAnnounced = 0;
    for (;;) {
      if (signal?.aborted) throw new PeerShareError('CANCELLED');
      if (found) return { connection: found };
      if (failure) throw failure;
      const left = deadline - performance.now();
      while (left > 0 && triedAnnounced < limits.maxAnnouncedAddressesTried) {
        const next = nextClaim(discovery.list(), peerId, tried, rememberedHosts, triesByHost);
        if (!next) break;
        triedAnnounced++;
        triesByHost.set(next.host, (triesByHost.get(next.host) ?? 0) + 1);
        start(next.address);
      }
      if (running.size === 0 && (left <= 0 || triedAnnounced >= limits.maxAnnouncedAddressesTried)) return {};
      await new Promise<void>((resolve) => {
        const timer = left > 0 ? setTimeout(done, left) : undefined;
        wake = done;
        function done(): void {
          clearTimeout(timer);
          wake = undefined;
          resolve();
        }
      });
    }
  } finally {
    over = true;
    for (const control of running.values()) control.abort();
    signal?.removeEventListener('abort', onAbort);
    discovery.off('up', onUp);
    if (discovery !== given) await discovery.stop();
  }

  /** One try; the caller's cancel reaches it, and so does the end of the look (unless it won). */
  function start(address: string): void {
    const control = new AbortController();
    const forward = (): void => control.abort();
    signal?.addEventListener('abort', forward, { once: true });
    running.set(address, control);
    const settled = (connection?: PeerConnection): void => {
      running.delete(address);
      if (connection && !over && !found && !failure) {
        // The winner's connection keeps the caller's cancel, as any connection does.
        found = connection;
        discovery.markProved(peerId, address);
      } else {
        signal?.removeEventListener('abort', forward);
        connection?.close(); // another try won, or the look is over
      }
      wake?.();
    };
    guess(address, control.signal).then(settled, (err: unknown) => {
      if (!control.signal.aborted) failure ??= toPeerShareError(err, 'CONNECTION_FAILED');
      settled();
    });
  }
}

/**
 * The next address claimed for `peerId` to try, of those not tried yet. Strangers choose what is
 * announced, how it sorts and when: so not by name or order heard, but an address a handshake
 * already proved first, then one at a host the peer was remembered at (its own machine), then the
 * host tried least so far, so the claims of one machine get one try per round and cannot use up
 * the limit before the peer's turn comes.
 */
function nextClaim(
  heard: NearbyPeer[],
  peerId: string,
  tried: Set<string>,
  rememberedHosts: Set<string>,
  triesByHost: Map<string, number>,
): { address: string; host: string } | undefined {
  let best: { address: string; host: string; rank: number[] } | undefined;
  for (const peer of heard) {
    if (peer.id !== peerId || tried.has(peer.address)) continue;
    const host = parseAddress(peer.address)?.host ?? peer.address;
    const rank = [peer.proved ? 0 : 1, rememberedHosts.has(host) ? 0 : 1, triesByHost.get(host) ?? 0];
    if (!best || before(rank, best.rank)) best = { address: peer.address, host, rank };
  }
  return best && { address: best.address, host: best.host };
}

/** Does rank `a` come strictly before `b`, comparing element by element? Equals keep their order. */
function before(a: number[], b: number[]): boolean {
  const i = a.findIndex((value, k) => value !== b[k]);
  return i !== -1 && a[i] < b[i];
}

/** Why the peer was not found, in words: where we looked, what answered there instead, what a person can do. */
function notFound(name: string, peerId: string, search: Search): PeerShareError {
  const who = name ? sanitizeForDisplay(name).slice(0, 64) : `${shortPeerId(peerId)}…`;
  const shown = (addresses: string[]): string => {
    const places = addresses.map((a) => sanitizeForDisplay(a).slice(0, 64));
    return places.length > 3 ? `${places.slice(0, 3).join(', ')} and ${places.length - 3} more` : places.join(', ');
  };
  const unheard = search.nearby === 'could not listen' ? ', and announcements on your network could not be heard' : '';
  const detail = [
    search.firstFailure?.message,
    search.firstFailure?.detail,
    ...search.somethingElseAt.map((s) => s.error.message),
    search.listenError && `Listening for announcements: ${[search.listenError.message, search.listenError.detail].filter(Boolean).join(' ')}`,
  ]
    .filter(Boolean)
    .join(' ');
  if (search.remembered.length === 0) {
    const nearby = search.nearby === 'listened' ? ', and was not found among the peers announcing themselves on your network' : unheard;
    return new PeerShareError('UNKNOWN_PEER', `${who} has no address we know of${nearby}. Is it sharing? Ask for an invite.`, { detail: detail || undefined });
  }
  const nearby = search.nearby === 'listened' ? ', nor among the peers announcing themselves on your network' : unheard;
  const elsewhere = search.somethingElseAt.length > 0 ? ` Something else answers at ${shown(search.somethingElseAt.map((s) => s.address))} now (another program, or another PeerShare).` : '';
  // Not reached is the outcome, whatever answered at the addresses we tried: the code says so, so a caller may try again later.
  return new PeerShareError(
    search.firstFailure?.code ?? 'CONNECTION_FAILED',
    `${who} did not answer at ${shown([...search.remembered, ...search.atDefaultPort])}${nearby}.${elsewhere} Is it sharing? If it is, it may have a new address: ask for a new invite.`,
    { detail, cause: search.firstFailure ?? search.somethingElseAt[0]?.error },
  );
}
