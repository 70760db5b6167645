import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { encodeChunks, type ChunkList } from './cdc';
import { PeerShareError, type ErrorCode } from './errors';
import { MAX_CUT_HELPERS } from './limits';

/**
 * A helper thread that cuts the second part of a large file into chunks while chunkFile (cdc.ts)
 * cuts the first: the thread is started per file and runs cdc-worker.ts. Anything that goes wrong
 * with it (no second core, no worker file, a thread that fails) only means the caller cuts that
 * part itself: `records` resolves undefined, it never rejects.
 */
export interface CutHelper {
  /** The chunk records (cdc.ts cutRecordsSync) from `from` to the end of the file, or undefined. */
  records: Promise<Uint8Array | undefined>;
  /** Ends the thread; resolves once it no longer reads the file (it reads through the caller's descriptor). */
  stop(): Promise<void>;
}

/** Helper threads of this process still running (MAX_CUT_HELPERS). */
let running = 0;

/** The bundle's worker (esbuild.js writes it beside cli.js and extension.js). */
const WORKER_FILE = 'cdc-worker.js';

/** Starts a helper on the file open as `fd` (`size` bytes) from `from`, or undefined where there is no second core or no worker. */
export function startCutHelper(fd: number, size: number, from: number, maxChunks: number): CutHelper | undefined {
  const worker = startWorker();
  if (!worker) return undefined;
  const records = new Promise<Uint8Array | undefined>((resolve) => {
    worker.once('message', (message: { records?: unknown }) => resolve(message.records instanceof Uint8Array ? message.records : undefined));
    worker.once('error', () => resolve(undefined));
    worker.once('exit', () => resolve(undefined));
  });
  worker.postMessage({ fd, size, from, maxChunks });
  return {
    records,
    stop: () => stopWorker(worker),
  };
}

/** A guided cut (guided-cut.ts) running in a helper thread. */
export interface GuidedCutHelper {
  /** What the cut hashed once it has ended; a coded error (the copy changed, too many chunks); undefined if the thread failed. */
  outcome: Promise<{ hashedBytes: number; cutBytes: number } | PeerShareError | undefined>;
  /** Ends the thread; resolves once it no longer reads the file. */
  stop(): Promise<void>;
}

/**
 * Starts a guided cut of the file open as `fd` in a helper thread, or undefined where there is no
 * second core or no worker. Its chunks come to `onRecords` as they are found, as chunk records
 * starting at the file offset `from`, in order.
 */
export function startGuidedCutHelper(fd: number, guide: ChunkList, maxChunks: number, onRecords: (records: Uint8Array, from: number) => void): GuidedCutHelper | undefined {
  const worker = startWorker();
  if (!worker) return undefined;
  const outcome = new Promise<{ hashedBytes: number; cutBytes: number } | PeerShareError | undefined>((resolve) => {
    worker.on('message', (message: { records?: Uint8Array; from?: number; done?: { hashedBytes: number; cutBytes: number }; error?: { code: ErrorCode; message: string } }) => {
      if (message.records) onRecords(message.records, message.from ?? 0);
      else if (message.done) resolve(message.done);
      else if (message.error) resolve(new PeerShareError(message.error.code, message.error.message));
      else resolve(undefined);
    });
    worker.once('error', () => resolve(undefined));
    worker.once('exit', () => resolve(undefined));
  });
  worker.postMessage({ kind: 'guided', fd, guide: encodeChunks(guide.chunks), maxChunks });
  return { outcome, stop: () => stopWorker(worker) };
}

/** A new helper thread, counted while it runs; undefined at MAX_CUT_HELPERS, with no second core, or without a worker file. */
function startWorker(): Worker | undefined {
  if (running >= Math.min(MAX_CUT_HELPERS, availableParallelism() - 1)) return undefined;
  let worker: Worker;
  try {
    worker = newCutWorker();
  } catch {
    return undefined;
  }
  running++;
  worker.once('exit', () => running--);
  return worker;
}

async function stopWorker(worker: Worker): Promise<void> {
  await worker.terminate().catch(() => undefined);
}

function newCutWorker(): Worker {
  const built = path.join(__dirname, WORKER_FILE);
  if (existsSync(built)) return new Worker(built);
  // From the sources (the tests run them through tsx): the thread loads its TypeScript the same way.
  const source = path.join(__dirname, 'cdc-worker.ts');
  if (!existsSync(source)) throw new Error(`No ${WORKER_FILE} beside ${__dirname}.`);
  const load = `const r = require('node:module').createRequire(${JSON.stringify(source)}); r('tsx/cjs/api').register(); r(${JSON.stringify(source)});`;
  return new Worker(load, { eval: true });
}
