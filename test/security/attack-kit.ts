import { after, before } from 'node:test';
import { connectToPeer, type Identity, type Limits, type PeerConnection } from '../../src/core';
import { connectWithInvite, makePeer, startSharer, type Sharer, type TestPeer } from '../helpers';
import { startHostileSharerV2, type ScenarioV2 } from '../hostile';

export interface AttackKit {
  /** The peer under attack (a requester), made before the suite. */
  readonly victim: TestPeer;
  /** The identity hostile sharers answer as, made before the suite. */
  readonly hostileIdentity: Identity;
  /** Run after the suite, last first: servers, connections, and whatever a test adds. */
  readonly cleanups: (() => Promise<void> | void)[];
  /** A hostile sharer running `scenario`, and the victim's connection to it (stall limit 2 s unless given). */
  hostile(scenario: ScenarioV2, limits?: Partial<Limits>): Promise<{ conn: PeerConnection; address: string }>;
  /** A real sharer of `folders`, and a connection to it from a new peer. */
  sharerOf(folders: string[], limits?: Partial<Limits>, privatePaths?: string[]): Promise<{ sharer: Sharer; conn: PeerConnection }>;
}

/** The attack suites' common parts, registered with the calling file's before/after hooks. */
export function attackKit(): AttackKit {
  let victim: TestPeer | undefined;
  let hostileIdentity: Identity | undefined;
  const cleanups: (() => Promise<void> | void)[] = [];
  before(async () => {
    victim = await makePeer();
    hostileIdentity = (await makePeer()).identity;
  });
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });
  const kit: AttackKit = {
    get victim() {
      return victim!;
    },
    get hostileIdentity() {
      return hostileIdentity!;
    },
    cleanups,
    async hostile(scenario, limits = {}) {
      const server = await startHostileSharerV2(kit.hostileIdentity, scenario);
      cleanups.push(() => server.close());
      const conn = await connectToPeer({ identity: kit.victim.identity, trust: kit.victim.trust, addresses: [server.address], expectedPeerId: kit.hostileIdentity.peerId, name: 'victim', limits: { stallTimeoutMs: 2000, ...limits } });
      cleanups.push(() => conn.close());
      return { conn, address: server.address };
    },
    async sharerOf(folders, limits = {}, privatePaths) {
      const sharer = await startSharer(folders, { limits, ...(privatePaths ? { share: { privatePaths } } : {}) });
      cleanups.push(() => sharer.server.close());
      const { conn } = await connectWithInvite(sharer.invite);
      cleanups.push(() => conn.close());
      return { sharer, conn };
    },
  };
  return kit;
}
