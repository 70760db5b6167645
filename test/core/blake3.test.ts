import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { BLAKE3_BACKEND_ENV, BUNDLED_NATIVE_FILE, MIN_BLOCK_BYTES, loadBlake3, type Blake3Implementation } from '../../src/core';
import { tempDir } from '../helpers';

const ROOT = path.join(__dirname, '..', '..');
const VECTORS: { cases: { input_len: number; hash: string }[] } = JSON.parse(
  readFileSync(path.join(ROOT, 'test', 'fixtures', 'blake3-test-vectors.json'), 'utf8'),
);

// The binding publishes a prebuilt binary for these; where npm installed one, it must load.
const PLATFORMS_WITH_NATIVE = ['linux-x64', 'linux-arm64', 'darwin-x64', 'darwin-arm64', 'win32-x64', 'win32-arm64'];

const native = loadBlake3();
const fallback = loadBlake3({ forceFallback: true });
const BACKENDS: [string, Blake3Implementation][] = [
  ['native', native],
  ['fallback', fallback],
];

/** The official vectors' input: byte i is i % 251. */
function vectorInput(length: number): Buffer {
  const input = Buffer.alloc(length);
  for (let i = 0; i < length; i++) input[i] = i % 251;
  return input;
}

/** Feeds `data` in pieces of uneven sizes, so chunk and block boundaries fall inside updates. */
function hashInPieces(implementation: Blake3Implementation, data: Buffer, pieceSizes: number[]): Buffer {
  const hasher = implementation.createHasher();
  for (let offset = 0, i = 0; offset < data.length; i++) {
    const size = pieceSizes[i % pieceSizes.length];
    hasher.update(data.subarray(offset, offset + size));
    offset += size;
  }
  return hasher.digest();
}

describe('BLAKE3', () => {
  it('loads the native binding on this platform, and says why not when it cannot', () => {
    if (PLATFORMS_WITH_NATIVE.includes(`${process.platform}-${process.arch}`)) {
      assert.equal(native.backend, 'native', native.fallbackReason);
      assert.equal(native.fallbackReason, undefined);
    } else {
      assert.match(native.fallbackReason ?? '', /native BLAKE3 binding/);
    }
    assert.equal(fallback.backend, 'fallback');
    assert.match(fallback.fallbackReason ?? '', new RegExp(`${BLAKE3_BACKEND_ENV}=fallback`));
  });

  for (const [name, implementation] of BACKENDS) {
    it(`${name}: gives the official test vectors' hashes, in one call and in pieces`, () => {
      assert.ok(VECTORS.cases.length >= 30, 'the fixture holds the official cases');
      for (const { input_len: length, hash } of VECTORS.cases) {
        const input = vectorInput(length);
        assert.equal(implementation.hash(input).toString('hex'), hash, `${length} bytes, one call`);
        assert.equal(hashInPieces(implementation, input, [1, 63, 1000, 4097]).toString('hex'), hash, `${length} bytes, in pieces`);
        const digest = implementation.createHasher().update(input).digest();
        assert.equal(digest.length, 32);
        assert.equal(digest.toString('hex'), hash, `${length} bytes, one update`);
      }
    });
  }

  it('both backends agree on random data of odd sizes, around BLAKE3 chunks and PeerShare blocks', () => {
    const sizes = [0, 1, 1023, 1024, 1025, 65_537, MIN_BLOCK_BYTES - 1, MIN_BLOCK_BYTES, MIN_BLOCK_BYTES + 1, 3 * 1024 * 1024 + 7];
    for (const size of sizes) {
      const data = randomBytes(size);
      const expected = native.hash(data);
      assert.ok(fallback.hash(data).equals(expected), `${size} bytes, one call`);
      assert.ok(hashInPieces(native, data, [16_384, 333]).equals(expected), `${size} bytes, native in pieces`);
      assert.ok(hashInPieces(fallback, data, [16_384, 333]).equals(expected), `${size} bytes, fallback in pieces`);
    }
  });

  it('accepts a Uint8Array view into a larger buffer, not only a Buffer', () => {
    const backing = randomBytes(5000);
    const view = new Uint8Array(backing.buffer, backing.byteOffset + 17, 4000);
    const expected = fallback.hash(Buffer.from(view));
    for (const [name, implementation] of BACKENDS) {
      assert.ok(implementation.hash(view).equals(expected), name);
      assert.ok(implementation.createHasher().update(view).digest().equals(expected), `${name}, incremental`);
    }
  });

  it('takes the native binary beside the bundle first, and falls back with the reason when that file is broken', () => {
    const bundleDir = tempDir();
    writeFileSync(path.join(bundleDir, BUNDLED_NATIVE_FILE), 'not a shared library');
    const loaded = loadBlake3({ bundleDir });
    assert.equal(loaded.backend, 'fallback');
    assert.match(loaded.fallbackReason ?? '', /native BLAKE3 binding did not load/);
    assert.equal(loaded.hash(vectorInput(1025)).toString('hex'), VECTORS.cases.find((c) => c.input_len === 1025)!.hash);
  });

  it(`${BLAKE3_BACKEND_ENV}=fallback makes the whole process use the portable implementation`, () => {
    const script = `
      const core = require('./src/core');
      const digest = core.blake3(Buffer.alloc(0)).toString('hex');
      const incremental = core.createBlake3().update(Buffer.from('abc')).digest().toString('hex');
      console.log(JSON.stringify({ backend: core.blake3Backend(), reason: core.blake3FallbackReason(), digest, incremental }));`;
    const run = (env: NodeJS.ProcessEnv) =>
      JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { cwd: ROOT, env, encoding: 'utf8' }));
    const { [BLAKE3_BACKEND_ENV]: _unset, ...plainEnv } = process.env;
    const forced = run({ ...plainEnv, [BLAKE3_BACKEND_ENV]: 'fallback' });
    const usual = run(plainEnv);
    assert.equal(forced.backend, 'fallback');
    assert.match(forced.reason, new RegExp(`${BLAKE3_BACKEND_ENV}=fallback`));
    assert.equal(usual.backend, native.backend);
    assert.equal(forced.digest, VECTORS.cases[0].hash);
    assert.equal(usual.digest, forced.digest);
    assert.equal(usual.incremental, forced.incremental);
    // BLAKE3("abc"), as b3sum prints it.
    assert.equal(forced.incremental, '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85');
  });
});
