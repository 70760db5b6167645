/**
 * A HyperDHT public key as PeerShare writes it: where a peer can be reached on the internet
 * (invite's `dht=`, the trust file), never who it is. The peer ID, proved by TLS inside the DHT
 * stream, stays the identity (transport-dht.ts). Pure text handling, so invites and the trust file
 * need nothing from the DHT library.
 */

/** z-base-32, the alphabet HyperDHT's tools show keys in (hypercore-id-encoding). */
const Z32_ALPHABET = 'ybndrfg8ejkmcpqxot1uwisza345h769';
const KEY_BYTES = 32;
/** 256 bits in 5-bit characters. */
const Z32_KEY_CHARS = 52;

/**
 * The key as 64 lowercase hex characters, from hex (either case) or z-base-32 (52 characters);
 * undefined for anything else.
 */
export function parseDhtKey(text: unknown): string | undefined {
  if (typeof text !== 'string') return undefined;
  const trimmed = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(trimmed)) return trimmed.toLowerCase();
  if (trimmed.length !== Z32_KEY_CHARS) return undefined;
  const bytes = Buffer.alloc(KEY_BYTES);
  let bits = 0;
  let value = 0;
  let at = 0;
  for (const char of trimmed) {
    const quintet = Z32_ALPHABET.indexOf(char);
    if (quintet < 0) return undefined;
    value = (value << 5) | quintet;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      if (at < KEY_BYTES) bytes[at++] = (value >>> bits) & 0xff;
    }
    value &= (1 << bits) - 1;
  }
  // The 4 bits past the key must be zero: one key, one spelling.
  if (value !== 0) return undefined;
  return bytes.toString('hex');
}

/** The key (64 hex characters) in z-base-32, the shorter form invites carry. */
export function formatDhtKey(hex: string): string {
  const bytes = Buffer.from(hex, 'hex');
  if (bytes.length !== KEY_BYTES) throw new RangeError('A HyperDHT key is 32 bytes.');
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += Z32_ALPHABET[(value >>> bits) & 31];
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += Z32_ALPHABET[(value << (5 - bits)) & 31];
  return out;
}
