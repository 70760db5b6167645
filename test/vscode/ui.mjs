// Drives PeerShare the way a person would, through the real VS Code workbench in headless Chromium:
// a headless peer (the real CLI) shares a `fixtures` folder; in VS Code we connect with its invite
// from the command palette, open the PeerShare view, expand the peer and its folder, right-click
// README.md, choose Download, and check the notification and the bytes on disk; then Compare with
// Local, the "already exists" dialog (safe default, Compare beside it, Keep Both, Cancel), and the
// peer going offline. Notifications show as toasts here, as a person sees them.
// Usage: npm run build && node test/vscode/ui.mjs   (screenshots go to out/screenshots/)
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LOOPBACK_SETTINGS, ROOT } from './server.mjs';
import { contextMenu, expandRow, poll, runCommand, runWorkbenchTest, startCliPeer, writeTree } from './ui-kit.mjs';

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
  // This run shows notifications as toasts, as a person sees them (no smoke-test driver: with it,
  // the workbench shows no toasts at all). Each message must show once, as one toast.
  async function seeNotification(text, timeout) {
    const toast = page.locator('.notifications-toasts .notification-toast', { hasText: text });
    await toast.first().waitFor({ state: 'visible', timeout }).catch(async () => {
      throw new Error(`no toast "${text}" within ${timeout} ms (toasts: ${JSON.stringify(await page.locator('.notifications-toasts').innerText().catch(() => ''))})`);
    });
    const count = await toast.count();
    if (count !== 1) throw new Error(`${count} toasts say "${text}"`);
    return 'a toast';
  }
  /** Toasts hide after a while, or at once with their close button; a person moves on either way. */
  async function dismissToasts() {
    for (const close of await page.locator('.notifications-toasts .notification-toast .codicon-notifications-clear').all()) await close.click({ timeout: 2_000 }).catch(() => undefined);
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
  // The Chat panel VS Code opens on the right is not ours: close it, as many people do.
  const chatPanel = page.locator('.part.auxiliarybar');
  if (await chatPanel.isVisible()) {
    await page.keyboard.press('Control+Alt+B');
    await chatPanel.waitFor({ state: 'hidden', timeout: 5_000 }).catch(() => log('note: the secondary side bar stayed open'));
  }

  // The PeerShare view before connecting: its welcome content.
  await activity.click();
  const viewTitle = sidebar.locator('.composite.title', { hasText: 'PeerShare' });
  await viewTitle.waitFor({ state: 'visible', timeout: 15_000 });
  await page.waitForTimeout(1000);
  await shot('welcome.png');

  log('connecting from the command palette');
  const quickInput = page.locator('.quick-input-widget');
  const quickInputBox = quickInput.locator('.quick-input-box input');
  await runCommand(page, 'PeerShare: Connect to Peer', { before: () => shot('command-palette.png') });
  await quickInput.locator('.quick-input-message', { hasText: 'Paste the invite' }).waitFor({ state: 'visible', timeout: 10_000 });
  await quickInputBox.fill(source.invite);
  await shot('invite-input.png');
  await page.keyboard.press('Enter');
  log(`connected (notification seen as ${await seeNotification(`Connected to ${PEER_NAME}.`, 20_000)})`);
  await closeNotificationCenter();

  // The view may have been closed by the palette; make sure it is the visible one.
  if (!(await viewTitle.isVisible())) await activity.click();
  const peerRow = row(PEER_NAME);
  await expandRow(page, peerRow);
  await expandRow(page, row('fixtures'));
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
  const progress = page.locator('.notifications-toasts .notification-toast', { hasText: 'Downloading README.md' });
  await progress.waitFor({ state: 'hidden', timeout: 3_000 }).catch(() => log('note: the "Downloading README.md" progress notification is still listed after the download finished'));
  await page.mouse.move(700, 300); // no "Hide Notifications" hover over the bell
  await page.waitForTimeout(500);
  await shot('downloaded.png');
  log(`downloaded README.md (${got.length} bytes, identical to the source; notification seen as ${seen})`);

  // Compare with Local looks where Download put it (one mapping from a peer's path to ours).
  await closeNotificationCenter();
  await contextMenu(page, readmeRow, 'Compare with Local');
  const diff = page.locator('.editor-instance .monaco-diff-editor');
  await diff.waitFor({ state: 'visible', timeout: 15_000 });
  const diffTab = page.locator('.tabs-container .tab.active', { hasText: `README.md (${PEER_NAME}) ↔ (yours)` });
  await diffTab.waitFor({ state: 'visible', timeout: 5_000 });
  await page.mouse.move(700, 600);
  await shot('compare.png');
  log('Compare with Local opened the diff of the peer\'s README.md with the downloaded one');

  // Download again: the file exists. The modal's safe answer is focused (Enter never overwrites),
  // a single file gets Keep Both, Overwrite, Compare and the dialog's own Cancel, no duplicate Skip.
  await contextMenu(page, readmeRow, 'Download');
  const dialog = page.locator('.monaco-dialog-box');
  await dialog.waitFor({ state: 'visible', timeout: 15_000 });
  // (The web workbench lays buttons out right to left, the primary one last: compare as a set.)
  const buttons = (await dialog.locator('.dialog-buttons .monaco-button').allInnerTexts()).map((t) => t.trim());
  if (JSON.stringify([...buttons].sort()) !== JSON.stringify(['Cancel', 'Compare', 'Keep Both', 'Overwrite'])) throw new Error(`the "already exists" dialog offers ${JSON.stringify(buttons)}`);
  const focused = await page.evaluate(() => document.activeElement?.textContent?.trim());
  if (focused !== 'Keep Both') throw new Error(`the "already exists" dialog focuses ${JSON.stringify(focused)}, not the safe answer`);
  await shot('conflict.png');
  log(`conflict dialog: ${buttons.join(' | ')}, "${focused}" focused`);
  // Compare opens the diff and asks again beside it, not over it: the diff can be read first.
  await dialog.locator('.dialog-buttons .monaco-button', { hasText: 'Compare' }).click();
  await dialog.waitFor({ state: 'hidden', timeout: 10_000 });
  await diff.waitFor({ state: 'visible', timeout: 15_000 });
  const askedAgain = page.locator('.notifications-toasts .notification-toast', { hasText: 'already exists' });
  await askedAgain.waitFor({ state: 'visible', timeout: 10_000 });
  await page.mouse.move(700, 600);
  await page.waitForTimeout(600); // the toast slides in
  await shot('conflict-compare.png');
  log('Compare showed the diff with the question in a notification beside it');
  await askedAgain.locator('.monaco-button', { hasText: 'Keep Both' }).click();
  const copy = path.join(ws, 'README (2).md');
  await seeNotification(`Downloaded README.md from ${PEER_NAME} as README (2).md.`, 30_000);
  await poll(() => existsSync(copy), 5_000, `${copy} to appear`);
  if (!readFileSync(copy).equals(want)) throw new Error('README (2).md differs from the peer\'s README.md');
  log('Keep Both saved README (2).md and said so');
  // The dialog's Cancel leaves the file alone, and the notification says that, not "Downloaded".
  await dismissToasts();
  await contextMenu(page, readmeRow, 'Download');
  await dialog.waitFor({ state: 'visible', timeout: 15_000 });
  await page.keyboard.press('Escape');
  await seeNotification('Left README.md alone: it already exists.', 15_000);
  log('Cancel left README.md alone and said so');
  await dismissToasts();

  // The peer stops sharing: the view says so without a Refresh, and lists none of its old files.
  await source.stop();
  const stopped = Date.now();
  await poll(async () => (await peerRow.locator('.label-description').innerText().catch(() => '')) === 'offline', 30_000, 'the peer row to say "offline"');
  await row('Not reachable right now').waitFor({ state: 'visible', timeout: 15_000 });
  if (await row('README.md').isVisible()) throw new Error('the offline peer\'s files are still listed');
  await page.mouse.move(700, 600);
  await page.waitForTimeout(300);
  await shot('offline.png');
  log(`after the peer stopped, its row said offline within ${((Date.now() - stopped) / 1000).toFixed(1)} s and its files are gone from the view`);

  // Nothing went wrong along the way: no error among all the notifications shown.
  await bell.click({ timeout: 5_000 });
  await center.waitFor({ state: 'visible', timeout: 5_000 });
  const errorsShown = await center.locator('.notification-list-item:has(.codicon-error)').allInnerTexts();
  if (errorsShown.length) throw new Error(`error notifications were shown: ${JSON.stringify(errorsShown)}`);

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
    forPeople: true,
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
      const peer = track('peer', startCliPeer([fixtures, '--home', path.join(tmp, 'peer-home'), '--host', '127.0.0.1', '--invite-uses', '10', '--name', PEER_NAME, '--port', '0']));
      const listening = await peer.ready;
      log(`peer "${PEER_NAME}" listening on port ${listening.port}`);
      return { workspace, drive: ({ page, shot }) => drive({ page, shot, ws: workspace, source: { invite: listening.invite, folder: fixtures, stop: () => peer.stop() } }) };
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
