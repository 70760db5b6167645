import { createCipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  PeerServer,
  Share,
  TrustStore,
  connectToPeer,
  loadOrCreateIdentity,
  parseInvite,
  resolveLimits,
  TRUST_FILE,
  type Identity,
  type KnownPeerOptions,
  type Limits,
  type PeerConnection,
  type ShareOptions,
} from '../src/core';

/** A port nothing listens on right now (bound, read, released). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const made: string[] = [];

/** A fresh folder under the OS temp dir, removed when the test process exits. */
export function tempDir(prefix = 'peershare-test-'): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(dir);
  return dir;
}

process.on('exit', () => {
  for (const dir of made) {
    try {
      require('node:fs').rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
});

export async function writeRandomFile(file: string, size: number): Promise<Buffer> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const data = randomBytes(size);
  await fs.writeFile(file, data);
  return data;
}

export interface TestPeer {
  identity: Identity;
  trust: TrustStore;
  home: string;
}

export async function makePeer(): Promise<TestPeer> {
  const home = tempDir('peershare-home-');
  const identity = await loadOrCreateIdentity(home);
  return { identity, trust: await TrustStore.open(home), home };
}

export interface Sharer extends TestPeer {
  server: PeerServer;
  share: Share;
  invite: string;
  address: string;
}

/** A real peer server on loopback sharing `folders`. */
export async function startSharer(
  folders: string[],
  options: { limits?: Partial<Limits>; share?: Partial<ShareOptions>; inviteUses?: number; inviteTtlMs?: number } = {},
): Promise<Sharer> {
  const peer = await makePeer();
  const limits = resolveLimits(options.limits);
  const share = await Share.create({ folders, privatePaths: [peer.home], ...options.share }, limits);
  const server = new PeerServer({ ...peer, share, name: 'sharer', limits });
  await server.listen(0, '127.0.0.1');
  const invite = server.createInvite({ uses: options.inviteUses ?? 100, ttlMs: options.inviteTtlMs ?? 60_000 });
  return { ...peer, server, share, invite, address: `127.0.0.1:${server.port}` };
}

/** A client peer that pairs with `sharer` using its invite. */
export async function connectWithInvite(invite: string, client?: TestPeer, limits?: Partial<Limits>): Promise<{ conn: PeerConnection; client: TestPeer }> {
  const peer = client ?? (await makePeer());
  const parsed = parseInvite(invite);
  const conn = await connectToPeer({
    identity: peer.identity,
    trust: peer.trust,
    addresses: parsed.addresses,
    expectedPeerId: parsed.peerId,
    token: parsed.token,
    name: 'client',
    limits,
  });
  return { conn, client: peer };
}

/** Every file below `dir`, relative, sorted: to assert that nothing else appeared. */
export async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(sub: string): Promise<void> {
    for (const entry of await fs.readdir(path.join(dir, sub), { withFileTypes: true })) {
      const rel = sub ? `${sub}/${entry.name}` : entry.name;
      out.push(entry.isDirectory() ? `${rel}/` : rel);
      if (entry.isDirectory()) await walk(rel);
    }
  }
  await walk('');
  return out.sort();
}

export async function rejectsWithCode(promise: Promise<unknown>, code: string): Promise<void> {
  try {
    await promise;
  } catch (err) {
    const actual = (err as { code?: string }).code;
    if (actual !== code) throw new Error(`Expected error code ${code}, got ${actual}: ${(err as Error).message}`);
    return;
  }
  throw new Error(`Expected error code ${code}, but it succeeded`);
}

/** Options to reach a trusted peer by ID (connectToKnownPeer) as `client`. */
export function options(client: TestPeer, peerId: string, extra: Partial<KnownPeerOptions> & { limits?: Partial<Limits> }): KnownPeerOptions {
  return { identity: client.identity, trust: client.trust, name: 'client', peerId, ...extra };
}

/** The trust file as it is on disk: the oracle of what a peer remembers. */
export async function trustFile(peer: TestPeer): Promise<string> {
  return fs.readFile(path.join(peer.home, TRUST_FILE), 'utf8');
}

/** The addresses the trust file remembers for `id`, most recent first. */
export async function rememberedAddresses(peer: TestPeer, id: string): Promise<string[]> {
  const parsed = JSON.parse(await trustFile(peer)) as { peers: { id: string; addresses: string[] }[] };
  return parsed.peers.find((p) => p.id === id)!.addresses;
}

/**
 * Bytes that look random but are the same on every run (AES-128-CTR of zeros, keyed by `seed`):
 * where content-defined chunk boundaries fall depends on the content, so costs asserted on them must not vary.
 */
export function seededBytes(size: number, seed: number): Buffer {
  const key = Buffer.alloc(16);
  key.writeUInt32LE(seed);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

/**
 * Polls `check` every 25 ms until it holds; throws "Timed out waiting for <what>" after
 * `deadlineMs`. For expectations on a shared 2-core machine: generous, never a timing assert.
 */
export async function until(what: string, check: () => boolean | Promise<boolean>, deadlineMs = 30_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
