// The quick start's main job: a real VS Code with PeerShare loaded, and a demo peer already sharing
// sample files and paired with it, so the Peers view shows the peer's files straight away.
// Desktop `code` when it is installed (with its own profile under .demo/), otherwise the VS Code
// server in the browser at a printed address. PEERSHARE_DEMO_BROWSER=1 forces the browser.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { LOOPBACK_SETTINGS, ROOT, startVsCodeServer, workbenchUrl } from '../test/vscode/server.mjs';

const demo = path.join(ROOT, '.demo');
const cli = path.join(ROOT, 'dist', 'cli.js');
const samples = path.join(demo, 'samples');
const workspace = path.join(demo, 'workspace');

function mkdirp(folder) {
  mkdirSync(folder, { recursive: true });
  return folder;
}

function write(file, content) {
  mkdirSync(path.dirname(file), { recursive: true });
  if (!existsSync(file)) writeFileSync(file, content);
}

write(path.join(samples, 'README.md'), '# Sample files shared by the PeerShare demo peer\n\nRight-click a file or folder in the Peers view and choose Download.\n');
write(path.join(samples, 'build.log'), Array.from({ length: 200 }, (_, i) => `[${String(i).padStart(3, '0')}] step ${i} ok`).join('\n') + '\n');
for (let i = 1; i <= 5; i++) write(path.join(samples, 'fixtures', 'users', `user-${i}.json`), JSON.stringify({ id: i, name: `User ${i}` }, null, 2) + '\n');
write(path.join(samples, 'src', 'greet.ts'), 'export const greet = (name: string) => `Hello, ${name}!`;\n');
write(path.join(samples, '.env'), 'SECRET=never-shared\n');
write(path.join(workspace, 'README.md'), '# Your workspace\n\nDownloads from the demo peer land here.\n');
// The demo lives inside this repository's folder: keep VS Code's git from asking about it, so the
// notifications a newcomer sees are PeerShare's. (openRepositoryInParentFolders alone still let a
// toast through; the demo workspace is no repository, so git has nothing to do there.)
writeFileSync(path.join(mkdirp(path.join(workspace, '.vscode')), 'settings.json'), JSON.stringify({ ...LOOPBACK_SETTINGS, 'git.enabled': false, 'git.openRepositoryInParentFolders': 'never' }, null, 2) + '\n');

// 1. The demo peer: the real CLI, sharing the samples on loopback.
const peer = spawn(process.execPath, [cli, 'serve', samples, '--json', '--home', path.join(demo, 'peer-home'), '--invite-uses', '10', '--name', 'Demo peer', '--port', '0'], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const { invite, peerId, addresses } = await new Promise((resolve, reject) => {
  readline.createInterface({ input: peer.stdout }).once('line', (line) => resolve(JSON.parse(line)));
  peer.once('exit', (code) => reject(new Error(`the demo peer exited with ${code}`)));
});

// 2. Pair the editor's PeerShare identity with the demo peer, as "Connect to a Peer" would.
const useDesktop = !process.env.PEERSHARE_DEMO_BROWSER && spawnSync('code', ['--version'], { stdio: 'ignore' }).status === 0;
const userDataDir = path.join(demo, useDesktop ? 'code-user' : 'vscode-server', ...(useDesktop ? [] : ['user']));
const editorHome = path.join(userDataDir, 'User', 'globalStorage', 'peershare.peershare', 'identity');
execFileSync(process.execPath, [cli, 'ls', invite, '--home', editorHome, '--name', 'You (demo)'], { stdio: 'ignore' });

let stopEditor = async () => undefined;
if (useDesktop) {
  const code = spawn('code', ['--user-data-dir', userDataDir, '--extensionDevelopmentPath', ROOT, '--disable-workspace-trust', '--new-window', workspace], { stdio: 'inherit' });
  stopEditor = async () => code.kill();
  console.log(`\nOpened VS Code (desktop) on ${workspace} with PeerShare loaded.`);
} else {
  const server = await startVsCodeServer({ dataDir: path.join(demo, 'vscode-server'), trustWorkspace: true, port: process.env.PEERSHARE_DEMO_PORT ? Number(process.env.PEERSHARE_DEMO_PORT) : undefined, forPeople: true });
  stopEditor = server.stop;
  console.log(`\nVS Code is running with PeerShare loaded. Open this address in a browser:\n\n  ${workbenchUrl(server, { folder: workspace })}\n`);
}
console.log(`The demo peer "Demo peer" (${peerId}) shares ${samples} on ${addresses.join(', ')}; .env stays private.
Open the PeerShare view in the activity bar: "Demo peer" is there. Expand it, right-click a file or folder, Download.
From a terminal, the CLI works too:  node dist/cli.js ls "${invite}" --home .demo/cli-home
Press Ctrl+C to stop.`);

const stop = async () => {
  await stopEditor();
  peer.kill('SIGTERM');
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
