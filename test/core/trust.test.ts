import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { loadOrCreateIdentity, TrustStore, TRUST_FILE } from '../../src/core';
import { tempDir } from '../helpers';

async function peerIds(n: number): Promise<string[]> {
  return Promise.all(Array.from({ length: n }, async () => (await loadOrCreateIdentity(tempDir())).peerId));
}

describe('the trust store', () => {
  it('keeps the two directions apart: a reader does not become a sharer, nor the reverse', async () => {
    const home = tempDir();
    const store = await TrustStore.open(home);
    const [reader, sharer] = await peerIds(2);
    await store.addReader({ id: reader, name: 'Reader' });
    await store.addSharer({ id: sharer, name: 'Sharer', addresses: ['127.0.0.1:1'] });
    assert.equal(store.allowsReader(reader), true);
    assert.equal(store.readsFrom(reader), false);
    assert.equal(store.allowsReader(sharer), false, 'using an invite never lets the inviter read us');
    assert.equal(store.readsFrom(sharer), true);
    await store.update(sharer, { name: 'Renamed', addresses: ['127.0.0.1:2'] });
    assert.equal(store.allowsReader(sharer), false, 'renaming or a new address never grants reading');
  });

  it('sees a change another process made at its next question, without being told', async () => {
    const home = tempDir();
    const server = await TrustStore.open(home);
    const admin = await TrustStore.open(home);
    const [id] = await peerIds(1);
    await admin.addReader({ id, name: 'Bob' });
    assert.equal(server.allowsReader(id), true);
    await admin.remove(id);
    assert.equal(server.allowsReader(id), false, 'the revoke is seen at once');
  });

  it('never writes a stale copy back: two stores pairing at once keep every pairing and every revoke', async () => {
    const home = tempDir();
    const a = await TrustStore.open(home);
    const b = await TrustStore.open(home);
    const ids = await peerIds(12);
    await a.addReader({ id: ids[0] });
    assert.equal(b.allowsReader(ids[0]), true);
    await b.remove(ids[0]);
    // Interleaved writers, as two `serve` processes with one home would be.
    await Promise.all(ids.slice(1).map((id, i) => (i % 2 ? a : b).addReader({ id, name: `peer ${i}` })));
    const fresh = await TrustStore.open(home);
    assert.deepEqual(fresh.list().map((p) => p.id).sort(), ids.slice(1).sort());
    assert.equal(fresh.allowsReader(ids[0]), false, 'the revoked peer was not written back');
    const leftovers = (await fs.readdir(home)).filter((n) => n !== TRUST_FILE);
    assert.deepEqual(leftovers, [], 'no lock or temporary file is left behind');
  });

  it('takes over a lock left by a process that died, and waits for a live one', async () => {
    const home = tempDir();
    const store = await TrustStore.open(home);
    const lock = path.join(home, `${TRUST_FILE}.lock`);
    await fs.writeFile(lock, '999999 dead\n');
    const old = new Date(Date.now() - 60_000);
    await fs.utimes(lock, old, old);
    const [id, other] = await peerIds(2);
    await store.addReader({ id });
    assert.equal(store.allowsReader(id), true);
    await fs.writeFile(lock, '1 alive\n');
    const waiting = store.addReader({ id: other });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(store.allowsReader(other), false, 'not written while another holds the lock');
    await fs.rm(lock);
    await waiting;
    assert.equal(store.allowsReader(other), true);
  });

  it('two writers taking over the same stale lock never undo each other (found by the outside review)', async () => {
    const [kept, revoked, added] = await peerIds(3);
    for (let trial = 0; trial < 20; trial++) {
      const home = tempDir();
      const a = await TrustStore.open(home);
      const b = await TrustStore.open(home);
      await a.addReader({ id: kept });
      await a.addReader({ id: revoked });
      const lock = path.join(home, `${TRUST_FILE}.lock`);
      await fs.writeFile(lock, '999999 dead\n');
      const old = new Date(Date.now() - 60_000);
      await fs.utimes(lock, old, old);
      await Promise.all([a.remove(revoked), b.addReader({ id: added })]);
      const fresh = await TrustStore.open(home);
      assert.deepEqual([fresh.allowsReader(kept), fresh.allowsReader(revoked), fresh.allowsReader(added)], [true, false, true], `trial ${trial}`);
    }
  });

  it('reads a version 1 file one way only: readers stay readers, sharers stay sharers', async () => {
    const home = tempDir();
    const [reader, sharer] = await peerIds(2);
    await fs.writeFile(
      path.join(home, TRUST_FILE),
      JSON.stringify({ version: 1, peers: [{ id: reader, name: 'R', addresses: [], addedAt: 'x' }, { id: sharer, name: 'S', addresses: ['10.0.0.2:47474'], addedAt: 'x' }] }),
    );
    const store = await TrustStore.open(home);
    assert.deepEqual([store.allowsReader(reader), store.readsFrom(reader)], [true, false]);
    assert.deepEqual([store.allowsReader(sharer), store.readsFrom(sharer)], [false, true]);
  });

  it('trusts nobody when the trust file was replaced by one others can write, or by a link, while it runs', async () => {
    const home = tempDir();
    const store = await TrustStore.open(home);
    const [id] = await peerIds(1);
    await store.addReader({ id });
    const file = path.join(home, TRUST_FILE);
    await fs.chmod(file, 0o666);
    assert.throws(() => store.allowsReader(id), { code: 'UNSAFE_HOME' });
    await fs.chmod(file, 0o600);
    assert.equal(store.allowsReader(id), true);
    const elsewhere = path.join(tempDir(), 'planted.json');
    await fs.copyFile(file, elsewhere);
    await fs.rm(file);
    await fs.symlink(elsewhere, file);
    assert.throws(() => store.allowsReader(id), { code: 'UNSAFE_HOME' });
  });

  it('trusts nobody when the file is damaged, and says which file', async () => {
    const home = tempDir();
    const store = await TrustStore.open(home);
    const [id] = await peerIds(1);
    await store.addReader({ id });
    await fs.writeFile(path.join(home, TRUST_FILE), '{"peers": [ broken');
    assert.throws(() => store.allowsReader(id), (err: { code?: string; message?: string }) => err.code === 'IO_ERROR' && /trusted-peers\.json/.test(err.message ?? ''));
    assert.throws(() => store.allowsReader(id), { code: 'IO_ERROR' }, 'still refusing on the next question');
  });
});
