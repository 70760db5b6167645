import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { encodeMessage } from '../../../src/core/frames';
import { DISGUISING_CHARS, formatInvite, loadOrCreateIdentity } from '../../../src/core';
import { peerFileUri } from '../../../src/vscode/peers';
import type { EntryNode, Node, PeerNode } from '../../../src/vscode/tree';
import { blockSizeFor, encodeBlockManifest } from '../../../src/core/blocks';
import { manifestOfBytes } from '../../../src/core/v2/share-messages';
import { helloV2, rawClient, startHostileSharerV2, tcpConnect } from '../../hostile';
import { ROOT, api, tempDir, waitFor } from './helpers';

/**
 * Runs last: hostile peers against the extension from both sides, then the extension's own
 * deactivate(). Nothing a peer sends may take the extension host down, and after deactivation
 * no socket, timer or temporary file of the extension's may remain.
 */

const EXTENSION_BUNDLE = path.join(ROOT, 'dist', 'extension.js');
const UNSAFE_ON_SCREEN = DISGUISING_CHARS;

/** Timers the extension's own code creates, until they fire or are cleared. */
function trackExtensionTimers(): { pending: Map<unknown, string>; restore(): void } {
  const pending = new Map<unknown, string>();
  const original = { setTimeout: globalThis.setTimeout, setInterval: globalThis.setInterval, clearTimeout: globalThis.clearTimeout, clearInterval: globalThis.clearInterval };
  const creator = (): string | undefined => {
    // Raw call sites name the generated file even when stack traces are source-mapped.
    const { prepareStackTrace, stackTraceLimit } = Error;
    Error.prepareStackTrace = (_, sites) => sites;
    Error.stackTraceLimit = 30;
    const sites = new Error().stack as unknown as NodeJS.CallSite[];
    Error.prepareStackTrace = prepareStackTrace;
    Error.stackTraceLimit = stackTraceLimit;
    // The code that called setTimeout, past this wrapper: a timer VS Code makes for us (a log
    // flush, say) is VS Code's to clear, not ours.
    const caller = sites.find((s) => s.getFileName() !== __filename);
    return caller?.getFileName() === EXTENSION_BUNDLE ? `${caller.getFunctionName() ?? '?'} at line ${caller.getLineNumber()}` : undefined;
  };
  const wrap = (create: typeof setTimeout, once: boolean) =>
    function (this: unknown, callback: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) {
      const where = creator();
      const timer: unknown = create(
        function (this: unknown, ...a: unknown[]) {
          if (once) pending.delete(timer);
          return callback.apply(this, a);
        } as never,
        ms,
        ...args,
      );
      if (where) pending.set(timer, where);
      return timer;
    };
  globalThis.setTimeout = wrap(original.setTimeout, true) as unknown as typeof setTimeout;
  globalThis.setInterval = wrap(original.setInterval as unknown as typeof setTimeout, false) as unknown as typeof setInterval;
  globalThis.clearTimeout = ((t: unknown) => {
    pending.delete(t);
    original.clearTimeout(t as NodeJS.Timeout);
  }) as typeof clearTimeout;
  globalThis.clearInterval = ((t: unknown) => {
    pending.delete(t);
    original.clearInterval(t as NodeJS.Timeout);
  }) as typeof clearInterval;
  return { pending, restore: () => Object.assign(globalThis, original) };
}

function countResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1;
  return counts;
}

async function filesNamed(dir: string, suffix: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.name.endsWith(suffix)) found.push(path.join(entry.parentPath ?? dir, entry.name));
  }
  return found;
}

describe('hostile peers in a real VS Code, then deactivation', function () {
  this.timeout(120_000);

  it('survives a lying peer and hostile clients, and leaves no socket, timer or temporary file after deactivate()', async () => {
    const workspace = vscode.workspace.workspaceFolders![0].uri.fsPath;
    const errors: string[] = [];
    const showError = vscode.window.showErrorMessage;
    (vscode.window as { showErrorMessage: unknown }).showErrorMessage = (message: string) => {
      errors.push(message);
      return Promise.resolve(undefined);
    };
    const timers = trackExtensionTimers();
    const baseline = countResources();
    try {
      // ---- a peer that lies, answering the extension's requests
      const hostile = await loadOrCreateIdentity(tempDir());
      const good = Buffer.from('honest\n');
      const big = randomBytes(10 * 1024 * 1024);
      const contentOf = (name: string): Buffer => (name === 'stall.bin' ? big : good);
      const server = await startHostileSharerV2(
        hostile,
        async (req, reply) => {
          const p = String(req.path);
          const name = p.split('/').pop()!;
          if (req.type === 'share.list' && p === '') {
            await reply.message({ type: 'entries', entries: [{ name: 'ws', type: 'dir', size: 0, mtimeMs: 1 }] });
            return { count: 1 };
          }
          if (req.type === 'share.list' && p === 'ws') {
            await reply.message({
              type: 'entries',
              entries: ['ok.txt', '\u001b[31mred\u001b[0m.txt', 'evil\u202etxt.exe', 'lying.txt', 'stall.bin', 'line\nbreak.txt'].map((n) => ({ name: n, type: 'file', size: 7, mtimeMs: 1 })).concat([{ name: 'bad-folder', type: 'dir', size: 0, mtimeMs: 1 }, { name: 'dup', type: 'dir', size: 0, mtimeMs: 1 }]),
            });
            return { count: 8 };
          }
          if (req.type === 'share.list' && p === 'ws/dup') {
            await reply.message({ type: 'entries', entries: [{ name: 'a', type: 'file', size: 1, mtimeMs: 1 }, { name: 'a', type: 'file', size: 1, mtimeMs: 1 }] });
            return { count: 2 };
          }
          if (req.type === 'share.stat') {
            const isDir = name === 'bad-folder' || name === 'dup';
            return { entry: { name, type: isDir ? 'dir' : 'file', size: isDir ? 0 : contentOf(name).length, mtimeMs: 1 } };
          }
          if (req.type === 'share.manifest') {
            // An honest block list: the lie is in the bytes that follow.
            const manifest = manifestOfBytes(contentOf(name), blockSizeFor(contentOf(name).length));
            await reply.message({ type: 'manifest', size: manifest.size, mtimeMs: 1, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') });
            await reply.data(encodeBlockManifest(manifest));
            return {};
          }
          if (req.type === 'share.read' && name === 'lying.txt') return void (await reply.data(Buffer.from('liar!!\n')));
          if (req.type === 'share.read' && name === 'stall.bin') {
            // The first blocks, then nothing at all.
            await reply.data(big.subarray(0, 1024 * 1024));
            return new Promise(() => undefined);
          }
          if (req.type === 'share.read') return void (await reply.data(good));
          if (req.type === 'share.tree') {
            await reply.message({ type: 'file', path: '../escape.txt', size: good.length, mtimeMs: 1, blockSize: blockSizeFor(good.length), fileHash: manifestOfBytes(good, blockSizeFor(good.length)).fileHash.toString('hex') });
            await reply.data(good);
            return { count: 1 };
          }
          return undefined;
        },
        { welcomeName: '\u001b[2JHostile\u202e peer\nFAKE', roots: ['ws'] },
      );
      const invite = formatInvite({ peerId: hostile.peerId, addresses: [server.address], token: randomBytes(24).toString('base64url') });
      await vscode.commands.executeCommand('peershare.connect', invite);
      const { tree, downloads } = await api();
      const peerNode = await waitFor(async () => (await tree.getChildren(undefined)).find((n): n is PeerNode => n.kind === 'peer' && n.peer.id === hostile.peerId));
      assert.doesNotMatch(String(tree.getTreeItem(peerNode).label), UNSAFE_ON_SCREEN, 'the peer name is shown escaped');
      const [root] = await tree.getChildren(peerNode);
      const entries = (await tree.getChildren(root)) as Node[];
      for (const node of entries) {
        const item = tree.getTreeItem(node);
        // Tooltips have lines of their own; within each, nothing may move the cursor or reorder text.
        for (const text of [String(item.label), String(item.description ?? ''), ...String(item.tooltip ?? '').split('\n')]) {
          assert.doesNotMatch(text, UNSAFE_ON_SCREEN, `names are shown escaped: ${JSON.stringify(text)}`);
        }
      }
      const byName = (n: string): EntryNode => entries.find((e): e is EntryNode => e.kind === 'entry' && e.entry.name === n)!;

      // A listing with duplicate names becomes a message in the tree, not a crash.
      assert.ok(byName('dup'), `the listing: ${JSON.stringify(entries)}`);
      const dupChildren = await tree.getChildren(byName('dup'));
      assert.equal(dupChildren.length, 1, JSON.stringify(dupChildren));
      assert.equal(dupChildren[0].kind, 'message');

      // A lying hash and a folder that tries to climb out: refused, shown, nothing written.
      assert.equal(await vscode.commands.executeCommand('peershare.download', byName('lying.txt')), undefined);
      assert.equal(await vscode.commands.executeCommand('peershare.download', byName('bad-folder')), undefined);
      assert.equal(errors.length, 2, errors.join(' | '));
      assert.match(errors[0], /BLAKE3/);
      assert.match(errors[1], /unsafe/);
      await assert.rejects(Promise.resolve(vscode.workspace.fs.readFile(peerFileUri(hostile.peerId, 'ws/lying.txt'))), 'a preview of a lying file is refused too');
      assert.deepEqual(await fs.readdir(path.dirname(workspace)).then((names) => names.filter((n) => n === 'escape.txt')), []);

      // ---- hostile clients against the extension's own server, some left hanging
      await vscode.commands.executeCommand('peershare.startSharing');
      const { sharing } = await api();
      const sharingAddress = `127.0.0.1:${sharing.port}`;
      const noCert = await rawClient(sharingAddress);
      await noCert.closed;
      assert.deepEqual(noCert.messages.map((m) => m.code), ['PEER_UNTRUSTED']);
      const garbage = await tcpConnect(sharingAddress);
      garbage.on('error', () => undefined);
      garbage.write('GET / HTTP/1.1\r\n\r\n');
      const silent = await tcpConnect(sharingAddress);
      silent.on('error', () => undefined);
      const dripper = await rawClient(sharingAddress, await loadOrCreateIdentity(tempDir()));
      dripper.socket.on('error', () => undefined);
      dripper.socket.write(encodeMessage(helloV2('drip')).subarray(0, 3));
      const leftOpen = [silent, dripper.socket].map((s) => new Promise<void>((r) => s.once('close', () => r())));

      // ---- a download stalled mid-file when the extension goes away
      const stalled = downloads.download(byName('stall.bin'));
      await waitFor(async () => (await filesNamed(workspace, '.peershare-part')).length > 0, 20_000);

      // The host is still up and answering.
      assert.ok((await vscode.commands.getCommands(true)).includes('peershare.connect'));

      const pendingBefore = timers.pending.size;
      await (await api()).deactivate();
      // At once, before any of them could simply fire: deactivation itself must have cleared them.
      await new Promise((r) => setImmediate(r));
      const pendingAfter = [...timers.pending.values()];

      assert.equal(await stalled, undefined, 'the stalled download ended as cancelled');
      assert.deepEqual(await filesNamed(workspace, '.peershare-part'), [], 'no partial file left');
      await Promise.race([Promise.all(leftOpen), new Promise((_, reject) => setTimeout(() => reject(new Error('the sharer left a connection open')), 5000))]);
      const refused = await new Promise<boolean>((resolve) => {
        const s = net.connect(Number(sharingAddress.split(':')[1]), '127.0.0.1', () => {
          s.destroy();
          resolve(false);
        });
        s.on('error', () => resolve(true));
      });
      assert.equal(refused, true, 'the port is closed');

      // Our own test sockets and the hostile server go too; then compare with before.
      garbage.destroy();
      await server.close();
      await new Promise((r) => setTimeout(r, 500));
      const after = countResources();
      for (const kind of ['TCPSocketWrap', 'TCPServerWrap', 'UDPWrap', 'TLSWrap']) {
        assert.ok((after[kind] ?? 0) <= (baseline[kind] ?? 0), `${kind}: ${after[kind] ?? 0} after deactivation, ${baseline[kind] ?? 0} before the test`);
      }
      assert.ok(pendingBefore > 0, 'the extension had timers running before deactivation');
      assert.deepEqual(pendingAfter, [], 'timers of the extension still pending after deactivation');
      console.log(`deactivation: resources before ${JSON.stringify(baseline)}, after ${JSON.stringify(after)}; extension timers pending: ${pendingBefore} before deactivate(), ${pendingAfter.length} after`);
    } finally {
      timers.restore();
      (vscode.window as { showErrorMessage: unknown }).showErrorMessage = showError;
    }
  });
});
