import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { BlockCache } from '../../src/core/block-cache';
import { encodeBlockManifest, manifestFromBlockHashes } from '../../src/core/blocks';
import { blake3 } from '../../src/core/blake3';
import { PeerShareError } from '../../src/core/errors';
import { resolveLimits } from '../../src/core/limits';
import { Share } from '../../src/core/share';
import { Connection, type RequestHandler } from '../../src/core/v2/connection';
import type { CapabilityMessage } from '../../src/core/v2/messages';
import { ShareClient } from '../../src/core/v2/share-client';
import { manifestOfBytes, parseShareRequest } from '../../src/core/v2/share-messages';
import { ShareProvider } from '../../src/core/v2/share-provider';
import { fuzzer, refusedWith } from '../security/fuzz-kit';
import { makePeer, tempDir } from '../helpers';
import { duplexPair } from './v2-duplex-pair';

/**
 * Property-based tests of share/1's parsers (docs/protocol-v2.md 6): the provider's request parser
 * and the provider itself on any request, and the requester's five readers on any answer a
 * hostile provider can make. Each property runs FUZZ_RUNS cases or until FUZZ_SECONDS pass
 * (test/security/fuzz-kit.ts); the seed is printed with any failure and replayed with FUZZ_SEED.
 */
const { check, cases } = fuzzer(150);
const KiB = 1024;

after(() => {
  console.log(`# v2-share-fuzz: ${cases()} cases run`);
});

const SHARE_TYPES = ['share.stat', 'share.list', 'share.tree', 'share.manifest', 'share.read'] as const;
const anyPath = fc.oneof(
  fc.constantFrom('', 'ws', 'ws/', 'ws/a.txt', 'ws/sub', 'ws/../x', '../ws/a.txt', '/etc/passwd', 'ws/.git/config', 'ws\\a.txt', 'ws/a.txt\u0000', 'nope/x'),
  fc.string({ maxLength: 40 }),
  fc.integer(),
  fc.constant(undefined),
);
const pair = fc.oneof(fc.tuple(fc.integer({ min: -2, max: 50 }), fc.integer({ min: -2, max: 50 })), fc.array(fc.integer({ min: -1, max: 50 }), { maxLength: 3 }), fc.jsonValue({ maxDepth: 1 }));
const request: fc.Arbitrary<Record<string, unknown>> = fc.record(
  {
    type: fc.oneof(fc.constantFrom(...SHARE_TYPES), fc.constantFrom('share.delete', 'share.', 'share.READ')),
    path: anyPath,
    fileHash: fc.oneof(fc.constant('00'.repeat(32)), fc.string({ maxLength: 70 }), fc.integer()),
    blocks: fc.oneof(fc.array(pair, { maxLength: 6 }), fc.jsonValue({ maxDepth: 2 })),
    expect: fc.oneof(fc.record({ size: fc.oneof(fc.nat(), fc.integer(), fc.double()), mtimeMs: fc.oneof(fc.integer(), fc.double(), fc.string()) }), fc.jsonValue({ maxDepth: 1 })),
    rehash: fc.oneof(fc.constant(true), fc.jsonValue({ maxDepth: 0 })),
  },
  { requiredKeys: ['type'] },
);

let ws: string;
let provider: ShareProvider;

before(async () => {
  const sharer = await makePeer();
  const base = tempDir('peershare-v2-share-fuzz-');
  ws = path.join(base, 'ws');
  await fs.mkdir(path.join(ws, 'sub'), { recursive: true });
  await fs.mkdir(path.join(ws, '.git'), { recursive: true });
  await fs.writeFile(path.join(ws, 'a.txt'), 'hello');
  await fs.writeFile(path.join(ws, '.git', 'config'), '[core]');
  await fs.writeFile(path.join(ws, 'sub', 'b.bin'), Buffer.alloc(300 * KiB, 3));
  await fs.writeFile(path.join(base, 'x'), 'outside');
  const share = await Share.create({ folders: [ws] }, resolveLimits());
  provider = new ShareProvider({ share, blockCache: await BlockCache.open(sharer.home, resolveLimits()) });
});

/** A requester and a responder over the in-memory pair; `handler` answers share/1. */
function connections(handler: RequestHandler) {
  const [a, b] = duplexPair();
  const requester = new Connection(a, { peerId: 'provider', address: 'memory', side: 'dialer', peerCapabilities: ['share/1'] });
  const responder = new Connection(b, { peerId: 'requester', address: 'memory', side: 'acceptor', handlers: { 'share/1': handler } });
  return { requester, responder };
}

/** Settles with the outcome: a value, or a coded error; anything else fails the property. */
async function outcome(promise: Promise<unknown>, codes?: string[]): Promise<PeerShareError | undefined> {
  try {
    await promise;
    return undefined;
  } catch (err) {
    if (!(err instanceof PeerShareError)) throw err;
    if (codes) refusedWith(err, codes);
    return err;
  }
}

describe('fuzzing: share/1 requests against the provider', () => {
  it('parseShareRequest: any message is a well-formed request or a coded refusal (PROTOCOL_ERROR, TOO_LARGE)', async () => {
    await check(request, (m) => {
      let parsed;
      try {
        parsed = parseShareRequest(m as CapabilityMessage, { maxReadRanges: 4 });
      } catch (err) {
        refusedWith(err, ['PROTOCOL_ERROR', 'TOO_LARGE']);
        return;
      }
      assert.equal(typeof parsed.path, 'string');
      if (parsed.type === 'share.read') {
        assert.ok(parsed.blocks.length >= 1 && parsed.blocks.length <= 4);
        let previous = -1;
        for (const [first, end] of parsed.blocks) {
          assert.ok(Number.isSafeInteger(first) && first > previous && first < end);
          previous = end;
        }
      }
    });
  });

  it('the provider answers any request with an answer, a request-level error or a PROTOCOL_ERROR close; it never crashes', async () => {
    const seen = new Set<string>();
    await check(request, async (m) => {
      const { requester, responder } = connections(provider.handler({ peerId: 'requester' }));
      const answer = requester.request(m as CapabilityMessage);
      const err = await outcome(
        (async () => {
          for await (const part of answer) void part;
          await answer.result;
        })(),
      );
      // A request-level failure keeps the connection; only a breach of the spec closes it.
      if (err && err.code !== 'PROTOCOL_ERROR') assert.ok(!responder.closed, `closed on ${err.code}`);
      seen.add(err ? (err.code === 'PROTOCOL_ERROR' ? 'closed' : 'refused') : 'answered');
      requester.close();
      // One case of each outcome runs first, whatever the seed: *why: an answered request is a
      // few in a hundred random ones, and a run of 150 without one failed CI about once in 100.*
    }, undefined, [{ type: 'share.stat', path: 'ws/a.txt' }, { type: 'share.stat', path: 'nope/x' }, { type: 'share.delete', path: 'ws/a.txt' }]);
    // The cases reached every outcome, so the property tested more than the parser's refusals.
    assert.deepEqual([...seen].sort(), ['answered', 'closed', 'refused']);
  });
});

describe('fuzzing: hostile answers against the requester\'s readers', () => {
  const manifest = manifestFromBlockHashes(300 * KiB, 128 * KiB, [blake3(Buffer.alloc(128 * KiB, 1)), blake3(Buffer.alloc(128 * KiB, 2)), blake3(Buffer.alloc(44 * KiB, 3))]);
  const entry = fc.record({ name: fc.oneof(fc.constantFrom('a', 'b', '', '..', 'a/b', '.git'), fc.string({ maxLength: 12 })), type: fc.constantFrom('file', 'dir', 'link'), size: fc.oneof(fc.nat(), fc.integer()), mtimeMs: fc.oneof(fc.integer(), fc.double()) }, { requiredKeys: [] });
  const reply: fc.Arbitrary<Record<string, unknown>> = fc.record(
    {
      type: fc.constantFrom('entries', 'manifest', 'dir', 'file', 'fileRef', 'skipped', 'entry', 'x'),
      entries: fc.oneof(fc.array(entry, { maxLength: 4 }), fc.jsonValue({ maxDepth: 1 })),
      path: fc.oneof(fc.constantFrom('a', 'a/b', '../x', '/etc', '.git', 'CON', 'a\\b', 'd/d/d'), fc.string({ maxLength: 10 })),
      size: fc.oneof(fc.constantFrom(0, 5, 300 * KiB, 2 ** 40), fc.integer()),
      mtimeMs: fc.oneof(fc.integer(), fc.constant(1e300)),
      blockSize: fc.oneof(fc.constantFrom(128 * KiB, 200_000, 0), fc.integer()),
      fileHash: fc.oneof(fc.constant(manifest.fileHash.toString('hex')), fc.constant('ab'.repeat(32)), fc.string({ maxLength: 64 })),
      code: fc.constantFrom('NOT_FOUND', 'CANCELLED', 'IO_ERROR', 'x'),
      message: fc.string({ maxLength: 30 }),
    },
    { requiredKeys: ['type'] },
  );
  const part = fc.oneof(reply, fc.uint8Array({ minLength: 1, maxLength: 300 * KiB + 10 }).map((b) => Buffer.from(b)));
  const end = fc.oneof(fc.record({ count: fc.oneof(fc.nat({ max: 4 }), fc.string()) }), fc.record({ entry }), fc.constant({}));
  const READER_CODES = ['PROTOCOL_ERROR', 'TOO_LARGE', 'BAD_NAME', 'HASH_MISMATCH', 'SIZE_MISMATCH', 'NOT_FOUND'];
  const inlineFile = manifestOfBytes(Buffer.from('hi'), 128 * KiB);
  /** What an honest provider answers each reader: the cases start from it, and from it with one part changed. */
  const honest: Record<string, { parts: (Record<string, unknown> | Buffer)[]; end: Record<string, unknown> }> = {
    stat: { parts: [], end: { entry: { name: 'a', type: 'file', size: 5, mtimeMs: 0 } } },
    list: { parts: [{ type: 'entries', entries: [{ name: 'a', type: 'file', size: 5, mtimeMs: 0 }, { name: 'b', type: 'dir', size: 0, mtimeMs: 0 }] }], end: { count: 2 } },
    manifest: { parts: [{ type: 'manifest', size: manifest.size, mtimeMs: 0, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') }, encodeBlockManifest(manifest)], end: {} },
    read: { parts: [Buffer.alloc(128 * KiB, 1), Buffer.alloc(128 * KiB, 2), Buffer.alloc(44 * KiB, 3)], end: {} },
    tree: {
      parts: [{ type: 'dir', path: 'd' }, { type: 'file', path: 'd/f', size: 2, mtimeMs: 0, blockSize: 128 * KiB, fileHash: inlineFile.fileHash.toString('hex') }, Buffer.from('hi'), { type: 'fileRef', path: 'd/g', size: 300 * KiB, mtimeMs: 0 }],
      end: { count: 2 },
    },
  };
  const answer = fc.constantFrom('stat', 'list', 'manifest', 'read', 'tree').chain((reader) =>
    fc.record({
      reader: fc.constant(reader),
      parts: fc.oneof(
        fc.constant(honest[reader].parts),
        fc.tuple(fc.nat({ max: 4 }), part).map(([at, changed]) => honest[reader].parts.map((p, i) => (i === at ? changed : p))),
        fc.array(part, { maxLength: 5 }),
      ),
      end: fc.oneof(fc.constant(honest[reader].end), end),
      fail: fc.boolean(),
    }),
  );

  it('each reader on any answer: a checked result or a coded error, never a crash or a hang', async () => {
    const seen = new Set<string>();
    await check(answer, async ({ reader, parts, end: last, fail }) => {
      const { requester } = connections(async (_request, writer) => {
        for (const p of parts) await (Buffer.isBuffer(p) ? writer.data(p) : writer.message(p as { type: string }));
        if (fail) throw new PeerShareError('NOT_FOUND');
        return last;
      });
      const client = new ShareClient(requester);
      const run = async (): Promise<void> => {
        switch (reader) {
          case 'stat':
            return void (await client.stat('x'));
          case 'list':
            return void (await client.list('x'));
          case 'manifest':
            return void (await client.manifest('x'));
          case 'read':
            for await (const block of client.readBlocks('x', manifest, [0, 1, 2])) assert.equal(block.data.length, block.index === 2 ? 44 * KiB : 128 * KiB);
            return;
          case 'tree':
            for await (const record of client.tree('x')) if (record.kind === 'file') assert.equal(record.data.length, record.size);
            return;
        }
      };
      seen.add((await outcome(run(), READER_CODES))?.code ?? 'read');
      requester.close();
    });
    // Honest answers were read and lies refused, so the property tested more than refusals.
    assert.ok(seen.has('read') && seen.has('PROTOCOL_ERROR') && seen.size >= 4, [...seen].join(', '));
  });
});
