import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
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
  if (running >= Math.min(MAX_CUT_HELPERS, availableParallelism() - 1)) return undefined;
  let worker: Worker;
  try {
    worker = newCutWorker();
  } catch {
    return undefined;
  }
  running++;
  worker.once('exit', () => running--);
  const records = new Promise<Uint8Array | undefined>((resolve) => {
    worker.once('message', (message: { records?: unknown }) => resolve(message.records instanceof Uint8Array ? message.records : undefined));
    worker.once('error', () => resolve(undefined));
    worker.once('exit', () => resolve(undefined));
  });
  worker.postMessage({ fd, size, from, maxChunks });
  return {
    records,
    stop: async () => {
      await worker.terminate().catch(() => undefined);
    },
  };
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
