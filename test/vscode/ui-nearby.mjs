// Nearby peers in the real VS Code workbench, in headless Chromium, as a person sees them:
// a headless peer (the real CLI, `serve --announce`) appears in the PeerShare view under "Nearby"
// as "not trusted"; then the editor starts sharing from the command palette, a nearby peer (the
// project's core, in a child process) asks to connect, the editor shows the approval prompt with
// the same verification code, the person clicks "Allow Once", and the nearby peer gets in.
// Everything (sharing, announcements) stays on loopback: LOOPBACK_SETTINGS in the workspace.
// Usage: npm run build && node test/vscode/ui-nearby.mjs   (screenshots go to out/screenshots/)
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, DISCOVERY_TEST_PORT, LOOPBACK_SETTINGS, ROOT, startVsCodeServer, workbenchUrl } from './server.mjs';

const TOTAL_MS = Number(process.env.PEERSHARE_UI_TEST_TIMEOUT_MS ?? 170_000);
const PEER_NAME = "Ben's desktop";
const ASKER_NAME = 'Cleo (nearby)';
const CLEANUP_STEP_MS = 10_000;

let started = Date.now();
function log(message) {
  process.stdout.write(`[ui-nearby ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}\n`);
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

/** Spawns a child and collects its output; `stop()` ends it (SIGTERM, then SIGKILL). */
function startChild(args, options = {}) {
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

/** `peershare serve --announce` on loopback; resolves with its "listening" event. */
function startAnnouncingPeer({ folder, home }) {
  const cli = path.join(ROOT, 'dist', 'cli.js');
  const peer = startChild([
    cli, 'serve', folder, '--json', '--home', home, '--host', '127.0.0.1',
    '--announce', '--interface', '127.0.0.1', '--discovery-port', String(DISCOVERY_TEST_PORT), '--name', PEER_NAME,
  ]);
  const ready = new Promise((resolve, reject) => {
    peer.child.stdout.on('data', () => {
      const out = peer.stdout();
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      try {
        const event = JSON.parse(out.slice(0, nl));
        if (event.event !== 'listening' || !event.peerId) throw new Error(`unexpected first line: ${out.slice(0, nl)}`);
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

// The nearby peer that asks to connect, with the project's own core (TypeScript, through tsx).
// It finds the editor by its discovery announcement (the one that is not Ben's), connects with
// requestAccess and reports each step on stdout.
const ASKER_SCRIPT = `
const m = await import('./src/core/index.ts');
const core = m.default ?? m;
const env = process.env;
const identity = await core.loadOrCreateIdentity(env.PS_HOME);
const trust = await core.TrustStore.open(env.PS_HOME);
const d = new core.Discovery({ selfId: identity.peerId, interfaces: ['127.0.0.1'], port: Number(env.PS_DISCOVERY_PORT) });
await d.start();
let editor;
for (const deadline = Date.now() + 30000; !editor; await new Promise((r) => setTimeout(r, 200))) {
  if (Date.now() > deadline) throw new Error('no announcement from the editor within 30 s: ' + JSON.stringify(d.list()));
  editor = d.list().find((p) => p.name !== env.PS_OTHER_NAME);
}
console.log('EDITOR ' + JSON.stringify(editor));
await d.stop();
const connection = await core.connectToPeer({
  identity, trust, addresses: [editor.address], expectedPeerId: editor.id, name: env.PS_NAME, requestAccess: true,
  onVerificationCode: (c) => console.log('CODE ' + c),
});
console.log('CONNECTED ' + JSON.stringify(connection.welcome));
const entries = await connection.list('');
console.log('LISTED ' + JSON.stringify(entries.map((e) => e.name)));
connection.close();
process.exit(0);
`;

function findFiles(dir, match) {
  const found = [];
  for (const entry of existsSync(dir) ? readdirSync(dir, { withFileTypes: true, recursive: true }) : []) {
    if (entry.isFile() && match(entry.name)) found.push(path.join(entry.parentPath ?? entry.path, entry.name));
  }
  return found;
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
async function drive({ page, shot, startAsker }) {
  const sidebar = page.locator('.part.sidebar');
  const row = (name) => sidebar.locator('.monaco-list-row', { has: page.locator('.label-name', { hasText: new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }) });
  const bell = page.locator('.part.statusbar [id="status.notifications"]');
  const center = page.locator('.notifications-center.visible');

  log('waiting for the workbench');
  await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: 60_000 });
  const activity = page.locator('.part.activitybar .action-item [aria-label*="PeerShare"]').first();
  await activity.waitFor({ state: 'visible', timeout: 45_000 });
  log('workbench loaded, PeerShare icon in the activity bar');
  await page.waitForTimeout(3000); // let extension activation (onStartupFinished) settle

  await activity.click();
  const viewTitle = sidebar.locator('.composite.title', { hasText: 'PeerShare' });
  await viewTitle.waitFor({ state: 'visible', timeout: 15_000 });

  // Nearby: Ben's desktop, announced by the CLI, shown as not trusted.
  // A person waits for Ben to show up, without pressing Refresh: the view must update by itself.
  const nearbyRow = row('Nearby');
  await nearbyRow.waitFor({ state: 'visible', timeout: 10_000 });
  if ((await nearbyRow.getAttribute('aria-expanded')) !== 'true') await nearbyRow.click();
  const benRow = row(PEER_NAME);
  await benRow.waitFor({ state: 'visible', timeout: 30_000 });
  const description = (await benRow.locator('.label-description').innerText().catch(() => '')).trim();
  if (description !== 'not trusted') throw new Error(`"${PEER_NAME}" is described as ${JSON.stringify(description)}, not "not trusted"`);
  const benLevel = Number(await benRow.getAttribute('aria-level'));
  const nearbyLevel = Number(await nearbyRow.getAttribute('aria-level'));
  if (benLevel !== nearbyLevel + 1) throw new Error(`"${PEER_NAME}" (level ${benLevel}) is not inside the Nearby group (level ${nearbyLevel})`);
  await page.mouse.move(700, 450); // no hover tooltip over the tree
  await page.waitForTimeout(500);
  await shot('nearby.png');
  log(`"${PEER_NAME}" listed under Nearby as "${description}", without a Refresh`);

  log('starting to share from the command palette');
  await page.keyboard.press('F1');
  const quickInput = page.locator('.quick-input-widget');
  await quickInput.locator('.quick-input-box input').waitFor({ state: 'visible', timeout: 10_000 });
  await page.keyboard.type('PeerShare: Start Sharing', { delay: 20 });
  await quickInput.locator('.monaco-list-row', { hasText: 'Start Sharing' }).first().waitFor({ state: 'visible', timeout: 10_000 });
  await page.keyboard.press('Enter');
  const sharingStatus = page.locator('.part.statusbar', { hasText: /Sharing · \d+ peer/ });
  await sharingStatus.waitFor({ state: 'visible', timeout: 20_000 });
  log('sharing (status bar says so)');

  // The nearby peer asks to connect.
  const asker = startAsker();
  const code = await poll(() => asker.stdout().match(/^CODE (\d{3} ?\d{3})$/m)?.[1] ?? (asker.exited() && Promise.reject(new Error(`the nearby peer exited before a verification code:\n${asker.output()}`))), 40_000, 'the nearby peer to reach the editor and print its verification code');
  const editorSeen = JSON.parse(asker.stdout().match(/^EDITOR (.*)$/m)[1]);
  log(`nearby peer found the editor ("${editorSeen.name}" at ${editorSeen.address}); its verification code is ${code}`);

  // The prompt: a toast, or (with --enable-smoke-test-driver, no toasts) an entry in the notification center.
  const toast = page.locator('.notifications-toasts .notification-toast', { hasText: 'asks to connect' });
  const listed = center.locator('.notification-list-item', { hasText: 'asks to connect' });
  let prompt;
  const deadline = Date.now() + 20_000;
  while (!prompt) {
    if (await toast.first().isVisible()) prompt = toast.first();
    else {
      if (!(await center.isVisible())) await bell.click({ timeout: 5_000 });
      if (await listed.first().isVisible()) prompt = listed.first();
    }
    if (prompt) break;
    if (Date.now() > deadline) throw new Error(`no approval prompt within 20 s (center shows: ${JSON.stringify(await center.innerText().catch(() => ''))})`);
    await page.waitForTimeout(250);
  }
  const text = (await prompt.innerText()).replace(/\s+/g, ' ');
  for (const want of [ASKER_NAME, 'asks to connect', `Verification code ${code}`]) {
    if (!text.includes(want)) throw new Error(`the approval prompt does not say ${JSON.stringify(want)}: ${JSON.stringify(text)}`);
  }
  const allowOnce = prompt.locator('.monaco-button', { hasText: /^Allow Once$/ });
  for (const label of ['Allow Once', 'Always Allow', 'Deny']) {
    await prompt.locator('.monaco-button', { hasText: new RegExp(`^${label}$`) }).waitFor({ state: 'visible', timeout: 5_000 });
  }
  await page.mouse.move(700, 300); // no hover over the bell
  await page.waitForTimeout(500);
  await shot('approval.png');
  log(`approval prompt shows the same code ${code} and Allow Once / Always Allow / Deny`);

  await allowOnce.click();
  await poll(() => /^LISTED /m.test(asker.stdout()) || (asker.exited() && Promise.reject(new Error(`the nearby peer failed after Allow Once:\n${asker.output()}`))), 20_000, 'the nearby peer to connect and list the share');
  const listing = JSON.parse(asker.stdout().match(/^LISTED (.*)$/m)[1]);
  if (!/^CONNECTED /m.test(asker.stdout())) throw new Error(`the nearby peer listed without connecting?\n${asker.output()}`);
  log(`nearby peer connected after Allow Once and listed ${JSON.stringify(listing)}`);
  await prompt.waitFor({ state: 'hidden', timeout: 5_000 }).catch(() => log('note: the approval prompt is still shown after Allow Once'));
}

/** Runs the test; resolves with 0 on success, 1 on failure (printing why). */
export async function runNearbyUiTest({ screenshotsDir }) {
  started = Date.now();
  for (const built of ['extension.js', 'cli.js']) {
    if (!existsSync(path.join(ROOT, 'dist', built))) {
      process.stdout.write(`[ui-nearby] dist/${built} is missing: run npm run build first\n`);
      return 1;
    }
  }
  mkdirSync(screenshotsDir, { recursive: true });
  rmSync(path.join(screenshotsDir, 'ui-nearby-failure.png'), { force: true });
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'peershare-ui-nearby-'));
  const shared = path.join(tmp, 'peer', 'shared');
  const ws = path.join(tmp, 'ws', 'workspace');
  writeTree(shared, { 'hello.txt': "Ben's shared folder.\n" });
  writeTree(ws, {
    'notes.txt': 'Workspace shared with a nearby peer.\n',
    'src/app.ts': 'export const answer = 42;\n',
    '.vscode/settings.json': JSON.stringify(LOOPBACK_SETTINGS, null, 2),
  });

  let peer;
  let asker;
  let server;
  let browser;
  let page;
  const pageErrors = [];
  let code = 1;
  let stepsTimer;
  let abandoned = false;
  const startAsker = () => {
    if (abandoned) throw new Error('abandoned');
    asker = startChild(['--import', 'tsx', '--input-type=module', '-e', ASKER_SCRIPT], {
      cwd: ROOT,
      env: {
        ...process.env,
        PS_HOME: path.join(tmp, 'asker-home'),
        PS_DISCOVERY_PORT: String(DISCOVERY_TEST_PORT),
        PS_OTHER_NAME: PEER_NAME,
        PS_NAME: ASKER_NAME,
      },
    });
    return asker;
  };
  try {
    const steps = (async () => {
      peer = startAnnouncingPeer({ folder: shared, home: path.join(tmp, 'peer-home') });
      const listening = await peer.ready;
      log(`peer "${PEER_NAME}" (${listening.peerId}) listening on port ${listening.port}, announcing on 127.0.0.1:${DISCOVERY_TEST_PORT}`);

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
      await drive({ page, shot, startAsker });
    })();
    steps.catch(() => undefined);
    await Promise.race([
      steps,
      new Promise((_, reject) => (stepsTimer = setTimeout(() => reject(new Error(`the UI test did not finish within ${TOTAL_MS} ms`)), TOTAL_MS))),
    ]);
    code = 0;
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (err) {
    process.stdout.write(`[ui-nearby] FAILED: ${err?.stack ?? err}\n`);
    if (page) {
      const file = path.join(screenshotsDir, 'ui-nearby-failure.png');
      await withTimeout(page.screenshot({ path: file }), 10_000, 'failure screenshot')
        .then(() => process.stdout.write(`[ui-nearby] failure screenshot: ${path.relative(ROOT, file)}\n`))
        .catch(() => undefined);
    }
    if (pageErrors.length) process.stdout.write(`[ui-nearby] workbench errors:\n  ${pageErrors.slice(-10).join('\n  ')}\n`);
    if (peer) process.stdout.write(`[ui-nearby] peer output (tail):\n${peer.output().slice(-2000)}\n`);
    if (asker) process.stdout.write(`[ui-nearby] nearby peer output (tail):\n${asker.output().slice(-2000)}\n`);
    if (server) process.stdout.write(`[ui-nearby] VS Code server output (tail):\n${server.output().slice(-3000)}\n`);
    // The extension's own log (the PeerShare output channel), written under the server's data folder.
    for (const file of findFiles(path.join(tmp, 'vscode'), (name) => /PeerShare\.log$/.test(name))) {
      process.stdout.write(`[ui-nearby] ${path.basename(file)} (tail):\n${readFileSync(file, 'utf8').slice(-3000)}\n`);
    }
  } finally {
    abandoned = true;
    clearTimeout(stepsTimer);
    const quietly = (promise, what) => withTimeout(Promise.resolve(promise), CLEANUP_STEP_MS, what).catch((err) => log(`cleanup: ${err.message}`));
    if (browser) await quietly(browser.close(), 'closing the browser');
    if (server) await quietly(server.stop(), 'stopping the VS Code server');
    if (asker) await quietly(asker.stop(), 'stopping the nearby peer');
    if (peer) await quietly(peer.stop(), 'stopping the peer');
    rmSync(tmp, { recursive: true, force: true, maxRetries: 3 });
  }
  return code;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  runNearbyUiTest({ screenshotsDir: path.join(ROOT, 'out', 'screenshots') }).then(
    (code) => (process.exitCode = code),
    (err) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
