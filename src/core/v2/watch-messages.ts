import { PeerShareError } from '../errors';
import { parseEntry, shownType } from '../protocol';
import type { FolderChange, WatchBatch } from '../watch';
import type { WireMessage } from './frames';
import type { CapabilityMessage } from './messages';

/**
 * The messages of `share.watch` (docs/protocol-v2.md 14), both directions: the request's shape,
 * and the requester's checks of every REPLY (each change is an Entry's name and bounds).
 */

export const WATCH_REQUEST = 'share.watch';
/** Changes in one REPLY: a protocol constant, as a `share.list` batch (spec 14.1). */
export const MAX_WATCH_BATCH_CHANGES = 1000;
const CHANGE_TYPES = new Set(['added', 'removed', 'changed']);

/** `share.watch {path}`; anything else is a breach of the spec (the connection closes). */
export function parseWatchRequest(m: CapabilityMessage): { path: string } {
  if (typeof m.path !== 'string') throw new PeerShareError('PROTOCOL_ERROR', `"${shownType(m.type)}" needs a string "path".`);
  return { path: m.path };
}

/** A REPLY of a watch, checked: `watching`, `changes` or `resync`. */
export type WatchReply = { kind: 'watching' } | WatchBatch;

export function parseWatchReply(message: WireMessage): WatchReply {
  switch (message.type) {
    case 'watching':
      return { kind: 'watching' };
    case 'resync':
      return { kind: 'resync' };
    case 'changes':
      return { kind: 'changes', changes: parseChanges(message.changes) };
    default:
      throw breach(`Expected a watch's "watching", "changes" or "resync", got "${shownType(message.type)}".`);
  }
}

function parseChanges(list: unknown): FolderChange[] {
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_WATCH_BATCH_CHANGES) {
    throw breach(`A batch of changes must hold 1 to ${MAX_WATCH_BATCH_CHANGES} changes.`);
  }
  const seen = new Set<string>();
  return list.map((item: unknown) => {
    if (item === null || typeof item !== 'object') throw breach('A change must be an object.');
    const { path, type, entry } = item as Record<string, unknown>;
    if (typeof type !== 'string' || !CHANGE_TYPES.has(type)) throw breach('A change is "added", "removed" or "changed".');
    if (type === 'removed' ? entry !== undefined : entry === null || typeof entry !== 'object') {
      throw breach('An added or changed entry carries its new state; a removed one none.');
    }
    // The name and the state are an Entry's (spec 6.1), checked by the one Entry parser.
    const parsed = parseEntry(type === 'removed' ? { name: path, type: 'file', size: 0, mtimeMs: 0 } : { ...(entry as object), name: path });
    const name = parsed.name;
    if (name === '' || name.includes('/') || name === '.' || name === '..' || seen.has(name)) {
      throw new PeerShareError('BAD_NAME', 'The peer named an invalid or repeated name in a batch of changes.');
    }
    seen.add(name);
    const change: FolderChange = { path: name, type: type as FolderChange['type'] };
    if (type !== 'removed') change.entry = { type: parsed.type, size: parsed.size, mtimeMs: parsed.mtimeMs };
    return change;
  });
}

function breach(message: string): PeerShareError {
  return new PeerShareError('PROTOCOL_ERROR', message);
}
