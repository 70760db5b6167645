import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { createHasher as createPortableHasher, hash as portableHash } from 'blake3-jit';

/**
 * BLAKE3 (unkeyed, 32-byte output), from a native binding where one loads and from a portable
 * implementation elsewhere; both give the same digests (test/core/blake3.test.ts runs the
 * official test vectors through each). docs/dependencies.md says why these two.
 */

export type Blake3BackendName = 'native' | 'fallback';

/** An incremental BLAKE3 hash: feed it with `update`, then take the 32-byte `digest` once. */
export interface Blake3Hasher {
  update(data: Uint8Array): this;
  digest(): Buffer;
}

export interface Blake3Implementation {
  readonly backend: Blake3BackendName;
  /** Why the native binding is not in use ("what is off"), for a log line; undefined when it is. */
  readonly fallbackReason?: string;
  createHasher(): Blake3Hasher;
  hash(data: Uint8Array): Buffer;
}

/** Set to `fallback` to use the portable implementation even where the native one loads. */
export const BLAKE3_BACKEND_ENV = 'PEERSHARE_BLAKE3';

/**
 * The per-platform .vsix carries its target's native binary under this name beside the bundle
 * (scripts/package.mjs puts it there); elsewhere the binding comes from node_modules.
 */
export const BUNDLED_NATIVE_FILE = 'blake3.node';

export const BLAKE3_DIGEST_BYTES = 32;

// BLAKE3 of no input, from the official test vectors: a native binary that loads but computes
// something else (a broken build, a wrong file) must not be used.
const EMPTY_INPUT_DIGEST = 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262';

/** The part of `@napi-rs/blake-hash` (and of its per-platform `.node` files) used here. */
interface NativeBinding {
  blake3(input: Buffer): Buffer;
  Blake3Hasher: new () => { update(input: Buffer): unknown; digestBuffer(): Buffer };
}

/**
 * Loads an implementation: the native binding unless `forceFallback`, the portable one when
 * the native one cannot load. Never throws; the reason for a fallback is kept for the log.
 */
export function loadBlake3(options: { forceFallback?: boolean; bundleDir?: string } = {}): Blake3Implementation {
  if (options.forceFallback) return portableImplementation(`${BLAKE3_BACKEND_ENV}=fallback is set`);
  try {
    const native = nativeImplementation(loadNativeBinding(options.bundleDir ?? __dirname));
    const selfTest = native.hash(Buffer.alloc(0)).toString('hex');
    if (selfTest !== EMPTY_INPUT_DIGEST) {
      return portableImplementation(`the native BLAKE3 binding computed a wrong digest (${selfTest.slice(0, 16)}...)`);
    }
    return native;
  } catch (err) {
    const message = err instanceof Error ? err.message.split('\n')[0] : String(err);
    return portableImplementation(`the native BLAKE3 binding did not load (${process.platform}-${process.arch}): ${message}`);
  }
}

let active: Blake3Implementation | undefined;

/** Loaded on first use, not at import, so activating the extension costs nothing until a hash is needed. */
function activeImplementation(): Blake3Implementation {
  active ??= loadBlake3({ forceFallback: process.env[BLAKE3_BACKEND_ENV] === 'fallback' });
  return active;
}

export function createBlake3(): Blake3Hasher {
  return activeImplementation().createHasher();
}

export function blake3(data: Uint8Array): Buffer {
  return activeImplementation().hash(data);
}

export function blake3Backend(): Blake3BackendName {
  return activeImplementation().backend;
}

/** Why the portable implementation is in use, or undefined when the native one is. */
export function blake3FallbackReason(): string | undefined {
  return activeImplementation().fallbackReason;
}

function loadNativeBinding(bundleDir: string): NativeBinding {
  const bundled = path.join(bundleDir, BUNDLED_NATIVE_FILE);
  // Computed names, so the bundler leaves the requires to run time.
  if (existsSync(bundled)) return require(bundled) as NativeBinding;
  // On Linux the package asks process.report whether the C library is musl before it picks its
  // per-platform package: *why: that report took 6-9 ms of every start of the CLI and the server.*
  // The glibc package is tried first; where it is missing or cannot load (musl), the package picks.
  const glibcPackage = process.platform === 'linux' && (process.arch === 'x64' || process.arch === 'arm64') ? `@napi-rs/blake-hash-linux-${process.arch}-gnu` : undefined;
  if (glibcPackage) {
    try {
      return require(glibcPackage) as NativeBinding;
    } catch {
      // the package decides, below
    }
  }
  const id = '@napi-rs/blake-hash';
  return require(id) as NativeBinding;
}

function nativeImplementation(binding: NativeBinding): Blake3Implementation {
  return {
    backend: 'native',
    createHasher() {
      const state = new binding.Blake3Hasher();
      return {
        update(data) {
          state.update(asBuffer(data));
          return this;
        },
        digest: () => state.digestBuffer(),
      };
    },
    hash: (data) => binding.blake3(asBuffer(data)),
  };
}

function portableImplementation(fallbackReason: string): Blake3Implementation {
  return {
    backend: 'fallback',
    fallbackReason,
    createHasher() {
      const state = createPortableHasher();
      return {
        update(data) {
          state.update(data);
          return this;
        },
        digest: () => asBuffer(state.finalize(BLAKE3_DIGEST_BYTES)),
      };
    },
    hash: (data) => asBuffer(portableHash(data, BLAKE3_DIGEST_BYTES)),
  };
}

/** The same bytes as a Buffer, without a copy (the native binding takes Buffers only). */
function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}
