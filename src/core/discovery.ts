import * as dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import * as os from 'node:os';
import { isPeerId, normalizePeerId } from './peer-id';
import { PROTOCOL_VERSION } from './protocol';

/**
 * Nearby peers over plain UDP multicast: a sharer announces its name, peer ID, port and protocol
 * version every few seconds and says goodbye when it stops; a browser keeps a bounded table of
 * what it heard. An announcement is only a hint: the address is taken from the packet's source,
 * never from its content, and the TLS fingerprint still decides who a peer is when connecting.
 *
 * Why not mDNS/DNS-SD: we need one record type on one private group, and a 60-line JSON message
 * is easier to bound and to check than a DNS parser; no dependency is needed.
 */
export const DISCOVERY_GROUP = '239.255.70.83';
export const DISCOVERY_PORT = 47475;
const MAX_PACKET_BYTES = 1024;

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
  /** Most peers remembered; the least recently heard is dropped first (default 256). */
  maxPeers?: number;
}

export interface NearbyPeer {
  id: string;
  name: string;
  /** `host:port` from the packet's source address and the announced port. */
  address: string;
  version: number;
  lastSeen: number;
}

interface Announcement {
  name: string;
  port: number;
}

export class Discovery extends EventEmitter {
  private readonly sockets: dgram.Socket[] = [];
  private readonly peers = new Map<string, NearbyPeer>();
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
  private readonly selfId: string;

  constructor(private readonly options: DiscoveryOptions) {
    super();
    this.selfId = normalizePeerId(options.selfId);
    this.group = options.group ?? DISCOVERY_GROUP;
    this.port = options.port ?? DISCOVERY_PORT;
    this.intervalMs = options.intervalMs ?? 3000;
    this.expiryMs = options.expiryMs ?? this.intervalMs * 3 + 1000;
    this.maxPeers = options.maxPeers ?? 256;
  }

  /** Joins the group on each interface; safe to call once. */
  async start(): Promise<void> {
    const interfaces = this.options.interfaces ?? defaultInterfaces();
    for (const address of interfaces) {
      const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
      socket.on('message', (message, remote) => this.onMessage(message, remote.address));
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

  list(): NearbyPeer[] {
    this.expire();
    return [...this.peers.values()].sort((a, b) => a.name.localeCompare(b.name));
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
    this.send({ t: 'announce', v: PROTOCOL_VERSION, id: this.selfId, name: this.announcement.name, port: this.announcement.port });
  }

  private send(message: object): void {
    const bytes = Buffer.from(JSON.stringify(message));
    for (const socket of this.sockets) socket.send(bytes, this.port, this.group, () => undefined);
  }

  private onMessage(packet: Buffer, source: string): void {
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
      for (const [key, peer] of this.peers) {
        if (peer.id === id && peer.address.startsWith(`${source}:`)) {
          this.peers.delete(key);
          this.emit('down', peer);
        }
      }
      return;
    }
    const { port, version, name } = m;
    const address = `${source}:${port}`;
    const key = `${id}@${address}`;
    const known = this.peers.get(key);
    const peer: NearbyPeer = { id, name, address, version, lastSeen: Date.now() };
    this.peers.delete(key);
    this.peers.set(key, peer); // Map order = least recently heard first
    if (this.peers.size > this.maxPeers) {
      const oldest = this.peers.keys().next().value as string;
      const dropped = this.peers.get(oldest)!;
      this.peers.delete(oldest);
      this.emit('down', dropped);
    }
    if (!known || known.name !== name) this.emit('up', peer);
  }

  private expire(): void {
    const cutoff = Date.now() - this.expiryMs;
    for (const [key, peer] of this.peers) {
      if (peer.lastSeen < cutoff) {
        this.peers.delete(key);
        this.emit('down', peer);
      }
    }
  }
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
  if (packet.length > MAX_PACKET_BYTES) return undefined;
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
