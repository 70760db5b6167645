import { Duplex } from 'node:stream';

/**
 * An in-memory duplex pair for protocol tests (as ws's test/duplex-pair.js): what one end writes
 * the other reads, in order. A write waits (its callback is held) while the reader's buffer is
 * full, so backpressure works as on a socket pair; when one side ends, so does the other, and
 * destroying one end closes both, as a TCP connection does.
 */
class PairEnd extends Duplex {
  other!: PairEnd;
  /** The other end's write that waits for this end to be read. */
  pendingWrite?: () => void;

  constructor() {
    super({ allowHalfOpen: false });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.other.destroyed) return callback(new Error('the other end is closed'));
    // A copy, as a socket makes: the writer may reuse its buffer once the write has called back.
    if (this.other.push(Buffer.from(chunk))) callback();
    else this.other.pendingWrite = callback;
  }

  override _read(): void {
    const write = this.pendingWrite;
    this.pendingWrite = undefined;
    write?.();
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.other.push(null);
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (!this.other.destroyed) this.other.destroy();
    callback(err);
  }
}

export type DuplexPairEnd = Duplex;

export function duplexPair(): [Duplex, Duplex] {
  const a = new PairEnd();
  const b = new PairEnd();
  a.other = b;
  b.other = a;
  return [a, b];
}
