import { parentPort } from 'node:worker_threads';
import { cutRecordsSync } from './cdc';

/**
 * The helper thread of chunkFile (cdc-helper.ts): cuts one part of a file, read through the
 * caller's descriptor, and hands back its chunk records (or nothing, if it could not: the caller
 * then cuts that part itself).
 */
parentPort?.once('message', (task: { fd: number; size: number; from: number; maxChunks: number }) => {
  try {
    const records = cutRecordsSync(task.fd, task.size, task.from, task.maxChunks);
    parentPort?.postMessage({ records }, [records.buffer as ArrayBuffer]);
  } catch {
    parentPort?.postMessage({});
  }
});
