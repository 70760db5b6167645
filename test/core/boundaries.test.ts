import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import { describe, it } from 'node:test';
import * as esbuild from 'esbuild';
import { PeerConnection, download, parseInvite, resolveLimits, type AuthenticatedStream } from '../../src/core';
import { makePeer, startSharer, tempDir, writeRandomFile } from '../helpers';
import { duplexPair } from './v2-duplex-pair';

const CORE = path.join(__dirname, '..', '..', 'src', 'core');

/** Every source file of the core, in subfolders too (src/core/v2/...), as paths relative to it. */
async function coreFiles(): Promise<string[]> {
  const entries = await fs.readdir(CORE, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => path.relative(CORE, path.join(e.parentPath, e.name)));
}

describe('src/core stays free of vscode', () => {
  it('no core file mentions the vscode module', async () => {
    for (const name of await coreFiles()) {
      const text = await fs.readFile(path.join(CORE, name), 'utf8');
      assert.doesNotMatch(text, /from\s+['"]vscode['"]|require\(\s*['"]vscode['"]\s*\)|import\(\s*['"]vscode['"]\s*\)/, name);
    }
  });

  it('the core bundles for plain Node with vscode unavailable (catches indirect imports too)', async () => {
    const result = await esbuild.build({
      entryPoints: [path.join(CORE, 'index.ts')],
      bundle: true,
      platform: 'node',
      write: false,
      logLevel: 'silent',
      metafile: true,
    });
    const inputs = Object.keys(result.metafile!.inputs);
    assert.ok(inputs.some((i) => i.endsWith('src/core/server.ts')));
    assert.ok(!inputs.some((i) => /(^|\/)src\/(?!core\/)/.test(i)), `core pulls in files outside src/core: ${inputs.filter((i) => /src\/(?!core)/.test(i)).join(', ')}`);
  });
});

describe('TLS stays in its transport (issue 11: transport injected)', () => {
  // The protocol runs over any AuthenticatedStream (transport.ts); only the TLS transport may
  // open, accept or inspect a TLS socket, and tls-options.ts names TLS's option types.
  const TLS_TRANSPORT = 'transport-tls.ts';
  const TLS_SETTINGS = 'tls-options.ts';
  const TLS_MODULE = /['"](?:node:)?tls['"]/;
  const TLS_CALL = /\btls\s*\.\s*(?:connect|createServer|createSecureContext|TLSSocket|Server)\b/;

  it('only the TLS transport imports node:tls or calls tls.connect / tls.createServer', async () => {
    const files = await coreFiles();
    assert.ok(files.includes(TLS_TRANSPORT) && files.includes('server.ts') && files.includes('client.ts'));
    for (const name of files) {
      if (name === TLS_TRANSPORT) continue;
      const text = await fs.readFile(path.join(CORE, name), 'utf8');
      if (name === TLS_SETTINGS) {
        assert.doesNotMatch(text.replace(/import type \* as tls from 'node:tls';/, ''), TLS_MODULE, `${name} may import TLS's types only`);
      } else {
        assert.doesNotMatch(text, TLS_MODULE, `${name} imports node:tls: go through the transport (transport.ts)`);
      }
      assert.doesNotMatch(text, TLS_CALL, `${name} uses TLS directly: go through the transport (transport.ts)`);
    }
  });

  it('the TLS transport is the one that calls tls.connect and tls.createServer', async () => {
    // So the check above cannot pass because TLS moved somewhere it does not look.
    const text = await fs.readFile(path.join(CORE, TLS_TRANSPORT), 'utf8');
    assert.match(text, /\btls\.connect\(/);
    assert.match(text, /\btls\.createServer\(/);
  });

  it('the protocol code needs nothing from TLS: pairing, listing and a download over an in-memory pair', async () => {
    const folder = tempDir();
    const bytes = await writeRandomFile(path.join(folder, 'hello.bin'), 3 * 1024 * 1024);
    const sharer = await startSharer([folder]);
    const client = await makePeer();
    const [dialerEnd, acceptorEnd] = duplexPair();
    const proved = (stream: Duplex, peerId: string, side: 'dialer' | 'acceptor'): AuthenticatedStream => ({ stream, peerId, address: 'memory:1', host: 'memory', side });
    try {
      sharer.server.acceptStream(proved(acceptorEnd, client.identity.peerId, 'acceptor'));
      const conn = new PeerConnection(proved(dialerEnd, sharer.identity.peerId, 'dialer'), resolveLimits());
      await conn.hello({ expectedPeerId: sharer.identity.peerId, name: 'client', token: parseInvite(sharer.invite).token });
      assert.equal(conn.welcome.paired, true);
      assert.ok(sharer.trust.allowsReader(client.identity.peerId), 'the invite paired the peer the stream proved');
      const root = sharer.share.roots[0].name;
      assert.deepEqual((await conn.list(root)).map((e) => e.name), ['hello.bin']);
      const dest = tempDir();
      await download(conn, `${root}/hello.bin`, dest);
      assert.ok((await fs.readFile(path.join(dest, 'hello.bin'))).equals(bytes));
      assert.equal(sharer.server.stats.connectionsAccepted, 0, 'no TLS connection was made');
      conn.close();
    } finally {
      await sharer.server.close();
    }
  });
});

describe('HyperDHT stays in its transport (issue 14)', () => {
  // Native code that may not load: one module loads it, on first use, and the rest of the core
  // sees an AuthenticatedStream. Type-only imports of that module are fine (they vanish at build).
  const DHT_TRANSPORT = 'transport-dht.ts';
  const DHT_MODULE = /['"](?:hyperdht|sodium-native|sodium-universal|udx-native|@hyperswarm\/[^'"]*)(?:\/[^'"]*)?['"]/;

  it('only the DHT transport names the hyperdht package or its native parts', async () => {
    const files = await coreFiles();
    assert.ok(files.includes(DHT_TRANSPORT));
    for (const name of files) {
      if (name === DHT_TRANSPORT) continue;
      const text = await fs.readFile(path.join(CORE, name), 'utf8');
      assert.doesNotMatch(text, DHT_MODULE, `${name} names the DHT library: go through transport-dht.ts`);
    }
  });

  it('the DHT transport loads it lazily, inside a function, never at import', async () => {
    const text = await fs.readFile(path.join(CORE, DHT_TRANSPORT), 'utf8');
    assert.doesNotMatch(text, /^import[^;]*['"]hyperdht['"]/m, 'a static import would load native code with the core');
    assert.match(text, /require\(moduleId\)/);
    // And the bundles leave it to run time, as the BLAKE3 binding.
    const esbuildConfig = await fs.readFile(path.join(CORE, '..', '..', 'esbuild.js'), 'utf8');
    assert.match(esbuildConfig, /external:\s*\[[^\]]*'hyperdht'/);
  });
});
