/**
 * Every limit the peer enforces, in one place. Each is an option so tests can shrink it to
 * milliseconds and bytes; the defaults are safe for a peer that strangers can reach.
 */
export interface Limits {
  /** TLS handshake must finish within this time. */
  handshakeTimeoutMs: number;
  /** A connection through HyperDHT (finding the peer, hole punching, then TLS) must be open within this time. */
  dhtConnectTimeoutMs: number;
  /** After the handshake, the client's hello must arrive within this time. */
  helloTimeoutMs: number;
  /** How long a nearby peer's request to connect waits for the sharer's answer; no answer is Deny. */
  approvalTimeoutMs: number;
  /** A connection with no request in flight is closed after this long. */
  idleTimeoutMs: number;
  /** Absolute deadline for one incoming message, from its first byte to its last (defeats byte drips). */
  messageTimeoutMs: number;
  /** A transfer whose reader accepts no bytes for this long is abandoned; the client likewise gives up on a silent peer. */
  stallTimeoutMs: number;
  /** Connections of peers allowed to read us (trusted, paired by invite or allowed), served at once; beyond, BUSY. */
  maxConnections: number;
  /**
   * Connections not yet authenticated (in the TLS handshake, or past it with a certificate we do
   * not trust and no hello yet), in all. They have their own budget, apart from trusted peers':
   * when it is full the oldest of them is closed (OpenSSH's MaxStartups), so strangers cannot
   * fill the slots a trusted peer needs.
   */
  maxUnauthenticatedConnections: number;
  /** The same, from one source address; as many as one peer may hold, so a peer's own burst fits. */
  maxUnauthenticatedPerSource: number;
  /**
   * TLS handshakes one source address (an IPv6 /64) may start per second, with a burst of twice
   * this; over it, a socket is closed before any TLS work. A handshake that proves a trusted
   * certificate is given back, so this binds strangers, not a peer opening a connection per file.
   */
  handshakesPerSecondPerSource: number;
  /**
   * Bytes a client may send before its TLS handshake completes. One certificate needs about
   * 1 KiB; a long chain costs the sharer CPU (about 80 ms for 240 certificates), so more is
   * refused and charged to the source's handshake rate (a token per KiB).
   */
  maxHandshakeBytes: number;
  /** Requests to connect (nearby peers) waiting for the sharer's answer, in all; beyond, BUSY at once. They hold no trusted peer's slot. */
  maxPendingApprovals: number;
  /** The same, from one source address. */
  maxPendingApprovalsPerSource: number;
  /** Requests being answered at once across all connections. */
  maxConcurrentRequests: number;
  /** Connections one peer (one certificate) may hold at once, so one peer cannot take them all. */
  maxConnectionsPerPeer: number;
  /** Requests one peer may have answered at once, so one peer cannot starve the others. */
  maxRequestsPerPeer: number;
  /** Largest control message (JSON) accepted, in bytes. */
  maxMessageBytes: number;
  /** Largest data frame accepted, in bytes. */
  maxDataFrameBytes: number;
  /**
   * Blocks one file may have: its block list carries a 32-byte BLAKE3 hash per block, and the
   * receiver holds it whole. 131,072 blocks of 16 MiB (the largest block) are 2 TiB.
   */
  maxFileBlocks: number;
  /** Bytes of one file's block list (28-byte header and 32 bytes per block) accepted from a peer. */
  maxManifestBytes: number;
  /** v2: block ranges one `share.read` may name; a fragmented resume splits into several reads. */
  maxReadRanges: number;
  /** Content-defined chunks of one file (share.chunks, docs/protocol-v2.md 15): a chunk list is held whole, 36 bytes a chunk (4.5 MiB at the default). */
  maxFileChunks: number;
  /**
   * Memory the sharer keeps chunk lists in (cdc.ts ChunkListCache), least recently used evicted;
   * as much again at most for the lists of versions just changed, kept for a short while
   * (share-provider.ts recentLists, RECENT_LISTS).
   */
  chunkCacheBytes: number;
  /** v2 share.watch: watches a peer may have open on one connection; more are BUSY (docs/protocol-v2.md 14.2). */
  maxWatchesPerConnection: number;
  /** v2 share.watch: changes of one watch are gathered this long before a batch goes (at most one batch per interval). */
  watchBatchIntervalMs: number;
  /** v2 share.watch: pending changes of one watch; past it they become one `resync` (list again). */
  maxWatchChanges: number;
  /** v2 share.watch of a subtree (`tree`, docs/protocol-v2.md 14.5): folders one such watch may cover, each with a system watcher while watched; more are TOO_LARGE. */
  maxTreeWatchFolders: number;
  /** v2 share.watch of a subtree: such watches one peer may have open across all its connections (a follow holds one); more are BUSY. */
  maxTreeWatchesPerPeer: number;
  /** v2: credit every request we open starts with (advertised as `window`); bounds what one answer may hold here. */
  requestWindowBytes: number;
  /** v2: largest DATA frame we send for one answer while another answer is open, so a small answer is not stuck behind a transfer. */
  interleaveSliceBytes: number;
  /** v2: events a peer may send per second on one connection, after a burst of `maxEventBurst`; more closes it. */
  maxEventsPerSecond: number;
  /** v2: events a peer may send at once before `maxEventsPerSecond` applies. */
  maxEventBurst: number;
  /** v2: largest event (JSON) accepted, in bytes. */
  maxEventBytes: number;
  /** Entries a single listing may return (both sides enforce it). */
  maxListEntries: number;
  /** Bytes of names (UTF-8) a single listing may hold, so long names cannot multiply the count's memory. */
  maxListBytes: number;
  /** Entries this side sends per listing message, so no listing becomes one giant message (v2 caps it at MAX_LIST_BATCH_ENTRIES, 1000). */
  listBatchEntries: number;
  /** Files and folders a single folder download may contain (both sides enforce it). */
  maxTreeFiles: number;
  /** Reports of files the sharer could not send that one folder download keeps; more are only counted. */
  maxSkippedReports: number;
  /** Every request's overall deadline starts at this, whatever arrives meanwhile... */
  requestTimeoutMs: number;
  /** ...and grows by the time its announced bytes take at this rate, so a large file may take its time. */
  minTransferBytesPerSecond: number;
  /** Folder nesting a folder download may descend. */
  maxTreeDepth: number;
  /** Longest path accepted, in UTF-8 bytes. */
  maxPathBytes: number;
  /** Files whose block lists the sharer keeps on disk (<home>/block-cache), so a file sent again, even after a restart, is not hashed again; the least recently used go first. */
  blockCacheEntries: number;
  /** Disk space those entries may take, each counted in whole 4 KiB blocks. */
  blockCacheBytes: number;
  /** How long a client listens for a trusted peer's announcements when it is not where it was (discovery asks at once, so sharers answer within milliseconds). */
  announcementWaitMs: number;
  /** Addresses announced for one peer ID that a client tries: an announcement is only a claim, so strangers cannot aim it at many. */
  maxAnnouncedAddressesTried: number;
  /** Nearby peers (announcement table entries) remembered in all; see discovery.ts for who gives way when full. */
  maxNearbyPeers: number;
  /** Entries one source address may hold in that table; its least recently heard gives way first. */
  maxNearbyPeersPerSource: number;
  /** Largest announcement packet read; larger ones are dropped unread. */
  maxAnnouncementBytes: number;
  /** `nearby`: certificates of announced peers checked at once, and the time all checks may take. */
  nearbyProbesAtOnce: number;
  nearbyProbeDeadlineMs: number;
  /** Longest invite accepted (characters), before it is parsed. */
  maxInviteChars: number;
  /** Folders a sharer holds open (pinned against renames) at once; the least recently used is closed first. */
  maxOpenFolders: number;
  /** Downloads the editor runs at once; more wait their turn. */
  maxParallelDownloads: number;
  /** Entries (files and folders as chosen, not every file inside) one send/1 offer may name (docs/protocol-v2.md 13). */
  maxOfferEntries: number;
  /** Largest snippet of text a send/1 offer may carry (UTF-8 bytes). */
  maxSnippetBytes: number;
}

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  handshakeTimeoutMs: 10_000,
  dhtConnectTimeoutMs: 20_000,
  helloTimeoutMs: 10_000,
  approvalTimeoutMs: 60_000,
  idleTimeoutMs: 5 * 60_000,
  messageTimeoutMs: 10_000,
  stallTimeoutMs: 30_000,
  maxConnections: 64,
  maxUnauthenticatedConnections: 64,
  maxUnauthenticatedPerSource: 16,
  handshakesPerSecondPerSource: 10,
  maxHandshakeBytes: 8 * 1024,
  maxPendingApprovals: 4,
  maxPendingApprovalsPerSource: 1,
  maxConcurrentRequests: 32,
  maxConnectionsPerPeer: 16,
  maxRequestsPerPeer: 8,
  maxMessageBytes: 1024 * 1024,
  maxDataFrameBytes: 1024 * 1024,
  maxFileBlocks: 131_072,
  maxManifestBytes: 28 + 32 * 131_072,
  maxReadRanges: 1024,
  // At least 2 GiB at the smallest chunks (16 KiB), 8 GiB at the average (64 KiB).
  maxFileChunks: 131_072,
  chunkCacheBytes: 64 * 1024 * 1024,
  // Half the default `requests` (8): watches never crowd out transfers (docs/protocol-v2.md 14.2).
  maxWatchesPerConnection: 4,
  watchBatchIntervalMs: 250,
  maxWatchChanges: 1000,
  maxTreeWatchFolders: 4096,
  // Arming a tree watch costs the sharer a look at every folder in it (64 of 2,041 folders each took
  // 26 s, found by watch-attacks): one peer may make it do that a few times, not 16 × 4.
  maxTreeWatchesPerPeer: 8,
  // 4 frames of 1 MiB in flight per request; 4 transfers at once hold 16 MiB (docs/protocol-v2.md 9).
  requestWindowBytes: 4 * 1024 * 1024,
  interleaveSliceBytes: 256 * 1024,
  maxEventsPerSecond: 10,
  maxEventBurst: 50,
  maxEventBytes: 64 * 1024,
  // Sized so a whole listing, or a folder download's bookkeeping, stays well inside the client's
  // 100 MiB memory goal whatever a hostile sharer sends.
  maxListEntries: 200_000,
  maxListBytes: 16 * 1024 * 1024,
  listBatchEntries: 1000,
  maxTreeFiles: 200_000,
  maxSkippedReports: 1000,
  requestTimeoutMs: 120_000,
  minTransferBytesPerSecond: 16 * 1024,
  maxTreeDepth: 64,
  maxPathBytes: 4096,
  // A block list is 92 bytes (2 blocks) to 64 KiB (below 32 GiB), one 4 KiB block on disk for most files.
  blockCacheEntries: 100_000,
  blockCacheBytes: 256 * 1024 * 1024,
  announcementWaitMs: 1500,
  maxAnnouncedAddressesTried: 4,
  maxNearbyPeers: 256,
  maxNearbyPeersPerSource: 16,
  maxAnnouncementBytes: 1024,
  nearbyProbesAtOnce: 8,
  nearbyProbeDeadlineMs: 5000,
  maxInviteChars: 4096,
  maxOpenFolders: 128,
  maxParallelDownloads: 3,
  maxOfferEntries: 1000,
  maxSnippetBytes: 64 * 1024,
});

/** Size of the chunks files are read and sent in. */
export const TRANSFER_CHUNK_BYTES = 1024 * 1024;

/** Received block buffers a connection keeps for reuse (share-client.ts BlockBuffers): what circulates while a file's writes are in flight (download.ts), with room to spare. */
export const MAX_FREE_BLOCK_BUFFER_BYTES = 16 * 1024 * 1024;

/** The one buffer a socket reads into (reused-read-buffer.ts): a TLS read brings one record, at most 16 KiB; a plain socket up to 64 KiB. */
export const REUSED_READ_BUFFER_BYTES = 64 * 1024;

/**
 * Parts of one answer waiting for a consumer that reads frames as they are (no AnswerReader, whose
 * parts are merged): about 200 bytes each, so 3 MiB at most. Well above what an honest peer's
 * frames of a window make (its DATA frames are slices of up to 256 KiB).
 */
export const MAX_QUEUED_ANSWER_PARTS = 16_384;

/**
 * Files up to this size are hashed whole in memory each time they are asked for, not cached
 * (block-cache.ts): reading one is cheaper than opening and checking an entry. The same size as
 * the protocol's inline files (v2/share-messages.ts MAX_INLINE_FILE_BYTES), which are read whole.
 */
export const SMALL_FILE_BYTES = 256 * 1024;

/**
 * A large file being written is flushed to disk behind its writes, once per this many bytes
 * (landing.ts FlushBehind), so the fsync before it takes its name has only the last stretch left.
 */
export const FLUSH_BEHIND_BYTES = 64 * 1024 * 1024;

/**
 * A file at least this large is cut into content-defined chunks by two threads at once where the
 * machine has a second core (cdc.ts chunkFile): below it, starting the helper thread costs about
 * what it saves.
 */
export const PARALLEL_CUT_FROM_BYTES = 128 * 1024 * 1024;

/**
 * Helper threads cutting files at once in this process, at most (and never more than the cores
 * but one): each holds a few MiB and a thread, and a peer asking for the chunks of many large
 * files at once must not make as many threads. Past it, a file is cut in one pass.
 */
export const MAX_CUT_HELPERS = 2;

/** Files a folder download reads ahead of the socket on the sharer's side. */
export const SMALL_FILE_PIPELINE = 16;

// Timings that are not a peer's to choose and that no user has reason to change.

/** After a goodbye (or a refused handshake), how long a peer that neither reads nor hangs up is waited for before the stream is destroyed. */
export const CLOSE_GRACE_MS = 1000;

/** During a transfer, the sharer re-checks that the peer is still trusted at most this often. */
export const TRUST_RECHECK_MS = 50;

/** A file changed less than this before its hashing started is not cached (block-cache.ts, the racy rule). */
export const RACY_TIMESTAMP_MS = 3000;
/**
 * How long a sharer keeps the block and chunk lists of a version too recent to cache (the racy
 * rule) for the share.readChunks that follows its share.chunks, and how many it keeps: a requester
 * asks for the chunks it lacks once its own copy is cut (about a second per GiB), so a large file
 * just changed is not hashed and cut a second time (share-provider.ts recentLists).
 */
export const RECENT_LIST_MS = 30_000;
export const RECENT_LISTS = 2;

/** A block-cache temporary file this old was left by a writer that died; the cache's scan removes it. */
export const STALE_CACHE_TEMP_MS = 10 * 60_000;

export function resolveLimits(overrides?: Partial<Limits>): Limits {
  const limits: Limits = { ...DEFAULT_LIMITS };
  for (const [key, value] of Object.entries(overrides ?? {})) {
    if (!(key in DEFAULT_LIMITS)) throw new TypeError(`Unknown limit: ${key}`);
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      throw new TypeError(`Limit ${key} must be a positive number, got ${String(value)}`);
    }
    (limits as unknown as Record<string, number>)[key] = value;
  }
  return limits;
}
