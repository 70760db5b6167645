// Bundles the extension and the CLI. `--production` minifies; `--watch` rebuilds on change.
const fs = require('node:fs');
const esbuild = require('esbuild');

const production = process.argv.includes('--production');
const watch = process.argv.includes('--watch');

async function main() {
  // Stale source maps from a development build must not ship beside minified code.
  if (production) {
    for (const name of fs.readdirSync('dist', { withFileTypes: true }).filter((e) => e.name.endsWith('.map'))) fs.rmSync(`dist/${name.name}`);
  }
  const ctx = await esbuild.context({
    entryPoints: { extension: 'src/extension.ts', cli: 'src/cli/main.ts' },
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    outdir: 'dist',
    external: ['vscode'],
    minify: production,
    sourcemap: !production,
    sourcesContent: false,
    logLevel: 'warning',
    // The CLI is run directly as `peershare`; Node ignores the line when the extension host loads its bundle.
    // The second line records when the bundle started loading, for the activation-time figure.
    banner: { js: '#!/usr/bin/env node\nglobalThis.__peershareLoadStart ??= performance.now();' },
  });
  if (watch) {
    await ctx.watch();
    console.log('esbuild: watching for changes');
  } else {
    await ctx.rebuild();
    await ctx.dispose();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
