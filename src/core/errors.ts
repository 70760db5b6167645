/**
 * Every failure PeerShare reports carries one of these codes. The codes travel on the wire
 * (in `error` messages), so they are part of the protocol: add new ones, never rename.
 */
export const ERROR_MESSAGES = {
  PEER_UNTRUSTED: 'This peer is not trusted. Pair with an invite first.',
  PEER_MISMATCH: "The peer's certificate does not match the peer ID we expected; someone may be in between.",
  ACCESS_DENIED: 'The sharer did not allow the connection.',
  TOKEN_INVALID: 'The invite token is unknown, already used or expired. Ask for a new invite.',
  INVALID_INVITE: 'That is not a PeerShare invite.',
  UNKNOWN_PEER: 'No trusted peer matches that name, ID or address.',
  VERSION_UNSUPPORTED: 'The peer speaks a protocol version we do not support.',
  PROTOCOL_ERROR: 'The peer sent something that does not follow the PeerShare protocol.',
  NOT_FOUND: 'No such file or folder in the share.',
  OUTSIDE_SHARE: 'That path is outside the shared folders.',
  EXCLUDED: 'That path is excluded from sharing.',
  NOT_A_FILE: 'That is not a regular file.',
  NOT_A_DIRECTORY: 'That is not a folder.',
  PERMISSION_DENIED: 'The sharer cannot read that file.',
  FILE_CHANGED: 'The file changed while it was being sent. Try again.',
  HASH_MISMATCH: 'The downloaded data does not match its BLAKE3 hash; it was discarded.',
  SIZE_MISMATCH: 'The peer sent a different number of bytes than it announced; the data was discarded.',
  BAD_NAME: 'The peer sent a file name that is unsafe or was not asked for; it was refused.',
  DEST_EXISTS: 'The destination already exists and overwriting was not allowed.',
  TOO_LARGE: 'A message or listing went over a configured limit.',
  BUSY: 'The peer is busy (too many connections or requests). Try again shortly.',
  TIMEOUT: 'The peer did not answer in time.',
  CONNECTION_FAILED: 'Could not connect to the peer.',
  CONNECTION_CLOSED: 'The connection to the peer closed unexpectedly.',
  CANCELLED: 'Cancelled.',
  IO_ERROR: 'A local file operation failed.',
  ADDRESS_IN_USE: 'That port is already in use by another program. Choose another port, or 0 for any free port.',
  INVALID_ARGUMENT: 'Invalid argument.',
  UNSAFE_HOME: 'Others can write to the PeerShare home folder, so they could plant a trusted peer or a key; it was not used.',
  INTERNAL: 'An internal error occurred.',
} as const;

export type ErrorCode = keyof typeof ERROR_MESSAGES;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(ERROR_MESSAGES, value);
}

export class PeerShareError extends Error {
  readonly code: ErrorCode;
  /** Technical detail for logs; `message` is the sentence a person reads. */
  readonly detail?: string;

  constructor(code: ErrorCode, message?: string, options?: { detail?: string; cause?: unknown }) {
    super(message ?? ERROR_MESSAGES[code], options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PeerShareError';
    this.code = code;
    this.detail = options?.detail;
  }
}

/** Turns anything thrown into a PeerShareError, keeping coded errors as they are. */
export function toPeerShareError(err: unknown, fallback: ErrorCode = 'INTERNAL'): PeerShareError {
  if (err instanceof PeerShareError) return err;
  const sys = err as NodeJS.ErrnoException | undefined;
  const detail = sys && typeof sys.message === 'string' ? sys.message : String(err);
  switch (sys?.code) {
    case 'ENOENT':
      return new PeerShareError('NOT_FOUND', undefined, { detail, cause: err });
    case 'EACCES':
    case 'EPERM':
      return new PeerShareError('PERMISSION_DENIED', undefined, { detail, cause: err });
    case 'ECONNREFUSED':
      return new PeerShareError('CONNECTION_FAILED', 'Could not connect: nothing is listening there. The peer may have stopped sharing.', { detail, cause: err });
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return new PeerShareError('CONNECTION_FAILED', 'Could not connect: that network cannot be reached from here.', { detail, cause: err });
    case 'EADDRNOTAVAIL':
      return new PeerShareError('CONNECTION_FAILED', 'Could not connect: that address is not available from this machine.', { detail, cause: err });
    case 'ENOTFOUND':
      return new PeerShareError('CONNECTION_FAILED', 'Could not connect: no machine has that name.', { detail, cause: err });
    case 'ECONNRESET':
    case 'EPIPE':
      return new PeerShareError('CONNECTION_CLOSED', undefined, { detail, cause: err });
    case 'EADDRINUSE':
      return new PeerShareError('ADDRESS_IN_USE', undefined, { detail, cause: err });
    case 'ENOSPC':
      return new PeerShareError('IO_ERROR', 'The disk is full.', { detail, cause: err });
    default:
      return new PeerShareError(fallback, undefined, { detail, cause: err });
  }
}
