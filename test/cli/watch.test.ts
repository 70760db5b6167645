import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { after, describe, it } from 'node:test';
import { tempDir } from '../helpers';

/**
 * `peershare ls <peer> <path> --watch` end to end: the built CLI (`npm run build` first) serving a
 * real folder and watching it over TLS on loopback; real files. Changes are awaited with a
 * generous deadline, never a tight one.
 */

const CLI = path.join(__dirname, '..', '..', 'dist', 'cli.js');
const DEADLINE_MS = 30_000;
const running: ChildProcess[] = [];
after(() => {
  for (const proc of running) if (proc.exitCode === null) proc.kill('SIGKILL');
});

/** The process and the lines it printed so far, and a way to wait for one. */
function start(args: string[]): { proc: ChildProcess; lines: string[]; stderr: () => string; line: (what: string, match: (line: string) => boolean) => Promise<string> } {
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.push(proc);
  const lines: string[] = [];
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const waiters: (() => void)[] = [];
  readline.createInterface({ input: proc.stdout! }).on('line', (l) => {
    lines.push(l);
    for (const wake of waiters.splice(0)) wake();
  });
  const line = async (what: string, match: (line: string) => boolean): Promise<string> => {
    const end = Date.now() + DEADLINE_MS;
    for (;;) {
      const found = lines.find(match);
      if (found !== undefined) return found;
      if (Date.now() > end || proc.exitCode !== null) throw new Error(`No line with ${what} (exit ${proc.exitCode}); printed:\n${lines.join('\n')}\n${stderr}`);
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  };
  return { proc, lines, stderr: () => stderr, line };
}

function exitOf(proc: ChildProcess): Promise<number | null> {
  return proc.exitCode !== null ? Promise.resolve(proc.exitCode) : new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
}

describe('peershare ls --watch', () => {
  it('--json prints the listing, then one JSON line per change (never an excluded file), until Ctrl+C', async () => {
    const proj = path.join(tempDir(), 'proj');
    await fs.mkdir(proj);
    await fs.writeFile(path.join(proj, 'a.txt'), 'hi');
    const serve = start(['serve', proj, '--json', '--port', '0', '--home', tempDir()]);
    const { invite } = JSON.parse(await serve.line('the invite', (l) => l.includes('"invite"'))) as { invite: string };

    const watch = start(['ls', invite, 'proj', '--watch', '--json', '--home', tempDir()]);
    const listing = JSON.parse(await watch.line('the listing', (l) => l.includes('"entries"'))) as { entries: { name: string }[] };
    assert.deepEqual(
      listing.entries.map((e) => e.name),
      ['a.txt'],
    );
    await fs.writeFile(path.join(proj, '.env'), 'TOKEN=1');
    await fs.writeFile(path.join(proj, 'b.txt'), 'hello');
    const added = JSON.parse(await watch.line('b.txt added', (l) => l.includes('"b.txt"') && l.includes('"added"')));
    assert.deepEqual(added.entry.size, 5);
    await fs.appendFile(path.join(proj, 'a.txt'), ' there');
    const changed = JSON.parse(await watch.line('a.txt changed', (l) => l.includes('"a.txt"') && l.includes('"changed"')));
    assert.equal(changed.entry.size, 8);
    await fs.rm(path.join(proj, 'b.txt'));
    assert.deepEqual(JSON.parse(await watch.line('b.txt removed', (l) => l.includes('"b.txt"') && l.includes('"removed"'))), { path: 'b.txt', type: 'removed' });
    assert.ok(!watch.lines.some((l) => l.includes('.env')), '.env was named');
    // Every line after the listing is one change, as JSON.
    for (const l of watch.lines.slice(1)) assert.ok(['added', 'changed', 'removed'].includes(JSON.parse(l).type), l);

    watch.proc.kill('SIGINT');
    assert.equal(await exitOf(watch.proc), 0, watch.stderr());
    serve.proc.kill('SIGINT');
    await exitOf(serve.proc);
  });

  it('prints changes with escaped names as +, ~ and -, and refuses a path that is not a folder', async () => {
    const proj = path.join(tempDir(), 'proj');
    await fs.mkdir(proj);
    await fs.writeFile(path.join(proj, 'file.txt'), 'x');
    const serve = start(['serve', proj, '--json', '--port', '0', '--home', tempDir()]);
    const { invite } = JSON.parse(await serve.line('the invite', (l) => l.includes('"invite"'))) as { invite: string };
    const home = tempDir();

    const refused = start(['ls', invite, 'proj/file.txt', '--watch', '--home', home]);
    assert.equal(await exitOf(refused.proc), 4, 'refused (exit 4)');
    assert.match(refused.stderr(), /NOT_A_DIRECTORY/);

    const watch = start(['ls', invite, 'proj', '--watch', '--home', home]);
    await watch.line('the listing', (l) => l.includes('file.txt'));
    await fs.writeFile(path.join(proj, 'red\u001b[31m.txt'), 'x');
    const line = await watch.line('the escaped name', (l) => l.startsWith('+') && l.includes('red'));
    assert.ok(!line.includes('\u001b'), 'an escape sequence reached the terminal');
    assert.match(line, /red\\u001b\[31m\.txt/);
    await fs.appendFile(path.join(proj, 'file.txt'), 'yz');
    assert.match(await watch.line('file.txt changed', (l) => l.startsWith('~') && l.includes('file.txt')), /3 B/);
    await fs.rm(path.join(proj, 'file.txt'));
    await watch.line('file.txt removed', (l) => l === '- file.txt');
    watch.proc.kill('SIGINT');
    assert.equal(await exitOf(watch.proc), 0, watch.stderr());
    serve.proc.kill('SIGINT');
    await exitOf(serve.proc);
  });
});
