import { PeerShareError } from './errors';
import { DISGUISING_CHARS } from './protocol';

/**
 * Checks a relative name a peer sent us before anything is written under it (the scp
 * CVE-2019-6111 class): plain `/`-separated components only, nothing that climbs out, nothing a
 * file system would read as something else, nothing that lands in `.git`, and no characters that
 * could disguise a name on screen. Returns the components.
 *
 * `.git` (hooks run code) and `.vscode` (tasks can run when a folder opens, settings change the
 * editor) are refused at any depth, in any spelling a file system might fold to them: a download
 * never writes there. To take a peer's editor settings on purpose, download the single file into
 * a folder of your choosing.
 */
const WINDOWS_RESERVED = /^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$/i;
const MAX_COMPONENT_BYTES = 255;

export function checkReceivedName(name: unknown, maxPathBytes = 4096): string[] {
  const bad = (why: string): never => {
    throw new PeerShareError('BAD_NAME', `The peer sent an unsafe file name (${why}); it was refused.`);
  };
  if (typeof name !== 'string' || name.length === 0) bad('empty');
  const text = name as string;
  if (Buffer.byteLength(text, 'utf8') > maxPathBytes) bad('too long');
  // A name we accept is never altered on screen; U+FFFD means it was not valid UTF-8.
  if (DISGUISING_CHARS.test(text) || text.includes('\uFFFD')) bad('control, invisible or direction characters');
  if (text.includes('\\')) bad('backslash');
  if (text.includes(':')) bad('colon or drive letter');
  if (text.startsWith('/')) bad('absolute path');
  const components = text.split('/');
  for (const part of components) {
    if (part === '' || part === '.' || part === '..') bad('empty, "." or ".." component');
    if (Buffer.byteLength(part, 'utf8') > MAX_COMPONENT_BYTES) bad('component too long');
    if (/[. ]$/.test(part)) bad('trailing dot or space');
    if (WINDOWS_RESERVED.test(part)) bad('reserved device name');
    if (/[<>"|?*]/.test(part)) bad('character not allowed in file names on Windows');
    const folded = part.normalize('NFKC').toLowerCase();
    if (folded === '.git' || folded === '.vscode') bad(folded);
  }
  return components;
}

/** Case- and normalisation-folded key, to catch two names that one file system would merge. */
export function collisionKey(relPath: string): string {
  return relPath.normalize('NFC').toLowerCase();
}
