import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { CDC_MAX_BYTES } from '../../src/core/cdc';
import { freePort, listTree, seededBytes, tempDir, until } from '../helpers';

const ROOT = path.join(__dirname, '..', '..');

const CLI = path.join(ROOT, 'dist', 'cli.js');

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** `peershare sync` end to end: a real `serve`, the built CLI, real files on both sides. */
describe('peershare sync', () => {
  let serveProc: ChildProcess;
  let invite: string;
  let peerId: string;
  let proj: string;
  const sharerHome = tempDir();
  const clientHome = tempDir();
  let big: Buffer;

  before(async () => {
    process.env.PEERSHARE_DEFAULT_PORT = String(await freePort());
    const built = spawnSync(process.execPath, [path.join(ROOT, 'esbuild.js')], { cwd: ROOT, stdio: 'inherit' });
    assert.equal(built.status, 0, 'the CLI builds');
    proj = path.join(tempDir(), 'proj');
    await fs.mkdir(path.join(proj, 'src'), { recursive: true });
    big = seededBytes(4 * 1024 * 1024, 1);
    await fs.writeFile(path.join(proj, 'big.bin'), big);
    await fs.writeFile(path.join(proj, 'src', 'a.ts'), 'export const a = 1;\n');
    await fs.writeFile(path.join(proj, 'src', 'b.ts'), 'export const b = 2;\n');
    serveProc = spawn(process.execPath, [CLI, 'serve', proj, '--json', '--home', sharerHome, '--invite-uses', '3'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const listening = await new Promise<{ invite: string; peerId: string }>((resolve, reject) => {
      readline.createInterface({ input: serveProc.stdout! }).once('line', (line) => resolve(JSON.parse(line)));
      serveProc.once('exit', (code) => reject(new Error(`serve exited with ${code}`)));
    });
    ({ invite, peerId } = listening);
  });

  after(async () => {
    if (serveProc.exitCode === null) {
      serveProc.kill('SIGTERM');
      await new Promise((r) => serveProc.once('exit', r));
    }
  });

  it('mirrors a folder, then moves only the changed chunks, keeps local-only files, and leaves a link alone', async () => {
    const base = tempDir();
    const mirror = path.join(base, 'mirror');
    const first = await cli(['sync', invite, 'proj', mirror, '--json', '--home', clientHome]);
    assert.equal(first.code, 0, first.stderr);
    const one = JSON.parse(first.stdout);
    assert.deepEqual([one.type, one.filesChecked, one.filesChanged, one.bytesReused], ['dir', 3, 3, 0]);
    assert.equal(one.bytesReceived, big.length + 40);
    assert.deepEqual(await listTree(mirror), ['big.bin', 'src/', 'src/a.ts', 'src/b.ts']);

    // The sharer inserts 100 bytes at the start of big.bin and edits a.ts; the mirror has a file of its own and a link.
    const changed = Buffer.concat([seededBytes(100, 2), big]);
    await fs.writeFile(path.join(proj, 'big.bin'), changed);
    await fs.writeFile(path.join(proj, 'src', 'a.ts'), 'export const a = 100;\n');
    await fs.writeFile(path.join(mirror, 'mine.txt'), 'only here');
    await fs.writeFile(path.join(base, 'outside'), 'untouched');
    await fs.rm(path.join(mirror, 'src', 'b.ts'));
    await fs.symlink(path.join(base, 'outside'), path.join(mirror, 'src', 'b.ts'));

    const second = await cli(['sync', peerId, 'proj', mirror, '--json', '--home', clientHome]);
    assert.equal(second.code, 0, second.stderr);
    const two = JSON.parse(second.stdout);
    assert.equal(two.filesChecked, 3);
    assert.equal(two.filesChanged, 2);
    // The insertion changes the first chunk, and the next at most (fixed bytes: this does not vary).
    assert.ok(two.bytesReceived <= 2 * CDC_MAX_BYTES + 100 + 22, `received ${two.bytesReceived}`);
    assert.equal(two.bytesReused + two.bytesReceived, changed.length + 22);
    assert.deepEqual(await fs.readFile(path.join(mirror, 'big.bin')), changed);
    assert.equal(await fs.readFile(path.join(mirror, 'src', 'a.ts'), 'utf8'), 'export const a = 100;\n');
    assert.deepEqual(two.leftAlone.map((l: { path: string }) => l.path), ['src/b.ts']);
    assert.equal(await fs.readFile(path.join(base, 'outside'), 'utf8'), 'untouched');
    assert.equal(await fs.readFile(path.join(mirror, 'mine.txt'), 'utf8'), 'only here', 'nothing is deleted');
    assert.deepEqual(await listTree(base), ['mirror/', 'mirror/big.bin', 'mirror/mine.txt', 'mirror/src/', 'mirror/src/a.ts', 'mirror/src/b.ts', 'outside'], 'no temporary file is left');

    const third = await cli(['sync', peerId, 'proj', mirror, '--home', clientHome]);
    assert.equal(third.code, 0, third.stderr);
    assert.match(third.stdout, /0 changed, 0 B received/);
    assert.match(third.stdout, /verified with BLAKE3/);
    assert.match(third.stdout, /Left alone src\/b\.ts/);
  });

  it('syncs one file into a folder, and again with no data', async () => {
    const dest = tempDir();
    const first = JSON.parse((await cli(['sync', peerId, 'proj/src/a.ts', `${dest}/`, '--json', '--home', clientHome])).stdout);
    assert.equal(first.target, path.join(dest, 'a.ts'));
    assert.equal(first.filesChanged, 1);
    const again = JSON.parse((await cli(['sync', peerId, 'proj/src/a.ts', `${dest}/`, '--json', '--home', clientHome])).stdout);
    assert.deepEqual([again.filesChanged, again.bytesReceived], [0, 0]);
  });

  it('--delete removes only what a sync created and nobody edited since; the rest is kept and reported', async () => {
    const theirs = path.join(proj, 'gone');
    await fs.mkdir(path.join(theirs, 'deep'), { recursive: true });
    for (const name of ['made.txt', 'edited.txt', 'deep/inner.txt']) await fs.writeFile(path.join(theirs, name), `${name} from the sharer\n`);
    await fs.writeFile(path.join(theirs, 'was-here.txt'), 'the same bytes\n');
    const mirror = path.join(tempDir(), 'mirror');
    await fs.mkdir(mirror);
    // A file of the user's, there before any sync, under a name the sharer also has.
    await fs.writeFile(path.join(mirror, 'was-here.txt'), 'mine, before the sync\n');
    const first = JSON.parse((await cli(['sync', peerId, 'proj/gone', mirror, '--json', '--home', clientHome])).stdout);
    assert.equal(first.filesChecked, 4);

    await fs.appendFile(path.join(mirror, 'edited.txt'), 'an edit here\n');
    await fs.writeFile(path.join(mirror, 'only-mine.txt'), 'never the sharer\'s\n');
    for (const name of ['made.txt', 'edited.txt', 'deep', 'was-here.txt']) await fs.rm(path.join(theirs, name), { recursive: true });

    // Without --delete nothing goes.
    const kept = JSON.parse((await cli(['sync', peerId, 'proj/gone', mirror, '--json', '--home', clientHome])).stdout);
    assert.equal(kept.filesDeleted, 0);
    assert.deepEqual(await listTree(mirror), ['deep/', 'deep/inner.txt', 'edited.txt', 'made.txt', 'only-mine.txt', 'was-here.txt']);

    const run = await cli(['sync', peerId, 'proj/gone', mirror, '--delete', '--json', '--home', clientHome]);
    assert.equal(run.code, 0, run.stderr);
    const result = JSON.parse(run.stdout);
    assert.equal(result.filesDeleted, 2, JSON.stringify(result));
    assert.deepEqual(await listTree(mirror), ['deep/', 'edited.txt', 'only-mine.txt', 'was-here.txt']);
    assert.match(await fs.readFile(path.join(mirror, 'edited.txt'), 'utf8'), /an edit here/);
    assert.deepEqual(result.leftAlone.map((l: { path: string }) => l.path).sort(), ['edited.txt', 'was-here.txt']);
  });

  it('--watch applies an add, a change and a delete as they happen (one JSON line each), until Ctrl+C', async () => {
    const theirs = path.join(proj, 'live');
    await fs.mkdir(theirs);
    await fs.writeFile(path.join(theirs, 'first.txt'), 'one\n');
    const mirror = path.join(tempDir(), 'mirror');
    const following = spawn(process.execPath, [CLI, 'sync', peerId, 'proj/live', mirror, '--watch', '--delete', '--json', '--home', clientHome], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: Record<string, unknown>[] = [];
    readline.createInterface({ input: following.stdout! }).on('line', (line) => lines.push(JSON.parse(line)));
    let stderr = '';
    following.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      await until('the first sync', () => lines.some((l) => l.kind === 'initial'));
      assert.equal(await fs.readFile(path.join(mirror, 'first.txt'), 'utf8'), 'one\n');

      await fs.mkdir(path.join(theirs, 'sub'));
      await fs.writeFile(path.join(theirs, 'sub', 'added.txt'), 'added\n');
      await until('sub/added.txt in the mirror', async () => (await fs.readFile(path.join(mirror, 'sub', 'added.txt'), 'utf8').catch(() => '')) === 'added\n');
      await fs.writeFile(path.join(theirs, 'first.txt'), 'one, changed\n');
      await until('first.txt changed in the mirror', async () => (await fs.readFile(path.join(mirror, 'first.txt'), 'utf8')) === 'one, changed\n');
      await fs.rm(path.join(theirs, 'sub'), { recursive: true });
      await until('sub removed from the mirror', async () => !(await fs.lstat(path.join(mirror, 'sub')).then(() => true, () => false)));
      assert.deepEqual(await listTree(mirror), ['first.txt']);
      await until('the delete reported', () => lines.some((l) => l.kind === 'changes' && l.filesDeleted === 1));
      const batches = lines.filter((l) => l.kind === 'changes');
      assert.ok(batches.length >= 3, JSON.stringify(lines));
      for (const b of batches) assert.deepEqual(Object.keys(b).filter((k) => ['filesChecked', 'filesChanged', 'filesDeleted', 'bytesReceived', 'bytesReused'].includes(k)).length, 5);
    } finally {
      following.kill('SIGINT');
    }
    const code = await new Promise((resolve) => following.once('exit', resolve));
    assert.equal(code, 0, stderr);
  });

  it('says how to use it, and refuses a wrong number of arguments', async () => {
    const help = await cli(['--help']);
    assert.match(help.stdout, /sync <invite\|peer> <remote> <dest>/);
    const wrong = await cli(['sync', peerId, 'proj']);
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /Usage: peershare sync/);
  });
});
