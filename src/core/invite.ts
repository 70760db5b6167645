import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { formatDhtKey, parseDhtKey } from './dht-key';
import { PeerShareError } from './errors';
import { DEFAULT_LIMITS } from './limits';
import { normalizePeerId } from './peer-id';

/**
 * An invite is one line of text that also works as a link:
 *   peershare://invite?v=1&id=<peer ID>&addr=<host:port>[&addr=...][&dht=<key>]&token=<secret>&name=<display name>
 * The ID pins the sharer's certificate; the token, once, lets the holder become trusted. `dht`,
 * when the sharer has internet reach on, is its HyperDHT public key (z-base-32, or 64 hex): one
 * more place to find it, never who it is. Older clients ignore it and use the addresses.
 * Links of the form `vscode://peershare.peershare/invite?...` carry the same query and are accepted too.
 */
export interface Invite {
  peerId: string;
  addresses: string[];
  /** The sharer's HyperDHT public key, 64 lowercase hex characters (transport-dht.ts). */
  dht?: string;
  token?: string;
  name?: string;
}

export const INVITE_SCHEME = 'peershare:';

export function formatInvite(invite: Invite): string {
  const params = new URLSearchParams();
  params.set('v', '1');
  params.set('id', invite.peerId.replace(/-/g, ''));
  for (const address of invite.addresses) params.append('addr', address);
  if (invite.dht) params.set('dht', formatDhtKey(invite.dht));
  if (invite.token) params.set('token', invite.token);
  if (invite.name) params.set('name', invite.name);
  return `peershare://invite?${params.toString()}`;
}

export function looksLikeInvite(text: string): boolean {
  return /^(peershare|vscode|vscode-insiders):\/\//i.test(text.trim()) || /[?&]token=/.test(text);
}

export function parseInvite(text: string): Invite {
  const trimmed = text.trim();
  if (trimmed.length > DEFAULT_LIMITS.maxInviteChars) throw new PeerShareError('INVALID_INVITE', 'That invite is too long.');
  let url: URL;
  try {
    url = new URL(trimmed);
  } catch {
    throw new PeerShareError('INVALID_INVITE');
  }
  const id = url.searchParams.get('id');
  if (!id) throw new PeerShareError('INVALID_INVITE', 'The invite has no peer ID.');
  let peerId: string;
  try {
    peerId = normalizePeerId(id);
  } catch {
    throw new PeerShareError('INVALID_INVITE', 'The invite carries a malformed peer ID.');
  }
  // Kept as parsed, never as sent: no stray spaces or control characters travel on into the trust file.
  const addresses = url.searchParams
    .getAll('addr')
    .map(parseAddress)
    .filter((a): a is { host: string; port: number } => a !== undefined)
    .map((a) => formatAddress(a.host, a.port))
    .slice(0, 16);
  const dhtText = url.searchParams.get('dht');
  const dht = dhtText === null ? undefined : parseDhtKey(dhtText);
  if (dhtText !== null && !dht) throw new PeerShareError('INVALID_INVITE', 'The invite carries a malformed internet (DHT) key.');
  if (addresses.length === 0 && !dht) throw new PeerShareError('INVALID_INVITE', 'The invite has no usable address.');
  const token = url.searchParams.get('token') ?? undefined;
  if (token !== undefined && !/^[A-Za-z0-9_-]{16,128}$/.test(token)) {
    throw new PeerShareError('INVALID_INVITE', 'The invite carries a malformed token.');
  }
  const name = url.searchParams.get('name')?.slice(0, 100) ?? undefined;
  return dht ? { peerId, addresses, dht, token, name } : { peerId, addresses, token, name };
}

/** Parses `host:port`, `[v6]:port`; returns undefined for anything else. */
export function parseAddress(address: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(address.trim());
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: match[1] ?? match[2], port };
}

export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

interface IssuedToken {
  digest: Buffer;
  expiresAt: number;
  usesLeft: number;
}

/**
 * The sharer's outstanding invite tokens. Only a digest of each token is kept, so a memory
 * dump does not hand out invites; tokens expire by time and by use.
 */
export class TokenBook {
  private tokens: IssuedToken[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  issue(options: { ttlMs: number; uses: number }): string {
    if (!(options.ttlMs > 0) || !(options.uses >= 1)) {
      throw new PeerShareError('INVALID_ARGUMENT', 'An invite needs a positive lifetime and at least one use.');
    }
    const token = randomBytes(24).toString('base64url');
    this.prune();
    this.tokens.push({ digest: digest(token), expiresAt: this.now() + options.ttlMs, usesLeft: Math.floor(options.uses) });
    return token;
  }

  /** Consumes one use of the token; false if it is unknown, used up or expired. */
  redeem(token: unknown): boolean {
    if (typeof token !== 'string' || token.length === 0 || token.length > 256) return false;
    this.prune();
    const candidate = digest(token);
    const found = this.tokens.find((t) => timingSafeEqual(t.digest, candidate));
    if (!found) return false;
    found.usesLeft -= 1;
    this.prune();
    return true;
  }

  revokeAll(): void {
    this.tokens = [];
  }

  private prune(): void {
    const now = this.now();
    this.tokens = this.tokens.filter((t) => t.usesLeft > 0 && t.expiresAt > now);
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}
