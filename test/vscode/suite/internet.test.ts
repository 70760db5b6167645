import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import * as vscode from 'vscode';
import { PeerShareNode, formatInvite, parseInvite } from '../../../src/core';
import { chunkBytes, chunksOfRecords } from '../../../src/core/cdc';
import type { PeerShareApi } from '../../../src/extension';
import { ROUTE_LABELS } from '../../../src/vscode/tree';
import { ROOT, startHeadlessPeer, tempDir, waitFor, type HeadlessPeer } from './helpers';

/**
 * Internet reach in the real extension host (issue 14), run by test/vscode/internet.mjs from an
 * unpacked .vsix, never from this checkout, so what loads is what ships:
 *   on:  the platform's .vsix. HyperDHT's native parts load from it in this process; sharing
 *        listens on the local DHT the runner started (and on nothing else); the invite carries
 *        dht=; the editor connects through the DHT to the real CLI sharing (its invite without LAN
 *        addresses), and the Peers view says so ("internet (HyperDHT)"), beside a LAN peer
 *        ("LAN"); a peer given the editor's invite without its LAN addresses pairs through the
 *        DHT and lists the workspace.
 *   off: the universal .vsix, which carries no hyperdht: sharing runs on the LAN, a peer lists the
 *        workspace, and the share says why internet reach is off (the runner then finds the
 *        warning in the workbench).
 * The runner takes its screenshots while this waits (the `ready` and `shot` files in the exchange folder).
 */
const run_ = promisify(execFile);

interface Testnet {
  bootstrap: { host: string; port: number }[];
  destroy(): Promise<void>;
}

export async function run(): Promise<void> {
  const mode = process.env.PEERSHARE_INTERNET_MODE;
  const exchange = process.env.PEERSHARE_INTERNET_DIR!;
  const ext = vscode.extensions.getExtension<PeerShareApi>('peershare.peershare');
  assert.ok(ext, 'the extension is loaded');
  assert.equal(ext.extensionPath, process.env.PEERSHARE_TEST_EXTENSION_PATH, 'the extension runs from the unpacked .vsix');
  // The local DHT, in this process, from this checkout's hyperdht: three nodes on 127.0.0.1.
  const createTestnet = createRequire(path.join(ROOT, 'package.json'))('hyperdht/testnet') as (size: number, options: { host: string }) => Promise<Testnet>;
  const testnet = await createTestnet(3, { host: '127.0.0.1' });
  const bootstrap = testnet.bootstrap.map((node) => `${node.host}:${node.port}`);
  const api = await ext.activate();
  await chunkHelperRuns(ext.extensionPath);
  const started: HeadlessPeer[] = [];
  try {
    await config().update('internet.bootstrap', bootstrap, vscode.ConfigurationTarget.Global);
    if (mode === 'on') await turnOnWhileSharing(api);
    else {
      api.sharing.internetPrompt = async () => true;
      await config().update('internet.enabled', true, vscode.ConfigurationTarget.Global);
      await vscode.commands.executeCommand('peershare.startSharing');
    }
    assert.ok(api.sharing.isSharing);
    // Asked once: later starts do not ask again.
    api.sharing.internetPrompt = async () => assert.fail('asked a second time');
    if (mode === 'on') await internetOn(api, ext.extensionPath, bootstrap, started);
    else await internetOff(api, bootstrap);
    await vscode.commands.executeCommand('workbench.view.extension.peershare');
    // The runner looks at the status bar, the view and the notifications now.
    await fs.writeFile(path.join(exchange, 'ready'), mode ?? '');
    await waitFor(() => fs.stat(path.join(exchange, 'shot')).then(() => true, () => false), 120_000);
  } finally {
    await Promise.all(started.map((p) => p.stop()));
    await vscode.commands.executeCommand('peershare.stopSharing');
    await testnet.destroy();
  }
}

const config = (): vscode.WorkspaceConfiguration => vscode.workspace.getConfiguration('peershare');

/**
 * Shares on the LAN, then turns internet reach on in the user settings, as a person would while
 * sharing: the first time asks (the test answers for the person). Cancel turns the setting back
 * off and the share runs on untouched; Turn On restarts it with the DHT, on the same port.
 */
async function turnOnWhileSharing(api: PeerShareApi): Promise<void> {
  const { sharing } = api;
  let asked = 0;
  await vscode.commands.executeCommand('peershare.startSharing');
  const port = sharing.port;
  assert.equal(sharing.internetKey, undefined, 'off until turned on');
  sharing.internetPrompt = async () => (asked++, false);
  await config().update('internet.enabled', true, vscode.ConfigurationTarget.Global);
  await waitFor(() => asked === 1 && config().get('internet.enabled') === false);
  assert.ok(sharing.isSharing && sharing.port === port && sharing.internetKey === undefined, 'Cancel left the share as it was');
  console.log('internet: Cancel turned the setting back off; the share ran on');
  sharing.internetPrompt = async () => (asked++, true);
  await config().update('internet.enabled', true, vscode.ConfigurationTarget.Global);
  await waitFor(() => sharing.internetKey, 30_000);
  assert.equal(asked, 2);
  assert.equal(config().get('internet.enabled'), true);
  assert.equal(sharing.port, port, 'the restart kept the port');
  console.log('internet: Turn On restarted the share with the DHT');
}

/** The real CLI, run from this process (Node of the extension host) with this checkout's build. */
async function cli(args: string[]): Promise<string> {
  const { stdout } = await run_(process.execPath, [path.join(ROOT, 'dist', 'cli.js'), ...args], {
    env: { ...process.env, ELECTRON_RUN_AS_NODE: '1', PEERSHARE_DHT_BOOTSTRAP: '' },
    timeout: 60_000,
  });
  return stdout;
}

/** The invite without its LAN addresses: only the DHT can reach the peer. */
function internetOnly(invite: string): string {
  const parsed = parseInvite(invite);
  assert.ok(parsed.dht, `the invite carries dht=: ${invite}`);
  return formatInvite({ ...parsed, addresses: [] });
}

/**
 * The helper thread that cuts half of a large file into chunks (src/core/cdc-helper.ts) runs from
 * the .vsix's dist/ in this extension host, with whichever BLAKE3 loads there, and cuts as the
 * one-pass cut does.
 */
async function chunkHelperRuns(extensionPath: string): Promise<void> {
  const file = path.join(tempDir(), 'cut-me.bin');
  const data = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0, x = 7; i < data.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = x >>> 24;
  }
  await fs.writeFile(file, data);
  const handle = await fs.open(file, 'r');
  const worker = new Worker(path.join(extensionPath, 'dist', 'cdc-worker.js'));
  try {
    const from = 1024 * 1024;
    const records = await new Promise<Uint8Array>((resolve, reject) => {
      worker.once('message', (message: { records?: Uint8Array }) => (message.records ? resolve(message.records) : reject(new Error('the helper thread could not cut'))));
      worker.once('error', reject);
      worker.postMessage({ fd: handle.fd, size: data.length, from, maxChunks: 1000 });
    });
    const theirs = chunksOfRecords(records, from).map((c) => `${c.offset}:${c.length}:${c.hash.toString('hex')}`);
    const ours = chunkBytes(data.subarray(from)).map((c) => `${c.offset + from}:${c.length}:${c.hash.toString('hex')}`);
    assert.deepEqual(theirs, ours);
    console.log(`internet: the chunk helper thread ran from the .vsix in the extension host (${theirs.length} chunks, as one pass cuts them)`);
  } finally {
    await worker.terminate();
    await handle.close();
  }
}

async function internetOn(api: PeerShareApi, extensionPath: string, bootstrap: string[], started: HeadlessPeer[]): Promise<void> {
  const { sharing, peers, tree } = api;
  assert.ok(sharing.internetKey, `listening on the DHT (${sharing.internetError?.message ?? 'no error'})`);
  const node = await peers.node();
  const dht = await node.internet();
  assert.ok(dht);
  assert.deepEqual(dht.bootstrap, bootstrap, 'the extension was given only the local bootstrap node');
  assert.deepEqual(dht.bootstrapNodes, bootstrap, 'and HyperDHT holds only that one');
  assert.ok(dht.knownNodes.length > 0 && dht.knownNodes.every((n) => n.startsWith('127.0.0.1:')), `it met only local nodes: ${dht.knownNodes.join(', ')}`);

  // HyperDHT's native parts were loaded from the .vsix, in this very process (the extension host).
  // No look-ups of socket addresses' names (Node 22+): the report would wait on DNS for each.
  (process.report as { excludeNetwork?: boolean }).excludeNetwork = true;
  const loaded = (process.report.getReport() as { sharedObjects: string[] }).sharedObjects;
  for (const name of ['sodium-native', 'udx-native']) {
    const shipped = path.join(extensionPath, 'dist', 'node_modules', name, 'prebuilds', `${process.platform}-${process.arch}`, `${name}.node`);
    assert.ok(loaded.includes(shipped), `${shipped} is loaded in the extension host`);
  }
  console.log(`internet: hyperdht's natives loaded from the .vsix in the extension host (Node ${process.versions.node})`);

  // The editor connects through the DHT to a CLI sharer (its invite without LAN addresses); the view says how.
  const dana = await startHeadlessPeer('dana', { 'notes.md': 'from dana\n' }, ['--internet', '--dht-bootstrap', bootstrap.join(',')]);
  started.push(dana);
  await vscode.commands.executeCommand('peershare.connect', internetOnly(dana.invite));
  const lan = await startHeadlessPeer('lena', { 'lan.md': 'from lena\n' });
  started.push(lan);
  await vscode.commands.executeCommand('peershare.connect', lan.invite);
  const row = async (id: string) => {
    const node = (await tree.getChildren()).find((n) => n.kind === 'peer' && n.peer.id === id);
    assert.ok(node, `${id} is in the view`);
    return { node, item: tree.getTreeItem(node) };
  };
  const viaDht = await row(dana.peerId);
  assert.equal(viaDht.item.description, `online · ${ROUTE_LABELS.dht}`);
  assert.match((viaDht.item.tooltip as vscode.MarkdownString).value, /Connected: through the internet \(HyperDHT\)/);
  const files = await tree.getChildren(viaDht.node);
  assert.deepEqual(files.map((n) => (n.kind === 'entry' ? n.remotePath : n.kind)), ['dana']);
  const viaLan = await row(lan.peerId);
  assert.equal(viaLan.item.description, `online · ${ROUTE_LABELS.direct}`);
  console.log(`internet: the view says "${viaDht.item.description}" and "${viaLan.item.description}"`);

  // The other way: a peer with the editor's invite minus its LAN addresses pairs through the DHT
  // and lists the workspace. It is the core the CLI runs, here in this process: a CLI process
  // dialing on this loopback DHT fails (HyperDHT: two ephemeral nodes in processes other than the
  // bootstrap nodes' lose the stream after it opens; reported), so the dialer lives beside the testnet.
  const invite = await vscode.commands.executeCommand<string>('peershare.copyInvite');
  assert.match(invite ?? '', /[?&]dht=/);
  const reader = await PeerShareNode.open({ home: tempDir(), name: () => 'Reader', internet: () => ({ bootstrap }) });
  try {
    const conn = await reader.connect(internetOnly(invite!));
    assert.equal(conn.route, 'dht', 'it came through the DHT');
    assert.equal(conn.peerId, (await peers.load()).identity.peerId);
    const names = (await conn.list(vscode.workspace.workspaceFolders![0].name)).map((e) => e.name);
    assert.ok(names.includes('README.md') && names.includes('src'), names.join(', '));
    assert.equal(reader.trust.get(conn.peerId)?.reachedVia, 'dht', 'and the reader remembers that route');
    conn.close();
  } finally {
    await reader.close();
  }
  console.log('internet: a peer with only the DHT key paired and listed the workspace');
}

async function internetOff(api: PeerShareApi, bootstrap: string[]): Promise<void> {
  const { sharing } = api;
  assert.equal(sharing.internetKey, undefined);
  assert.match(sharing.internetError?.message ?? '', /Internet reach is off: the HyperDHT library did not load .*Cannot find module 'hyperdht'/);
  const invite = await vscode.commands.executeCommand<string>('peershare.copyInvite');
  assert.doesNotMatch(invite ?? '', /[?&]dht=/);
  // The LAN still works: a CLI peer (with internet reach on, the DHT unused) lists the workspace.
  const folder = vscode.workspace.workspaceFolders![0].name;
  const listing = JSON.parse(await cli(['ls', invite!, folder, '--json', '--internet', '--dht-bootstrap', bootstrap.join(','), '--home', tempDir()]));
  assert.ok(listing.entries.some((e: { name: string }) => e.name === 'README.md'));
  console.log(`internet: off (${sharing.internetError!.message}); the LAN works`);
}
