import { createHash } from 'node:crypto';
import { PeerShareError } from './errors';

/**
 * A peer ID is the SHA-256 of the peer's certificate (DER), written in RFC 4648 base32
 * (letters and digits 2-7: no 0/O or 1/I/L confusion when read aloud) in groups of four.
 */
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
const ID_CHARS = 52; // ceil(256 / 5)

export function fingerprintOf(certDer: Buffer): Buffer {
  return createHash('sha256').update(certDer).digest();
}

export function peerIdFromFingerprint(fingerprint: Buffer): string {
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of fingerprint) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out.match(/.{1,4}/g)!.join('-');
}

export function peerIdOfCert(certDer: Buffer): string {
  return peerIdFromFingerprint(fingerprintOf(certDer));
}

/** The certificate fingerprint a peer ID stands for (the inverse of peerIdFromFingerprint). */
export function fingerprintFromPeerId(id: string): Buffer {
  const compact = normalizePeerId(id).replace(/-/g, '');
  const bytes: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of compact) {
    value = (value << 5) | ALPHABET.indexOf(ch);
    bits += 5;
    if (bits >= 8) {
      bytes.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(bytes.slice(0, 32));
}

/** Accepts an ID typed by a person: any case, with or without dashes or spaces. */
export function normalizePeerId(input: string): string {
  const compact = input.toUpperCase().replace(/[\s-]/g, '');
  if (compact.length !== ID_CHARS || /[^A-Z2-7]/.test(compact)) {
    throw new PeerShareError('INVALID_ARGUMENT', `Not a peer ID: ${JSON.stringify(input.slice(0, 80))}`);
  }
  return compact.match(/.{1,4}/g)!.join('-');
}

export function isPeerId(input: string): boolean {
  try {
    normalizePeerId(input);
    return true;
  } catch {
    return false;
  }
}

/** The first groups of an ID, for places where the whole one does not fit. */
export function shortPeerId(id: string): string {
  return id.split('-').slice(0, 3).join('-');
}

/**
 * A short code both sides of a connection can compute from the two certificates and compare by
 * reading it aloud, the way Bluetooth pairing compares numbers: someone in between would hold
 * other certificates and so see another code. Order-independent; six digits, grouped "123 456".
 */
export function verificationCode(fingerprintA: Buffer, fingerprintB: Buffer): string {
  const [first, second] = Buffer.compare(fingerprintA, fingerprintB) <= 0 ? [fingerprintA, fingerprintB] : [fingerprintB, fingerprintA];
  const digest = createHash('sha256').update('peershare-verification-v1').update(first).update(second).digest();
  const n = digest.readUInt32BE(0) % 1_000_000;
  const digits = String(n).padStart(6, '0');
  return `${digits.slice(0, 3)} ${digits.slice(3)}`;
}
