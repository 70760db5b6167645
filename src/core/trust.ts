import { randomBytes } from 'node:crypto';
import { promises as fs, lstatSync, readFileSync, type BigIntStats } from 'node:fs';
import * as path from 'node:path';
import { parseDhtKey } from './dht-key';
import { PeerShareError } from './errors';
import { checkGuardedFile } from './identity';
import { normalizePeerId } from './peer-id';

/**
 * A peer this installation knows, by the fingerprint of its certificate (its ID). Trust has a
 * direction, and the two are kept apart on purpose: using someone's invite, or being allowed in
 * by them, lets *us* read *them*; it never lets them read us. Only our own invite (redeemed) or
 * our own "Always Allow" lets a peer read our share.
 */
export interface TrustedPeer {
  id: string;
  name: string;
  /** Last known addresses (`host:port`) of the peer's server, if it shares. */
  addresses: string[];
  addedAt: string;
  /** They may read our share: they redeemed our invite, or we answered Always Allow. */
  mayReadUs: boolean;
  /** We may read theirs: we used their invite, or they allowed us always. They still decide. */
  weRead: boolean;
  /** Its HyperDHT public key (64 hex), from its invite: where to find it on the internet, never who it is. */
  dht?: string;
  /** How we last reached it: on the LAN (`direct`) or through the DHT. */
  reachedVia?: 'direct' | 'dht';
}

export const TRUST_FILE = 'trusted-peers.json';

/** A lock whose process cannot be asked about is stale after this long. */
const STALE_LOCK_MS = 10_000;
/** A lock whose process still runs is waited for, unless it is older than this (its pid was reused). */
const LIVE_LOCK_MAX_MS = 5 * 60_000;
const LOCK_WAIT_MS = 5_000;
const LOCK_RETRY_MS = 15;
/** A file changed this recently is re-read at every question (see refresh). */
const RACY_MS = 2_000;

/**
 * The peers this installation trusts, kept in `<home>/trusted-peers.json`.
 *
 * Several processes may share one home (a running `serve`, a `trust rm` in another terminal, the
 * editor). So the file, not memory, is the truth: every question re-reads it if it changed on
 * disk (one `stat` when it did not), and every change is a read-modify-write under a lock file,
 * never a write of a stale copy. A revoke therefore takes effect in a running server at its next
 * check, and no pairing elsewhere writes a revoked peer back.
 */
export class TrustStore {
  private peers = new Map<string, TrustedPeer>();
  /** What the file looked like when last read: inode, size, times. */
  private seen = '';
  private changing: Promise<unknown> = Promise.resolve();

  private constructor(private readonly file: string) {}

  static async open(home: string): Promise<TrustStore> {
    const store = new TrustStore(path.join(home, TRUST_FILE));
    store.refresh();
    return store;
  }

  /** Re-reads the file (kept for callers that want to be explicit; every query does this too). */
  async reload(): Promise<void> {
    this.refresh();
  }

  list(): TrustedPeer[] {
    this.refresh();
    return [...this.peers.values()].map(copy);
  }

  get(id: string): TrustedPeer | undefined {
    this.refresh();
    const peer = this.peers.get(id);
    return peer && copy(peer);
  }

  /** May this peer read our share? Checked against the file as it is now. */
  allowsReader(id: string): boolean {
    this.refresh();
    return this.peers.get(id)?.mayReadUs === true;
  }

  /** Do we read this peer's share (so its certificate alone is enough to connect to it)? */
  readsFrom(id: string): boolean {
    this.refresh();
    return this.peers.get(id)?.weRead === true;
  }

  /** Is this peer known in either direction? */
  knows(id: string): boolean {
    this.refresh();
    return this.peers.has(id);
  }

  /** Finds a peer by full ID, by an ID prefix of at least 8 characters, or by exact name. */
  find(query: string): TrustedPeer | undefined {
    const peers = this.list();
    const compact = query.toUpperCase().replace(/[\s-]/g, '');
    if (compact.length >= 8 && /^[A-Z2-7]+$/.test(compact)) {
      const matches = peers.filter((p) => p.id.replace(/-/g, '').startsWith(compact));
      if (matches.length === 1) return matches[0];
    }
    const byName = peers.filter((p) => p.name === query);
    return byName.length === 1 ? byName[0] : undefined;
  }

  /** Lets a peer read our share (our invite was redeemed, or we said Always Allow). */
  addReader(peer: { id: string; name?: string }): Promise<TrustedPeer> {
    return this.upsert(peer.id, (existing, id) => ({
      ...(existing ?? fresh(id)),
      name: peer.name ?? existing?.name ?? '',
      mayReadUs: true,
    }));
  }

  /** Remembers a peer whose share we read (we used its invite, or it let us in for good). */
  addSharer(peer: { id: string; name?: string; addresses?: string[]; dht?: string; reachedVia?: 'direct' | 'dht' }): Promise<TrustedPeer> {
    return this.upsert(peer.id, (existing, id) => {
      const dht = peer.dht ?? existing?.dht;
      const reachedVia = peer.reachedVia ?? existing?.reachedVia;
      return {
        ...(existing ?? fresh(id)),
        name: peer.name ?? existing?.name ?? '',
        addresses: peer.addresses ?? existing?.addresses ?? [],
        weRead: true,
        ...(dht ? { dht } : {}),
        ...(reachedVia ? { reachedVia } : {}),
      };
    });
  }

  /** Updates what we call a known peer, or where it was last reached; never what it may do. */
  async update(id: string, change: { name?: string; addresses?: string[] }): Promise<TrustedPeer | undefined> {
    let result: TrustedPeer | undefined;
    await this.mutate((peers) => {
      const existing = peers.get(normalizePeerId(id));
      if (!existing) return false;
      if (change.name !== undefined) existing.name = change.name;
      if (change.addresses !== undefined) existing.addresses = change.addresses;
      result = copy(existing);
      return true;
    });
    return result;
  }

  /** Forgets a peer in both directions. */
  async remove(id: string): Promise<boolean> {
    let removed = false;
    await this.mutate((peers) => (removed = peers.delete(normalizePeerId(id))));
    return removed;
  }

  private async upsert(rawId: string, make: (existing: TrustedPeer | undefined, id: string) => TrustedPeer): Promise<TrustedPeer> {
    const id = normalizePeerId(rawId);
    let entry!: TrustedPeer;
    await this.mutate((peers) => {
      entry = make(peers.get(id), id);
      peers.set(id, entry);
      return true;
    });
    return copy(entry);
  }

  /**
   * Read-modify-write under the lock: the change is applied to the file as it is now, so what
   * another process wrote (a revoke, a pairing) survives. `change` returns false when there is
   * nothing to write.
   */
  private mutate(change: (peers: Map<string, TrustedPeer>) => boolean): Promise<void> {
    const run = this.changing.catch(() => undefined).then(async () => {
      await fs.mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
      const release = await acquireLock(`${this.file}.lock`);
      try {
        this.seen = '';
        this.refresh();
        const next = new Map([...this.peers].map(([id, p]) => [id, copy(p)]));
        if (!change(next)) return;
        const text = JSON.stringify({ version: 2, peers: [...next.values()] }, null, 2) + '\n';
        const tmp = `${this.file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
        await fs.writeFile(tmp, text, { mode: 0o600, flag: 'wx' });
        await fs.rename(tmp, this.file).catch(async (err) => {
          await fs.rm(tmp, { force: true });
          throw err;
        });
        this.peers = next;
        this.seen = '';
        this.refresh();
      } finally {
        await release();
      }
    });
    this.changing = run;
    return run;
  }

  /**
   * Re-reads the file if it is not the one last read. A broken file trusts nobody. Like git's
   * "racy" index check, a file changed within the last RACY_MS is always re-read: a file system's
   * clock ticks coarsely, and a reused inode of the same size could otherwise pass for the old one.
   */
  private refresh(): void {
    let stamp: string;
    let st: BigIntStats | undefined;
    try {
      st = lstatSync(this.file, { bigint: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new PeerShareError('IO_ERROR', `Cannot read ${this.file}.`, { detail: String(err), cause: err });
      st = undefined;
    }
    if (st) {
      // Checked at every change, like the home at start: a file someone else could have written trusts nobody.
      if (process.platform !== 'win32') {
        try {
          checkGuardedFile(this.file, st);
        } catch (err) {
          this.peers = new Map();
          this.seen = '';
          throw err;
        }
      }
      const recent = Date.now() - Number(st.mtimeMs) < RACY_MS;
      stamp = recent ? 'recent' : `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    } else {
      stamp = 'absent';
    }
    if (stamp === this.seen && stamp !== 'recent') return;
    if (stamp === 'absent') {
      this.peers = new Map();
      this.seen = stamp;
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(this.file, 'utf8'));
    } catch (err) {
      this.peers = new Map();
      this.seen = '';
      throw new PeerShareError('IO_ERROR', `${this.file} is not valid JSON; fix or remove it.`, { detail: String(err), cause: err });
    }
    this.peers = parsePeers(parsed);
    this.seen = stamp;
  }
}

function fresh(id: string): TrustedPeer {
  return { id, name: '', addresses: [], addedAt: new Date().toISOString(), mayReadUs: false, weRead: false };
}

function copy(peer: TrustedPeer): TrustedPeer {
  return { ...peer, addresses: [...peer.addresses] };
}

function parsePeers(parsed: unknown): Map<string, TrustedPeer> {
  const list = (parsed as { peers?: unknown } | null)?.peers;
  const legacy = (parsed as { version?: unknown } | null)?.version !== 2;
  const next = new Map<string, TrustedPeer>();
  if (!Array.isArray(list)) return next;
  for (const item of list) {
    const p = item as Partial<TrustedPeer> | null;
    if (!p || typeof p.id !== 'string') continue;
    let id: string;
    try {
      id = normalizePeerId(p.id);
    } catch {
      continue;
    }
    const addresses = Array.isArray(p.addresses) ? p.addresses.filter((a): a is string => typeof a === 'string').slice(0, 16) : [];
    // Version 1 files had one list for both directions. A sharer added its readers with no
    // address; a client added the sharers it read with the address it reached. Keep exactly
    // that direction: an entry never gains the other one by the upgrade.
    const mayReadUs = legacy ? addresses.length === 0 : p.mayReadUs === true;
    const weRead = legacy ? addresses.length > 0 : p.weRead === true;
    const dht = parseDhtKey(p.dht);
    const reachedVia = p.reachedVia === 'direct' || p.reachedVia === 'dht' ? p.reachedVia : undefined;
    next.set(id, {
      id,
      name: typeof p.name === 'string' ? p.name.slice(0, 200) : '',
      addresses,
      addedAt: typeof p.addedAt === 'string' ? p.addedAt : new Date(0).toISOString(),
      mayReadUs,
      weRead,
      ...(dht ? { dht } : {}),
      ...(reachedVia ? { reachedVia } : {}),
    });
  }
  return next;
}

/**
 * An exclusive lock file holding its owner's pid. A lock is stale when that process is gone (or,
 * against a reused pid, when it is older than STALE_LOCK_MS and its process cannot be asked).
 * Taking over a stale lock is itself serialized by a second, short-lived "breaker" file, and the
 * lock is removed only if it is still the same stale file: two processes that both saw it stale
 * never remove the fresh lock the other has just taken.
 */
async function acquireLock(lockFile: string): Promise<() => Promise<void>> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  const token = `${process.pid} ${randomBytes(8).toString('hex')}\n`;
  for (;;) {
    try {
      await fs.writeFile(lockFile, token, { flag: 'wx', mode: 0o600 });
      return async () => {
        // Only our own lock is removed, never one another process took over meanwhile.
        const now = await fs.readFile(lockFile, 'utf8').catch(() => '');
        if (now === token) await fs.rm(lockFile, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new PeerShareError('IO_ERROR', `Cannot lock ${lockFile}.`, { detail: String(err), cause: err });
      }
    }
    const stale = await staleLock(lockFile);
    if (stale) await breakStaleLock(lockFile, stale, token);
    else if (Date.now() > deadline) {
      throw new PeerShareError('IO_ERROR', `The trusted-peers file is locked by another PeerShare process (${lockFile}); try again.`);
    } else await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS));
  }
}

/** The lock's inode if it is stale (its process is gone, or it is too old to be alive), else undefined. */
async function staleLock(lockFile: string): Promise<bigint | undefined> {
  const st = await fs.stat(lockFile, { bigint: true }).catch(() => undefined);
  if (!st) return undefined;
  const pid = Number((await fs.readFile(lockFile, 'utf8').catch(() => '')).split(' ')[0]);
  const age = Date.now() - Number(st.mtimeMs);
  if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid) {
    try {
      process.kill(pid, 0);
      return age > LIVE_LOCK_MAX_MS ? st.ino : undefined; // alive: wait (unless the pid was surely reused)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ESRCH') return st.ino; // that process is gone
    }
  }
  return age > STALE_LOCK_MS ? st.ino : undefined;
}

/** Removes the stale lock `ino`, if it is still the lock, holding the breaker while it looks. */
async function breakStaleLock(lockFile: string, ino: bigint, token: string): Promise<void> {
  const breaker = `${lockFile}.break`;
  try {
    await fs.writeFile(breaker, token, { flag: 'wx', mode: 0o600 });
  } catch {
    // Someone else is breaking it; a breaker left by a crash goes after STALE_LOCK_MS.
    const st = await fs.stat(breaker).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > STALE_LOCK_MS) await fs.rm(breaker, { force: true });
    await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS));
    return;
  }
  try {
    const now = await fs.stat(lockFile, { bigint: true }).catch(() => undefined);
    if (now?.ino === ino) await fs.rm(lockFile, { force: true });
  } finally {
    await fs.rm(breaker, { force: true });
  }
}
