/**
 * At most `limit` tasks running at once, for work that waits on round trips (a sync's files: each
 * is two requests on one multiplexed connection, so several in flight hide the latency). The first
 * task to fail stops new ones from starting; drain() waits for those running and throws that
 * failure.
 */
export class WorkQueue {
  private readonly running = new Set<Promise<void>>();
  private failure: { err: unknown } | undefined;

  constructor(private readonly limit: number) {}

  /** Starts `task` once there is room (waiting for one to finish); throws an earlier task's failure instead. */
  async add(task: () => Promise<void>): Promise<void> {
    while (this.running.size >= this.limit) await Promise.race(this.running);
    if (this.failure) throw this.failure.err;
    const running: Promise<void> = task()
      .catch((err: unknown) => {
        this.failure ??= { err };
      })
      .finally(() => this.running.delete(running));
    this.running.add(running);
  }

  /** Waits for every task started; throws the first failure. */
  async drain(): Promise<void> {
    while (this.running.size > 0) await Promise.race(this.running);
    if (this.failure) throw this.failure.err;
  }
}
