import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { tempDir } from '../helpers';

const ROOT = path.join(__dirname, '..', '..');

describe('the .vsix', () => {
  it('contains only what runs: the bundles, media, README, CHANGELOG, LICENSE and the manifest', () => {
    const out = path.join(tempDir(), 'peershare.vsix');
    execFileSync(process.execPath, [path.join(ROOT, 'node_modules', '@vscode', 'vsce', 'vsce'), 'package', '--no-dependencies', '--out', out], {
      cwd: ROOT,
      stdio: 'pipe',
    });
    const listing = execFileSync('unzip', ['-Z1', out], { encoding: 'utf8' }).trim().split('\n').sort();
    assert.deepEqual(listing, [
      '[Content_Types].xml',
      'extension.vsixmanifest',
      'extension/LICENSE.txt',
      'extension/changelog.md',
      'extension/dist/cli.js',
      'extension/dist/extension.js',
      'extension/media/peershare.svg',
      'extension/package.json',
      'extension/package.nls.json',
      'extension/readme.md',
    ]);
  });

  it('declares that untrusted and virtual workspaces are not supported, so VS Code never runs it there', () => {
    const manifest = JSON.parse(require('node:fs').readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    assert.equal(manifest.capabilities.untrustedWorkspaces.supported, false);
    assert.equal(manifest.capabilities.virtualWorkspaces, false);
  });
});
