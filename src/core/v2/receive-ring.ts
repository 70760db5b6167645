/**
 * Where a request's DATA waits for its consumer. A stream's read buffers are fresh memory at every
 * read; one kept in a queue while the consumer is busy (a 4 MiB block being written) outlives two
 * scavenges, is promoted, and is then freed only by a full collection: on a 4 GiB download that
 * was 40–60 MiB of dead read buffers in the receiver's peak (docs/benchmarks.md, "Memory"). So
 * bytes that must wait are copied here at once and the read buffer dies young; the ring is reused.
 *
 * Bytes leave in the order they came (a request's parts are consumed in order), so one buffer
 * used as a ring is enough; its capacity is the request's window, which the credit check bounds
 * the unconsumed bytes by (docs/protocol-v2.md 3.4).
 */
export class ReceiveRing {
  private readonly buffer: Buffer;
  private start = 0;
  private used = 0;

  constructor(readonly capacity: number) {
    this.buffer = Buffer.allocUnsafeSlow(capacity);
  }

  get bytesUsed(): number {
    return this.used;
  }

  /**
   * Copies `chunk` in and returns where it now is: one slice, or two where it wraps. Undefined if
   * it does not fit (the caller keeps its own copy then).
   */
  put(chunk: Buffer): Buffer[] | undefined {
    if (chunk.length > this.capacity - this.used) return undefined;
    if (this.used === 0) this.start = 0;
    const slices: Buffer[] = [];
    for (let offset = 0; offset < chunk.length; ) {
      const end = this.start + this.used;
      const at = end % this.capacity;
      // Free room runs to the buffer's end, or (once wrapped) up to the oldest byte.
      const room = end < this.capacity ? this.capacity - at : this.start - at;
      const take = Math.min(room, chunk.length - offset);
      chunk.copy(this.buffer, at, offset, offset + take);
      slices.push(this.buffer.subarray(at, at + take));
      this.used += take;
      offset += take;
    }
    return slices;
  }

  /** The oldest `bytes` were consumed; their room may be written again. */
  release(bytes: number): void {
    if (bytes > this.used) throw new RangeError(`released ${bytes} bytes of ${this.used} in use`);
    this.start = (this.start + bytes) % this.capacity;
    this.used -= bytes;
  }

  clear(): void {
    this.start = 0;
    this.used = 0;
  }
}
