import type * as tls from 'node:tls';

/**
 * TLS settings both ends use: TLS 1.3 only, AES-128-GCM first (hardware-accelerated on
 * common CPUs and the fastest of the three TLS 1.3 suites), no plaintext mode at all.
 */
export const TLS_OPTIONS: tls.SecureContextOptions & { minVersion: tls.SecureVersion } = {
  minVersion: 'TLSv1.3',
  maxVersion: 'TLSv1.3',
  ciphers: 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256',
};
