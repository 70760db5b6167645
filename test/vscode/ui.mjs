// Drives PeerShare the way a person would, through the real VS Code workbench in headless Chromium:
// a headless peer (the real CLI) shares a `fixtures` folder; in VS Code we connect with its invite
// from the command palette, open the PeerShare view, expand the peer and its folder, right-click
// README.md, choose Download, and check the notification and the bytes on disk.
// Usage: npm run build && node test/vscode/ui.mjs   (screenshots go to out/screenshots/)
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, LOOPBACK_SETTINGS, ROOT, startVsCodeServer, workbenchUrl } from './server.mjs';

const TOTAL_MS = Number(process.env.PEERSHARE_UI_TEST_TIMEOUT_MS ?? 170_000);
const PEER_NAME = "Ana's laptop";
const FIXTURES = {
  'users/1.json': '{\n  "id": 1,\n  "name": "Ana"\n}\n',
  'users/2.json': '{\n  "id": 2,\n  "name": "Bruno"\n}\n',
  'README.md': '# Fixtures\n\nSample files shared by the PeerShare UI test.\n',
  'build.log': Array.from({ length: 40 }, (_, i) => `[${String(i).padStart(2, '0')}] step ${i} ok`).join('\n') + '\n',
};
const CLEANUP_STEP_MS = 10_000;

let started = Date.now();
function log(message) {
  process.stdout.write(`[ui ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}\n`);
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

function writeTree(folder, files) {
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(folder, rel)), { recursive: true });
    writeFileSync(path.join(folder, rel), content);
  }
}

/** Starts `peershare serve` on loopback; resolves with the child and its "listening" event. */
function startPeer({ folder, home }) {
  const cli = path.join(ROOT, 'dist', 'cli.js');
  const args = [cli, 'serve', folder, '--json', '--home', home, '--host', '127.0.0.1', '--invite-uses', '10', '--name', PEER_NAME];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const ready = new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      stdout += d;
      const nl = stdout.indexOf('\n');
      if (nl < 0) return;
      try {
        const event = JSON.parse(stdout.slice(0, nl));
        if (event.event !== 'listening' || !event.invite) throw new Error(`unexpected first line: ${stdout.slice(0, nl)}`);
        resolve(event);
      } catch (err) {
        reject(err);
      }
    });
    child.once('exit', (code, signal) => reject(new Error(`peer exited early (${code ?? signal}):\n${stdout}${stderr}`)));
    child.once('error', reject);
  });
  return {
    child,
    ready: withTimeout(ready, 20_000, 'the CLI peer to print its invite'),
    output: () => stdout + stderr,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
        child.once('exit', () => {
          clearTimeout(kill);
          resolve();
        });
        child.kill('SIGTERM');
      }),
  };
}

async function poll(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The steps a person takes; throws on the first thing that does not happen. */
async function drive({ page, shot, ws, source }) {
  const sidebar = page.locator('.part.sidebar');
  const row = (name) => sidebar.locator('.monaco-list-row', { has: page.locator('.label-name', { hasText: new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }) });
  const bell = page.locator('.part.statusbar [id="status.notifications"]');
  const center = page.locator('.notifications-center.visible');
  // server.mjs runs VS Code with --enable-smoke-test-driver, and with it the workbench shows no
  // notification toasts at all (NotificationsToasts.addToast). A person then sees notifications
  // where they always can: in the notification center, opened from the bell in the status bar.
  async function seeNotification(text, timeout) {
    const toast = page.locator('.notifications-toasts .notification-toast', { hasText: text });
    const listed = center.locator('.notification-list-item', { hasText: text });
    const deadline = Date.now() + timeout;
    while (Date.now() < deadline) {
      if (await toast.isVisible()) return 'a toast';
      if (!(await center.isVisible())) await bell.click({ timeout: 5_000 });
      if (await listed.first().isVisible()) return 'an entry in the notification center';
      await page.waitForTimeout(250);
    }
    throw new Error(`no notification "${text}" within ${timeout} ms (center shows: ${JSON.stringify(await center.innerText().catch(() => ''))})`);
  }
  async function closeNotificationCenter() {
    if (await center.isVisible()) await bell.click();
    await center.waitFor({ state: 'hidden', timeout: 5_000 });
  }

  log('waiting for the workbench');
  await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: 60_000 });
  // The activity bar entry appears once extensions are registered.
  const activity = page.locator('.part.activitybar .action-item [aria-label*="PeerShare"]').first();
  await activity.waitFor({ state: 'visible', timeout: 45_000 });
  log('workbench loaded, PeerShare icon in the activity bar');
  await page.waitForTimeout(3000); // let extension activation (onStartupFinished) settle

  // The PeerShare view before connecting: its welcome content.
  await activity.click();
  const viewTitle = sidebar.locator('.composite.title', { hasText: 'PeerShare' });
  await viewTitle.waitFor({ state: 'visible', timeout: 15_000 });
  await page.waitForTimeout(1000);
  await shot('welcome.png');

  log('connecting from the command palette');
  await page.keyboard.press('F1');
  const quickInput = page.locator('.quick-input-widget');
  const quickInputBox = quickInput.locator('.quick-input-box input');
  await quickInputBox.waitFor({ state: 'visible', timeout: 10_000 });
  await page.keyboard.type('PeerShare: Connect to Peer', { delay: 20 });
  await quickInput.locator('.monaco-list-row', { hasText: 'Connect to Peer' }).first().waitFor({ state: 'visible', timeout: 10_000 });
  await shot('command-palette.png');
  await page.keyboard.press('Enter');
  await quickInput.locator('.quick-input-message', { hasText: 'Paste the invite' }).waitFor({ state: 'visible', timeout: 10_000 });
  await quickInputBox.fill(source.invite);
  await shot('invite-input.png');
  await page.keyboard.press('Enter');
  log(`connected (notification seen as ${await seeNotification(`PeerShare: connected to ${PEER_NAME}.`, 20_000)})`);
  await closeNotificationCenter();

  // The view may have been closed by the palette; make sure it is the visible one.
  if (!(await viewTitle.isVisible())) await activity.click();
  const peerRow = row(PEER_NAME);
  await peerRow.waitFor({ state: 'visible', timeout: 15_000 });
  if ((await peerRow.getAttribute('aria-expanded')) !== 'true') await peerRow.click();
  const fixturesRow = row('fixtures');
  await fixturesRow.waitFor({ state: 'visible', timeout: 15_000 });
  if ((await fixturesRow.getAttribute('aria-expanded')) !== 'true') await fixturesRow.click();
  const readmeRow = row('README.md');
  await readmeRow.waitFor({ state: 'visible', timeout: 15_000 });
  for (const name of ['users', 'build.log']) await row(name).waitFor({ state: 'visible', timeout: 5_000 });
  await page.mouse.move(700, 450); // no hover tooltip over the tree
  await page.waitForTimeout(500);
  await shot('peers-view.png');
  log('peer and fixtures expanded');

  await readmeRow.click({ button: 'right' });
  const menu = page.locator('.context-view .monaco-menu');
  await menu.waitFor({ state: 'visible', timeout: 10_000 });
  const download = menu.locator('.action-item:not(.disabled) .action-label', { hasText: /^Download$/ });
  await download.waitFor({ state: 'visible', timeout: 5_000 });
  await download.hover();
  await page.waitForTimeout(300);
  await shot('context-menu.png');
  log('context menu open on README.md');
  await download.click();

  const seen = await seeNotification(`Downloaded README.md from ${PEER_NAME}.`, 30_000);
  const target = path.join(ws, 'README.md');
  await poll(() => existsSync(target), 5_000, `${target} to appear`);
  const want = readFileSync(path.join(source.folder, 'README.md'));
  const got = readFileSync(target);
  if (!got.equals(want)) throw new Error(`downloaded README.md differs from the peer's (${got.length} vs ${want.length} bytes)`);
  // The finished download's progress notification should leave the list; give it a moment.
  const progress = center.locator('.notification-list-item', { hasText: 'Downloading README.md' });
  await progress.waitFor({ state: 'hidden', timeout: 3_000 }).catch(() => log('note: the "Downloading README.md" progress notification is still listed after the download finished'));
  await page.mouse.move(700, 300); // no "Hide Notifications" hover over the bell
  await page.waitForTimeout(500);
  await shot('downloaded.png');
  log(`downloaded README.md (${got.length} bytes, identical to the source; notification seen as ${seen})`);

  // The person then finds the file in the Explorer.
  await closeNotificationCenter();
  await page.locator('.part.activitybar .action-item [aria-label^="Explorer"]').first().click();
  await row('README.md').waitFor({ state: 'visible', timeout: 10_000 });
  await page.mouse.move(700, 300);
  await page.waitForTimeout(300);
  await shot('explorer.png');
  log('README.md is listed in the Explorer');
}

/** Runs the UI test; resolves with 0 on success, 1 on failure (printing why). */
export async function runUiTest({ screenshotsDir }) {
  started = Date.now();
  for (const built of ['extension.js', 'cli.js']) {
    if (!existsSync(path.join(ROOT, 'dist', built))) {
      process.stdout.write(`[ui] dist/${built} is missing: run npm run build first\n`);
      return 1;
    }
  }
  mkdirSync(screenshotsDir, { recursive: true });
  rmSync(path.join(screenshotsDir, 'ui-failure.png'), { force: true });
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'peershare-ui-'));
  const fixtures = path.join(tmp, 'peer', 'fixtures');
  const home = path.join(tmp, 'peer-home');
  const ws = path.join(tmp, 'ws', 'workspace');
  writeTree(fixtures, FIXTURES);
  writeTree(ws, {
    'notes.txt': 'Workspace of the downloader.\n',
    'src/app.ts': 'export const answer = 42;\n',
    '.vscode/settings.json': JSON.stringify(LOOPBACK_SETTINGS, null, 2),
  });

  let peer;
  let server;
  let browser;
  let page;
  const pageErrors = [];
  let code = 1;
  let stepsTimer;
  let abandoned = false; // the deadline passed: whatever the steps still start must stop at once
  try {
    const steps = (async () => {
      peer = startPeer({ folder: fixtures, home });
      const listening = await peer.ready;
      log(`peer "${PEER_NAME}" listening on port ${listening.port}`);

      server = await startVsCodeServer({ dataDir: path.join(tmp, 'vscode'), trustWorkspace: true });
      if (abandoned) return void (await server.stop());
      log(`VS Code server on port ${server.port}`);
      browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
      if (abandoned) return void (await browser.close());
      page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
      page.on('pageerror', (err) => pageErrors.push(String(err)));
      page.on('console', (msg) => {
        if (msg.type() === 'error' && !/vsda|gallery|telemetry|404|Failed to load resource|net::ERR/i.test(msg.text())) pageErrors.push(msg.text());
      });
      const shot = async (name) => {
        await page.screenshot({ path: path.join(screenshotsDir, name) });
        log(`screenshot ${path.relative(ROOT, path.join(screenshotsDir, name))}`);
      };
      await page.goto(workbenchUrl(server, { folder: ws }), { timeout: 60_000 });
      await drive({ page, shot, ws, source: { invite: listening.invite, folder: fixtures } });
    })();
    steps.catch(() => undefined);
    await Promise.race([
      steps,
      new Promise((_, reject) => (stepsTimer = setTimeout(() => reject(new Error(`the UI test did not finish within ${TOTAL_MS} ms`)), TOTAL_MS))),
    ]);
    code = 0;
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (err) {
    process.stdout.write(`[ui] FAILED: ${err?.stack ?? err}\n`);
    if (page) {
      const file = path.join(screenshotsDir, 'ui-failure.png');
      await withTimeout(page.screenshot({ path: file }), 10_000, 'failure screenshot')
        .then(() => process.stdout.write(`[ui] failure screenshot: ${path.relative(ROOT, file)}\n`))
        .catch(() => undefined);
    }
    if (pageErrors.length) process.stdout.write(`[ui] workbench errors:\n  ${pageErrors.slice(-10).join('\n  ')}\n`);
    if (peer) process.stdout.write(`[ui] peer output (tail):\n${peer.output().slice(-2000)}\n`);
    if (server) process.stdout.write(`[ui] VS Code server output (tail):\n${server.output().slice(-3000)}\n`);
  } finally {
    abandoned = true;
    clearTimeout(stepsTimer);
    const quietly = (promise, what) => withTimeout(Promise.resolve(promise), CLEANUP_STEP_MS, what).catch((err) => log(`cleanup: ${err.message}`));
    if (browser) await quietly(browser.close(), 'closing the browser');
    if (server) await quietly(server.stop(), 'stopping the VS Code server');
    if (peer) await quietly(peer.stop(), 'stopping the peer');
    rmSync(tmp, { recursive: true, force: true, maxRetries: 3 });
  }
  return code;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  runUiTest({ screenshotsDir: path.join(ROOT, 'out', 'screenshots') }).then(
    (code) => (process.exitCode = code),
    (err) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
