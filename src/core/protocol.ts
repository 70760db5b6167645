import { PeerShareError, isErrorCode, type ErrorCode } from './errors';

export type EntryType = 'file' | 'dir';

export interface Entry {
  name: string;
  type: EntryType;
  size: number;
  /** Modification time, milliseconds since the epoch. */
  mtimeMs: number;
}

// ---- client -> server
export interface HelloMessage { type: 'hello'; versions: number[]; name: string; token?: string; request?: boolean }
export interface ListRequest { type: 'list'; path: string }
export interface StatRequest { type: 'stat'; path: string }
export interface ReadRequest { type: 'read'; path: string; offset: number; expect?: { size: number; mtimeMs: number } }
export interface TreeRequest { type: 'tree'; path: string }
export type Request = ListRequest | StatRequest | ReadRequest | TreeRequest;

// ---- server -> client
export interface WelcomeMessage { type: 'welcome'; version: number; name: string; id: string; roots: string[]; paired: boolean }
export interface ErrorMessage { type: 'error'; code: ErrorCode; message: string }
export interface EntriesMessage { type: 'entries'; entries: Entry[] }
export interface EntryMessage { type: 'entry'; entry: Entry }
export interface DirMessage { type: 'dir'; path: string }
export interface SkippedMessage { type: 'skipped'; path: string; code: ErrorCode; message: string }
export interface EndMessage { type: 'end'; count: number }

const MAX_NAME_CHARS = 100;

function fail(message: string): never {
  throw new PeerShareError('PROTOCOL_ERROR', message);
}

function str(m: Record<string, unknown>, key: string, maxChars: number): string {
  const v = m[key];
  if (typeof v !== 'string') fail(`"${key}" must be a string.`);
  if (v.length > maxChars) throw new PeerShareError('TOO_LARGE', `"${key}" is too long.`);
  return v;
}

function uint(m: Record<string, unknown>, key: string): number {
  const v = m[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(`"${key}" must be a non-negative integer.`);
  return v;
}

function num(m: Record<string, unknown>, key: string): number {
  const v = m[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(`"${key}" must be a number.`);
  return v;
}

export function parseHello(m: Record<string, unknown>, maxPathBytes: number): HelloMessage {
  if (m.type !== 'hello') fail('The first message must be hello.');
  const versions = m.versions;
  if (!Array.isArray(versions) || versions.length === 0 || versions.length > 16 || !versions.every((v) => Number.isSafeInteger(v))) {
    fail('"versions" must be a short list of integers.');
  }
  const name = str(m, 'name', MAX_NAME_CHARS);
  const token = m.token === undefined ? undefined : str(m, 'token', Math.min(256, maxPathBytes));
  return { type: 'hello', versions: versions as number[], name, token, request: m.request === true };
}

/** Path length is not checked here: Share.resolve answers an over-long path with TOO_LARGE and keeps the connection. */
export function parseRequest(m: Record<string, unknown>): Request {
  const maxPathBytes = Number.MAX_SAFE_INTEGER;
  switch (m.type) {
    case 'list':
    case 'stat':
    case 'tree':
      return { type: m.type, path: str(m, 'path', maxPathBytes) };
    case 'read': {
      const request: ReadRequest = { type: 'read', path: str(m, 'path', maxPathBytes), offset: uint(m, 'offset') };
      if (m.expect !== undefined) {
        const e = m.expect as Record<string, unknown>;
        if (e === null || typeof e !== 'object') fail('"expect" must be an object.');
        request.expect = { size: uint(e, 'size'), mtimeMs: num(e, 'mtimeMs') };
      }
      return request;
    }
    default:
      fail(`Unknown request type "${shownType(m.type)}".`);
  }
}

export function parseEntry(m: unknown): Entry {
  if (m === null || typeof m !== 'object') fail('An entry must be an object.');
  const e = m as Record<string, unknown>;
  const type = e.type;
  if (type !== 'file' && type !== 'dir') fail('An entry type must be "file" or "dir".');
  const mtimeMs = num(e, 'mtimeMs');
  // Beyond Date's range a time cannot be shown or set: refused, not passed on to throw later.
  if (Math.abs(mtimeMs) > 8.64e15) fail('"mtimeMs" is not a time.');
  return { name: str(e, 'name', 1024), type, size: uint(e, 'size'), mtimeMs };
}

export function parseWelcome(m: Record<string, unknown>): WelcomeMessage {
  const roots = m.roots;
  if (!Array.isArray(roots) || roots.length > 256 || !roots.every((r) => typeof r === 'string' && r.length <= 255)) {
    fail('"roots" must be a list of names.');
  }
  return {
    type: 'welcome',
    version: uint(m, 'version'),
    // Shown in trees, notifications and logs: made safe once, here.
    name: sanitizeForDisplay(str(m, 'name', MAX_NAME_CHARS)),
    id: str(m, 'id', 100),
    roots: roots as string[],
    paired: m.paired === true,
  };
}

/** Turns an `error` message from a peer into a coded error; unknown codes become PROTOCOL_ERROR. */
export function errorFromMessage(m: Record<string, unknown>): PeerShareError {
  const code = isErrorCode(m.code) ? m.code : 'PROTOCOL_ERROR';
  const text = typeof m.message === 'string' ? sanitizeForDisplay(m.message.slice(0, 500)) : undefined;
  return new PeerShareError(code, text && text.length > 0 ? text : undefined);
}

/**
 * The one set of characters PeerShare never takes at face value in text from a peer: controls
 * (C0, C1; ANSI escapes start with one), format characters (bidi marks, embeddings, overrides and
 * isolates, soft hyphen, invisible operators, tag characters), lone surrogates, line and
 * paragraph separators, every default-ignorable code point (zero-width spaces and joiners, the
 * combining grapheme joiner, variation selectors, the Hangul fillers), and blanks that are not
 * default-ignorable but show as nothing: every space except U+0020, U+2800 BRAILLE PATTERN BLANK
 * and the Hangul fillers again by name (U+115F, U+1160, U+3164, U+FFA0), in case a later Unicode
 * moves them. Received file names refuse any of them (checkReceivedName); the display sanitizer
 * escapes them (DISGUISING_CHARS lists its only exceptions). Matches one character; `u` flag.
 */
const INVISIBLE_CLASS =
  '[\\p{Cc}\\p{Cf}\\p{Cs}\\p{Zl}\\p{Zp}\\p{Zs}\\p{Default_Ignorable_Code_Point}\\u115f\\u1160\\u2800\\u3164\\uffa0]';
export const INVISIBLE_CHARS = new RegExp(`(?!\\x20)${INVISIBLE_CLASS}`, 'u');

/**
 * Joiners and emoji variation selectors that are part of visible writing, so the display keeps
 * them: a ZWJ inside an emoji sequence (woman, ZWJ, laptop draws one emoji), a ZWJ or ZWNJ between
 * two visible characters of a script whose spelling needs them (Persian names put a ZWNJ inside
 * words; the Indic scripts use both), and one VS15/VS16 right after an emoji (or a keycap digit). Each changes how the characters beside it are drawn
 * and none shows as blank space, so none can pad a name out to look like someone else's address
 * and ID; everywhere else (`Ali<ZWJ>ce`, `.g<ZWNJ>it`, a run of selectors hiding data) they are escaped.
 * Tag characters are always escaped: the three subdivision flags lose their looks, but tags can
 * carry a whole hidden ASCII text. File names keep none of these exceptions.
 */
const JOINING_SCRIPT_CHAR =
  `(?!${INVISIBLE_CLASS})` +
  '[\\p{scx=Arab}\\p{scx=Syrc}\\p{scx=Nkoo}\\p{scx=Mong}\\p{scx=Deva}\\p{scx=Beng}\\p{scx=Guru}\\p{scx=Gujr}\\p{scx=Orya}\\p{scx=Taml}\\p{scx=Telu}\\p{scx=Knda}\\p{scx=Mlym}\\p{scx=Sinh}]';
const KEPT_FOR_WRITING = [
  '(?<=\\p{Extended_Pictographic}(?:\\uFE0F|\\p{Emoji_Modifier})?)\\u200D(?=\\p{Extended_Pictographic})',
  `(?<=${JOINING_SCRIPT_CHAR})[\\u200C\\u200D](?=${JOINING_SCRIPT_CHAR})`,
  '(?<=\\p{Extended_Pictographic})[\\uFE0E\\uFE0F]',
  '(?<=[0-9#*])\\uFE0F(?=\\u20E3)',
].join('|');

/**
 * A character that would let text from a peer disguise itself on screen: one of INVISIBLE_CHARS
 * that is not part of visible writing (see KEPT_FOR_WRITING). sanitizeForDisplay escapes exactly
 * these, so `DISGUISING_CHARS.test(sanitizeForDisplay(text))` is always false.
 */
export const DISGUISING_CHARS = new RegExp(`(?!\\x20|${KEPT_FOR_WRITING})${INVISIBLE_CLASS}`, 'u');
const DISGUISING_CHARS_ALL = new RegExp(DISGUISING_CHARS.source, 'gu');

/**
 * Makes text from a peer safe to show in a terminal, a notification or a log: every disguising
 * character becomes a visible escape (`\u200b`, `\u{e0041}`), so a name cannot hide text, reorder
 * it, move the cursor or pad itself out with blanks to pass for someone else's name, address and ID.
 */
export function sanitizeForDisplay(text: string): string {
  return text.replace(DISGUISING_CHARS_ALL, (c) => {
    const code = c.codePointAt(0)!;
    return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/** A message type a peer sent, as an error message may quote it: escaped and at most 40 characters. */
export function shownType(type: unknown): string {
  return sanitizeForDisplay(String(type).slice(0, 40));
}
