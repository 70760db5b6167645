import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PeerShareError } from '../../src/core/errors';

/**
 * What the fuzz suites share: each property runs FUZZ_RUNS cases (default: the suite's own) or
 * until FUZZ_SECONDS (default 2) pass, so CI stays fast and `npm run fuzz` runs far longer; the
 * seed is printed with any failure so it can be replayed with FUZZ_SEED.
 */
export function fuzzer(defaultRuns: number): {
  runs: number;
  /** `examples` run first, then random cases (fast-check's `examples`). */
  check<T>(arbitrary: fc.Arbitrary<T>, predicate: (value: T) => void | Promise<void>, runs?: number, examples?: T[]): Promise<void>;
  cases(): number;
} {
  const runs = Number(process.env.FUZZ_RUNS ?? defaultRuns);
  const seconds = Number(process.env.FUZZ_SECONDS ?? 2);
  const seed = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
  let total = 0;
  return {
    runs,
    cases: () => total,
    async check(arbitrary, predicate, numRuns = runs, examples = []) {
      const property = fc.asyncProperty(arbitrary, async (value) => {
        await predicate(value);
      });
      const details = await fc.check(property, { numRuns, interruptAfterTimeLimit: seconds * 1000, markInterruptAsFailure: false, seed, examples: examples.map((example) => [example] as [typeof example]) });
      total += details.numRuns;
      if (details.failed) {
        throw new Error(`Counterexample ${fc.stringify(details.counterexample)} (seed ${details.seed}, path ${details.counterexamplePath}): ${String(details.errorInstance)}`);
      }
      assert.ok(details.numRuns > 0, 'the property ran at least once');
    },
  };
}

/** The only way a parser may refuse input: a coded PeerShareError, never a crash. */
export function refusedWith(err: unknown, codes: string[]): void {
  if (!(err instanceof PeerShareError)) throw err;
  assert.ok(codes.includes(err.code), `refused with ${err.code}, expected one of ${codes.join('/')}`);
}
