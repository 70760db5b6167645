import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  ConnectionFrameParser,
  ConnectionFrameType,
  encodeCancelFrame,
  encodeConnectionHeader,
  encodeMessageFrame,
  encodeWindowFrame,
  type FrameHeader,
} from '../../src/core/v2/frames';

const bounds = { frameBytes: 1024, maxEventBytes: 256 };

function collect() {
  const seen: string[] = [];
  const headers: FrameHeader[] = [];
  const parser = new ConnectionFrameParser(bounds, {
    onHeader: (h) => void headers.push(h),
    onMessage: (type, id, m) => void seen.push(`${type} ${id} ${JSON.stringify(m)}`),
    onData: (id, chunk) => void seen.push(`DATA ${id} ${chunk.toString()}`),
    onWindow: (id, increment) => void seen.push(`WINDOW ${id} ${increment}`),
    onCancel: (id) => void seen.push(`CANCEL ${id}`),
  });
  return { parser, seen, headers };
}

/** Joins consecutive DATA slices of one frame, so a split stream reads the same as a whole one. */
function joined(seen: string[]): string[] {
  const out: string[] = [];
  for (const s of seen) {
    const prev = out[out.length - 1];
    const m = /^DATA (\d+) (.*)$/s.exec(s);
    const p = prev === undefined ? null : /^DATA (\d+) (.*)$/s.exec(prev);
    if (m && p && m[1] === p[1]) out[out.length - 1] = `DATA ${m[1]} ${p[2]}${m[2]}`;
    else out.push(s);
  }
  return out;
}

describe('v2 ConnectionFrameParser', () => {
  const stream = Buffer.concat([
    encodeMessageFrame('REQUEST', 1, { type: 'share.read', path: 'a' }),
    encodeMessageFrame('REPLY', 2, { type: 'manifest' }),
    encodeConnectionHeader(ConnectionFrameType.DATA, 5, 2),
    Buffer.from('hello'),
    encodeWindowFrame(1, 65536),
    encodeCancelFrame(3),
    encodeMessageFrame('END', 2, { type: 'end' }),
    encodeMessageFrame('EVENT', 0, { type: 'share.changed' }),
    encodeMessageFrame('CLOSE', 0, { type: 'close' }),
  ]);
  const expected = [
    'REQUEST 1 {"type":"share.read","path":"a"}',
    'REPLY 2 {"type":"manifest"}',
    'DATA 2 hello',
    'WINDOW 1 65536',
    'CANCEL 3',
    'END 2 {"type":"end"}',
    'EVENT 0 {"type":"share.changed"}',
    'CLOSE 0 {"type":"close"}',
  ];

  it('parses every frame type delivered in one piece', () => {
    const { parser, seen } = collect();
    parser.push(stream);
    assert.deepEqual(seen, expected);
  });

  it('parses the same stream split at every byte boundary, and fed one byte at a time', () => {
    for (let cut = 1; cut < stream.length; cut++) {
      const { parser, seen } = collect();
      parser.push(stream.subarray(0, cut));
      parser.push(stream.subarray(cut));
      assert.deepEqual(joined(seen), expected, `cut at ${cut}`);
    }
    const { parser, seen } = collect();
    for (const byte of stream) parser.push(Buffer.from([byte]));
    assert.deepEqual(joined(seen), expected);
  });

  it('checks the header before a payload byte arrives: lengths over the bound are TOO_LARGE', () => {
    const cases: [number, number, number][] = [
      [ConnectionFrameType.REQUEST, 1025, 1],
      [ConnectionFrameType.DATA, 0xffffffff, 1],
      [ConnectionFrameType.EVENT, 257, 0],
      [ConnectionFrameType.CLOSE, 4097, 0],
    ];
    for (const [type, length, id] of cases) {
      const { parser, headers } = collect();
      assert.throws(() => parser.push(encodeConnectionHeader(type as 0x10, length, id)), { code: 'TOO_LARGE' }, `type ${type}`);
      assert.equal(headers.length, 0, 'the connection never saw it');
    }
  });

  it('refuses empty messages and DATA, WINDOW of another size, CANCEL with a payload, ids where they do not belong', () => {
    const cases: Buffer[] = [
      encodeConnectionHeader(ConnectionFrameType.REQUEST, 0, 1),
      encodeConnectionHeader(ConnectionFrameType.DATA, 0, 1),
      encodeConnectionHeader(ConnectionFrameType.WINDOW, 8, 1),
      encodeConnectionHeader(ConnectionFrameType.CANCEL, 1, 1),
      encodeConnectionHeader(ConnectionFrameType.EVENT, 2, 7),
      encodeConnectionHeader(ConnectionFrameType.CLOSE, 2, 1),
      encodeConnectionHeader(ConnectionFrameType.REPLY, 2, 0),
      encodeWindowFrame(1, 0),
      encodeWindowFrame(1, 2 ** 31),
    ];
    for (const bytes of cases) {
      const { parser } = collect();
      assert.throws(() => parser.push(bytes), { code: 'PROTOCOL_ERROR' }, bytes.toString('hex'));
    }
  });

  it('refuses unknown types (v1 frames and plaintext included), invalid UTF-8, non-objects and messages without a type', () => {
    for (const first of [0x00, 0x01, 0x02, 0x18, 0x47, 0xff]) {
      const { parser } = collect();
      assert.throws(() => parser.push(Buffer.from([first, 0, 0, 0, 1, 0, 0, 0, 1, 0x7b])), { code: 'PROTOCOL_ERROR' });
    }
    for (const body of [Buffer.from([0xff, 0xfe, 0x7b]), Buffer.from('[1]'), Buffer.from('"x"'), Buffer.from('{"a":1}'), Buffer.from('{no')]) {
      const { parser } = collect();
      const frame = Buffer.concat([encodeConnectionHeader(ConnectionFrameType.REPLY, body.length, 1), body]);
      assert.throws(() => parser.push(frame), { code: 'PROTOCOL_ERROR' }, body.toString('hex'));
    }
  });

  it('hands DATA on in the slices it arrived in, without gathering them', () => {
    const { parser, seen } = collect();
    parser.push(encodeConnectionHeader(ConnectionFrameType.DATA, 6, 1));
    parser.push(Buffer.from('abc'));
    assert.deepEqual(seen, ['DATA 1 abc'], 'the first half is out before the rest arrives');
    parser.push(Buffer.from('def'));
    assert.deepEqual(seen, ['DATA 1 abc', 'DATA 1 def']);
  });

  it('a refusal from the connection (onHeader) stops the parser for good', () => {
    const seen: string[] = [];
    const parser = new ConnectionFrameParser(bounds, {
      onHeader: (h) => {
        if (h.id === 9) throw new Error('refused');
      },
      onMessage: (_t, id) => void seen.push(String(id)),
      onData: () => undefined,
      onWindow: () => undefined,
      onCancel: () => undefined,
    });
    assert.throws(() => parser.push(Buffer.concat([encodeMessageFrame('REQUEST', 9, { type: 'a.b' }), encodeMessageFrame('REQUEST', 11, { type: 'a.b' })])));
    parser.push(encodeMessageFrame('REQUEST', 13, { type: 'a.b' }));
    assert.deepEqual(seen, []);
  });
});
