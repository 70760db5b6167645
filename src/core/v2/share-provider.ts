import { fstatSync, type BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { BlockCache } from '../block-cache';
import { CHUNK_MEMORY_BYTES, ChunkListCache, chunkBytes, chunkFile, encodeChunks, tooManyChunks, type Chunk as CdcChunk } from '../cdc';
import { blake3 } from '../blake3';
import { blockCount, blockRange, blockSizeFor, encodeBlockManifest, readFully, type BlockManifest } from '../blocks';
import { PeerShareError, toPeerShareError } from '../errors';
import { sameVersion, versionKey } from '../hash-cache';
import { RECENT_LIST_MS, RECENT_LISTS, SMALL_FILE_PIPELINE, TRANSFER_CHUNK_BYTES, TRUST_RECHECK_MS, resolveLimits, type Limits } from '../limits';
import type { Entry } from '../protocol';
import { settledVersion, type Share, type WalkItem } from '../share';
import type { ReplyWriter, RequestHandler } from './connection';
import type { Served } from './handshake';
import { MAX_FRAME_CEILING_BYTES } from './frames';
import { endErrorFor, type CapabilityMessage } from './messages';
import { MAX_INLINE_CHUNKS_FILE_BYTES, MAX_INLINE_FILE_BYTES, MAX_LIST_BATCH_ENTRIES, SHARE_CAPABILITY, manifestOfBytes, parseShareRequest, type BlockRanges, type ShareRequest } from './share-messages';
import { WATCH_REQUEST } from './watch-messages';
import { WatchProvider } from './watch-provider';

/**
 * The provider of capability `share/1` (docs/protocol-v2.md 6): serves one Share, read-only, to
 * the peers of any number of v2 connections. Every path goes through Share (path rules, excludes,
 * private paths, symbolic links, verified opens); manifests come from the server's one BlockCache,
 * so a file sent again costs no hashing; blocks are read from the open file whose version the
 * manifest was made for, and a file that changes meanwhile ends the answer with FILE_CHANGED.
 *
 * Who may ask is decided before a handler runs: the handshake's `admit` (4.4) gives a connection
 * this capability only for a peer that may read us, and `SessionOptions.stillAllowed` is the
 * per-request check against the trust file as it is then (5.1), which the caller wires to its
 * trust store (PeerServer.mayRead, or true for a peer Allowed Once).
 */
export interface ShareProviderOptions {
  share: Share;
  /** The server's one block cache (block-cache.ts). */
  blockCache: BlockCache;
  limits?: Partial<Limits>;
}

/** One connection's peer, as the provider needs it. */
export interface SessionOptions {
  /** The peer's proved ID: its requests count against maxRequestsPerPeer across its connections. */
  peerId: string;
  /** The peer's advertised `frame` (hello/welcome): REPLY messages are batched to fit it. Default: the smallest any peer may advertise. */
  peerFrameBytes?: number;
  /**
   * May this peer still read us? Asked on every request and during transfers (at most every
   * TRUST_RECHECK_MS); false ends its requests with PEER_UNTRUSTED. Default: always (the caller's
   * admit already decided, and nothing revokes it, e.g. Allowed Once).
   */
  stillAllowed?: () => boolean;
}

export interface ShareProviderStats {
  requests: number;
  /** Requests refused BUSY (maxConcurrentRequests / maxRequestsPerPeer). */
  busy: number;
  /** File bytes sent as blocks or inline files. */
  fileBytesSent: number;
}

/** The smallest `frame` a peer may advertise (spec 4.1). */
const MIN_PEER_FRAME_BYTES = 16 * 1024;
/** What a REPLY's frame holds beside its entries: `{"type":"entries","entries":[` and `]}`. */
const ENTRIES_ENVELOPE_BYTES = 64;
/** Chunks of a read queued on the connection at once (with one more being read): 3 MiB per read at most. */
const CHUNKS_QUEUED = 2;
/** Rehashes a peer may ask for (each at most once per file version); past it, the cache answers. */
const MAX_REHASHES_PER_PEER = 1024;
/** Peers whose rehashes are remembered; past it, the one heard from longest ago is forgotten. */
const MAX_REHASH_PEERS = 256;

export class ShareProvider {
  readonly limits: Limits;
  readonly stats: ShareProviderStats = { requests: 0, busy: 0, fileBytesSent: 0 };
  private readonly share: Share;
  private readonly cache: BlockCache;
  private active = 0;
  private readonly activeByPeer = new Map<string, number>();
  /**
   * The file versions each peer had rehashed, across its connections: counted per connection, a
   * peer that reconnects (its handshakes are refunded) could have any shared file re-read and
   * hashed at disk speed without receiving a byte (found by the v2 attack suite).
   */
  private readonly rehashedByPeer = new Map<string, Set<string>>();
  private watchProvider?: WatchProvider;
  /** Content-defined chunk lists by file version (share.chunks, spec 15). */
  private readonly chunkLists: ChunkListCache;
  /** Chunk lists being cut now, by file version: requests for the same version share one cut. */
  private readonly chunkCuts = new Map<string, Promise<CdcChunk[]>>();
  /**
   * The block and chunk lists of versions too recent to cache (changed within RACY_TIMESTAMP_MS:
   * the racy rule), kept RECENT_LIST_MS for the share.readChunks that follows their share.chunks:
   * *why: both were computed again for it, so a 1 GiB file just changed was hashed and cut twice
   * per update (the sharer's 3.7 CPU-s).* A chunk sent from one of these is hashed as it is read
   * and compared with the list: a file changed within its timestamps' granularity is then
   * FILE_CHANGED, never bytes the list does not name. At most RECENT_LISTS, each within half of
   * chunkCacheBytes.
   */
  private readonly recentLists = new Map<string, { manifest: BlockManifest; chunks: CdcChunk[]; untilMs: number }>();

  constructor(options: ShareProviderOptions) {
    this.share = options.share;
    this.cache = options.blockCache;
    this.limits = resolveLimits(options.limits);
    this.chunkLists = new ChunkListCache(this.limits.chunkCacheBytes);
  }

  /** What `share/1` advertises (spec 6): the roots. */
  params(): { roots: string[] } {
    return { roots: this.share.roots.map((root) => root.name) };
  }

  /** The capability as acceptV2's `admit` / dialV2's `serve` take it. */
  served(session: SessionOptions): Served {
    return { [SHARE_CAPABILITY]: { params: this.params(), handler: this.handler(session) } };
  }

  /** The versions `peerId` had rehashed; the peer is moved to the back, so the one heard from longest ago is forgotten first. */
  private rehashedBy(peerId: string): Set<string> {
    const rehashed = this.rehashedByPeer.get(peerId) ?? new Set<string>();
    this.rehashedByPeer.delete(peerId);
    this.rehashedByPeer.set(peerId, rehashed);
    if (this.rehashedByPeer.size > MAX_REHASH_PEERS) this.rehashedByPeer.delete(this.rehashedByPeer.keys().next().value!);
    return rehashed;
  }

  /** The handler of one connection's `share.*` requests (`connection.handle('share/1', …)`). */
  handler(session: SessionOptions): RequestHandler {
    const context = new SessionContext(session, this.rehashedBy(session.peerId));
    return (request, reply, signal) => this.answer(context, request, reply, signal);
  }

  /** The live tree (share.watch, spec 14): its watched folders and their watchers, made on first use. */
  get watches(): WatchProvider {
    this.watchProvider ??= new WatchProvider(this.share, this.limits);
    return this.watchProvider;
  }

  private async answer(session: SessionContext, message: CapabilityMessage, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    if (message.type === WATCH_REQUEST) {
      // Long-lived: bounded by maxWatchesPerConnection, not by the request slots (spec 14.2).
      session.checkAllowed(false);
      this.stats.requests++;
      return this.watches.answer(session, message, reply, signal);
    }
    const request = parseShareRequest(message, this.limits);
    session.checkAllowed(false);
    if (!this.takeSlot(session.peerId)) {
      this.stats.busy++;
      throw new PeerShareError('BUSY', 'Too many requests at once; try again shortly.');
    }
    this.stats.requests++;
    try {
      return await this.serve(session, request, reply, signal);
    } finally {
      this.releaseSlot(session.peerId);
    }
  }

  private serve(session: SessionContext, request: ShareRequest, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    switch (request.type) {
      case 'share.stat':
        return this.share.stat(request.path).then((entry) => ({ entry }));
      case 'share.list':
        return this.list(session, request.path, reply, signal);
      case 'share.manifest':
        return this.manifest(session, request, reply);
      case 'share.read':
        return this.read(session, request, reply, signal);
      case 'share.tree':
        return this.tree(session, request.path, reply, signal);
      case 'share.chunks':
        return this.chunks(session, request, reply);
      case 'share.readChunks':
        return this.readChunks(session, request, reply, signal);
    }
  }

  /** Requests answered at once, in all and per peer across its connections (spec 5.1: BUSY at once). */
  private takeSlot(peerId: string): boolean {
    const mine = this.activeByPeer.get(peerId) ?? 0;
    if (this.active >= this.limits.maxConcurrentRequests || mine >= this.limits.maxRequestsPerPeer) return false;
    this.active++;
    this.activeByPeer.set(peerId, mine + 1);
    return true;
  }

  private releaseSlot(peerId: string): void {
    this.active--;
    const mine = (this.activeByPeer.get(peerId) ?? 1) - 1;
    if (mine > 0) this.activeByPeer.set(peerId, mine);
    else this.activeByPeer.delete(peerId);
  }

  /** REPLY `entries`* in batches that fit the peer's frame, then END `{count}`; at most maxListEntries and maxListBytes of names. */
  private async list(session: SessionContext, remotePath: string, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    const most = Math.min(session.peerFrameBytes, MAX_FRAME_CEILING_BYTES) - ENTRIES_ENVELOPE_BYTES;
    let count = 0;
    let nameBytes = 0;
    let batch: Entry[] = [];
    let batchBytes = 0;
    const flush = async (): Promise<void> => {
      if (batch.length === 0) return;
      const entries = batch;
      batch = [];
      batchBytes = 0;
      await reply.message({ type: 'entries', entries });
      count += entries.length;
    };
    for await (const entries of this.share.list(remotePath)) {
      throwIfAborted(signal);
      session.checkAllowed(true);
      for (const entry of entries) {
        nameBytes += Buffer.byteLength(entry.name, 'utf8');
        if (nameBytes > this.limits.maxListBytes) throw new PeerShareError('TOO_LARGE', `The folder's names take more than ${this.limits.maxListBytes} bytes.`);
        const bytes = Buffer.byteLength(JSON.stringify(entry), 'utf8') + 1;
        if (batch.length >= Math.min(this.limits.listBatchEntries, MAX_LIST_BATCH_ENTRIES) || batchBytes + bytes > most) await flush();
        batch.push(entry);
        batchBytes += bytes;
      }
    }
    await flush();
    return { count };
  }

  /** REPLY `manifest` {size, mtimeMs, blockSize, fileHash}, DATA the block list, END. */
  private async manifest(session: SessionContext, request: ShareRequest & { type: 'share.manifest' }, reply: ReplyWriter): Promise<Record<string, unknown>> {
    const { handle, stat } = await this.share.openFile(request.path);
    try {
      const mtimeMs = Math.floor(stat.mtimeMs);
      if (request.expect && (request.expect.size !== stat.size || request.expect.mtimeMs !== mtimeMs)) {
        throw new PeerShareError('FILE_CHANGED', 'The file is not the version asked for: it changed since it was listed.');
      }
      const version = await handle.stat({ bigint: true });
      const rehash = request.rehash === true && session.mayRehash(version);
      const manifest = await this.manifestOf(handle, version, rehash);
      await reply.message({ type: 'manifest', size: manifest.size, mtimeMs, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') });
      await reply.data(encodeBlockManifest(manifest));
      return {};
    } finally {
      await handle.close();
    }
  }

  /** The block list of the open file's `version`: from the cache, hashed on a miss; FILE_CHANGED if it is not that version's. */
  private async manifestOf(handle: FileHandle, version: BigIntStats, rehash = false): Promise<BlockManifest> {
    const size = Number(version.size);
    if (blockCount(size, blockSizeFor(size)) > this.limits.maxFileBlocks) {
      throw new PeerShareError('TOO_LARGE', `This file is too large to send: it has more than ${this.limits.maxFileBlocks} blocks.`);
    }
    const manifest = await this.cache.hashWithCache(handle, { rehash });
    if (manifest.size !== size || !sameVersion(version, await handle.stat({ bigint: true }))) {
      throw new PeerShareError('FILE_CHANGED');
    }
    return manifest;
  }

  /**
   * DATA: the blocks asked for, in order, each block in chunks of at most TRANSFER_CHUNK_BYTES
   * (a DATA frame never spans two blocks). The next chunk is read while CHUNKS_QUEUED wait to be
   * written; after every read the open file's version is compared with the manifest's (spec 7.2
   * "sharer side"), so a block of another version is never sent.
   */
  private async read(session: SessionContext, request: ShareRequest & { type: 'share.read' }, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    const { handle } = await this.share.openFile(request.path);
    try {
      const version = await handle.stat({ bigint: true });
      const manifest = await this.manifestOf(handle, version);
      if (manifest.fileHash.toString('hex') !== request.fileHash) {
        throw new PeerShareError('FILE_CHANGED', 'The file is not the version asked for: it changed since its manifest was sent.');
      }
      const count = manifest.blockHashes.length;
      const past = request.blocks.find(([, end]) => end > count);
      if (past) throw new PeerShareError('INVALID_ARGUMENT', `The file has ${count} blocks; block ${past[1] - 1} was asked for.`);
      await this.sendPieces(session, handle, version, chunksOf(manifest, request.blocks), reply, signal);
      return {};
    } finally {
      await handle.close();
    }
  }

  /**
   * REPLY `chunks` {size, mtimeMs, fileHash, count}, DATA the chunk records, END (spec 15.2): the
   * content-defined chunks of the version of the file that is open, from the chunk cache or cut
   * now; `fileHash` is that version's block-list hash (the block cache's), so the requester can
   * verify what it assembles end to end.
   */
  private async chunks(session: SessionContext, request: ShareRequest & { type: 'share.chunks' }, reply: ReplyWriter): Promise<Record<string, unknown>> {
    const small = request.inline ? await this.share.readSmallFile(request.path, MAX_INLINE_CHUNKS_FILE_BYTES) : undefined;
    if (small) {
      await this.chunksInline(session, small.data, small.version, reply);
      return {};
    }
    // Where readSmallFile cannot (no /proc/self/fd) or the file is larger: the list alone, and the
    // requester reads the chunks (whose version the racy rule checks again).
    const { handle, stat } = await this.share.openFile(request.path);
    try {
      const version = await handle.stat({ bigint: true });
      const { manifest, chunks } = await this.chunksOf(handle, version);
      // Cutting a large file takes a while: a peer revoked meanwhile gets no list (found by the chunk attack suite).
      session.checkAllowed(false);
      await reply.message({ type: 'chunks', size: manifest.size, mtimeMs: Math.floor(stat.mtimeMs), fileHash: manifest.fileHash.toString('hex'), count: chunks.length });
      if (chunks.length > 0) await reply.data(encodeChunks(chunks));
      return {};
    } finally {
      await handle.close();
    }
  }

  /** The block list and chunk list of the open file's `version`; FILE_CHANGED if either is not that version's. */
  private async chunksOf(handle: FileHandle, version: BigIntStats): Promise<{ manifest: BlockManifest; chunks: CdcChunk[] }> {
    if (this.chunkLists.isTooLarge(version)) throw tooManyChunks(this.limits.maxFileChunks);
    // A version not seen before (the file just changed) is hashed and cut at once, the two reads
    // side by side (a large file's cut has a thread of its own): *why: one after the other, they
    // were most of an update's time after a change (1 GiB: 0.4 s, then 0.7 s).* Both are waited
    // for, even when one fails: each reads through `handle`, which the caller then closes.
    const [manifest, chunks] = await Promise.allSettled([this.manifestOf(handle, version), this.chunkLists.get(version) ?? this.cutOnce(handle, version)]);
    if (manifest.status === 'rejected') throw manifest.reason;
    if (chunks.status === 'rejected') throw chunks.reason;
    if (!this.chunkLists.get(version)) this.keepRecent(version, manifest.value, chunks.value);
    return { manifest: manifest.value, chunks: chunks.value };
  }

  /** Keeps a version's lists that the racy rule kept out of the caches (recentLists). */
  private keepRecent(version: BigIntStats, manifest: BlockManifest, chunks: CdcChunk[]): void {
    if (chunks.length * CHUNK_MEMORY_BYTES > this.limits.chunkCacheBytes / 2) return;
    const key = versionKey(version);
    const now = Date.now();
    // Expired ones go now, not only when looked up (round 16: they stayed past their 30 s).
    for (const [other, recent] of this.recentLists) if (now > recent.untilMs) this.recentLists.delete(other);
    this.recentLists.delete(key);
    this.recentLists.set(key, { manifest, chunks, untilMs: now + RECENT_LIST_MS });
    for (const oldest of this.recentLists.keys()) {
      if (this.recentLists.size <= RECENT_LISTS) break;
      this.recentLists.delete(oldest);
    }
  }

  /** The lists kept for this version by keepRecent, if still fresh. */
  private recentOf(version: BigIntStats): { manifest: BlockManifest; chunks: CdcChunk[] } | undefined {
    const key = versionKey(version);
    const recent = this.recentLists.get(key);
    if (!recent) return undefined;
    if (Date.now() <= recent.untilMs) return recent;
    this.recentLists.delete(key);
    return undefined;
  }

  /**
   * share.chunks with `inline` of a file of one chunk (`data`, read whole as `version`): the list, then the bytes.
   * *Why: a burst of small changes cost each file two requests, and the sharer opened, hashed and
   * read it twice; these files are never cached (just written: the racy rule).* The block list
   * comes from the same bytes (one block), so `fileHash` is the block cache's for that version.
   */
  private async chunksInline(session: SessionContext, data: Buffer, version: BigIntStats, reply: ReplyWriter): Promise<void> {
    const manifest = manifestOfBytes(data, blockSizeFor(data.length));
    const chunks = chunkBytes(data);
    session.checkAllowed(false);
    const mtimeMs = Math.floor(Number(version.mtimeNs / 1_000_000n));
    await reply.message({ type: 'chunks', size: data.length, mtimeMs, fileHash: manifest.fileHash.toString('hex'), count: chunks.length, inline: true });
    if (chunks.length > 0) await reply.data(encodeChunks(chunks));
    if (data.length > 0) await reply.data(data);
    this.stats.fileBytesSent += data.length;
  }

  /**
   * Cuts the open file's `version` into chunks, once for all the requests that ask for it at the
   * same time: *why: each would otherwise read the whole file and hold its own list (8 requests
   * of one peer, 8 times the disk reads and the memory; found by the chunk attack suite).* The
   * first request's file stays open until the cut ends: that request awaits it too.
   */
  private cutOnce(handle: FileHandle, version: BigIntStats): Promise<CdcChunk[]> {
    const key = versionKey(version);
    let cutting = this.chunkCuts.get(key);
    if (!cutting) {
      cutting = this.cut(handle, version).finally(() => this.chunkCuts.delete(key));
      this.chunkCuts.set(key, cutting);
    }
    return cutting;
  }

  private async cut(handle: FileHandle, version: BigIntStats): Promise<CdcChunk[]> {
    const startedMs = Date.now();
    try {
      const cut = await chunkFile(handle, this.limits);
      if (!sameVersion(version, cut.version)) throw new PeerShareError('FILE_CHANGED');
      this.chunkLists.put(version, cut.chunks, startedMs);
      return cut.chunks;
    } catch (err) {
      if (err instanceof PeerShareError && err.code === 'TOO_LARGE') this.chunkLists.putTooLarge(version, startedMs);
      throw err;
    }
  }

  /** DATA: the chunks asked for (spec 15.3), as share.read sends blocks; the version is the one whose block list hashes to `fileHash`. */
  private async readChunks(session: SessionContext, request: ShareRequest & { type: 'share.readChunks' }, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    const { handle } = await this.share.openFile(request.path);
    try {
      const version = await handle.stat({ bigint: true });
      const recent = this.recentOf(version);
      const { manifest, chunks } = recent ?? (await this.chunksOf(handle, version));
      if (manifest.fileHash.toString('hex') !== request.fileHash) {
        throw new PeerShareError('FILE_CHANGED', 'The file is not the version asked for: it changed since its chunks were sent.');
      }
      const past = request.chunks.find(([, end]) => end > chunks.length);
      if (past) throw new PeerShareError('INVALID_ARGUMENT', `The file has ${chunks.length} chunks; chunk ${past[1] - 1} was asked for.`);
      await this.sendPieces(session, handle, version, piecesOfChunks(chunks, request.chunks, recent !== undefined), reply, signal);
      return {};
    } finally {
      await handle.close();
    }
  }

  /**
   * DATA: `pieces` of the open file, in order, each at most TRANSFER_CHUNK_BYTES. The next piece is
   * read while CHUNKS_QUEUED wait to be written; after every read the open file's version is
   * compared with `version` (spec 7.2 "sharer side"), so bytes of another version are never sent.
   */
  private async sendPieces(session: SessionContext, handle: FileHandle, version: BigIntStats, chunks: Iterator<Chunk>, reply: ReplyWriter, signal: AbortSignal): Promise<void> {
    const pool = new ChunkPool();
    // Chunks handed to the connection and not yet taken by the stream: a few, so the stream
    // always has the next one while this loop waits for a read.
    const queued: { chunk: Buffer; written: Promise<void> }[] = [];
    let next = chunks.next();
    let reading = next.done ? undefined : readChunk(handle, pool, next.value);
    try {
      while (reading) {
        const chunk = await reading;
        const piece = next.value as Chunk;
        reading = undefined;
        // Checked with no read in flight, so nothing is left pending when it throws.
        if (!sameVersion(version, fstatSync(handle.fd, { bigint: true }))) throw new PeerShareError('FILE_CHANGED');
        if (piece.hash && !blake3(chunk).equals(piece.hash)) {
          pool.give(chunk);
          throw new PeerShareError('FILE_CHANGED', 'The file changed since its chunks were listed.');
        }
        throwIfAborted(signal);
        session.checkAllowed(true);
        next = chunks.next();
        if (!next.done) reading = readChunk(handle, pool, next.value);
        const written = reply.data(chunk);
        written.catch(() => undefined);
        queued.push({ chunk, written });
        if (queued.length >= CHUNKS_QUEUED) await this.taken(queued.shift()!, pool);
      }
      while (queued.length > 0) await this.taken(queued.shift()!, pool);
    } finally {
      // Never leave a read pending on a file about to be closed.
      await reading?.catch(() => undefined);
    }
  }

  /** A chunk the stream has taken: counted, and its buffer back in the pool. */
  private async taken(queued: { chunk: Buffer; written: Promise<void> }, pool: ChunkPool): Promise<void> {
    await queued.written;
    this.stats.fileBytesSent += queued.chunk.length;
    pool.give(queued.chunk);
  }

  /**
   * The folder stream (spec 6.3): depth first in name order, `dir` before a folder's contents;
   * a file of at most MAX_INLINE_FILE_BYTES inline (`file` with its block size and hash, then its
   * bytes), a larger one as `fileRef` for the requester to fetch with manifest + read; a file that
   * cannot be sent is a `skipped` record. Writes run up to SMALL_FILE_PIPELINE records ahead of
   * the stream, so many small files are not paced by one write each.
   */
  private async tree(session: SessionContext, remotePath: string, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    const inlineMost = MAX_INLINE_FILE_BYTES;
    const pending: Promise<void>[] = [];
    let count = 0;
    const send = async (written: Promise<void>): Promise<void> => {
      written.catch(() => undefined);
      pending.push(written);
      if (pending.length >= SMALL_FILE_PIPELINE) await pending.shift();
    };
    try {
      for await (const item of this.share.walk(remotePath)) {
        throwIfAborted(signal);
        session.checkAllowed(true);
        if (item.kind === 'dir') {
          await send(reply.message({ type: 'dir', path: item.relPath }));
          continue;
        }
        let record: TreeFile;
        try {
          record = await this.treeFile(item, inlineMost);
        } catch (err) {
          const { code, message } = endErrorFor(toPeerShareError(err, 'INTERNAL'));
          // An excluded file is never named to a peer, as a listing never shows it: the walk
          // does not look at each file (a hard link to the identity key, say), the open does
          // (round 13: its name went out as skipped, EXCLUDED).
          if (code === 'EXCLUDED') continue;
          await send(reply.message({ type: 'skipped', path: item.relPath, code, message }));
          continue;
        }
        count++;
        if (record.kind === 'ref') {
          await send(reply.message({ type: 'fileRef', path: item.relPath, size: record.size, mtimeMs: record.mtimeMs }));
          continue;
        }
        const { data, mtimeMs } = record;
        const manifest = manifestOfBytes(data, blockSizeFor(data.length));
        // Queued in call order: the header, then its bytes; the bytes' write settles after the header's.
        const header = reply.message({ type: 'file', path: item.relPath, size: data.length, mtimeMs, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') });
        if (data.length > 0) header.catch(() => undefined);
        await send(data.length > 0 ? reply.data(data) : header);
        this.stats.fileBytesSent += data.length;
      }
      while (pending.length > 0) await pending.shift();
    } finally {
      // Rejections of writes still queued are the answer's end (cancel, closed), already handled.
      pending.length = 0;
    }
    return { count };
  }

  /** A walked file: read whole if small (inline), else its size and time for a `fileRef`. */
  private async treeFile(item: WalkItem & { kind: 'file' }, inlineMost: number): Promise<TreeFile> {
    const whole = this.share.readWalkedFileSync(item, inlineMost);
    if (whole) return { kind: 'inline', ...whole };
    // Larger, or no /proc/self/fd to check a synchronous open by: every check of openFile.
    const { handle, stat } = await this.share.openFile(item.remotePath);
    try {
      const mtimeMs = Math.floor(stat.mtimeMs);
      if (stat.size > inlineMost) return { kind: 'ref', size: stat.size, mtimeMs };
      // A file changed within a clock tick is read once it settles (settledVersion: a torn read
      // passes the times); one still being written is read as it is, as before.
      const first = await handle.stat({ bigint: true });
      const before = (await settledVersion(first, () => handle.stat({ bigint: true }))) ?? (await handle.stat({ bigint: true }));
      const data = Buffer.allocUnsafe(Number(before.size));
      await readFully(handle, data, data.length, 0);
      // ctime too: a write that puts the old mtime back (utimes) still changes it.
      if (!sameVersion(before, await handle.stat({ bigint: true }))) throw new PeerShareError('FILE_CHANGED');
      return { kind: 'inline', data, mtimeMs: Math.floor(Number(before.mtimeNs / 1_000_000n)) };
    } finally {
      await handle.close();
    }
  }
}

type TreeFile = { kind: 'inline'; data: Buffer; mtimeMs: number } | { kind: 'ref'; size: number; mtimeMs: number };

/** One connection's state: its peer, its trust check, and the file versions its peer had rehashed (shared by the peer's connections). */
class SessionContext {
  readonly peerId: string;
  readonly peerFrameBytes: number;
  /** share.watch requests open on this connection (spec 14.2). */
  watches = 0;
  private readonly stillAllowed: () => boolean;
  private checkedAt = 0;

  constructor(
    options: SessionOptions,
    private readonly rehashed: Set<string>,
  ) {
    this.peerId = options.peerId;
    this.peerFrameBytes = options.peerFrameBytes ?? MIN_PEER_FRAME_BYTES;
    this.stillAllowed = options.stillAllowed ?? (() => true);
  }

  /** PEER_UNTRUSTED once the peer may no longer read us: on every request, and during a transfer at most every TRUST_RECHECK_MS. */
  checkAllowed(duringTransfer: boolean): void {
    const now = performance.now();
    if (duringTransfer && now - this.checkedAt < TRUST_RECHECK_MS) return;
    this.checkedAt = now;
    if (this.stillAllowed()) return;
    throw new PeerShareError('PEER_UNTRUSTED', 'This peer is no longer trusted by the sharer.');
  }

  /** `rehash` is honoured once per file version per peer (spec 6.2): hashing 1 GiB must not be a free request. */
  mayRehash(version: BigIntStats): boolean {
    const key = versionKey(version);
    if (this.rehashed.has(key) || this.rehashed.size >= MAX_REHASHES_PER_PEER) return false;
    this.rehashed.add(key);
    return true;
  }
}

interface Chunk {
  offset: number;
  length: number;
  /** When given, the bytes read must hash to it, else FILE_CHANGED (a chunk sent from recentLists). */
  hash?: Buffer;
}

/** The byte ranges to send for `ranges`, block by block, each block cut at TRANSFER_CHUNK_BYTES. */
function* chunksOf(manifest: BlockManifest, ranges: BlockRanges): Generator<Chunk> {
  for (const [first, end] of ranges) {
    for (let index = first; index < end; index++) {
      const { offset, length } = blockRange(manifest, index);
      for (let done = 0; done < length; done += TRANSFER_CHUNK_BYTES) {
        yield { offset: offset + done, length: Math.min(TRANSFER_CHUNK_BYTES, length - done) };
      }
    }
  }
}

/** The byte ranges to send for chunk index `ranges` (spec 15.3): each chunk (≤ 256 KiB) in one piece. */
function* piecesOfChunks(chunks: readonly CdcChunk[], ranges: BlockRanges, withHashes: boolean): Generator<Chunk> {
  for (const [first, end] of ranges) {
    for (let index = first; index < end; index++) {
      const { offset, length, hash } = chunks[index];
      yield withHashes ? { offset, length, hash } : { offset, length };
    }
  }
}

/** Read buffers of TRANSFER_CHUNK_BYTES, given back once the stream has taken their bytes. */
class ChunkPool {
  private readonly free: Buffer[] = [];

  take(length: number): Buffer {
    return (this.free.pop() ?? Buffer.allocUnsafe(TRANSFER_CHUNK_BYTES)).subarray(0, length);
  }

  give(chunk: Buffer): void {
    // take() allocates whole buffers of their own (too large for Node's shared pool), so a slice's
    // ArrayBuffer is the whole buffer; at most a few are ever out at once.
    if (this.free.length < 4) this.free.push(Buffer.from(chunk.buffer, 0, TRANSFER_CHUNK_BYTES));
  }
}

async function readChunk(handle: FileHandle, pool: ChunkPool, chunk: Chunk): Promise<Buffer> {
  const buffer = pool.take(chunk.length);
  try {
    await readFully(handle, buffer, chunk.length, chunk.offset);
  } catch (err) {
    pool.give(buffer);
    throw err;
  }
  return buffer;
}

function throwIfAborted(signal: AbortSignal): void {
  if (!signal.aborted) return;
  throw signal.reason instanceof PeerShareError ? signal.reason : new PeerShareError('CANCELLED');
}
