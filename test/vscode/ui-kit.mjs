// What the Playwright UI tests share: a workbench with this extension loaded in headless Chromium,
// child processes that are always stopped, every wait bounded, and on failure the evidence
// (a screenshot, workbench errors, process output, the extension's log).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, ROOT, startVsCodeServer, workbenchUrl } from './server.mjs';

const TOTAL_MS = Number(process.env.PEERSHARE_UI_TEST_TIMEOUT_MS ?? 170_000);
const CLEANUP_STEP_MS = 10_000;

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

export function writeTree(folder, files) {
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(folder, rel)), { recursive: true });
    writeFileSync(path.join(folder, rel), content);
  }
}

export async function poll(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function findFiles(dir, match) {
  const found = [];
  for (const entry of existsSync(dir) ? readdirSync(dir, { withFileTypes: true, recursive: true }) : []) {
    if (entry.isFile() && match(entry.name)) found.push(path.join(entry.parentPath ?? entry.path, entry.name));
  }
  return found;
}

/** Spawns a Node child and collects its output; `stop()` ends it (SIGTERM, then SIGKILL). */
export function startChild(args, options = {}) {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exited = () => child.exitCode !== null || child.signalCode !== null;
  return {
    child,
    stdout: () => stdout,
    output: () => stdout + stderr,
    exited,
    stop: () =>
      new Promise((resolve) => {
        if (exited()) return resolve();
        const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
        child.once('exit', () => {
          clearTimeout(kill);
          resolve();
        });
        child.kill('SIGTERM');
      }),
  };
}

/** `peershare serve <args>` with --json; `ready` resolves with its "listening" line. */
export function startCliPeer(args) {
  const peer = startChild([path.join(ROOT, 'dist', 'cli.js'), 'serve', ...args, '--json']);
  const ready = new Promise((resolve, reject) => {
    peer.child.stdout.on('data', () => {
      const out = peer.stdout();
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      try {
        const event = JSON.parse(out.slice(0, nl));
        if (event.event !== 'listening' || !event.invite) throw new Error(`unexpected first line: ${out.slice(0, nl)}`);
        resolve(event);
      } catch (err) {
        reject(err);
      }
    });
    peer.child.once('exit', (code, signal) => reject(new Error(`peer exited early (${code ?? signal}):\n${peer.output()}`)));
    peer.child.once('error', reject);
  });
  return { ...peer, ready: withTimeout(ready, 20_000, 'the CLI peer to print its "listening" line') };
}

/**
 * Runs a command from the command palette, as a person would: F1, type, wait for the row, Enter.
 * Just after the workbench loads, the palette may open before the extension's commands are listed
 * (CI once saw "Start Sharing" missing for 10 s on a loaded machine), so a missing row closes the
 * palette and tries again, up to three times. `before(page)` runs while the row is shown (a screenshot).
 */
export async function runCommand(page, command, { before } = {}) {
  const quickInput = page.locator('.quick-input-widget');
  const quickInputBox = quickInput.locator('.quick-input-box input');
  const row = quickInput.locator('.monaco-list-row', { hasText: command.replace(/^PeerShare: /, '') }).first();
  for (let attempt = 1; ; attempt++) {
    await page.keyboard.press('F1');
    await quickInputBox.waitFor({ state: 'visible', timeout: 10_000 });
    await quickInputBox.fill(`>${command}`);
    const shown = await row.waitFor({ state: 'visible', timeout: 10_000 }).then(() => true, (err) => (attempt >= 3 ? Promise.reject(err) : false));
    if (shown) break;
    await page.keyboard.press('Escape');
    await quickInputBox.waitFor({ state: 'hidden', timeout: 5_000 }).catch(() => undefined);
  }
  if (before) await before(page);
  await page.keyboard.press('Enter');
}

/**
 * Right-clicks `target` and takes one item of its menu, as a person would; a menu that did not
 * open, or closed before its item could be clicked, is opened again (up to three times). `before()` runs while the item is highlighted (a
 * screenshot of the menu).
 */
export async function contextMenu(page, target, label, { before } = {}) {
  const menu = page.locator('.context-view .monaco-menu');
  const item = menu.locator('.action-item:not(.disabled) .action-label', { hasText: new RegExp(`^${label}$`) });
  for (let attempt = 1; ; attempt++) {
    await page.mouse.move(700, 600); // no hover tooltip in the way
    await target.click({ button: 'right' });
    try {
      await item.waitFor({ state: 'visible', timeout: 5_000 });
      await item.hover({ timeout: 5_000 });
      await page.waitForTimeout(300);
      if (before) await before();
      // A menu that closes under the pointer (the workbench redrew on a busy machine) is opened
      // again, as a person would; its item was not run.
      await item.click({ timeout: 5_000 });
      break;
    } catch (err) {
      if (attempt === 3) throw err;
      await page.keyboard.press('Escape');
    }
  }
  // A click that lands while the menu is still settling only highlights the item; then Enter
  // takes it. (Not both: an item run twice gets its row's handle only, the second time.)
  const closed = await menu.waitFor({ state: 'hidden', timeout: 2_000 }).then(() => true, () => false);
  if (!closed) await page.keyboard.press('Enter');
  await menu.waitFor({ state: 'hidden', timeout: 5_000 });
}

/**
 * Opens a tree row (Peers view, Explorer) unless it is open. The mouse first leaves the tree, as a
 * person's hand would: a row's hover, shown under the row clicked before, covered the next row and
 * took the click (CI saw it).
 */
export async function expandRow(page, row, timeout = 15_000) {
  await row.waitFor({ state: 'visible', timeout });
  if ((await row.getAttribute('aria-expanded')) === 'true') return;
  await page.mouse.move(700, 600);
  await page.locator('.context-view', { has: page.locator('p') }).first().waitFor({ state: 'hidden', timeout: 5_000 }).catch(() => undefined);
  await row.click();
}

/** Clicks a notification's button; a click that lands while the toast settles only focuses it, and then Enter takes it. */
export async function answer(page, notification, label) {
  const button = notification.first().locator('.monaco-button', { hasText: new RegExp(`^${label}$`) });
  await button.click();
  if (await notification.first().waitFor({ state: 'hidden', timeout: 3_000 }).then(() => true, () => false)) return;
  await button.focus();
  await page.keyboard.press('Enter');
  await notification.first().waitFor({ state: 'hidden', timeout: 5_000 });
}

/**
 * Finds a notification as a person would: as a toast, or else under the bell in the notification
 * center (VS Code now and then files one there without a toast; CI saw it twice). Returns the
 * notification and `close()`, which shuts the center again if it was opened, so that later
 * notifications show as toasts.
 */
export async function findNotification(page, text, { timeout = 10_000 } = {}) {
  const asToast = page.locator('.notifications-toasts .notification-toast', { hasText: text });
  if (await asToast.first().waitFor({ state: 'visible', timeout }).then(() => true, () => false)) return { notification: asToast, inCenter: false, close: async () => undefined };
  const bell = page.locator('.part.statusbar [id="status.notifications"]');
  const center = page.locator('.notifications-center.visible');
  // What had the focus: VS Code holds back a toast while the focus is where toasts show.
  const focused = await page.evaluate(() => {
    const e = document.activeElement;
    const r = e?.getBoundingClientRect();
    return e ? `${e.tagName}.${String(e.className).slice(0, 60)} at ${Math.round(r.left)},${Math.round(r.top)} of ${innerWidth}x${innerHeight}` : 'nothing';
  });
  process.stdout.write(`[ui-kit] "${text}" is not a toast; the focus was on ${focused}\n`);
  const listed = page.locator('.notifications-center .notification-list-item', { hasText: text });
  const close = async () => {
    if (await center.isVisible()) await bell.click();
    await center.waitFor({ state: 'hidden', timeout: 5_000 });
  };
  // The open center did not always list a notification that came while it was open (a progress
  // notification, on a fresh clone; a screenshot a moment later showed it): look again, a few times.
  for (let attempt = 1; ; attempt++) {
    if (!(await center.isVisible())) await bell.click();
    if (await listed.first().waitFor({ state: 'visible', timeout: 3_000 }).then(() => true, () => false)) break;
    if (attempt === 4) throw new Error(`no notification "${text}", as a toast or in the center (center: ${JSON.stringify(await page.locator('.notifications-center').innerText().catch(() => ''))})`);
    await close();
    if (await asToast.first().waitFor({ state: 'visible', timeout: 1_000 }).then(() => true, () => false)) return { notification: asToast, inCenter: false, close: async () => undefined };
  }
  return { notification: listed, inCenter: true, close };
}

/** Closes every toast on screen. */
export async function dismissToasts(page) {
  for (const close of await page.locator('.notifications-toasts .notification-toast .codicon-notifications-clear').all()) await close.click({ timeout: 2_000 }).catch(() => undefined);
}

/**
 * Runs one UI test: `prepare({ tmp, log, track })` makes its files and processes (`track(name,
 * child)` registers one for cleanup and failure output) and returns `{ workspace, drive }`;
 * `drive({ page, shot })` takes the steps a person takes. Resolves 0 on success, 1 on failure.
 */
export async function runWorkbenchTest({ label, screenshotsDir, prepare, forPeople = false }) {
  const started = Date.now();
  const log = (message) => process.stdout.write(`[${label} ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}\n`);
  for (const built of ['extension.js', 'cli.js']) {
    if (!existsSync(path.join(ROOT, 'dist', built))) {
      process.stdout.write(`[${label}] dist/${built} is missing: run npm run build first\n`);
      return 1;
    }
  }
  mkdirSync(screenshotsDir, { recursive: true });
  const failureShot = path.join(screenshotsDir, `${label}-failure.png`);
  rmSync(failureShot, { force: true });
  const tmp = mkdtempSync(path.join(os.tmpdir(), `peershare-${label}-`));
  const children = [];
  let server;
  let browser;
  let page;
  const pageErrors = [];
  let code = 1;
  let stepsTimer;
  let abandoned = false; // the deadline passed: whatever the steps still start must stop at once
  const track = (name, child) => {
    if (abandoned) {
      void child.stop();
      throw new Error('abandoned');
    }
    children.push({ name, child });
    return child;
  };
  try {
    const steps = (async () => {
      const { workspace, drive } = await prepare({ tmp, log, track });
      server = await startVsCodeServer({ dataDir: path.join(tmp, 'vscode'), trustWorkspace: true, forPeople });
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
      await page.goto(workbenchUrl(server, { folder: workspace }), { timeout: 60_000 });
      await drive({ page, shot });
    })();
    steps.catch(() => undefined);
    await Promise.race([
      steps,
      new Promise((_, reject) => (stepsTimer = setTimeout(() => reject(new Error(`the UI test did not finish within ${TOTAL_MS} ms`)), TOTAL_MS))),
    ]);
    code = 0;
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    // PEERSHARE_UI_LOG=1 shows the extension's log after a pass too (to see what happened when).
    if (process.env.PEERSHARE_UI_LOG) for (const file of findFiles(path.join(tmp, 'vscode'), (name) => /PeerShare\.log$/.test(name))) process.stdout.write(readFileSync(file, 'utf8'));
  } catch (err) {
    process.stdout.write(`[${label}] FAILED: ${err?.stack ?? err}\n`);
    if (page) {
      await withTimeout(page.screenshot({ path: failureShot }), 10_000, 'failure screenshot')
        .then(() => process.stdout.write(`[${label}] failure screenshot: ${path.relative(ROOT, failureShot)}\n`))
        .catch(() => undefined);
    }
    if (pageErrors.length) process.stdout.write(`[${label}] workbench errors:\n  ${pageErrors.slice(-10).join('\n  ')}\n`);
    for (const { name, child } of children) process.stdout.write(`[${label}] ${name} output (tail):\n${child.output().slice(-2000)}\n`);
    if (server) process.stdout.write(`[${label}] VS Code server output (tail):\n${server.output().slice(-3000)}\n`);
    // The extension's own log (the PeerShare output channel), written under the server's data folder.
    for (const file of findFiles(path.join(tmp, 'vscode'), (name) => /PeerShare\.log$/.test(name))) {
      process.stdout.write(`[${label}] ${path.basename(file)} (tail):\n${readFileSync(file, 'utf8').slice(-3000)}\n`);
    }
  } finally {
    abandoned = true;
    clearTimeout(stepsTimer);
    const quietly = (promise, what) => withTimeout(Promise.resolve(promise), CLEANUP_STEP_MS, what).catch((err) => log(`cleanup: ${err.message}`));
    if (browser) await quietly(browser.close(), 'closing the browser');
    if (server) await quietly(server.stop(), 'stopping the VS Code server');
    for (const { name, child } of children.reverse()) await quietly(child.stop(), `stopping ${name}`);
    rmSync(tmp, { recursive: true, force: true, maxRetries: 3 });
  }
  return code;
}
