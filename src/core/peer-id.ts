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
