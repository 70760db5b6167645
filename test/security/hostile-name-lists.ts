/**
 * The hostile names of issue 16 (finding 10), shared by the suites that replay them at a receiver:
 * a download (hostile-names.test.ts) and an offer (hostile-sender.test.ts).
 */

/** Bad name components, each as a folder in a tree and as a single file's name. */
export const BAD_NAMES: [string, string][] = [
  ['GIT~1', 'the 8.3 short name of .git'],
  ['VSCODE~1', 'the 8.3 short name of .vscode'],
  ['git~2', 'a short name in lower case, another number'],
  ['\uff27\uff29\uff34\uff5e\uff11', 'a short name in full-width letters'],
  ['.g\u200cit', '.git with a ZWNJ'],
  ['.git\u200d', '.git with a ZWJ'],
  ['.vscode\u034f', '.vscode with a CGJ'],
  ['.gi\u00adt', '.git with a soft hyphen'],
  ['.g\u0131t', '.git with a dotless ı'],
  ['.v\u017fcode', '.vscode with a long ſ'],
  ['\u3164', 'U+3164 HANGUL FILLER'],
  ['\u00ad', 'U+00AD SOFT HYPHEN'],
  ['\u2800', 'U+2800 BRAILLE PATTERN BLANK'],
  ['\u180e', 'U+180E MONGOLIAN VOWEL SEPARATOR'],
  ['\u{e0067}\u{e0069}\u{e0074}', 'tag characters'],
  ['a\u2062b', 'U+2062 INVISIBLE TIMES'],
  ['\uffa0', 'U+FFA0 HALFWIDTH HANGUL FILLER'],
  ['report\u3000final.txt', 'an ideographic space'],
];

/** Names that break the form of a path in another spelling: only a hostile peer sends them, and the download stops. */
export const MALFORMED_NAMES: [string, string][] = [
  ['\uff0e\uff0e', '".." in full-width dots'],
  ['a\uff0fb', 'a full-width slash'],
  ['a\uff3cb', 'a full-width backslash'],
];

/** Pairs one file system would merge: the second must not replace the first. */
export const COLLISIONS: [string, string, string][] = [
  ['I.txt', '\u0131.txt', 'I.txt then ı.txt (NTFS)'],
  ['\u0131.txt', 'I.txt', 'ı.txt then I.txt'],
  ['secret', '\u017fecret', 'secret then ſecret'],
  ['\u017fecret', 'SECRET', 'ſecret then SECRET'],
  ['key.txt', '\u212aey.txt', 'key.txt then the Kelvin sign'],
  ['caf\u00e9.txt', 'cafe\u0301.txt', 'NFC then NFD'],
  ['Stra\u00dfe.txt', 'STRASSE.txt', 'ß then SS (APFS)'],
  ['\ufb01le.txt', 'file.txt', 'the fi ligature then fi'],
];

