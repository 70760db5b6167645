import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { countOf, describeDownload } from '../../src/core/format';

const base = { files: 1, skippedExisting: [] as string[], skippedByPeerCount: 0, leftOutCount: 0 };

describe('what a finished download says', () => {
  it('a file: what landed, and under which name when it is another', () => {
    assert.equal(describeDownload({ ...base, type: 'file', target: '/ws/build.log' }, 'build.log', 'Demo peer'), 'Downloaded build.log from Demo peer.');
    assert.equal(describeDownload({ ...base, type: 'file', target: '/ws/build (2).log' }, 'build.log', 'Demo peer'), 'Downloaded build.log from Demo peer as build (2).log.');
  });

  it('a skipped file is never called downloaded', () => {
    const text = describeDownload({ ...base, type: 'file', files: 0, target: '/ws/build.log', skippedExisting: ['/ws/build.log'] }, 'build.log', 'Demo peer');
    assert.equal(text, 'Left build.log alone: it already exists.');
  });

  it('a folder: counts in words, and nothing called downloaded when nothing was', () => {
    assert.equal(
      describeDownload({ ...base, type: 'dir', files: 3, target: '/ws/fixtures', skippedExisting: ['a'], skippedByPeerCount: 2, leftOutCount: 1 }, 'fixtures', 'Ann'),
      'Downloaded 3 files of fixtures from Ann: 1 existing file left alone, 2 files the peer could not send, 1 left out for its name.',
    );
    assert.equal(
      describeDownload({ ...base, type: 'dir', files: 0, target: '/ws/fixtures', skippedExisting: ['a', 'b'] }, 'fixtures', 'Ann'),
      'Nothing new from fixtures (Ann): 2 existing files left alone.',
    );
    assert.equal(countOf(1, 'file'), '1 file');
  });
});
