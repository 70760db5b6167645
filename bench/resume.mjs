#!/usr/bin/env node
// Resume: a 1 GiB download cut at half, then resumed; and one whose partial file holds only the
// first and last quarters. How many bytes does the sharer send the second time, against what was
// missing?
//
//   BENCH_SIZE_MIB=32 BENCH_RUNS=2 node bench/resume.mjs
//
// Each run, twice: `peershare get` of the file, killed with SIGKILL as soon as its partial file
// (the hidden `.<name>.<tag>.peershare-part` beside the target) holds at least half the file.
// "half": then `peershare get` again. "quarters": the partial is first rewritten in place to hold
// the file's first and last quarters, the middle zeroed (what any set of blocks looks like to a
// receiver), then `peershare get` again. The bytes the sharer sent the second time are the growth
// of `wchar` in /proc/<serve pid>/io over the second get: every write system call, socket writes
// included, so TLS and framing overhead count, which is fair. Missing = size - the bytes the
// resumed get found already there and verified (its `resumedBytes`): a block cut mid-write at the
// kill is missing, whatever the partial's size says. The goal: sent <= 1.01 x missing.
//
// Environment: BENCH_SIZE_MIB (default 1024), BENCH_RUNS (5), BENCH_TMP, BENCH_KEEP_TMP.

import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  MiB,
  CLI,
  clearAndSync,
  goal,
  intEnv,
  isMain,
  median,
  mib,
  pairClient,
  peershareGet,
  printTable,
  requireFreeSpace,
  round,
  runStandalone,
  sleep,
  spawnTracked,
  startPeerShare,
  toMiB,
  writeRandomFile,
  writtenChars,
} from './lib.mjs';

export const name = 'resume';
export const title = 'resume a 1 GiB download cut at half, and from its first and last quarters';
export const tools = ['/usr/bin/time'];

const GOAL_OVERHEAD_PERCENT = 1;
const PARTIAL_SUFFIX = '.peershare-part';

/** The partial file of `fileName` in `dir`, if the client has created it. */
function findPartial(dir, fileName) {
  const found = fs.readdirSync(dir).find((n) => n.startsWith(`.${fileName}.`) && n.endsWith(PARTIAL_SUFFIX));
  return found && path.join(dir, found);
}

/**
 * Starts a download and SIGKILLs the client once its partial file holds `cutAt` bytes. A v2
 * partial file has the file's full size from the start (blocks land at their places), so what it
 * holds is the space allocated to it (st_blocks), not its size.
 */
async function cutDownload({ invite, remote, destDir, fileName, home, cutAt }) {
  const child = spawnTracked(process.execPath, [CLI, 'get', invite, remote, destDir, '--json', '--home', home], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  let done;
  exited.then((how) => (done = how));
  // Poll often: at a few hundred MiB/s the file grows about 1 MiB per 3 ms.
  while (done === undefined) {
    const partial = findPartial(destDir, fileName);
    const st = partial ? fs.statSync(partial, { throwIfNoEntry: false }) : undefined;
    const held = st ? Math.min(st.size, st.blocks * 512) : 0;
    if (held >= cutAt) {
      child.kill('SIGKILL');
      await exited;
      return;
    }
    await sleep(1);
  }
  throw new Error(`the first get ended (${done}) before it could be cut at ${cutAt} bytes`);
}

/** Waits until the sharer has stopped writing (the killed transfer's tail), so it is not counted as the resume's. */
async function waitUntilQuiet(pid, quietMs = 300) {
  let last = writtenChars(pid);
  let stableSince = Date.now();
  while (Date.now() - stableSince < quietMs) {
    await sleep(50);
    const now = writtenChars(pid);
    if (now !== last) {
      last = now;
      stableSince = Date.now();
    }
  }
}

export async function run(ctx) {
  const sizeMiB = intEnv('BENCH_SIZE_MIB', 1024, 1);
  const runs = intEnv('BENCH_RUNS', 5, 1);
  const sizeBytes = sizeMiB * MiB;
  const fileName = `random-${sizeMiB}MiB.bin`;
  const { scope, scratch } = ctx;
  requireFreeSpace(scratch, 2 * sizeBytes + 64 * MiB, 'the resume scenario');

  const dataDir = path.join(scratch, 'data');
  const destDir = path.join(scratch, 'dest');
  ctx.log(`writing ${sizeMiB} MiB of random data`);
  writeRandomFile(path.join(dataDir, fileName), sizeBytes);
  const server = await startPeerShare(scope, { folders: [dataDir], home: path.join(scratch, 'home-server'), logFile: path.join(scratch, 'serve.log') });
  ctx.log(`peershare serve on port ${server.info.port} (pid ${server.pid})`);
  if (writtenChars(server.pid) === undefined) throw new Error(`cannot read /proc/${server.pid}/io (needs the same user or root)`);
  const home = path.join(scratch, 'home-client');
  pairClient(server.invite, home);
  const remote = `data/${fileName}`;

  const source = path.join(dataDir, fileName);
  const results = [];
  for (let i = 1; i <= runs; i++) {
    for (const shape of ['half', 'quarters']) {
      fs.mkdirSync(destDir, { recursive: true });
      await cutDownload({ invite: server.invite, remote, destDir, fileName, home, cutAt: sizeBytes / 2 });
      await waitUntilQuiet(server.pid);
      const partial = findPartial(destDir, fileName);
      if (!partial) throw new Error('no partial file left behind by the interrupted get');
      if (shape === 'quarters') keepQuarters(partial, source, sizeBytes);
      const partialBytes = fs.statSync(partial).size;

      const before = writtenChars(server.pid);
      const r = await peershareGet({ invite: server.invite, remote, dest: destDir, home, scratch });
      await waitUntilQuiet(server.pid, 100);
      const sentBytes = writtenChars(server.pid) - before;
      if (!fs.readFileSync(path.join(destDir, fileName)).equals(fs.readFileSync(source))) throw new Error(`${shape}: the resumed file is not the sharer's`);
      if (findPartial(destDir, fileName)) throw new Error('a partial file is left after the resumed get');
      const missingBytes = sizeBytes - r.result.resumedBytes;
      if (r.result.bytes !== missingBytes) throw new Error(`${shape}: the CLI says ${r.result.bytes} bytes received, ${missingBytes} were missing`);

      const overheadPercent = (100 * (sentBytes - missingBytes)) / missingBytes;
      results.push({
        shape,
        partialBytes,
        missingBytes,
        sentBytes,
        overheadPercent: round(overheadPercent, 3),
        seconds: round(r.seconds),
        cli: { bytes: r.result.bytes, resumedBytes: r.result.resumedBytes, seconds: round(r.result.seconds), maxRssBytes: r.result.maxRssBytes },
      });
      ctx.log(
        `run ${i}/${runs} ${shape}: partial file ${toMiB(partialBytes)} MiB, verified there ${toMiB(r.result.resumedBytes)} MiB, missing ${toMiB(missingBytes)} MiB, ` +
          `sharer wrote ${toMiB(sentBytes, 2)} MiB (+${overheadPercent.toFixed(3)}%) in ${r.result.seconds.toFixed(2)} s`,
      );
      clearAndSync(destDir);
    }
  }

  const of = (shape) => results.filter((r) => r.shape === shape);
  const medianOverhead = (shape) => median(of(shape).map((r) => r.overheadPercent));
  const worstOverhead = Math.max(...results.map((r) => r.overheadPercent));
  printTable([
    ['run', 'shape', 'partial file', 'verified there', 'missing', 'sharer sent', 'overhead', 'seconds'],
    ...results.map((r, i) => [Math.floor(i / 2) + 1, r.shape, `${r.partialBytes}`, `${r.cli.resumedBytes}`, `${r.missingBytes}`, `${r.sentBytes}`, `${r.overheadPercent.toFixed(3)}%`, r.seconds.toFixed(2)]),
  ]);
  const figure = (shape, label) => ({
    label,
    text: `${of(shape).map((r) => `+${r.overheadPercent.toFixed(2)}%`).join(' ')} over the missing bytes (median +${medianOverhead(shape).toFixed(3)}%); resumed in a median ${median(of(shape).map((r) => r.seconds)).toFixed(2)} s for ${mib(median(of(shape).map((r) => r.missingBytes)))}`,
  });
  return {
    measured: `${sizeMiB} MiB file, download killed at half and resumed, and resumed from its first and last quarters; ${runs} runs of each`,
    summary: {
      fileBytes: sizeBytes,
      runs,
      medianOverheadPercent: { half: round(medianOverhead('half'), 3), quarters: round(medianOverhead('quarters'), 3) },
      worstOverheadPercent: round(worstOverhead, 3),
      medianResumeSeconds: { half: round(median(of('half').map((r) => r.seconds))), quarters: round(median(of('quarters').map((r) => r.seconds))) },
      method: 'sent = growth of wchar in /proc/<serve pid>/io over the second get (socket writes, TLS included); missing = size - the resumed get\'s resumedBytes (blocks found there and verified)',
    },
    goals: [goal({ label: 'resume: bytes sent above what was missing (worst run, half and quarters)', measured: worstOverhead, op: '<=', target: GOAL_OVERHEAD_PERCENT, unit: '%' })],
    figures: [figure('half', 'cut at half'), figure('quarters', 'first and last quarters there')],
    raw: { results },
  };
}

/** Rewrites a partial file in place (same inode, still ours) to hold the first and last quarters of `source`, zeros between. */
function keepQuarters(partial, source, size) {
  const quarter = Math.floor(size / 4);
  const whole = fs.readFileSync(source);
  const out = fs.openSync(partial, 'r+');
  try {
    fs.ftruncateSync(out, 0);
    fs.writeSync(out, whole, 0, quarter, 0);
    fs.writeSync(out, Buffer.alloc(size - 2 * quarter), 0, size - 2 * quarter, quarter);
    fs.writeSync(out, whole, size - quarter, quarter, size - quarter);
  } finally {
    fs.closeSync(out);
  }
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
