import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as readline from 'node:readline';
import { freePort, tempDir, writeRandomFile } from '../helpers';

/**
 * `peershare send` and `peershare serve --receive-into` (issue 12), as a person runs them: the
 * built CLI in child processes, real TLS on loopback, real files, exit codes and the disk as the
 * oracles.
 */
const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], input?: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
    else child.stdin!.end();
  });
}

interface Serving {
  proc: ChildProcess;
  lines: string[];
  stderr: () => string;
  listening: { invite: string; peerId: string; port: number };
  /** The next JSON event line on stdout with this `event`. */
  next(event: string): Promise<Record<string, unknown>>;
}

async function startServe(args: string[]): Promise<Serving> {
  const proc = spawn(process.execPath, [CLI, 'serve', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines: string[] = [];
  const waiters: (() => void)[] = [];
  readline.createInterface({ input: proc.stdout! }).on('line', (l) => {
    lines.push(l);
    for (const w of waiters.splice(0)) w();
  });
  const next = async (event: string): Promise<Record<string, unknown>> => {
    for (;;) {
      const found = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((m) => m.event === event && !(m as { seen?: boolean }).seen);
      if (found) {
        lines.splice(lines.findIndex((l) => (JSON.parse(l) as Record<string, unknown>).event === event), 1);
        return found;
      }
      await new Promise<void>((resolve, reject) => {
        waiters.push(resolve);
        proc.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
      });
    }
  };
  const listening = (await next('listening')) as unknown as Serving['listening'];
  return { proc, lines, listening, stderr: () => stderr, next };
}

async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return;
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
}

describe('peershare send', () => {
  const serving: Serving[] = [];
  const senderHome = tempDir('peershare-cli-sender-');
  let src: string;
  let big: Buffer;

  before(async () => {
    process.env.PEERSHARE_DEFAULT_PORT = String(await freePort());
    const built = spawnSync(process.execPath, [path.join(ROOT, 'esbuild.js')], { cwd: ROOT, stdio: 'inherit' });
    assert.equal(built.status, 0, 'the CLI builds');
    src = tempDir('peershare-cli-send-src-');
    await fs.writeFile(path.join(src, 'app.ts'), 'export const a = 1;\n');
    await fs.mkdir(path.join(src, 'proj', 'src'), { recursive: true });
    await fs.writeFile(path.join(src, 'proj', 'src', 'b.ts'), 'b\n');
    big = await writeRandomFile(path.join(src, 'big.bin'), 3 * 1024 * 1024);
  });
  after(async () => {
    for (const s of serving) await stop(s.proc);
  });

  /** A serve with these options, and the sender paired with it (by its invite, through ls). */
  async function receiver(options: string[]): Promise<Serving> {
    const s = await startServe([tempDir('peershare-cli-shared-'), '--home', tempDir('peershare-cli-receiver-'), '--name', 'Receiver', '--invite-uses', '10', ...options]);
    serving.push(s);
    const paired = await cli(['ls', s.listening.invite, '--home', senderHome, '--json']);
    assert.equal(paired.code, 0, paired.stderr);
    return s;
  }

  it('serve --receive-into DIR --receive trusted: files and a folder arrive, verified; exit 0', async () => {
    const into = tempDir('peershare-cli-into-');
    const s = await receiver(['--receive-into', into, '--receive', 'trusted']);
    const run = await cli(['send', s.listening.peerId, path.join(src, 'app.ts'), path.join(src, 'proj'), path.join(src, 'big.bin'), '--note', 'for you', '--home', senderHome]);
    assert.equal(run.code, 0, run.stderr + run.stdout);
    assert.match(run.stdout, /Sent 3 items .* to Receiver .*verified with BLAKE3/);
    assert.equal(await fs.readFile(path.join(into, 'app.ts'), 'utf8'), 'export const a = 1;\n');
    assert.equal(await fs.readFile(path.join(into, 'proj', 'src', 'b.ts'), 'utf8'), 'b\n');
    assert.ok((await fs.readFile(path.join(into, 'big.bin'))).equals(big));
    const received = await s.next('received');
    assert.deepEqual((received.entries as { status: string }[]).map((e) => e.status), ['received', 'received', 'received']);
  });

  it('--json prints one result', async () => {
    const into = tempDir('peershare-cli-into-');
    const s = await receiver(['--receive-into', into, '--receive', 'trusted']);
    const run = await cli(['send', s.listening.peerId, path.join(src, 'app.ts'), '--json', '--home', senderHome]);
    assert.equal(run.code, 0, run.stderr);
    const result = JSON.parse(run.stdout.trim().split('\n').pop()!) as { entries: { name: string; status: string }[]; bytes: number };
    assert.deepEqual(result.entries.map((e) => [e.name, e.status]), [['app.ts', 'received']]);
    assert.equal(result.bytes, 20);
  });

  it('serve without --receive-into refuses every offer: exit 4, nothing written anywhere', async () => {
    const s = await receiver([]);
    const run = await cli(['send', s.listening.peerId, path.join(src, 'app.ts'), '--home', senderHome]);
    assert.equal(run.code, 4, run.stderr + run.stdout);
    assert.match(run.stdout, /takes no files from you/);
  });

  it('--receive ask without a terminal declines: exit 4, the folder stays empty', async () => {
    const into = tempDir('peershare-cli-into-');
    const s = await receiver(['--receive-into', into]);
    const run = await cli(['send', s.listening.peerId, path.join(src, 'app.ts'), '--home', senderHome]);
    assert.equal(run.code, 4, run.stderr + run.stdout);
    assert.match(run.stdout, /declined app\.ts/);
    assert.deepEqual(await fs.readdir(into), []);
    assert.match(s.stderr(), /no terminal to ask at/);
  });

  it('trust receive <peer> never: refused without asking', async () => {
    const into = tempDir('peershare-cli-into-');
    const home = tempDir('peershare-cli-receiver-');
    const s = await startServe([tempDir(), '--home', home, '--name', 'Receiver', '--invite-uses', '10', '--receive-into', into, '--receive', 'trusted']);
    serving.push(s);
    assert.equal((await cli(['ls', s.listening.invite, '--home', senderHome])).code, 0);
    const sender = JSON.parse((await cli(['id', '--json', '--home', senderHome])).stdout) as { peerId: string };
    const set = await cli(['trust', 'receive', sender.peerId, 'never', '--home', home]);
    assert.equal(set.code, 0, set.stderr);
    const run = await cli(['send', s.listening.peerId, path.join(src, 'app.ts'), '--home', senderHome]);
    assert.equal(run.code, 4);
    assert.deepEqual(await fs.readdir(into), []);
  });

  it('echo text | send --text --name app.ts:40: the receiver prints it, escaped, and writes nothing', async () => {
    const into = tempDir('peershare-cli-into-');
    const s = await receiver(['--receive-into', into, '--receive', 'trusted']);
    const text = 'const x = 1;\n\u001b[31mred\u202e\n';
    const run = await cli(['send', s.listening.peerId, '--text', '--name', 'src/app.ts:40', '--home', senderHome], text);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /Sent the snippet/);
    const shown = await s.next('snippet');
    assert.equal(shown.path, 'src/app.ts');
    assert.equal(shown.startLine, 40);
    assert.equal(shown.endLine, 41);
    assert.equal(shown.language, 'typescript');
    assert.equal(shown.text, text);
    assert.deepEqual(await fs.readdir(into), []);
  });

  it('serve --receive-into DIR asks at the terminal, showing the offer with its names escaped; "y" saves what is safe to save', async () => {
    const into = tempDir('peershare-cli-into-');
    const command = `${process.execPath} ${CLI} serve ${tempDir()} --json --home ${tempDir()} --name Receiver --receive-into ${into}`;
    // `script` gives the server a terminal, as a person running it would have.
    const child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    try {
      const until = async (text: string): Promise<void> => {
        const deadline = Date.now() + 15_000;
        while (!output.includes(text)) {
          if (Date.now() > deadline) throw new Error(`no "${text}" in: ${output}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      await until('"listening"');
      const line = output.split(/\r?\n/).find((l) => l.includes('"listening"'))!;
      const invite = (JSON.parse(line.slice(line.indexOf('{'))) as { invite: string }).invite;
      assert.equal((await cli(['ls', invite, '--home', senderHome])).code, 0);
      const odd = path.join(src, 'odd\u202etxt.exe');
      await fs.writeFile(odd, 'x');
      const sending = cli(['send', invite, path.join(src, 'app.ts'), odd, '--note', 'look \u001b[2J', '--home', senderHome]);
      await until('Save into');
      await new Promise((r) => setTimeout(r, 400)); // a person reads the question first; quicker input counts as type-ahead
      assert.match(output, /offers 2 items/);
      assert.match(output, /odd\\u202etxt\.exe/, 'the name is shown escaped');
      assert.match(output, /Note: "look \\u001b\[2J"/);
      assert.match(output, /not saved: its name is not safe here/);
      child.stdin!.write('y\r');
      const run = await sending;
      // The name with a direction mark is never saved under that name: the sender hears it declined (exit 4).
      assert.equal(run.code, 4, run.stderr + run.stdout);
      assert.match(run.stdout, /Sent 1 item \(20 B\) to Receiver/);
      assert.deepEqual(await fs.readdir(into), ['app.ts']);
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('a snippet in the terminal: escape sequences and direction marks are shown escaped', async () => {
    const { formatSnippet } = await import('../../src/cli/receive');
    const lines = formatSnippet({ offerId: 'x'.repeat(16), peer: { id: 'AAAA-BBBB-CCCC-DDDD', name: 'Ann\u001b[2J' }, snippet: { text: 'a\u001b[31m\u202eb\n', path: 'src/app.ts', startLine: 40, endLine: 40, language: 'typescript' } });
    assert.match(lines[0], /^"Ann\\u001b\[2J" \(AAAA-BBBB-CCCC…\) sent line 40 of src\/app\.ts \(typescript\):$/);
    assert.equal(lines[1], '  | a\\u001b[31m\\u202eb');
  });
});
