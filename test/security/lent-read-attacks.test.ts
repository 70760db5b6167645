import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { downloadFile, downloadFolder, parseInvite, type PeerConnection, type PeerShareNode } from '../../src/core';
import { blockSizeFor, encodeBlockManifest } from '../../src/core/blocks';
import { chunkBytes } from '../../src/core/cdc';
import { dialTls } from '../../src/core/transport-tls';
import { Connection, type RequestHandler } from '../../src/core/v2/connection';
import { ConnectionFrameType, encodeConnectionHeader, encodeMessageFrame } from '../../src/core/v2/frames';
import { dialV2 } from '../../src/core/v2/handshake';
import type { CapabilityMessage } from '../../src/core/v2/messages';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { RecordingPolicy, acceptAllInto, everything, openNode, waitUntil } from '../core/send-helpers';
import { makePeer, seededBytes, tempDir } from '../helpers';
import { HOSTILE_MTIME_MS, type ReplierV2 } from '../hostile';
import { attackKit } from './attack-kit';

/**
 * A connection reads each TLS record into ONE reused buffer (src/core/reused-read-buffer.ts): the
 * bytes given to Connection.receive() are lent for the call, the next read overwrites them. These
 * attacks come from the peer, over real TLS on loopback: it cuts its frames into records of its
 * choosing (1 byte, a frame header in three pieces, a payload across a dozen records; the
 * "shredder" below re-writes everything the peer's own Connection writes, one awaited write per
 * record) and follows a payload with records of other bytes at the same offsets of the buffer,
 * while the victim's consumer holds what it was given. Both directions: the dialer reading a
 * download, and a serve (the acceptor) reading what a sender sends it. Oracles: every message
 * and every byte the victim keeps, as the peer meant them; the victim's disk (a download that
 * lands is the sharer's file byte for byte; no block lands that does not match its hash); and a
 * spy on Connection.receive that proves the fast path was taken (lent reads, one per record).
 */

const KiB = 1024;
const kit = attackKit();
const { hostile } = kit;

// ---- the spy: lent reads per Connection (receive(chunk, true) is the reused-buffer callback)

type Receiving = { receive(this: Connection, chunk: Buffer, lent?: boolean): void };
const proto = Connection.prototype as unknown as Receiving;
const originalReceive = proto.receive;
const lentReads = new Map<Connection, number>();
before(() => {
  proto.receive = function (this: Connection, chunk: Buffer, lent = false): void {
    if (lent) lentReads.set(this, (lentReads.get(this) ?? 0) + 1);
    originalReceive.call(this, chunk, lent);
  };
});
after(() => {
  proto.receive = originalReceive;
});

/** The victim's connection read through the reused buffer, at least `reads` times. */
function assertLent(connection: Connection, reads: number, who: string): void {
  assert.equal(connection.stats.readsIntoReusedBuffer, true, `${who} reads into the reused buffer (the fast path is on)`);
  const seen = lentReads.get(connection) ?? 0;
  assert.ok(seen >= reads, `${who} had ${seen} lent reads, expected at least ${reads}: the records were not cut as the attack meant`);
}

// ---- the shredder: every write of the peer's stream goes out as records of the sizes given

/** Record sizes that put boundaries everywhere: inside a header, a JSON string, a block. */
const ODD = [1, 1, 1, 2, 3, 5, 7, 9, 11, 13, 17, 64, 1, 255, 4093, 1, 16384, 3, 9, 10, 1000, 5, 2, 8191];

interface Shredder {
  /** Records written so far. */
  readonly records: number;
  /** Resolves once everything written so far has left, record by record. */
  flushed(): Promise<void>;
}

const shredders = new WeakMap<Duplex, Shredder>();

/**
 * From now on what is written to `stream` leaves in records of `sizes` (cycled): each piece is one
 * write whose callback is awaited before the next, so TLS makes it one record and the victim one
 * read. The writer's own callbacks are called once its bytes have left (it may reuse its buffer).
 */
function shred(stream: Duplex, sizes: number[] = ODD): Shredder {
  const known = shredders.get(stream);
  if (known) return known;
  const write = stream.write.bind(stream) as (chunk: Buffer, cb: (err?: Error | null) => void) => boolean;
  const end = stream.end.bind(stream) as () => void;
  let queue = Promise.resolve();
  let at = 0;
  const shredder = {
    records: 0,
    flushed: () => queue,
  };
  const enqueue = (bytes: Buffer): Promise<void> =>
    (queue = queue.then(async () => {
      for (let offset = 0; offset < bytes.length && !stream.destroyed; ) {
        const n = Math.min(sizes[at++ % sizes.length], bytes.length - offset);
        await new Promise<void>((resolve) => write(bytes.subarray(offset, offset + n), () => resolve()));
        shredder.records++;
        offset += n;
      }
    }));
  const own = stream as unknown as Record<string, unknown>;
  own.write = (chunk: Buffer, encoding?: unknown, cb?: unknown): boolean => {
    const callback = (typeof encoding === 'function' ? encoding : cb) as ((err?: Error | null) => void) | undefined;
    void enqueue(Buffer.from(chunk)).then(() => callback?.(null));
    return true;
  };
  own.end = (): Duplex => {
    void queue.then(() => end());
    return stream;
  };
  shredders.set(stream, shredder);
  return shredder;
}

/** Writes `bytes` as ONE record (≤ 16 KiB) and waits until it left. */
function record(stream: Duplex, bytes: Buffer): Promise<void> {
  assert.ok(bytes.length <= 16 * KiB);
  return new Promise((resolve) => stream.write(bytes, () => resolve()));
}

/** An EVENT of a capability nobody serves (ignored by the victim, spec 5.4): `length` bytes of JSON the peer chooses. */
function padEvent(length: number, fill = 'E'): Buffer {
  const skeleton = JSON.stringify({ type: 'zzz.pad', p: '' });
  return encodeMessageFrame('EVENT', 0, { type: 'zzz.pad', p: fill.repeat(Math.max(1, length - 9 - skeleton.length)) });
}

const victimConnection = (conn: PeerConnection): Connection => conn.share.connection;

/** The id of the request a hostile's handler is answering: the highest its Connection on `stream` has seen. */
function incomingIdOf(stream: Duplex): number {
  const mine = [...lentReads.keys()].find((c) => (c as unknown as { stream: Duplex }).stream === stream);
  assert.ok(mine, "the hostile's own connection reads lent chunks too");
  return (mine as unknown as { highestPeerId: number }).highestPeerId;
}

/** A name of `length` characters, different in every position (so a shifted or repeated piece shows). */
function nameOf(i: number, length: number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éü✓-_';
  let out = `${i}.`;
  for (let k = 0; out.length < length; k++) out += alphabet[(i * 31 + k * 7 + ((k * k) % 13)) % alphabet.length];
  return out;
}

const sum = (parts: Buffer[]): Buffer => Buffer.concat(parts);

// ---- the content the sharers hold

const SMALL = seededBytes(3000, 11); // one block, inside one record
const TAIL = seededBytes(2 * 128 * KiB + 37, 12); // two whole blocks that straddle many records, and a 37-byte last block
const INLINE = Array.from({ length: 24 }, (_, i) => ({ name: `f${String(i).padStart(2, '0')}.bin`, content: seededBytes((i * 977) % 5001, 100 + i) }));

function fileRecord(name: string, content: Buffer): { type: string; [member: string]: unknown } {
  const manifest = manifestOfBytes(content, blockSizeFor(content.length));
  return { type: 'file', path: name, size: content.length, mtimeMs: HOSTILE_MTIME_MS, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') };
}

/** An honest share/1 (or send/1) answerer of `files` and the folder `dir` of INLINE files; `big` a fileRef in it. */
async function honestAnswer(type: string, request: Record<string, unknown>, reply: Pick<ReplierV2, 'message' | 'data'>, files: Record<string, Buffer>): Promise<Record<string, unknown>> {
  const wanted = String(request.path).split('/').slice(1).join('/');
  const op = type.slice(type.indexOf('.') + 1);
  if (op === 'tree') {
    for (const { name, content } of INLINE) {
      await reply.message(fileRecord(name, content));
      await reply.data(content);
    }
    await reply.message({ type: 'fileRef', path: 'big.bin', size: TAIL.length, mtimeMs: HOSTILE_MTIME_MS });
    return { count: INLINE.length + 1 };
  }
  const content = files[wanted] ?? (wanted.endsWith('big.bin') ? TAIL : undefined);
  if (!content) throw Object.assign(new Error('not found'), { code: 'NOT_FOUND' });
  if (op === 'stat') return { entry: { name: path.basename(wanted), type: 'file', size: content.length, mtimeMs: HOSTILE_MTIME_MS } };
  const manifest = manifestOfBytes(content, blockSizeFor(content.length));
  if (op === 'manifest') {
    await reply.message({ type: 'manifest', size: manifest.size, mtimeMs: HOSTILE_MTIME_MS, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') });
    await reply.data(encodeBlockManifest(manifest));
    return {};
  }
  if (op === 'read') {
    for (const [first, end] of request.blocks as [number, number][]) {
      for (let i = first; i < end; i++) await reply.data(content.subarray(i * manifest.blockSize, Math.min((i + 1) * manifest.blockSize, content.length)));
    }
    return {};
  }
  throw new Error(`unexpected ${type}`);
}

async function assertSameFile(file: string, content: Buffer, what: string): Promise<void> {
  const landed = await fs.readFile(file);
  assert.equal(landed.length, content.length, `${what}: ${landed.length} bytes landed, not ${content.length}`);
  if (!landed.equals(content)) {
    let at = 0;
    while (landed[at] === content[at]) at++;
    assert.fail(`${what}: byte ${at} on disk is ${landed[at]}, the sharer's is ${content[at]} (a lent slice was kept and overwritten)`);
  }
}

describe('lent reads: messages cut across records (ConnectionFrameParser keeps a copy of every piece of a payload that spans reads)', () => {
  it('a share.list REPLY of ~50 KB and a share.stat END cut into records of 1 to 16384 bytes (headers in pieces too) arrive exactly', async () => {
    const names = Array.from({ length: 700 }, (_, i) => nameOf(i, 20 + (i % 90)));
    let shredder: Shredder | undefined;
    const longName = nameOf(7, 200);
    const { conn } = await hostile(async (req, reply) => {
      shredder = shred(reply.stream);
      if (req.type === 'share.list') {
        await reply.message({ type: 'entries', entries: names.slice(0, 500).map((name, i) => ({ name, type: 'file', size: i * 1000, mtimeMs: HOSTILE_MTIME_MS + i })) });
        await reply.message({ type: 'entries', entries: names.slice(500).map((name, i) => ({ name, type: 'dir', size: 0, mtimeMs: HOSTILE_MTIME_MS + i })) });
        return { count: names.length };
      }
      return { entry: { name: longName, type: 'file', size: 123_456_789, mtimeMs: HOSTILE_MTIME_MS } };
    });
    const listed = await conn.share.list('ws');
    assert.deepEqual(
      listed.map((e) => e.name),
      names,
    );
    assert.deepEqual(
      listed.slice(0, 3).map((e) => [e.type, e.size, e.mtimeMs]),
      [
        ['file', 0, HOSTILE_MTIME_MS],
        ['file', 1000, HOSTILE_MTIME_MS + 1],
        ['file', 2000, HOSTILE_MTIME_MS + 2],
      ],
    );
    for (let round = 0; round < 5; round++) {
      const entry = await conn.share.stat(`ws/${longName}`);
      assert.equal(entry.name, longName);
      assert.equal(entry.size, 123_456_789);
    }
    await shredder!.flushed();
    assertLent(victimConnection(conn), shredder!.records, 'the dialer');
  });

  it('an EVENT and a CLOSE cut into records of 1 to 16384 bytes reach the victim as sent', async () => {
    const text = Array.from({ length: 400 }, (_, i) => String.fromCharCode(65 + ((i * 7) % 26))).join('');
    const event = { type: 'share.changed', path: nameOf(3, 150), pad: nameOf(4, 30_000) };
    let shredder: Shredder | undefined;
    const { conn } = await hostile(async (req, reply) => {
      shredder = shred(reply.stream);
      reply.raw(encodeMessageFrame('EVENT', 0, event));
      reply.raw(encodeMessageFrame('CLOSE', 0, { type: 'close', code: 'TOO_LARGE', message: text }));
      return new Promise<never>(() => undefined);
    });
    const connection = victimConnection(conn);
    const events: unknown[] = [];
    connection.onEvent((e) => events.push(e));
    const closed = new Promise<Error | undefined>((resolve) => connection.onClose(resolve));
    await conn.share.stat('ws/x').catch(() => undefined);
    const reason = await closed;
    assert.deepEqual(events, [event], 'the EVENT arrived whole and once');
    assert.equal((reason as { code?: string }).code, 'TOO_LARGE');
    assert.ok(reason?.message.endsWith(`says: ${text}`), `the CLOSE's message arrived as sent: ${reason?.message.slice(0, 200)}`);
    assertLent(connection, shredder!.records, 'the dialer');
  });
});

describe('lent reads: DATA the victim keeps past the read', () => {
  it('an answer read without an AnswerReader: its DATA parts wait while later records reuse the buffer, and are still the bytes sent', async () => {
    const pattern = (offset: number): number => (offset * 13 + (offset >> 8)) & 0xff;
    const sizes = [1, 2, 9, 100, 4093, 17, 16384, 3, 20_000, 5, 1000];
    let shredder: Shredder | undefined;
    let sent = 0;
    const { conn } = await hostile(async (_req, reply) => {
      shredder = shred(reply.stream);
      for (const size of sizes) {
        const chunk = Buffer.alloc(size);
        for (let i = 0; i < size; i++) chunk[i] = pattern(sent + i);
        sent += size;
        await reply.data(chunk);
      }
      // Overwrites the start of the buffer once more after the last DATA.
      reply.raw(padEvent(16 * KiB));
      return {};
    });
    const connection = victimConnection(conn);
    const answer = connection.request({ type: 'share.blob' } as unknown as CapabilityMessage);
    // The consumer is busy until everything (and the END) is in: every part waits.
    await (await until(() => shredder)).flushed();
    await sleep(100);
    const chunks: Buffer[] = [];
    for await (const part of answer) if (part.kind === 'data') chunks.push(part.chunk);
    const got = sum(chunks);
    assert.equal(got.length, sent);
    for (let i = 0; i < got.length; i++) if (got[i] !== pattern(i)) assert.fail(`byte ${i} of the answer is ${got[i]}, not ${pattern(i)}: a waiting part was overwritten by a later read`);
    assert.ok(chunks.length > 20, `the DATA came in ${chunks.length} reads (the attack cut it)`);
    assertLent(connection, shredder!.records, 'the dialer');
  });

  it('the answer machines (manifest, blocks, folder stream, chunk list with inline bytes, chunks) own what they hand on: a consumer that holds it while later reads arrive sees the true bytes', async () => {
    // An honest sharer: Node cuts its frames into 16 KiB records wherever they fall; the consumer is slow.
    const folder = tempDir('peershare-lent-');
    const inlineDir = path.join(folder, 'dir');
    await fs.mkdir(inlineDir);
    for (const { name, content } of INLINE) await fs.writeFile(path.join(inlineDir, name), content);
    const CHUNKY = seededBytes(12 * KiB, 13); // within MAX_INLINE_CHUNKS_FILE_BYTES: its bytes come with the list
    const CHUNKED = seededBytes(600 * KiB, 14);
    await fs.writeFile(path.join(folder, 'small.bin'), SMALL);
    await fs.writeFile(path.join(folder, 'tail.bin'), TAIL);
    await fs.writeFile(path.join(folder, 'chunky.bin'), CHUNKY);
    await fs.writeFile(path.join(folder, 'chunked.bin'), CHUNKED);
    const { conn } = await kit.sharerOf([folder]);
    const root = path.basename(folder);
    const connection = victimConnection(conn);
    const hold = (): Promise<void> => sleep(150);

    for (const [name, content] of [['small.bin', SMALL], ['tail.bin', TAIL]] as const) {
      const { manifest } = await conn.share.manifest(`${root}/${name}`);
      const truth = manifestOfBytes(content, blockSizeFor(content.length));
      // The list was taken from DATA, END arrived after it: the hashes must be the list's.
      assert.ok(manifest.fileHash.equals(truth.fileHash), `${name}: the manifest's fileHash`);
      assert.deepEqual(manifest.blockHashes.map((h) => h.toString('hex')), truth.blockHashes.map((h) => h.toString('hex')), `${name}: the block hashes kept`);
      const blocks = conn.share.readBlocks(`${root}/${name}`, manifest, manifest.blockHashes.map((_, i) => i))[Symbol.asyncIterator]();
      const kept: Buffer[] = [];
      for (let step = await blocks.next(); !step.done; step = await blocks.next()) {
        kept.push(step.value.data);
        await hold(); // the rest of the answer, and its END, are read meanwhile
      }
      await hold();
      assert.ok(sum(kept).equals(content), `${name}: the verified blocks the consumer holds are still the file's bytes`);
    }

    const records = conn.share.tree(`${root}/dir`)[Symbol.asyncIterator]();
    const inline: Record<string, Buffer> = {};
    for (let step = await records.next(), n = 0; !step.done; step = await records.next(), n++) {
      if (step.value.kind === 'file') inline[step.value.path] = step.value.data;
      if (n === 0) await hold(); // the rest of the stream is read meanwhile
    }
    await hold();
    for (const { name, content } of INLINE) assert.ok(inline[name]?.equals(content), `inline file ${name}: the bytes held are the file's`);

    const chunky = await conn.share.chunks(`${root}/chunky.bin`, { inline: true });
    await hold();
    assert.ok(chunky.data?.equals(CHUNKY), 'the inline bytes of share.chunks');
    const list = await conn.share.chunks(`${root}/chunked.bin`);
    await hold();
    const truth = { chunks: chunkBytes(CHUNKED) };
    assert.deepEqual(list.chunks.map((c) => [c.offset, c.length, c.hash.toString('hex')]), truth.chunks.map((c) => [c.offset, c.length, c.hash.toString('hex')]), 'the chunk records kept');
    const chunks = conn.share.readChunks(`${root}/chunked.bin`, list, list.chunks.map((_, i) => i))[Symbol.asyncIterator]();
    const got: Buffer[] = [];
    for (let step = await chunks.next(); !step.done; step = await chunks.next()) {
      got.push(step.value.data);
      if (got.length === 1) await hold();
    }
    await hold();
    assert.ok(sum(got).equals(CHUNKED), 'the chunks held are the file\'s bytes');
    assertLent(connection, 50, 'the dialer');
  });
});

describe('lent reads: what lands on disk', () => {
  it('a download from a sharer that shreds every frame (blocks straddling 1-byte records, the folder stream, its inline files) lands byte for byte', async () => {
    let shredder: Shredder | undefined;
    const files = { 'small.bin': SMALL, 'tail.bin': TAIL };
    const { conn } = await hostile((req, reply) => {
      shredder = shred(reply.stream);
      return honestAnswer(String(req.type), req, reply, files);
    });
    const dest = tempDir('peershare-lent-dest-');
    for (const [name, content] of Object.entries(files)) {
      await downloadFile(conn, `ws/${name}`, path.join(dest, name));
      await assertSameFile(path.join(dest, name), content, name);
    }
    await downloadFolder(conn, 'ws/dir', path.join(dest, 'dir'));
    for (const { name, content } of INLINE) await assertSameFile(path.join(dest, 'dir', name), content, `dir/${name}`);
    await assertSameFile(path.join(dest, 'dir', 'big.bin'), TAIL, 'dir/big.bin');
    assertLent(victimConnection(conn), shredder!.records, 'the dialer');
  });

  it("a sharer that follows each verified inline file and block with a record of its own bytes at the same offsets: those bytes never land (BLAKE3 checked what is kept, not a lent view)", async () => {
    // Each payload in ONE record (header and bytes), then a 16 KiB record of "E": a kept view of the
    // payload would now read as the attacker's bytes, after its hash was checked.
    const tiny = Array.from({ length: 8 }, (_, i) => ({ name: `d${i}/t${i}.txt`, content: seededBytes(200 + i * 250, 300 + i) }));
    const { conn } = await hostile(async (req, reply) => {
      const id = incomingIdOf(reply.stream);
      if (req.type === 'share.tree') {
        // One write: every file (REPLY and DATA) in the first 16 KiB record, then 40 KiB of "E" in
        // the records after it, read before the victim's disk has taken the first file.
        const frames = tiny.flatMap(({ name, content }) => [encodeMessageFrame('REPLY', id, fileRecord(name, content)), encodeConnectionHeader(ConnectionFrameType.DATA, content.length, id), content]);
        const files = Buffer.concat(frames);
        assert.ok(files.length <= 16 * KiB);
        await new Promise((resolve) => reply.stream.write(Buffer.concat([files, padEvent(16 * KiB - files.length), padEvent(40 * KiB)]), resolve));
        await sleep(50);
        await record(reply.stream, encodeMessageFrame('END', id, { type: 'end', count: tiny.length }));
        return new Promise<never>(() => undefined);
      }
      if (req.type === 'share.read') {
        await record(reply.stream, Buffer.concat([encodeConnectionHeader(ConnectionFrameType.DATA, SMALL.length, id), SMALL]));
        await record(reply.stream, padEvent(16 * KiB));
        await sleep(50);
        await record(reply.stream, encodeMessageFrame('END', id, { type: 'end' }));
        return new Promise<never>(() => undefined);
      }
      return honestAnswer(String(req.type), req, reply, { 'small.bin': SMALL });
    });
    const dest = tempDir('peershare-lent-dest-');
    await downloadFile(conn, 'ws/small.bin', path.join(dest, 'small.bin'));
    await assertSameFile(path.join(dest, 'small.bin'), SMALL, 'small.bin');
    await downloadFolder(conn, 'ws/dir', path.join(dest, 'dir'));
    for (const { name, content } of tiny) await assertSameFile(path.join(dest, 'dir', name), content, `dir/${name}`);
    assertLent(victimConnection(conn), 5, 'the dialer');
  });
});

describe('lent reads: a serve (the acceptor) receiving a send from a sender that shreds its frames', () => {
  let receiver: PeerShareNode;
  let invite: string;
  let policy: RecordingPolicy;
  let inbox: string;

  before(async () => {
    receiver = await openNode('receiver');
    const active = await receiver.share({ folders: [tempDir()], host: '127.0.0.1', port: 0 });
    invite = active.server.createInvite({ uses: 10 });
    inbox = tempDir('peershare-lent-inbox-');
    policy = new RecordingPolicy(acceptAllInto(inbox));
    receiver.setReceivePolicy(policy);
  });
  after(async () => {
    await receiver.close();
  });

  it('the offer (its note, its names), the file blocks, the folder stream and its inline files land on the serve byte for byte', async () => {
    const { identity } = await makePeer();
    const parsed = parseInvite(invite);
    const remote = await dialTls({ identity, address: parsed.addresses[0], timeoutMs: 5000 });
    let done: Record<string, unknown> | undefined;
    const files = { 'small.bin': SMALL, 'tail.bin': TAIL };
    const handler: RequestHandler = async (request, reply) => {
      if (request.type === 'send.answer') return {};
      if (request.type === 'send.done') {
        done = request;
        return {};
      }
      return honestAnswer(request.type, request, reply, files);
    };
    const { connection } = await dialV2(remote, { expectedPeerId: parsed.peerId, name: 'sender', token: parsed.token, serve: { 'send/1': { params: {}, handler } } });
    const shredder = shred(remote.stream);
    const note = Array.from({ length: 200 }, (_, i) => 'aé✓Z'[(i * 3) % 4]).join('');
    const offerEntries = [
      { name: nameOf(1, 120) + '.bin', type: 'file', size: SMALL.length, mtimeMs: HOSTILE_MTIME_MS, fileHash: manifestOfBytes(SMALL, blockSizeFor(SMALL.length)).fileHash.toString('hex') },
      { name: 'tail.bin', type: 'file', size: TAIL.length, mtimeMs: HOSTILE_MTIME_MS, fileHash: manifestOfBytes(TAIL, blockSizeFor(TAIL.length)).fileHash.toString('hex') },
      { name: 'dir', type: 'dir', size: TAIL.length + INLINE.reduce((n, f) => n + f.content.length, 0), files: INLINE.length + 1 },
    ];
    // The outbox path is `offer/name`: the long name is served as small.bin.
    files[`${offerEntries[0].name}` as 'small.bin'] = SMALL;
    const received = policy.nextResult();
    await connection.request({ type: 'send.offer', offer: 'lentoffer00000001', note, entries: offerEntries } as unknown as CapabilityMessage).result;
    const result = await received;
    assert.deepEqual(result.entries.map((e) => e.status), ['received', 'received', 'received'], JSON.stringify(result.entries));
    const offer = policy.offers[policy.offers.length - 1];
    assert.equal(offer.note, note, 'the note arrived as sent');
    assert.deepEqual(offer.entries.map((e) => e.name), offerEntries.map((e) => e.name));
    await assertSameFile(path.join(inbox, offerEntries[0].name), SMALL, 'the sent small file');
    await assertSameFile(path.join(inbox, 'tail.bin'), TAIL, 'the sent tail.bin');
    for (const { name, content } of INLINE) await assertSameFile(path.join(inbox, 'dir', name), content, `the sent dir/${name}`);
    await assertSameFile(path.join(inbox, 'dir', 'big.bin'), TAIL, 'the sent dir/big.bin');
    assert.equal((await everything(inbox)).length > 0, true);
    await waitUntil(() => done !== undefined);
    // The serve's side of this connection (the acceptor) read through the reused buffer, one read per record at least.
    const serveSide = [...lentReads.keys()].find((c) => c !== connection && c.peerId === identity.peerId);
    assert.ok(serveSide, "the serve's connection from this sender read lent chunks");
    await shredder.flushed();
    assertLent(serveSide, shredder.records, 'the serve (acceptor)');
    connection.close();
  });
});

async function until<T>(get: () => T | undefined): Promise<T> {
  for (;;) {
    const value = get();
    if (value !== undefined) return value;
    await sleep(5);
  }
}
