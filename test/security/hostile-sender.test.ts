import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseInvite, resolveLimits, type PeerShareNode } from '../../src/core';
import { blockSizeFor, encodeBlockManifest } from '../../src/core/blocks';
import { dialTls } from '../../src/core/transport-tls';
import type { Connection, ReplyWriter, RequestHandler } from '../../src/core/v2/connection';
import { dialV2 } from '../../src/core/v2/handshake';
import type { CapabilityMessage } from '../../src/core/v2/messages';
import { parseOffer } from '../../src/core/v2/send-messages';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { RecordingPolicy, acceptAllInto, everything, openNode, waitUntil } from '../core/send-helpers';
import { makePeer, tempDir } from '../helpers';
import { BAD_NAMES, COLLISIONS, MALFORMED_NAMES } from './hostile-name-lists';
import { codeOf, fileEntry } from '../hostile';

/**
 * A hostile sender (docs/protocol-v2.md 13.6) against a real receiving node over TLS 1.3 on
 * loopback: it speaks send/1 by hand (a real Connection, its own outbox handler) and lies where
 * it can: names of every class of the hostile-names suite, sizes, hashes and folder contents
 * that are not what it offered, offers too large or too many, a flood of offers, a disk that
 * fills up. The receiver's disk is the oracle: nothing may land that was not offered, accepted
 * and verified.
 */
const KiB = 1024;
const MiB = 1024 * KiB;

let receiver: PeerShareNode;
let invite: string;
let policy: RecordingPolicy;
let inbox: string;

/** What the hostile outbox was asked, and how it answers: by the test's scenario. */
type Outbox = (request: CapabilityMessage, reply: ReplyWriter) => Promise<Record<string, unknown> | void>;

interface Hostile {
  connection: Connection;
  answers: boolean[][];
  done: Record<string, unknown>[];
  asked: string[];
  offer(body: Record<string, unknown>): Promise<Record<string, unknown>>;
  /** Resolves with the receiver's send.done (or after its answer, when it accepted nothing). */
  finished(): Promise<void>;
}

async function hostile(outbox: Outbox = async () => ({})): Promise<Hostile> {
  const { identity } = await makePeer();
  const parsed = parseInvite(invite);
  const remote = await dialTls({ identity, address: parsed.addresses[0], timeoutMs: 5000 });
  const answers: boolean[][] = [];
  const done: Record<string, unknown>[] = [];
  const asked: string[] = [];
  let settled: (() => void) | undefined;
  const handler: RequestHandler = async (request, reply) => {
    if (request.type === 'send.answer') {
      answers.push(request.accept as boolean[]);
      if (!(request.accept as boolean[]).some(Boolean)) settled?.();
      return {};
    }
    if (request.type === 'send.done') {
      done.push(request);
      settled?.();
      return {};
    }
    asked.push(`${request.type} ${String(request.path)}`);
    return (await outbox(request, reply)) ?? {};
  };
  const { connection } = await dialV2(remote, { expectedPeerId: parsed.peerId, name: 'hostile', token: parsed.token, serve: { 'send/1': { params: {}, handler } } });
  let n = 0;
  return {
    connection,
    answers,
    done,
    asked,
    offer: async (body) => connection.request({ type: 'send.offer', offer: `hostileoffer${String(n++).padStart(8, '0')}`, ...body }).result,
    finished: () => new Promise<void>((resolve) => (settled = resolve)),
  };
}


/** An outbox that serves `content` honestly (manifest and blocks) for every file it is asked about. */
function serving(content: Buffer, mtimeMs = 1000, blocks: Buffer = content): Outbox {
  const manifest = manifestOfBytes(content, blockSizeFor(content.length));
  return async (request, reply) => {
    if (request.type === 'send.stat') return { entry: { name: 'x', type: 'file', size: content.length, mtimeMs } };
    if (request.type === 'send.manifest') {
      await reply.message({ type: 'manifest', size: manifest.size, mtimeMs, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') });
      await reply.data(encodeBlockManifest(manifest));
      return {};
    }
    if (request.type === 'send.read') {
      await reply.data(blocks);
      return {};
    }
    return {};
  };
}


before(async () => {
  receiver = await openNode('receiver');
  const active = await receiver.share({ folders: [tempDir()], host: '127.0.0.1', port: 0 });
  invite = active.server.createInvite({ uses: 1000 });
  inbox = tempDir('peershare-hostile-inbox-');
  policy = new RecordingPolicy(acceptAllInto(inbox));
  receiver.setReceivePolicy(policy);
});
after(async () => {
  await receiver.close();
});

describe('a hostile sender: names', () => {
  it(`offers each name unsafe here (${BAD_NAMES.length} names): shown marked, never saved under it, nothing pulled`, async () => {
    const h = await hostile(serving(Buffer.from('#!/bin/sh\necho owned\n')));
    const asked = policy.offers.length;
    for (const [name] of BAD_NAMES) {
      const finished = h.finished();
      assert.deepEqual(await h.offer({ entries: [fileEntry(name, Buffer.from('#!/bin/sh\necho owned\n'))] }), { type: 'end' });
      await finished;
    }
    assert.equal(policy.offers.length - asked, BAD_NAMES.length);
    assert.ok(policy.offers.slice(asked).every((o) => o.entries[0].unsafeHere !== undefined));
    assert.ok(h.answers.every((a) => a.length === 1 && a[0] === false));
    assert.deepEqual(h.asked, []);
    assert.deepEqual(await everything(inbox), []);
  });

  it('offers names of the wrong form (traversal, separators, their other spellings): INVALID_ARGUMENT, nobody is asked', async () => {
    const h = await hostile();
    const asked = policy.offers.length;
    const names = [...MALFORMED_NAMES.map(([n]) => n), '..', '.', 'a/b', '../../etc/passwd', '/etc/passwd', 'a\\b', '', 'x\uFFFDy', 'a'.repeat(256)];
    for (const name of names) {
      assert.equal(await codeOf(h.offer({ entries: [fileEntry(name, Buffer.from('x'))] })), 'INVALID_ARGUMENT', JSON.stringify(name));
    }
    assert.equal(policy.offers.length, asked);
    assert.equal(h.connection.closed, false);
    assert.deepEqual(await everything(inbox), []);
  });

  it(`offers pairs of names one file system would merge (${COLLISIONS.length} pairs): INVALID_ARGUMENT`, async () => {
    const h = await hostile();
    const asked = policy.offers.length;
    for (const [first, second] of COLLISIONS) {
      assert.equal(await codeOf(h.offer({ entries: [fileEntry(first, Buffer.from('1')), fileEntry(second, Buffer.from('2'))] })), 'INVALID_ARGUMENT');
    }
    assert.equal(policy.offers.length, asked);
  });

  it('a folder whose stream holds bad names: those are left out; a malformed one removes the whole folder', async () => {
    const ok = Buffer.from('fine\n');
    const inline = async (reply: ReplyWriter, p: string, content: Buffer): Promise<void> => {
      const m = manifestOfBytes(content, blockSizeFor(content.length));
      await reply.message({ type: 'file', path: p, size: content.length, mtimeMs: 1000, blockSize: m.blockSize, fileHash: m.fileHash.toString('hex') });
      await reply.data(content);
    };
    const h = await hostile(async (request, reply) => {
      if (request.type !== 'send.tree') return {};
      const evil = String(request.path).endsWith('/evil');
      await inline(reply, 'ok.txt', ok);
      let count = 1;
      for (const [name] of BAD_NAMES) {
        await reply.message({ type: 'dir', path: name });
        await inline(reply, `${name}/hook`, ok);
        count++;
      }
      if (evil) {
        await inline(reply, '\uff0e\uff0e/escaped', ok);
        count++;
      }
      return { count };
    });
    let received = policy.nextResult();
    await h.offer({ entries: [{ name: 'proj', type: 'dir', size: 100 * KiB, files: 100 }] });
    assert.equal((await received).entries[0].status, 'received');
    assert.deepEqual(await everything(inbox), ['proj/', 'proj/ok.txt']);
    await fs.rm(path.join(inbox, 'proj'), { recursive: true });
    received = policy.nextResult();
    await h.offer({ entries: [{ name: 'evil', type: 'dir', size: 100 * KiB, files: 100 }] });
    assert.equal((await received).entries[0].code, 'BAD_NAME');
    assert.deepEqual(await everything(inbox), []);
    assert.deepEqual(await everything(path.dirname(inbox)).then((all) => all.filter((p) => p.includes('escaped'))), []);
  });
});

describe('a hostile sender: lies about sizes and hashes', () => {
  it('serves another file than the one whose hash it offered: HASH_MISMATCH, nothing lands', async () => {
    const offered = Buffer.from('the file you agreed to\n');
    const h = await hostile(serving(Buffer.from('something else entirely\n'), 1000));
    const received = policy.nextResult();
    await h.offer({ entries: [{ ...fileEntry('a.txt', offered), size: 24 }] });
    assert.equal((await received).entries[0].code, 'HASH_MISMATCH');
    await waitUntil(() => h.done.length === 1);
    const [result] = h.done[0].results as { status: string; code?: string }[];
    assert.equal(result.status, 'failed');
    assert.equal(result.code, 'HASH_MISMATCH');
    assert.deepEqual(await everything(inbox), []);
  });

  it('describes a larger file than it offered: its block list is not the offered one (HASH_MISMATCH), nothing lands', async () => {
    const offered = Buffer.from('small');
    const h = await hostile(serving(randomBytes(3 * MiB)));
    const received = policy.nextResult();
    await h.offer({ entries: [fileEntry('a.bin', offered)] });
    assert.equal((await received).entries[0].code, 'HASH_MISMATCH');
    assert.ok(!h.asked.some((a) => a.startsWith('send.read')), 'no block was asked for');
    assert.deepEqual(await everything(inbox), []);
  });

  it('sends blocks that are not the ones its block list names: HASH_MISMATCH, the connection closed, nothing lands', async () => {
    const content = randomBytes(600 * KiB);
    const h = await hostile(serving(content, 1000, randomBytes(content.length)));
    const received = policy.nextResult();
    await h.offer({ entries: [fileEntry('b.bin', content)] });
    assert.equal((await received).entries[0].status, 'failed');
    await waitUntil(() => h.connection.closed);
    assert.deepEqual(await everything(inbox), []);
  });

  it('a folder that brings more bytes than it offered: SIZE_MISMATCH, the folder removed', async () => {
    const h = await hostile(async (request, reply) => {
      if (request.type !== 'send.tree') return {};
      let count = 0;
      for (let i = 0; i < 20; i++) {
        const content = randomBytes(64 * KiB);
        const m = manifestOfBytes(content, blockSizeFor(content.length));
        await reply.message({ type: 'file', path: `f${i}.bin`, size: content.length, mtimeMs: 1000, blockSize: m.blockSize, fileHash: m.fileHash.toString('hex') });
        await reply.data(content);
        count++;
      }
      return { count };
    });
    const received = policy.nextResult();
    await h.offer({ entries: [{ name: 'small', type: 'dir', size: 100, files: 1 }] });
    assert.equal((await received).entries[0].code, 'SIZE_MISMATCH');
    assert.deepEqual(await everything(inbox), []);
  });

  it('offers more than the disk holds (a lie or not): declined before anything is pulled, with a clear notice', async () => {
    const h = await hostile(serving(Buffer.from('x')));
    const finished = h.finished();
    const notice = policy.nextNotice();
    await h.offer({ entries: [{ ...fileEntry('huge.bin', Buffer.from('x')), size: 2 ** 52 }] });
    assert.match(await notice, /Not enough free space/);
    await finished;
    assert.deepEqual(h.answers.at(-1), [false]);
    assert.deepEqual(h.asked, []);
  });
});

describe('a hostile sender: too much', () => {
  it('an offer of 10^6 entries is refused by its count before any entry is looked at', () => {
    const entries = new Array(1_000_000).fill({ name: 'x', type: 'file', size: 1, mtimeMs: 0, fileHash: '0'.repeat(64) });
    const started = performance.now();
    assert.throws(() => parseOffer({ offer: 'a'.repeat(16), entries }, resolveLimits()), (err: unknown) => (err as { code?: string }).code === 'TOO_LARGE');
    assert.ok(performance.now() - started < 1000);
  });

  it('over the wire: one entry more than maxOfferEntries is TOO_LARGE; nobody is asked', async () => {
    const h = await hostile();
    const asked = policy.offers.length;
    const entries = Array.from({ length: resolveLimits().maxOfferEntries + 1 }, (_, i) => ({ name: `f${i}`, type: 'dir', size: 0, files: 0 }));
    assert.equal(await codeOf(h.offer({ entries })), 'TOO_LARGE');
    assert.equal(policy.offers.length, asked);
  });

  it('a flood of 200 offers at once: one question, the rest BUSY', async () => {
    let answer!: (d: 'decline') => void;
    const previous = policy.decide;
    policy.decide = () => new Promise((resolve) => (answer = resolve));
    try {
      const h = await hostile();
      const asked = policy.offers.length;
      const codes = await Promise.all(Array.from({ length: 200 }, () => codeOf(h.offer({ entries: [fileEntry('a.txt', Buffer.from('a'))] }))));
      assert.equal(codes.filter((c) => c === undefined).length, 1);
      assert.equal(codes.filter((c) => c === 'BUSY').length, 199);
      assert.equal(policy.offers.length - asked, 1);
      answer('decline');
    } finally {
      policy.decide = previous;
    }
  });
});

describe('a hostile sender: the disk fills up', () => {
  let mount: string;
  let mounted = false;
  // A small tmpfs stands in for a full disk (needs root, as in CI, or passwordless sudo).
  const asRoot = (args: string[]): void => {
    const command = process.getuid?.() === 0 ? args : ['sudo', '-n', ...args];
    execFileSync(command[0], command.slice(1), { stdio: 'pipe' });
  };
  before(() => {
    mount = tempDir('peershare-send-full-');
    try {
      asRoot(['mount', '-t', 'tmpfs', '-o', 'size=2m,mode=1777', 'tmpfs', mount]);
      mounted = true;
    } catch (err) {
      throw new Error(`This test mounts a 2 MiB tmpfs to fill up, which needs root or passwordless sudo: ${String(err)}`);
    }
  });
  after(() => {
    if (mounted) asRoot(['umount', '-l', mount]);
  });

  it('an offer larger than the free space is declined with a clear notice; nothing is written', async () => {
    const content = randomBytes(3 * MiB);
    const previous = policy.decide;
    policy.decide = acceptAllInto(mount);
    try {
      const h = await hostile(serving(content));
      const finished = h.finished();
      const notice = policy.nextNotice();
      await h.offer({ entries: [fileEntry('big.bin', content)] });
      assert.match(await notice, /Not enough free space/);
      await finished;
      assert.deepEqual(h.asked, []);
      assert.deepEqual(await everything(mount), []);
    } finally {
      policy.decide = previous;
    }
  });

  it('the disk fills up during the transfer: the entry fails and its partial file is removed', async () => {
    const content = randomBytes(1536 * KiB);
    const previous = policy.decide;
    policy.decide = acceptAllInto(mount);
    const filler = path.join(mount, 'filler');
    const onProgress = policy.onProgress;
    policy.onProgress = () => {
      // Someone else fills the disk after the offer was checked and accepted.
      try {
        writeFileSync(filler, Buffer.alloc(1024 * KiB), { flag: 'wx' });
      } catch {
        // written already, or the disk is already full
      }
    };
    try {
      const h = await hostile(serving(content));
      const received = policy.nextResult();
      await h.offer({ entries: [fileEntry('big.bin', content)] });
      const result = await received;
      assert.equal(result.entries[0].status, 'failed');
      assert.equal(result.entries[0].code, 'IO_ERROR');
      assert.deepEqual(await everything(mount), ['filler']);
    } finally {
      policy.decide = previous;
      policy.onProgress = onProgress;
    }
  });
});
