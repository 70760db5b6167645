import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  PeerShareNode,
  type IncomingOffer,
  type IncomingSnippet,
  type Limits,
  type OfferDecision,
  type PeerConnection,
  type ReceivePolicy,
  type ReceiveResult,
  type ActiveShare,
} from '../../src/core';
import { tempDir } from '../helpers';

/**
 * What the send/1 tests share: real nodes (PeerShareNode) on loopback TLS, and a receive policy
 * that records every call and answers as the test says.
 */
export class RecordingPolicy implements ReceivePolicy {
  offers: IncomingOffer[] = [];
  snippets: IncomingSnippet[] = [];
  notices: string[] = [];
  results: ReceiveResult[] = [];
  withdrawn = 0;
  onProgress?: ReceivePolicy['onProgress'];
  private waiters: ((r: ReceiveResult) => void)[] = [];
  private noticeWaiters: ((n: string) => void)[] = [];

  constructor(
    public decide: (offer: IncomingOffer, signal: AbortSignal) => Promise<OfferDecision | 'decline'>,
    public inbox?: string,
  ) {}

  decideOffer(offer: IncomingOffer, signal: AbortSignal): Promise<OfferDecision | 'decline'> {
    this.offers.push(offer);
    signal.addEventListener('abort', () => this.withdrawn++, { once: true });
    return this.decide(offer, signal);
  }

  inboxFor(): string | undefined {
    return this.inbox;
  }

  async showSnippet(snippet: IncomingSnippet): Promise<void> {
    this.snippets.push(snippet);
  }

  onReceived(result: ReceiveResult): void {
    this.results.push(result);
    for (const w of this.waiters.splice(0)) w(result);
  }

  onNotice(message: string): void {
    this.notices.push(message);
    for (const w of this.noticeWaiters.splice(0)) w(message);
  }

  /** The next result (or one already in). */
  nextResult(count = this.results.length + 1): Promise<ReceiveResult> {
    if (this.results.length >= count) return Promise.resolve(this.results[count - 1]);
    return new Promise((resolve) => this.waiters.push(() => (this.results.length >= count ? resolve(this.results[count - 1]) : undefined)));
  }

  nextNotice(): Promise<string> {
    return new Promise((resolve) => this.noticeWaiters.push(resolve));
  }
}

/** Accept every entry into `into`. */
export const acceptAllInto =
  (into: string) =>
  async (offer: IncomingOffer): Promise<OfferDecision> => ({ into, entries: offer.entries.map(() => ({})) });

export interface Pair {
  /** The listening node (it shares a folder) and the dialer that paired with its invite. */
  listener: PeerShareNode;
  dialer: PeerShareNode;
  active: ActiveShare;
  invite: string;
  conn: PeerConnection;
  close(): Promise<void>;
}

export async function openNode(name: string, limits?: Partial<Limits>): Promise<PeerShareNode> {
  return PeerShareNode.open({ home: tempDir(`peershare-send-${name}-`), name: () => name, limits: () => limits ?? {}, discovery: () => false });
}

/** A listener sharing an empty folder, a dialer connected with its invite: both trust each other (in one direction each). */
export async function pair(options: { listenerLimits?: Partial<Limits>; dialerLimits?: Partial<Limits> } = {}): Promise<Pair> {
  const listener = await openNode('listener', options.listenerLimits);
  const dialer = await openNode('dialer', options.dialerLimits);
  const shared = tempDir('peershare-send-shared-');
  const active = await listener.share({ folders: [shared], host: '127.0.0.1', port: 0 });
  const invite = active.server.createInvite({ uses: 10 });
  const conn = await dialer.connect(invite);
  return {
    listener,
    dialer,
    active,
    invite,
    conn,
    close: async () => {
      conn.close();
      await listener.close();
      await dialer.close();
    },
  };
}

/** Every name below `dir`, hidden ones too (a partial file is a dotfile). */
export async function everything(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(sub: string): Promise<void> {
    const entries = await fs.readdir(path.join(dir, sub), { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      const rel = sub ? `${sub}/${e.name}` : e.name;
      out.push(e.isDirectory() ? `${rel}/` : rel);
      if (e.isDirectory()) await walk(rel);
    }
  }
  await walk('');
  return out.sort();
}

export function waitUntil(predicate: () => boolean, timeoutMs = 20_000): Promise<void> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (predicate()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error('condition not reached in time'));
      setTimeout(tick, 10);
    };
    tick();
  });
}
