// The quick start's main job (for now, the headless peer): makes a folder of sample files,
// shares it with a demo identity, and prints what to type in a second terminal.
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const demo = path.join(root, '.demo');
const samples = path.join(demo, 'samples');
if (!existsSync(samples)) {
  mkdirSync(path.join(samples, 'fixtures', 'users'), { recursive: true });
  writeFileSync(path.join(samples, 'README.md'), '# Sample files shared by the PeerShare demo peer\n');
  writeFileSync(path.join(samples, 'build.log'), Array.from({ length: 200 }, (_, i) => `[${i}] step ${i} ok`).join('\n') + '\n');
  for (let i = 1; i <= 5; i++) {
    writeFileSync(path.join(samples, 'fixtures', 'users', `user-${i}.json`), JSON.stringify({ id: i, name: `User ${i}` }, null, 2) + '\n');
  }
  writeFileSync(path.join(samples, '.env'), 'SECRET=never-shared\n');
}

const cli = path.join(root, 'dist', 'cli.js');
const home = path.join(demo, 'sharer-home');
const port = process.env.PEERSHARE_DEMO_PORT ?? '0';
const child = spawn(process.execPath, [cli, 'serve', samples, '--json', '--home', home, '--port', port, '--invite-uses', '10', '--name', 'Demo peer'], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
readline.createInterface({ input: child.stdout }).once('line', (line) => {
  const { invite, peerId, addresses } = JSON.parse(line);
  const client = path.join(demo, 'client-home');
  console.log(`
PeerShare demo peer "Demo peer" is sharing ${samples} (read-only; .env is excluded).
  Peer ID:   ${peerId}
  Listening: ${addresses.join(', ')}

In another terminal, from ${root}:
  node dist/cli.js ls  "${invite}" --home ${client}
  node dist/cli.js ls  ${peerId.slice(0, 9)} samples/fixtures --home ${client}
  node dist/cli.js get ${peerId.slice(0, 9)} samples/fixtures ./downloads --home ${client}

Press Ctrl+C to stop.`);
});
const stop = () => child.kill('SIGTERM');
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
child.on('exit', (code) => process.exit(code ?? 0));
