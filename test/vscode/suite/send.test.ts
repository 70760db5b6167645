import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { inboxFolderFor, type IncomingOffer, type SendResult } from '../../../src/core';
import { notificationPrompts, type ReviewOutcome } from '../../../src/vscode/receive';
import { ROOT, api, startHeadlessPeer, tempDir, waitFor } from './helpers';

/**
 * Issue 12 in the real editor: the real CLI (`peershare send`) offers files and snippets to this
 * editor, whose prompts are answered by the test (it cannot click a notification); and this
 * editor sends to a headless peer that takes what trusted peers send. The disk is the oracle.
 */

function workspaceDir(): string {
  return vscode.workspace.workspaceFolders![0].uri.fsPath;
}

/** Runs the real CLI; resolves with its exit code and output. */
function cli(args: string[], stdin?: string, cwd?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'dist', 'cli.js'), ...args], { cwd, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(stdin ?? '');
  });
}

/** Every file below a folder, relative, with its content: what "nothing was written" is checked against. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const full = path.join(entry.parentPath, entry.name);
    out[path.relative(dir, full)] = (await fs.readFile(full)).toString('base64');
  }
  return out;
}

describe('Sending and receiving in a real VS Code (issue 12)', function () {
  this.timeout(120_000);
  const cliHome = tempDir('peershare-vsc-sender-');
  const src = tempDir('peershare-vsc-send-src-');
  let target = '';
  let cliId = '';

  /** `peershare send` from the CLI peer to this editor. */
  const send = (...args: string[]) => cli(['send', target, ...args, '--home', cliHome, '--no-discovery']);
  const sendText = (text: string, ...args: string[]) => cli(['send', target, '--text', ...args, '--home', cliHome, '--no-discovery'], text);

  before(async () => {
    await vscode.commands.executeCommand('peershare.startSharing');
    const { sharing } = await api();
    assert.equal(sharing.isSharing, true);
    const invite = (await vscode.commands.executeCommand<string>('peershare.copyInvite'))!;
    // Pairs, as a person does with `peershare ls <invite>`: each side now knows the other.
    const paired = await cli(['ls', invite, '--home', cliHome, '--no-discovery', '--name', 'Cli Sender']);
    assert.equal(paired.code, 0, paired.stderr);
    cliId = JSON.parse((await cli(['id', '--json', '--home', cliHome])).stdout).peerId;
    target = `127.0.0.1:${sharing.port}`;
    await fs.writeFile(path.join(src, 'app.ts'), 'export const x = 2; // from the peer\n');
    await fs.writeFile(path.join(src, 'notes.txt'), 'notes from the peer\n');
  });

  afterEach(async () => {
    (await api()).receiving.prompts = notificationPrompts;
  });

  after(async () => {
    await vscode.commands.executeCommand('peershare.stopSharing');
  });

  it('offer -> Review -> diff -> Accept: the file lands in the workspace only once accepted', async () => {
    const { receiving } = await api();
    const local = path.join(workspaceDir(), 'src', 'app.ts');
    const before = await fs.readFile(local, 'utf8');
    const asked: string[] = [];
    const seen: { contentWhileAsked: string; diff?: vscode.TabInputTextDiff; staged: string }[] = [];
    receiving.prompts = {
      ...notificationPrompts,
      offer: async (_offer, message, choices) => {
        asked.push(message);
        assert.deepEqual(choices, ['review', 'inbox', 'saveAs', 'decline']);
        return 'review';
      },
      review: async (file) => {
        const diff = await waitFor(() => {
          const input = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
          return input instanceof vscode.TabInputTextDiff ? input : undefined;
        });
        seen.push({ contentWhileAsked: await fs.readFile(local, 'utf8'), diff, staged: file.staged });
        return 'accept';
      },
    };
    const finished = new Promise<ReviewOutcome>((resolve) => {
      const once = receiving.onDidFinishReview((outcome) => {
        once.dispose();
        resolve(outcome);
      });
    });
    const run = await send(path.join(src, 'app.ts'), '--note', 'the fix \u001b[2J');
    assert.equal(run.code, 0, run.stderr + run.stdout);
    const outcome = await finished;
    assert.equal(asked.length, 1);
    assert.match(asked[0], /^Cli Sender \([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}\) offers app\.ts \(\d+ B\): “the fix /);
    assert.doesNotMatch(asked[0], /\u001b/, 'what the peer chose is escaped');
    // Asked while the diff was open, against the workspace file of that name, which was still untouched.
    assert.equal(seen.length, 1);
    assert.equal(seen[0].contentWhileAsked, before);
    assert.equal(seen[0].diff?.original.fsPath, seen[0].staged);
    assert.equal(seen[0].diff?.modified.fsPath, local);
    assert.ok(!seen[0].staged.startsWith(workspaceDir()), 'staged outside the workspace');
    assert.deepEqual(outcome, { accepted: ['src/app.ts'], skipped: [], failed: [] });
    assert.equal(await fs.readFile(local, 'utf8'), 'export const x = 2; // from the peer\n');
    assert.deepEqual(await fs.readdir(receiving.stagingRoot), [], 'the staging folder is gone');
    // Remembered as from the sender, at the path Download would take it from; the file as it landed (the sender's time).
    const { origins } = await api();
    const found = await origins.lookup(local);
    assert.equal(found?.origin.peerId, cliId);
    assert.equal(found?.origin.remotePath, `${path.basename(workspaceDir())}/src/app.ts`);
    assert.equal(await (await origins.store).localState(found!.origin, found!.rel), 'same');
    assert.equal(found!.origin.files.get('')?.mtimeMs, Math.floor((await fs.stat(path.join(src, 'app.ts'))).mtimeMs), 'the sender\'s time');
  });

  it('Review compares with the same path as the sender\'s: its project\'s lib/app.ts with lib/app.ts here, not another app.ts', async () => {
    const { receiving } = await api();
    // The sender's project (a git work tree): the CLI names each file by its place in it.
    const project = tempDir('peershare-vsc-project-');
    await fs.mkdir(path.join(project, '.git'));
    await fs.mkdir(path.join(project, 'lib', 'deep'), { recursive: true });
    await fs.writeFile(path.join(project, 'lib', 'app.ts'), 'export const lib = 2;\n');
    // Here: two files named app.ts (src/app.ts and lib/app.ts), so the name alone would not do.
    const mine = path.join(workspaceDir(), 'lib', 'app.ts');
    await fs.mkdir(path.dirname(mine), { recursive: true });
    await fs.writeFile(mine, 'export const lib = 1;\n');
    const other = await fs.readFile(path.join(workspaceDir(), 'src', 'app.ts'), 'utf8');
    const asked: string[] = [];
    const compared: (string | undefined)[] = [];
    receiving.prompts = {
      ...notificationPrompts,
      offer: async (_offer, message) => {
        asked.push(message);
        return 'review';
      },
      review: async () => {
        const diff = await waitFor(() => {
          const input = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
          return input instanceof vscode.TabInputTextDiff ? input : undefined;
        });
        compared.push(diff.modified.fsPath);
        return 'accept';
      },
    };
    const finished = new Promise<ReviewOutcome>((resolve) => {
      const once = receiving.onDidFinishReview((outcome) => {
        once.dispose();
        resolve(outcome);
      });
    });
    // Run from a folder inside the project: the path is still the project's.
    const run = await cli(['send', target, path.join('..', 'app.ts'), '--home', cliHome, '--no-discovery'], undefined, path.join(project, 'lib', 'deep'));
    assert.equal(run.code, 0, run.stderr + run.stdout);
    const outcome = await finished;
    assert.match(asked[0], / offers lib\/app\.ts \(/);
    assert.deepEqual(compared, [mine]);
    assert.deepEqual(outcome, { accepted: ['lib/app.ts'], skipped: [], failed: [] });
    assert.equal(await fs.readFile(mine, 'utf8'), 'export const lib = 2;\n');
    assert.equal(await fs.readFile(path.join(workspaceDir(), 'src', 'app.ts'), 'utf8'), other, 'the other app.ts is untouched');
    await fs.rm(path.join(workspaceDir(), 'lib'), { recursive: true, force: true });
  });

  it('Review -> Skip leaves the workspace as it was', async () => {
    const { receiving } = await api();
    await fs.writeFile(path.join(src, 'app.ts'), 'export const x = 3;\n');
    const before = await snapshot(workspaceDir());
    receiving.prompts = { ...notificationPrompts, offer: async () => 'review', review: async () => 'skip' };
    const finished = new Promise<ReviewOutcome>((resolve) => {
      const once = receiving.onDidFinishReview((outcome) => {
        once.dispose();
        resolve(outcome);
      });
    });
    assert.equal((await send(path.join(src, 'app.ts'))).code, 0);
    assert.deepEqual(await finished, { accepted: [], skipped: ['src/app.ts'], failed: [] });
    assert.deepEqual(await snapshot(workspaceDir()), before);
    assert.deepEqual(await fs.readdir(receiving.stagingRoot), []);
  });

  it('Review of a folder: Accept All takes every file, the changed one and the new one, at the same paths', async () => {
    const { receiving } = await api();
    const proj = path.join(src, 'src');
    await fs.mkdir(path.join(proj, 'util'), { recursive: true });
    await fs.writeFile(path.join(proj, 'app.ts'), 'export const x = 4;\n');
    await fs.writeFile(path.join(proj, 'util', 'new.ts'), 'export const y = 1;\n');
    const asked: string[] = [];
    receiving.prompts = {
      ...notificationPrompts,
      offer: async () => 'review',
      review: async (file) => {
        asked.push(file.components.join('/'));
        return 'acceptAll';
      },
    };
    const finished = new Promise<ReviewOutcome>((resolve) => {
      const once = receiving.onDidFinishReview((outcome) => {
        once.dispose();
        resolve(outcome);
      });
    });
    try {
      assert.equal((await send(proj)).code, 0);
      assert.deepEqual(await finished, { accepted: ['src/app.ts', 'src/util/new.ts'], skipped: [], failed: [] });
      assert.deepEqual(asked, ['src/app.ts'], 'asked once, then Accept All took the rest');
      assert.equal(await fs.readFile(path.join(workspaceDir(), 'src', 'app.ts'), 'utf8'), 'export const x = 4;\n');
      assert.equal(await fs.readFile(path.join(workspaceDir(), 'src', 'util', 'new.ts'), 'utf8'), 'export const y = 1;\n');
    } finally {
      await fs.rm(path.join(workspaceDir(), 'src', 'util'), { recursive: true, force: true });
    }
  });

  it('Accept never writes through a link put at the file’s place during the review', async () => {
    const { receiving } = await api();
    const outside = path.join(tempDir('peershare-vsc-outside-'), 'precious.txt');
    await fs.writeFile(outside, 'precious\n');
    const local = path.join(workspaceDir(), 'notes.txt');
    await fs.writeFile(local, 'my notes\n');
    receiving.prompts = {
      ...notificationPrompts,
      offer: async () => 'review',
      review: async () => {
        // Another program swaps the file for a link to a file outside the workspace before Accept.
        await fs.rm(local);
        await fs.symlink(outside, local);
        return 'accept';
      },
    };
    const finished = new Promise<ReviewOutcome>((resolve) => {
      const once = receiving.onDidFinishReview((outcome) => {
        once.dispose();
        resolve(outcome);
      });
    });
    try {
      assert.equal((await send(path.join(src, 'notes.txt'))).code, 0);
      assert.deepEqual(await finished, { accepted: [], skipped: [], failed: ['notes.txt'] });
      assert.equal(await fs.readFile(outside, 'utf8'), 'precious\n');
      assert.equal((await fs.lstat(local)).isSymbolicLink(), true, 'the link was left as it was, not replaced or followed');
      assert.deepEqual(await fs.readdir(receiving.stagingRoot), []);
    } finally {
      await fs.rm(local, { force: true });
    }
  });

  it('Decline writes nothing, anywhere; the sender hears it was declined', async () => {
    const { receiving } = await api();
    const before = await snapshot(workspaceDir());
    let offered: IncomingOffer | undefined;
    receiving.prompts = {
      ...notificationPrompts,
      offer: async (offer) => {
        offered = offer;
        return 'decline';
      },
    };
    const run = await send(path.join(src, 'notes.txt'), path.join(src, 'app.ts'), '--json');
    assert.equal(run.code, 4, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout).entries.map((e: { status: string }) => e.status), ['declined', 'declined']);
    assert.deepEqual(offered?.entries.map((e) => e.name), ['notes.txt', 'app.ts']);
    assert.deepEqual(await snapshot(workspaceDir()), before);
    assert.deepEqual(await snapshot(receiving.stagingRoot).catch(() => ({})), {});
  });

  it('an offer nobody answers is declined after peershare.requestTimeoutSeconds; the question is withdrawn', async () => {
    const { receiving } = await api();
    const config = vscode.workspace.getConfiguration('peershare');
    await config.update('requestTimeoutSeconds', 5, vscode.ConfigurationTarget.Workspace);
    let withdrawn = false;
    receiving.prompts = {
      ...notificationPrompts,
      // Nobody clicks: the question only ends when it is withdrawn.
      offer: (_offer, _message, _choices, signal) =>
        new Promise((resolve) =>
          signal.addEventListener('abort', () => {
            withdrawn = true;
            resolve(undefined);
          }),
        ),
    };
    const before = await snapshot(workspaceDir());
    try {
      const run = await send(path.join(src, 'notes.txt'));
      assert.equal(run.code, 4, run.stderr);
      assert.equal(withdrawn, true);
      assert.deepEqual(await snapshot(workspaceDir()), before);
    } finally {
      await config.update('requestTimeoutSeconds', undefined, vscode.ConfigurationTarget.Workspace);
    }
  });

  it('a peer set to never is refused without a question', async () => {
    const { receiving, peers } = await api();
    const peer = (await peers.list()).find((p) => p.id === cliId)!;
    await vscode.commands.executeCommand('peershare.setReceiveSetting', { kind: 'peer', peer }, 'never');
    receiving.prompts = { ...notificationPrompts, offer: async () => assert.fail('a peer set to never is not asked about') };
    try {
      const run = await send(path.join(src, 'notes.txt'), '--json');
      assert.equal(run.code, 4, run.stderr);
      assert.equal(JSON.parse(run.stdout).refused, true);
    } finally {
      await vscode.commands.executeCommand('peershare.setReceiveSetting', { kind: 'peer', peer }, 'ask');
    }
  });

  it('a peer set to inbox sends straight into its inbox folder, without a question; .gitignore is offered once', async () => {
    const { receiving, peers } = await api();
    const peer = (await peers.list()).find((p) => p.id === cliId)!;
    assert.equal(await vscode.commands.executeCommand('peershare.setReceiveSetting', { kind: 'peer', peer }, 'inbox'), 'inbox');
    const gitignoreAsked: string[] = [];
    receiving.prompts = {
      ...notificationPrompts,
      offer: async () => assert.fail('a peer set to inbox is not asked about'),
      gitignore: async (message) => {
        gitignoreAsked.push(message);
        return true;
      },
    };
    const inbox = path.join(workspaceDir(), 'PeerShare Inbox');
    try {
      const run = await send(path.join(src, 'notes.txt'));
      assert.equal(run.code, 0, run.stderr);
      const landed = path.join(inboxFolderFor(inbox, { id: cliId, name: 'Cli Sender' }), 'notes.txt');
      assert.equal(await fs.readFile(landed, 'utf8'), 'notes from the peer\n');
      assert.match(path.basename(path.dirname(landed)), /^Cli Sender \([A-Z0-9]{4}\)$/);
      const found = await waitFor(async () => (await api()).origins.lookup(landed));
      assert.equal(found.origin.peerId, cliId, 'what a peer sent into the inbox is remembered as from it');
      await waitFor(async () => (await fs.readFile(path.join(workspaceDir(), '.gitignore'), 'utf8').catch(() => '')).includes('/PeerShare Inbox/'));
      assert.equal(gitignoreAsked.length, 1);
    } finally {
      await vscode.commands.executeCommand('peershare.setReceiveSetting', { kind: 'peer', peer }, 'ask');
      await fs.rm(inbox, { recursive: true, force: true });
      await fs.rm(path.join(workspaceDir(), '.gitignore'), { force: true });
    }
  });

  it('the inbox is off while a link stands in its place in the workspace (a cloned repository could hold one), or the workspace settings aim it elsewhere', async () => {
    const { receiving, peers } = await api();
    const peer = (await peers.list()).find((p) => p.id === cliId)!;
    assert.equal(await vscode.commands.executeCommand('peershare.setReceiveSetting', { kind: 'peer', peer }, 'inbox'), 'inbox');
    const pointedAt = tempDir('peershare-vsc-link-target-');
    const inbox = path.join(workspaceDir(), 'PeerShare Inbox');
    const offered: string[][] = [];
    receiving.prompts = {
      ...notificationPrompts,
      offer: async (_offer, _message, choices) => {
        offered.push([...choices]);
        return 'decline';
      },
    };
    const config = vscode.workspace.getConfiguration('peershare');
    try {
      await fs.symlink(pointedAt, inbox);
      // Set to inbox, but the inbox is a link: declined, nothing where the link points.
      const run = await send(path.join(src, 'notes.txt'));
      assert.equal(run.code, 4, run.stderr + run.stdout);
      assert.deepEqual(await fs.readdir(pointedAt), []);
      assert.equal(receiving.inboxFor({ id: cliId, name: 'Cli Sender' }), undefined);
      // Asked (set back to ask): the prompt offers no inbox while the link is there.
      await vscode.commands.executeCommand('peershare.setReceiveSetting', { kind: 'peer', peer }, 'ask');
      assert.equal((await send(path.join(src, 'notes.txt'))).code, 4);
      assert.deepEqual(offered, [['review', 'saveAs', 'decline']]);
      await fs.rm(inbox);
      assert.ok(receiving.inboxFor({ id: cliId, name: 'Cli Sender' }), 'the link gone, the inbox is back');
      // The workspace's own settings may not aim the inbox outside it, absolute or by "..".
      for (const aimed of [pointedAt, '../../elsewhere']) {
        await config.update('inboxFolder', aimed, vscode.ConfigurationTarget.Workspace);
        assert.equal(receiving.inboxFor({ id: cliId, name: 'Cli Sender' })?.startsWith(workspaceDir()), aimed === pointedAt ? true : undefined, aimed);
      }
    } finally {
      await config.update('inboxFolder', undefined, vscode.ConfigurationTarget.Workspace);
      await vscode.commands.executeCommand('peershare.setReceiveSetting', { kind: 'peer', peer }, 'ask');
      await fs.rm(inbox, { recursive: true, force: true });
    }
    assert.deepEqual(await fs.readdir(pointedAt), []);
  });

  it('a snippet -> Compare with Mine: a diff against the same lines of my file; no file is written', async () => {
    const { receiving } = await api();
    await fs.writeFile(path.join(workspaceDir(), 'src', 'lines.ts'), 'one\ntwo\nthree\nfour\n');
    const before = await snapshot(workspaceDir());
    const shown: string[] = [];
    receiving.prompts = {
      ...notificationPrompts,
      snippet: async (_s, message) => {
        shown.push(message);
        return 'compare';
      },
    };
    const run = await sendText('TWO\nthree\n', '--name', 'src/lines.ts:2-3', '--note', 'like this?');
    assert.equal(run.code, 0, run.stderr);
    const diff = await waitFor(() => {
      const input = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
      return input instanceof vscode.TabInputTextDiff && input.original.scheme === 'peershare-snippet' ? input : undefined;
    });
    assert.match(shown[0], /^Cli Sender \([A-Z0-9-]+\) sent lines 2-3 of src\/lines\.ts: “like this\?”$/);
    assert.equal((await vscode.workspace.openTextDocument(diff.original)).getText(), 'TWO\nthree\n');
    assert.equal((await vscode.workspace.openTextDocument(diff.modified)).getText(), 'two\nthree\n');
    await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
    assert.deepEqual(await snapshot(workspaceDir()), before);
  });

  it('sends a file (the Explorer command) to a peer that takes files from trusted peers; it arrives byte for byte', async () => {
    const inbox = tempDir('peershare-vsc-inbox-');
    const receiver = await startHeadlessPeer('receiver', { 'theirs.txt': 'x\n' }, ['--receive-into', inbox, '--receive', 'trusted']);
    try {
      await vscode.commands.executeCommand('peershare.connect', receiver.invite);
      const file = vscode.Uri.file(path.join(workspaceDir(), 'src', 'app.ts'));
      const result = await vscode.commands.executeCommand<SendResult>('peershare.sendToPeer', file, [file], { peerId: receiver.peerId, note: 'from the editor' });
      assert.deepEqual(result?.entries.map((e) => [e.name, e.status]), [['app.ts', 'received']]);
      assert.deepEqual(await fs.readFile(path.join(inbox, 'app.ts')), await fs.readFile(file.fsPath));
    } finally {
      await receiver.stop();
      await (await api()).peers.forget(receiver.peerId);
    }
  });
});
