import { createHash } from 'node:crypto';
import { PeerShareError } from './errors';
import { INVISIBLE_CHARS } from './protocol';

/** Device names Windows reserves in every folder, with or without an extension (checked folded, so `COM¹` is `com1`). */
const WINDOWS_RESERVED = /^(con|prn|aux|nul|conin\$|conout\$|com[0-9]|lpt[0-9])\s*(\..*)?$/;
/**
 * The shape of a Windows 8.3 short name: a stem of 1-6 characters, `~`, digits, an extension of up
 * to 3. NTFS gives every long name such an alias (`.git` is `GIT~1`, `.vscode` `VSCODE~1`) and
 * opens the long name through it, and which long name a given alias reaches depends on the order
 * the folder was filled, so no name of this shape is taken, whatever it looks like. `file~.txt`
 * and `a~b` are fine: the digits make the shape.
 */
const SHORT_NAME_SHAPE = /^[^~.]{1,6}~[0-9]+(\.[^.]{1,3})?$/;
/** The longest file name (one path component) the common file systems take, in UTF-8 bytes. */
export const MAX_COMPONENT_BYTES = 255;
const INVISIBLE_CHARS_ALL = new RegExp(INVISIBLE_CHARS.source, 'gu');

/**
 * Checks a relative name a peer sent us before anything is written under it (the scp
 * CVE-2019-6111 class): plain `/`-separated components only, nothing that climbs out, nothing a
 * file system would read as something else, nothing that lands in `.git`, and no characters that
 * could disguise a name on screen. Returns the components.
 *
 * One rule for every name, the same as the display sanitizer's: no character of INVISIBLE_CHARS
 * (controls, format and bidi characters, every default-ignorable code point such as ZWJ, ZWNJ,
 * CGJ, soft hyphen, variation selectors and tag characters, the Hangul fillers, U+2800 and every
 * space but U+0020). File names get none of the display's exceptions for emoji and joining
 * scripts: HFS+ ignores some of these characters when it compares names (git CVE-2014-9390), and
 * a name that looks like another is refused rather than shown.
 *
 * Each component is also compared in its folded form (`foldName`: NFKC and case folding, which
 * merges at least what NTFS and APFS merge): `.git` (hooks run code) and `.vscode` (tasks can run
 * when a folder opens, settings change the editor) are refused at any depth in any spelling that
 * folds to them (`.GIT`, full-width letters, a dotless ı), and so are the Windows 8.3 short-name
 * shape and the reserved device names. A download never writes there. To take a peer's editor
 * settings on purpose, download the single file into a folder of your choosing.
 */
export function checkReceivedName(name: unknown, maxPathBytes = 4096): string[] {
  const checked = inspectReceivedName(name, maxPathBytes);
  if (checked.unsafeHere) throw new PeerShareError('BAD_NAME', `The peer sent an unsafe file name (${checked.unsafeHere.why}); it was refused.`);
  return checked.components;
}

/** A name that is well-formed but must not be written here, and which component makes it so. */
export interface UnsafeHere {
  /** Index of the first component that may not be written. */
  at: number;
  why: string;
}

/**
 * The two halves of checkReceivedName, for a folder download. A name that breaks the *form* of a
 * relative path (empty, absolute, `..`, a backslash, over-long, not UTF-8, a dot or slash in
 * another spelling) can only come from a hostile peer: that throws BAD_NAME and the download
 * stops. A name that is well-formed but not safe to write on this machine (`.git`, `.vscode`, a
 * device or short name, invisible characters, characters Windows forbids) is what an honest
 * peer's folder may hold: it comes back as `unsafeHere`, and the download leaves that entry out.
 */
export function inspectReceivedName(name: unknown, maxPathBytes = 4096): { components: string[]; unsafeHere?: UnsafeHere } {
  const bad = (why: string): never => {
    throw new PeerShareError('BAD_NAME', `The peer sent an unsafe file name (${why}); it was refused.`);
  };
  if (typeof name !== 'string' || name.length === 0) bad('empty');
  const text = name as string;
  if (Buffer.byteLength(text, 'utf8') > maxPathBytes) bad('too long');
  if (text.includes('\uFFFD')) bad('not valid UTF-8');
  if (text.includes('\\')) bad('backslash');
  if (text.startsWith('/')) bad('absolute path');
  const components = text.split('/');
  let unsafeHere: UnsafeHere | undefined;
  components.forEach((part, at) => {
    if (isPlainComponent(part)) return;
    const why = inspectComponent(part, bad);
    if (why && !unsafeHere) unsafeHere = { at, why };
  });
  return { components, unsafeHere };
}

/**
 * Every check of one component, for inspectReceivedName: throws through `bad` when it breaks the
 * form of a name, returns why it may not be written here, if it may not. Exported for the test that
 * holds isPlainComponent to it.
 */
export function inspectComponent(part: string, bad: (why: string) => never): string | undefined {
  if (part === '' || part === '.' || part === '..') bad('empty, "." or ".." component');
  if (Buffer.byteLength(part, 'utf8') > MAX_COMPONENT_BYTES) bad('component too long');
  const folded = foldName(part);
  // Full-width dots and slashes become real ones wherever a tool applies NFKC or a Windows best-fit code page.
  if (folded === '.' || folded === '..' || /[/\\]/.test(folded)) bad('a dot, slash or backslash in another spelling');
  return unsafeComponent(part, folded);
}

/**
 * ASCII letters, digits, `_` and `-`, with dots inside but not at either end, at most
 * MAX_COMPONENT_BYTES: what most names are. Every check of inspectComponent passes for such a name
 * except the reserved device names (`con.txt`), which are looked at here: no dot in front (so not
 * `.git` or `.vscode`), none behind, no `~` (so not a short name), nothing invisible, nothing
 * Windows forbids, and ASCII is its own fold. *Why: a sync looks at every name twice (the listing
 * and the record of what came from where), and the full checks cost 5-10 µs a name until V8 has
 * optimised them, 1 µs after: 20-40 ms of a sync of 10,000 files; this test, 0.05 µs.*
 */
export function isPlainComponent(part: string): boolean {
  return part.length <= MAX_COMPONENT_BYTES && PLAIN_COMPONENT.test(part) && !WINDOWS_RESERVED.test(part.toLowerCase());
}

const PLAIN_COMPONENT = /^[A-Za-z0-9_-](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?$/;

/** Why a well-formed component may not be written here, if it may not. */
function unsafeComponent(part: string, folded: string): string | undefined {
  // A name we accept is never altered on screen.
  if (INVISIBLE_CHARS.test(part)) return 'control, invisible, blank or direction characters';
  if (part.includes(':')) return 'colon or drive letter';
  if (/[<>"|?*]/.test(part)) return 'character not allowed in file names on Windows';
  if (/[. ]$/.test(part) || /[. ]$/.test(folded)) return 'trailing dot or space';
  if (WINDOWS_RESERVED.test(folded)) return 'reserved device name';
  if (SHORT_NAME_SHAPE.test(folded)) return 'the shape of a Windows short name, which can stand for another name such as .git';
  if (folded === '.git') return '.git: a download never writes into a repository';
  if (folded === '.vscode') return '.vscode: a download never changes editor settings or tasks';
  return undefined;
}

/** True for a name component NTFS could take as an 8.3 short name (see SHORT_NAME_SHAPE); case does not matter. */
export function isShortNameShape(component: string): boolean {
  return SHORT_NAME_SHAPE.test(foldName(component));
}

/**
 * The form under which file systems might treat two names as one: NFKC (which includes what
 * APFS's and HFS+'s canonical normalisation merge, and more), then case folded by lowering,
 * upper-casing and lowering again, so `ı` and `I`, `ſ` and `s`, `ß` and `ss`, `ς` and `σ`, the
 * Kelvin sign and `K` all meet (NTFS's upcase table and APFS's case folding merge these pairs).
 * Folding more than a file system does only refuses more, which is the safe side.
 */
export function foldName(text: string): string {
  // Printable ASCII is its own NFKC form and folds by lowering alone (names.test checks every
  // character): most names are, and a sync looks at every name it is sent.
  if (PRINTABLE_ASCII.test(text)) return text.toLowerCase();
  return text.normalize('NFKC').toLowerCase().toUpperCase().toLowerCase().normalize('NFKC');
}

const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

/**
 * Key under which two received paths that one file system would merge are the same: folded as
 * foldName does, with invisible characters dropped (HFS+ ignores some of them when it compares).
 */
export function collisionKey(relPath: string): string {
  return foldName(relPath).replace(INVISIBLE_CHARS_ALL, '');
}

/**
 * What a folder download (download.ts) or a folder stream (share-client.ts) remembers per name: at most a few dozen characters, so the memory a download
 * keeps does not grow with the length of the names a peer sends. A short name is kept as it is
 * (hashing every name cost a 10,000-file folder some 7 % of its time here); a longer one as a
 * digest, marked apart so the two never meet. (A digest collision needs 2^64 names; its only
 * effect would be a false "sent twice".)
 */
const KEPT_NAME_CHARS = 48;
export function nameDigest(name: string): string {
  if (name.length <= KEPT_NAME_CHARS) return `=${name}`;
  return `#${createHash('sha256').update(name).digest().toString('latin1', 0, 16)}`;
}
