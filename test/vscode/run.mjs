// Runs the editor test suites inside a real VS Code (the VS Code server from npm, driven headless
// by Chromium through Playwright). Usage: node test/vscode/run.mjs [suite-entry.js ...]
// With no argument it runs the in-editor suite, then the two-editor end-to-end test.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { format } from 'node:util';
import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, ROOT, startVsCodeServer, workbenchUrl, LOOPBACK_SETTINGS } from './server.mjs';
import { runUiTest } from './ui.mjs';
import { runNearbyUiTest } from './ui-nearby.mjs';
import { runSendUiTest } from './ui-send.mjs';
import { runUpdateUiTest } from './ui-update.mjs';
import { runInternetTest } from './internet.mjs';

const OUT = path.join(ROOT, 'out', 'test', 'vscode');
// Workbench chatter that says nothing about our tests.
const NOISE = /vsda|gallery|telemetry|github|ChatModelSelection|AccountPolicyGate|AgentHost|Creating a socket|Service Worker|builtin extensions cache|connection token|reconnection-grace-time/i;
const TIMEOUT_MS = Number(process.env.PEERSHARE_VSCODE_TEST_TIMEOUT_MS ?? 10 * 60_000);

export async function buildSuites() {
  await esbuild.build({
    entryPoints: {
      index: path.join(ROOT, 'test', 'vscode', 'suite', 'index.ts'),
      'extension.test': path.join(ROOT, 'test', 'vscode', 'suite', 'extension.test.ts'),
      'hostile.test': path.join(ROOT, 'test', 'vscode', 'suite', 'hostile.test.ts'),
      'send.test': path.join(ROOT, 'test', 'vscode', 'suite', 'send.test.ts'),
      'update.test': path.join(ROOT, 'test', 'vscode', 'suite', 'update.test.ts'),
      'e2e-sharer': path.join(ROOT, 'test', 'vscode', 'suite', 'e2e-sharer.ts'),
      'e2e-downloader': path.join(ROOT, 'test', 'vscode', 'suite', 'e2e-downloader.ts'),
      'internet.test': path.join(ROOT, 'test', 'vscode', 'suite', 'internet.test.ts'),
    },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    outdir: OUT,
    external: ['vscode', 'mocha'],
    sourcemap: 'inline',
    logLevel: 'warning',
  });
}

/** One VS Code window running one test entry; resolves with its exit code. */
export async function runInEditor({ name, testsPath, folder, env = {}, screenshot }) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), `peershare-vscode-${name}-`));
  const server = await startVsCodeServer({ dataDir, env });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    let resolveExit;
    const exited = new Promise((resolve) => (resolveExit = resolve));
    await page.exposeFunction('codeAutomationLog', (type, args) => {
      const text = format(...(Array.isArray(args) ? args : [args]));
      if (!NOISE.test(text)) process.stdout.write(`[${name}] ${text}\n`);
    });
    await page.exposeFunction('codeAutomationExit', (code) => resolveExit(code));
    await page.goto(workbenchUrl(server, { folder, testsPath }));
    const timer = new Promise((resolve) => setTimeout(() => resolve('timeout'), TIMEOUT_MS));
    const code = await Promise.race([exited, timer]);
    if (screenshot) await page.screenshot({ path: screenshot }).catch(() => undefined);
    if (code === 'timeout') {
      process.stdout.write(`[${name}] timed out after ${TIMEOUT_MS} ms\n${server.output().slice(-4000)}\n`);
      return 1;
    }
    return code;
  } finally {
    await browser.close();
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

function makeWorkspace(name, files) {
  const dir = mkdtempSync(path.join(os.tmpdir(), `peershare-ws-${name}-`));
  const folder = path.join(dir, name);
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(folder, rel)), { recursive: true });
    writeFileSync(path.join(folder, rel), content);
  }
  // Tests share on loopback only.
  mkdirSync(path.join(folder, '.vscode'), { recursive: true });
  writeFileSync(path.join(folder, '.vscode', 'settings.json'), JSON.stringify(LOOPBACK_SETTINGS));
  return folder;
}

async function main() {
  await buildSuites();
  const shots = path.join(ROOT, 'out', 'screenshots');
  mkdirSync(shots, { recursive: true });
  let failed = 0;

  const only = process.env.PEERSHARE_VSCODE_ONLY;
  const ws = makeWorkspace('workspace', { 'README.md': '# workspace\n', 'src/app.ts': 'export const x = 1;\n' });
  const inEditor = only && only !== 'editor' ? 0 : await runInEditor({ name: 'editor', testsPath: path.join(OUT, 'index.js'), folder: ws, screenshot: path.join(shots, 'editor-suite.png') });
  process.stdout.write(`[editor] suite exited with ${inEditor}\n`);
  if (inEditor !== 0) failed++;

  // Two editors, one partner each: A shares, B connects with A's invite and downloads a folder from A's tree.
  const exchange = mkdtempSync(path.join(os.tmpdir(), 'peershare-e2e-'));
  const wsA = makeWorkspace('alice', { 'fixtures/users/1.json': '{"id":1}\n', 'fixtures/users/2.json': '{"id":2}\n', 'fixtures/big.bin': Buffer.alloc(3 * 1024 * 1024, 7), 'notes.md': 'hi\n' });
  const wsB = makeWorkspace('bob', { 'README.md': '# bob\n' });
  const env = { PEERSHARE_E2E_DIR: exchange, PEERSHARE_E2E_SOURCE: wsA, PEERSHARE_E2E_DEST: wsB };
  const [a, b] = only && only !== 'e2e' ? [0, 0] : await Promise.all([
    runInEditor({ name: 'alice', testsPath: path.join(OUT, 'e2e-sharer.js'), folder: wsA, env }),
    runInEditor({ name: 'bob', testsPath: path.join(OUT, 'e2e-downloader.js'), folder: wsB, env }),
  ]);
  process.stdout.write(`[e2e] sharer exited with ${a}, downloader with ${b}\n`);
  if (a !== 0 || b !== 0) failed++;
  rmSync(exchange, { recursive: true, force: true });

  // As a person would: the Peers view, a right-click, Download, seen in screenshots.
  const ui = only && only !== 'ui' ? 0 : await runUiTest({ screenshotsDir: shots });
  process.stdout.write(`[ui] exited with ${ui}\n`);
  if (ui !== 0) failed++;

  // Nearby peers and the approval prompt, through the UI.
  const nearby = only && only !== 'nearby' ? 0 : await runNearbyUiTest({ screenshotsDir: shots });
  process.stdout.write(`[ui-nearby] exited with ${nearby}\n`);
  if (nearby !== 0) failed++;

  // A peer sends to the editor: the offer, Review's diff and Accept, a snippet, through the UI.
  const sendUi = only && only !== 'ui-send' ? 0 : await runSendUiTest({ screenshotsDir: shots });
  process.stdout.write(`[ui-send] exited with ${sendUi}\n`);
  if (sendUi !== 0) failed++;

  // Staying in step with a peer: the changed mark, Update from Peer's local-edit question, Follow Folder, through the UI.
  const updateUi = only && only !== 'ui-update' ? 0 : await runUpdateUiTest({ screenshotsDir: shots });
  process.stdout.write(`[ui-update] exited with ${updateUi}\n`);
  if (updateUi !== 0) failed++;

  // Internet reach from the packed .vsix files (the platform's, the universal one), through a local DHT.
  const internet = only && only !== 'internet' ? 0 : await runInternetTest({ screenshotsDir: shots, testsPath: path.join(OUT, 'internet.test.js') });
  process.stdout.write(`[internet] exited with ${internet}\n`);
  if (internet !== 0) failed++;

  const total = 7;
  process.stdout.write(`editor runs: ${total - failed} passed, ${failed} failed\n`);
  process.exitCode = failed ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.join(ROOT, 'test', 'vscode', 'run.mjs')) {
  // Exit explicitly: a stray handle in a browser or server library must not keep CI waiting.
  main().then(
    () => process.exit(process.exitCode ?? 0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
