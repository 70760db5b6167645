import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { PeerSentError } from '../../src/core/v2/messages';
import { inboxFolderFor } from '../../src/core/send-policy';
import { tempDir, writeRandomFile } from '../helpers';
import { RecordingPolicy, acceptAllInto, everything, openNode, pair, waitUntil, type Pair } from './send-helpers';

/**
 * Capability send/1 (docs/protocol-v2.md 13) between two real nodes over TLS 1.3 on loopback,
 * with real files: offers both ways on one connection, the decisions, what lands on disk (and
 * what does not), a stranger, the per-peer setting, one prompt at a time, expiry, cancel and
 * resume. Hostile senders are in test/security/hostile-sender.test.ts.
 */
const MiB = 1024 * 1024;
const open: Pair[] = [];
after(async () => {
  for (const p of open) await p.close();
});

async function started(options?: Parameters<typeof pair>[0]): Promise<Pair> {
  const p = await pair(options);
  open.push(p);
  return p;
}

async function source(files: Record<string, Buffer | string>): Promise<string> {
  const dir = tempDir('peershare-send-src-');
  for (const [rel, content] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(dir, rel)), { recursive: true });
    await fs.writeFile(path.join(dir, rel), content);
  }
  return dir;
}

describe('send/1: offers both ways on one connection', () => {
  it('the dialer sends a file and a folder to the listener, which accepts them into a folder it chose', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(acceptAllInto(inbox));
    p.listener.setReceivePolicy(policy);
    const src = await source({ 'app.ts': 'export const a = 1;\n', 'proj/src/b.ts': 'b\n', 'proj/README.md': '# r\n', 'proj/.env': 'SECRET=1', 'proj/.git/config': '[core]' });
    const big = await writeRandomFile(path.join(src, 'big.bin'), 3 * MiB + 17);
    const result = await p.conn.sendSession!.offerFiles([path.join(src, 'app.ts'), path.join(src, 'proj'), path.join(src, 'big.bin')], { note: 'have a look' });
    assert.deepEqual(
      result.entries.map((e) => [e.name, e.type, e.status]),
      [
        ['app.ts', 'file', 'received'],
        ['proj', 'dir', 'received'],
        ['big.bin', 'file', 'received'],
      ],
    );
    assert.equal(policy.offers.length, 1);
    assert.equal(policy.offers[0].note, 'have a look');
    assert.equal(policy.offers[0].peer.id, p.dialer.identity.peerId);
    // The folder was described by two numbers; .env and .git are excluded as from a share, neither counted nor sent.
    assert.deepEqual(
      policy.offers[0].entries.map((e) => (e.type === 'dir' ? [e.name, e.files, e.size] : [e.name, e.size])),
      [['app.ts', 20], ['proj', 2, 6], ['big.bin', 3 * MiB + 17]],
    );
    const received = await policy.nextResult();
    assert.deepEqual(received.entries.map((e) => e.status), ['received', 'received', 'received']);
    assert.deepEqual(await everything(inbox), ['app.ts', 'big.bin', 'proj/', 'proj/README.md', 'proj/src/', 'proj/src/b.ts']);
    assert.equal(await fs.readFile(path.join(inbox, 'app.ts'), 'utf8'), 'export const a = 1;\n');
    assert.ok((await fs.readFile(path.join(inbox, 'big.bin'))).equals(big));
    assert.equal(await fs.readFile(path.join(inbox, 'proj/src/b.ts'), 'utf8'), 'b\n');
    assert.equal(result.bytes, 20 + 6 + 3 * MiB + 17);
  });

  it('each entry says where the sender keeps it below its project (a hint for the review); outside every project folder, nothing', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(acceptAllInto(inbox));
    p.listener.setReceivePolicy(policy);
    const project = await source({ 'src/app.ts': 'a\n', 'test/fixtures/one.json': '{}', '.vscode/x.ts': 'x' });
    const elsewhere = await source({ 'loose.txt': 'l' });
    const result = await p.conn.sendSession!.offerFiles(
      [path.join(project, 'src', 'app.ts'), path.join(project, 'test', 'fixtures'), path.join(project, '.vscode', 'x.ts'), path.join(elsewhere, 'loose.txt')],
      { placesFrom: [project] },
    );
    assert.deepEqual(result.entries.map((e) => e.status), ['received', 'received', 'received', 'received']);
    // .vscode/x.ts: a path unsafe on the other side is not given at all (the name still travels).
    assert.deepEqual(
      policy.offers[0].entries.map((e) => [e.name, e.path]),
      [['app.ts', 'src/app.ts'], ['fixtures', 'test/fixtures'], ['x.ts', undefined], ['loose.txt', undefined]],
    );
    // Only a hint: what lands in the folder the receiver chose is by name, as before.
    assert.deepEqual(await everything(inbox), ['app.ts', 'fixtures/', 'fixtures/one.json', 'loose.txt', 'x.ts']);
  });

  it('the listener sends a file to the dialer over the connection the dialer opened', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(acceptAllInto(inbox));
    p.dialer.setReceivePolicy(policy);
    const src = await source({ 'notes.md': 'from the listener\n' });
    await waitUntil(() => p.listener.send.sessionFor(p.dialer.identity.peerId) !== undefined);
    const result = await p.listener.send.offerFiles(p.dialer.identity.peerId, [path.join(src, 'notes.md')]);
    assert.equal(result.entries[0].status, 'received');
    assert.equal(await fs.readFile(path.join(inbox, 'notes.md'), 'utf8'), 'from the listener\n');
    assert.equal(policy.offers[0].peer.id, p.listener.identity.peerId);
  });

  it('an existing name is kept: the new file lands beside it as "name (2)"', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    await fs.writeFile(path.join(inbox, 'a.txt'), 'mine\n');
    p.listener.setReceivePolicy(new RecordingPolicy(acceptAllInto(inbox)));
    const src = await source({ 'a.txt': 'theirs\n' });
    const result = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    assert.equal(result.entries[0].status, 'received');
    assert.equal(await fs.readFile(path.join(inbox, 'a.txt'), 'utf8'), 'mine\n');
    assert.equal(await fs.readFile(path.join(inbox, 'a (2).txt'), 'utf8'), 'theirs\n');
  });

  it('the person may choose to overwrite an existing name, or to keep it (skip: the sender hears DEST_EXISTS)', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    await fs.writeFile(path.join(inbox, 'a.txt'), 'mine\n');
    await fs.writeFile(path.join(inbox, 'b.txt'), 'mine\n');
    let conflict: 'overwrite' | 'skip' = 'skip';
    p.listener.setReceivePolicy(new RecordingPolicy(async (offer) => ({ into: inbox, entries: offer.entries.map(() => ({})), onConflict: conflict })));
    const src = await source({ 'a.txt': 'theirs\n', 'b.txt': 'theirs\n' });
    const skipped = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    assert.deepEqual(skipped.entries.map((e) => [e.status, e.code]), [['failed', 'DEST_EXISTS']]);
    conflict = 'overwrite';
    const replaced = await p.conn.sendSession!.offerFiles([path.join(src, 'b.txt')]);
    assert.equal(replaced.entries[0].status, 'received');
    assert.equal(await fs.readFile(path.join(inbox, 'a.txt'), 'utf8'), 'mine\n');
    assert.equal(await fs.readFile(path.join(inbox, 'b.txt'), 'utf8'), 'theirs\n');
    assert.deepEqual(await everything(inbox), ['a.txt', 'b.txt']);
  });

  it('a snippet reaches the policy as a message; nothing is written', async () => {
    const p = await started();
    const policy = new RecordingPolicy(async () => 'decline');
    p.listener.setReceivePolicy(policy);
    const before = await everything(p.listener.identity.home);
    const snippet = { text: 'const x = 1;\n', path: 'src/app.ts', startLine: 40, endLine: 40, language: 'typescript' };
    const result = await p.conn.sendSession!.offerSnippet(snippet, { note: 'this line' });
    assert.equal(result.shown, true);
    await waitUntil(() => policy.snippets.length === 1);
    assert.deepEqual(policy.snippets[0].snippet, snippet);
    assert.equal(policy.snippets[0].note, 'this line');
    assert.deepEqual(await everything(p.listener.identity.home), before);
  });
});

describe('send/1: consent', () => {
  it('declined: nothing is written and the sender hears "declined"', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(async () => 'decline');
    p.listener.setReceivePolicy(policy);
    const src = await source({ 'a.txt': 'a', 'dir/b.txt': 'b' });
    const result = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt'), path.join(src, 'dir')]);
    assert.deepEqual(result.entries.map((e) => e.status), ['declined', 'declined']);
    assert.equal(result.bytes, 0);
    assert.deepEqual(await everything(inbox), []);
  });

  it('one entry accepted, one declined: only the accepted one travels', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    p.listener.setReceivePolicy(new RecordingPolicy(async () => ({ into: inbox, entries: [{}, undefined] })));
    const src = await source({ 'a.txt': 'aaa', 'b.txt': 'bbbb' });
    const result = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt'), path.join(src, 'b.txt')]);
    assert.deepEqual(result.entries.map((e) => e.status), ['received', 'declined']);
    assert.equal(result.bytes, 3);
    assert.deepEqual(await everything(inbox), ['a.txt']);
  });

  it('Save As: an entry lands at the path the person chose', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const chosen = path.join(tempDir('peershare-send-saveas-'), 'renamed.txt');
    p.listener.setReceivePolicy(new RecordingPolicy(async () => ({ into: inbox, entries: [{ target: chosen }] })));
    const src = await source({ 'a.txt': 'aaa' });
    await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    assert.equal(await fs.readFile(chosen, 'utf8'), 'aaa');
    assert.deepEqual(await everything(inbox), []);
  });

  it('a node without a policy, or a peer set to never, is refused without asking anyone', async () => {
    const p = await started();
    const src = await source({ 'a.txt': 'a' });
    const refused = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    assert.equal(refused.refused, true);
    assert.equal(refused.entries[0].status, 'declined');
    const policy = new RecordingPolicy(acceptAllInto(tempDir()));
    p.listener.setReceivePolicy(policy);
    await p.listener.receiveSettings.set(p.dialer.identity.peerId, 'never');
    const never = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    assert.equal(never.refused, true);
    assert.equal(policy.offers.length, 0);
  });

  it('a peer set to inbox: accepted into the inbox with no question', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(async () => assert.fail('no question for an inbox peer'), inbox);
    p.listener.setReceivePolicy(policy);
    await p.listener.receiveSettings.set(p.dialer.identity.peerId, 'inbox');
    const src = await source({ 'a.txt': 'a' });
    const result = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    assert.equal(result.entries[0].status, 'received');
    assert.equal(policy.offers.length, 0);
    assert.deepEqual(await everything(inbox), ['a.txt']);
  });

  it('a stranger (allowed once, not trusted) is refused with PEER_UNTRUSTED; the policy never hears of it', async () => {
    const listener = await openNode('listener');
    const stranger = await openNode('stranger');
    const active = await listener.share({ folders: [tempDir()], host: '127.0.0.1', port: 0, onAccessRequest: async () => 'once' });
    const policy = new RecordingPolicy(acceptAllInto(tempDir()));
    listener.setReceivePolicy(policy);
    const conn = await stranger.requestAccess({ id: listener.identity.peerId, address: `127.0.0.1:${active.port}` }, () => undefined);
    try {
      const src = await source({ 'a.txt': 'a' });
      await assert.rejects(conn.sendSession!.offerFiles([path.join(src, 'a.txt')]), (err: unknown) => err instanceof PeerSentError && err.code === 'PEER_UNTRUSTED');
      await assert.rejects(conn.sendSession!.offerSnippet({ text: 'x', path: 'a', startLine: 1, endLine: 1, language: '' }), (err: unknown) => err instanceof PeerSentError && err.code === 'PEER_UNTRUSTED');
      assert.equal(policy.offers.length + policy.snippets.length, 0);
    } finally {
      conn.close();
      await listener.close();
      await stranger.close();
    }
  });

  it('one question per peer at a time: a second offer while the first waits is BUSY and never reaches the policy', async () => {
    const p = await started();
    let answer!: (d: 'decline') => void;
    const policy = new RecordingPolicy(() => new Promise((resolve) => (answer = resolve)));
    p.listener.setReceivePolicy(policy);
    const src = await source({ 'a.txt': 'a' });
    const first = p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    await waitUntil(() => policy.offers.length === 1);
    for (let i = 0; i < 20; i++) {
      await assert.rejects(p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]), (err: unknown) => err instanceof PeerSentError && err.code === 'BUSY');
    }
    await assert.rejects(p.conn.sendSession!.offerSnippet({ text: 'x', path: 'a', startLine: 1, endLine: 1, language: '' }), (err: unknown) => err instanceof PeerSentError && err.code === 'BUSY');
    assert.equal(policy.offers.length, 1);
    answer('decline');
    assert.equal((await first).entries[0].status, 'declined');
    // Answered: the next offer is asked again.
    const again = p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    await waitUntil(() => policy.offers.length === 2);
    answer('decline');
    await again;
  });

  it('an offer nobody answers expires as Decline after requestTimeoutMs; the question is withdrawn', async () => {
    const p = await started({ listenerLimits: { requestTimeoutMs: 800 } });
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(() => new Promise(() => undefined));
    p.listener.setReceivePolicy(policy);
    const src = await source({ 'a.txt': 'a' });
    const result = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    assert.equal(result.entries[0].status, 'declined');
    assert.equal(policy.withdrawn, 1);
    assert.deepEqual(await everything(inbox), []);
  });
});

describe('send/1: the sender gives up', () => {
  it('no answer within its own requestTimeoutMs + stallTimeoutMs: declined as not answered, and the receiver\'s question is withdrawn', async () => {
    const p = await started({ dialerLimits: { requestTimeoutMs: 600, stallTimeoutMs: 400 } });
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(() => new Promise(() => undefined));
    p.listener.setReceivePolicy(policy);
    const src = await source({ 'a.txt': 'a' });
    const result = await p.conn.sendSession!.offerFiles([path.join(src, 'a.txt')]);
    assert.deepEqual(result.entries.map((e) => [e.status, e.message]), [['declined', 'The receiver did not answer in time.']]);
    await waitUntil(() => policy.withdrawn === 1);
    assert.deepEqual(await everything(inbox), []);
  });
});

describe('send/1: cancel, drop and resume', () => {
  it('the sender cancels mid-transfer: the receiver stops and nothing of the file is left', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(acceptAllInto(inbox));
    p.listener.setReceivePolicy(policy);
    const src = tempDir('peershare-send-src-');
    await writeRandomFile(path.join(src, 'big.bin'), 96 * MiB);
    await writeRandomFile(path.join(src, 'dir', 'x.bin'), 2 * MiB);
    const abort = new AbortController();
    const sending = p.conn.sendSession!.offerFiles([path.join(src, 'big.bin'), path.join(src, 'dir')], {
      signal: abort.signal,
      onProgress: ({ bytes }) => {
        if (bytes >= 8 * MiB) abort.abort();
      },
    });
    await assert.rejects(sending, (err: unknown) => (err as { code?: string }).code === 'CANCELLED');
    const result = await policy.nextResult();
    assert.equal(result.cancelled, true);
    assert.notEqual(result.entries[0].status, 'received');
    await waitUntil(() => true);
    assert.deepEqual(await everything(inbox), []);
  });

  it('the receiver cancels mid-transfer: nothing of the offer is left, and the sender hears it', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(acceptAllInto(inbox));
    let cancelled = false;
    policy.onProgress = ({ offerId, bytes }) => {
      if (bytes >= 8 * MiB && !cancelled) cancelled = p.listener.send.cancelIncoming(offerId);
    };
    p.listener.setReceivePolicy(policy);
    const src = tempDir('peershare-send-src-');
    await writeRandomFile(path.join(src, 'dir', 'x.bin'), 2 * MiB);
    await writeRandomFile(path.join(src, 'big.bin'), 96 * MiB);
    const result = await p.conn.sendSession!.offerFiles([path.join(src, 'dir'), path.join(src, 'big.bin')]);
    assert.ok(cancelled);
    // The receiver's Cancel, in its code (the CLI's `send` exits 4 on it, as for a Decline).
    assert.deepEqual(result.entries.map((e) => [e.status, e.code, e.message]), [
      ['failed', 'CANCELLED', 'The receiver cancelled.'],
      ['failed', 'CANCELLED', 'The receiver cancelled.'],
    ]);
    const received = await policy.nextResult();
    assert.equal(received.cancelled, true);
    assert.deepEqual(await everything(inbox), []);
  });

  it('the connection drops mid-transfer: the partial file is kept, and the same file offered again resumes', async () => {
    const p = await started();
    const inbox = tempDir('peershare-send-inbox-');
    const policy = new RecordingPolicy(acceptAllInto(inbox));
    p.listener.setReceivePolicy(policy);
    const src = tempDir('peershare-send-src-');
    const size = 64 * MiB;
    const data = await writeRandomFile(path.join(src, 'big.bin'), size);
    let dropped = false;
    const sending = p.conn.sendSession!.offerFiles([path.join(src, 'big.bin')], {
      onProgress: ({ bytes }) => {
        if (bytes >= 24 * MiB && !dropped) {
          dropped = true;
          p.conn.close();
        }
      },
    });
    await assert.rejects(sending);
    const first = await policy.nextResult();
    assert.equal(first.entries[0].status, 'failed');
    const left = await everything(inbox);
    assert.equal(left.length, 1, `one partial file is kept: ${left.join(', ')}`);
    assert.match(left[0], /^\.big\.bin\./);
    const conn = await p.dialer.connect(p.invite);
    try {
      const again = await conn.sendSession!.offerFiles([path.join(src, 'big.bin')]);
      assert.equal(again.entries[0].status, 'received');
      assert.ok(again.bytes < size - 16 * MiB, `resumed: only ${again.bytes} of ${size} bytes sent again`);
      assert.ok((await fs.readFile(path.join(inbox, 'big.bin'))).equals(data));
      assert.deepEqual(await everything(inbox), ['big.bin']);
    } finally {
      conn.close();
    }
  });
});

describe('send/1: the inbox folder of a peer', () => {
  it('is named after the peer when that is a safe folder name, else after its ID; never a path', () => {
    const id = 'ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567-ABCD-EFGH-IJKL-MNOP-QRST';
    assert.equal(inboxFolderFor('/in', { id, name: 'ann@laptop' }), path.join('/in', 'ann@laptop (ABCD)'));
    for (const name of ['../../etc', 'a/b', '.git', 'CON', '', '\u202eevil', '..']) {
      assert.equal(inboxFolderFor('/in', { id, name }), path.join('/in', 'ABCDEFGHIJKL'), JSON.stringify(name));
    }
  });
});
