import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import { PeerShareError, isErrorCode } from '../../src/core';
import { blockSizeFor } from '../../src/core/blocks';
import { blake3 } from '../../src/core/blake3';
import { chunkBytes, encodeChunks, type Chunk } from '../../src/core/cdc';
import { manifestOfBytes } from '../../src/core/v2/share-messages';
import type { ReplierV2 } from '../hostile';
import { listTree } from '../helpers';

/**
 * What the update attack rounds (7, 11, 12) share: a hostile sharer's answers to share.chunks and
 * share.readChunks, and how an update's outcome is judged. *The files of rounds 11 and 12 load this
 * in `before`, after their spies on node:fs are in place: src/ must see the spies when it loads.*
 */

/** The fileHash (block-list hash) of `content`. */
export const fileHashOf = (content: Buffer): string => manifestOfBytes(content, blockSizeFor(content.length)).fileHash.toString('hex');

/** A share.chunks answer: `chunks` (default: the honest cut of `content`, or a list that lies), named by the fileHash of `named`. */
export async function sendChunkList(reply: ReplierV2, content: Buffer, chunks: Chunk[] = chunkBytes(content), named: Buffer = content): Promise<Record<string, unknown>> {
  await reply.message({ type: 'chunks', size: content.length, mtimeMs: 1000, fileHash: fileHashOf(named), count: chunks.length });
  if (chunks.length > 0) await reply.data(encodeChunks(chunks));
  return {};
}

/** The chunks a share.readChunks asks for, of `content` cut as `chunks`, one DATA call each; `skip` says which to leave out. */
export async function sendChunks(req: Record<string, unknown>, reply: ReplierV2, content: Buffer, chunks: Chunk[] = chunkBytes(content), skip: (i: number) => boolean = () => false): Promise<Record<string, unknown>> {
  for (const [first, end] of req.chunks as [number, number][]) {
    for (let i = first; i < end; i++) if (!skip(i)) await reply.data(content.subarray(chunks[i].offset, chunks[i].offset + chunks[i].length));
  }
  return {};
}

/** A list cutting `content` at the given lengths (repeated until the end). */
export function cutAt(content: Buffer, lengths: number[]): Chunk[] {
  const chunks: Chunk[] = [];
  for (let offset = 0, i = 0; offset < content.length; i++) {
    const length = Math.min(lengths[i % lengths.length], content.length - offset);
    chunks.push({ offset, length, hash: blake3(content.subarray(offset, offset + length)) });
    offset += length;
  }
  return chunks;
}

/** The outcome of `promise`: its value, or the error it failed with. */
export async function outcomeOf<T>(promise: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; code: string; message: string; error: unknown }> {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    return { ok: false, code: (error as { code?: string }).code ?? 'none', message: (error as Error).message, error };
  }
}

/** Throws unless `error` is a PeerShareError with a known code and a sentence a person can read. */
export function assertCoded(error: unknown, what: string): void {
  assert.ok(error instanceof PeerShareError, `${what}: not a PeerShareError: ${String(error)} (code ${(error as { code?: string }).code})`);
  assert.ok(isErrorCode(error.code), `${what}: code ${error.code}`);
  assert.ok(error.message.length > 0 && error.message.length < 500 && !/[\u0000-\u001f]/.test(error.message), `${what}: message ${JSON.stringify(error.message)}`);
}

/** After an update of `target` (old bytes `ours`) to `theirs`: the target is exactly one of the two, and dest holds nothing else. */
export async function assertOneVersion(o: Awaited<ReturnType<typeof outcomeOf>>, dest: string, target: string, ours: Buffer | undefined, theirs: Buffer, what: string): Promise<void> {
  assert.deepEqual(await listTree(dest), ['f.bin'], `${what}: no temporary file, nothing else in dest`);
  const now = await fs.readFile(target);
  if (o.ok) {
    assert.ok(now.equals(theirs), `${what}: the update reported success, so the target must be exactly the sharer's version (${now.length} bytes; first difference at ${firstDifference(now, theirs)})`);
  } else {
    assertCoded(o.error, what);
    if (ours) assert.ok(now.equals(ours), `${what}: the update failed (${o.code}), so the target must be the old file`);
  }
}

/** The first offset where `a` and `b` differ (-1: none). */
function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
