import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TokenBucket } from '../../src/core/token-bucket';

// Times are given, not read from the clock: nothing here depends on how fast the test runs.
describe('token bucket', () => {
  it('gives its burst at once, then one token per 1/perSecond; never more than the burst', () => {
    const bucket = new TokenBucket(10, 3, 0);
    assert.deepEqual([bucket.take(0), bucket.take(0), bucket.take(0), bucket.take(0)], [true, true, true, false]);
    assert.equal(bucket.take(50), false, 'half a token is none');
    assert.equal(bucket.take(100), true, 'one token after 100 ms at 10 a second');
    assert.equal(bucket.isFull(100_000), true);
    assert.deepEqual([bucket.take(100_000), bucket.take(100_000), bucket.take(100_000), bucket.take(100_000)], [true, true, true, false], 'an hour idle still refills only to the burst');
  });

  it('a token given back can be taken again, up to the burst; a charge is debt, bounded', () => {
    const bucket = new TokenBucket(1, 2, 0);
    bucket.take(0);
    bucket.give(0);
    bucket.give(0);
    assert.deepEqual([bucket.take(0), bucket.take(0), bucket.take(0)], [true, true, false], 'giving never raises it past the burst');
    bucket.charge(1000, 5, 0);
    assert.equal(bucket.take(5_000), false, '5 s refill pays back 5 of debt, not a token');
    assert.equal(bucket.take(6_000), true, 'the debt stopped at 5');
    assert.equal(bucket.isFull(6_000), false);
  });
});
