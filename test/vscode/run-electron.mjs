// The same in-editor suite, launched with @vscode/test-electron, for machines that can download
// VS Code desktop (a contributor's laptop, a public CI). This machine cannot reach Microsoft's
// update servers, so `npm test` uses test/vscode/run.mjs (the VS Code server from npm) instead.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runTests } from '@vscode/test-electron';
import { buildSuites } from './run.mjs';
import { ROOT, LOOPBACK_SETTINGS } from './server.mjs';

await buildSuites();
const workspace = path.join(mkdtempSync(path.join(os.tmpdir(), 'peershare-electron-')), 'workspace');
mkdirSync(path.join(workspace, '.vscode'), { recursive: true });
writeFileSync(path.join(workspace, '.vscode', 'settings.json'), JSON.stringify(LOOPBACK_SETTINGS));
writeFileSync(path.join(workspace, 'README.md'), '# workspace\n');
try {
  await runTests({
    extensionDevelopmentPath: ROOT,
    extensionTestsPath: path.join(ROOT, 'out', 'test', 'vscode', 'index.js'),
    launchArgs: [workspace, '--disable-extensions', '--disable-workspace-trust'],
  });
} catch (err) {
  console.error(err);
  process.exitCode = 1;
}
