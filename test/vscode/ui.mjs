// Drives PeerShare the way a person would, through the real VS Code workbench in headless Chromium:
// a headless peer (the real CLI) shares a `fixtures` folder; in VS Code we connect with its invite
// from the command palette, open the PeerShare view, expand the peer and its folder, right-click
// README.md, choose Download, and check the notification and the bytes on disk.
// Usage: npm run build && node test/vscode/ui.mjs   (screenshots go to out/screenshots/)
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LOOPBACK_SETTINGS, ROOT } from './server.mjs';
import { poll, runWorkbenchTest, startCliPeer, writeTree } from './ui-kit.mjs';

const PEER_NAME = "Ana's laptop";
const FIXTURES = {
  'users/1.json': '{\n  "id": 1,\n  "name": "Ana"\n}\n',
  'users/2.json': '{\n  "id": 2,\n  "name": "Bruno"\n}\n',
  'README.md': '# Fixtures\n\nSample files shared by the PeerShare UI test.\n',
  'build.log': Array.from({ length: 40 }, (_, i) => `[${String(i).padStart(2, '0')}] step ${i} ok`).join('\n') + '\n',
};

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
  log(`connected (notification seen as ${await seeNotification(`Connected to ${PEER_NAME}.`, 20_000)})`);
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
let log = () => undefined;

/** Runs the UI test; resolves with 0 on success, 1 on failure (printing why). */
export function runUiTest({ screenshotsDir }) {
  return runWorkbenchTest({
    label: 'ui',
    screenshotsDir,
    prepare: async ({ tmp, log: logger, track }) => {
      log = logger;
      const fixtures = path.join(tmp, 'peer', 'fixtures');
      const workspace = path.join(tmp, 'ws', 'workspace');
      writeTree(fixtures, FIXTURES);
      writeTree(workspace, {
        'notes.txt': 'Workspace of the downloader.\n',
        'src/app.ts': 'export const answer = 42;\n',
        '.vscode/settings.json': JSON.stringify(LOOPBACK_SETTINGS, null, 2),
      });
      const peer = track('peer', startCliPeer([fixtures, '--home', path.join(tmp, 'peer-home'), '--host', '127.0.0.1', '--invite-uses', '10', '--name', PEER_NAME]));
      const listening = await peer.ready;
      log(`peer "${PEER_NAME}" listening on port ${listening.port}`);
      return { workspace, drive: ({ page, shot }) => drive({ page, shot, ws: workspace, source: { invite: listening.invite, folder: fixtures } }) };
    },
  });
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
