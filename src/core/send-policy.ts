import { promises as fs, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { PeerShareError } from './errors';
import type { ConflictChoice } from './landing';
import { inspectReceivedName } from './names';
import { normalizePeerId } from './peer-id';
import type { ReceivedEntry, Snippet } from './v2/send-messages';

/**
 * What the receiving side of send/1 asks its user (docs/protocol-v2.md 13.4): one interface, which
 * the CLI's terminal and the editor's prompt each implement. Everything here that a peer chose
 * (its name, the note, entry names, a snippet's path and text) is raw: escape it
 * (sanitizeForDisplay) to show it. The core calls the policy only for a trusted peer whose setting
 * is `ask`, never for two offers of one peer at once, and withdraws a question (its `signal`)
 * when the sender cancels, the connection ends or `requestTimeoutMs` passes (that is Decline).
 */
export interface IncomingOffer {
  offerId: string;
  peer: { id: string; name: string };
  note?: string;
  entries: ReceivedEntry[];
  /** Sum of the entries' sizes, as offered. */
  totalBytes: number;
}

/** Per entry: accepted (into `into`, or at `target`, a path the user chose: Save As), or declined (undefined). */
export type EntryDecision = { target?: string } | undefined;

/**
 * How the editor's choices map here: **Save to Inbox** is `into: inboxFolderFor(inbox, peer)`;
 * **Save As...** is a `target` per entry; **Decline** is 'decline'; **Review** (nothing written in
 * the workspace until accepted) is `into` a staging folder outside the workspace (the extension's
 * storage), whose verified files the editor then diffs against the workspace and moves in on
 * Accept / Accept All (Skip deletes them).
 */
export interface OfferDecision {
  /** The folder accepted entries land in under their own (safe) names. */
  into: string;
  /** One per entry, in order; an entry unsafe here is accepted only with a `target`. */
  entries: EntryDecision[];
  /** A name already taken in `into`: keep both (default: the new one lands as "name (2)"), overwrite, or skip. */
  onConflict?: Exclude<ConflictChoice, 'fail'>;
}

/** A snippet: nothing is written; the policy shows it (Open, Compare with Mine, Copy in the editor). */
export interface IncomingSnippet {
  offerId: string;
  peer: { id: string; name: string };
  note?: string;
  snippet: Snippet;
}

export interface ReceiveProgress {
  offerId: string;
  /** Bytes received so far in this offer. */
  bytes: number;
  totalBytes: number;
  /** The entry being received. */
  entry: string;
}

export interface ReceivedEntryResult {
  name: string;
  status: 'received' | 'declined' | 'failed';
  /** Where it landed. */
  target?: string;
  /** Why it failed (our own words, or the sender's, escaped). */
  code?: string;
  message?: string;
}

export interface ReceiveResult {
  offerId: string;
  peer: { id: string; name: string };
  entries: ReceivedEntryResult[];
  bytes: number;
  cancelled: boolean;
}

export interface ReceivePolicy {
  /** Ask: Review / Save to Inbox / Save As / Decline in the editor, a question at the terminal. 'decline' declines all. */
  decideOffer(offer: IncomingOffer, signal: AbortSignal): Promise<OfferDecision | 'decline'>;
  /** Where a peer set to `inbox` (or the CLI's `--receive trusted`) lands its entries: no question asked. */
  inboxFor(peer: { id: string; name: string }): string | undefined;
  /** A snippet arrived; resolves when the person is done with it (the peer's next offer waits until then, or BUSY). */
  showSnippet(snippet: IncomingSnippet, signal: AbortSignal): Promise<void>;
  onProgress?(progress: ReceiveProgress): void;
  /** Every offer that was accepted in part ends here, received, failed or cancelled. */
  onReceived?(result: ReceiveResult): void;
  /** Something the person should know that is not a result: an offer refused for the disk, say. */
  onNotice?(message: string, offer?: IncomingOffer): void;
}

/**
 * The inbox folder of one peer (issue 12: one subfolder per peer): its name when that name is a
 * safe folder name here, else its short ID; the name is the peer's choice and never a path.
 */
export function inboxFolderFor(inbox: string, peer: { id: string; name: string }): string {
  const id = peer.id.replace(/-/g, '').slice(0, 12);
  let name = '';
  try {
    const { components, unsafeHere } = inspectReceivedName(peer.name.trim().slice(0, 64), 255);
    if (components.length === 1 && !unsafeHere) name = components[0];
  } catch {
    // a name of the wrong form: the ID stands in for it
  }
  return path.join(inbox, name ? `${name} (${id.slice(0, 4)})` : id);
}

/** What a peer may send us (docs/protocol-v2.md 13.4): ask each time (default), straight into the inbox, or never. */
export type ReceiveSetting = 'ask' | 'inbox' | 'never';

export const RECEIVE_SETTINGS_FILE = 'send-settings.json';

/**
 * The per-peer receive setting, kept beside the trust file (`<home>/send-settings.json`), so the
 * trust file's format is untouched. Read on every question if it changed on disk; written whole
 * through a temporary file and a rename. A peer without an entry is `ask`.
 */
export class ReceiveSettings {
  private settings = new Map<string, ReceiveSetting>();
  private seen = '';

  constructor(private readonly home: string) {}

  private get file(): string {
    return path.join(this.home, RECEIVE_SETTINGS_FILE);
  }

  get(peerId: string): ReceiveSetting {
    this.refresh();
    return this.settings.get(peerId) ?? 'ask';
  }

  async set(peerId: string, setting: ReceiveSetting): Promise<void> {
    if (!['ask', 'inbox', 'never'].includes(setting)) throw new PeerShareError('INVALID_ARGUMENT', 'A receive setting is ask, inbox or never.');
    const id = normalizePeerId(peerId);
    this.refresh();
    this.settings.set(id, setting);
    if (setting === 'ask') this.settings.delete(id);
    await fs.mkdir(this.home, { recursive: true });
    const temporary = `${this.file}.${process.pid}.tmp`;
    writeFileSync(temporary, `${JSON.stringify({ version: 1, peers: Object.fromEntries(this.settings) }, null, 2)}\n`, { mode: 0o600 });
    renameSync(temporary, this.file);
    this.seen = '';
  }

  private refresh(): void {
    let stamp: string;
    try {
      const st = statSync(this.file);
      stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch {
      this.settings.clear();
      this.seen = '';
      return;
    }
    if (stamp === this.seen) return;
    this.seen = stamp;
    const next = new Map<string, ReceiveSetting>();
    try {
      const parsed = JSON.parse(readFileSync(this.file, 'utf8')) as { peers?: Record<string, unknown> };
      for (const [id, value] of Object.entries(parsed.peers ?? {})) {
        if (value === 'inbox' || value === 'never') next.set(id, value);
      }
    } catch {
      // A damaged file asks about everyone (the default), and is rewritten by the next change.
    }
    this.settings = next;
  }
}
