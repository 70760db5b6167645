import * as dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import { PeerShareError } from './errors';
import { DEFAULT_LIMITS } from './limits';
import { isPeerId, normalizePeerId } from './peer-id';
import { PROTOCOL_V2 } from './v2/handshake';

/**
 * Nearby peers over plain UDP multicast: a sharer announces its name, peer ID, port and protocol
 * version every few seconds and says goodbye when it stops; a browser keeps a bounded table of
 * what it heard. An announcement is only a claim: the address is taken from the packet's source,
 * never from its content, and anyone can claim any ID. The TLS certificate decides who a peer is:
 * an entry is `proved` only once a handshake at its address showed that ID's certificate
 * (`provePeer` in probe.ts, then `markProved`). What strangers can do to the table is bounded:
 * - several claims to one ID from different addresses are separate entries, so a spoof never
 *   moves the real peer's address;
 * - a goodbye removes only the entry announced from the same source address and port;
 * - each source address holds at most `maxPeersPerSource` entries (a flood from it replaces its
 *   own oldest ones), the table at most `maxPeers`; when full, a newcomer displaces an entry only
 *   of a source holding at least two more unproved entries than its own, and a proved entry is
 *   never displaced.
 * Someone on the LAN with raw sockets can still forge a source address; that is why only a proof,
 * never an announcement, may make a listed peer trusted.
 *
 * Why not mDNS/DNS-SD: we need one record type on one private group, and a 60-line JSON message
 * is easier to bound and to check than a DNS parser; no dependency is needed.
 */
export const DISCOVERY_GROUP = '239.255.70.83';
export const DISCOVERY_PORT = 47475;

export interface DiscoveryOptions {
  /** Our own peer ID: never listed. */
  selfId: string;
  /** IPv4 addresses of the interfaces to use; default: every non-internal IPv4 interface. */
  interfaces?: string[];
  group?: string;
  port?: number;
  /** Announce every this many ms while announcing (default 3000). */
  intervalMs?: number;
  /** Forget a peer not heard for this long (default 3 intervals + 1 s). */
  expiryMs?: number;
  /** Most entries remembered in all; see the class comment for who gives way when full (default 256). */
  maxPeers?: number;
  /** Most entries one source address may hold; its least recently heard gives way first (default 16). */
  maxPeersPerSource?: number;
}

export interface NearbyPeer {
  id: string;
  name: string;
  /** `host:port` from the packet's source address and the announced port. */
  address: string;
  version: number;
  lastSeen: number;
  /**
   * True once a TLS handshake at `address` showed the certificate of `id` (`markProved`). Until
   * then the entry is only a claim: never show it as a trusted peer.
   */
  proved: boolean;
}

/** An entry of the table, with the UDP source it was heard from (a goodbye must come from there). */
interface HeardPeer {
  peer: NearbyPeer;
  sourceHost: string;
  sourcePort: number;
}

interface Announcement {
  name: string;
  port: number;
}

export class Discovery extends EventEmitter {
  private readonly sockets: dgram.Socket[] = [];
  /** `id@host:port` -> entry, least recently heard first. */
  private readonly peers = new Map<string, HeardPeer>();
  /** Entries per source address. */
  private readonly perSource = new Map<string, number>();
  private announcement?: Announcement;
  private timer?: NodeJS.Timeout;
  /** The second announcement, shortly after the first (one datagram may be lost). */
  private repeat?: NodeJS.Timeout;
  private lastQueryAnswer = 0;
  private readonly group: string;
  private readonly port: number;
  private readonly intervalMs: number;
  private readonly expiryMs: number;
  private readonly maxPeers: number;
  private readonly maxPeersPerSource: number;
  private readonly selfId: string;

  constructor(private readonly options: DiscoveryOptions) {
    super();
    this.selfId = normalizePeerId(options.selfId);
    this.group = options.group ?? DISCOVERY_GROUP;
    this.port = options.port ?? DISCOVERY_PORT;
    this.intervalMs = options.intervalMs ?? 3000;
    this.expiryMs = options.expiryMs ?? this.intervalMs * 3 + 1000;
    this.maxPeers = positiveInteger(options.maxPeers ?? DEFAULT_LIMITS.maxNearbyPeers, 'maxPeers');
    this.maxPeersPerSource = positiveInteger(options.maxPeersPerSource ?? DEFAULT_LIMITS.maxNearbyPeersPerSource, 'maxPeersPerSource');
  }

  /** Joins the group on each interface; safe to call once. */
  async start(): Promise<void> {
    const interfaces = this.options.interfaces ?? defaultInterfaces();
    for (const address of interfaces) {
      const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
      socket.on('message', (message, remote) => this.onMessage(message, remote.address, remote.port));
      socket.on('error', (err) => this.emit('error', err));
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(this.port, () => {
          socket.off('error', reject);
          resolve();
        });
      });
      socket.addMembership(this.group, address);
      socket.setMulticastInterface(address);
      socket.setMulticastLoopback(true);
      socket.setMulticastTTL(1);
      this.sockets.push(socket);
    }
    this.timer = setInterval(() => this.tick(), Math.min(this.intervalMs, 1000));
    this.timer.unref();
    // Ask who is there, so a browser need not wait a whole interval.
    this.send({ t: 'query', id: this.selfId });
  }

  /** Starts (or updates) announcing ourselves; announces at once, and again shortly after. */
  announce(announcement: Announcement): void {
    this.announcement = announcement;
    this.sendAnnouncement();
    clearTimeout(this.repeat);
    this.repeat = setTimeout(() => this.sendAnnouncement(), 300);
    this.repeat.unref();
  }

  /** Says goodbye and stops announcing (the browser keeps running). */
  stopAnnouncing(): void {
    clearTimeout(this.repeat);
    if (!this.announcement) return;
    this.send({ t: 'bye', id: this.selfId });
    this.announcement = undefined;
  }

  /** Copies of the entries, by name. */
  list(): NearbyPeer[] {
    this.expire();
    return [...this.peers.values()].map((heard) => ({ ...heard.peer })).sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * Records that a handshake at `address` showed the certificate of `id` (see `provePeer`): the
   * entry is flagged `proved` and no stranger's announcement displaces it. Returns false if no
   * such entry is listed (it expired, or was never heard).
   */
  markProved(id: string, address: string): boolean {
    const heard = this.peers.get(`${normalizePeerId(id)}@${address}`);
    if (!heard) return false;
    if (!heard.peer.proved) {
      heard.peer.proved = true;
      this.emit('up', { ...heard.peer });
    }
    return true;
  }

  async stop(): Promise<void> {
    this.stopAnnouncing();
    clearInterval(this.timer);
    await Promise.all(this.sockets.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }

  private lastAnnounce = 0;

  private tick(): void {
    this.expire();
    if (this.announcement && Date.now() - this.lastAnnounce >= this.intervalMs) this.sendAnnouncement();
  }

  private sendAnnouncement(): void {
    if (!this.announcement) return;
    this.lastAnnounce = Date.now();
    this.send({ t: 'announce', v: PROTOCOL_V2, id: this.selfId, name: this.announcement.name, port: this.announcement.port });
  }

  private send(message: object): void {
    const bytes = Buffer.from(JSON.stringify(message));
    for (const socket of this.sockets) socket.send(bytes, this.port, this.group, () => undefined);
  }

  private onMessage(packet: Buffer, sourceHost: string, sourcePort: number): void {
    const m = parseDiscoveryPacket(packet);
    if (!m || m.id === this.selfId) return;
    if (m.t === 'query') {
      // Answer at most four times a second, however many queries arrive.
      if (this.announcement && Date.now() - this.lastQueryAnswer > 250) {
        this.lastQueryAnswer = Date.now();
        this.sendAnnouncement();
      }
      return;
    }
    const id = m.id;
    if (m.t === 'bye') {
      // Only from where the announcement came: anyone else saying goodbye for a peer is ignored.
      for (const [key, heard] of this.peers) {
        if (heard.peer.id === id && heard.sourceHost === sourceHost && heard.sourcePort === sourcePort) this.remove(key);
      }
      return;
    }
    const { port, version, name } = m;
    const address = `${sourceHost}:${port}`;
    const key = `${id}@${address}`;
    const known = this.peers.get(key);
    if (known) {
      // A proved entry listens only to the source it was heard from; an unproved one to the latest.
      if (known.peer.proved && (known.sourcePort !== sourcePort || known.sourceHost !== sourceHost)) return;
      const changed = known.peer.name !== name || known.peer.version !== version;
      known.peer = { ...known.peer, name, version, lastSeen: Date.now() };
      known.sourcePort = sourcePort;
      this.peers.delete(key);
      this.peers.set(key, known); // Map order = least recently heard first
      if (changed) this.emit('up', { ...known.peer });
      return;
    }
    if (!this.makeRoomFor(sourceHost)) return;
    const peer: NearbyPeer = { id, name, address, version, lastSeen: Date.now(), proved: false };
    this.peers.set(key, { peer, sourceHost, sourcePort });
    this.perSource.set(sourceHost, (this.perSource.get(sourceHost) ?? 0) + 1);
    this.emit('up', { ...peer });
  }

  /**
   * Frees a place for a new entry from `sourceHost`, or says there is none. A source at its own
   * bound gives up its least recently heard unproved entry. When the table is full, the source
   * with the most unproved entries gives way if it holds at least two more than the newcomer's
   * source (so equals do not churn each other out, and a flood from many addresses cannot push out
   * a peer that is alone at its address); otherwise the newcomer's own source gives up its oldest,
   * or the newcomer is not listed. Proved entries never give way.
   */
  private makeRoomFor(sourceHost: string): boolean {
    if ((this.perSource.get(sourceHost) ?? 0) >= this.maxPeersPerSource) return this.evictOldestUnproved(sourceHost);
    if (this.peers.size < this.maxPeers) return true;
    const unprovedBySource = new Map<string, number>();
    for (const { peer, sourceHost: host } of this.peers.values()) {
      if (!peer.proved) unprovedBySource.set(host, (unprovedBySource.get(host) ?? 0) + 1);
    }
    const own = unprovedBySource.get(sourceHost) ?? 0;
    let heaviest: string | undefined;
    let most = 0;
    for (const [host, count] of unprovedBySource) if (count > most) [heaviest, most] = [host, count];
    if (heaviest !== undefined && most >= own + 2) return this.evictOldestUnproved(heaviest);
    return own > 0 && this.evictOldestUnproved(sourceHost);
  }

  private evictOldestUnproved(sourceHost: string): boolean {
    for (const [key, heard] of this.peers) {
      if (heard.sourceHost === sourceHost && !heard.peer.proved) {
        this.remove(key);
        return true;
      }
    }
    return false;
  }

  private remove(key: string): void {
    const heard = this.peers.get(key);
    if (!heard) return;
    this.peers.delete(key);
    const left = (this.perSource.get(heard.sourceHost) ?? 1) - 1;
    if (left > 0) this.perSource.set(heard.sourceHost, left);
    else this.perSource.delete(heard.sourceHost);
    this.emit('down', { ...heard.peer });
  }

  private expire(): void {
    const cutoff = Date.now() - this.expiryMs;
    for (const [key, heard] of this.peers) if (heard.peer.lastSeen < cutoff) this.remove(key);
  }
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new PeerShareError('INVALID_ARGUMENT', `Discovery option ${name} must be a positive integer, got ${String(value)}.`);
  return value;
}

export type DiscoveryPacket =
  | { t: 'query'; id?: string }
  | { t: 'bye'; id: string }
  | { t: 'announce'; id: string; port: number; version: number; name: string };

/**
 * Every packet is hostile until checked: size, JSON, each field. Returns undefined for anything
 * that is not a well-formed query, goodbye or announcement; IDs come back normalised.
 */
export function parseDiscoveryPacket(packet: Buffer): DiscoveryPacket | undefined {
  if (packet.length > DEFAULT_LIMITS.maxAnnouncementBytes) return undefined;
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(packet.toString('utf8'));
  } catch {
    return undefined;
  }
  if (m === null || typeof m !== 'object' || Array.isArray(m)) return undefined;
  const id = typeof m.id === 'string' && isPeerId(m.id) ? normalizePeerId(m.id) : undefined;
  if (m.t === 'query') return { t: 'query', id };
  if (!id) return undefined;
  if (m.t === 'bye') return { t: 'bye', id };
  if (m.t !== 'announce') return undefined;
  const port = m.port;
  const version = m.v;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  if (typeof version !== 'number' || !Number.isSafeInteger(version)) return undefined;
  const name = typeof m.name === 'string' ? m.name.slice(0, 100) : '';
  return { t: 'announce', id, port, version, name };
}

function defaultInterfaces(): string[] {
  const found: string[] = [];
  for (const infos of Object.values(os.networkInterfaces())) {
    for (const info of infos ?? []) if (info.family === 'IPv4' && !info.internal) found.push(info.address);
  }
  return found;
}
