import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DISGUISING_CHARS, PeerShareError, collisionKey, connectToPeer, download, sanitizeForDisplay, type DownloadResult, type Identity, type PeerConnection } from '../../src/core';
import { makePeer, type TestPeer } from '../helpers';
import { blockSizeFor } from '../../src/core/blocks';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { startHostileSharerV2, type HostileServer, type ReplierV2, type ScenarioV2 } from '../hostile';
import { buildWorld, type Snapshot, type World } from './world';
import { BAD_NAMES, COLLISIONS, MALFORMED_NAMES } from './hostile-name-lists';

/**
 * Issue 16, finding 10 (and the display half of 9): names that passed the check before, sent by a
 * hostile sharer to a real client over real TLS. Each bad name is tried twice: inside a folder
 * download (after one good file) and as the name of a single file the victim downloads from the
 * listing. A single file is refused with BAD_NAME; in a folder the entry is left out (reported, the
 * rest lands), and a name malformed in another spelling stops the download. Either way the disk
 * (the destination and everything beside it) shows nothing written under that name. Collision
 * pairs: the second name of a pair is left out and the first file keeps its content.
 */

const CONTENT = Buffer.from('the first file\n');
const PAYLOAD = Buffer.from('#!/bin/sh\necho owned\n');
/** An inline file record of a folder stream (protocol v2, 6.3), honestly hashed. */
async function sendFile(reply: ReplierV2, name: string, content: Buffer): Promise<void> {
  const blockSize = blockSizeFor(content.length);
  await reply.message({ type: 'file', path: name, size: content.length, mtimeMs: 1000, blockSize, fileHash: manifestOfBytes(content, blockSize).fileHash.toString('hex') });
  if (content.length) await reply.data(content);
}

const shown = (name: string): string => JSON.stringify(name.replace(/[^\x21-\x7e]/gu, (c) => `<U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}>`));

/** Every entry of `after` equals `before`, except the paths in `allowed`. */
function assertOnlyChanged(before: Snapshot, after: Snapshot, allowed: string[]): void {
  const changed = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter((p) => before[p] !== after[p] && !allowed.includes(p));
  assert.deepEqual(
    changed.map((p) => `${shown(p)}: ${before[p] ?? 'absent'} -> ${after[p] ?? 'absent'}`),
    [],
    'nothing else created, changed or removed',
  );
}

/** No entry anywhere in the world that is new or changed has `name` (or a name that folds to it) as a component. */
function assertNothingNamed(before: Snapshot, after: Snapshot, name: string): void {
  const key = collisionKey(name);
  const hits = Object.keys(after).filter((p) => before[p] !== after[p] && p.split('/').some((part) => part === name || collisionKey(part) === key));
  assert.deepEqual(hits.map(shown), [], `nothing written under ${shown(name)}`);
}

describe('hostile names from a sharer (issue 16, finding 10)', () => {
  let victim: TestPeer;
  let hostile: Identity;
  let server: HostileServer;
  /** What the hostile sharer does for the current test. */
  let scenario: ScenarioV2 = () => undefined;
  const open: PeerConnection[] = [];
  let connect: () => Promise<PeerConnection>;

  before(async () => {
    victim = await makePeer();
    hostile = (await makePeer()).identity;
    server = await startHostileSharerV2(hostile, (req, reply) => scenario(req, reply));
    connect = () =>
      connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [server.address], expectedPeerId: hostile.peerId, name: 'victim', limits: { stallTimeoutMs: 2000 } }).then((conn) => {
        open.push(conn);
        return conn;
      });
  });

  after(async () => {
    for (const conn of open) conn.close();
    await server.close();
  });

  /** Runs `action` in a fresh world; returns the error code and the snapshots around it. */
  async function attempt(
    play: ScenarioV2,
    action: (conn: PeerConnection, world: World) => Promise<unknown>,
  ): Promise<{ code: string; world: World; before: Snapshot; after: Snapshot; leftOut?: string[] }> {
    scenario = play;
    const world = await buildWorld();
    const before = await world.snapshot();
    let code = 'ok';
    let leftOut: string[] | undefined;
    try {
      leftOut = ((await action(await connect(), world)) as DownloadResult).leftOut.map((l) => l.path);
    } catch (err) {
      code = (err as { code?: string }).code ?? `uncoded: ${String(err)}`;
    }
    const after = await world.snapshot();
    assert.equal(await fs.readFile(path.join(world.outside, 'secret.txt'), 'utf8'), world.secret, 'outside/secret.txt untouched');
    return { code, world, before, after, leftOut };
  }

  /** Answers stat for `ws/d` as a folder, then plays `events` for the tree. */
  const folder = (records: (reply: ReplierV2) => Promise<Record<string, unknown>>): ScenarioV2 => (req, reply) => {
    if (req.type === 'share.stat') return { entry: { name: 'd', type: 'dir', size: 0, mtimeMs: 1000 } };
    if (req.type === 'share.tree') return records(reply);
    return undefined;
  };

  describe('in a folder download', () => {
    for (const [name, why] of BAD_NAMES) {
      for (const [where, rel] of [
        ['a folder named', `${name}/hooks/pre-commit`],
        ['a file named', `sub/${name}`],
      ] as const) {
        it(`leaves out ${where} ${why}, and the rest lands: ${shown(name)}`, async () => {
          const { code, before, after, leftOut } = await attempt(
            folder(async (reply) => {
              await sendFile(reply, 'good.txt', CONTENT);
              await sendFile(reply, rel, PAYLOAD);
              return { count: 2 };
            }),
            (conn, world) => download(conn, 'ws/d', world.ws),
          );
          assert.equal(code, 'ok');
          assert.deepEqual(leftOut, [sanitizeForDisplay(where === 'a folder named' ? name : `sub/${name}`)], 'reported as left out');
          assertOnlyChanged(before, after, ['ws/d', 'ws/d/good.txt']);
          assertNothingNamed(before, after, name);
        });
      }
    }

    for (const [name, why] of MALFORMED_NAMES) {
      it(`stops at a file named ${why}: BAD_NAME, the earlier file kept: ${shown(name)}`, async () => {
        const { code, before, after } = await attempt(
          folder(async (reply) => {
            await sendFile(reply, 'good.txt', CONTENT);
            await sendFile(reply, `sub/${name}`, PAYLOAD);
            return { count: 2 };
          }),
          (conn, world) => download(conn, 'ws/d', world.ws),
        );
        assert.equal(code, 'BAD_NAME');
        assertOnlyChanged(before, after, ['ws/d', 'ws/d/good.txt']);
        assertNothingNamed(before, after, name);
      });
    }

    it(`leaves out a folder message (dir) named with each bad name (${BAD_NAMES.length} names)`, async () => {
      for (const [name] of BAD_NAMES) {
        const { code, before, after, leftOut } = await attempt(
          folder(async (reply) => {
            await reply.message({ type: 'dir', path: name });
            return { count: 0 };
          }),
          (conn, world) => download(conn, 'ws/d', world.ws),
        );
        assert.equal(code, 'ok', shown(name));
        assert.deepEqual(leftOut, [sanitizeForDisplay(name)]);
        // The download's own folder, empty: nothing landed in it.
        assertOnlyChanged(before, after, ['ws/d']);
        assertNothingNamed(before, after, name);
      }
    });
  });

  describe('as a single file picked from the listing', () => {
    for (const [name, why] of [...BAD_NAMES, ...MALFORMED_NAMES]) {
      it(`refuses ${why}: ${shown(name)}`, async () => {
        let read = false;
        const { code, before, after } = await attempt(
          (req) => {
            if (req.type === 'share.stat') return { entry: { name, type: 'file', size: PAYLOAD.length, mtimeMs: 1000 } };
            // Its manifest or its blocks: asking for either is too late.
            if (req.type === 'share.manifest' || req.type === 'share.read') read = true;
            return new Promise(() => undefined);
          },
          (conn, world) => download(conn, `ws/${name}`, world.ws),
        );
        assert.equal(code, 'BAD_NAME');
        assert.equal(read, false, 'refused before asking for the bytes');
        assertOnlyChanged(before, after, []);
        assertNothingNamed(before, after, name);
      });
    }
  });

  describe('names that one file system would merge', () => {
    for (const [first, second, why] of COLLISIONS) {
      it(`leaves out the second of ${why}; the first keeps its content`, async () => {
        const { code, world, before, after, leftOut } = await attempt(
          folder(async (reply) => {
            await sendFile(reply, first, CONTENT);
            await sendFile(reply, second, PAYLOAD);
            return { count: 2 };
          }),
          (conn, w) => download(conn, 'ws/d', w.ws),
        );
        assert.equal(code, 'ok');
        assert.deepEqual(leftOut, [sanitizeForDisplay(second)]);
        assertOnlyChanged(before, after, ['ws/d', `ws/d/${first}`]);
        assert.deepEqual(await fs.readFile(path.join(world.ws, 'd', first)), CONTENT);
        assert.equal(after[`ws/d/${second}`], undefined, `${shown(second)} was not written`);
      });
    }
  });

  describe('what a person sees (issue 16, finding 9, display)', () => {
    it('a peer name padded with fillers to spell out someone else’s name, address and ID is shown with every filler escaped', async () => {
      const forged = `Alice${'\u2800'.repeat(30)}(192.168.1.20, FLRK-XVPC-ERBT-7AQP)${'\u3164'.repeat(20)}\u115f\u00ad`;
      const named = await startHostileSharerV2(hostile, () => undefined, { welcomeName: forged });
      try {
        const conn = await connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [named.address], expectedPeerId: hostile.peerId, name: 'victim' });
        open.push(conn);
        assert.doesNotMatch(conn.peerName, DISGUISING_CHARS);
        assert.equal(conn.peerName.split('\\u2800').length - 1, 30, 'every U+2800 shown as an escape');
        assert.equal(conn.peerName.split('\\u3164').length - 1, 20, 'every U+3164 shown as an escape');
        assert.ok(conn.peerName.endsWith('\\u115f\\u00ad'));
      } finally {
        await named.close();
      }
    });

    it('share roots out of the spec\'s bounds (not strings, over 256, over 255 chars) end the connection PROTOCOL_ERROR; roots in bounds arrive as sent', async () => {
      for (const roots of [[42], Array.from({ length: 257 }, (_, i) => `r${i}`), ['x'.repeat(256)], 'ws']) {
        const lying = await startHostileSharerV2(hostile, () => undefined, { roots: roots as string[] });
        try {
          await assert.rejects(
            connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [lying.address], expectedPeerId: hostile.peerId, name: 'victim' }),
            (err: unknown) => err instanceof PeerShareError && err.code === 'PROTOCOL_ERROR',
            JSON.stringify(roots).slice(0, 60),
          );
        } finally {
          await lying.close();
        }
      }
      const honest = await startHostileSharerV2(hostile, () => undefined, { roots: ['ws', 'x'.repeat(255), 'a\u202eb'] });
      try {
        const conn = await connectToPeer({ identity: victim.identity, trust: victim.trust, addresses: [honest.address], expectedPeerId: hostile.peerId, name: 'victim' });
        open.push(conn);
        assert.deepEqual(conn.welcome.roots, ['ws', 'x'.repeat(255), 'a\u202eb'], 'raw, as names are: escaped where they are shown');
      } finally {
        await honest.close();
      }
    });
  });
});
