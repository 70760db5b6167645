// Bundles the extension and the CLI. `--production` minifies; `--watch` rebuilds on change.
const fs = require('node:fs');
const esbuild = require('esbuild');

const production = process.argv.includes('--production');
const watch = process.argv.includes('--watch');

async function main() {
  // Stale source maps from a development build must not ship beside minified code.
  if (production && fs.existsSync('dist')) {
    for (const name of fs.readdirSync('dist', { withFileTypes: true }).filter((e) => e.name.endsWith('.map'))) fs.rmSync(`dist/${name.name}`);
  }
  const common = {
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    outdir: 'dist',
    // The BLAKE3 binding is native code: src/core/blake3.ts loads it at run time, from the
    // .node file a per-platform .vsix puts beside the bundle or from node_modules. HyperDHT
    // (internet reach) carries native parts too (sodium-native, udx-native), each loading its
    // prebuilt binary from its own package folder: src/core/transport-dht.ts requires it from
    // node_modules on first use, and internet reach is off where it does not load.
    external: ['vscode', '@napi-rs/blake-hash', 'hyperdht'],
    minify: production,
    sourcemap: !production,
    sourcesContent: false,
    logLevel: 'warning',
  };
  // The second line records when the bundle started loading, for the activation-time figure.
  const loadStart = 'globalThis.__peershareLoadStart ??= performance.now();';
  const contexts = await Promise.all([
    esbuild.context({ ...common, entryPoints: { extension: 'src/extension.ts' }, banner: { js: loadStart } }),
    // The helper thread that cuts half of a large file into chunks (src/core/cdc-helper.ts starts
    // it from dist/, for the extension and the CLI alike).
    esbuild.context({ ...common, entryPoints: { 'cdc-worker': 'src/core/cdc-worker.ts' } }),
    esbuild.context({
      ...common,
      entryPoints: { cli: 'src/cli/main.ts' },
      // The CLI is run directly as `peershare`. The flag must be set before V8 compiles the rest
      // of the bundle: V8 arms its start-up memory reducer as soon as the heap grows by 1 MiB
      // after boot, and it then runs three collections about 8 s later, waking an idle
      // `peershare serve` a dozen times to give back about 5 MiB. Its other triggers (after real
      // work) stay on. docs/benchmarks.md, "Idle".
      banner: { js: `#!/usr/bin/env node\nrequire('node:v8').setFlagsFromString('--no-memory-reducer-for-small-heaps');\n${loadStart}` },
    }),
  ]);
  if (watch) {
    await Promise.all(contexts.map((ctx) => ctx.watch()));
    console.log('esbuild: watching for changes');
  } else {
    await Promise.all(contexts.map((ctx) => ctx.rebuild()));
    await Promise.all(contexts.map((ctx) => ctx.dispose()));
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
