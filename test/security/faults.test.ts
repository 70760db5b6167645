import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, appendFileSync, openSync, writeSync, closeSync, truncateSync, renameSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { BlockCache, RACY_TIMESTAMP_MS, blockSizeFor, connectToPeer, download, downloadFile, downloadFolder, type PeerConnection } from '../../src/core';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import { connectWithInvite, makePeer, rejectsWithCode, startSharer, tempDir, writeRandomFile, type Sharer } from '../helpers';
import { waitFor } from '../hostile';

/**
 * Faults on the way: the sharer killed, bytes corrupted in flight or on the sharer's disk, a file
 * changed while it is sent, the receiver's disk filling up, a network that stalls. Each must end
 * in a coded error or a consistent file, never a hang, and never leave a partial or corrupt file
 * under a final name.
 */

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Hidden partial files a download keeps for resuming. */
async function partialsIn(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((n) => n.endsWith('.peershare-part'));
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

interface Proxy {
  address: string;
  close(): void;
}

/**
 * A TCP relay between a client and a server that lets a test tamper with what the server sends:
 * `tamper` sees each chunk with its offset in the stream and returns what to forward, or
 * undefined to forward nothing (and stop reading from the server: a stalled network).
 */
async function startProxy(target: string, tamper: (chunk: Buffer, offset: number) => Buffer | undefined): Promise<Proxy> {
  const [host, port] = target.split(':');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    sockets.add(client).add(upstream);
    let offset = 0;
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      const out = tamper(chunk, offset);
      offset += chunk.length;
      if (out === undefined) upstream.pause();
      else client.write(out);
    });
    for (const s of [client, upstream]) s.on('error', () => undefined);
    client.on('close', () => upstream.destroy());
    upstream.on('end', () => client.end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

describe('faults', () => {
  before(() => {
    if (!existsSync(CLI)) assert.equal(spawnSync(process.execPath, [path.join(ROOT, 'esbuild.js')], { cwd: ROOT, stdio: 'inherit' }).status, 0);
  });

  it('the sharer killed mid-transfer: the download fails cleanly, and resumes from where it stopped once the sharer is back', async () => {
    const ws = path.join(tempDir(), 'ws');
    const data = await writeRandomFile(path.join(ws, 'big.bin'), 128 * MiB);
    const home = tempDir();
    const port = await freePort();
    const serve = async (): Promise<{ proc: ChildProcess; invite: string; peerId: string }> => {
      const proc = spawn(process.execPath, [CLI, 'serve', ws, '--json', '--home', home, '--port', String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
      const line = await new Promise<string>((resolve, reject) => {
        readline.createInterface({ input: proc.stdout! }).once('line', resolve);
        proc.once('exit', (code) => reject(new Error(`serve exited with ${code}`)));
      });
      const parsed = JSON.parse(line) as { invite: string; peerId: string };
      return { proc, ...parsed };
    };
    const first = await serve();
    const { conn, client } = await connectWithInvite(first.invite);
    const dest = tempDir();
    const killed = new Promise<void>((r) => first.proc.once('exit', () => r()));
    let killedAt = 0;
    await rejectsWithCode(
      downloadFile(conn, 'ws/big.bin', path.join(dest, 'big.bin'), {
        onProgress: ({ bytes }) => {
          if (!killedAt && bytes > 32 * MiB) {
            killedAt = bytes;
            first.proc.kill('SIGKILL');
          }
        },
      }),
      'CONNECTION_CLOSED',
    );
    await killed;
    assert.ok(killedAt > 0, 'killed mid-transfer');
    assert.equal(existsSync(path.join(dest, 'big.bin')), false, 'nothing under the final name');
    assert.equal((await partialsIn(dest)).length, 1, 'the verified part is kept, hidden, for resuming');

    const second = await serve();
    try {
      assert.equal(second.peerId, first.peerId, 'the same sharer, by its certificate');
      const again = await connectToPeer({ identity: client.identity, trust: client.trust, addresses: [`127.0.0.1:${port}`], expectedPeerId: first.peerId, name: 'client' });
      const result = await downloadFile(again, 'ws/big.bin', path.join(dest, 'big.bin'));
      again.close();
      assert.ok(result.resumedBytes >= 16 * MiB, `resumed from ${result.resumedBytes} bytes`);
      assert.equal(result.resumedBytes + result.bytes, data.length);
      assert.equal(sha(await fs.readFile(path.join(dest, 'big.bin'))), sha(data), 'verified end to end');
      assert.deepEqual(await partialsIn(dest), []);
    } finally {
      second.proc.kill('SIGTERM');
      await new Promise((r) => second.proc.once('exit', r));
    }
  });

  describe('with a sharer in this process', () => {
    let ws: string;
    let data: Buffer;
    let sharer: Sharer;
    let conn: PeerConnection;
    let clientPeer: Awaited<ReturnType<typeof makePeer>>;

    before(async () => {
      ws = path.join(tempDir(), 'ws');
      data = await writeRandomFile(path.join(ws, 'big.bin'), 32 * MiB);
      sharer = await startSharer([ws], { limits: { stallTimeoutMs: 1000 } });
      ({ conn, client: clientPeer } = await connectWithInvite(sharer.invite));
    });
    after(async () => {
      conn.close();
      await sharer.server.close();
    });

    const viaProxy = async (proxy: Proxy): Promise<PeerConnection> =>
      connectToPeer({ identity: clientPeer.identity, trust: clientPeer.trust, addresses: [proxy.address], expectedPeerId: sharer.identity.peerId, name: 'client', limits: { stallTimeoutMs: 1000 } });

    it('a byte flipped in flight: the connection fails (TLS authenticates every record), nothing under the final name, a clean retry succeeds', async () => {
      const proxy = await startProxy(sharer.address, (chunk, offset) => {
        const at = 4 * MiB - offset;
        if (at >= 0 && at < chunk.length) chunk[at] ^= 0x01;
        return chunk;
      });
      const dest = tempDir();
      try {
        const tampered = await viaProxy(proxy);
        await assert.rejects(downloadFile(tampered, 'ws/big.bin', path.join(dest, 'big.bin')), (err: { code?: string }) => ['CONNECTION_CLOSED', 'PROTOCOL_ERROR'].includes(err.code ?? ''));
      } finally {
        proxy.close();
      }
      assert.equal(existsSync(path.join(dest, 'big.bin')), false);
      await downloadFile(conn, 'ws/big.bin', path.join(dest, 'big.bin'));
      assert.equal(sha(await fs.readFile(path.join(dest, 'big.bin'))), sha(data));
    });

    it('a network that stalls mid-file: TIMEOUT within the stall limit, not a hang; the sharer lets go too', async () => {
      const proxy = await startProxy(sharer.address, (chunk, offset) => (offset > 2 * MiB ? undefined : chunk));
      const dest = tempDir();
      const started = Date.now();
      try {
        const stalled = await viaProxy(proxy);
        await rejectsWithCode(downloadFile(stalled, 'ws/big.bin', path.join(dest, 'big.bin')), 'TIMEOUT');
      } finally {
        proxy.close();
      }
      assert.ok(Date.now() - started < 10_000, `gave up after ${Date.now() - started} ms`);
      assert.equal(existsSync(path.join(dest, 'big.bin')), false);
      await waitFor(() => sharer.server.connectedPeers().length === 1, 5000);
    });

    it('bytes that rot on the sharer’s disk after it hashed them (same size, times and ctime): the bad block is caught and never kept; the sharer hashes again once (spec 7.2) and the file lands as its disk now holds it', async () => {
      // A block list cached for this version of the file, then the bytes change underneath without
      // any write the kernel would record: simulated by putting the old list back for the new version.
      const file = path.join(ws, 'rot.bin');
      const original = await writeRandomFile(file, 2 * MiB);
      const dest = tempDir();
      const own = (await connectWithInvite(sharer.invite, clientPeer)).conn;
      await downloadFile(own, 'ws/rot.bin', path.join(dest, 'first.bin'));
      const rotten = Buffer.from(original);
      rotten[MiB] ^= 0x10;
      writeFileSync(file, rotten);
      const cache = await BlockCache.open(sharer.home, sharer.server.limits);
      const stale = manifestOfBytes(original, blockSizeFor(original.length));
      // Stamped past the racy window, so the sharer takes it as this version's list.
      assert.equal(await cache.put(await fs.stat(file, { bigint: true }), stale, Date.now() + RACY_TIMESTAMP_MS + 1000), true);
      const sentBefore = sharer.server.stats.fileBytesSent;
      const result = await downloadFile(own, 'ws/rot.bin', path.join(dest, 'second.bin'));
      assert.deepEqual(await fs.readFile(result.target), rotten, 'the bytes the sharer holds now, each block verified against its fresh list');
      assert.ok(sharer.server.stats.fileBytesSent - sentBefore < 2 * original.length, 'only the changed blocks are fetched again');
      assert.equal(own.closed, false, 'an honest sharer whose disk changed is not hung up on');
      assert.deepEqual((await fs.readdir(dest)).sort(), ['first.bin', 'second.bin']);
      own.close();
    });

    const changes: [string, (file: string) => void, 'old' | 'new' | 'either'][] = [
      ['overwritten in place (same size)', (file) => {
        const fd = openSync(file, 'r+');
        writeSync(fd, Buffer.alloc(MiB, 0xee), 0, MiB, 0);
        closeSync(fd);
      }, 'new'],
      ['grown', (file) => appendFileSync(file, Buffer.alloc(MiB, 0xaa)), 'new'],
      ['shrunk', (file) => truncateSync(file, 8 * MiB), 'new'],
      ['replaced by rename, as editors save', (file) => {
        writeFileSync(`${file}.tmp`, Buffer.alloc(3 * MiB, 0x55));
        renameSync(`${file}.tmp`, file);
      }, 'either'],
    ];
    for (const [how, change, expected] of changes) {
      it(`a file ${how} while it is sent: caught or served consistently, never a mix`, async () => {
        const file = path.join(ws, 'changing.bin');
        const old = await writeRandomFile(file, 24 * MiB);
        const dest = tempDir();
        let changed = false;
        let after: Buffer | undefined;
        await downloadFile(conn, 'ws/changing.bin', path.join(dest, 'changing.bin'), {
          onProgress: ({ bytes }) => {
            if (!changed && bytes > 2 * MiB) {
              changed = true;
              change(file);
              after = require('node:fs').readFileSync(file) as Buffer;
            }
          },
        });
        assert.ok(changed);
        const got = sha(await fs.readFile(path.join(dest, 'changing.bin')));
        const outcome = got === sha(old) ? 'old' : got === sha(after!) ? 'new' : 'a mix';
        assert.ok(expected === 'either' ? outcome !== 'a mix' : outcome === expected, `got ${outcome}`);
        assert.deepEqual(await partialsIn(dest), []);
      });
    }

    it('a file changed while its folder is sent: that file is reported skipped and never appears; the rest arrive', async () => {
      const folder = path.join(ws, 'changing-folder');
      await writeRandomFile(path.join(folder, 'a.txt'), 1000);
      const big = path.join(folder, 'b.bin');
      await writeRandomFile(big, 24 * MiB);
      await writeRandomFile(path.join(folder, 'c.txt'), 1000);
      const dest = tempDir();
      let changed = false;
      const result = await downloadFolder(conn, 'ws/changing-folder', path.join(dest, 'changing-folder'), {
        onProgress: ({ bytes }) => {
          if (!changed && bytes > 4 * MiB) {
            changed = true;
            appendFileSync(big, 'more');
          }
        },
      });
      assert.deepEqual(result.skippedByPeer.map((s) => [s.path, s.code]), [['b.bin', 'FILE_CHANGED']]);
      assert.deepEqual((await fs.readdir(path.join(dest, 'changing-folder'))).sort(), ['a.txt', 'c.txt']);
    });
  });

  describe('the receiver’s disk fills up', () => {
    let mount: string;
    let mounted = false;
    let sharer: Sharer;
    // A small tmpfs stands in for a full disk (needs root, as in CI, or passwordless sudo).
    const asRoot = (args: string[]): void => {
      const command = process.getuid?.() === 0 ? args : ['sudo', '-n', ...args];
      execFileSync(command[0], command.slice(1), { stdio: 'pipe' });
    };

    before(async () => {
      mount = tempDir('peershare-full-');
      try {
        asRoot(['mount', '-t', 'tmpfs', '-o', 'size=8m,mode=1777', 'tmpfs', mount]);
        mounted = true;
      } catch (err) {
        throw new Error(`This test mounts an 8 MiB tmpfs to fill up, which needs root or passwordless sudo: ${String(err)}`);
      }
      const ws = path.join(tempDir(), 'ws');
      await writeRandomFile(path.join(ws, 'big.bin'), 32 * MiB);
      for (let i = 0; i < 12; i++) await writeRandomFile(path.join(ws, 'many-large', `f${String(i).padStart(2, '0')}.bin`), MiB);
      for (let i = 0; i < 200; i++) await writeRandomFile(path.join(ws, 'many-small', `f${String(i).padStart(3, '0')}.bin`), 64 * 1024);
      sharer = await startSharer([ws]);
    });
    after(async () => {
      await sharer?.server.close();
      if (mounted) asRoot(['umount', '-l', mount]);
    });

    const workspace = async (): Promise<string> => {
      const dir = await fs.mkdtemp(path.join(mount, 'ws-'));
      await fs.writeFile(path.join(dir, 'keep.txt'), 'my work\n');
      return dir;
    };
    const clean = async (dir: string): Promise<void> => fs.rm(dir, { recursive: true, force: true });

    it('one large file: IO_ERROR "The disk is full", the partial file removed, the workspace untouched', async () => {
      const dir = await workspace();
      // Each test on its own connection: the client hangs up after a failed download.
      const { conn } = await connectWithInvite(sharer.invite);
      await assert.rejects(download(conn, 'ws/big.bin', dir), (err: { code?: string; message: string }) => err.code === 'IO_ERROR' && /disk is full/i.test(err.message));
      assert.deepEqual((await fs.readdir(dir)).sort(), ['keep.txt']);
      assert.equal(await fs.readFile(path.join(dir, 'keep.txt'), 'utf8'), 'my work\n');
      await clean(dir);
    });

    for (const folder of ['many-large', 'many-small']) {
      it(`a folder of ${folder.replace('many-', '')} files: IO_ERROR; what landed is whole and verified, nothing partial`, async () => {
        const dir = await workspace();
        const { conn } = await connectWithInvite(sharer.invite);
        await assert.rejects(download(conn, `ws/${folder}`, dir), (err: { code?: string }) => err.code === 'IO_ERROR');
        assert.deepEqual((await fs.readdir(dir)).sort(), ['keep.txt', folder]);
        const landed = await fs.readdir(path.join(dir, folder));
        assert.ok(landed.length > 0, 'some files fit');
        for (const name of landed) {
          assert.ok(!name.endsWith('.peershare-part'), `left behind ${name}`);
          const original = await fs.readFile(path.join(sharer.share.roots[0].realPath, folder, name));
          assert.equal(sha(await fs.readFile(path.join(dir, folder, name))), sha(original), `${name} is whole`);
        }
        await clean(dir);
      });
    }
  });
});
