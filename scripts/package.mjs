// Builds the .vsix files from the built dist/ (`npm run package` builds it first):
//   peershare-<target>.vsix  one per VS Code target, with that target's native BLAKE3 binary
//                            beside the bundle as dist/blake3.node (src/core/blake3.ts loads it),
//                            and, where HyperDHT has binaries for it, hyperdht and the packages it
//                            needs in dist/node_modules/ with that target's binaries only
//                            (src/core/transport-dht.ts requires it: internet reach)
//   peershare.vsix           universal: no native code, BLAKE3 from the portable implementation,
//                            no internet reach; VS Code installs it where no package for the
//                            platform exists (linux-armhf, for which the binding publishes no binary)
// Usage: node scripts/package.mjs [--target <target|universal>]... [--out-dir <dir>]
// The binaries come from the npm registry (the binding's per-platform packages), checked
// against the integrity package-lock.json records; the host's own comes from node_modules.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const BINDING = '@napi-rs/blake-hash';
/** Must match BUNDLED_NATIVE_FILE in src/core/blake3.ts. */
export const BUNDLED_NATIVE_FILE = 'dist/blake3.node';

/** VS Code target -> the binding's platform package suffix (and the name of its .node file). */
export const NATIVE_TARGETS = {
  'linux-x64': 'linux-x64-gnu',
  'linux-arm64': 'linux-arm64-gnu',
  'alpine-x64': 'linux-x64-musl',
  'alpine-arm64': 'linux-arm64-musl',
  'darwin-x64': 'darwin-x64',
  'darwin-arm64': 'darwin-arm64',
  'win32-x64': 'win32-x64-msvc',
  'win32-arm64': 'win32-arm64-msvc',
};
export const UNIVERSAL = 'universal';

/**
 * VS Code target -> the folder of HyperDHT's native packages (sodium-native, udx-native) that
 * holds its binaries, `prebuilds/<folder>/*.node`. They publish none for Alpine (musl): those
 * targets ship without internet reach, and the extension says why it is off.
 */
export const DHT_TARGETS = {
  'linux-x64': 'linux-x64',
  'linux-arm64': 'linux-arm64',
  'darwin-x64': 'darwin-x64',
  'darwin-arm64': 'darwin-arm64',
  'win32-x64': 'win32-x64',
  'win32-arm64': 'win32-arm64',
};
/** Where a .vsix carries hyperdht: the bundle's own node_modules, the first place require looks. */
export const BUNDLED_MODULES_DIR = 'dist/node_modules';
const DHT_PACKAGE = 'hyperdht';

export function vsixName(target) {
  return target === UNIVERSAL ? 'peershare.vsix' : `peershare-${target}.vsix`;
}

/** The path of the target's .node file, from node_modules or else fetched from the registry once. */
export function nativeBinaryFor(target) {
  const suffix = NATIVE_TARGETS[target];
  if (!suffix) throw new Error(`No native BLAKE3 binary for ${target}; valid targets: ${Object.keys(NATIVE_TARGETS).join(', ')}, ${UNIVERSAL}`);
  const name = `${BINDING}-${suffix}`;
  const file = `blake.${suffix}.node`;
  const locked = JSON.parse(readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')).packages[`node_modules/${name}`];
  if (!locked?.integrity) throw new Error(`package-lock.json records no ${name}; run npm install`);
  const installed = path.join(ROOT, 'node_modules', name);
  if (existsSync(path.join(installed, file)) && JSON.parse(readFileSync(path.join(installed, 'package.json'), 'utf8')).version === locked.version) {
    return path.join(installed, file);
  }
  const cache = path.join(ROOT, 'node_modules', '.cache', 'peershare-native', `${suffix}-${locked.version}`);
  if (!existsSync(path.join(cache, 'package', file))) {
    mkdirSync(cache, { recursive: true });
    const tarball = execFileSync('npm', ['pack', `${name}@${locked.version}`, '--pack-destination', cache, '--silent'], { cwd: cache, encoding: 'utf8' }).trim().split('\n').pop();
    const tarballPath = path.join(cache, tarball);
    const [algorithm, expected] = locked.integrity.split(/-(.*)/s);
    const actual = createHash(algorithm).update(readFileSync(tarballPath)).digest('base64');
    if (actual !== expected) throw new Error(`${name}@${locked.version}: the tarball does not match package-lock.json's integrity`);
    execFileSync('tar', ['-xzf', tarballPath, '-C', cache, `package/${file}`]);
    rmSync(tarballPath);
  }
  return path.join(cache, 'package', file);
}

/**
 * hyperdht and every package it needs at run time, as package-lock.json places them
 * (`node_modules/a`, `node_modules/a/node_modules/b`), found as Node's require finds them. Optional
 * peers the lock does not hold (React Native's, the pure-JavaScript sodium) are not needed in Node.
 */
export function hyperdhtPackages() {
  const locked = JSON.parse(readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')).packages;
  const resolve = (from, name) => {
    for (let at = from; ; ) {
      const candidate = `${at ? `${at}/` : ''}node_modules/${name}`;
      if (locked[candidate]) return candidate;
      if (!at) return undefined;
      const up = at.lastIndexOf('/node_modules/');
      at = up < 0 ? '' : at.slice(0, up);
    }
  };
  const found = new Set();
  const visit = (location) => {
    if (found.has(location)) return;
    found.add(location);
    const entry = locked[location];
    for (const name of Object.keys({ ...entry.dependencies, ...entry.optionalDependencies })) {
      const dependency = resolve(location, name);
      if (dependency) visit(dependency);
    }
  };
  if (!locked[`node_modules/${DHT_PACKAGE}`]) throw new Error(`package-lock.json records no ${DHT_PACKAGE}; run npm install`);
  visit(`node_modules/${DHT_PACKAGE}`);
  return [...found].sort();
}

/**
 * The files of hyperdht's packages a target's .vsix carries, relative to the repository: each
 * package as installed, without its nested packages (listed on their own) and, of its prebuilt
 * binaries, only the target's Node ones (`prebuilds/<folder>/*.node`; `.bare` files are for
 * the Bare runtime).
 */
export function hyperdhtFiles(target) {
  const folder = DHT_TARGETS[target];
  if (!folder) return [];
  const files = [];
  // `part`: in the package, in its prebuilds/ (only the target's folder is entered), or in that folder.
  const walk = (dir, part) => {
    for (const entry of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${entry.name}`;
      if (entry.isDirectory()) {
        if (part === 'package' && entry.name === 'node_modules') continue;
        if (part === 'prebuilds' && entry.name !== folder) continue;
        walk(rel, part === 'package' ? (entry.name === 'prebuilds' ? 'prebuilds' : 'package') : 'binaries');
      } else if (entry.isFile() && (part === 'package' || (part === 'binaries' && entry.name.endsWith('.node')))) {
        files.push(rel);
      }
    }
  };
  for (const location of hyperdhtPackages()) {
    if (!existsSync(path.join(ROOT, location, 'package.json'))) throw new Error(`${location} is not installed; run npm ci`);
    walk(location, 'package');
  }
  return files;
}

const VSCE = path.join(ROOT, 'node_modules', '@vscode', 'vsce', 'vsce');

/** What a .vsix of the working tree holds (.vscodeignore decides), before any native binary. */
export function packagedFiles() {
  return execFileSync(process.execPath, [VSCE, 'ls', '--no-dependencies'], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n');
}

/** Packs one .vsix from a staging copy of `files`, so the working tree is never touched. */
export function packageTarget(target, outDir, files = packagedFiles()) {
  const staging = mkdtempSync(path.join(os.tmpdir(), `peershare-vsix-${target}-`));
  try {
    for (const file of files) {
      mkdirSync(path.dirname(path.join(staging, file)), { recursive: true });
      copyFileSync(path.join(ROOT, file), path.join(staging, file));
    }
    let ignore = readFileSync(path.join(ROOT, '.vscodeignore'), 'utf8');
    const args = ['package', '--no-dependencies', '--out', path.join(outDir, vsixName(target))];
    if (target !== UNIVERSAL) {
      copyFileSync(nativeBinaryFor(target), path.join(staging, BUNDLED_NATIVE_FILE));
      ignore += `\n!${BUNDLED_NATIVE_FILE}\n`;
      args.push('--target', target);
    }
    // node_modules/x/... goes to dist/node_modules/x/...: required from dist/extension.js, it is found there first.
    for (const file of hyperdhtFiles(target)) {
      const to = path.join(staging, 'dist', file);
      mkdirSync(path.dirname(to), { recursive: true });
      copyFileSync(path.join(ROOT, file), to);
    }
    if (DHT_TARGETS[target]) ignore += `\n!${BUNDLED_MODULES_DIR}/**\n`;
    writeFileSync(path.join(staging, '.vscodeignore'), ignore);
    execFileSync(process.execPath, [VSCE, ...args], { cwd: staging, stdio: ['ignore', 'ignore', 'inherit'] });
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  return path.join(outDir, vsixName(target));
}

function main() {
  const { values } = parseArgs({ options: { target: { type: 'string', multiple: true }, 'out-dir': { type: 'string', default: ROOT } } });
  const targets = values.target ?? [...Object.keys(NATIVE_TARGETS), UNIVERSAL];
  for (const target of targets) {
    if (target !== UNIVERSAL && !NATIVE_TARGETS[target]) throw new Error(`Unknown target ${target}; valid: ${Object.keys(NATIVE_TARGETS).join(', ')}, ${UNIVERSAL}`);
  }
  mkdirSync(values['out-dir'], { recursive: true });
  const files = packagedFiles();
  for (const target of targets) console.log(path.relative(process.cwd(), packageTarget(target, path.resolve(values['out-dir']), files)));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    main();
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  }
}
