import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectToPeer, download, type Identity } from '../../src/core';
import { encodeDataHeader } from '../../src/core/frames';
import { listTree, makePeer, rejectsWithCode, tempDir, type TestPeer } from '../helpers';
import { startHostileServer, type Replier, type Scenario } from '../hostile';

const CONTENT = Buffer.from('the real content\n');
const SHA = createHash('sha256').update(CONTENT).digest('hex');

/** Answers stat for `ws/f.txt` honestly, then lets `onRead` misbehave. */
function fileScenario(onRead: (req: Record<string, unknown>, reply: Replier) => void): Scenario {
  return (req, reply) => {
    if (req.type === 'stat') reply.message({ type: 'entry', entry: { name: 'f.txt', type: 'file', size: CONTENT.length, mtimeMs: 1000 } });
    else if (req.type === 'read') onRead(req, reply);
  };
}

/** Answers stat for `ws/d` as a folder, then sends `events` for the tree. */
function treeScenario(events: (reply: Replier) => void): Scenario {
  return (req, reply) => {
    if (req.type === 'stat') reply.message({ type: 'entry', entry: { name: 'd', type: 'dir', size: 0, mtimeMs: 1000 } });
    else if (req.type === 'tree') events(reply);
  };
}

function sendFile(reply: Replier, name: string, content: Buffer, sha = createHash('sha256').update(content).digest('hex')): void {
  reply.message({ type: 'file', path: name, size: content.length, mtimeMs: 1000, offset: 0 });
  if (content.length) reply.data(content);
  reply.message({ type: 'fileEnd', sha256: sha });
}

describe('a peer that lies is caught, and nothing lands under a final name', () => {
  let hostileIdentity: Identity;
  let client: TestPeer;

  before(async () => {
    hostileIdentity = (await makePeer()).identity;
    client = await makePeer();
  });

  async function run(
    scenario: Scenario,
    remotePath: string,
    options: { welcomeId?: string; limits?: object; prepare?: (dest: string, base: string) => Promise<void> } = {},
  ) {
    const server = await startHostileServer(hostileIdentity, scenario, options);
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

  async function expectRefused(scenario: Scenario, remotePath: string, code: string, expectedTree: string[] = []): Promise<void> {
    const { result, dest, base } = await run(scenario, remotePath);
    await rejectsWithCode(result, code);
    assert.deepEqual(await listTree(dest), expectedTree, 'what exists in the destination');
    assert.deepEqual(await listTree(base), ['dest/', ...expectedTree.map((p) => `dest/${p}`), 'outside.txt'].sort(), 'nothing appears outside it');
    assert.equal(await fs.readFile(path.join(base, 'outside.txt'), 'utf8'), 'untouched');
  }

  /** The download completes without the entries whose names may not be written here, and says so. */
  async function expectLeftOut(scenario: Scenario, remotePath: string, leftOut: string[], expectedTree: string[]): Promise<void> {
    const { result, dest, base } = await run(scenario, remotePath);
    assert.deepEqual((await result).leftOut.map((l) => l.path), leftOut, 'reported as left out');
    assert.deepEqual(await listTree(dest), expectedTree, 'what exists in the destination');
    assert.deepEqual(await listTree(base), ['dest/', ...expectedTree.map((p) => `dest/${p}`), 'outside.txt'].sort(), 'nothing appears outside it');
    assert.equal(await fs.readFile(path.join(base, 'outside.txt'), 'utf8'), 'untouched');
  }

  it('accepts an honest answer (the scenario itself works)', async () => {
    const { result, dest } = await run(fileScenario((req, reply) => sendFile(reply, String(req.path), CONTENT)), 'ws/f.txt');
    await result;
    assert.deepEqual(await fs.readFile(path.join(dest, 'f.txt')), CONTENT);
  });

  it('a wrong hash: HASH_MISMATCH', () =>
    expectRefused(fileScenario((req, reply) => sendFile(reply, String(req.path), CONTENT, 'ab'.repeat(32))), 'ws/f.txt', 'HASH_MISMATCH'));

  it('different bytes with the hash of the real ones: HASH_MISMATCH', () =>
    expectRefused(fileScenario((req, reply) => sendFile(reply, String(req.path), Buffer.from('the fake content\n'), SHA)), 'ws/f.txt', 'HASH_MISMATCH'));

  it('more bytes than announced: SIZE_MISMATCH', () =>
    expectRefused(
      fileScenario((req, reply) => {
        reply.message({ type: 'file', path: req.path, size: CONTENT.length, mtimeMs: 1000, offset: 0 });
        reply.data(Buffer.concat([CONTENT, Buffer.from('extra')]));
        reply.message({ type: 'fileEnd', sha256: SHA });
      }),
      'ws/f.txt',
      'SIZE_MISMATCH',
    ));

  it('an endless stream: SIZE_MISMATCH at the first byte too many', () =>
    expectRefused(
      fileScenario((req, reply) => {
        reply.message({ type: 'file', path: req.path, size: CONTENT.length, mtimeMs: 1000, offset: 0 });
        const chunk = Buffer.alloc(64 * 1024, 7);
        const pump = (): void => {
          if (reply.socket.destroyed) return;
          while (reply.socket.write(Buffer.concat([encodeDataHeader(chunk.length), chunk]))) {
            /* fill */
          }
          reply.socket.once('drain', pump);
        };
        pump();
      }),
      'ws/f.txt',
      'SIZE_MISMATCH',
    ));

  it('fewer bytes than announced: SIZE_MISMATCH', () =>
    expectRefused(
      fileScenario((req, reply) => {
        reply.message({ type: 'file', path: req.path, size: CONTENT.length, mtimeMs: 1000, offset: 0 });
        reply.data(CONTENT.subarray(0, 3));
        reply.message({ type: 'fileEnd', sha256: SHA });
      }),
      'ws/f.txt',
      'SIZE_MISMATCH',
    ));

  it('a different name than asked: BAD_NAME', () =>
    expectRefused(fileScenario((_req, reply) => sendFile(reply, 'ws/other.txt', CONTENT)), 'ws/f.txt', 'BAD_NAME'));

  it('a frame over the size limit: TOO_LARGE', () =>
    expectRefused(fileScenario((_req, reply) => reply.raw(Buffer.from([0x01, 0x7f, 0xff, 0xff, 0xff]))), 'ws/f.txt', 'TOO_LARGE'));

  it('garbage instead of frames: PROTOCOL_ERROR', () =>
    expectRefused(fileScenario((_req, reply) => reply.raw(Buffer.from('HTTP/1.1 200 OK\r\n\r\n'))), 'ws/f.txt', 'PROTOCOL_ERROR'));

  it('silence: TIMEOUT, not a hang', () => expectRefused(fileScenario(() => undefined), 'ws/f.txt', 'TIMEOUT'));

  it('a welcome claiming another peer ID than its certificate: PEER_MISMATCH', async () => {
    const other = (await makePeer()).identity.peerId;
    const server = await startHostileServer(hostileIdentity, () => undefined, { welcomeId: other });
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
        treeScenario((reply) => {
          sendFile(reply, 'good.txt', CONTENT);
          sendFile(reply, name, CONTENT);
          sendFile(reply, 'after.txt', CONTENT);
          reply.message({ type: 'end', count: 3 });
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
        treeScenario((reply) => {
          sendFile(reply, 'good.txt', CONTENT);
          sendFile(reply, name, CONTENT);
          reply.message({ type: 'end', count: 2 });
        }),
        'ws/d',
        'BAD_NAME',
        ['d/', 'd/good.txt'],
      ));
  }

  it('the same file twice, or two names one file system would merge: the second is left out, the first keeps its content', async () => {
    await expectLeftOut(
      treeScenario((reply) => {
        sendFile(reply, 'A.txt', CONTENT);
        sendFile(reply, 'a.txt', Buffer.from('overwrite attempt'));
        sendFile(reply, 'A.txt', Buffer.from('overwrite attempt'));
        reply.message({ type: 'end', count: 3 });
      }),
      'ws/d',
      ['a.txt', 'A.txt'],
      ['d/', 'd/A.txt'],
    );
  });

  it('a wrong hash inside a folder: HASH_MISMATCH, that file never appears', () =>
    expectRefused(
      treeScenario((reply) => {
        sendFile(reply, 'sub/bad.bin', CONTENT, '00'.repeat(32));
        reply.message({ type: 'end', count: 1 });
      }),
      'ws/d',
      'HASH_MISMATCH',
      ['d/', 'd/sub/'],
    ));

  it('a symlink planted in the destination is not written through', async () => {
    const { result, dest, base } = await run(
      treeScenario((reply) => {
        sendFile(reply, 'sub/x.txt', CONTENT);
        reply.message({ type: 'end', count: 1 });
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
    const server = await startHostileServer(hostileIdentity, (req, reply) => {
      reply.message({ type: 'entry', entry: { name: 'f.txt', type: 'file', size: 1, mtimeMs: 1 } });
      reply.message({ type: 'entry', entry: { name: 'again', type: 'file', size: 1, mtimeMs: 1 } });
    });
    const conn = await connectToPeer({ identity: client.identity, trust: client.trust, addresses: [server.address], expectedPeerId: hostileIdentity.peerId, name: 'victim' });
    await conn.stat('ws/f.txt');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(conn.closed, true);
    await server.close();
  });
});

after(() => {
  // Sockets and servers close themselves on timers in `run`; let the process exit without them.
});
