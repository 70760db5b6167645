import { X509Certificate, createPrivateKey } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PeerShareError } from './errors';
import { peerIdOfCert, fingerprintOf } from './peer-id';

export interface Identity {
  /** Folder holding the key, certificate and trusted peers. */
  home: string;
  keyPem: string;
  certPem: string;
  certDer: Buffer;
  fingerprint: Buffer;
  peerId: string;
}

export const KEY_FILE = 'key.pem';
export const CERT_FILE = 'cert.pem';

/** `--home` wins, then PEERSHARE_HOME, then ~/.peershare. */
export function resolveHome(explicit?: string): string {
  const chosen = explicit ?? process.env.PEERSHARE_HOME;
  return path.resolve(chosen && chosen.length > 0 ? chosen : path.join(os.homedir(), '.peershare'));
}

/** Files in the home folder whose contents decide who we are and whom we trust. */
const GUARDED_FILES = [KEY_FILE, CERT_FILE, 'trusted-peers.json'];

/**
 * Refuses a home folder that someone else could write to, as OpenSSH's StrictModes does: whoever
 * can write there can plant a trust file that lets them in, or swap our key. The folder and its
 * files must belong to us (or root) and not be writable by group or others; each folder above it
 * must belong to us or root and not be writable by group or others either, unless it is sticky
 * (like /tmp), where others cannot rename our entries away. A home given as a symbolic link is
 * checked, and then used, as the folder it points to now: re-pointing the link later changes
 * nothing for a running process. Returns that real path.
 */
export async function checkHomeIsPrivate(home: string): Promise<string> {
  if (process.platform === 'win32' || typeof process.getuid !== 'function') return home;
  const uid = process.getuid();
  const refuse = (what: string, why: string, fix: string): never => {
    throw new PeerShareError('UNSAFE_HOME', `PeerShare will not use ${what}: ${why}. ${fix}`);
  };
  const ours = (owner: number): boolean => owner === uid || owner === 0;
  const link = await fs.lstat(home).catch(() => undefined);
  if (link?.isSymbolicLink() && !ours(link.uid)) refuse(home, `it is a link that belongs to another user (uid ${link.uid}), who could point it elsewhere`, 'Choose a folder of your own with --home.');
  const real = link ? await fs.realpath(home) : home;
  for (let dir = path.dirname(real); ; dir = path.dirname(dir)) {
    const dst = await fs.stat(dir).catch(() => undefined);
    // A group of one (Debian and Ubuntu give each user a group of their own, and umask 002) may write.
    const othersMayWrite = dst && ((dst.mode & 0o002) !== 0 || ((dst.mode & 0o020) !== 0 && !(await isPrivateGroup(dst.gid))));
    if (dst && (!ours(dst.uid) || othersMayWrite) && (dst.mode & 0o1000) === 0) {
      const why = ours(dst.uid) ? `others can write to ${dir}, which holds it, and could replace it` : `${dir}, which holds it, belongs to another user (uid ${dst.uid}), who could replace it`;
      refuse(home, why, ours(dst.uid) ? `Run: chmod go-w "${dir}", or choose another --home.` : 'Choose another --home.');
    }
    if (path.dirname(dir) === dir) break;
  }
  const st = await fs.stat(real).catch(() => undefined);
  if (!st) return real; // made on first run, private from the start
  if (!st.isDirectory()) refuse(home, 'it is not a folder', 'Choose another --home.');
  if (!ours(st.uid)) refuse(home, `it belongs to another user (uid ${st.uid})`, 'Choose a folder of your own with --home.');
  if ((st.mode & 0o022) !== 0) refuse(home, `others can write to it (mode ${(st.mode & 0o777).toString(8)})`, `Run: chmod go-w "${real}"`);
  for (const name of GUARDED_FILES) {
    const file = path.join(real, name);
    const fst = await fs.lstat(file).catch(() => undefined);
    if (fst) checkGuardedFile(file, fst, uid);
  }
  return real;
}

/**
 * Is `gid` a group of the current user alone: its primary group, with no other member listed in
 * /etc/group and no other account in /etc/passwd having it as its own? Unknown means no.
 */
async function isPrivateGroup(gid: number): Promise<boolean> {
  if (typeof process.getgid !== 'function' || gid !== process.getgid()) return false;
  const me = os.userInfo().username;
  try {
    const [groups, users] = await Promise.all([fs.readFile('/etc/group', 'utf8'), fs.readFile('/etc/passwd', 'utf8')]);
    const group = groups.split('\n').map((l) => l.split(':')).find((f) => Number(f[2]) === gid);
    if (!group) return false;
    const members = (group[3] ?? '').split(',').filter((m) => m !== '' && m !== me);
    const sharers = users.split('\n').map((l) => l.split(':')).filter((f) => f.length > 3 && Number(f[3]) === gid && f[0] !== me);
    return members.length === 0 && sharers.length === 0;
  } catch {
    return false;
  }
}

/** A key, certificate or trust file must be a regular file of ours (or root's) that nobody else can write. */
export function checkGuardedFile(file: string, st: { uid: number | bigint; mode: number | bigint; isFile(): boolean }, uid = process.getuid?.() ?? 0): void {
  const refuse = (why: string, fix: string): never => {
    throw new PeerShareError('UNSAFE_HOME', `PeerShare will not use ${file}: ${why}. ${fix}`);
  };
  const owner = Number(st.uid);
  const mode = Number(st.mode);
  if (!st.isFile()) refuse('it is not a regular file', 'Move it away.');
  if (owner !== uid && owner !== 0) refuse(`it belongs to another user (uid ${owner})`, 'Move it away.');
  if ((mode & 0o022) !== 0) refuse(`others can write to it (mode ${(mode & 0o777).toString(8)})`, `Run: chmod go-w "${file}"`);
}

/** Loads this installation's identity, making a key pair and certificate on first run. */
export async function loadOrCreateIdentity(homeDir?: string): Promise<Identity> {
  const home = await checkHomeIsPrivate(resolveHome(homeDir));
  const keyPath = path.join(home, KEY_FILE);
  const certPath = path.join(home, CERT_FILE);
  let keyPem: string;
  let certPem: string;
  try {
    [keyPem, certPem] = await Promise.all([fs.readFile(keyPath, 'utf8'), fs.readFile(certPath, 'utf8')]);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new PeerShareError('IO_ERROR', `Cannot read the PeerShare identity in ${home}.`, { detail: String(err), cause: err });
    }
    // Loaded only on first run: the X.509 library is most of the bundle, and start-up should not pay for it.
    const { createIdentityFiles } = await import('./certificate');
    await createIdentityFiles(home);
    // Wait for a concurrent first run to finish writing the certificate.
    for (let attempt = 0; ; attempt++) {
      try {
        [keyPem, certPem] = await Promise.all([fs.readFile(keyPath, 'utf8'), fs.readFile(certPath, 'utf8')]);
        break;
      } catch (readErr) {
        if (attempt >= 50) throw readErr;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  }
  // Tighten permissions if someone loosened them: the key is for its owner alone.
  if (process.platform !== 'win32') {
    const st = await fs.stat(keyPath);
    if ((st.mode & 0o077) !== 0) await fs.chmod(keyPath, 0o600);
  }
  let certDer: Buffer;
  try {
    createPrivateKey(keyPem);
    certDer = new X509Certificate(certPem).raw;
  } catch (err) {
    throw new PeerShareError('IO_ERROR', `The PeerShare identity in ${home} is damaged; move it away to create a new one.`, {
      detail: String(err),
      cause: err,
    });
  }
  return { home, keyPem, certPem, certDer, fingerprint: fingerprintOf(certDer), peerId: peerIdOfCert(certDer) };
}
