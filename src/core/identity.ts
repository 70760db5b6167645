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

/** Loads this installation's identity, making a key pair and certificate on first run. */
export async function loadOrCreateIdentity(homeDir?: string): Promise<Identity> {
  const home = resolveHome(homeDir);
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
