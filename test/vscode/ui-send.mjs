// Sending to the editor, as a person sees it, in the real VS Code workbench in headless Chromium:
// the editor shares (from the command palette) and copies an invite; a headless peer (the real
// CLI) pairs with it and runs `peershare send`: the offer notification shows (Review, Save to
// Inbox, Save As..., Decline); Review opens the diff against the workspace file with Accept /
// Accept All / Skip beside it; Accept writes the file. Then the peer sends a snippet, and Compare
// with Mine shows it against the same lines of the workspace file. Then the other way: the editor
// sends README.md from the Explorer's context menu to the peer. Screenshots for the README.
// Usage: npm run build && node test/vscode/ui-send.mjs   (screenshots go to out/screenshots/)
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LOOPBACK_SETTINGS, ROOT, freePort } from './server.mjs';
import { answer, contextMenu, dismissToasts as dismissToastsOn, findNotification, poll, runCommand, runWorkbenchTest, startChild, startCliPeer, writeTree } from './ui-kit.mjs';

const PEER_NAME = 'Ana';
/** Large enough that the transfer is still running when the first bytes are seen and the other end is paused. */
const BIG_BYTES = 192 * 1024 * 1024;
const APP_TS = ['import { readFile } from "node:fs/promises";', '', 'export async function lines(file: string): Promise<string[]> {', '  const text = await readFile(file, "utf8");', '  return text.split("\\n").slice(0, -1);', '}', ''].join('\n');
const THEIR_APP_TS = ['import { readFile } from "node:fs/promises";', '', 'export async function lines(file: string): Promise<string[]> {', '  const text = await readFile(file, "utf8");', '  return text.split(/\\r?\\n/).filter((line, i, all) => line !== "" || i < all.length - 1);', '}', ''].join('\n');

async function drive({ page, shot, ws, peer, log }) {
  const quickInput = page.locator('.quick-input-widget');
  const quickInputBox = quickInput.locator('.quick-input-box input');
  const toast = (text) => page.locator('.notifications-toasts .notification-toast', { hasText: text });
  const palette = (command) => runCommand(page, command);
  const dismissToasts = () => dismissToastsOn(page);

  log('waiting for the workbench');
  await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: 60_000 });
  await page.locator('.part.activitybar .action-item [aria-label*="PeerShare"]').first().waitFor({ state: 'visible', timeout: 45_000 });
  await page.waitForTimeout(3000);
  const chatPanel = page.locator('.part.auxiliarybar');
  if (await chatPanel.isVisible()) await page.keyboard.press('Control+Alt+B');

  // Share, and copy an invite for the peer (read back from the clipboard, as the peer would paste it).
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(page.url()).origin });
  await palette('PeerShare: Start Sharing');
  await toast('Sharing this folder').first().waitFor({ state: 'visible', timeout: 20_000 });
  await palette('PeerShare: Copy Invite');
  await toast('Invite copied').first().waitFor({ state: 'visible', timeout: 20_000 });
  const invite = await page.evaluate(() => navigator.clipboard.readText());
  if (!/invite\?/.test(invite)) throw new Error(`the clipboard holds ${JSON.stringify(invite.slice(0, 80))}, not an invite`);
  const cliInvite = invite.replace(/^vscode:\/\/peershare\.peershare\/invite/, 'peershare://invite');
  const paired = startChild([path.join(ROOT, 'dist', 'cli.js'), 'ls', cliInvite, '--home', peer.home, '--no-discovery', '--name', PEER_NAME]);
  await poll(() => paired.exited(), 20_000, 'peershare ls to pair');
  if (paired.child.exitCode !== 0) throw new Error(`peershare ls failed: ${paired.output()}`);
  const target = peer.editorAddress();
  log(`the peer paired with the editor (${target})`);
  await dismissToasts();

  // Open the workspace's app.ts, as someone at work would have it.
  await page.keyboard.press('Control+P');
  await quickInputBox.waitFor({ state: 'visible', timeout: 10_000 });
  await page.keyboard.type('app.ts', { delay: 10 });
  await quickInput.locator('.monaco-list-row', { hasText: 'app.ts' }).first().waitFor({ state: 'visible', timeout: 10_000 });
  await page.keyboard.press('Enter');
  await page.locator('.tabs-container .tab.active', { hasText: 'app.ts' }).waitFor({ state: 'visible', timeout: 10_000 });

  // The peer offers its app.ts, with a note.
  const sending = startChild([path.join(ROOT, 'dist', 'cli.js'), 'send', target, peer.appTs, '--note', 'Fixed the last line being dropped', '--home', peer.home, '--no-discovery']);
  const offer = toast(`${PEER_NAME} (`);
  await offer.first().waitFor({ state: 'visible', timeout: 30_000 });
  await page.mouse.move(700, 600);
  await page.waitForTimeout(800);
  await shot('send-offer.png');
  log('the offer notification shows');
  await answer(page, offer, 'Review');

  const diff = page.locator('.editor-instance .monaco-diff-editor');
  await diff.waitFor({ state: 'visible', timeout: 30_000 });
  const review = toast('Accept it?');
  await review.first().waitFor({ state: 'visible', timeout: 30_000 });
  if (readFileSync(path.join(ws, 'src', 'app.ts'), 'utf8') !== APP_TS) throw new Error('the workspace file changed before Accept');
  await page.mouse.move(700, 600);
  await page.waitForTimeout(1200);
  await shot('send-review.png');
  log('Review shows the diff with Accept / Accept All / Skip');
  await answer(page, review, 'Accept');
  await poll(() => readFileSync(path.join(ws, 'src', 'app.ts'), 'utf8') === THEIR_APP_TS, 20_000, 'the accepted file to land in the workspace');
  await poll(() => sending.exited(), 20_000, 'peershare send to finish');
  if (sending.child.exitCode !== 0) throw new Error(`peershare send exited with ${sending.child.exitCode}: ${sending.output()}`);
  log('Accept wrote src/app.ts; the sender was told it arrived');
  await toast('Took src/app.ts').first().waitFor({ state: 'visible', timeout: 10_000 });
  await dismissToasts();

  // A snippet: lines 4-5 of the peer's version, compared with the same lines here.
  writeTree(ws, { 'src/app.ts': APP_TS });
  const snippet = startChild([path.join(ROOT, 'dist', 'cli.js'), 'send', target, '--text', '--name', 'src/app.ts:4-5', '--note', 'Or just this part?', '--home', peer.home, '--no-discovery'], { stdio: ['pipe', 'pipe', 'pipe'] });
  snippet.child.stdin.end(THEIR_APP_TS.split('\n').slice(3, 5).join('\n') + '\n');
  const shown = toast(`sent lines 4-5 of src/app.ts`);
  await shown.first().waitFor({ state: 'visible', timeout: 30_000 });
  await page.mouse.move(700, 600);
  await page.waitForTimeout(800);
  await shot('send-snippet.png');
  log('the snippet notification shows');
  await answer(page, shown, 'Compare with Mine');
  await page.locator('.tabs-container .tab.active', { hasText: 'app.ts lines 4-5' }).waitFor({ state: 'visible', timeout: 15_000 });
  await diff.waitFor({ state: 'visible', timeout: 15_000 });
  await page.mouse.move(700, 600);
  await page.waitForTimeout(1200);
  await shot('send-snippet-compare.png');
  log('Compare with Mine shows the snippet against lines 4-5 of the workspace file');
  await dismissToasts();

  // The other way: the peer shares and takes what trusted peers send; the editor connects with its
  // invite, and sends README.md from the Explorer's context menu, choosing the peer in a quick pick.
  const receiver = peer.startReceiver();
  const listening = await receiver.ready;
  await palette('PeerShare: Connect to Peer');
  await quickInput.locator('.quick-input-message', { hasText: 'Paste the invite' }).waitFor({ state: 'visible', timeout: 10_000 });
  await quickInputBox.fill(listening.invite);
  await page.keyboard.press('Enter');
  await toast(`Connected to ${PEER_NAME}`).first().waitFor({ state: 'visible', timeout: 20_000 });
  await dismissToasts();
  const readme = page.locator('.part.sidebar .monaco-list-row', { has: page.locator('.label-name', { hasText: /^README\.md$/ }) });
  // (Clicking the Explorer's icon while it shows would hide the side bar.)
  if (!(await readme.isVisible())) await page.locator('.part.activitybar .action-item [aria-label^="Explorer"]').first().click();
  await readme.waitFor({ state: 'visible', timeout: 10_000 });
  // contextMenu: a click while the menu still settles only highlights the item (CI saw it); it then takes it with Enter.
  await contextMenu(page, readme, 'Send to Peer\\.\\.\\.', { before: () => shot('send-explorer-menu.png') });
  const pick = quickInput.locator('.monaco-list-row', { hasText: PEER_NAME }).first();
  await pick.waitFor({ state: 'visible', timeout: 10_000 });
  if (!(await pick.innerText()).includes('connected')) throw new Error(`the quick pick does not say ${PEER_NAME} is connected: ${await pick.innerText()}`);
  await page.waitForTimeout(300);
  await shot('send-pick-peer.png');
  await page.keyboard.press('Enter');
  await quickInput.locator('.quick-input-title', { hasText: `A note for ${PEER_NAME}` }).waitFor({ state: 'visible', timeout: 10_000 });
  await page.keyboard.type('The README, as promised', { delay: 10 });
  await page.keyboard.press('Enter');
  await toast(`${PEER_NAME} received README.md`).first().waitFor({ state: 'visible', timeout: 30_000 });
  const landed = path.join(peer.inbox, 'README.md');
  await poll(() => existsSync(landed) && readFileSync(landed, 'utf8') === readFileSync(path.join(ws, 'README.md'), 'utf8'), 10_000, 'README.md to arrive in the peer\'s folder');
  log('sent README.md from the Explorer; it arrived, identical, and the notification said so');
  await dismissToasts();

  // Cancel, on each side, while the bytes flow. Once the first bytes are in the receiving side's
  // partial file, the other end is paused (SIGSTOP), so the transfer is still running when the
  // person clicks Cancel on the progress notification; then it goes on (SIGCONT) and must keep nothing.
  const partialsIn = (folder) => (existsSync(folder) ? readdirSync(folder).filter((n) => n.startsWith('.') && n.endsWith('.peershare-part')) : []);
  const pauseOnceBytesLand = async (folder, child, what) => {
    await poll(() => partialsIn(folder).length > 0 || (existsSync(path.join(folder, 'big.bin')) && Promise.reject(new Error(`big.bin arrived whole before ${what} could be paused: make it larger`))), 30_000, `the first bytes of big.bin in ${folder}`);
    child.kill('SIGSTOP');
  };
  const clickCancel = async (title) => {
    const { notification, inCenter, close } = await findNotification(page, title);
    if (inCenter) log(`"${title}" was found under the bell, not as a toast`);
    await answer(page, notification, 'Cancel');
    await close();
  };
  writeRandomFile(path.join(ws, 'big.bin'), BIG_BYTES);
  // (a) The editor sends big.bin from the Explorer; Cancel on "Sending big.bin to Ana".
  const big = page.locator('.part.sidebar .monaco-list-row', { has: page.locator('.label-name', { hasText: /^big\.bin$/ }) });
  await big.waitFor({ state: 'visible', timeout: 10_000 });
  await contextMenu(page, big, 'Send to Peer\\.\\.\\.');
  await pick.waitFor({ state: 'visible', timeout: 10_000 });
  await page.keyboard.press('Enter');
  await quickInput.locator('.quick-input-title', { hasText: `A note for ${PEER_NAME}` }).waitFor({ state: 'visible', timeout: 10_000 });
  await page.keyboard.press('Enter');
  await pauseOnceBytesLand(peer.inbox, receiver.child, 'the receiving peer');
  try {
    await clickCancel(`Sending big.bin to ${PEER_NAME}`);
  } finally {
    receiver.child.kill('SIGCONT');
  }
  await poll(() => !existsSync(path.join(peer.inbox, 'big.bin')) && partialsIn(peer.inbox).length === 0, 20_000, 'the peer to keep nothing of the cancelled big.bin');
  await page.waitForTimeout(1000); // a late arrival would show now
  if (existsSync(path.join(peer.inbox, 'big.bin')) || partialsIn(peer.inbox).length) throw new Error(`the peer kept something of big.bin: ${readdirSync(peer.inbox)}`);
  log('Cancel while sending: the peer kept nothing of big.bin');
  await dismissToasts();

  // (b) The peer sends big.bin; the editor saves it to the inbox; Cancel on "Receiving".
  const sendingBig = startChild([path.join(ROOT, 'dist', 'cli.js'), 'send', target, path.join(ws, 'big.bin'), '--home', peer.home, '--no-discovery']);
  const bigOffer = toast(`${PEER_NAME} (`);
  await bigOffer.first().waitFor({ state: 'visible', timeout: 30_000 });
  await answer(page, bigOffer, 'Save to Inbox');
  // One subfolder per peer: its name and the start of its ID ("Ana (5DMT)").
  const inboxRoot = path.join(ws, 'PeerShare Inbox');
  const editorInbox = path.join(inboxRoot, await poll(() => existsSync(inboxRoot) && readdirSync(inboxRoot).find((n) => n.startsWith(`${PEER_NAME} (`)), 20_000, `the inbox folder for ${PEER_NAME}`));
  await pauseOnceBytesLand(editorInbox, sendingBig.child, 'the sending peer');
  try {
    await clickCancel('Receiving');
  } finally {
    sendingBig.child.kill('SIGCONT');
  }
  await poll(() => sendingBig.exited(), 20_000, 'peershare send to end after the Cancel');
  // Exit 4: the receiver's Cancel counts as a refusal, as a Decline does.
  if (sendingBig.child.exitCode !== 4 || !/cancelled/.test(sendingBig.output())) throw new Error(`peershare send after the receiver's Cancel: exit ${sendingBig.child.exitCode}, ${sendingBig.output()}`);
  if (existsSync(path.join(editorInbox, 'big.bin')) || partialsIn(editorInbox).length) throw new Error(`the editor kept something of big.bin: ${readdirSync(editorInbox)}`);
  await toast('was cancelled; nothing of it was kept').first().waitFor({ state: 'visible', timeout: 10_000 });
  log(`Cancel while receiving: nothing kept in the inbox; the sender was told (exit ${sendingBig.child.exitCode})`);
}

/** Random bytes (incompressible), written a MiB at a time. */
function writeRandomFile(file, bytes) {
  const fd = openSync(file, 'w');
  try {
    for (let done = 0; done < bytes; done += 1 << 20) writeSync(fd, randomBytes(Math.min(1 << 20, bytes - done)));
  } finally {
    closeSync(fd);
  }
}

export function runSendUiTest({ screenshotsDir }) {
  return runWorkbenchTest({
    label: 'ui-send',
    screenshotsDir,
    forPeople: true,
    prepare: async ({ tmp, log, track }) => {
      const workspace = path.join(tmp, 'ws', 'workspace');
      const port = await freePort();
      writeTree(workspace, {
        'src/app.ts': APP_TS,
        'README.md': '# workspace\n',
        '.vscode/settings.json': JSON.stringify({ ...LOOPBACK_SETTINGS, 'peershare.port': port, 'peershare.displayName': 'Bruno' }, null, 2),
      });
      const peerFolder = path.join(tmp, 'peer', 'project');
      writeTree(peerFolder, { 'app.ts': THEIR_APP_TS });
      const home = path.join(tmp, 'peer-home');
      const inbox = path.join(tmp, 'peer-inbox');
      const startReceiver = () => track('receiver', startCliPeer([peerFolder, '--home', home, '--host', '127.0.0.1', '--port', '0', '--name', PEER_NAME, '--no-discovery', '--receive-into', inbox, '--receive', 'trusted']));
      return {
        workspace,
        drive: ({ page, shot }) => drive({ page, shot, ws: workspace, log, peer: { home, inbox, startReceiver, appTs: path.join(peerFolder, 'app.ts'), editorAddress: () => `127.0.0.1:${port}` } }),
      };
    },
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  runSendUiTest({ screenshotsDir: path.join(ROOT, 'out', 'screenshots') }).then(
    (code) => (process.exitCode = code),
    (err) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
