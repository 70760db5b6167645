import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import * as esbuild from 'esbuild';

const CORE = path.join(__dirname, '..', '..', 'src', 'core');

describe('src/core stays free of vscode', () => {
  it('no core file mentions the vscode module', async () => {
    for (const name of await fs.readdir(CORE)) {
      const text = await fs.readFile(path.join(CORE, name), 'utf8');
      assert.doesNotMatch(text, /from\s+['"]vscode['"]|require\(\s*['"]vscode['"]\s*\)|import\(\s*['"]vscode['"]\s*\)/, name);
    }
  });

  it('the core bundles for plain Node with vscode unavailable (catches indirect imports too)', async () => {
    const result = await esbuild.build({
      entryPoints: [path.join(CORE, 'index.ts')],
      bundle: true,
      platform: 'node',
      write: false,
      logLevel: 'silent',
      metafile: true,
    });
    const inputs = Object.keys(result.metafile!.inputs);
    assert.ok(inputs.some((i) => i.endsWith('src/core/server.ts')));
    assert.ok(!inputs.some((i) => /(^|\/)src\/(?!core\/)/.test(i)), `core pulls in files outside src/core: ${inputs.filter((i) => /src\/(?!core)/.test(i)).join(', ')}`);
  });
});
