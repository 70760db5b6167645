/**
 * Reusable buffers for the DATA frames of a file being sent. A frame freshly allocated for every
 * 1 MiB chunk is garbage as soon as it is written, and V8 collects memory outside its heap lazily:
 * tens of MiB of spent frames pile up during a large transfer. A frame is taken here, filled,
 * written, and given back once the socket has taken the bytes (the write's callback: TLS has
 * encrypted them by then), so a transfer holds a few frames whatever the file's size.
 */
export class FramePool {
  private readonly free: Buffer[] = [];

  constructor(
    readonly frameBytes: number,
    private readonly keep: number,
  ) {}

  /** A buffer of exactly `bytes` (at most frameBytes), backed by a pooled frame. */
  take(bytes: number): Buffer {
    const frame = this.free.pop() ?? Buffer.allocUnsafe(this.frameBytes);
    return bytes === frame.length ? frame : frame.subarray(0, bytes);
  }

  /** Gives a frame from `take` back; only call once nothing will read or write it again. */
  give(frame: Buffer): void {
    const whole = frame.length === this.frameBytes ? frame : Buffer.from(frame.buffer, frame.byteOffset, this.frameBytes);
    if (this.free.length < this.keep) this.free.push(whole);
  }
}
