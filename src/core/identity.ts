import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { randomBytes, webcrypto, X509Certificate, createPrivateKey } from 'node:crypto';
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

const SIGNING = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

async function createIdentityFiles(home: string): Promise<void> {
  x509.cryptoProvider.set(webcrypto as unknown as Crypto);
  const keys = (await webcrypto.subtle.generateKey(SIGNING, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^[89a-f]/, '1'),
    name: 'CN=PeerShare peer',
    // A day of slack for clocks that disagree; the certificate is pinned by fingerprint, so its dates are not what protects us.
    notBefore: new Date(now - 24 * 3600_000),
    notAfter: new Date(now + 20 * 365 * 24 * 3600_000),
    signingAlgorithm: SIGNING,
    keys,
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true)],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64').match(/.{1,64}/g)!.join('\n')}\n-----END PRIVATE KEY-----\n`;
  await fs.mkdir(home, { recursive: true, mode: 0o700 });
  // Key first, owner-only, created exclusively so two first runs cannot interleave.
  const unique = `${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const keyTmp = path.join(home, `${KEY_FILE}.${unique}`);
  const certTmp = path.join(home, `${CERT_FILE}.${unique}`);
  await fs.writeFile(keyTmp, keyPem, { mode: 0o600, flag: 'wx' });
  await fs.writeFile(certTmp, cert.toString('pem'), { mode: 0o644, flag: 'wx' });
  try {
    // Whoever links the key first owns the identity; a concurrent first run keeps theirs.
    await fs.link(keyTmp, path.join(home, KEY_FILE));
    await fs.rename(certTmp, path.join(home, CERT_FILE));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    await fs.rm(certTmp, { force: true });
  } finally {
    await fs.rm(keyTmp, { force: true });
  }
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
