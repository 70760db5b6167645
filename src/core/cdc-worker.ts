import { fstatSync, readSync, type BigIntStats } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { chunksOfRecords, cutRecordsSync, encodeChunks, type Chunk, type ReadableFile } from './cdc';
import { PeerShareError } from './errors';
import { guidedCut } from './guided-cut';

/**
 * A helper thread of the cuts (cdc-helper.ts), reading through the caller's descriptor: either
 * one part of a file cut for chunkFile, its chunk records handed back (or nothing, if it could not:
 * the caller then cuts that part itself), or a whole guided cut (guided-cut.ts), its chunks handed
 * back as they are found. Reads are synchronous: none is in flight when the thread is stopped.
 */
type Task = { kind?: 'cut'; fd: number; size: number; from: number; maxChunks: number } | { kind: 'guided'; fd: number; guide: Uint8Array; maxChunks: number };

parentPort?.once('message', (task: Task) => {
  if (task.kind === 'guided') {
    void cutGuided(task);
    return;
  }
  try {
    const records = cutRecordsSync(task.fd, task.size, task.from, task.maxChunks);
    parentPort?.postMessage({ records }, [records.buffer as ArrayBuffer]);
  } catch {
    parentPort?.postMessage({});
  }
});

async function cutGuided(task: { fd: number; guide: Uint8Array; maxChunks: number }): Promise<void> {
  const chunks = chunksOfRecords(task.guide, 0);
  const guide = { size: chunks.reduce((sum, chunk) => sum + chunk.length, 0), fileHash: Buffer.alloc(0), chunks };
  let sent = 0;
  const report = (found: readonly Chunk[]): void => {
    if (found.length === sent) return;
    const fresh = found.slice(sent);
    sent = found.length;
    parentPort?.postMessage({ records: encodeChunks(fresh), from: fresh[0].offset });
  };
  try {
    const cut = await guidedCut(readSynchronously(task.fd), guide, { maxFileChunks: task.maxChunks }, report);
    report(cut.chunks);
    parentPort?.postMessage({ done: { hashedBytes: cut.hashedBytes, cutBytes: cut.cutBytes } });
  } catch (err) {
    parentPort?.postMessage(err instanceof PeerShareError ? { error: { code: err.code, message: err.message } } : {});
  }
}

function readSynchronously(fd: number): ReadableFile {
  return {
    read: async (buffer, offset, length, position) => ({ bytesRead: readSync(fd, buffer, offset, length, position) }),
    stat: async () => fstatSync(fd, { bigint: true }) as BigIntStats,
  };
}
