import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectToPeer, download, type Identity } from '../../src/core';
import { blockSizeFor, encodeBlockManifest } from '../../src/core/blocks';
import { ConnectionFrameType, encodeMessageFrame } from '../../src/core/v2/frames';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { listTree, makePeer, rejectsWithCode, tempDir, type TestPeer } from '../helpers';
import { startHostileSharerV2, waitFor, type ReplierV2, type ScenarioV2 } from '../hostile';

const CONTENT = Buffer.from('the real content\n');
const MANIFEST = manifestOfBytes(CONTENT, blockSizeFor(CONTENT.length));

/** An honest manifest answer (spec 6.2) for `content`, or for what `manifest` says. */
async function sendManifest(reply: ReplierV2, content: Buffer, manifest = manifestOfBytes(content, blockSizeFor(content.length))): Promise<Record<string, unknown>> {
  await reply.message({ type: 'manifest', size: manifest.size, mtimeMs: 1000, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') });
  await reply.data(encodeBlockManifest(manifest));
  return {};
}

/** Answers stat and manifest for `ws/f.txt` honestly, then lets `onRead` misbehave. */
function fileScenario(onRead: (req: Record<string, unknown>, reply: ReplierV2) => Promise<Record<string, unknown> | void> | Record<string, unknown> | void): ScenarioV2 {
  return (req, reply) => {
    if (req.type === 'share.stat') return { entry: { name: 'f.txt', type: 'file', size: CONTENT.length, mtimeMs: 1000 } };
    if (req.type === 'share.manifest') return sendManifest(reply, CONTENT);
    if (req.type === 'share.read') return onRead(req, reply);
    return undefined;
  };
}

/** Answers stat for `ws/d` as a folder, then sends `records` for the tree (spec 6.3). */
function treeScenario(records: (reply: ReplierV2) => Promise<Record<string, unknown>>): ScenarioV2 {
  return (req, reply) => {
    if (req.type === 'share.stat') return { entry: { name: 'd', type: 'dir', size: 0, mtimeMs: 1000 } };
    if (req.type === 'share.tree') return records(reply);
    return undefined;
  };
}

/** An inline file record of a folder stream, with `content`'s hash unless another is given. */
async function sendFile(reply: ReplierV2, name: string, content: Buffer, fileHash = manifestOfBytes(content, blockSizeFor(content.length)).fileHash.toString('hex')): Promise<void> {
  await reply.message({ type: 'file', path: name, size: content.length, mtimeMs: 1000, blockSize: blockSizeFor(content.length), fileHash });
  if (content.length) await reply.data(content);
}

describe('a peer that lies is caught, and nothing lands under a final name', () => {
  let hostileIdentity: Identity;
  let client: TestPeer;

  before(async () => {
    hostileIdentity = (await makePeer()).identity;
    client = await makePeer();
  });

  async function run(
    scenario: ScenarioV2,
    remotePath: string,
    options: { welcomeId?: string; limits?: object; prepare?: (dest: string, base: string) => Promise<void> } = {},
  ) {
    const server = await startHostileSharerV2(hostileIdentity, scenario, options);
    const base = tempDir();
    const dest = path.join(base, 'dest');
    await fs.mkdir(dest);
    await fs.writeFile(path.join(base, 'outside.txt'), 'untouched');
    await options.prepare?.(dest, base);
    try {
      const conn = await connectToPeer({ identity: client.identity, trust: client.trust, addresses: [server.address], expectedPeerId: hostileIdentity.peerId, name: 'victim', limits: { stallTimeoutMs: 1000, ...options.limits } });
      try {
        return { result: download(conn, remotePath, dest), dest, base };
      } finally {
        // closed by the caller's await below
        setTimeout(() => conn.close(), 5000).unref();
      }
    } finally {
      setTimeout(() => void server.close(), 5000).unref();
    }
  }

  async function expectRefused(scenario: ScenarioV2, remotePath: string, code: string, expectedTree: string[] = []): Promise<void> {
    const { result, dest, base } = await run(scenario, remotePath);
    await rejectsWithCode(result, code);
    assert.deepEqual(await listTree(dest), expectedTree, 'what exists in the destination');
    assert.deepEqual(await listTree(base), ['dest/', ...expectedTree.map((p) => `dest/${p}`), 'outside.txt'].sort(), 'nothing appears outside it');
    assert.equal(await fs.readFile(path.join(base, 'outside.txt'), 'utf8'), 'untouched');
  }

  /** The download completes without the entries whose names may not be written here, and says so. */
  async function expectLeftOut(scenario: ScenarioV2, remotePath: string, leftOut: string[], expectedTree: string[]): Promise<void> {
    const { result, dest, base } = await run(scenario, remotePath);
    assert.deepEqual((await result).leftOut.map((l) => l.path), leftOut, 'reported as left out');
    assert.deepEqual(await listTree(dest), expectedTree, 'what exists in the destination');
    assert.deepEqual(await listTree(base), ['dest/', ...expectedTree.map((p) => `dest/${p}`), 'outside.txt'].sort(), 'nothing appears outside it');
    assert.equal(await fs.readFile(path.join(base, 'outside.txt'), 'utf8'), 'untouched');
  }

  it('accepts an honest answer (the scenario itself works)', async () => {
    const { result, dest } = await run(fileScenario(async (_req, reply) => void (await reply.data(CONTENT))), 'ws/f.txt');
    await result;
    assert.deepEqual(await fs.readFile(path.join(dest, 'f.txt')), CONTENT);
  });

  it('a block list that does not hash to its file hash: PROTOCOL_ERROR, nothing fetched', () =>
    expectRefused(
      (req, reply) => {
        if (req.type === 'share.stat') return { entry: { name: 'f.txt', type: 'file', size: CONTENT.length, mtimeMs: 1000 } };
        if (req.type === 'share.manifest') return sendManifest(reply, CONTENT, { ...MANIFEST, fileHash: Buffer.alloc(32, 0xab) });
        throw new Error('no block may be asked for');
      },
      'ws/f.txt',
      'PROTOCOL_ERROR',
    ));

  it('different bytes than the block list says: HASH_MISMATCH (asked again with rehash, the same list: this peer lies)', () =>
    expectRefused(fileScenario(async (_req, reply) => void (await reply.data(Buffer.from('the fake content\n')))), 'ws/f.txt', 'HASH_MISMATCH'));

  it('more bytes than the blocks asked for: PROTOCOL_ERROR', () =>
    expectRefused(
      fileScenario(async (_req, reply) => {
        await reply.data(Buffer.concat([CONTENT, Buffer.from('extra')]));
      }),
      'ws/f.txt',
      'PROTOCOL_ERROR',
    ));

  it('an endless stream: refused at the first byte too many', () =>
    expectRefused(
      fileScenario(async (_req, reply) => {
        await reply.data(CONTENT);
        const chunk = Buffer.alloc(64 * 1024, 7);
        for (;;) await reply.data(chunk);
      }),
      'ws/f.txt',
      'PROTOCOL_ERROR',
    ));

  it('fewer bytes than the blocks asked for: refused, nothing lands', () =>
    expectRefused(
      fileScenario(async (_req, reply) => {
        await reply.data(CONTENT.subarray(0, 3));
      }),
      'ws/f.txt',
      'SIZE_MISMATCH',
    ));

  it('a manifest of another version than the one asked for (expect): PROTOCOL_ERROR, no block is asked for', () =>
    expectRefused(
      (req, reply) => {
        if (req.type === 'share.stat') return { entry: { name: 'f.txt', type: 'file', size: CONTENT.length, mtimeMs: 1000 } };
        if (req.type === 'share.manifest') return sendManifest(reply, Buffer.concat([CONTENT, CONTENT]));
        throw new Error('no block may be asked for');
      },
      'ws/f.txt',
      'PROTOCOL_ERROR',
    ));

  it('a frame over the size limit: TOO_LARGE', () =>
    expectRefused(
      fileScenario((req, reply) => {
        // A REPLY frame header announcing 2 GiB on the read's id.
        reply.raw(Buffer.concat([Buffer.from([ConnectionFrameType.REPLY]), Buffer.from([0x7f, 0xff, 0xff, 0xff]), Buffer.from([0, 0, 0, 1])]));
        void req;
        return new Promise(() => undefined);
      }),
      'ws/f.txt',
      'TOO_LARGE',
    ));

  it('garbage instead of frames: PROTOCOL_ERROR', () =>
    expectRefused(
      fileScenario((_req, reply) => {
        reply.raw(Buffer.from('HTTP/1.1 200 OK\r\n\r\n'));
        return new Promise(() => undefined);
      }),
      'ws/f.txt',
      'PROTOCOL_ERROR',
    ));

  it('silence: TIMEOUT, not a hang', () => expectRefused(fileScenario(() => new Promise(() => undefined)), 'ws/f.txt', 'TIMEOUT'));

  it('a welcome claiming another peer ID than its certificate: PEER_MISMATCH', async () => {
    const other = (await makePeer()).identity.peerId;
    const server = await startHostileSharerV2(hostileIdentity, () => undefined, { welcomeId: other });
    await rejectsWithCode(
      connectToPeer({ identity: client.identity, trust: client.trust, addresses: [server.address], expectedPeerId: hostileIdentity.peerId, name: 'victim' }),
      'PEER_MISMATCH',
    );
    await server.close();
  });

  const unwritableTreeNames: [string, string, string][] = [
    ['.git/hooks/post-checkout', '.git', '.git'],
    ['C:escape.txt', 'drive letter', 'C:escape.txt'],
    ['evil\u202etxt.exe', 'bidi override', 'evil\\u202etxt.exe'],
  ];
  for (const [name, why, reported] of unwritableTreeNames) {
    it(`a folder with a name that may not be written here (${why}): left out, the rest lands`, () =>
      expectLeftOut(
        treeScenario(async (reply) => {
          await sendFile(reply, 'good.txt', CONTENT);
          await sendFile(reply, name, CONTENT);
          await sendFile(reply, 'after.txt', CONTENT);
          return { count: 3 };
        }),
        'ws/d',
        [reported],
        ['d/', 'd/after.txt', 'd/good.txt'],
      ));
  }

  const badTreeNames: [string, string][] = [
    ['../escape.txt', 'parent'],
    ['/tmp/abs.txt', 'absolute'],
    ['sub/../../escape.txt', 'parent in the middle'],
    ['sub\\..\\..\\escape.txt', 'backslashes'],
    ['', 'empty'],
  ];
  for (const [name, why] of badTreeNames) {
    it(`a folder with an unsafe name (${why}): BAD_NAME, and the earlier good file is kept`, () =>
      expectRefused(
        treeScenario(async (reply) => {
          await sendFile(reply, 'good.txt', CONTENT);
          await sendFile(reply, name, CONTENT);
          return { count: 2 };
        }),
        'ws/d',
        'BAD_NAME',
        ['d/', 'd/good.txt'],
      ));
  }

  it('the same file twice, or two names one file system would merge: the second is left out, the first keeps its content', async () => {
    await expectLeftOut(
      treeScenario(async (reply) => {
        await sendFile(reply, 'A.txt', CONTENT);
        await sendFile(reply, 'a.txt', Buffer.from('overwrite attempt'));
        await sendFile(reply, 'A.txt', Buffer.from('overwrite attempt'));
        return { count: 3 };
      }),
      'ws/d',
      ['a.txt', 'A.txt'],
      ['d/', 'd/A.txt'],
    );
  });

  it('a wrong hash inside a folder: HASH_MISMATCH, that file never appears', () =>
    expectRefused(
      treeScenario(async (reply) => {
        await sendFile(reply, 'sub/bad.bin', CONTENT, '00'.repeat(32));
        return { count: 1 };
      }),
      'ws/d',
      'HASH_MISMATCH',
      // An inline file is verified before its record is handed on, so not even its folder is made.
      [],
    ));

  it('a symlink planted in the destination is not written through', async () => {
    const { result, dest, base } = await run(
      treeScenario(async (reply) => {
        await sendFile(reply, 'sub/x.txt', CONTENT);
        return { count: 1 };
      }),
      'ws/d',
      {
        // Planted before the download: dest/d/sub -> the folder outside.
        prepare: async (dest, base) => {
          await fs.mkdir(path.join(dest, 'd'));
          await fs.symlink(base, path.join(dest, 'd', 'sub'));
        },
      },
    );
    await rejectsWithCode(result, 'BAD_NAME');
    assert.deepEqual((await fs.readdir(base)).sort(), ['dest', 'outside.txt']);
  });

  it('unasked-for data after the answer closes the connection with PROTOCOL_ERROR', async () => {
    const server = await startHostileSharerV2(hostileIdentity, (_req, reply) => {
      // After the END of request 1: a REPLY on it, which nobody asked for any more.
      setTimeout(() => reply.raw(encodeMessageFrame('REPLY', 1, { type: 'entries', entries: [] })), 20);
      return { entry: { name: 'f.txt', type: 'file', size: 1, mtimeMs: 1 } };
    });
    const conn = await connectToPeer({ identity: client.identity, trust: client.trust, addresses: [server.address], expectedPeerId: hostileIdentity.peerId, name: 'victim' });
    await conn.stat('ws/f.txt');
    await waitFor(() => conn.closed);
    assert.equal(conn.closed, true);
    await server.close();
  });
});

after(() => {
  // Sockets and servers close themselves on timers in `run`; let the process exit without them.
});
