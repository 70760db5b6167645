// Nearby peers in the real VS Code workbench, in headless Chromium, as a person sees them:
// a headless peer (the real CLI, `serve --announce`) appears in the PeerShare view under "Nearby"
// as "not trusted"; then the editor starts sharing from the command palette, a nearby peer (the
// project's core, in a child process) asks to connect, the editor shows the approval prompt with
// the same verification code, the person clicks "Allow Once", and the nearby peer gets in.
// Everything (sharing, announcements) stays on loopback: LOOPBACK_SETTINGS in the workspace.
// Usage: npm run build && node test/vscode/ui-nearby.mjs   (screenshots go to out/screenshots/)
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DISCOVERY_TEST_PORT, LOOPBACK_SETTINGS, ROOT } from './server.mjs';
import { expandRow, poll, runCommand, runWorkbenchTest, startChild, startCliPeer, writeTree } from './ui-kit.mjs';

const PEER_NAME = "Ben's desktop";
const ASKER_NAME = 'Cleo (nearby)';

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
  await expandRow(page, nearbyRow, 10_000);
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
  await runCommand(page, 'PeerShare: Start Sharing');
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

let log = () => undefined;

/** Runs the Nearby UI test; resolves with 0 on success, 1 on failure (printing why). */
export function runNearbyUiTest({ screenshotsDir }) {
  return runWorkbenchTest({
    label: 'ui-nearby',
    screenshotsDir,
    prepare: async ({ tmp, log: logger, track }) => {
      log = logger;
      const shared = path.join(tmp, 'peer', 'shared');
      const workspace = path.join(tmp, 'ws', 'workspace');
      writeTree(shared, { 'hello.txt': "Ben's shared folder.\n" });
      writeTree(workspace, {
        'notes.txt': 'Workspace shared with a nearby peer.\n',
        'src/app.ts': 'export const answer = 42;\n',
        '.vscode/settings.json': JSON.stringify(LOOPBACK_SETTINGS, null, 2),
      });
      const peer = track(
        'peer',
        startCliPeer([shared, '--home', path.join(tmp, 'peer-home'), '--host', '127.0.0.1', '--announce', '--interface', '127.0.0.1', '--discovery-port', String(DISCOVERY_TEST_PORT), '--name', PEER_NAME, '--port', '0']),
      );
      const listening = await peer.ready;
      log(`peer "${PEER_NAME}" (${listening.peerId}) listening on port ${listening.port}, announcing on 127.0.0.1:${DISCOVERY_TEST_PORT}`);
      const startAsker = () =>
        track(
          'nearby peer',
          startChild(['--import', 'tsx', '--input-type=module', '-e', ASKER_SCRIPT], {
            cwd: ROOT,
            env: { ...process.env, PS_HOME: path.join(tmp, 'asker-home'), PS_DISCOVERY_PORT: String(DISCOVERY_TEST_PORT), PS_OTHER_NAME: PEER_NAME, PS_NAME: ASKER_NAME },
          }),
        );
      return { workspace, drive: ({ page, shot }) => drive({ page, shot, startAsker }) };
    },
  });
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
