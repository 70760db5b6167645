/**
 * A token bucket: `burst` tokens at first, refilled at `perSecond`, never above `burst`. What a
 * peer may do at a rate (events, handshakes per source) takes a token each time.
 */
export class TokenBucket {
  private tokens: number;
  private at: number;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    now = performance.now(),
  ) {
    this.tokens = burst;
    this.at = now;
  }

  /** Takes one token; false (nothing taken) when there is not a whole one. */
  take(now = performance.now()): boolean {
    this.refill(now);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Gives one token back (up to the burst). */
  give(now = performance.now()): void {
    this.refill(now);
    this.tokens = Math.min(this.burst, this.tokens + 1);
  }

  /** Takes `tokens` more, into debt down to `-maxDebt`: a costly act waits longer for the next. */
  charge(tokens: number, maxDebt: number, now = performance.now()): void {
    this.refill(now);
    this.tokens = Math.max(-maxDebt, this.tokens - tokens);
  }

  /** Back at a full burst: as if it had never been used. */
  isFull(now = performance.now()): boolean {
    return this.tokens + ((now - this.at) / 1000) * this.perSecond >= this.burst;
  }

  private refill(now: number): void {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.perSecond);
    this.at = now;
  }
}
