import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProgressBar, formatDuration } from '../../src/cli/progress';

/** A terminal that keeps what is written to it. */
function terminal(): NodeJS.WriteStream & { text: string } {
  const fake = { text: '', columns: 120, write: (chunk: string) => ((fake.text += chunk), true) };
  return fake as unknown as NodeJS.WriteStream & { text: string };
}

const MiB = 1024 * 1024;

describe('the CLI progress bar', () => {
  it('counts a resumed download from what is on disk: share, total and time left', () => {
    const out = terminal();
    const bar = new ProgressBar(out);
    bar.update({ bytes: 0, totalBytes: 2048 * MiB, file: 'big.bin', resumedBytes: 920 * MiB, checking: true });
    assert.match(out.text, /Checking the 920 MiB already downloaded of big\.bin/);
    bar.update({ bytes: 100 * MiB, totalBytes: 2048 * MiB, file: 'big.bin', resumedBytes: 920 * MiB });
    const last = out.text.split('\r').pop()!;
    assert.match(last, / 50% 1020 MiB of 2\.0 GiB /);
    assert.match(last, / left big\.bin/);
    bar.done();
  });

  it('shows a file name the peer chose with every escape made visible', () => {
    const out = terminal();
    const bar = new ProgressBar(out);
    bar.update({ bytes: 10, file: 'x\u001b]0;PWN\u0007\u001b]52;c;cHduZWQ=\u0007', totalBytes: 100 });
    // eslint-disable-next-line no-control-regex
    assert.doesNotMatch(out.text.replace(/\r|\u001b\[K/g, ''), /[\u0000-\u001f\u007f-\u009f]/);
    assert.match(out.text, /\\u0007/);
  });

  it('says how long is left in words a person reads', () => {
    assert.equal(formatDuration(42.4), '42 s');
    assert.equal(formatDuration(200), '3 min 20 s');
    assert.equal(formatDuration(3900), '1 h 05 min');
  });
});
