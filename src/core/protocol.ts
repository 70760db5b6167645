import { PeerShareError, isErrorCode, type ErrorCode } from './errors';

/** Protocol versions this build speaks, newest last. */
export const PROTOCOL_VERSIONS = [1] as const;
export const PROTOCOL_VERSION = 1;

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
export interface FileStartMessage { type: 'file'; path: string; size: number; mtimeMs: number; offset: number }
export interface FileEndMessage { type: 'fileEnd'; sha256: string }
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
      fail(`Unknown request type ${JSON.stringify(String(m.type).slice(0, 40))}.`);
  }
}

export function parseEntry(m: unknown): Entry {
  if (m === null || typeof m !== 'object') fail('An entry must be an object.');
  const e = m as Record<string, unknown>;
  const type = e.type;
  if (type !== 'file' && type !== 'dir') fail('An entry type must be "file" or "dir".');
  return { name: str(e, 'name', 1024), type, size: uint(e, 'size'), mtimeMs: num(e, 'mtimeMs') };
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
 * Characters that would let text from a peer disguise itself on screen: C0 and C1 controls (ANSI
 * escapes start with one), line and paragraph separators, bidirectional marks, embeddings,
 * overrides and isolates, and invisible spaces. (Zero-width joiners stay: scripts and emoji need them.)
 */
// eslint-disable-next-line no-control-regex
export const DISGUISING_CHARS = /[\u0000-\u001f\u007f-\u009f\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff]/;
const DISGUISING_CHARS_ALL = new RegExp(DISGUISING_CHARS.source, 'g');

/**
 * Makes text from a peer safe to show in a terminal, a notification or a log: every disguising
 * character becomes a visible escape.
 */
export function sanitizeForDisplay(text: string): string {
  return text.replace(DISGUISING_CHARS_ALL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
