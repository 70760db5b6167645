import { promises as fs, readlinkSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';

/**
 * Spies the cut suites share (rounds 12 and 15): the helper threads a cut starts, and file handles
 * closed while something still reads through their descriptor. The helper spy is installed when
 * this module loads (Worker.prototype.postMessage: a cut task names the descriptor it reads); the
 * handle spy by installHandleSpy, before the modules of src/ are used.
 */

/** Cut helpers started in this process: the descriptor each reads through, and whether it has exited. */
export const helpersSeen: { fd: number; exited: boolean }[] = [];
export const helpersRunning = (): number => helpersSeen.filter((h) => !h.exited).length;
/** The most helpers running at once since `mostAtOnce.count` was last set to 0. */
export const helpersMostAtOnce = { count: 0 };

const realPostMessage = Worker.prototype.postMessage;
Worker.prototype.postMessage = function (this: Worker, message: unknown, transfer?: never) {
  const task = message as { fd?: unknown; maxChunks?: unknown };
  if (task && typeof task.fd === 'number' && typeof task.maxChunks === 'number') {
    const seen = { fd: task.fd, exited: false };
    helpersSeen.push(seen);
    this.once('exit', () => (seen.exited = true));
    helpersMostAtOnce.count = Math.max(helpersMostAtOnce.count, helpersRunning());
  }
  return realPostMessage.call(this, message, transfer);
};

/** Runs before each read of the file at `path` (through a FileHandle): awaited when it returns a promise. */
export const readHook: { path?: string; before?: (position: number, length: number) => Promise<void> | void } = {};
/** Handles closed while a read was in flight or a helper still read their descriptor. */
export const closedUnderReader: string[] = [];
const readsInFlight = new Map<number, number>();
let handleSpyInstalled = false;

export async function installHandleSpy(): Promise<void> {
  if (handleSpyInstalled) return;
  handleSpyInstalled = true;
  const probe = await fs.open(__filename, 'r');
  const proto = Object.getPrototypeOf(probe) as { read: (...args: unknown[]) => Promise<unknown>; close: () => Promise<void> };
  await probe.close();
  const realRead = proto.read;
  const realClose = proto.close;
  proto.read = function (this: FileHandle, ...args: unknown[]) {
    const fd = this.fd;
    readsInFlight.set(fd, (readsInFlight.get(fd) ?? 0) + 1);
    const done = (): void => {
      const left = (readsInFlight.get(fd) ?? 1) - 1;
      if (left > 0) readsInFlight.set(fd, left);
      else readsInFlight.delete(fd);
    };
    let hooked: Promise<void> | void = undefined;
    if (readHook.path && readHook.before && typeof args[3] === 'number' && linkOf(fd) === readHook.path) hooked = readHook.before(args[3], args[2] as number);
    const reading = hooked ? hooked.then(() => realRead.apply(this, args)) : realRead.apply(this, args);
    reading.then(done, done);
    return reading;
  };
  proto.close = function (this: FileHandle) {
    const fd = this.fd;
    if (fd >= 0) {
      if (readsInFlight.has(fd)) closedUnderReader.push(`fd ${fd} closed with ${readsInFlight.get(fd)} read(s) in flight`);
      if (helpersSeen.some((h) => h.fd === fd && !h.exited)) closedUnderReader.push(`fd ${fd} closed while a cut helper still read it`);
    }
    return realClose.call(this);
  };
}

function linkOf(fd: number): string | undefined {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return undefined;
  }
}
