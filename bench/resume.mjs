#!/usr/bin/env node
// Resume: a 1 GiB download cut at half, then resumed. How many bytes does the sharer send the
// second time, against what was missing?
//
//   BENCH_SIZE_MIB=32 BENCH_RUNS=2 node bench/resume.mjs
//
// Each run: `peershare get` of the file, killed with SIGKILL as soon as its partial file (the
// hidden `.<name>.<tag>.peershare-part` beside the target) holds at least half the file; then
// `peershare get` again. The bytes the sharer sent the second time are the growth of `wchar` in
// /proc/<serve pid>/io over the second get: every write system call, socket writes included, so
// TLS and framing overhead count, which is fair. Missing = size - partial size just before the
// second get. The goal: sent <= 1.01 x missing.
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
export const title = 'resume a 1 GiB download cut at half';
export const tools = ['/usr/bin/time'];

const GOAL_OVERHEAD_PERCENT = 1;
const PARTIAL_SUFFIX = '.peershare-part';

/** The partial file of `fileName` in `dir`, if the client has created it. */
function findPartial(dir, fileName) {
  const found = fs.readdirSync(dir).find((n) => n.startsWith(`.${fileName}.`) && n.endsWith(PARTIAL_SUFFIX));
  return found && path.join(dir, found);
}

/** Starts a download and SIGKILLs the client once its partial file holds `cutAt` bytes. */
async function cutDownload({ invite, remote, destDir, fileName, home, cutAt }) {
  const child = spawnTracked(process.execPath, [CLI, 'get', invite, remote, destDir, '--json', '--home', home], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  let done;
  exited.then((how) => (done = how));
  // Poll often: at a few hundred MiB/s the file grows about 1 MiB per 3 ms.
  while (done === undefined) {
    const partial = findPartial(destDir, fileName);
    const size = partial ? fs.statSync(partial, { throwIfNoEntry: false })?.size ?? 0 : 0;
    if (size >= cutAt) {
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

  const results = [];
  for (let i = 1; i <= runs; i++) {
    fs.mkdirSync(destDir, { recursive: true });
    await cutDownload({ invite: server.invite, remote, destDir, fileName, home, cutAt: sizeBytes / 2 });
    await waitUntilQuiet(server.pid);
    const partial = findPartial(destDir, fileName);
    if (!partial) throw new Error('no partial file left behind by the interrupted get');
    const partialBytes = fs.statSync(partial).size;
    const missingBytes = sizeBytes - partialBytes;

    const before = writtenChars(server.pid);
    const r = await peershareGet({ invite: server.invite, remote, dest: destDir, home, scratch });
    await waitUntilQuiet(server.pid, 100);
    const sentBytes = writtenChars(server.pid) - before;
    if (fs.statSync(path.join(destDir, fileName)).size !== sizeBytes) throw new Error('the resumed file has the wrong size');
    if (findPartial(destDir, fileName)) throw new Error('a partial file is left after the resumed get');

    const overheadPercent = (100 * (sentBytes - missingBytes)) / missingBytes;
    results.push({
      partialBytes,
      missingBytes,
      sentBytes,
      overheadPercent: round(overheadPercent, 3),
      seconds: round(r.seconds),
      cli: { bytes: r.result.bytes, resumedBytes: r.result.resumedBytes, seconds: round(r.result.seconds), maxRssBytes: r.result.maxRssBytes },
    });
    ctx.log(
      `run ${i}/${runs}: cut at ${toMiB(partialBytes)} MiB, missing ${toMiB(missingBytes)} MiB, sharer wrote ${toMiB(sentBytes, 2)} MiB ` +
        `(+${overheadPercent.toFixed(3)}%), CLI: bytes ${r.result.bytes} resumedBytes ${r.result.resumedBytes} in ${r.result.seconds.toFixed(2)} s`,
    );
    clearAndSync(destDir);
  }

  const medianOverhead = median(results.map((r) => r.overheadPercent));
  const worstOverhead = Math.max(...results.map((r) => r.overheadPercent));
  const cliAgrees = results.every((r) => r.cli.resumedBytes === r.partialBytes && r.cli.bytes === r.missingBytes);
  printTable([
    ['run', 'partial', 'missing', 'sharer sent', 'overhead', 'CLI bytes / resumedBytes', 'seconds'],
    ...results.map((r, i) => [i + 1, `${r.partialBytes}`, `${r.missingBytes}`, `${r.sentBytes}`, `${r.overheadPercent.toFixed(3)}%`, `${r.cli.bytes} / ${r.cli.resumedBytes}`, r.seconds.toFixed(2)]),
  ]);
  return {
    measured: `${sizeMiB} MiB file, download killed at half and resumed; ${runs} runs`,
    summary: {
      fileBytes: sizeBytes,
      runs,
      medianOverheadPercent: round(medianOverhead, 3),
      worstOverheadPercent: round(worstOverhead, 3),
      medianResumeSeconds: round(median(results.map((r) => r.seconds))),
      cliResumedBytesMatchPartial: cliAgrees,
      method: 'sent = growth of wchar in /proc/<serve pid>/io over the second get (socket writes, TLS included)',
    },
    goals: [goal({ label: 'resume: bytes sent above what was missing (worst run)', measured: worstOverhead, op: '<=', target: GOAL_OVERHEAD_PERCENT, unit: '%' })],
    figures: [
      { label: 'sent the second time', text: `${results.map((r) => `+${r.overheadPercent.toFixed(2)}%`).join(' ')} over the missing bytes (median +${medianOverhead.toFixed(3)}%)` },
      { label: 'resumed get', text: `median ${median(results.map((r) => r.seconds)).toFixed(2)} s for ${mib(median(results.map((r) => r.missingBytes)))}` },
      { label: 'CLI JSON', text: cliAgrees ? 'resumedBytes = partial size, bytes = missing, every run' : 'resumedBytes/bytes differ from the partial file: see raw' },
    ],
    raw: { results },
  };
}

if (isMain(import.meta.url)) runStandalone({ name, title, tools, run });
