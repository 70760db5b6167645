import assert from 'node:assert/strict';
import { X509Certificate, createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import {
  TokenBook,
  TrustStore,
  formatInvite,
  fingerprintFromPeerId,
  isPeerId,
  verificationCode,
  loadOrCreateIdentity,
  normalizePeerId,
  parseInvite,
  peerIdFromFingerprint,
} from '../../src/core';
import { tempDir } from '../helpers';

describe('identity', () => {
  it('refuses a home in a folder its group can write to, and one held by another user (found by the outside review)', async () => {
    // Group-writable by the user's own group (a group of one, as Debian and Ubuntu make): fine.
    const mine = path.join(tempDir(), 'my-group');
    await fs.mkdir(mine);
    await fs.chmod(mine, 0o775);
    assert.ok(await loadOrCreateIdentity(path.join(mine, 'home')));
    if (process.getuid?.() === 0) {
      // The same, with a group others are in (CI runs as root, which may hand the folder to one).
      const shared = path.join(tempDir(), 'group-shared');
      await fs.mkdir(shared);
      await fs.chown(shared, 0, 65534);
      await fs.chmod(shared, 0o775);
      await assert.rejects(loadOrCreateIdentity(path.join(shared, 'home')), (err: { code?: string; message?: string }) => err.code === 'UNSAFE_HOME' && /group-shared/.test(err.message ?? ''));
      await fs.chmod(shared, 0o1775); // sticky: others cannot rename our entries away
      assert.ok(await loadOrCreateIdentity(path.join(shared, 'home')));
      const foreign = path.join(tempDir(), 'foreign');
      await fs.mkdir(foreign);
      await fs.chown(foreign, 65534, 65534);
      await assert.rejects(loadOrCreateIdentity(path.join(foreign, 'home')), { code: 'UNSAFE_HOME' });
    }
  });

  it('uses a home given as a link as the folder it points to at start: re-pointing the link changes nothing', async () => {
    const real = path.join(tempDir(), 'real-home');
    const link = path.join(tempDir(), 'home-link');
    await fs.mkdir(real, { mode: 0o700 });
    await fs.symlink(real, link);
    const identity = await loadOrCreateIdentity(link);
    assert.equal(identity.home, await fs.realpath(real));
    const other = path.join(tempDir(), 'other-home');
    await fs.mkdir(other, { mode: 0o700 });
    await fs.rm(link);
    await fs.symlink(other, link);
    const attacker = (await loadOrCreateIdentity(tempDir())).peerId;
    await (await TrustStore.open(other)).addReader({ id: attacker, name: 'planted' });
    const store = await TrustStore.open(identity.home);
    assert.equal(store.allowsReader(attacker), false, 'the trust file of the re-pointed link is not ours');
    if (process.getuid?.() === 0) {
      const theirs = path.join(tempDir(), 'their-link');
      await fs.symlink(real, theirs);
      await fs.lchown(theirs, 65534, 65534);
      await assert.rejects(loadOrCreateIdentity(theirs), { code: 'UNSAFE_HOME' });
    }
  });

  it('creates a key readable by its owner alone and a certificate, once', async () => {
    const home = path.join(tempDir(), 'home');
    const first = await loadOrCreateIdentity(home);
    const keyMode = (await fs.stat(path.join(home, 'key.pem'))).mode & 0o777;
    assert.equal(keyMode, 0o600);
    const again = await loadOrCreateIdentity(home);
    assert.equal(again.peerId, first.peerId);
    assert.equal(again.certPem, first.certPem);
  });

  it('derives the peer ID from the SHA-256 of the certificate', async () => {
    const identity = await loadOrCreateIdentity(tempDir());
    const der = new X509Certificate(identity.certPem).raw;
    assert.equal(identity.peerId, peerIdFromFingerprint(createHash('sha256').update(der).digest()));
    assert.match(identity.peerId, /^([A-Z2-7]{4}-){12}[A-Z2-7]{4}$/);
  });

  it('gives two installations different IDs, even when both start at once', async () => {
    const home = tempDir();
    const [a, b] = await Promise.all([loadOrCreateIdentity(home), loadOrCreateIdentity(home)]);
    assert.equal(a.peerId, b.peerId, 'one home, one identity');
    const other = await loadOrCreateIdentity(tempDir());
    assert.notEqual(other.peerId, a.peerId);
  });

  it('tightens a loosened key file', async () => {
    const home = tempDir();
    await loadOrCreateIdentity(home);
    await fs.chmod(path.join(home, 'key.pem'), 0o644);
    await loadOrCreateIdentity(home);
    assert.equal((await fs.stat(path.join(home, 'key.pem'))).mode & 0o777, 0o600);
  });
});

describe('peer IDs', () => {
  it('accepts IDs typed in any case, with or without dashes', async () => {
    const { peerId } = await loadOrCreateIdentity(tempDir());
    assert.equal(normalizePeerId(peerId.toLowerCase().replace(/-/g, '')), peerId);
    assert.equal(normalizePeerId(peerId.replace(/-/g, ' ')), peerId);
    assert.equal(isPeerId('not-an-id'), false);
    assert.equal(isPeerId(peerId.slice(0, -1) + '1'), false, 'digit 1 is not in the alphabet');
  });
});

describe('verification codes', () => {
  it('turns a peer ID back into its fingerprint', async () => {
    const identity = await loadOrCreateIdentity(tempDir());
    assert.deepEqual(fingerprintFromPeerId(identity.peerId), identity.fingerprint);
    assert.deepEqual(fingerprintFromPeerId(identity.peerId.toLowerCase()), identity.fingerprint);
  });

  it('gives both sides the same six digits, and another pair other digits', async () => {
    const [a, b, c] = await Promise.all([tempDir(), tempDir(), tempDir()].map((h) => loadOrCreateIdentity(h)));
    const ab = verificationCode(a.fingerprint, b.fingerprint);
    assert.match(ab, /^\d{3} \d{3}$/);
    assert.equal(verificationCode(b.fingerprint, a.fingerprint), ab);
    // One in a million collide by chance; three different pairs all colliding would be a bug.
    const others = [verificationCode(a.fingerprint, c.fingerprint), verificationCode(b.fingerprint, c.fingerprint)];
    assert.ok(others.some((code) => code !== ab));
  });
});

describe('invites', () => {
  const id = 'AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGG-HHHH-IIII-JJJJ-KKKK-LLLL-MMMM';

  it('keeps addresses as parsed, never with the spaces and control characters they were sent with', () => {
    const text = `peershare://invite?v=1&id=${id.replace(/-/g, '')}&addr=%0D%0B%0B127.0.0.1%3A5000%0D%0A%E2%80%A8&addr=%20[::1]:6000%09`;
    assert.deepEqual(parseInvite(text).addresses, ['127.0.0.1:5000', '[::1]:6000']);
  });

  it('round-trips through its one-line form', () => {
    const text = formatInvite({ peerId: id, addresses: ['127.0.0.1:4000', '[::1]:4000'], token: 'abcdefghijklmnopqrstuvwx', name: 'Ann' });
    assert.doesNotMatch(text, /\s/);
    assert.deepEqual(parseInvite(text), { peerId: id, addresses: ['127.0.0.1:4000', '[::1]:4000'], token: 'abcdefghijklmnopqrstuvwx', name: 'Ann' });
  });

  it('accepts the same query in a vscode:// link', () => {
    const text = formatInvite({ peerId: id, addresses: ['10.0.0.2:9'], token: 'abcdefghijklmnopqrstuvwx' }).replace('peershare://invite', 'vscode://peershare.peershare/invite');
    assert.equal(parseInvite(text).peerId, id);
  });

  it('refuses malformed invites with INVALID_INVITE', () => {
    for (const bad of ['', 'hello', 'peershare://invite?v=1', `peershare://invite?id=${id}`, `peershare://invite?id=XYZ&addr=1.2.3.4:5`, `peershare://invite?id=${id}&addr=1.2.3.4:99999`, `peershare://invite?id=${id}&addr=1.2.3.4:5&token=../..`]) {
      assert.throws(() => parseInvite(bad), { code: 'INVALID_INVITE' }, bad);
    }
  });
});

describe('TokenBook', () => {
  it('lets a single-use token in once', () => {
    const book = new TokenBook();
    const token = book.issue({ ttlMs: 60_000, uses: 1 });
    assert.equal(book.redeem(token), true);
    assert.equal(book.redeem(token), false);
  });

  it('refuses a token after it expires', () => {
    let now = 1000;
    const book = new TokenBook(() => now);
    const token = book.issue({ ttlMs: 500, uses: 5 });
    now = 1499;
    assert.equal(book.redeem(token), true);
    now = 1500;
    assert.equal(book.redeem(token), false);
  });

  it('refuses unknown and malformed tokens', () => {
    const book = new TokenBook();
    book.issue({ ttlMs: 60_000, uses: 1 });
    for (const bad of ['', 'nope', 42, null, undefined, 'x'.repeat(10_000)]) assert.equal(book.redeem(bad), false);
  });
});

describe('TrustStore', () => {
  it('persists peers and finds them by ID prefix or name', async () => {
    const home = tempDir();
    const store = await TrustStore.open(home);
    const { peerId } = await loadOrCreateIdentity(tempDir());
    await store.addSharer({ id: peerId, name: 'Bob', addresses: ['127.0.0.1:1'] });
    const reopened = await TrustStore.open(home);
    assert.equal(reopened.readsFrom(peerId), true);
    assert.equal(reopened.allowsReader(peerId), false);
    assert.equal(reopened.find(peerId.slice(0, 9))?.id, peerId);
    assert.equal(reopened.find('Bob')?.id, peerId);
    assert.equal(reopened.find('Alice'), undefined);
    assert.equal(await reopened.remove(peerId), true);
    assert.equal((await TrustStore.open(home)).knows(peerId), false);
  });
});
