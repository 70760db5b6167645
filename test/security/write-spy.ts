import { readlinkSync } from 'node:fs';
import { promisify } from 'node:util';

/**
 * A spy on fs.write into an update's temporary file (rounds 12, 17 and 18), installed when this module
 * loads. *Import it before any module of src/ loads (the suites load src/ in `before`): delta.ts
 * takes fs.write (promisified) when it loads.* Plain node:fs only: this module loads nothing of src/.
 */
export const writeSpy = {
  /** The next write that covers this offset of the temporary file fails with ENOSPC (once). */
  failAt: undefined as number | undefined,
  failed: 0,
  /** Set once an update has returned: any write into a temporary file after that is recorded. */
  returned: false,
  afterReturn: [] as string[],
  /** Called with each write into a temporary file (its place and bytes). */
  onWrite: undefined as ((position: number, data: Uint8Array) => void) | undefined,
  /** Each write into a temporary file is cut to at most this many bytes (a short write). */
  maxBytes: Infinity,
  /** Each write into a temporary file runs this much later, its bytes checked then against what they were when it was asked for. */
  delayMs: 0,
  /** Writes into a temporary file seen. */
  calls: 0,
  /** Writes whose bytes changed between being asked for (when they were hashed) and running. */
  changedWhileQueued: [] as string[],
};

const isTemporary = (fd: number): boolean => {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`).includes('.peershare-part');
  } catch {
    return false;
  }
};

// The CommonJS module object (what src/ gets from require('node:fs')), not an ES namespace.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const fsObject: typeof import('node:fs') = require('node:fs');
const realWrite = fsObject.write;
type WriteCallback = (err: NodeJS.ErrnoException | null, written?: number, buffer?: Uint8Array) => void;
function spiedWrite(fd: number, buffer: Uint8Array, offset: number, length: number, position: number | null, callback: WriteCallback): void {
  if (typeof buffer === 'string' || typeof callback !== 'function' || !isTemporary(fd)) {
    // eslint-disable-next-line prefer-rest-params
    return (realWrite as (...args: unknown[]) => void)(...arguments);
  }
  writeSpy.calls++;
  if (writeSpy.returned) writeSpy.afterReturn.push(`${length} bytes at ${position}`);
  if (position !== null) writeSpy.onWrite?.(position, buffer.subarray(offset, offset + length));
  const failAt = writeSpy.failAt;
  if (failAt !== undefined && position !== null && position <= failAt && failAt < position + length) {
    writeSpy.failAt = undefined;
    writeSpy.failed++;
    // As a full disk answers, from the thread pool: later.
    setTimeout(() => callback(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' })), 2);
    return;
  }
  if (writeSpy.maxBytes === Infinity && writeSpy.delayMs === 0) {
    realWrite(fd, buffer, offset, length, position, callback as never);
    return;
  }
  const cappedLength = Math.min(length, writeSpy.maxBytes);
  const asked = Buffer.from(buffer.subarray(offset, offset + cappedLength));
  setTimeout(() => {
    if (!asked.equals(buffer.subarray(offset, offset + cappedLength))) writeSpy.changedWhileQueued.push(`${cappedLength} bytes at ${position} changed before the write ran`);
    realWrite(fd, buffer, offset, cappedLength, position, callback as never);
  }, writeSpy.delayMs);
}
(spiedWrite as unknown as Record<symbol, unknown>)[promisify.custom] = (fd: number, buffer: Uint8Array, offset: number, length: number, position: number | null) =>
  new Promise((resolve, reject) => spiedWrite(fd, buffer, offset, length, position, (err, bytesWritten, buf) => (err ? reject(err) : resolve({ bytesWritten, buffer: buf }))));
(fsObject as { write: unknown }).write = spiedWrite;
