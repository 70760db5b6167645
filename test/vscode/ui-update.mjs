// Staying in step with a peer (issue 13), as a person sees it, in the real VS Code workbench in
// headless Chromium: a headless peer (the real CLI) shares `project`; the editor connects, downloads
// src/app.ts from the Peers view; the peer changes it, and the row is marked by itself (the live
// tree); the person edits their copy too, runs Update from Peer, and is asked (Compare, Keep Mine,
// Take Theirs, the safe answer focused); Compare shows the diff with the question beside it; Keep
// Mine leaves the file as it was; Update from Peer from the Explorer, Take Theirs, takes the peer's.
// Then Follow Folder on docs: the status bar says so, a file the peer adds arrives, and one click on
// the status bar stops it. Screenshots for the README.
// Usage: npm run build && node test/vscode/ui-update.mjs   (screenshots go to out/screenshots/)
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LOOPBACK_SETTINGS, ROOT } from './server.mjs';
import { answer, contextMenu, dismissToasts as dismissToastsOn, expandRow, findNotification, poll, runCommand, runWorkbenchTest, startCliPeer, writeTree } from './ui-kit.mjs';

const PEER_NAME = 'Ana';
const APP_TS = ['export function greet(name: string): string {', '  return `Hello, ${name}`;', '}', '', 'export const version = 1;', ''].join('\n');
const THEIR_APP_TS = ['export function greet(name: string): string {', '  return `Hello, ${name}!`;', '}', '', 'export const version = 2;', ''].join('\n');
const MY_APP_TS = ['export function greet(name: string): string {', '  return `Hi, ${name}`;', '}', '', 'export const version = 1;', ''].join('\n');

async function drive({ page, shot, ws, source, log }) {
  const sidebar = page.locator('.part.sidebar');
  const row = (name) => sidebar.locator('.monaco-list-row', { has: page.locator('.label-name', { hasText: new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }) });
  const toast = (text) => page.locator('.notifications-toasts .notification-toast', { hasText: text });
  const dialog = page.locator('.monaco-dialog-box');
  const quickInput = page.locator('.quick-input-widget');
  const quickInputBox = quickInput.locator('.quick-input-box input');
  const dismissToasts = () => dismissToastsOn(page);
  /** The "edited here, changed there too" dialog: its buttons, the safe one focused. */
  async function seeLocalEditDialog() {
    await dialog.waitFor({ state: 'visible', timeout: 20_000 });
    const text = await dialog.innerText();
    if (!text.includes(`app.ts was edited here since it came from ${PEER_NAME}, and ${PEER_NAME}’s copy changed too.`)) throw new Error(`the dialog says ${JSON.stringify(text)}`);
    // (The web workbench lays buttons out right to left, the primary one last: compare as a set.)
    const buttons = (await dialog.locator('.dialog-buttons .monaco-button').allInnerTexts()).map((t) => t.trim());
    if (JSON.stringify([...buttons].sort()) !== JSON.stringify(['Cancel', 'Compare', 'Keep Mine', 'Take Theirs'])) throw new Error(`the local-edit dialog offers ${JSON.stringify(buttons)}`);
    const focused = await page.evaluate(() => document.activeElement?.textContent?.trim());
    if (focused !== 'Compare') throw new Error(`the local-edit dialog focuses ${JSON.stringify(focused)}, not the safe answer`);
    return buttons;
  }
  const localApp = path.join(ws, 'src', 'app.ts');

  log('waiting for the workbench');
  await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: 60_000 });
  const activity = page.locator('.part.activitybar .action-item [aria-label*="PeerShare"]').first();
  await activity.waitFor({ state: 'visible', timeout: 45_000 });
  await page.waitForTimeout(3000);
  const chatPanel = page.locator('.part.auxiliarybar');
  if (await chatPanel.isVisible()) await page.keyboard.press('Control+Alt+B');

  await runCommand(page, 'PeerShare: Connect to Peer');
  await quickInput.locator('.quick-input-message', { hasText: 'Paste the invite' }).waitFor({ state: 'visible', timeout: 10_000 });
  await quickInputBox.fill(source.invite);
  await page.keyboard.press('Enter');
  await toast(`Connected to ${PEER_NAME}.`).first().waitFor({ state: 'visible', timeout: 20_000 });
  await dismissToasts();
  const viewTitle = sidebar.locator('.composite.title', { hasText: 'PeerShare' });
  if (!(await viewTitle.isVisible())) await activity.click();
  for (const name of [PEER_NAME, 'project', 'src']) await expandRow(page, row(name));
  const appRow = row('app.ts');
  await appRow.waitFor({ state: 'visible', timeout: 15_000 });
  await contextMenu(page, appRow, 'Download');
  await toast(`Downloaded app.ts from ${PEER_NAME}`).first().waitFor({ state: 'visible', timeout: 30_000 });
  await poll(() => existsSync(localApp) && readFileSync(localApp, 'utf8') === APP_TS, 10_000, 'src/app.ts to land in the workspace');
  log('downloaded src/app.ts');
  await dismissToasts();

  // The peer changes app.ts: the open folder redraws itself, and the row is marked.
  writeFileSync(path.join(source.folder, 'src', 'app.ts'), THEIR_APP_TS);
  const description = appRow.locator('.label-description');
  await poll(async () => /changed on peer/.test(await description.innerText().catch(() => '')), 20_000, 'the app.ts row to be marked as changed');
  // For the picture: the view a little wider, and not focused (a focused row shows its inline actions over the text).
  const sash = await sidebar.boundingBox();
  await page.mouse.move(sash.x + sash.width + 1, sash.y + 300);
  await page.mouse.down();
  await page.mouse.move(sash.x + sash.width + 80, sash.y + 300, { steps: 5 });
  await page.mouse.up();
  await dismissToasts();
  await page.mouse.click(800, 300);
  await page.mouse.move(800, 600);
  await page.waitForTimeout(800);
  await shot('update-changed-mark.png');
  log(`the row is marked by itself: "${await description.innerText()}"`);

  // The person edits their copy too, then Update from Peer on the row: asked before anything is touched.
  writeFileSync(localApp, MY_APP_TS);
  await contextMenu(page, appRow, 'Update from Peer');
  const buttons = await seeLocalEditDialog();
  await page.waitForTimeout(300);
  await shot('update-local-edit.png');
  log(`local-edit dialog: ${buttons.join(' | ')}, Compare focused`);
  await dialog.locator('.dialog-buttons .monaco-button', { hasText: 'Compare' }).click();
  await dialog.waitFor({ state: 'hidden', timeout: 10_000 });
  await page.locator('.editor-instance .monaco-diff-editor').waitFor({ state: 'visible', timeout: 15_000 });
  await page.locator('.tabs-container .tab.active', { hasText: `app.ts (${PEER_NAME}) ↔ (yours)` }).waitFor({ state: 'visible', timeout: 10_000 });
  const askedAgain = await findNotification(page, 'was edited here since it came from');
  await page.mouse.move(700, 600);
  await page.waitForTimeout(1200);
  await shot('update-compare.png');
  log(`Compare opened the diff, with the question beside it${askedAgain.inCenter ? ' (under the bell, not as a toast)' : ''}`);
  await answer(page, askedAgain.notification, 'Keep Mine');
  await askedAgain.close();
  await toast('Kept your app.ts').first().waitFor({ state: 'visible', timeout: 15_000 });
  if (readFileSync(localApp, 'utf8') !== MY_APP_TS) throw new Error('Keep Mine changed the local file');
  log('Keep Mine left the local file as it was');
  await dismissToasts();
  await page.keyboard.press('Control+K');
  await page.keyboard.press('W'); // close the editors

  // From the Explorer this time: Update from Peer on src/app.ts, Take Theirs.
  await page.locator('.part.activitybar .action-item [aria-label^="Explorer"]').first().click();
  await expandRow(page, row('src'), 10_000);
  await appRow.waitFor({ state: 'visible', timeout: 10_000 });
  await contextMenu(page, appRow, 'Update from Peer', { before: () => shot('update-explorer-menu.png') });
  await seeLocalEditDialog();
  await dialog.locator('.dialog-buttons .monaco-button', { hasText: 'Take Theirs' }).click();
  await toast(`Updated app.ts from ${PEER_NAME}:`).first().waitFor({ state: 'visible', timeout: 20_000 });
  await poll(() => readFileSync(localApp, 'utf8') === THEIR_APP_TS, 10_000, 'the peer\'s app.ts to replace the local one');
  const said = await toast(`Updated app.ts from ${PEER_NAME}:`).first().innerText();
  log(`Take Theirs: ${said.split('\n')[0]}`);
  await dismissToasts();

  // Follow Folder on docs: the status bar shows it; a file the peer adds arrives; one click stops it.
  await activity.click();
  const docsRow = row('docs');
  await docsRow.waitFor({ state: 'visible', timeout: 15_000 });
  await contextMenu(page, docsRow, 'Follow Folder');
  const status = page.locator('.part.statusbar .statusbar-item', { hasText: 'Following 1' });
  await status.waitFor({ state: 'visible', timeout: 20_000 });
  await poll(() => existsSync(path.join(ws, 'docs', 'guide.md')), 10_000, 'docs/guide.md to be copied');
  writeFileSync(path.join(source.folder, 'docs', 'changes.md'), '# Changes\n\n- greet() ends with "!"\n');
  await poll(() => existsSync(path.join(ws, 'docs', 'changes.md')), 15_000, 'the peer\'s new docs/changes.md to arrive');
  log('Follow Folder: the status bar says "Following 1"; a file the peer added arrived');
  await page.mouse.move(700, 600);
  await page.waitForTimeout(500);
  await shot('follow-status.png');
  await status.click();
  const stopRow = quickInput.locator('.monaco-list-row', { hasText: `Stop following docs from ${PEER_NAME}` }).first();
  await stopRow.waitFor({ state: 'visible', timeout: 10_000 });
  await page.waitForTimeout(300);
  await shot('follow-stop.png');
  await page.keyboard.press('Enter');
  await status.waitFor({ state: 'hidden', timeout: 10_000 });
  log('one click on the status bar, then Enter, stopped the follow');

  // Nothing went wrong along the way.
  const bell = page.locator('.part.statusbar [id="status.notifications"]');
  await bell.click({ timeout: 5_000 });
  const center = page.locator('.notifications-center.visible');
  await center.waitFor({ state: 'visible', timeout: 5_000 });
  const errorsShown = await center.locator('.notification-list-item:has(.codicon-error)').allInnerTexts();
  if (errorsShown.length) throw new Error(`error notifications were shown: ${JSON.stringify(errorsShown)}`);
}

export function runUpdateUiTest({ screenshotsDir }) {
  return runWorkbenchTest({
    label: 'ui-update',
    screenshotsDir,
    forPeople: true,
    prepare: async ({ tmp, log, track }) => {
      const project = path.join(tmp, 'peer', 'project');
      const workspace = path.join(tmp, 'ws', 'workspace');
      writeTree(project, { 'src/app.ts': APP_TS, 'docs/guide.md': '# Guide\n\nHow to greet.\n' });
      writeTree(workspace, { 'README.md': '# workspace\n', '.vscode/settings.json': JSON.stringify(LOOPBACK_SETTINGS, null, 2) });
      const peer = track('peer', startCliPeer([project, '--home', path.join(tmp, 'peer-home'), '--host', '127.0.0.1', '--invite-uses', '10', '--name', PEER_NAME, '--port', '0', '--no-discovery']));
      const listening = await peer.ready;
      log(`peer "${PEER_NAME}" listening on port ${listening.port}`);
      return { workspace, drive: ({ page, shot }) => drive({ page, shot, ws: workspace, log, source: { invite: listening.invite, folder: project } }) };
    },
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  runUpdateUiTest({ screenshotsDir: path.join(ROOT, 'out', 'screenshots') }).then(
    (code) => (process.exitCode = code),
    (err) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
