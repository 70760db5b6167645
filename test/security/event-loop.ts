/**
 * The longest the event loop went without running a timer (ticking every `tickMs`) while `work`
 * ran, in ms, with what the work gave or threw: the oracle of the attack rounds for a sharer or a
 * client held in one synchronous piece (a stalled mount, a huge folder).
 */
export async function longestStall<T>(work: () => Promise<T>, tickMs = 10): Promise<{ result: Awaited<T> | undefined; error?: unknown; stallMs: number }> {
  let last = performance.now();
  let worst = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, tickMs);
  try {
    const result = await work();
    return { result, stallMs: Math.max(worst, performance.now() - last) };
  } catch (error) {
    return { result: undefined, error, stallMs: Math.max(worst, performance.now() - last) };
  } finally {
    clearInterval(timer);
  }
}
