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
/** A tree watch's change path (spec 14.5): as long as a path may be (6.1), in characters. */
const MAX_TREE_CHANGE_PATH_CHARS = 4096;

/** `share.watch {path, tree?}`; anything else is a breach of the spec (the connection closes). */
export function parseWatchRequest(m: CapabilityMessage): { path: string; tree: boolean } {
  if (typeof m.path !== 'string') throw new PeerShareError('PROTOCOL_ERROR', `"${shownType(m.type)}" needs a string "path".`);
  if (m.tree !== undefined && typeof m.tree !== 'boolean') throw new PeerShareError('PROTOCOL_ERROR', `"${shownType(m.type)}": "tree" is true or false.`);
  return { path: m.path, tree: m.tree === true };
}

/** A REPLY of a watch, checked: `watching`, `changes` or `resync`. */
export type WatchReply = { kind: 'watching' } | WatchBatch;

/** `tree`: the watch covers a subtree (spec 14.5), so a change names a path below the watched folder, not one name. */
export function parseWatchReply(message: WireMessage, tree = false): WatchReply {
  switch (message.type) {
    case 'watching':
      return { kind: 'watching' };
    case 'resync':
      return { kind: 'resync' };
    case 'changes':
      return { kind: 'changes', changes: parseChanges(message.changes, tree) };
    default:
      throw breach(`Expected a watch's "watching", "changes" or "resync", got "${shownType(message.type)}".`);
  }
}

function parseChanges(list: unknown, tree: boolean): FolderChange[] {
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
    // The name and the state are an Entry's (spec 6.1), checked by the one Entry parser; a tree's
    // path is names of that form joined by '/', at most MAX_TREE_CHANGE_PATH_CHARS in all.
    const parsed = parseEntry(type === 'removed' ? { name: tree ? 'x' : path, type: 'file', size: 0, mtimeMs: 0 } : { ...(entry as object), name: tree ? 'x' : path });
    const name = tree ? path : parsed.name;
    const wellFormed = tree
      ? typeof name === 'string' && name.length <= MAX_TREE_CHANGE_PATH_CHARS && name.split('/').every(isOneName)
      : isOneName(name as string);
    if (!wellFormed || seen.has(name as string)) {
      throw new PeerShareError('BAD_NAME', 'The peer named an invalid or repeated name in a batch of changes.');
    }
    seen.add(name as string);
    const change: FolderChange = { path: name as string, type: type as FolderChange['type'] };
    if (type !== 'removed') change.entry = { type: parsed.type, size: parsed.size, mtimeMs: parsed.mtimeMs };
    return change;
  });
}

/** One name of an Entry's form (spec 6.1): non-empty, at most 1,024 characters, no '/', not '.' or '..'. */
function isOneName(name: string): boolean {
  return name !== '' && name.length <= 1024 && !name.includes('/') && name !== '.' && name !== '..';
}

function breach(message: string): PeerShareError {
  return new PeerShareError('PROTOCOL_ERROR', message);
}
