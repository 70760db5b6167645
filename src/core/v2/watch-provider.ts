import { PeerShareError } from '../errors';
import type { Limits } from '../limits';
import type { Share } from '../share';
import { WatchHub, type FolderChange } from '../watch';
import type { ReplyWriter } from './connection';
import { MAX_FRAME_CEILING_BYTES } from './frames';
import type { CapabilityMessage } from './messages';
import { MAX_WATCH_BATCH_CHANGES, parseWatchRequest } from './watch-messages';

/**
 * The responder's side of `share.watch` (docs/protocol-v2.md 14): `REPLY watching` once the
 * folder's watcher runs, then each coalesced batch as `REPLY changes` (cut to fit the peer's frame)
 * or one `REPLY resync`, until the requester's CANCEL. Each REPLY waits for credit, meanwhile the
 * watch's pending changes stay bounded (watch.ts). Part of share/1's provider: the same paths,
 * excludes and trust check per request.
 */

/** What the provider knows of one connection (share-provider.ts's SessionContext). */
export interface WatchSession {
  /** The peer's proved ID: its tree watches count against maxTreeWatchesPerPeer across its connections. */
  readonly peerId: string;
  readonly peerFrameBytes: number;
  /** Watches open on this connection. */
  watches: number;
  /** PEER_UNTRUSTED once the peer may no longer read us (at most every TRUST_RECHECK_MS during a watch). */
  checkAllowed(duringTransfer: boolean): void;
}

/** What a REPLY's frame holds beside its changes: `{"type":"changes","changes":[` and `]}`. */
const CHANGES_ENVELOPE_BYTES = 64;
/**
 * A quiet watch asks this often whether its peer may still read us: checked only before a batch,
 * a revoked peer's watch of a folder that does not change held its connection open (past
 * idleTimeoutMs) and the folder's watcher for as long as it liked (found by watch-attacks).
 */
const QUIET_TRUST_RECHECK_MS = 1000;

export class WatchProvider {
  readonly hub: WatchHub;
  /** Tree watches open per peer, across its connections. */
  private readonly treeWatches = new Map<string, number>();

  constructor(
    share: Share,
    private readonly limits: Limits,
  ) {
    this.hub = new WatchHub(share, limits);
  }

  async answer(session: WatchSession, message: CapabilityMessage, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    const { path, tree } = parseWatchRequest(message);
    // Counted before the folder is looked at: a flood of watches costs no disk.
    if (session.watches >= this.limits.maxWatchesPerConnection) {
      throw new PeerShareError('BUSY', `At most ${this.limits.maxWatchesPerConnection} folders may be watched at once on one connection.`);
    }
    const peerTrees = this.treeWatches.get(session.peerId) ?? 0;
    if (tree && peerTrees >= this.limits.maxTreeWatchesPerPeer) {
      throw new PeerShareError('BUSY', `At most ${this.limits.maxTreeWatchesPerPeer} folders may be watched with everything in them (followed) at once by one peer.`);
    }
    session.watches++;
    if (tree) this.treeWatches.set(session.peerId, peerTrees + 1);
    // The requester's CANCEL frees its room at once: the END it is sent at once says the watch is
    // over, and the one it opens next (the Peers view stops its oldest and opens another, in one
    // write) must not find the room still taken while this handler unwinds.
    let counted = true;
    const leave = (): void => {
      if (!counted) return;
      counted = false;
      session.watches--;
      if (!tree) return;
      const left = (this.treeWatches.get(session.peerId) ?? 1) - 1;
      if (left > 0) this.treeWatches.set(session.peerId, left);
      else this.treeWatches.delete(session.peerId);
    };
    signal.addEventListener('abort', leave, { once: true });
    try {
      const watch = tree ? await this.hub.watchTree(path, signal) : await this.hub.watch(path, signal);
      const untrusted = new AbortController();
      const recheck = setInterval(() => {
        try {
          session.checkAllowed(false);
        } catch (err) {
          untrusted.abort(err);
        }
      }, QUIET_TRUST_RECHECK_MS);
      recheck.unref();
      try {
        await reply.message({ type: 'watching' });
        const ended = AbortSignal.any([signal, untrusted.signal]);
        for (;;) {
          const batch = await watch.next(ended);
          session.checkAllowed(true);
          if (batch.kind === 'resync') await reply.message({ type: 'resync' });
          else for (const changes of batchesOf(batch.changes, session.peerFrameBytes)) await reply.message({ type: 'changes', changes });
        }
      } finally {
        clearInterval(recheck);
        watch.close();
      }
    } finally {
      signal.removeEventListener('abort', leave);
      leave();
    }
  }
}

/** Changes in REPLYs of at most MAX_WATCH_BATCH_CHANGES that fit the peer's frame. */
function* batchesOf(changes: FolderChange[], peerFrameBytes: number): Generator<FolderChange[]> {
  const most = Math.min(peerFrameBytes, MAX_FRAME_CEILING_BYTES) - CHANGES_ENVELOPE_BYTES;
  let batch: FolderChange[] = [];
  let bytes = 0;
  for (const change of changes) {
    const size = Buffer.byteLength(JSON.stringify(change), 'utf8') + 1;
    if (batch.length > 0 && (batch.length >= MAX_WATCH_BATCH_CHANGES || bytes + size > most)) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(change);
    bytes += size;
  }
  if (batch.length > 0) yield batch;
}
