import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lstatSync, promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { parseInvite, resolveLimits, type Identity, type Limits, type PeerShareNode } from '../../src/core';
import { blockSizeFor, encodeBlockManifest } from '../../src/core/blocks';
import { partialPathFor } from '../../src/core/landing';
import { dialTls } from '../../src/core/transport-tls';
import type { Connection, ReplyWriter, RequestHandler } from '../../src/core/v2/connection';
import { dialV2 } from '../../src/core/v2/handshake';
import type { CapabilityMessage } from '../../src/core/v2/messages';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { RecordingPolicy, everything, openNode, waitUntil } from '../core/send-helpers';
import { makePeer, tempDir } from '../helpers';
import { assertOnlyChanged, snapshot } from './world';
import { asNobody, openToOthers } from './local-user';
import { codeOf, fileEntry } from '../hostile';

/**
 * send/1 attacked from outside (issue 12, security round 4), over real TLS on loopback, with the
 * file system as the oracle. The receiver is the real CLI (`dist/cli.js serve --receive-into DIR
 * --receive trusted`) in a child process, or the core's receiver in-process where a scenario needs
 * a policy the CLI does not have. Three attackers: a trusted peer that sends what it likes (it
 * paired with the receiver's invite), a stranger, and another user of the same machine (uid
 * 65534, the suite runs as root) who can write where the receive folder lets them. Every scenario
 * lists and hashes the receive folder, its parent and a folder outside before and after. The
 * older suites (hostile-sender, v2-send, cli/send, v2-attacks) are not repeated here.
 */

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const KiB = 1024;
const MiB = 1024 * KiB;
const isRoot = process.getuid?.() === 0;

// ---- the receiver: the real CLI

interface CliReceiver {
  proc: ChildProcess;
  home: string;
  /** The folder everything is arranged in: `into/` (DIR), `outside/` (never to be touched). */
  base: string;
  into: string;
  outside: string;
  invite: string;
  peerId: string;
  stderr(): string;
  /** JSON events printed so far ({"event":"received"}, ...). */
  events: Record<string, unknown>[];
  /** The next `received` event (a result per offer that was accepted in part). */
  nextReceived(): Promise<Record<string, unknown>>;
}

const running: ChildProcess[] = [];
after(async () => {
  for (const proc of running) {
    if (proc.exitCode !== null) continue;
    proc.kill('SIGTERM');
    await new Promise((resolve) => proc.once('exit', resolve));
  }
});

/** `serve --receive-into <base>/into --receive trusted` (or `extra`), listening on loopback, with an invite of many uses. */
async function cliReceiver(options: { intoMode?: number; extra?: string[]; prepare?: (r: { base: string; into: string; outside: string }) => Promise<void> } = {}): Promise<CliReceiver> {
  const base = tempDir('peershare-send-attack-');
  const into = path.join(base, 'into');
  const outside = path.join(base, 'outside');
  await fs.mkdir(into);
  await fs.mkdir(outside);
  await fs.writeFile(path.join(outside, 'secret.txt'), 'never to be written\n');
  if (options.intoMode !== undefined) await openToOthers(into, options.intoMode);
  await options.prepare?.({ base, into, outside });
  const home = tempDir('peershare-send-attack-home-');
  const args = [CLI, 'serve', tempDir(), '--home', home, '--name', 'Receiver', '--host', '127.0.0.1', '--port', '0', '--invite-uses', '1000', '--json'];
  const proc = spawn(process.execPath, [...args, '--receive-into', into, ...(options.extra ?? ['--receive', 'trusted'])], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.push(proc);
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const events: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
    try {
      events.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      return;
    }
    for (const w of waiters.splice(0)) w();
  });
  const nextEvent = async (event: string, after: number): Promise<Record<string, unknown>> => {
    for (;;) {
      const found = events.slice(after).find((e) => e.event === event);
      if (found) return found;
      if (proc.exitCode !== null) throw new Error(`serve exited: ${stderr}`);
      await new Promise<void>((resolve) => waiters.push(resolve));
    }
  };
  const listening = await nextEvent('listening', 0);
  let seenReceived = 0;
  return {
    proc,
    home,
    base,
    into,
    outside,
    invite: listening.invite as string,
    peerId: listening.peerId as string,
    stderr: () => stderr,
    events,
    nextReceived: async () => {
      const all = (): Record<string, unknown>[] => events.filter((e) => e.event === 'received');
      await waitUntil(() => all().length > seenReceived, 30_000);
      return all()[seenReceived++];
    },
  };
}

// ---- the attacker: a peer that speaks send/1 by hand

/** How the attacker's outbox answers the receiver's pulls. */
type Outbox = (request: CapabilityMessage, reply: ReplyWriter) => Promise<Record<string, unknown> | void>;

interface Sender {
  peerId: string;
  connection: Connection;
  answers: boolean[][];
  done: Record<string, unknown>[];
  /** "<type> <path>" of every pull, in order. */
  asked: string[];
  offer(body: Record<string, unknown>, id?: string): Promise<Record<string, unknown>>;
  /** Resolves with the receiver's next send.done (or its all-false answer, or the connection's end). */
  finished(): Promise<void>;
}

const senders: Connection[] = [];
after(() => {
  for (const connection of senders) connection.close();
});

let offers = 0;
const nextOfferId = (): string => `attackoffer${String(offers++).padStart(10, '0')}`;

/** A new installation that used `invite` (so the receiver trusts it), with `outbox` as its send/1 handler. */
async function sender(invite: string, outbox: Outbox = async () => ({}), options: { limits?: Partial<Limits>; holdAnswers?: boolean; identity?: Identity } = {}): Promise<Sender> {
  const identity = options.identity ?? (await makePeer()).identity;
  const parsed = parseInvite(invite);
  const remote = await dialTls({ identity, address: parsed.addresses[0], timeoutMs: 5000 });
  const answers: boolean[][] = [];
  const done: Record<string, unknown>[] = [];
  const asked: string[] = [];
  const settled: (() => void)[] = [];
  const handler: RequestHandler = async (request, reply) => {
    if (request.type === 'send.answer') {
      answers.push(request.accept as boolean[]);
      // Never answered: the receiver's send.answer stays open.
      if (options.holdAnswers) return new Promise(() => undefined);
      if (!(request.accept as boolean[]).some(Boolean)) settled.shift()?.();
      return {};
    }
    if (request.type === 'send.done') {
      done.push(request);
      settled.shift()?.();
      return {};
    }
    asked.push(`${request.type} ${String(request.path)}`);
    return (await outbox(request, reply)) ?? {};
  };
  const { connection } = await dialV2(remote, { expectedPeerId: parsed.peerId, name: 'attacker', token: parsed.token, serve: { 'send/1': { params: {}, handler } }, limits: options.limits });
  senders.push(connection);
  // A connection that closes ends every wait for a result.
  connection.onClose(() => {
    for (const resolve of settled.splice(0)) resolve();
  });
  return {
    peerId: identity.peerId,
    connection,
    answers,
    done,
    asked,
    offer: (body, id = nextOfferId()) => connection.request({ type: 'send.offer', offer: id, ...body }).result,
    finished: () => new Promise<void>((resolve) => settled.push(resolve)),
  };
}


/** An honest outbox: `contents[name]` for each file entry (by the last component of the path asked). */
function serving(contents: Record<string, Buffer>, before?: (request: CapabilityMessage) => Promise<void>): Outbox {
  return async (request, reply) => {
    const name = String(request.path).split('/')[1];
    const content = contents[name];
    await before?.(request);
    if (!content) return {};
    const manifest = manifestOfBytes(content, blockSizeFor(content.length));
    if (request.type === 'send.manifest') {
      await reply.message({ type: 'manifest', size: manifest.size, mtimeMs: 1000, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') });
      await reply.data(encodeBlockManifest(manifest));
    }
    if (request.type === 'send.read') {
      for (const [first, end] of request.blocks as [number, number][]) {
        for (let i = first; i < end; i++) await reply.data(content.subarray(i * manifest.blockSize, Math.min((i + 1) * manifest.blockSize, content.length)));
      }
    }
    return {};
  };
}

/** One inline file of a folder stream (send.tree), as an honest sharer sends a small file. */
async function treeFile(reply: ReplyWriter, rel: string, content: Buffer): Promise<void> {
  const m = manifestOfBytes(content, blockSizeFor(content.length));
  await reply.message({ type: 'file', path: rel, size: content.length, mtimeMs: 1000, blockSize: m.blockSize, fileHash: m.fileHash.toString('hex') });
  await reply.data(content);
}


/** A gate a hostile outbox waits at until the test opens it. */
function gate(): { wait: () => Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { wait: () => opened, open };
}

// ---- another local user

/** The name a partial file of this content takes beside `target` (partial-file.ts: tied to the file hash). */
function partialOf(target: string, content: Buffer): string {
  const m = manifestOfBytes(content, blockSizeFor(content.length));
  return partialPathFor(target, '', `blake3:${m.fileHash.toString('hex')}`, content.length, 0);
}

before(() => {
  assert.ok(spawnSync(process.execPath, [path.join(ROOT, 'esbuild.js')], { cwd: ROOT, stdio: 'inherit' }).status === 0, 'the CLI builds');
});

describe('send attacks: names at the real CLI (serve --receive-into DIR --receive trusted)', () => {
  it('every class of hostile name, offered beside one honest file: only the honest file lands; nothing is created or changed beside DIR or outside it', async () => {
    const r = await cliReceiver();
    const honest = Buffer.from('honest\n');
    const payload = Buffer.from('#!/bin/sh\necho owned\n');
    const s = await sender(r.invite, serving({ 'ok.txt': honest }));
    const before = await snapshot(r.base);
    // The form is wrong: refused before anyone is asked (INVALID_ARGUMENT), the connection stays.
    const malformed = ['..', '../outside/secret.txt', 'a/../../outside', '/etc/passwd', `${r.outside}/secret.txt`, 'C:\\x', 'a\\..\\b', '\\\\server\\share', 'a/b', '.', '', '\uff0e\uff0e', '\u2024\u2024', 'x\uff0fy', 'x\ufffdy', 'a'.repeat(256)];
    for (const name of malformed) {
      assert.equal(await codeOf(s.offer({ entries: [fileEntry('ok.txt', honest), fileEntry(name, payload)] })), 'INVALID_ARGUMENT', JSON.stringify(name));
    }
    // Two entries one file system would merge, a file and a folder of one name, and one entry as another's parent.
    const pairs: [Record<string, unknown>, Record<string, unknown>][] = [
      [fileEntry('Readme.md', payload), fileEntry('README.MD', payload)],
      [fileEntry('ſecret', payload), fileEntry('secret', payload)],
      [fileEntry('caf\u00e9', payload), fileEntry('cafe\u0301', payload)],
      [fileEntry('K.txt', payload), fileEntry('\u212a.txt', payload)],
      [fileEntry('proj', payload), { name: 'proj', type: 'dir', size: 10, files: 1 }],
      [fileEntry('proj', payload), fileEntry('proj/x', payload)],
    ];
    for (const [a, b] of pairs) {
      assert.equal(await codeOf(s.offer({ entries: [a, b] })), 'INVALID_ARGUMENT', `${String(a.name)} / ${String(b.name)}`);
    }
    assert.equal(s.connection.closed, false);
    assert.equal(s.asked.length, 0, 'nothing of a refused offer was pulled');

    // Well-formed but unsafe here: the CLI accepts into DIR only under safe names, so each is declined, the honest one lands.
    const unsafe = ['.git', '.GIT', '.Git ', '.git.', '.g\u200cit', 'GIT~1', '.vscode', '.VSCode', 'VSCODE~1', '\uff0evscode', 'CON', 'nul.txt', 'COM\u00b9', 'lpt9.log', 'C:x', 'a:b', 'a<b', 'x ', 'x.', '\u202etxt.exe', 'a\u001b[2Jb', 'a\u0000b', '\u200b'];
    for (const name of unsafe) {
      const finished = s.finished();
      assert.deepEqual(await s.offer({ entries: [fileEntry(name, payload), fileEntry('ok.txt', honest)] }), { type: 'end' }, JSON.stringify(name));
      await finished;
      assert.deepEqual(s.answers.at(-1), [false, true], JSON.stringify(name));
      assert.deepEqual(await fs.readdir(r.into), ['ok.txt'], `after ${JSON.stringify(name)}`);
      await fs.rm(path.join(r.into, 'ok.txt'));
    }
    assert.ok(s.asked.every((a) => a.endsWith('/ok.txt')), `only the honest entry was pulled: ${s.asked.filter((a) => !a.endsWith('/ok.txt')).join(', ')}`);
    assertOnlyChanged(before, await snapshot(r.base), ['into']);
    assert.equal(await fs.readFile(path.join(r.outside, 'secret.txt'), 'utf8'), 'never to be written\n');
  });

  it('names that exist in DIR (a file, links to a file and a folder outside, a dangling link, a named pipe): each is left exactly as it was, and the new one lands beside it as "name (2)"', async () => {
    const r = await cliReceiver({
      prepare: async ({ into, outside }) => {
        await fs.writeFile(path.join(into, 'file.txt'), 'mine\n');
        await fs.symlink(path.join(outside, 'secret.txt'), path.join(into, 'link.txt'));
        await fs.symlink(outside, path.join(into, 'dirlink'));
        await fs.symlink(path.join(outside, 'created-through-link'), path.join(into, 'dangling'));
        spawnSync('mkfifo', [path.join(into, 'fifo')]);
      },
    });
    const content = Buffer.from('from the peer\n');
    const names = ['file.txt', 'link.txt', 'dangling', 'fifo'];
    const s = await sender(
      r.invite,
      async (request, reply) => {
        if (request.type === 'send.tree') {
          await treeFile(reply, 'inside.txt', content);
          return { count: 1 };
        }
        return serving(Object.fromEntries(names.map((n) => [n, content])))(request, reply);
      },
    );
    const before = await snapshot(r.base);
    const finished = s.finished();
    await s.offer({ entries: [...names.map((n) => fileEntry(n, content)), { name: 'dirlink', type: 'dir', size: content.length, files: 1 }] });
    await finished;
    const results = (s.done[0].results as { status: string }[]).map((x) => x.status);
    assert.deepEqual(results, ['received', 'received', 'received', 'received', 'received']);
    const after = await snapshot(r.base);
    assertOnlyChanged(before, after, ['into/file (2).txt', 'into/link (2).txt', 'into/dangling (2)', 'into/fifo (2)', 'into/dirlink (2)*']);
    for (const n of ['file (2).txt', 'link (2).txt', 'dangling (2)', 'fifo (2)', 'dirlink (2)/inside.txt']) {
      assert.equal(await fs.readFile(path.join(r.into, n), 'utf8'), 'from the peer\n', n);
    }
    assert.deepEqual(await fs.readdir(r.outside), ['secret.txt']);
  });
});

describe('send attacks: another local user and the receive folder', { skip: !isRoot && 'needs root to act as another user' }, () => {
  it('in a drop folder open to all (1777), a named pipe and a symbolic link planted at the partial files’ names are never opened or followed: both files land as ours, the file the link aims at is unchanged', async () => {
    const first = randomBytes(600 * KiB);
    const second = randomBytes(600 * KiB);
    const r = await cliReceiver({ intoMode: 0o1777 });
    const victim = path.join(r.outside, 'secret.txt');
    await openToOthers(r.outside, 0o755);
    asNobody('mkfifo "$FIFO" && ln -s "$VICTIM" "$LINK"', { FIFO: partialOf(path.join(r.into, 'a.bin'), first), LINK: partialOf(path.join(r.into, 'b.bin'), second), VICTIM: victim });
    const outsideBefore = await snapshot(r.outside);
    const s = await sender(r.invite, serving({ 'a.bin': first, 'b.bin': second }));
    const finished = s.finished();
    await s.offer({ entries: [fileEntry('a.bin', first), fileEntry('b.bin', second)] });
    await finished;
    assert.deepEqual((s.done[0].results as { status: string }[]).map((x) => x.status), ['received', 'received']);
    assert.ok((await fs.readFile(path.join(r.into, 'a.bin'))).equals(first));
    assert.ok((await fs.readFile(path.join(r.into, 'b.bin'))).equals(second));
    for (const name of ['a.bin', 'b.bin']) assert.equal((await fs.lstat(path.join(r.into, name))).uid, 0, `${name} is ours`);
    assert.deepEqual((await fs.readdir(r.into)).sort(), ['a.bin', 'b.bin'], 'their planted names are gone, and nothing else is left');
    assertOnlyChanged(outsideBefore, await snapshot(r.outside), []);
  });

  it('the final name planted as a link to a file outside after the offer was accepted, before the file is written: never written through; the entry fails DEST_EXISTS, the link stays theirs, and the verified bytes are kept only in a partial file of ours', async () => {
    const content = randomBytes(300 * KiB);
    const r = await cliReceiver({ intoMode: 0o1777 });
    const victim = path.join(r.outside, 'secret.txt');
    await openToOthers(r.outside, 0o755);
    const outsideBefore = await snapshot(r.outside);
    const target = path.join(r.into, 'late.bin');
    let planted = false;
    const s = await sender(
      r.invite,
      serving({ 'late.bin': content }, async (request) => {
        if (request.type !== 'send.read' || planted) return;
        planted = true;
        asNobody('ln -s "$VICTIM" "$T"', { VICTIM: victim, T: target });
      }),
    );
    const finished = s.finished();
    await s.offer({ entries: [fileEntry('late.bin', content)] });
    await finished;
    assert.ok(planted);
    const [result] = s.done[0].results as { status: string; code?: string }[];
    assert.equal(result.status, 'failed');
    assert.equal(result.code, 'DEST_EXISTS');
    assert.equal((await fs.lstat(target)).isSymbolicLink(), true);
    const left = (await fs.readdir(r.into)).filter((n) => n !== 'late.bin');
    assert.deepEqual(left, [path.basename(partialOf(target, content))], 'the verified partial file is kept (DEST_EXISTS keeps it, as a download does)');
    const kept = await fs.lstat(path.join(r.into, left[0]));
    assert.ok(kept.isFile() && kept.uid === 0 && kept.nlink === 1, 'and it is a file of ours');
    assertOnlyChanged(outsideBefore, await snapshot(r.outside), []);
  });

  it('folders another user made in a drop folder open to all (1777) at a folder entry’s name and its next "name (n)": never received into; the folder lands in one this receiver made, which only it may write', async () => {
    const r = await cliReceiver({ intoMode: 0o1777 });
    asNobody('cd "$INTO" && mkdir proj "proj (2)" && chmod 777 proj "proj (2)"', { INTO: r.into });
    const before = await snapshot(r.into);
    const file = Buffer.from('x\n');
    const s = await sender(r.invite, async (request, reply) => {
      if (request.type !== 'send.tree') return {};
      await treeFile(reply, 'a.txt', file);
      return { count: 1 };
    });
    const finished = s.finished();
    await s.offer({ entries: [{ name: 'proj', type: 'dir', size: 2, files: 1 }] });
    await finished;
    assert.equal((s.done[0].results as { status: string }[])[0].status, 'received');
    assertOnlyChanged(before, await snapshot(r.into), ['proj (3)*']);
    const made = await fs.lstat(path.join(r.into, 'proj (3)'));
    assert.ok(made.isDirectory() && made.uid === 0 && (made.mode & 0o022) === 0, 'ours, and nobody else may write in it');
    assert.equal(await fs.readFile(path.join(r.into, 'proj (3)', 'a.txt'), 'utf8'), 'x\n');
  });

  it('a folder entry’s own folder swapped for a link to a folder outside while its files stream in (DIR open to all, 0777), then the sender cancels: nothing is written outside, the link is removed as a name, never followed', async () => {
    const r = await cliReceiver({ intoMode: 0o777 });
    await openToOthers(r.outside, 0o777);
    const outsideBefore = await snapshot(r.outside);
    const file = Buffer.from('x\n');
    let swapped = false;
    let s!: Sender;
    s = await sender(r.invite, async (request, reply) => {
      if (request.type === 'send.tree') {
        // The receiver made proj/ and holds it open before it asked: swapped now, under its feet.
        asNobody('cd "$INTO" && mv proj stolen && ln -s "$OUT" proj', { INTO: r.into, OUT: r.outside });
        swapped = true;
        await reply.message({ type: 'dir', path: 'sub' });
        for (let i = 0; i < 20; i++) await treeFile(reply, `sub/f${i}.txt`, file);
        await treeFile(reply, 'top.txt', file);
        return { count: 21 };
      }
      if (request.type === 'send.manifest') {
        // The next entry: the sender cancels the offer instead, which removes what landed of it.
        await s.connection.request({ type: 'send.cancel', offer: String(request.path).split('/')[0] }).result;
        return new Promise(() => undefined);
      }
      return {};
    });
    const finished = s.finished();
    await s.offer({ entries: [{ name: 'proj', type: 'dir', size: 1000, files: 30 }, fileEntry('next.bin', Buffer.from('next'))] });
    await finished;
    assert.ok(swapped);
    assertOnlyChanged(outsideBefore, await snapshot(r.outside), []);
    assert.deepEqual(await fs.readdir(r.outside), ['secret.txt']);
    assert.equal(lstatSync(path.join(r.into, 'proj'), { throwIfNoEntry: false }), undefined, 'the link at the folder’s name was removed');
    assert.equal(await fs.readFile(path.join(r.outside, 'secret.txt'), 'utf8'), 'never to be written\n');
  });
});

describe('send attacks: a refused, cancelled or silent offer leaves nothing, and harms no other', () => {
  let receiver: PeerShareNode;
  let invite: string;
  let policy: RecordingPolicy;
  let base: string;
  before(async () => {
    receiver = await openNode('receiver', { stallTimeoutMs: 1500 });
    invite = (await receiver.share({ folders: [tempDir()], host: '127.0.0.1', port: 0 })).server.createInvite({ uses: 1000 });
    base = tempDir('peershare-send-attack-inproc-');
    policy = new RecordingPolicy(async () => 'decline');
    receiver.setReceivePolicy(policy);
  });
  after(async () => {
    await receiver.close();
  });

  it('an offer too large for the disk (2^53 - 1 bytes) into an inbox, or a folder chosen at the prompt, that does not exist yet: declined, and the folder is not created (not even empty)', async () => {
    const before = await snapshot(base);
    const s = await sender(invite);
    const huge = { ...fileEntry('huge.bin', Buffer.from('x')), size: Number.MAX_SAFE_INTEGER };
    // A peer set to inbox: no question, the inbox folder of that peer does not exist yet.
    policy.inbox = path.join(base, 'PeerShare Inbox', 'attacker');
    await receiver.send.options.settings.set(s.peerId, 'inbox');
    let finished = s.finished();
    let notice = policy.nextNotice();
    await s.offer({ entries: [huge] });
    assert.match(await notice, /Not enough free space/);
    await finished;
    // Asked: the person chose a folder (Save to Inbox, Save As) that does not exist yet.
    await receiver.send.options.settings.set(s.peerId, 'ask');
    policy.decide = async (offer) => ({ into: path.join(base, 'chosen', 'deeper'), entries: offer.entries.map(() => ({})) });
    finished = s.finished();
    notice = policy.nextNotice();
    await s.offer({ entries: [huge] });
    assert.match(await notice, /Not enough free space/);
    await finished;
    assert.deepEqual(s.answers, [[false], [false]]);
    assert.equal(s.asked.length, 0);
    assertOnlyChanged(before, await snapshot(base), []);

    // Accepted into the inbox, then a lie (the blocks are not the offered file's): nothing is left, the inbox folder neither.
    const offered = randomBytes(100 * KiB);
    const liar = await sender(invite, serving({ 'lie.bin': randomBytes(100 * KiB) }));
    await receiver.send.options.settings.set(liar.peerId, 'inbox');
    policy.inbox = path.join(base, 'PeerShare Inbox', 'liar');
    const received = policy.nextResult();
    await liar.offer({ entries: [fileEntry('lie.bin', offered)] });
    assert.equal((await received).entries[0].code, 'HASH_MISMATCH');
    assertOnlyChanged(before, await snapshot(base), []);
    policy.decide = async () => 'decline';
  });

  it('one question at a time per peer across its connections: its second connection’s offer, and a snippet, are BUSY while the first waits; the question never sees them; after the answer it is heard again', async () => {
    let answer!: (d: 'decline') => void;
    policy.decide = () => new Promise((resolve) => (answer = resolve));
    const { identity } = await makePeer();
    const first = await sender(invite, undefined, { identity });
    const second = await sender(invite, undefined, { identity });
    const asked = policy.offers.length;
    const declined = first.finished();
    assert.deepEqual(await first.offer({ entries: [fileEntry('a.txt', Buffer.from('a'))] }), { type: 'end' });
    await waitUntil(() => policy.offers.length === asked + 1);
    assert.equal(await codeOf(second.offer({ entries: [fileEntry('b.txt', Buffer.from('b'))] })), 'BUSY');
    assert.equal(await codeOf(second.offer({ snippet: { text: 'x', path: 'a.ts', startLine: 1, endLine: 1, language: '' } })), 'BUSY');
    assert.equal(policy.offers.length, asked + 1);
    assert.equal(policy.snippets.length, 0);
    answer('decline');
    await declined;
    policy.decide = async () => 'decline';
    const again = second.finished();
    assert.deepEqual(await second.offer({ entries: [fileEntry('b.txt', Buffer.from('b'))] }), { type: 'end' });
    await again;
    assert.equal(policy.offers.length, asked + 2);
  });

  it('a sender that goes silent after its offer was accepted: the entry ends TIMEOUT (stallTimeoutMs), nothing is under the final name, its next offer is heard', async () => {
    const into = path.join(base, 'silent');
    policy.decide = async (offer) => ({ into, entries: offer.entries.map(() => ({})) });
    const content = randomBytes(200 * KiB);
    let manifestAnswered = false;
    const s = await sender(invite, async (request, reply) => {
      if (request.type === 'send.manifest' && !manifestAnswered) return new Promise(() => undefined);
      if (request.type === 'send.read') return new Promise(() => undefined);
      return serving({ 'quiet.bin': content })(request, reply);
    });
    let received = policy.nextResult();
    await s.offer({ entries: [fileEntry('quiet.bin', content)] });
    let result = await received;
    assert.equal(result.entries[0].code, 'TIMEOUT');
    assert.deepEqual(await everything(into), [], 'no manifest, no partial file');
    // Its manifest, then silence.
    manifestAnswered = true;
    received = policy.nextResult();
    await s.offer({ entries: [fileEntry('quiet.bin', content)] });
    result = await received;
    assert.equal(result.entries[0].code, 'TIMEOUT');
    assert.deepEqual(await everything(into), [], 'nothing under the final name, and a partial file without a block is not kept');
    policy.decide = async () => 'decline';
  });

  it('a peer’s cancel removes its own partial file only: another peer’s file of the same name (other content, or the same), arriving at the same time, still lands whole', async () => {
    const into = path.join(base, 'shared-name');
    policy.decide = async (offer) => ({ into, entries: offer.entries.map(() => ({})) });
    const honest = randomBytes(3 * MiB);
    const other = randomBytes(3 * MiB);
    const honestGate = gate();
    const x = await sender(invite, serving({ 'same.bin': honest }, async (request) => (request.type === 'send.read' ? honestGate.wait() : undefined)));
    const y = await sender(invite, serving({ 'same.bin': other }, async (request) => (request.type === 'send.read' ? new Promise(() => undefined) : undefined)));
    const honestDone = x.finished();
    await x.offer({ entries: [fileEntry('same.bin', honest)] });
    await waitUntil(() => x.asked.some((a) => a.startsWith('send.read')));
    const yId = nextOfferId();
    const yDone = y.finished();
    await y.offer({ entries: [fileEntry('same.bin', other)] }, yId);
    await waitUntil(() => y.asked.some((a) => a.startsWith('send.read')));
    assert.equal((await fs.readdir(into)).filter((n) => n.endsWith('.peershare-part')).length, 2, 'both partial files are open');
    await y.connection.request({ type: 'send.cancel', offer: yId }).result;
    await yDone;
    // A third peer offers the very same file to the same place, and cancels while its block list is asked for.
    const z = await sender(invite, async () => new Promise(() => undefined));
    const zId = nextOfferId();
    const zDone = z.finished();
    await z.offer({ entries: [fileEntry('same.bin', honest)] }, zId);
    await waitUntil(() => z.asked.some((a) => a.startsWith('send.manifest')));
    await z.connection.request({ type: 'send.cancel', offer: zId }).result;
    await zDone;
    assert.equal((await fs.readdir(into)).filter((n) => n.endsWith('.peershare-part')).length, 1, 'the honest peer’s partial file is still there');
    honestGate.open();
    await honestDone;
    assert.equal((x.done[0].results as { status: string; code?: string }[])[0].status, 'received', JSON.stringify(x.done[0]));
    assert.ok((await fs.readFile(path.join(into, 'same.bin'))).equals(honest));
    assert.deepEqual(await fs.readdir(into), ['same.bin'], 'the cancelled one left nothing');
    policy.decide = async () => 'decline';
  });
});

describe('send attacks: snippets and what reaches the terminal', () => {
  it('snippets at the real CLI: a path of the wrong form, a bad line range or language, one byte over maxSnippetBytes are refused and the connection stays; a snippet naming .git/config is shown and nothing is written anywhere', async () => {
    const r = await cliReceiver();
    const s = await sender(r.invite);
    const before = await snapshot(r.base);
    const snippet = (over: Record<string, unknown>): Record<string, unknown> => ({ snippet: { text: 'x\n', path: 'src/app.ts', startLine: 1, endLine: 1, language: 'typescript', ...over } });
    const refused: [Record<string, unknown>, string][] = [
      [{ path: '../../etc/passwd' }, 'INVALID_ARGUMENT'],
      [{ path: '/etc/passwd' }, 'INVALID_ARGUMENT'],
      [{ path: 'src\\app.ts' }, 'INVALID_ARGUMENT'],
      [{ path: '' }, 'INVALID_ARGUMENT'],
      [{ path: 'a/\uff0e\uff0e/b' }, 'INVALID_ARGUMENT'],
      [{ startLine: 0, endLine: 0 }, 'INVALID_ARGUMENT'],
      [{ startLine: 9, endLine: 3 }, 'INVALID_ARGUMENT'],
      [{ language: 'ts; rm -rf ~' }, 'INVALID_ARGUMENT'],
      [{ text: 'x'.repeat(resolveLimits().maxSnippetBytes + 1) }, 'TOO_LARGE'],
    ];
    for (const [over, code] of refused) assert.equal(await codeOf(s.offer(snippet(over))), code, JSON.stringify(over).slice(0, 80));
    assert.equal(s.connection.closed, false);
    const shown = r.events.filter((e) => e.event === 'snippet').length;
    assert.deepEqual(await s.offer(snippet({ path: '.git/config', text: '[core]\n\thooksPath = /tmp/evil\n' })), { type: 'end' });
    await waitUntil(() => r.events.filter((e) => e.event === 'snippet').length === shown + 1);
    assert.equal(r.events.filter((e) => e.event === 'snippet').length, 1, 'only the well-formed snippet was shown');
    assertOnlyChanged(before, await snapshot(r.base), []);
    // Both a snippet and entries: the shape is wrong, and the connection closes.
    assert.equal(await codeOf(s.offer({ ...snippet({}), entries: [fileEntry('a', Buffer.from('a'))] })), 'PROTOCOL_ERROR');
  });

  it('the terminal question for the largest offer (1,000 entries of 255-byte names made of escape sequences, a 200-character note of them) stays short: 20 names shown, each escaped and cut, the rest counted', async () => {
    const { formatOfferQuestion } = await import('../../src/cli/receive');
    const entries = Array.from({ length: resolveLimits().maxOfferEntries }, (_, i) => ({ ...fileEntry(`${i}`.padEnd(255, '\u001b'), Buffer.from('x')), unsafeHere: { at: 0, why: 'control, invisible, blank or direction characters' } })) as never[];
    const question = formatOfferQuestion({ offerId: 'x'.repeat(16), peer: { id: 'AAAA-BBBB-CCCC-DDDD', name: '\u202e'.repeat(500) }, note: '\u001b[2J'.repeat(50), entries, totalBytes: 1000 }, '/tmp/into');
    const lines = question.split('\n');
    assert.ok(question.length < 8000, `${question.length} characters`);
    assert.equal(lines.filter((l) => l.startsWith('  ') && l.includes('not saved')).length, 20);
    assert.ok(lines.some((l) => l.includes('…and 980 more')));
    assert.doesNotMatch(question, /[\u0000-\u0009\u000b-\u001f\u202e]/, 'no raw control or direction character');
  });
});

describe('send attacks: a folder that is not what was offered (the real CLI)', () => {
  it('a folder offered as "0 files, 0 bytes" that streams 3,000 empty files: stopped (SIZE_MISMATCH) once it brings more files than offered, and nothing of it is left', async () => {
    const r = await cliReceiver();
    const s = await sender(r.invite, async (request, reply) => {
      if (request.type !== 'send.tree') return {};
      for (let i = 0; i < 3000; i++) await treeFile(reply, `empty${i}`, Buffer.alloc(0));
      return { count: 3000 };
    });
    const finished = s.finished();
    await s.offer({ entries: [{ name: 'nothing', type: 'dir', size: 0, files: 0 }] });
    await finished;
    const [result] = s.done[0].results as { status: string; code?: string }[];
    assert.equal(result.code, 'SIZE_MISMATCH', JSON.stringify(result));
    assert.deepEqual(await fs.readdir(r.into), []);
  });
});

describe('send attacks: trust and resume at the real CLI', () => {
  it('`trust rm` in another process while a trusted peer’s folder is arriving: nothing it sends after the revoke lands', async () => {
    const r = await cliReceiver();
    const file = Buffer.from('x\n');
    const revoked = gate();
    let revokedAt = -1;
    const s = await sender(r.invite, async (request, reply) => {
      if (request.type === 'send.tree') {
        for (let i = 0; i < 5; i++) await treeFile(reply, `before${i}.txt`, file);
        await revoked.wait();
        for (let i = 0; i < 5; i++) await treeFile(reply, `after${i}.txt`, file);
        return { count: 10 };
      }
      return serving({ 'later.txt': file })(request, reply);
    });
    const finished = s.finished();
    await s.offer({ entries: [{ name: 'proj', type: 'dir', size: 100, files: 10 }, fileEntry('later.txt', file)] });
    await waitUntil(() => s.asked.some((a) => a.startsWith('send.tree')));
    const rm = spawnSync(process.execPath, [CLI, 'trust', 'rm', s.peerId, '--home', r.home], { encoding: 'utf8' });
    assert.equal(rm.status, 0, rm.stderr);
    revokedAt = s.asked.length;
    revoked.open();
    await finished;
    const landed = await everything(r.into);
    assert.deepEqual(landed.filter((n) => n.includes('after') || n.includes('later')), [], `landed after the revoke: ${landed.join(', ')}`);
    assert.deepEqual(s.asked.slice(revokedAt), [], 'nothing more was pulled from the revoked peer');
    const results = s.done[0].results as { status: string; code?: string }[];
    assert.deepEqual(results.map((x) => x.code), ['PEER_UNTRUSTED', 'PEER_UNTRUSTED']);
  });

  it('a partial file kept from one peer’s dropped offer survives a liar offering the same file; with a block damaged on this disk, it is resumed by another peer offering that file: only verified blocks count, the damaged one is fetched again, the file lands whole', async () => {
    const r = await cliReceiver();
    const content = randomBytes(3 * MiB);
    const blockSize = blockSizeFor(content.length);
    const blocks = Math.ceil(content.length / blockSize);
    let x!: Sender;
    x = await sender(r.invite, async (request, reply) => {
      if (request.type !== 'send.read') return serving({ 'big.bin': content })(request, reply);
      for (let i = 0; i < Math.floor(blocks / 2); i++) await reply.data(content.subarray(i * blockSize, (i + 1) * blockSize));
      await waitUntil(() => lstatSync(partialOf(path.join(r.into, 'big.bin'), content), { throwIfNoEntry: false })?.size === content.length);
      // Dropped mid-file: the receiver keeps the verified blocks.
      setTimeout(() => x.connection.close(), 200);
      return new Promise(() => undefined);
    });
    await x.offer({ entries: [fileEntry('big.bin', content)] });
    await waitUntil(() => x.connection.closed);
    await r.nextReceived();
    const partial = partialOf(path.join(r.into, 'big.bin'), content);
    // A third peer offers the same file and sends a block that is not its own: it is cut off, and the kept blocks stay.
    const liar = await sender(r.invite, async (request, reply) => {
      if (request.type !== 'send.read') return serving({ 'big.bin': content })(request, reply);
      await reply.data(randomBytes(blockSize));
      return {};
    });
    const lied = liar.finished();
    await liar.offer({ entries: [fileEntry('big.bin', content)] });
    await lied;
    assert.equal(liar.connection.closed, true, 'the liar was cut off');
    assert.deepEqual(await fs.readdir(r.into), [path.basename(partial)], 'the kept partial file survived the liar');
    const handle = await fs.open(partial, 'r+');
    await handle.write(Buffer.from([content[blockSize + 7] ^ 0xff]), 0, 1, blockSize + 7);
    await handle.close();
    const reads: [number, number][][] = [];
    const y = await sender(r.invite, serving({ 'big.bin': content }, async (request) => void (request.type === 'send.read' && reads.push(request.blocks as [number, number][]))));
    const finished = y.finished();
    await y.offer({ entries: [fileEntry('big.bin', content)] });
    await finished;
    assert.equal((y.done[0].results as { status: string }[])[0].status, 'received');
    assert.ok((await fs.readFile(path.join(r.into, 'big.bin'))).equals(content));
    const fetched = reads.flat().flatMap(([a, b]) => Array.from({ length: b - a }, (_, i) => a + i));
    assert.ok(fetched.includes(1), 'the damaged block was fetched again');
    assert.ok(!fetched.includes(0), 'a verified block was not');
    assert.deepEqual(await fs.readdir(r.into), ['big.bin']);
  });
});

describe('send attacks: exhaustion by a trusted sender (the real CLI)', () => {
  it('a peer that never ends the receiver’s send.answer and offers as fast as it can: at most maxRequestsPerPeer of its offers are held, the rest BUSY; the receiver’s memory stays flat, and another peer is still served', async () => {
    const r = await cliReceiver();
    const rssMiB = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${r.proc.pid}/status`, 'utf8'))![1]) / 1024;
    // It lets the receiver open one request to it at a time, and holds that one: everything else queues.
    const s = await sender(r.invite, async () => new Promise(() => undefined), { limits: { maxRequestsPerPeer: 1 }, holdAnswers: true });
    const entries = Array.from({ length: 300 }, (_, i) => fileEntry(`${'n'.repeat(100)}${i}`, Buffer.from('x')));
    const before = rssMiB();
    const codes = new Map<string, number>();
    for (let i = 0; i < 1500; i++) {
      const code = (await codeOf(s.offer({ entries }))) ?? 'taken';
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    const grew = rssMiB() - before;
    assert.deepEqual([...codes.keys()].sort(), ['BUSY', 'taken']);
    assert.ok(codes.get('taken')! <= resolveLimits().maxRequestsPerPeer, `${codes.get('taken')} offers held at once`);
    assert.ok(grew < 100, `the receiver grew by ${grew.toFixed(0)} MiB`);
    // Another trusted peer is still served.
    const content = Buffer.from('still here\n');
    const other = await sender(r.invite, serving({ 'ok.txt': content }));
    const finished = other.finished();
    await other.offer({ entries: [fileEntry('ok.txt', content)] });
    await finished;
    assert.equal(await fs.readFile(path.join(r.into, 'ok.txt'), 'utf8'), 'still here\n');
  });
});
