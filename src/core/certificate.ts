import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { randomBytes, webcrypto } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { CERT_FILE, KEY_FILE } from './identity';

/** Makes this installation's key pair and self-signed certificate (first run only). */
const SIGNING = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export async function createIdentityFiles(home: string): Promise<void> {
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

