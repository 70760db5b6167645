import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { BlockCache } from './block-cache';
import { downloadFile, downloadFolder, type FileSource } from './download';
import { PeerShareError, toPeerShareError, type ErrorCode } from './errors';
import { exists, keepBothName, partialPathForHash, removeName } from './landing';
import { TRUST_RECHECK_MS, type Limits } from './limits';
import { collisionKey, inspectReceivedName } from './names';
import { sanitizeForDisplay } from './protocol';
import type { IncomingOffer, ReceivePolicy, ReceiveResult, ReceiveSettings, ReceivedEntryResult } from './send-policy';
import { Share } from './share';
import type { TrustStore } from './trust';
import type { Connection, ReplyWriter, RequestHandler } from './v2/connection';
import type { Served } from './v2/handshake';
import { MAX_PEER_MESSAGE_CHARS, type CapabilityMessage } from './v2/messages';
import {
  OUTBOX_REQUESTS,
  SEND_CAPABILITY,
  parseSendRequest,
  type EntryResult,
  type OfferEntry,
  type SendOffer,
  type Snippet,
} from './v2/send-messages';
import { ShareClient } from './v2/share-client';
import { ShareProvider } from './v2/share-provider';

/**
 * Capability send/1 (docs/protocol-v2.md 13): either side of a connection offers files, folders
 * or a snippet; the other side's policy (send-policy.ts) decides; the receiver pulls what it
 * accepted from the sender's outbox with share/1's requests and readers, so what lands is verified,
 * atomic and resumable exactly as a download (download.ts). One SendService per installation; one
 * SendSession per connection, which serves `send/1` to its peer and offers over it.
 */
export interface SendServiceOptions {
  /** Our own peer ID: our own certificate (another window) is trusted like a peer. */
  ownPeerId: string;
  trust: TrustStore;
  settings: ReceiveSettings;
  limits: Limits;
  /** Private paths an outbox never serves (the identity folder). */
  privatePaths: string[];
  /** The block cache offers are hashed with, and outboxes serve block lists from. */
  blockCache: () => Promise<BlockCache>;
  policy?: ReceivePolicy;
  log?: (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void;
}

/** What a sender sees of each entry once the offer ended. */
export interface SentEntry {
  name: string;
  type: 'file' | 'dir';
  size: number;
  status: 'received' | 'declined' | 'failed';
  /** Why it failed, in the receiver's code (its own disk, its checks): the peer's word, never a failure of ours. */
  code?: ErrorCode;
  /** The receiver's words (escaped, bounded), or why we stopped. */
  message?: string;
}

export interface SendResult {
  offerId: string;
  peer: { id: string; name: string };
  entries: SentEntry[];
  /** File bytes the receiver pulled from our outbox. */
  bytes: number;
  /** The receiver refused without asking anyone (its setting, or it takes no offers). */
  refused?: boolean;
  /** A snippet was handed to the receiver's policy. */
  shown?: boolean;
}

export interface SendOptions {
  note?: string;
  signal?: AbortSignal;
  /** Bytes pulled so far, of the accepted entries' total. */
  onProgress?: (progress: { bytes: number; totalBytes: number }) => void;
  /** Called once the receiver answered, with what it accepted. */
  onAnswer?: (accepted: boolean[]) => void;
  /**
   * Folders (the workspace's, the CLI's current one) an entry's `path` hint is given relative to:
   * the first that holds it. The receiver's review compares with the same path on its side.
   */
  placesFrom?: string[];
}

type Deferred<T> = { promise: Promise<T>; resolve: (value: T) => void; reject: (err: PeerShareError) => void };

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: PeerShareError) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/** One offered entry on the sender's side: the share (one root) it is served from, and its path there. */
interface OutboxEntry {
  entry: OfferEntry;
  provider: ShareProvider;
  /** The share path of the entry itself: `<root>` for a folder, `<root>/<file name>` for a file. */
  sharePath: string;
  handler?: RequestHandler;
}

/** An offer we made on this connection: open to this peer only, for its accepted entries, until done or cancelled. */
interface OutgoingOffer {
  id: string;
  entries: OutboxEntry[];
  accepted?: Set<string>;
  answer: Deferred<boolean[]>;
  done: Deferred<EntryResult[] | 'cancelled'>;
  bytes: number;
  totalAccepted: number;
  onProgress?: SendOptions['onProgress'];
}

/** An offer made to us on this connection. */
interface IncomingState {
  id: string;
  /** Fires on the sender's cancel, ours (cancelIncoming) or the connection's end. */
  abort: AbortController;
  /** A person (or the sender) cancelled: nothing of the offer is kept. A dropped connection keeps partial files. */
  cancelled: boolean;
}

/** What an offer nobody answered in time says, on either side. */
const NOT_ANSWERED = 'The receiver did not answer in time.';
/** Why the rest of an offer is not taken: the sender's trust was revoked while it arrived. */
const REVOKED = 'This peer is no longer trusted here; nothing more of the offer was taken.';

export class SendService {
  policy?: ReceivePolicy;
  readonly limits: Limits;
  private readonly sessions = new Set<SendSession>();
  /** Peers with an offer or snippet before the policy now, across their connections: one at a time each (13.3 row 5). */
  readonly asking = new Set<string>();
  /**
   * Partial files being received into by offers, by path, with how many pulls use each: a cancel
   * removes its entry's partial file only when no other offer (another peer's, say, of the same
   * file to the same place) is receiving into it.
   */
  readonly pulling = new Map<string, number>();
  /**
   * Offers (and snippets) of each peer being dealt with now, from the offer to its send.done,
   * across its connections: at most `maxRequestsPerPeer` each, as its requests are. What the
   * receiver holds for a peer stays bounded even when the peer never answers (a send.answer left
   * open queues everything behind it).
   */
  readonly inProgress = new Map<string, number>();

  constructor(readonly options: SendServiceOptions) {
    this.policy = options.policy;
    this.limits = options.limits;
  }

  /** The send/1 side of one connection with `peerId`: serve `served()` in the handshake, then `attach` the connection. */
  session(peerId: string): SendSession {
    return new SendSession(this, peerId);
  }

  /** @internal */
  register(session: SendSession): void {
    this.sessions.add(session);
  }

  /** @internal */
  unregister(session: SendSession): void {
    this.sessions.delete(session);
  }

  /** An open connection to `peerId` that takes offers (the newest), if any. */
  sessionFor(peerId: string): SendSession | undefined {
    let found: SendSession | undefined;
    for (const s of this.sessions) if (s.peerId === peerId && s.open && s.peerTakesOffers) found = s;
    return found;
  }

  /** Is the peer trusted now, in either direction (Allowed Once is not trust)? */
  isTrusted(peerId: string): boolean {
    if (peerId === this.options.ownPeerId) return true;
    try {
      return this.options.trust.knows(peerId);
    } catch {
      return false;
    }
  }

  /** Cancels an offer made to us, everywhere: the pulls stop and what arrived of it is removed. */
  cancelIncoming(offerId: string): boolean {
    for (const s of this.sessions) if (s.cancelIncoming(offerId)) return true;
    return false;
  }

  /** Offers local files and folders to the peer of an open connection (see SendSession.offerFiles). */
  offerFiles(peerId: string, paths: string[], options: SendOptions = {}): Promise<SendResult> {
    const session = this.sessionFor(peerId);
    if (!session) return Promise.reject(new PeerShareError('CONNECTION_CLOSED', 'No open connection to that peer takes offers.'));
    return session.offerFiles(paths, options);
  }
}

/** send/1 on one connection: its handler (both roles), its outbox, the offers made to us. */
export class SendSession {
  private connection?: Connection;
  private peerName = '';
  private readonly outbox = new Map<string, OutgoingOffer>();
  private readonly incoming = new Map<string, IncomingState>();
  private closedWith?: PeerShareError;

  constructor(
    private readonly service: SendService,
    readonly peerId: string,
  ) {}

  get open(): boolean {
    return this.connection !== undefined && !this.connection.closed;
  }

  /** Whether the peer advertised send/1 (set at attach). */
  peerTakesOffers = false;

  /** What the handshake serves: `send/1`, answered by this session. */
  served(): Served {
    return { [SEND_CAPABILITY]: { params: {}, handler: (request, reply, signal) => this.handle(request, reply, signal) } };
  }

  /** The connection the handshake made, with what the peer serves us and the name it gave. */
  attach(connection: Connection, peer: { name: string; capabilities: string[] }): void {
    this.connection = connection;
    this.peerName = sanitizeForDisplay(peer.name).slice(0, 100);
    this.peerTakesOffers = peer.capabilities.includes(SEND_CAPABILITY);
    this.service.register(this);
    connection.onClose((reason) => this.closed(reason ?? new PeerShareError('CONNECTION_CLOSED', 'The connection closed.')));
  }

  private closed(reason: PeerShareError): void {
    this.closedWith = reason;
    this.service.unregister(this);
    for (const offer of this.outbox.values()) {
      offer.answer.reject(reason);
      offer.done.reject(reason);
    }
    this.outbox.clear();
    // Not a cancel: what arrived of a file stays, to resume when it is offered again.
    for (const state of this.incoming.values()) state.abort.abort(reason);
  }

  private get peer(): { id: string; name: string } {
    return { id: this.peerId, name: this.peerName };
  }

  private get limits(): Limits {
    return this.connection?.limits ?? this.service.limits;
  }

  // ---- answering the peer's send.* requests

  private async handle(request: CapabilityMessage, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    if ((OUTBOX_REQUESTS as readonly string[]).includes(request.type)) return this.serveOutbox(request, reply, signal);
    // A stranger's offer costs nothing more than this (13.3 row 1): nothing of it is parsed.
    if (request.type === 'send.offer' && !this.service.isTrusted(this.peerId)) {
      throw new PeerShareError('PEER_UNTRUSTED', 'This peer takes files only from peers it trusts.');
    }
    const parsed = parseSendRequest(request, this.limits);
    switch (parsed.type) {
      case 'send.offer':
        return this.offered(parsed);
      case 'send.answer': {
        const offer = this.outbox.get(parsed.offer);
        if (!offer || offer.accepted) throw new PeerShareError('NOT_FOUND', 'No such offer is waiting for an answer.');
        if (parsed.accept.length !== offer.entries.length) throw new PeerShareError('PROTOCOL_ERROR', 'The answer does not have one decision per entry.');
        offer.accepted = new Set(offer.entries.filter((_, i) => parsed.accept[i]).map((e) => e.entry.name));
        offer.totalAccepted = offer.entries.filter((_, i) => parsed.accept[i]).reduce((sum, e) => sum + e.entry.size, 0);
        offer.answer.resolve(parsed.accept);
        return {};
      }
      case 'send.done': {
        const offer = this.outbox.get(parsed.offer);
        if (!offer || !offer.accepted) throw new PeerShareError('NOT_FOUND', 'No such offer is being received.');
        this.outbox.delete(parsed.offer);
        if (parsed.cancelled) offer.done.resolve('cancelled');
        else if (parsed.results?.length !== offer.entries.length) throw new PeerShareError('PROTOCOL_ERROR', 'The results do not have one per entry.');
        else offer.done.resolve(parsed.results);
        return {};
      }
      case 'send.cancel': {
        this.cancelIncoming(parsed.offer);
        return {};
      }
    }
  }

  /** Withdraws our question or stops our pulls of this offer, and removes what arrived of it. */
  cancelIncoming(offerId: string): boolean {
    const state = this.incoming.get(offerId);
    if (!state) return false;
    state.cancelled = true;
    state.abort.abort(new PeerShareError('CANCELLED', 'The offer was cancelled.'));
    return true;
  }

  /** `send.offer` (13.3 rows 4-6): never, room, then the policy runs behind END `{}`. */
  private offered(offer: SendOffer): Record<string, unknown> {
    const { policy, options } = this.service;
    if (!policy || options.settings.get(this.peerId) === 'never') return { declined: true };
    if (this.service.asking.has(this.peerId)) throw new PeerShareError('BUSY', 'An earlier offer of yours is still waiting for an answer.');
    const inProgress = this.service.inProgress;
    const held = inProgress.get(this.peerId) ?? 0;
    if (held >= this.limits.maxRequestsPerPeer) throw new PeerShareError('BUSY', 'Too many of your offers are being received here already; wait for one to finish.');
    if (this.incoming.has(offer.offer)) throw new PeerShareError('INVALID_ARGUMENT', 'That offer id is in use on this connection.');
    const state: IncomingState = { id: offer.offer, abort: new AbortController(), cancelled: false };
    this.incoming.set(offer.offer, state);
    this.service.asking.add(this.peerId);
    inProgress.set(this.peerId, held + 1);
    const run = offer.snippet ? this.showSnippet(state, offer.snippet, offer.note, policy) : this.receive(state, offer as SendOffer & { entries: OfferEntry[] }, policy);
    run
      .catch((err: unknown) => options.log?.('warn', `Receiving from ${this.peerName || this.peerId}: ${toPeerShareError(err).message}`))
      .finally(() => {
        this.incoming.delete(offer.offer);
        this.service.asking.delete(this.peerId);
        const left = (inProgress.get(this.peerId) ?? 1) - 1;
        if (left > 0) inProgress.set(this.peerId, left);
        else inProgress.delete(this.peerId);
      });
    return {};
  }

  private async showSnippet(state: IncomingState, snippet: Snippet, note: string | undefined, policy: ReceivePolicy): Promise<void> {
    const shown = policy.showSnippet({ offerId: state.id, peer: this.peer, ...(note !== undefined ? { note } : {}), snippet }, state.abort.signal);
    await withDeadline(shown, this.limits.requestTimeoutMs, state.abort).catch(() => undefined);
  }

  /**
   * The receiver's side of one offer (13.4): the decision (the inbox without a question, or the
   * policy within requestTimeoutMs), the free space, `send.answer`, the pulls, `send.done`.
   */
  private async receive(state: IncomingState, offer: SendOffer & { entries: OfferEntry[] }, policy: ReceivePolicy): Promise<void> {
    const entries = offer.entries as IncomingOffer['entries'];
    const incoming: IncomingOffer = {
      offerId: offer.offer,
      peer: this.peer,
      ...(offer.note !== undefined ? { note: offer.note } : {}),
      entries,
      totalBytes: entries.reduce((sum, e) => sum + e.size, 0),
    };
    const targets = await this.decide(incoming, state, policy)
      .catch((err: unknown) => {
        policy.onNotice?.(`The offer could not be accepted: ${toPeerShareError(err, 'IO_ERROR').message}`, incoming);
        return entries.map(() => undefined);
      })
      .finally(() => this.service.asking.delete(this.peerId));
    // Revoked while the question was open: nothing is taken from it.
    if (!this.service.isTrusted(this.peerId)) targets.fill(undefined);
    const accept = targets.map((t) => t !== undefined);
    const results: ReceivedEntryResult[] = entries.map((e) => ({ name: e.name, status: 'declined' }));
    const connection = this.connection!;
    try {
      await connection.request({ type: 'send.answer', offer: offer.offer, accept }, { signal: state.abort.signal }).result;
    } catch (err) {
      if (accept.some(Boolean)) policy.onNotice?.(`The offer ended before it could be received: ${toPeerShareError(err).message}`, incoming);
      return;
    }
    if (!accept.some(Boolean)) return;
    // Folders the accepted entries need that do not exist yet: the pulls make them, and they go
    // again if nothing landed in them (a lie, a cancel), so a failed offer leaves no empty folder.
    const made = await missingFolders(targets);
    const source = this.outboxOf(connection);
    let bytes = 0;
    const totalBytes = entries.reduce((sum, e, i) => sum + (accept[i] ? e.size : 0), 0);
    for (const [i, entry] of entries.entries()) {
      const target = targets[i];
      if (target === undefined) continue;
      if (state.abort.signal.aborted) {
        results[i] = { name: entry.name, status: 'failed', code: 'CANCELLED', message: 'Cancelled.' };
        continue;
      }
      if (!this.service.isTrusted(this.peerId)) {
        results[i] = { name: entry.name, status: 'failed', code: 'PEER_UNTRUSTED', message: REVOKED };
        continue;
      }
      const before = bytes;
      const onBytes = (entryBytes: number): void => {
        bytes = before + entryBytes;
        policy.onProgress?.({ offerId: offer.offer, bytes, totalBytes, entry: entry.name });
      };
      // Said before the first byte: a sender that stalls at once still leaves the person a
      // progress (and its Cancel) to look at, not nothing (the UI test's paused sender found it).
      onBytes(0);
      try {
        const landed = await this.pull(source, offer.offer, entry, target.path, target.conflict, state, onBytes);
        results[i] = { name: entry.name, status: 'received', target: landed };
      } catch (err) {
        const coded = toPeerShareError(err, 'IO_ERROR');
        results[i] = { name: entry.name, status: 'failed', code: coded.code, message: coded.message };
      }
    }
    const cancelled = state.cancelled;
    if (cancelled) {
      // A cancelled offer leaves nothing: entries that had already landed go too, unless one replaced a file (overwrite).
      for (const [i, r] of results.entries()) {
        if (r.status !== 'received' || !r.target || targets[i]?.conflict === 'overwrite') continue;
        await fs.rm(r.target, { recursive: true, force: true }).catch(() => undefined);
        results[i] = { name: r.name, status: 'failed', code: 'CANCELLED', message: 'Cancelled.' };
      }
    }
    for (const folder of made) await fs.rmdir(folder).catch(() => undefined);
    const result: ReceiveResult = { offerId: offer.offer, peer: this.peer, entries: results, bytes, cancelled };
    if (!connection.closed) {
      const done = cancelled
        ? { type: 'send.done' as const, offer: offer.offer, cancelled: true }
        : { type: 'send.done' as const, offer: offer.offer, results: results.map((r) => ({ status: r.status, ...(r.code ? { code: r.code } : {}), ...(r.message ? { message: r.message.slice(0, MAX_PEER_MESSAGE_CHARS) } : {}) })) };
      await connection.request(done).result.catch(() => undefined);
    }
    policy.onReceived?.(result);
  }

  /**
   * Where each entry lands, or undefined (declined): the inbox for a peer set so, else the
   * policy's answer within requestTimeoutMs (no answer: Decline); then the free space (statfs).
   */
  private async decide(offer: IncomingOffer, state: IncomingState, policy: ReceivePolicy): Promise<({ path: string; conflict: 'overwrite' | 'skip' | 'keepBoth' } | undefined)[]> {
    const none = offer.entries.map(() => undefined);
    let decision: Awaited<ReturnType<ReceivePolicy['decideOffer']>>;
    if (this.service.options.settings.get(this.peerId) === 'inbox') {
      const inbox = policy.inboxFor(offer.peer);
      decision = inbox === undefined ? 'decline' : { into: inbox, entries: offer.entries.map(() => ({})) };
    } else {
      const question = new AbortController();
      state.abort.signal.addEventListener('abort', () => question.abort(state.abort.signal.reason), { once: true });
      decision = await withDeadline(policy.decideOffer(offer, question.signal), this.limits.requestTimeoutMs, question).catch(() => 'decline' as const);
    }
    if (decision === 'decline' || state.abort.signal.aborted) return none;
    const conflict = decision.onConflict ?? 'keepBoth';
    const targets = offer.entries.map((entry, i) => {
      const chosen = decision.entries[i];
      if (!chosen) return undefined;
      if (chosen.target !== undefined) return { path: path.resolve(chosen.target), conflict };
      // A name unsafe here lands only under a name the person chose (Save As).
      if (entry.unsafeHere) {
        policy.onNotice?.(`${sanitizeForDisplay(entry.name)} was not saved: its name is not safe here (${entry.unsafeHere.why}).`, offer);
        return undefined;
      }
      return { path: path.join(path.resolve(decision.into), entry.name), conflict };
    });
    const problem = await checkFreeSpace(offer.entries, targets);
    if (problem) {
      policy.onNotice?.(problem, offer);
      return none;
    }
    return targets;
  }

  /** Our reader of the peer's outbox: share/1's client under send/1's names, as a download's source. */
  private outboxOf(connection: Connection): FileSource {
    const share = new ShareClient(connection, 'send');
    return {
      peerId: this.peerId,
      limits: connection.limits,
      share,
      stat: (remotePath, options) => share.stat(remotePath, options),
      close: (reason) => connection.close(reason),
    } as FileSource;
  }

  /**
   * One accepted entry, pulled as a download: a file as verified blocks into a partial file beside
   * its target (its block list must hash to the offered fileHash), a folder as a folder stream into
   * a folder that did not exist (never more bytes than offered). A cancel removes what arrived of
   * it; a dropped connection keeps a file's partial file for a resume.
   */
  private async pull(
    source: FileSource,
    offerId: string,
    entry: OfferEntry,
    wanted: string,
    conflict: 'overwrite' | 'skip' | 'keepBoth',
    state: IncomingState,
    onBytes: (bytes: number) => void,
  ): Promise<string> {
    const remotePath = `${offerId}/${entry.name}`;
    // Stops this entry: the peer sent more than it offered, or its trust was revoked (a running
    // `serve` hears of `trust rm` in another terminal through the trust file, checked on progress).
    const stop = new AbortController();
    const signal = AbortSignal.any([state.abort.signal, stop.signal]);
    // The trust file is looked at (a stat) at most every TRUST_RECHECK_MS, not once per file of a folder.
    let trustCheckedAt = 0;
    const progress = (bytes: number): void => {
      onBytes(bytes);
      if (bytes > entry.size) return void stop.abort(new PeerShareError('SIZE_MISMATCH', 'The peer sent more bytes than it offered.'));
      const now = performance.now();
      if (now - trustCheckedAt < TRUST_RECHECK_MS) return;
      trustCheckedAt = now;
      if (!this.service.isTrusted(this.peerId)) stop.abort(new PeerShareError('PEER_UNTRUSTED', REVOKED));
    };
    let target = wanted;
    if (entry.type === 'file') {
      if (conflict === 'keepBoth' && (await exists(target))) target = await keepBothName(target);
      const partial = partialPathForHash(target, entry.fileHash, entry.size);
      const pulling = this.service.pulling;
      pulling.set(partial, (pulling.get(partial) ?? 0) + 1);
      try {
        const result = await downloadFile(
          source,
          remotePath,
          target,
          { signal, keepPartial: true, onConflict: conflict === 'keepBoth' ? 'fail' : conflict, expectedFileHash: Buffer.from(entry.fileHash, 'hex'), onProgress: (p) => progress(p.bytes) },
          { name: entry.name, type: 'file', size: entry.size, mtimeMs: entry.mtimeMs },
        );
        // onConflict 'skip' (the person's choice): the existing file stays, and the sender hears so.
        if (result.files === 0) throw new PeerShareError('DEST_EXISTS', `${path.basename(target)} exists here and was kept.`);
        return result.target;
      } catch (err) {
        if (stop.signal.aborted) throw stop.signal.reason;
        throw err;
      } finally {
        const left = (pulling.get(partial) ?? 1) - 1;
        if (left > 0) pulling.set(partial, left);
        else pulling.delete(partial);
        // A cancel takes back this entry's partial file, never one another offer is receiving into
        // (older versions' partials of the same name are not ours to remove either).
        if (state.cancelled && left === 0) {
          try {
            removeName(partial);
          } catch {
            // gone already, or not ours to remove
          }
        }
      }
    }
    // A folder always lands in a folder of its own that did not exist, so a cancel can take it all back.
    target = await makeNewFolder(target);
    try {
      await downloadFolder(filesAtMost(source, entry.files), remotePath, target, { signal, onProgress: (p) => progress(p.bytes) });
      if (stop.signal.aborted) throw stop.signal.reason;
      return target;
    } catch (err) {
      // Nothing of a folder that did not arrive whole is kept (folders are not resumed).
      await fs.rm(target, { recursive: true, force: true }).catch(() => undefined);
      if (stop.signal.aborted) throw stop.signal.reason;
      throw err;
    }
  }

  // ---- the sender's side

  /** The outbox (13.5): share/1's requests for the accepted entries of an open offer of this connection. */
  private async serveOutbox(request: CapabilityMessage, reply: ReplyWriter, signal: AbortSignal): Promise<Record<string, unknown>> {
    const requested = request.path;
    if (typeof requested !== 'string') throw new PeerShareError('PROTOCOL_ERROR', `"${request.type}" needs a string "path".`);
    const [offerId, name, ...rest] = requested.replace(/\/$/, '').split('/');
    const offer = this.outbox.get(offerId);
    const item = offer?.accepted?.has(name) ? offer.entries.find((e) => e.entry.name === name) : undefined;
    if (!offer || !item || (item.entry.type === 'file' && rest.length > 0)) throw new PeerShareError('NOT_FOUND', 'Nothing was offered under that name.');
    const sharePath = [item.sharePath, ...rest].join('/');
    item.handler ??= item.provider.handler({ peerId: this.peerId, peerFrameBytes: this.connection?.remote.frame });
    // File bytes only: a manifest's DATA is its block list.
    const fileBytes = request.type !== 'send.manifest';
    const counted: ReplyWriter = {
      message: (message) => reply.message(message),
      data: (chunk) => {
        if (!fileBytes) return reply.data(chunk);
        offer.bytes += chunk.length;
        offer.onProgress?.({ bytes: offer.bytes, totalBytes: offer.totalAccepted });
        return reply.data(chunk);
      },
    };
    const inner = { ...request, type: `share.${request.type.slice('send.'.length)}` as const, path: sharePath };
    return ((await item.handler(inner, counted, signal)) ?? {}) as Record<string, unknown>;
  }

  /**
   * Offers local files and folders (each by its own name) and waits until the receiver declined,
   * or pulled what it accepted and said how it went. `signal` cancels: the receiver stops and
   * removes what arrived.
   */
  async offerFiles(paths: string[], options: SendOptions = {}): Promise<SendResult> {
    const connection = this.connection;
    if (!connection || connection.closed) throw this.closedWith ?? new PeerShareError('CONNECTION_CLOSED');
    if (paths.length === 0) throw new PeerShareError('INVALID_ARGUMENT', 'Nothing to send.');
    if (paths.length > connection.limits.maxOfferEntries) throw new PeerShareError('TOO_LARGE', `At most ${connection.limits.maxOfferEntries} files and folders can be sent at once; send their folder instead.`);
    const entries = await this.prepare(paths, options.placesFrom ?? []);
    return this.offer(entries, { entries: entries.map((e) => e.entry) }, options);
  }

  /** Sends a snippet: shown by the receiver's policy, nothing written. */
  async offerSnippet(snippet: Snippet, options: Pick<SendOptions, 'note' | 'signal'> = {}): Promise<SendResult> {
    if (Buffer.byteLength(snippet.text, 'utf8') > this.limits.maxSnippetBytes) {
      throw new PeerShareError('TOO_LARGE', `A snippet may have at most ${this.limits.maxSnippetBytes} bytes.`);
    }
    return this.offer([], { snippet }, options);
  }

  private async offer(entries: OutboxEntry[], body: { entries: OfferEntry[] } | { snippet: Snippet }, options: SendOptions): Promise<SendResult> {
    const connection = this.connection;
    if (!connection || connection.closed) throw this.closedWith ?? new PeerShareError('CONNECTION_CLOSED');
    const id = randomBytes(16).toString('base64url');
    const note = options.note === undefined ? {} : { note: options.note };
    const message = { type: 'send.offer' as const, offer: id, ...note, ...body };
    const offer: OutgoingOffer = { id, entries, answer: deferred(), done: deferred(), bytes: 0, totalAccepted: 0, onProgress: options.onProgress };
    const result = (status: (i: number) => SentEntry['status'], messages: (string | undefined)[] = [], codes: (ErrorCode | undefined)[] = []): SendResult => ({
      offerId: id,
      peer: this.peer,
      entries: entries.map((e, i) => ({
        name: e.entry.name,
        type: e.entry.type,
        size: e.entry.size,
        status: status(i),
        ...(codes[i] ? { code: codes[i] } : {}),
        ...(messages[i] ? { message: messages[i] } : {}),
      })),
      bytes: offer.bytes,
    });
    // Registered before the offer leaves: the answer may overtake the offer's END.
    if (entries.length > 0) this.outbox.set(id, offer);
    const cancel = (): void => {
      if (!this.outbox.delete(id) || connection.closed) return;
      connection.request({ type: 'send.cancel', offer: id }).result.catch(() => undefined);
    };
    try {
      const end = await connection.request(message, { signal: options.signal }).result;
      if (end.declined === true) return { ...result(() => 'declined'), refused: true };
      if ('snippet' in body) return { ...result(() => 'received'), shown: true };
      const accepted = await withSignal(withDeadline(offer.answer.promise, this.limits.requestTimeoutMs + this.limits.stallTimeoutMs), options.signal);
      options.onAnswer?.(accepted);
      if (!accepted.some(Boolean)) return result(() => 'declined');
      const done = await withSignal(offer.done.promise, options.signal);
      if (done === 'cancelled') {
        return result(
          (i) => (accepted[i] ? 'failed' : 'declined'),
          accepted.map((a) => (a ? 'The receiver cancelled.' : undefined)),
          accepted.map((a) => (a ? 'CANCELLED' : undefined)),
        );
      }
      return result(
        (i) => done[i].status,
        done.map((d) => d.message),
        done.map((d) => d.code),
      );
    } catch (err) {
      const coded = toPeerShareError(err);
      cancel();
      if (coded.code === 'TIMEOUT' && !offer.accepted) return result(() => 'declined', entries.map(() => NOT_ANSWERED));
      throw coded;
    } finally {
      this.outbox.delete(id);
    }
  }

  /** Each path as an entry by its own name, served through a share of its own (a file: its folder, gitignore aside; a folder: itself, every rule). */
  private async prepare(paths: string[], placesFrom: string[]): Promise<OutboxEntry[]> {
    const cache = await this.service.options.blockCache();
    const limits = this.service.limits;
    const seen = new Set<string>();
    const entries: OutboxEntry[] = [];
    for (const given of paths) {
      const full = path.resolve(given);
      const st = await fs.stat(full).catch((err: NodeJS.ErrnoException) => {
        throw new PeerShareError(err.code === 'ENOENT' ? 'NOT_FOUND' : 'IO_ERROR', `Cannot send ${given}: ${err.code === 'ENOENT' ? 'it does not exist' : err.message}.`);
      });
      const name = path.basename(full);
      try {
        inspectReceivedName(name, 255);
      } catch {
        throw new PeerShareError('INVALID_ARGUMENT', `Cannot send ${sanitizeForDisplay(given)}: its name cannot be received as it is.`);
      }
      const key = collisionKey(name);
      if (seen.has(key)) throw new PeerShareError('INVALID_ARGUMENT', `Two of the things to send are named ${sanitizeForDisplay(name)}; send their folder, or rename one.`);
      seen.add(key);
      const privatePaths = this.service.options.privatePaths;
      if (st.isDirectory()) {
        const share = await Share.create({ folders: [full], privatePaths }, limits);
        const root = share.roots[0].name;
        let size = 0;
        let files = 0;
        for await (const item of share.walk(root, { sizes: true })) {
          if (item.kind !== 'file') continue;
          files++;
          size += item.size ?? 0;
        }
        entries.push({ entry: { name, type: 'dir', size, files, ...placeHint(full, placesFrom, limits.maxPathBytes) }, provider: new ShareProvider({ share, blockCache: cache, limits }), sharePath: root });
        continue;
      }
      if (!st.isFile()) throw new PeerShareError('NOT_A_FILE', `Cannot send ${sanitizeForDisplay(given)}: only files and folders can be sent.`);
      // Named on purpose, so its folder's .gitignore does not hide it; the default excludes (keys, .env) still do.
      const share = await Share.create({ folders: [path.dirname(full)], privatePaths, honourGitignore: false }, limits);
      const sharePath = `${share.roots[0].name}/${name}`;
      const { handle, stat } = await share.openFile(sharePath).catch((err: unknown) => {
        const coded = toPeerShareError(err);
        throw new PeerShareError(coded.code, `Cannot send ${sanitizeForDisplay(given)}: ${coded.code === 'EXCLUDED' ? 'it is excluded from sharing (a key, a secret or an editor file)' : coded.message}.`);
      });
      try {
        const manifest = await cache.hashWithCache(handle);
        entries.push({
          entry: { name, type: 'file', size: manifest.size, mtimeMs: Math.floor(stat.mtimeMs), fileHash: manifest.fileHash.toString('hex'), ...placeHint(full, placesFrom, limits.maxPathBytes) },
          provider: new ShareProvider({ share, blockCache: cache, limits }),
          sharePath,
        });
      } finally {
        await handle.close();
      }
    }
    return entries;
  }
}

/**
 * The outbox as the source of one folder entry whose stream may bring at most `files` files, as
 * offered (its size is held to the offer the same way, in pull): a folder offered as "0 files"
 * cannot fill the disk's inodes with empty ones.
 */
function filesAtMost(source: FileSource, files: number): FileSource {
  const share = source.share;
  const limited = Object.create(share) as typeof share;
  limited.tree = async function* (remotePath, options) {
    const records = share.tree(remotePath, options);
    let seen = 0;
    try {
      for (;;) {
        const step = await records.next();
        if (step.done) return step.value;
        if ((step.value.kind === 'file' || step.value.kind === 'fileRef') && ++seen > files) {
          throw new PeerShareError('SIZE_MISMATCH', `The peer sent more files than the ${files} it offered in this folder.`);
        }
        yield step.value;
      }
    } finally {
      await records.return({ count: seen });
    }
  };
  return { ...source, share: limited } as FileSource;
}

/** Sums of the accepted entries' sizes per destination folder against its free space (statfs): a sentence when they do not fit. */
async function checkFreeSpace(entries: OfferEntry[], targets: ({ path: string } | undefined)[]): Promise<string | undefined> {
  const needs = new Map<string, number>();
  entries.forEach((entry, i) => {
    const target = targets[i];
    if (target) needs.set(path.dirname(target.path), (needs.get(path.dirname(target.path)) ?? 0) + entry.size);
  });
  for (const [folder, bytes] of needs) {
    // Measured on the nearest folder that exists: nothing is created for an offer before it is taken.
    const st = await fs.statfs(await nearestExisting(folder));
    const free = st.bavail * st.bsize;
    if (bytes > free) {
      return `Not enough free space in ${folder}: the offer needs ${bytes} bytes and ${free} are free. Nothing was received.`;
    }
  }
  return undefined;
}

/** The folders above the targets that do not exist, deepest first (rmdir in this order removes every one left empty). */
async function missingFolders(targets: ({ path: string } | undefined)[]): Promise<string[]> {
  const missing = new Set<string>();
  for (const target of targets) {
    if (!target) continue;
    for (let at = path.dirname(target.path); !missing.has(at) && path.dirname(at) !== at && !(await exists(at)); at = path.dirname(at)) missing.add(at);
  }
  return [...missing].sort((a, b) => b.length - a.length);
}

/**
 * Creates `wanted`, or the first "wanted (n)" free, exclusively (mkdir without -p fails on any
 * name that exists): a folder that appears at the name between a look and the mkdir (another
 * user's, in a drop folder open to all) is never received into. Returns the folder made.
 */
async function makeNewFolder(wanted: string): Promise<string> {
  await fs.mkdir(path.dirname(wanted), { recursive: true });
  let target = wanted;
  for (let attempt = 0; ; attempt++) {
    try {
      await fs.mkdir(target);
      return target;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) throw toPeerShareError(err, 'IO_ERROR');
    }
    target = await keepBothName(wanted);
  }
}

/** `folder`, or its nearest parent that exists. */
async function nearestExisting(folder: string): Promise<string> {
  let at = path.resolve(folder);
  while (!(await exists(at)) && path.dirname(at) !== at) at = path.dirname(at);
  return at;
}

/** `promise`, or TIMEOUT after `ms` (aborting `controller` then, to withdraw a question). */
function withDeadline<T>(promise: Promise<T>, ms: number, controller?: AbortController): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new PeerShareError('TIMEOUT', NOT_ANSWERED);
      controller?.abort(err);
      reject(err);
    }, ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** `promise`, or CANCELLED when `signal` fires. */
function withSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(new PeerShareError('CANCELLED'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new PeerShareError('CANCELLED'));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/**
 * An entry's `path` hint: where it is below the first of `placesFrom` that holds it, in the form a
 * receiver accepts (a plain relative path, safe there too); none when no folder holds it.
 */
function placeHint(full: string, placesFrom: string[], maxPathBytes: number): { path?: string } {
  for (const folder of placesFrom) {
    const relative = path.relative(path.resolve(folder), full);
    if (!relative || relative === '..' || relative.startsWith(`..${path.sep}`) || path.isAbsolute(relative)) continue;
    const hint = relative.split(path.sep).join('/');
    try {
      if (inspectReceivedName(hint, maxPathBytes).unsafeHere) return {};
    } catch {
      return {};
    }
    return { path: hint };
  }
  return {};
}
