/**
 * The first of several attempts to succeed (happy eyeballs: the LAN and the DHT tried side by
 * side). Every attempt runs to its end: one that succeeds after the winner is handed to `discard`
 * (it holds a connection nobody will use). If none succeeds, rejects with every attempt's error,
 * in the order the attempts were given.
 */
export function firstToSucceed<T>(attempts: Promise<T>[], discard: (late: T) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    let won = false;
    let pending = attempts.length;
    const errors: unknown[] = new Array(attempts.length);
    if (pending === 0) reject(errors);
    attempts.forEach((attempt, i) => {
      attempt.then(
        (value) => {
          pending--;
          if (won) return discard(value);
          won = true;
          resolve(value);
        },
        (err: unknown) => {
          pending--;
          errors[i] = err;
          if (pending === 0 && !won) reject(errors);
        },
      );
    });
  });
}

/** Waits `ms`, or less if `signal` aborts first (then resolves at once: the caller looks at the signal). */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
