import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FrameParser, encodeDataHeader, encodeMessage } from '../../src/core/frames';

const limits = { maxMessageBytes: 1024, maxDataFrameBytes: 4096 };

function collect(acceptData = true) {
  const messages: Record<string, unknown>[] = [];
  const data: Buffer[] = [];
  const parser = new FrameParser(limits, { onMessage: (m) => messages.push(m), onData: (c) => data.push(Buffer.from(c)) }, acceptData);
  return { parser, messages, data };
}

describe('FrameParser', () => {
  const stream = Buffer.concat([
    encodeMessage({ type: 'file', path: 'a/b', size: 5 }),
    encodeDataHeader(5),
    Buffer.from('hello'),
    encodeMessage({ type: 'fileEnd', sha256: 'x' }),
  ]);

  it('parses messages and data delivered in one piece', () => {
    const { parser, messages, data } = collect();
    parser.push(stream);
    assert.deepEqual(messages.map((m) => m.type), ['file', 'fileEnd']);
    assert.equal(Buffer.concat(data).toString(), 'hello');
  });

  it('parses the same stream split at every byte boundary', () => {
    for (let cut = 1; cut < stream.length; cut++) {
      const { parser, messages, data } = collect();
      parser.push(stream.subarray(0, cut));
      parser.push(stream.subarray(cut));
      assert.deepEqual(messages.map((m) => m.type), ['file', 'fileEnd'], `cut at ${cut}`);
      assert.equal(Buffer.concat(data).toString(), 'hello', `cut at ${cut}`);
    }
  });

  it('parses a stream fed one byte at a time', () => {
    const { parser, messages, data } = collect();
    for (const byte of stream) parser.push(Buffer.from([byte]));
    assert.equal(messages.length, 2);
    assert.equal(Buffer.concat(data).toString(), 'hello');
  });

  it('refuses a message length over the limit before reading its body', () => {
    const { parser } = collect();
    const header = Buffer.from([0x01, 0xff, 0xff, 0xff, 0xff]);
    assert.throws(() => parser.push(header), { code: 'TOO_LARGE' });
  });

  it('refuses a data frame over the limit', () => {
    const { parser } = collect();
    assert.throws(() => parser.push(encodeDataHeader(4097)), { code: 'TOO_LARGE' });
  });

  it('refuses data frames where none are accepted (a client sending data to a server)', () => {
    const { parser } = collect(false);
    assert.throws(() => parser.push(encodeDataHeader(1)), { code: 'PROTOCOL_ERROR' });
  });

  it('refuses unknown frame types, such as plaintext HTTP', () => {
    const { parser } = collect();
    assert.throws(() => parser.push(Buffer.from('GET / HTTP/1.1\r\n\r\n')), { code: 'PROTOCOL_ERROR' });
  });

  it('refuses invalid UTF-8, non-objects and messages without a type', () => {
    const bodies = [Buffer.from([0xff, 0xfe, 0x7b]), Buffer.from('[1,2]'), Buffer.from('"x"'), Buffer.from('{"a":1}'), Buffer.from('{not json')];
    for (const body of bodies) {
      const { parser } = collect();
      const header = Buffer.from([0x01, 0, 0, 0, body.length]);
      assert.throws(() => parser.push(Buffer.concat([header, body])), { code: 'PROTOCOL_ERROR' }, body.toString('hex'));
    }
  });

  it('stays failed after the first violation', () => {
    const { parser, messages } = collect();
    assert.throws(() => parser.push(Buffer.from([0x09, 0, 0, 0, 0])));
    parser.push(encodeMessage({ type: 'ok' }));
    assert.equal(messages.length, 0);
  });
});
