// What a person sees while the VS Code server installs (install-vscode-server.mjs): plain lines in a
// log, a line redrawn in place in a terminal, and a failed step's whole output. Real child processes.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { createStatusLine, describeProgress, formatDuration, measureFolder, runStep } from './install-vscode-server.mjs';

function recorder({ redraw, columns = 100 }) {
  let written = '';
  const status = createStatusLine({ write: (text) => (written += text), redraw, columns: () => columns, totalStages: 3 });
  return { status, written: () => written };
}

function tempLog() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'peershare-install-'));
  const file = path.join(dir, 'install.log');
  writeFileSync(file, '');
  return { dir, log: { path: file, write: (text) => writeFileSync(file, text, { flag: 'a' }) } };
}

/** Runs `script` in a Node child as one step and returns what the person saw (and the error, if any). */
async function runNode(script, { stages = [{ title: 'Doing it' }], measure } = {}) {
  const { status, written } = recorder({ redraw: false });
  const { dir, log } = tempLog();
  const originalWrite = process.stderr.write;
  let shownOnStderr = '';
  // A failed step's output goes to stderr as it is, bytes and all: catch it for the assertions.
  process.stderr.write = (chunk) => ((shownOnStderr += chunk), true);
  let error;
  try {
    await runStep({ commands: [[process.execPath, ['-e', script], {}]], stages, status, log, redraw: false, measure });
  } catch (e) {
    error = e;
  } finally {
    process.stderr.write = originalWrite;
  }
  const logged = readFileSync(log.path, 'utf8');
  rmSync(dir, { recursive: true, force: true });
  return { seen: written() + shownOnStderr, logged, error };
}

test('durations read as seconds, then minutes and seconds', () => {
  assert.equal(formatDuration(400), '0 s');
  assert.equal(formatDuration(59_400), '59 s');
  assert.equal(formatDuration(60_000), '1 min 0 s');
  assert.equal(formatDuration(201_600), '3 min 22 s');
});

test('a progress note names the time, the megabytes and the native modules built', () => {
  assert.equal(describeProgress({ elapsedMs: 12_000 }), '12 s');
  assert.equal(describeProgress({ elapsedMs: 40_000, bytes: 262_400_000, nativeModules: 0 }), '40 s, 262 MB so far');
  assert.equal(describeProgress({ elapsedMs: 65_000, bytes: 410e6, nativeModules: 1 }), '1 min 5 s, 410 MB so far, 1 native module built');
  assert.equal(describeProgress({ elapsedMs: 65_000, bytes: 410e6, nativeModules: 3 }), '1 min 5 s, 410 MB so far, 3 native modules built');
});

test('in a log (not a terminal), every line is written once, as plain text, numbered by stage', () => {
  const { status, written } = recorder({ redraw: false });
  status.start('Downloading Node 24');
  status.progress('10 s, 120 MB so far');
  status.finish('done in 14 s');
  status.start('Downloading VS Code');
  status.finish('done in 9 s');
  assert.equal(
    written(),
    [
      '[vscode-server] 1/3 Downloading Node 24 ...',
      '[vscode-server]     10 s, 120 MB so far',
      '[vscode-server]     done in 14 s',
      '[vscode-server] 2/3 Downloading VS Code ...',
      '[vscode-server]     done in 9 s',
      '',
    ].join('\n'),
  );
  assert.doesNotMatch(written(), /[\r\x1b]/);
});

test('in a terminal, a stage is one line redrawn in place that fits the width, and ends with its time', () => {
  const { status, written } = recorder({ redraw: true, columns: 90 });
  status.start('Downloading Node 24');
  status.progress('3 s, 40 MB so far');
  status.finish('done in 5 s');
  status.start('Installing VS Code packages, compiling its native modules (the long part)');
  status.progress('1 min 5 s, 410 MB so far, 3 native modules built');
  status.finish('done in 3 min 1 s');
  const lines = written().split('\n');
  assert.equal(lines.length, 3, 'one line per stage once finished');
  assert.deepEqual(lines[0].split('\r\x1b[K'), [
    '[vscode-server] 1/3 Downloading Node 24 ...',
    '[vscode-server] 1/3 Downloading Node 24 ... 3 s, 40 MB so far',
    '[vscode-server] 1/3 Downloading Node 24 ... done in 5 s',
  ]);
  const frames = lines[1].split('\r\x1b[K');
  for (const frame of frames.slice(0, -1)) assert.ok(frame.length < 90, `fits: ${frame}`);
  assert.match(frames[1], /^\[vscode-server\] 2\/3 Installing VS C… \.\.\. 1 min 5 s, 410 MB so far, 3 native modules built$/, 'the title gives way, the note stays');
  assert.equal(frames[2], '[vscode-server] 2/3 Installing VS Code packages, compiling its native modules (the long part) ... done in 3 min 1 s');
});

test('a step that succeeds shows its stage and time, not its output, except npm warnings; the log keeps all', async () => {
  const { seen, logged, error } = await runNode("console.log('added 165 packages'); console.error('npm warn deprecated something old'); console.log('gyp info spawn make')");
  assert.equal(error, undefined);
  assert.match(seen, /^\[vscode-server\] 1\/3 Doing it \.\.\.\n\[vscode-server\] {5}done in \d+ s\n/);
  assert.match(seen, /\[vscode-server\] {3}npm warn deprecated something old\n/);
  assert.doesNotMatch(seen, /added 165 packages|gyp info/);
  assert.match(logged, /added 165 packages/);
  assert.match(logged, /gyp info spawn make/);
});

test('a step that fails shows its whole output, however long, and rejects', async () => {
  const script = "console.log('first line'); for (let i = 0; i < 5000; i++) console.error('compiler says ' + i); console.log('npm error code 1'); process.exitCode = 3";
  const { seen, logged, error } = await runNode(script);
  assert.ok(error, 'rejects');
  assert.match(error.message, /Doing it: .* exited with code 3/);
  assert.match(seen, /failed after \d+ s \(.* exited with code 3\)\. Its output:/);
  for (const line of ['first line', 'compiler says 0', 'compiler says 2500', 'compiler says 4999', 'npm error code 1']) assert.ok(seen.includes(`${line}\n`), line);
  assert.match(seen, /end of the output of "Doing it"; every step's output is in /);
  assert.ok(logged.includes('compiler says 4999'));
});

test('a later stage starts when its folder appears, even when the step ends before the next progress note', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'peershare-stage-'));
  const marker = path.join(dir, 'lib', 'node_modules');
  try {
    const { seen, error } = await runNode(`require('fs').mkdirSync(${JSON.stringify(marker)}, { recursive: true })`, {
      stages: [{ title: 'Downloading' }, { title: 'Building', reached: () => existsSync(marker) }],
    });
    assert.equal(error, undefined);
    assert.match(seen, /1\/3 Downloading \.\.\.\n.*done in \d+ s\n.*2\/3 Building \.\.\.\n.*done in \d+ s\n/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('measuring a folder counts its bytes and the native modules built in build/Release', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'peershare-measure-'));
  try {
    const write = (rel, bytes) => {
      mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
      writeFileSync(path.join(dir, rel), Buffer.alloc(bytes));
    };
    write('a/build/Release/a.node', 100);
    write('a/build/Release/obj.target/a.node', 100); // node-gyp's intermediate copy: not a second module
    write('b/prebuilds/linux-x64/b.node', 50); // shipped, not built here
    write('b/index.js', 7);
    assert.deepEqual(measureFolder(dir), { bytes: 257, nativeModules: 1 });
    assert.deepEqual(measureFolder(path.join(dir, 'missing')), { bytes: 0, nativeModules: 0 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
