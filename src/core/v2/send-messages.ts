import { PeerShareError, isErrorCode, type ErrorCode } from '../errors';
import type { Limits } from '../limits';
import { collisionKey, inspectReceivedName, type UnsafeHere } from '../names';
import { sanitizeForDisplay, shownType } from '../protocol';
import type { CapabilityMessage } from './messages';
import { MAX_PEER_MESSAGE_CHARS } from './messages';
import { isFileHashHex, isSafeUint, isWireTime } from './share-messages';

/**
 * The messages of capability `send/1` (docs/protocol-v2.md 13): one parser per request, each
 * bounded before it looks further. A request of the wrong shape breaks the spec (PROTOCOL_ERROR:
 * the connection closes); values an honest peer could send but we do not take are request-level
 * errors (TOO_LARGE, INVALID_ARGUMENT). The requests that read the outbox (`send.stat`,
 * `send.manifest`, `send.read`, `send.tree`) are share/1's and parsed by its parser.
 */
export const SEND_CAPABILITY = 'send/1';

/** A note is shown beside the offer: at most this many chars (spec 13.2). */
export const MAX_NOTE_CHARS = 200;

export const OFFER_ID = /^[A-Za-z0-9_-]{16,64}$/;
const LANGUAGE = /^[A-Za-z0-9_+#.-]{0,64}$/;

/**
 * `path`, when given: where the sender keeps the entry, relative to its workspace (or current
 * folder), ending with `name`. A hint for a review (the same path here), never a place written
 * to unseen; a hint that would be unsafe here is dropped when parsed.
 */
export type OfferEntry =
  | { name: string; type: 'file'; size: number; mtimeMs: number; fileHash: string; path?: string }
  | { name: string; type: 'dir'; size: number; files: number; path?: string };

/** An entry as the receiver's policy sees it: `unsafeHere` says the inbox may not take it under its own name. */
export type ReceivedEntry = OfferEntry & { unsafeHere?: UnsafeHere };

export interface Snippet {
  text: string;
  /** Relative path on the sender's side, of a checked form; never written under. */
  path: string;
  startLine: number;
  endLine: number;
  language: string;
}

export type SendOffer = { offer: string; note?: string } & ({ entries: ReceivedEntry[]; snippet?: undefined } | { snippet: Snippet; entries?: undefined });

/** The receiver's word on one entry; `code` is the receiver's own (local) code, kept only if it is a known one, and shown as the peer's. */
export type EntryResult = { status: 'received' | 'declined' | 'failed'; code?: ErrorCode; message?: string };

export type SendRequest =
  | ({ type: 'send.offer' } & SendOffer)
  | { type: 'send.answer'; offer: string; accept: boolean[] }
  | { type: 'send.done'; offer: string; results?: EntryResult[]; cancelled?: true }
  | { type: 'send.cancel'; offer: string };

/** The outbox's requests: share/1's, under send/1's name. */
export const OUTBOX_REQUESTS = ['send.stat', 'send.manifest', 'send.read', 'send.tree'] as const;

function breach(message: string): PeerShareError {
  return new PeerShareError('PROTOCOL_ERROR', message);
}

function offerIdOf(m: Record<string, unknown>): string {
  if (typeof m.offer !== 'string' || !OFFER_ID.test(m.offer)) throw breach('"offer" must be 16 to 64 letters, digits, "-" or "_".');
  return m.offer;
}

/** The one parser of the requests send/1 answers itself (not the outbox's reads). */
export function parseSendRequest(m: CapabilityMessage, limits: Pick<Limits, 'maxOfferEntries' | 'maxSnippetBytes' | 'maxPathBytes' | 'maxTreeFiles'>): SendRequest {
  switch (m.type) {
    case 'send.offer':
      return { type: 'send.offer', ...parseOffer(m, limits) };
    case 'send.answer': {
      const offer = offerIdOf(m);
      const accept = m.accept;
      if (!Array.isArray(accept) || accept.length > limits.maxOfferEntries || !accept.every((a) => typeof a === 'boolean')) {
        throw breach('"accept" must be a list of booleans, one per entry.');
      }
      return { type: 'send.answer', offer, accept };
    }
    case 'send.done': {
      const offer = offerIdOf(m);
      if (m.cancelled !== undefined && m.cancelled !== true) throw breach('"cancelled" may only be true.');
      if (m.cancelled === true) return { type: 'send.done', offer, cancelled: true };
      const results = m.results;
      if (!Array.isArray(results) || results.length > limits.maxOfferEntries) throw breach('"results" must be a list, one per entry.');
      return { type: 'send.done', offer, results: results.map(parseResult) };
    }
    case 'send.cancel':
      return { type: 'send.cancel', offer: offerIdOf(m) };
    default:
      throw breach(`"${shownType(m.type)}" is not a request of send/1.`);
  }
}

function parseResult(value: unknown): EntryResult {
  const r = value as Record<string, unknown> | null;
  if (r === null || typeof r !== 'object' || Array.isArray(r) || !['received', 'declined', 'failed'].includes(r.status as string)) {
    throw breach('Each result must be {status: "received" | "declined" | "failed"}.');
  }
  if (r.message !== undefined && typeof r.message !== 'string') throw breach('A result\'s "message" must be a string.');
  const message = typeof r.message === 'string' ? sanitizeForDisplay(r.message.slice(0, MAX_PEER_MESSAGE_CHARS)) : undefined;
  const code = r.status === 'failed' && isErrorCode(r.code) ? { code: r.code } : {};
  return { status: r.status as EntryResult['status'], ...code, ...(message ? { message } : {}) };
}

/**
 * `send.offer` (spec 13.2, 13.3 rows 1 and 3): the count of entries before any entry is looked
 * at; each name with the received-name rules (a name of the wrong form, or two names one file
 * system would merge, is INVALID_ARGUMENT: nobody is asked); a snippet's text and path bounded.
 */
export function parseOffer(m: Record<string, unknown>, limits: Pick<Limits, 'maxOfferEntries' | 'maxSnippetBytes' | 'maxPathBytes' | 'maxTreeFiles'>): SendOffer {
  const offer = offerIdOf(m);
  let note: string | undefined;
  if (m.note !== undefined) {
    if (typeof m.note !== 'string') throw breach('"note" must be a string.');
    if (m.note.length > MAX_NOTE_CHARS) throw new PeerShareError('TOO_LARGE', `A note may have at most ${MAX_NOTE_CHARS} characters.`);
    note = m.note;
  }
  const base = note === undefined ? { offer } : { offer, note };
  if ((m.entries === undefined) === (m.snippet === undefined)) throw breach('An offer carries either "entries" or "snippet".');
  if (m.snippet !== undefined) return { ...base, snippet: parseSnippet(m.snippet, limits) };
  const entries = m.entries;
  if (!Array.isArray(entries)) throw breach('"entries" must be a list.');
  // Counted before a single entry is looked at.
  if (entries.length > limits.maxOfferEntries) throw new PeerShareError('TOO_LARGE', `An offer may name at most ${limits.maxOfferEntries} files and folders; this one names ${entries.length}.`);
  if (entries.length === 0) throw breach('An offer names at least one entry.');
  const seen = new Set<string>();
  const parsed: ReceivedEntry[] = [];
  for (const value of entries as unknown[]) {
    const entry = parseEntry(value, limits);
    const key = collisionKey(entry.name);
    if (seen.has(key)) throw new PeerShareError('INVALID_ARGUMENT', 'The offer names two entries one file system would take for the same name.');
    seen.add(key);
    parsed.push(entry);
  }
  return { ...base, entries: parsed };
}

/** An entry's `path` hint (13.2): a plain relative path ending with the entry's name; dropped if unsafe here. */
function parseEntryPath(value: unknown, name: string, limits: Pick<Limits, 'maxPathBytes'>): { path?: string } {
  if (value === undefined) return {};
  if (typeof value !== 'string') throw breach('An entry\'s "path" must be a string.');
  let named: { components: string[]; unsafeHere?: UnsafeHere };
  try {
    named = inspectReceivedName(value, limits.maxPathBytes);
  } catch {
    throw new PeerShareError('INVALID_ARGUMENT', 'An offered entry\'s path must be a plain relative path.');
  }
  if (named.components[named.components.length - 1] !== name) throw new PeerShareError('INVALID_ARGUMENT', 'An offered entry\'s path must end with its name.');
  return named.unsafeHere ? {} : { path: named.components.join('/') };
}

function parseEntry(value: unknown, limits: Pick<Limits, 'maxTreeFiles' | 'maxPathBytes'>): ReceivedEntry {
  const e = value as Record<string, unknown> | null;
  if (e === null || typeof e !== 'object' || Array.isArray(e)) throw breach('Each entry must be an object.');
  if (typeof e.name !== 'string') throw breach('Each entry needs a string "name".');
  if (!isSafeUint(e.size)) throw breach('An entry\'s "size" must be a whole number of bytes.');
  let named: { components: string[]; unsafeHere?: UnsafeHere };
  try {
    named = inspectReceivedName(e.name, 255);
  } catch (err) {
    // The form of a name is checked as a download checks it, and nobody is asked about this offer.
    throw new PeerShareError('INVALID_ARGUMENT', `The offer names an entry of the wrong form (${sanitizeForDisplay(e.name.slice(0, 80))}): ${(err as Error).message}`);
  }
  if (named.components.length !== 1) throw new PeerShareError('INVALID_ARGUMENT', 'An offered entry is one name, not a path.');
  const unsafe = { ...parseEntryPath(e.path, e.name, limits), ...(named.unsafeHere ? { unsafeHere: named.unsafeHere } : {}) };
  if (e.type === 'file') {
    if (!isWireTime(e.mtimeMs) || !isFileHashHex(e.fileHash)) throw breach('A file entry needs "mtimeMs" and a "fileHash" of 64 lowercase hex digits.');
    return { name: e.name, type: 'file', size: e.size, mtimeMs: e.mtimeMs, fileHash: e.fileHash, ...unsafe };
  }
  if (e.type === 'dir') {
    if (!isSafeUint(e.files)) throw breach('A folder entry needs "files", a whole number.');
    if (e.files > limits.maxTreeFiles) throw new PeerShareError('TOO_LARGE', `An offered folder may hold at most ${limits.maxTreeFiles} files.`);
    return { name: e.name, type: 'dir', size: e.size, files: e.files, ...unsafe };
  }
  throw breach('An entry\'s "type" must be "file" or "dir".');
}

function parseSnippet(value: unknown, limits: Pick<Limits, 'maxSnippetBytes' | 'maxPathBytes'>): Snippet {
  const s = value as Record<string, unknown> | null;
  if (s === null || typeof s !== 'object' || Array.isArray(s)) throw breach('"snippet" must be an object.');
  const { text, path, startLine, endLine, language } = s;
  if (typeof text !== 'string' || typeof path !== 'string' || typeof language !== 'string' || !isSafeUint(startLine) || !isSafeUint(endLine)) {
    throw breach('A snippet is {text, path, startLine, endLine, language}.');
  }
  if (Buffer.byteLength(text, 'utf8') > limits.maxSnippetBytes) throw new PeerShareError('TOO_LARGE', `A snippet may have at most ${limits.maxSnippetBytes} bytes.`);
  if (startLine < 1 || endLine < startLine) throw new PeerShareError('INVALID_ARGUMENT', 'A snippet\'s lines must run from startLine ≥ 1 to endLine ≥ startLine.');
  if (!LANGUAGE.test(language)) throw new PeerShareError('INVALID_ARGUMENT', 'A snippet\'s language is a short identifier such as "typescript".');
  try {
    inspectReceivedName(path, limits.maxPathBytes);
  } catch {
    throw new PeerShareError('INVALID_ARGUMENT', 'A snippet\'s path must be a plain relative path.');
  }
  return { text, path, startLine, endLine, language };
}
