import assert from 'node:assert/strict';
import { promises as fs, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import {
  DISGUISING_CHARS,
  INVISIBLE_CHARS,
  PeerShareError,
  Share,
  TokenBook,
  checkReceivedName,
  errorFromMessage,
  foldName,
  isInside,
  isPeerId,
  normalizePeerId,
  parseAddress,
  parseDiscoveryPacket,
  parseEntry,
  parseHello,
  parseInvite,
  parseRequest,
  parseWelcome,
  resolveLimits,
  sanitizeForDisplay,
} from '../../src/core';
import { FrameParser, encodeDataHeader, encodeMessage } from '../../src/core/frames';
import { buildWorld, type World } from './world';
import { fuzzer, refusedWith } from './fuzz-kit';

/**
 * Property-based tests of every parser of network input and of the path checks. Each property
 * runs FUZZ_RUNS cases (default 400) or until FUZZ_SECONDS (default 2) pass, so CI stays fast;
 * `npm run fuzz` runs them far longer. The seed is printed with any failure so it can be replayed
 * with FUZZ_SEED.
 */
const { runs: RUNS, check, cases } = fuzzer(400);

/** What a person must never see raw: the display sanitizer's own set. */
const UNSAFE_ON_SCREEN = DISGUISING_CHARS;

/** Pieces that traversal and aliasing attacks are built from, joined in any order. */
const PATH_PIECES = [
  '..', '.', '/', '//', '\\', '..\\', 'C:', 'c:\\', '\\\\server\\share', '%2e%2e', '%252e', '%2f', '\u0000', '\n', '\u202e',
  '\u200e', '\u200b', '\u2028', '\ufeff', '\u200d', '\u200c', '\u034f', '\u00ad', '\u3164', '\u2800', '\u180e', '\u{e0067}', '\u00a0',
  'GIT~1', 'VSCODE~1', '\u0131', '\u017f', '\uff0e', '\uff0f', '.vscode',
  '.git', '.GIT', '.git.', '.git ', '.Git', '.ｇｉｔ', '.env', 'ws', 'ws-secret', 'ws ', 'WS', 'src', 'a.ts', 'secret.txt',
  'link-out', 'file-link', 'loop', 'fifo', 'dev-zero', 'home', 'key.pem', 'CON', 'nul.txt', 'e\u0301', 'é', '\uFFFD', 'x'.repeat(300),
  '\u00e9'.repeat(130), 'outside', '~', '$HOME', '*', '?',
];
const hostilePath = fc.oneof(
  fc.array(fc.constantFrom(...PATH_PIECES), { maxLength: 8 }).map((parts) => parts.join('')),
  fc.array(fc.constantFrom(...PATH_PIECES), { maxLength: 8 }).map((parts) => parts.join('/')),
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.string({ unit: 'grapheme-composite', maxLength: 32 }),
);

const anyJson = fc.jsonValue({ maxDepth: 3 });
/** Objects shaped like protocol messages, with every field type mixed up. */
function messageLike(types: string[]): fc.Arbitrary<Record<string, unknown>> {
  const field = fc.oneof(anyJson, hostilePath, fc.integer(), fc.double(), fc.constant(null), fc.constant(-1), fc.constant(2 ** 53), fc.constant(Number.MAX_VALUE));
  return fc.record(
    {
      type: fc.oneof(fc.constantFrom(...types), fc.string()),
      path: field,
      offset: field,
      size: field,
      mtimeMs: field,
      name: field,
      versions: fc.oneof(fc.array(fc.integer(), { maxLength: 20 }), field),
      token: field,
      version: field,
      id: field,
      roots: fc.oneof(fc.array(hostilePath, { maxLength: 5 }), field),
      entries: field,
      entry: field,
      expect: fc.oneof(fc.record({ size: field, mtimeMs: field }), field),
      code: field,
      message: field,
      sha256: field,
    },
    { requiredKeys: [] },
  );
}

after(() => {
  console.log(`# fuzz: ${cases()} cases run`);
});

describe('fuzzing: parsers of network input', () => {
  it('FrameParser: any byte stream, split anywhere, yields bounded frames or a coded refusal', async () => {
    const limits = { maxMessageBytes: 256, maxDataFrameBytes: 512 };
    const frame = fc.oneof(
      fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b)),
      messageLike(['hello', 'read', 'file']).map((m) => encodeMessage(m)),
      fc.nat({ max: 1024 }).map((n) => Buffer.concat([encodeDataHeader(n), Buffer.alloc(Math.min(n, 600), 7)])),
      fc.tuple(fc.integer({ min: 0, max: 255 }), fc.nat()).map(([type, length]) => {
        const header = Buffer.alloc(5);
        header[0] = type;
        header.writeUInt32BE(length >>> 0, 1);
        return header;
      }),
    );
    await check(
      fc.record({ frames: fc.array(frame, { maxLength: 6 }), cuts: fc.array(fc.nat({ max: 64 }), { maxLength: 10 }), acceptData: fc.boolean() }),
      ({ frames, cuts, acceptData }) => {
        const stream = Buffer.concat(frames);
        let dataInFrame = 0;
        const parser = new FrameParser(limits, {
          onMessage: (m) => {
            assert.equal(typeof m, 'object');
            assert.ok(m !== null && !Array.isArray(m));
            assert.equal(typeof m.type, 'string');
            dataInFrame = 0;
          },
          onData: (chunk) => {
            assert.ok(acceptData, 'data only where accepted');
            dataInFrame += chunk.length;
            assert.ok(dataInFrame <= limits.maxDataFrameBytes, 'no data frame over the limit');
          },
          onFrameProgress: (inFrame) => {
            if (inFrame) dataInFrame = 0;
          },
        }, acceptData);
        let at = 0;
        try {
          for (const cut of [...cuts, stream.length]) {
            const end = Math.min(stream.length, at + cut);
            parser.push(stream.subarray(at, end));
            at = end;
          }
          parser.push(stream.subarray(at));
        } catch (err) {
          refusedWith(err, ['PROTOCOL_ERROR', 'TOO_LARGE']);
          // Once failed, it stays failed and quiet.
          parser.push(encodeMessage({ type: 'hello' }));
        }
      },
    );
  });

  it('hello, requests, welcome, entries: a typed value or a coded refusal', async () => {
    await check(messageLike(['hello', 'list', 'stat', 'read', 'tree', 'welcome']), (m) => {
      try {
        const hello = parseHello(m, 4096);
        assert.ok(hello.name.length <= 100 && hello.versions.every(Number.isSafeInteger));
      } catch (err) {
        refusedWith(err, ['PROTOCOL_ERROR', 'TOO_LARGE']);
      }
      try {
        const request = parseRequest(m);
        assert.equal(typeof request.path, 'string');
        if (request.type === 'read') assert.ok(Number.isSafeInteger(request.offset) && request.offset >= 0);
      } catch (err) {
        refusedWith(err, ['PROTOCOL_ERROR', 'TOO_LARGE']);
      }
      try {
        const welcome = parseWelcome(m);
        assert.ok(welcome.roots.every((r) => typeof r === 'string'));
      } catch (err) {
        refusedWith(err, ['PROTOCOL_ERROR', 'TOO_LARGE']);
      }
      for (const candidate of [m, m.entry, ...(Array.isArray(m.entries) ? m.entries : [])]) {
        try {
          const entry = parseEntry(candidate);
          assert.ok(entry.type === 'file' || entry.type === 'dir');
          assert.ok(Number.isSafeInteger(entry.size) && entry.size >= 0);
        } catch (err) {
          refusedWith(err, ['PROTOCOL_ERROR', 'TOO_LARGE']);
        }
      }
    });
  });

  it('an error message from a peer always becomes a coded error with printable text', async () => {
    await check(messageLike(['error']), (m) => {
      const err = errorFromMessage(m);
      assert.ok(err instanceof PeerShareError);
      assert.doesNotMatch(err.message, UNSAFE_ON_SCREEN);
    });
  });

  it('sanitizeForDisplay leaves nothing that moves the cursor, colours or reorders text', async () => {
    await check(fc.string({ unit: 'binary', maxLength: 200 }), (text) => {
      assert.doesNotMatch(sanitizeForDisplay(text), UNSAFE_ON_SCREEN);
    });
  });

  it('invites, peer IDs and addresses: parsed and valid, or INVALID_INVITE / INVALID_ARGUMENT', async () => {
    const id = 'FLRK-XVPC-ERBT-7AQP-Z3BN-TLYI-TBDG-ZZQO-3VEM-QRL3-3FCH-BYWR-FGDQ';
    const invite = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 300 }),
      fc
        .record({
          scheme: fc.constantFrom('peershare://', 'vscode://peershare.peershare/', 'http://', 'javascript:', ''),
          id: fc.oneof(fc.constant(id), fc.constant(id.toLowerCase()), hostilePath),
          addr: fc.array(fc.oneof(fc.constant('127.0.0.1:4000'), fc.constant('[::1]:1'), hostilePath, fc.string()), { maxLength: 3 }),
          token: fc.oneof(fc.constant(undefined), fc.base64String({ maxLength: 200 }), hostilePath),
          name: fc.oneof(fc.constant(undefined), fc.string({ unit: 'binary' })),
        })
        .map(({ scheme, id: i, addr, token, name }) => {
          const q = new URLSearchParams();
          q.set('id', i);
          for (const a of addr) q.append('addr', a);
          if (token !== undefined) q.set('token', token);
          if (name !== undefined) q.set('name', name);
          return `${scheme}pair?${q.toString()}`;
        }),
    );
    await check(invite, (text) => {
      try {
        const parsed = parseInvite(text);
        assert.ok(isPeerId(parsed.peerId));
        assert.ok(parsed.addresses.length > 0 && parsed.addresses.every((a) => parseAddress(a) !== undefined));
        if (parsed.token !== undefined) assert.match(parsed.token, /^[A-Za-z0-9_-]{16,128}$/);
      } catch (err) {
        refusedWith(err, ['INVALID_INVITE']);
      }
      const address = parseAddress(text);
      if (address) assert.ok(address.port >= 1 && address.port <= 65535);
      try {
        assert.ok(isPeerId(normalizePeerId(text)));
      } catch (err) {
        refusedWith(err, ['INVALID_ARGUMENT']);
      }
    });
  });

  it('discovery packets: a checked announcement or nothing', async () => {
    const id = 'FLRK-XVPC-ERBT-7AQP-Z3BN-TLYI-TBDG-ZZQO-3VEM-QRL3-3FCH-BYWR-FGDQ';
    const packet = fc.oneof(
      fc.uint8Array({ maxLength: 1100 }).map((b) => Buffer.from(b)),
      fc
        .record({ t: fc.oneof(fc.constantFrom('announce', 'bye', 'query'), anyJson), id: fc.oneof(fc.constant(id), anyJson), port: fc.oneof(fc.integer(), anyJson), v: fc.oneof(fc.integer(), fc.double(), anyJson), name: fc.oneof(fc.string({ unit: 'binary' }), anyJson) }, { requiredKeys: [] })
        .map((m) => Buffer.from(JSON.stringify(m))),
    );
    await check(packet, (bytes) => {
      const parsed = parseDiscoveryPacket(bytes);
      if (!parsed) return;
      assert.ok(bytes.length <= 1024);
      if (parsed.t !== 'query') assert.ok(isPeerId(parsed.id));
      if (parsed.t === 'announce') {
        assert.ok(Number.isInteger(parsed.port) && parsed.port >= 1 && parsed.port <= 65535);
        assert.ok(Number.isSafeInteger(parsed.version));
        assert.ok(parsed.name.length <= 100);
      }
    });
  });

  it('invite tokens: anything a peer sends is simply not redeemed', async () => {
    const book = new TokenBook();
    const real = book.issue({ ttlMs: 60_000, uses: 1_000_000 });
    await check(fc.oneof(anyJson, fc.string({ unit: 'binary', maxLength: 400 }), fc.constant(real.slice(0, -1)), fc.constant(`${real} `)), (token) => {
      assert.equal(book.redeem(token), false);
    });
    assert.equal(book.redeem(real), true, 'the real token still works');
  });
});

describe('fuzzing: path checks', () => {
  let world: World;
  let share: Share;

  before(async () => {
    world = await buildWorld();
    share = await Share.create({ folders: [world.ws], privatePaths: [world.home] }, resolveLimits());
  });

  it('names a peer sends us: refused with BAD_NAME, or every component lands inside the target', async () => {
    const target = path.join(path.sep, 'target', 'dir');
    await check(hostilePath, (name) => {
      let components: string[];
      try {
        components = checkReceivedName(name);
      } catch (err) {
        refusedWith(err, ['BAD_NAME']);
        return;
      }
      const landed = path.join(target, ...components);
      assert.ok(isInside(target, landed) && landed !== target, `${JSON.stringify(name)} landed at ${landed}`);
      for (const part of components) {
        const folded = foldName(part).replace(/[. ]+$/, '');
        assert.ok(!['.git', '.vscode', ''].includes(folded), `${JSON.stringify(part)} folds to ${JSON.stringify(folded)}`);
        assert.doesNotMatch(folded, /^[^~.]{1,6}~[0-9]+(\.[^.]{1,3})?$/, 'the shape of a Windows short name');
        assert.doesNotMatch(part, /[\\:]|^\.\.?$/);
      }
      // Names take the strict set: no default-ignorable or blank character, even where the display keeps one.
      assert.doesNotMatch(name, INVISIBLE_CHARS);
      assert.doesNotMatch(name, UNSAFE_ON_SCREEN);
    });
  });

  it('paths a peer asks for: a coded refusal, or a regular file inside the share that is not excluded', async () => {
    // Hits the real disk: the world has symlinks out, loops, a FIFO, a device link, a sibling
    // folder with the share's name as prefix, excluded files and the sharer's own key.
    // Every path in the world as the share would name it, and through each symlink, then bent by
    // the aliasing tricks: case, trailing dots and spaces, Unicode forms, extra separators.
    const targets = Object.keys(world.initial).map((rel) => rel.replace(/^ws(?=\/|$)/, 'ws'));
    targets.push('ws/link-out/secret.txt', 'ws/loop/x', 'ws/dev-zero', 'ws/../outside/secret.txt', 'ws/../ws-secret/x', 'ws-secret/x');
    const bend = fc.constantFrom<(p: string) => string>(
      (p) => p,
      (p) => p,
      (p) => p.toUpperCase(),
      (p) => p.replace(/([^/]+)$/, (last) => last.toUpperCase()),
      (p) => `${p}.`,
      (p) => `${p} `,
      (p) => `${p}/`,
      (p) => `${p}/.`,
      (p) => p.replace('/', '//'),
      (p) => p.replace('/', '/./'),
      (p) => p.replace('/', '\\'),
      (p) => `/${p}`,
      (p) => `../${p}`,
      (p) => p.replace(/^ws\//, 'ws/src/../'),
      (p) => p.replace(/\.git/, '.git.'),
      (p) => p.replace(/\.git/, '.GIT '),
      (p) => p.replace(/\.git/, '.\uFF47it'),
      (p) => p.normalize('NFD'),
      (p) => `${p}\u0000.txt`,
      (p) => encodeURIComponent(p),
    );
    const interesting = fc.oneof(
      { weight: 1, arbitrary: hostilePath },
      { weight: 4, arbitrary: fc.tuple(fc.constantFrom(...targets), bend, bend).map(([p, f, g]) => g(f(p))) },
    );
    await check(
      interesting,
      async (remotePath) => {
        let opened: Awaited<ReturnType<Share['openFile']>>;
        try {
          opened = await share.openFile(remotePath);
        } catch (err) {
          refusedWith(err, ['OUTSIDE_SHARE', 'NOT_FOUND', 'NOT_A_FILE', 'NOT_A_DIRECTORY', 'EXCLUDED', 'TOO_LARGE']);
          return;
        }
        try {
          const real = readlinkSync(`/proc/self/fd/${opened.handle.fd}`);
          assert.ok(isInside(world.ws, real), `${JSON.stringify(remotePath)} opened ${real}`);
          assert.ok(opened.stat.isFile());
          const content = await opened.handle.readFile('utf8');
          assert.ok(!content.includes(world.secret), `${JSON.stringify(remotePath)} served a secret`);
        } finally {
          await opened.handle.close();
        }
      },
      Math.max(50, Math.floor(RUNS / 2)),
    );
  });

  it('listing a path a peer names never shows what is outside or excluded', async () => {
    await check(
      fc.array(fc.constantFrom('ws', 'src', '.git', 'link-out', '..', 'ws-secret', 'home', '.', ''), { minLength: 0, maxLength: 3 }).map((p) => p.join('/')),
      async (remotePath) => {
        try {
          for await (const batch of share.list(remotePath)) {
            for (const entry of batch) {
              assert.ok(!['.git', '.env', 'link-out', 'file-link', 'loop', 'fifo', 'dev-zero', 'home'].includes(entry.name), `${remotePath} listed ${entry.name}`);
            }
          }
        } catch (err) {
          refusedWith(err, ['OUTSIDE_SHARE', 'NOT_FOUND', 'NOT_A_DIRECTORY', 'EXCLUDED']);
        }
      },
      Math.max(30, Math.floor(RUNS / 4)),
    );
    // The world is unchanged by all this reading.
    assert.deepEqual(await world.snapshot(), world.initial);
    await fs.access(world.ws);
  });
});
