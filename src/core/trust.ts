import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { PeerShareError } from './errors';
import { normalizePeerId } from './peer-id';

export interface TrustedPeer {
  id: string;
  name: string;
  /** Last known addresses (`host:port`) of the peer's server, if it shares. */
  addresses: string[];
  addedAt: string;
}

export const TRUST_FILE = 'trusted-peers.json';

/**
 * The peers this installation trusts, kept in `<home>/trusted-peers.json`. A peer is trusted
 * by the fingerprint of its certificate (its ID) and nothing else: names and addresses are hints.
 */
export class TrustStore {
  private peers = new Map<string, TrustedPeer>();
  private writing: Promise<void> = Promise.resolve();

  private constructor(private readonly file: string) {}

  static async open(home: string): Promise<TrustStore> {
    const store = new TrustStore(path.join(home, TRUST_FILE));
    await store.reload();
    return store;
  }

  async reload(): Promise<void> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new PeerShareError('IO_ERROR', `Cannot read ${this.file}.`, { detail: String(err), cause: err });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new PeerShareError('IO_ERROR', `${this.file} is not valid JSON; fix or remove it.`, { cause: err });
    }
    const list = (parsed as { peers?: unknown }).peers;
    const next = new Map<string, TrustedPeer>();
    if (Array.isArray(list)) {
      for (const item of list) {
        const p = item as Partial<TrustedPeer>;
        if (typeof p.id !== 'string') continue;
        let id: string;
        try {
          id = normalizePeerId(p.id);
        } catch {
          continue;
        }
        next.set(id, {
          id,
          name: typeof p.name === 'string' ? p.name : '',
          addresses: Array.isArray(p.addresses) ? p.addresses.filter((a): a is string => typeof a === 'string') : [],
          addedAt: typeof p.addedAt === 'string' ? p.addedAt : new Date(0).toISOString(),
        });
      }
    }
    this.peers = next;
  }

  list(): TrustedPeer[] {
    return [...this.peers.values()];
  }

  get(id: string): TrustedPeer | undefined {
    return this.peers.get(id);
  }

  isTrusted(id: string): boolean {
    return this.peers.has(id);
  }

  /** Finds a peer by full ID, by an ID prefix of at least 8 characters, or by exact name. */
  find(query: string): TrustedPeer | undefined {
    const compact = query.toUpperCase().replace(/[\s-]/g, '');
    if (compact.length >= 8 && /^[A-Z2-7]+$/.test(compact)) {
      const matches = this.list().filter((p) => p.id.replace(/-/g, '').startsWith(compact));
      if (matches.length === 1) return matches[0];
    }
    const byName = this.list().filter((p) => p.name === query);
    return byName.length === 1 ? byName[0] : undefined;
  }

  async add(peer: { id: string; name?: string; addresses?: string[] }): Promise<TrustedPeer> {
    const id = normalizePeerId(peer.id);
    const existing = this.peers.get(id);
    const entry: TrustedPeer = {
      id,
      name: peer.name ?? existing?.name ?? '',
      addresses: peer.addresses ?? existing?.addresses ?? [],
      addedAt: existing?.addedAt ?? new Date().toISOString(),
    };
    this.peers.set(id, entry);
    await this.save();
    return entry;
  }

  async remove(id: string): Promise<boolean> {
    const removed = this.peers.delete(normalizePeerId(id));
    if (removed) await this.save();
    return removed;
  }

  /** Writes atomically and one write at a time, so a crash never leaves half a file. */
  private save(): Promise<void> {
    const snapshot = JSON.stringify({ version: 1, peers: this.list() }, null, 2) + '\n';
    this.writing = this.writing
      .catch(() => undefined)
      .then(async () => {
        await fs.mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
        const tmp = `${this.file}.${process.pid}.tmp`;
        await fs.writeFile(tmp, snapshot, { mode: 0o600 });
        await fs.rename(tmp, this.file);
      });
    return this.writing;
  }
}
