import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { PeerShareError } from './errors';

/**
 * SHA-256 over a file's blocks, in order. On a large download the receiver hashes on a worker
 * thread: hashing on the event loop would make it the slowest step of the pipeline (measured in
 * docs/benchmarks.md), while a worker hashes one block as the next arrives.
 */
export interface StreamHash {
  /** Hashes `block`; the promise settles once `block` may be reused. */
  update(block: Buffer): Promise<void>;
  digest(): Promise<string>;
  /** Stops the worker, if any; safe to call twice. */
  close(): void;
}

/** A block the off-thread hash can read without a copy: its memory is shared with the worker. */
export function allocateBlock(bytes: number, shared: boolean): Buffer {
  return shared ? Buffer.from(new SharedArrayBuffer(bytes)) : Buffer.allocUnsafeSlow(bytes);
}

export function createStreamHash(offThread: boolean): StreamHash {
  return offThread ? new WorkerHash() : new InlineHash();
}

class InlineHash implements StreamHash {
  private readonly hash = createHash('sha256');

  update(block: Buffer): Promise<void> {
    this.hash.update(block);
    return Promise.resolve();
  }

  digest(): Promise<string> {
    return Promise.resolve(this.hash.digest('hex'));
  }

  close(): void {}
}

// Evaluated source, so the worker needs no file of its own next to the bundle.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hash = createHash('sha256');
parentPort.on('message', (m) => {
  if (m.digest) return parentPort.postMessage({ digest: hash.digest('hex') });
  hash.update(new Uint8Array(m.buffer, m.byteOffset, m.length));
  parentPort.postMessage({ done: true });
});
`;

class WorkerHash implements StreamHash {
  private readonly worker = new Worker(WORKER_SOURCE, { eval: true });
  // Answers come back in the order the requests went out.
  private readonly waiting: { resolve(value: unknown): void; reject(err: Error): void }[] = [];
  private failure?: PeerShareError;

  constructor() {
    this.worker.on('message', (m: unknown) => this.waiting.shift()?.resolve(m));
    this.worker.on('error', (err) => this.fail(new PeerShareError('INTERNAL', `The hashing thread failed: ${err.message}`)));
    this.worker.on('exit', () => this.fail(new PeerShareError('INTERNAL', 'The hashing thread stopped.')));
  }

  update(block: Buffer): Promise<void> {
    if (!(block.buffer instanceof SharedArrayBuffer)) throw new TypeError('Blocks for the hashing thread must be shared (allocateBlock).');
    return this.ask({ buffer: block.buffer, byteOffset: block.byteOffset, length: block.length }).then(() => undefined);
  }

  async digest(): Promise<string> {
    const answer = (await this.ask({ digest: true })) as { digest: string };
    return answer.digest;
  }

  close(): void {
    this.failure ??= new PeerShareError('CANCELLED');
    void this.worker.terminate();
  }

  private ask(message: object): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.worker.postMessage(message);
    });
  }

  private fail(err: PeerShareError): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
  }
}
