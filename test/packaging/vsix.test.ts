import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import * as esbuild from 'esbuild';
import { BUNDLED_NATIVE_FILE } from '../../src/core';
import { tempDir } from '../helpers';

const ROOT = path.join(__dirname, '..', '..');
const COMMON_FILES = [
  '[Content_Types].xml',
  'extension.vsixmanifest',
  'extension/LICENSE.txt',
  'extension/changelog.md',
  'extension/dist/cdc-worker.js',
  'extension/dist/cli.js',
  'extension/dist/extension.js',
  'extension/media/peershare.svg',
  'extension/package.json',
  'extension/package.nls.json',
  'extension/readme.md',
];
// BLAKE3 of 1025 bytes of i % 251, from the official test vectors.
const VECTOR_1025 = 'd00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444';

interface PackageScript {
  NATIVE_TARGETS: Record<string, string>;
  DHT_TARGETS: Record<string, string>;
  BUNDLED_NATIVE_FILE: string;
  BUNDLED_MODULES_DIR: string;
  vsixName(target: string): string;
  hyperdhtFiles(target: string): string[];
}

/** HyperDHT's native packages: each must ship its binary for every target that carries internet reach. */
const DHT_NATIVE = ['sodium-native', 'udx-native'];

/** The VS Code target of this machine, whose binary node_modules already holds (no download in a test). */
function hostTarget(): string {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  const musl = process.platform === 'linux' && !report?.header?.glibcVersionRuntime;
  return `${musl ? 'alpine' : process.platform}-${process.arch}`;
}

function listing(vsix: string): string[] {
  return execFileSync('unzip', ['-Z1', vsix], { encoding: 'utf8' }).trim().split('\n').sort();
}

/**
 * Unpacks a .vsix outside the repository (so no node_modules is within reach, as in an installed
 * extension), bundles src/core/blake3.ts beside its dist/ as the real build does, and reports
 * which BLAKE3 it gets there.
 */
async function blake3In(vsix: string): Promise<{ backend: string; reason?: string; digest: string }> {
  const dir = tempDir();
  execFileSync('unzip', ['-q', vsix, '-d', dir]);
  const probe = path.join(dir, 'extension', 'dist', 'probe.js');
  await esbuild.build({
    stdin: {
      contents: `const b = require('./src/core/blake3');
        const input = Buffer.alloc(1025); for (let i = 0; i < input.length; i++) input[i] = i % 251;
        console.log(JSON.stringify({ backend: b.blake3Backend(), reason: b.blake3FallbackReason(), digest: b.blake3(input).toString('hex') }));`,
      resolveDir: ROOT,
      loader: 'ts',
    },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    external: ['vscode', '@napi-rs/blake-hash'],
    outfile: probe,
    logLevel: 'silent',
  });
  const { PEERSHARE_BLAKE3: _unset, ...env } = process.env;
  return JSON.parse(execFileSync(process.execPath, [probe], { cwd: dir, env, encoding: 'utf8' }));
}

/**
 * Unpacks a .vsix outside the repository and asks src/core/transport-dht.ts, bundled beside its
 * dist/ as the real build bundles it (hyperdht left to run time), whether internet reach works
 * there; where it does, a DHT node starts on loopback and makes a key pair with the native parts.
 */
async function internetIn(vsix: string): Promise<{ available: boolean; reason?: string; resolved?: string; keyBytes?: number }> {
  const dir = tempDir();
  execFileSync('unzip', ['-q', vsix, '-d', dir]);
  const probe = path.join(dir, 'extension', 'dist', 'probe-dht.js');
  await esbuild.build({
    stdin: {
      contents: `const { internetReach, DhtNetwork } = require('./src/core/transport-dht');
        (async () => {
          const reach = internetReach();
          if (!reach.available) return console.log(JSON.stringify(reach));
          // A bootstrap node that is not there: nothing leaves loopback, and the node still starts.
          const net = DhtNetwork.create({ bootstrap: ['127.0.0.1:9'], host: '127.0.0.1' });
          const key = require('hyperdht').keyPair().publicKey;
          await net.close();
          console.log(JSON.stringify({ available: true, resolved: require.resolve('hyperdht'), keyBytes: key.length }));
        })();`,
      resolveDir: ROOT,
      loader: 'ts',
    },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    external: ['vscode', '@napi-rs/blake-hash', 'hyperdht'],
    outfile: probe,
    logLevel: 'silent',
  });
  return JSON.parse(execFileSync(process.execPath, [probe], { cwd: dir, encoding: 'utf8' }));
}

describe('the .vsix files', () => {
  let script: PackageScript;
  const target = hostTarget();
  const out = tempDir();
  let native: string;
  let universal: string;

  before(async () => {
    script = (await import(pathToFileURL(path.join(ROOT, 'scripts', 'package.mjs')).href)) as PackageScript;
    execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'package.mjs'), '--target', target, '--target', 'universal', '--out-dir', out], { cwd: ROOT, stdio: 'pipe' });
    native = path.join(out, script.vsixName(target));
    universal = path.join(out, script.vsixName('universal'));
  });

  it('the universal one contains only what runs: the bundles, media, README, CHANGELOG, LICENSE and the manifest', () => {
    assert.deepEqual(listing(universal), COMMON_FILES);
    assert.doesNotMatch(execFileSync('unzip', ['-p', universal, 'extension.vsixmanifest'], { encoding: 'utf8' }), /TargetPlatform/);
  });

  it("a platform's one adds only its native BLAKE3 binary, the binding's own file, and HyperDHT's packages, and says which platform it is for", () => {
    const dht = script.hyperdhtFiles(target).map((file) => `extension/dist/${file}`);
    assert.deepEqual(listing(native), [...COMMON_FILES, `extension/${script.BUNDLED_NATIVE_FILE}`, ...dht].sort());
    assert.equal(script.BUNDLED_NATIVE_FILE, `dist/${BUNDLED_NATIVE_FILE}`, 'the script puts the binary where src/core/blake3.ts looks');
    assert.match(execFileSync('unzip', ['-p', native, 'extension.vsixmanifest'], { encoding: 'utf8' }), new RegExp(`TargetPlatform="${target}"`));
    const suffix = script.NATIVE_TARGETS[target];
    const shipped = execFileSync('unzip', ['-p', native, `extension/${script.BUNDLED_NATIVE_FILE}`], { maxBuffer: 64 * 1024 * 1024 });
    assert.ok(shipped.equals(readFileSync(path.join(ROOT, 'node_modules', '@napi-rs', `blake-hash-${suffix}`, `blake.${suffix}.node`))));
  });

  it("in the platform's .vsix the native BLAKE3 loads; in the universal one, without it, the portable one gives the same digest", async () => {
    const fromNative = await blake3In(native);
    assert.equal(fromNative.backend, 'native', fromNative.reason);
    assert.equal(fromNative.digest, VECTOR_1025);
    const fromUniversal = await blake3In(universal);
    assert.equal(fromUniversal.backend, 'fallback');
    assert.match(fromUniversal.reason ?? '', /native BLAKE3 binding did not load.*Cannot find module '@napi-rs\/blake-hash'/);
    assert.equal(fromUniversal.digest, VECTOR_1025);
  });

  it("the linux-x64 one carries hyperdht with sodium-native's and udx-native's linux-x64 binaries, and no other platform's", () => {
    assert.equal(script.BUNDLED_MODULES_DIR, 'dist/node_modules');
    const files = script.hyperdhtFiles('linux-x64');
    assert.ok(files.includes('node_modules/hyperdht/package.json'));
    const binaries = files.filter((f) => /\.(node|bare)$/.test(f) || f.includes('/prebuilds/'));
    assert.deepEqual(binaries.sort(), DHT_NATIVE.map((name) => `node_modules/${name}/prebuilds/linux-x64/${name}.node`).sort());
    for (const file of binaries) assert.ok(readFileSync(path.join(ROOT, file)).subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46])), `${file} is an ELF binary`);
    // Nothing of the development tree rides along: every file is in a package hyperdht needs.
    assert.ok(!files.some((f) => /node_modules\/(typescript|esbuild|mocha|@types)\//.test(f)));
  });

  it("every target with internet reach gets both native binaries for its platform; Alpine (no musl builds) and the universal one get no hyperdht", () => {
    for (const [vscodeTarget, folder] of Object.entries(script.DHT_TARGETS)) {
      const binaries = script.hyperdhtFiles(vscodeTarget).filter((f) => f.includes('/prebuilds/'));
      assert.deepEqual(binaries.sort(), DHT_NATIVE.map((name) => `node_modules/${name}/prebuilds/${folder}/${name}.node`).sort(), vscodeTarget);
    }
    for (const without of ['alpine-x64', 'alpine-arm64', 'universal']) assert.deepEqual(script.hyperdhtFiles(without), [], without);
    assert.ok(!listing(universal).some((f) => f.includes('node_modules')));
  });

  it("hyperdht loads from the platform's .vsix, away from any node_modules of the repository; without it (universal) internet reach is off and says why", async () => {
    const fromNative = await internetIn(native);
    assert.equal(fromNative.available, true, fromNative.reason);
    assert.match(fromNative.resolved ?? '', /\/extension\/dist\/node_modules\/hyperdht\/index\.js$/);
    assert.doesNotMatch(fromNative.resolved ?? '', new RegExp(`^${ROOT}`));
    assert.equal(fromNative.keyBytes, 32);
    const fromUniversal = await internetIn(universal);
    assert.equal(fromUniversal.available, false);
    assert.match(fromUniversal.reason ?? '', /HyperDHT library did not load.*Cannot find module 'hyperdht'/);
  });

  it('declares that untrusted and virtual workspaces are not supported, so VS Code never runs it there', () => {
    const manifest = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    assert.equal(manifest.capabilities.untrustedWorkspaces.supported, false);
    assert.equal(manifest.capabilities.virtualWorkspaces, false);
  });
});
