import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { PeerShareError, isErrorCode } from '../../src/core/errors';
import { resolveLimits } from '../../src/core/limits';
import { inspectReceivedName } from '../../src/core/names';
import type { CapabilityMessage } from '../../src/core/v2/messages';
import { MAX_NOTE_CHARS, OFFER_ID, parseSendRequest } from '../../src/core/v2/send-messages';
import { fuzzer, refusedWith } from '../security/fuzz-kit';

/**
 * Property-based tests of send/1's one parser (docs/protocol-v2.md 13.2): whatever a peer puts in
 * `send.offer`, `send.answer`, `send.done` or `send.cancel`, the parser returns a request within
 * every bound or refuses it with a coded error (PROTOCOL_ERROR, TOO_LARGE, INVALID_ARGUMENT),
 * never a crash; and a well-formed offer comes back as it was sent.
 */
const { check, cases } = fuzzer(300);
const limits = resolveLimits({ maxOfferEntries: 50 });

after(() => {
  console.log(`# v2-send-fuzz: ${cases()} cases run`);
});

const anyName = fc.oneof(
  fc.constantFrom('a.txt', 'src', '..', '.', 'a/b', '/etc/passwd', 'a\\b', '', '.git', 'GIT~1', '\uff0e\uff0e', 'CON', 'x\u0000y', 'I.txt', '\u0131.txt'),
  fc.string({ maxLength: 30 }),
  fc.integer(),
);
const anyEntry = fc.oneof(
  fc.record(
    {
      name: anyName,
      type: fc.constantFrom('file', 'dir', 'link', 1),
      size: fc.oneof(fc.nat(), fc.integer(), fc.double(), fc.constant(2 ** 60)),
      mtimeMs: fc.oneof(fc.integer(), fc.double(), fc.string()),
      fileHash: fc.oneof(fc.constant('ab'.repeat(32)), fc.string({ maxLength: 70 })),
      files: fc.oneof(fc.nat(), fc.integer({ min: -5, max: 10_000_000 })),
    },
    { requiredKeys: [] },
  ),
  fc.jsonValue({ maxDepth: 1 }),
);
const anyOffer = fc.oneof(fc.constantFrom('a'.repeat(16), 'b'.repeat(64), 'short', 'x'.repeat(65), 'bad id with spaces!'), fc.string({ maxLength: 70 }), fc.integer());
const request: fc.Arbitrary<Record<string, unknown>> = fc.record(
  {
    type: fc.oneof(fc.constantFrom('send.offer', 'send.answer', 'send.done', 'send.cancel'), fc.constantFrom('send.list', 'send.', 'send.OFFER', 'share.stat')),
    offer: anyOffer,
    note: fc.oneof(fc.string({ maxLength: 250 }), fc.integer()),
    entries: fc.oneof(fc.array(anyEntry, { maxLength: 60 }), fc.jsonValue({ maxDepth: 2 })),
    snippet: fc.oneof(
      fc.record(
        {
          text: fc.oneof(fc.string({ maxLength: 100 }), fc.integer()),
          path: anyName,
          startLine: fc.oneof(fc.nat(), fc.integer(), fc.double()),
          endLine: fc.oneof(fc.nat(), fc.integer()),
          language: fc.oneof(fc.constantFrom('typescript', 'c++', ''), fc.string({ maxLength: 70 })),
        },
        { requiredKeys: [] },
      ),
      fc.jsonValue({ maxDepth: 1 }),
    ),
    accept: fc.oneof(fc.array(fc.oneof(fc.boolean(), fc.integer()), { maxLength: 60 }), fc.jsonValue({ maxDepth: 1 })),
    results: fc.oneof(
      fc.array(fc.oneof(fc.record({ status: fc.constantFrom('received', 'declined', 'failed', 'lost'), code: fc.oneof(fc.constantFrom('HASH_MISMATCH', 'CANCELLED', 'NOPE', '__proto__'), fc.integer()), message: fc.oneof(fc.string({ maxLength: 600 }), fc.integer()) }, { requiredKeys: [] }), fc.jsonValue({ maxDepth: 1 })), { maxLength: 60 }),
      fc.jsonValue({ maxDepth: 1 }),
    ),
    cancelled: fc.oneof(fc.constant(true), fc.jsonValue({ maxDepth: 0 })),
  },
  { requiredKeys: ['type'] },
);

describe('send/1 parser, fuzzed', () => {
  it('any request: a bounded request or a coded refusal, never a crash', async () => {
    await check(request, (m) => {
      let parsed;
      try {
        parsed = parseSendRequest(m as CapabilityMessage, limits);
      } catch (err) {
        refusedWith(err, ['PROTOCOL_ERROR', 'TOO_LARGE', 'INVALID_ARGUMENT']);
        return;
      }
      assert.ok(OFFER_ID.test(parsed.offer));
      if (parsed.type === 'send.offer') {
        if (parsed.note !== undefined) assert.ok(parsed.note.length <= MAX_NOTE_CHARS);
        if (parsed.entries) {
          assert.ok(parsed.entries.length >= 1 && parsed.entries.length <= limits.maxOfferEntries);
          for (const e of parsed.entries) {
            // Every name has the form of one received name (the download's rules), whatever the peer sent.
            assert.equal(inspectReceivedName(e.name, 255).components.length, 1);
            assert.ok(Number.isSafeInteger(e.size) && e.size >= 0);
          }
        } else {
          assert.ok(Buffer.byteLength(parsed.snippet.text, 'utf8') <= limits.maxSnippetBytes);
          assert.ok(parsed.snippet.startLine >= 1 && parsed.snippet.endLine >= parsed.snippet.startLine);
        }
      }
      if (parsed.type === 'send.answer') assert.ok(parsed.accept.length <= limits.maxOfferEntries && parsed.accept.every((a) => typeof a === 'boolean'));
      if (parsed.type === 'send.done' && parsed.results) {
        for (const r of parsed.results) {
          assert.ok((r.message ?? '').length <= 500);
          if (r.code !== undefined) assert.ok(isErrorCode(r.code) && r.status === 'failed');
        }
      }
    });
  });

  it('a well-formed offer comes back as sent', async () => {
    const safeName = fc.stringMatching(/^[a-z][a-z0-9_-]{0,20}(\.[a-z]{1,4})?$/);
    const entry = fc.oneof(
      fc.record({ name: safeName, type: fc.constant('file' as const), size: fc.nat(), mtimeMs: fc.integer({ min: 0, max: 2 ** 40 }), fileHash: fc.constant('0f'.repeat(32)) }),
      fc.record({ name: safeName, type: fc.constant('dir' as const), size: fc.nat(), files: fc.nat({ max: 1000 }) }),
    );
    await check(fc.uniqueArray(entry, { minLength: 1, maxLength: 20, selector: (e) => e.name.toLowerCase() }), (entries) => {
      // As it crosses the wire: JSON (fast-check's records have no prototype).
      const sent = JSON.parse(JSON.stringify({ type: 'send.offer', offer: 'o'.repeat(20), entries })) as CapabilityMessage;
      assert.deepEqual(parseSendRequest(sent, limits), sent);
    });
  });
});

describe('send.offer: an entry\'s path hint', () => {
  const offer = (entry: Record<string, unknown>) =>
    parseSendRequest({ type: 'send.offer', offer: 'o'.repeat(16), entries: [{ name: 'app.ts', type: 'file', size: 1, mtimeMs: 0, fileHash: 'a'.repeat(64), ...entry }] } as CapabilityMessage, limits);
  const pathOf = (entry: Record<string, unknown>) => {
    const parsed = offer(entry);
    return parsed.type === 'send.offer' ? parsed.entries?.[0].path : 'not an offer';
  };

  it('a plain relative path ending with the name is kept; none is none', () => {
    assert.equal(pathOf({ path: 'src/app.ts' }), 'src/app.ts');
    assert.equal(pathOf({ path: 'app.ts' }), 'app.ts');
    assert.equal(pathOf({}), undefined);
  });

  it('a path of the wrong form, or one that does not end with the name, is INVALID_ARGUMENT; not a string breaks the spec', () => {
    for (const bad of ['../app.ts', '/etc/app.ts', 'src/../app.ts', 'src\\app.ts', 'src/other.ts', 'src/app.ts/', '', `${'d/'.repeat(3000)}app.ts`]) {
      assert.throws(() => offer({ path: bad }), (err: PeerShareError) => err.code === 'INVALID_ARGUMENT', JSON.stringify(bad.slice(0, 40)));
    }
    assert.throws(() => offer({ path: 7 }), (err: PeerShareError) => err.code === 'PROTOCOL_ERROR');
  });

  it('a path unsafe here (.git, .vscode, a drive letter, a device name) is dropped, never used', () => {
    assert.equal(pathOf({ path: '.vscode/app.ts' }), undefined);
    assert.equal(pathOf({ path: 'C:/app.ts' }), undefined);
    assert.equal(pathOf({ path: 'con/app.ts' }), undefined);
    assert.equal(pathOf({ path: '.git/hooks/app.ts' }), undefined);
  });
});
