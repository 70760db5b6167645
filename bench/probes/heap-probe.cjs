// Preloaded into the real `peershare serve` by bench/idle.mjs
// (node --expose-gc --require bench/probes/heap-probe.cjs dist/cli.js serve ...): on SIGUSR2 it
// collects garbage and writes process.memoryUsage() to the file named by $BENCH_HEAP_PROBE_OUT.
// A signal handler rather than a timer, so the probe never wakes the process it measures.
'use strict';
const fs = require('node:fs');

process.on('SIGUSR2', () => {
  // Twice: the first full collection can leave work (weak callbacks, finalizers) for a second.
  global.gc?.();
  global.gc?.();
  const out = process.env.BENCH_HEAP_PROBE_OUT;
  // Written aside and renamed, so the harness never reads half a file.
  fs.writeFileSync(`${out}.tmp`, JSON.stringify({ ...process.memoryUsage(), gcExposed: typeof global.gc === 'function' }));
  fs.renameSync(`${out}.tmp`, out);
});
