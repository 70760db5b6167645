// Internet reach in the real extension host (issue 14), as it ships: this machine's platform
// .vsix and the universal one are packed (scripts/package.mjs) and unpacked outside the checkout,
// and each runs in a VS Code window of its own (suite/internet.test.ts, `on` and `off`), which
// starts its own local DHT (hyperdht/testnet on 127.0.0.1): the only bootstrap nodes anyone is given.
// While a suite waits, this looks at the workbench as a person would: the status bar, the Peers
// view, the warning in the notifications; screenshots go to out/screenshots/internet-*.png.
// Run through run.mjs (which builds the suites): PEERSHARE_VSCODE_ONLY=internet node test/vscode/run.mjs
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { format } from 'node:util';
import { chromium } from 'playwright-core';
import { DHT_TARGETS, UNIVERSAL, packageTarget, packagedFiles } from '../../scripts/package.mjs';
import { CHROMIUM_ARGS, LOOPBACK_SETTINGS, ROOT, startVsCodeServer, workbenchUrl } from './server.mjs';
import { poll, withTimeout, writeTree } from './ui-kit.mjs';

const NOISE = /vsda|gallery|telemetry|github|ChatModelSelection|AccountPolicyGate|AgentHost|Creating a socket|Service Worker|builtin extensions cache|connection token|reconnection-grace-time/i;
const WINDOW_MS = 4 * 60_000;

/** Packs a .vsix from the built dist/ and unpacks it into `dir`; returns its extension folder. */
function unpacked(target, dir, files) {
  const vsix = packageTarget(target, dir, files);
  execFileSync('unzip', ['-q', vsix, '-d', path.join(dir, target)]);
  return path.join(dir, target, 'extension');
}

/**
 * One window: the suite in `mode` against the extension at `extensionPath`; when the suite says it
 * is ready, `look(page)` checks the workbench. Resolves with the exit code.
 */
async function runWindow({ name, mode, extensionPath, testsPath, look, tmp }) {
  const exchange = mkdtempSync(path.join(tmp, `exchange-${mode}-`));
  const folder = path.join(tmp, `workspace-${mode}`, 'workspace');
  writeTree(folder, { 'README.md': '# workspace\n', 'src/app.ts': 'export const x = 1;\n', '.vscode/settings.json': JSON.stringify(LOOPBACK_SETTINGS) });
  const env = { PEERSHARE_INTERNET_MODE: mode, PEERSHARE_INTERNET_DIR: exchange, PEERSHARE_TEST_EXTENSION_PATH: extensionPath };
  const server = await startVsCodeServer({ dataDir: path.join(tmp, `vscode-${mode}`), env });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
  const log = (text) => process.stdout.write(`[${name}] ${text}\n`);
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    let exit;
    const exited = new Promise((resolve) => (exit = resolve));
    await page.exposeFunction('codeAutomationLog', (type, args) => {
      const text = format(...(Array.isArray(args) ? args : [args]));
      if (!NOISE.test(text)) log(text);
    });
    await page.exposeFunction('codeAutomationExit', (code) => exit(code));
    await page.goto(workbenchUrl(server, { folder, testsPath, extensionPath }));
    const ready = poll(() => existsSync(path.join(exchange, 'ready')), WINDOW_MS, 'the suite to be ready');
    const first = await Promise.race([ready.then(() => 'ready'), exited]);
    if (first !== 'ready') return first;
    try {
      await withTimeout(look(page), 60_000, 'looking at the workbench');
    } catch (err) {
      log(`FAILED: ${err?.message ?? err}`);
      await page.screenshot({ path: path.join(ROOT, 'out', 'screenshots', `internet-${mode}-failure.png`) }).catch(() => undefined);
      writeFileSync(path.join(exchange, 'shot'), '');
      await withTimeout(exited, 60_000, 'the suite to end').catch(() => undefined);
      return 1;
    }
    writeFileSync(path.join(exchange, 'shot'), '');
    return await withTimeout(exited, 60_000, 'the suite to end').catch((err) => (log(err.message), 1));
  } catch (err) {
    log(`FAILED: ${err?.stack ?? err}\n${server.output().slice(-3000)}`);
    return 1;
  } finally {
    await browser.close();
    await server.stop();
  }
}

/** Both windows; resolves 0 when both pass. `testsPath`: the built suite entry (run.mjs builds it). */
export async function runInternetTest({ screenshotsDir, testsPath }) {
  const target = `${process.platform}-${process.arch}`;
  if (!DHT_TARGETS[target]) {
    process.stdout.write(`[internet] no .vsix with internet reach for ${target}\n`);
    return 1;
  }
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'peershare-internet-'));
  const shot = (page, name) => page.screenshot({ path: path.join(screenshotsDir, name) });
  try {
    const files = packagedFiles();
    const platformExtension = unpacked(target, tmp, files);
    const universalExtension = unpacked(UNIVERSAL, tmp, files);
    const statusBar = (page) => page.locator('.part.statusbar');
    const on = await runWindow({
      name: 'internet on',
      mode: 'on',
      extensionPath: platformExtension,
      testsPath,
      tmp,
      look: async (page) => {
        await statusBar(page).locator('.statusbar-item', { hasText: /Sharing · \d+ peers? · internet/ }).first().waitFor({ timeout: 20_000 });
        const sidebar = page.locator('.part.sidebar');
        await sidebar.locator('.monaco-list-row', { hasText: /online · internet/ }).first().waitFor({ timeout: 20_000 });
        await sidebar.locator('.monaco-list-row', { hasText: /online · LAN/ }).first().waitFor({ timeout: 20_000 });
        await shot(page, 'internet-peers.png');
      },
    });
    process.stdout.write(`[internet] on: exited with ${on}\n`);
    const off = await runWindow({
      name: 'internet off',
      mode: 'off',
      extensionPath: universalExtension,
      testsPath,
      tmp,
      look: async (page) => {
        const status = statusBar(page).locator('.statusbar-item', { hasText: /Sharing · \d+ peers?/ }).first();
        await status.waitFor({ timeout: 20_000 });
        if (/internet/.test(await status.innerText())) throw new Error('the status bar says "internet" though internet reach is off');
        // With the smoke-test driver there are no toasts: the warning is in the notification center.
        const center = page.locator('.notifications-center.visible');
        await page.locator('.part.statusbar [id="status.notifications"]').click({ timeout: 10_000 });
        await center.locator('.notification-list-item', { hasText: /Sharing on your network only\. Internet reach is off: the HyperDHT library did not load/ }).first().waitFor({ timeout: 20_000 });
        await shot(page, 'internet-off.png');
      },
    });
    process.stdout.write(`[internet] off: exited with ${off}\n`);
    return on === 0 && off === 0 ? 0 : 1;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
