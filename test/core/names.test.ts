import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { DISGUISING_CHARS, INVISIBLE_CHARS, checkReceivedName, collisionKey, foldName, isShortNameShape, sanitizeForDisplay } from '../../src/core';
import { MAX_COMPONENT_BYTES, inspectComponent, inspectReceivedName, isPlainComponent } from '../../src/core/names';

/** Shows a name with its invisible characters spelled out, for test titles. */
const shown = (name: string): string => JSON.stringify(name.replace(/[^\x21-\x7e]/gu, (c) => `<U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}>`)).slice(0, 60);

describe('checkReceivedName (names a peer sends us)', () => {
  it('accepts plain relative names', () => {
    assert.deepEqual(checkReceivedName('a/b/c.txt'), ['a', 'b', 'c.txt']);
    assert.deepEqual(checkReceivedName('é ü/日本.md'), ['é ü', '日本.md']);
    assert.deepEqual(checkReceivedName('.gitignore'), ['.gitignore']);
  });

  const legitimate: [string, string][] = [
    ['café/naïve résumé.txt', 'accented Latin (NFC)'],
    ['cafe\u0301.txt', 'accented Latin (NFD, as macOS writes it)'],
    ['Ærøskøbing/Łódź/İstanbul.md', 'more Latin letters'],
    ['日本語/資料.md', 'CJK'],
    ['한국어 문서.txt', 'Hangul with a space'],
    ['ملف.txt', 'Arabic'],
    ['Привет.txt', 'Cyrillic'],
    ['🎉 party.txt', 'an emoji without joiners'],
    ['file~.txt', 'a tilde without digits'],
    ['a~b', 'a tilde inside a name'],
    ['~', 'a lone tilde'],
    ['backup~1x.txt', 'a tilde and digits that are not the short-name shape'],
    ['longname~1.txt', 'a stem longer than a short name has'],
    ['names with spaces/my file.txt', 'spaces inside names'],
    ['.github/workflows/ci.yml', '.github'],
    ['.gitattributes', '.gitattributes'],
    ['.vscode-test/x', '.vscode-test'],
    ['git/config', 'git without the dot'],
    ['console.log', 'a name that starts with a device name'],
    ['\u212a-value.txt', 'the Kelvin sign (only a collision concern)'],
  ];
  for (const [name, why] of legitimate) {
    it(`accepts ${why}: ${shown(name)}`, () => {
      assert.deepEqual(checkReceivedName(name), name.split('/'));
    });
  }

  const refused: [string, string][] = [
    ['', 'empty'],
    ['/etc/passwd', 'absolute'],
    ['../x', 'parent'],
    ['a/../../x', 'parent in the middle'],
    ['a/./b', 'dot'],
    ['a//b', 'empty component'],
    ['a\\..\\b', 'backslash'],
    ['C:/Windows/x', 'drive letter'],
    ['C:x', 'drive-relative'],
    ['//server/share/x', 'UNC'],
    ['a\u0000b', 'NUL'],
    ['a\nb', 'newline'],
    ['a\u001b[31mb', 'ANSI escape'],
    ['evil\u202etxt.exe', 'bidi override'],
    ['.git/hooks/pre-commit', '.git'],
    ['sub/.GIT/config', '.git in another case'],
    ['sub/.git./config', '.git with a trailing dot'],
    ['CON', 'reserved device'],
    ['nul.txt', 'reserved device with extension'],
    ['name.', 'trailing dot'],
    ['name ', 'trailing space'],
    ['a?b', 'wildcard'],
    ['x'.repeat(256), 'component too long'],
  ];
  for (const [name, why] of refused) {
    it(`refuses ${why}: ${JSON.stringify(name).slice(0, 40)}`, () => {
      assert.throws(() => checkReceivedName(name), { code: 'BAD_NAME' });
    });
  }

  // Issue 16, finding 10: each class the review got through, and its relatives.
  const refusedByClass: Record<string, [string, string][]> = {
    'Windows 8.3 short names': [
      ['GIT~1/hooks/pre-commit', 'GIT~1 (.git)'],
      ['VSCODE~1/tasks.json', 'VSCODE~1 (.vscode)'],
      ['git~1/config', 'a short name in lower case'],
      ['sub/GIT~2/config', 'a short name deeper down, another number'],
      ['PROGRA~1/x', 'a six-letter stem'],
      ['GI7F3A~1/x', 'the hashed form'],
      ['VSCODE~12.JSN', 'a short name with an extension'],
      ['ＧＩＴ～１/config', 'a short name in full-width letters'],
    ],
    'default-ignorable characters inside names': [
      ['.g\u200cit/config', '.git with a ZWNJ'],
      ['.git\u200d/config', '.git with a ZWJ'],
      ['.vscode\u034f/tasks.json', '.vscode with a CGJ'],
      ['.gi\u00adt/config', '.git with a soft hyphen'],
      ['.git\ufe0f/config', '.git with a variation selector'],
      ['.git\u2060/config', '.git with a word joiner'],
      ['\u{e0067}.git/config', '.git after a tag character'],
      ['.vs\u180bcode/x', '.vscode with a Mongolian variation selector'],
      ['👩\u200d💻.txt', 'an emoji ZWJ sequence (display keeps it, file names do not)'],
    ],
    'invisible or blank names': [
      ['\u3164', 'U+3164 HANGUL FILLER'],
      ['\uffa0', 'U+FFA0 HALFWIDTH HANGUL FILLER'],
      ['\u115f\u1160', 'U+115F and U+1160 Hangul fillers'],
      ['\u00ad', 'U+00AD SOFT HYPHEN'],
      ['\u2800', 'U+2800 BRAILLE PATTERN BLANK'],
      ['\u180e', 'U+180E MONGOLIAN VOWEL SEPARATOR'],
      ['\u{e0001}\u{e0041}', 'tag characters'],
      ['a\u2062b', 'U+2062 INVISIBLE TIMES'],
      ['sub/\u3164/x.txt', 'a filler as a folder'],
    ],
    'spaces other than U+0020': [
      ['a\u00a0b.txt', 'a no-break space'],
      ['a\u3000b.txt', 'an ideographic space'],
      ['a\u2009b.txt', 'a thin space'],
      ['a\u202fb.txt', 'a narrow no-break space'],
      ['\u3000', 'a name that is only an ideographic space'],
    ],
    'spellings that fold to .git, .vscode, dots or device names': [
      ['.g\u0131t/config', '.git with a dotless ı'],
      ['.v\u017fcode/tasks.json', '.vscode with a long ſ'],
      ['.\uff47\uff49\uff54/config', '.git in full-width letters'],
      ['\uff0e\uff0e/x', '".." in full-width dots'],
      ['a\uff0fb', 'a full-width slash'],
      ['a\uff3cb', 'a full-width backslash'],
      ['name\uff0e', 'a trailing full-width dot'],
      ['COM\u00b9', 'COM¹'],
      ['\uff23\uff2f\uff2e.txt', 'CON in full-width letters'],
      ['CONIN$', 'CONIN$'],
      ['nul .txt', 'NUL with a space before the extension'],
    ],
  };
  for (const [cls, cases] of Object.entries(refusedByClass)) {
    describe(cls, () => {
      for (const [name, why] of cases) {
        it(`refuses ${why}: ${shown(name)}`, () => {
          assert.throws(() => checkReceivedName(name), { code: 'BAD_NAME' });
        });
      }
    });
  }

  it('isShortNameShape tells the 8.3 shape from names that only contain a tilde', () => {
    for (const name of ['GIT~1', 'vscode~1', 'PROGRA~12', 'A~1.TXT', 'GI7F3A~1.jsn', 'ｇｉｔ～１']) assert.ok(isShortNameShape(name), name);
    for (const name of ['file~.txt', 'a~b', '~', 'longname~1', 'GIT~1.json', 'GIT~x', '~1', '.git~1']) assert.ok(!isShortNameShape(name), name);
  });

  it('a plain name (the shortcut) is only ever one every full check passes: all names of up to 3 characters from an alphabet of every printable ASCII character at the ends', () => {
    const refused = (why: string): never => {
      throw new Error(why);
    };
    const fullyPasses = (part: string): boolean => {
      try {
        return inspectComponent(part, refused) === undefined;
      } catch {
        return false;
      }
    };
    const printable = Array.from({ length: 95 }, (_, i) => String.fromCharCode(0x20 + i));
    const names: string[] = [...printable];
    for (const a of printable) for (const b of printable) names.push(a + b);
    for (const a of printable) for (const b of ['a', '.', '-', '~', ' ', '1']) for (const c of printable) names.push(a + b + c);
    // Device names Windows reserves, in any case, with and without an extension; and their neighbours.
    for (const stem of ['con', 'CON', 'Prn', 'aUx', 'NUL', 'com1', 'COM9', 'lpt0', 'LpT5', 'con1', 'comx', 'lpt10', 'nul-', 'aux_x', 'cons', 'xcon']) {
      for (const tail of ['', '.txt', '.tar.gz', '.', '.a.', '-1', '_']) names.push(stem + tail);
    }
    names.push('a'.repeat(MAX_COMPONENT_BYTES), 'a'.repeat(MAX_COMPONENT_BYTES + 1), `${'a'.repeat(MAX_COMPONENT_BYTES - 4)}.bin`, 'GIT~1', 'git', 'vscode', 'a.git', 'file-00001.bin');
    let plain = 0;
    for (const name of names) {
      if (!isPlainComponent(name)) continue;
      plain++;
      assert.ok(fullyPasses(name), `${shown(name)} is taken as plain but a full check refuses it`);
    }
    // The shortcut is taken for most names (the sample has thousands of plain ones), and not for the refused ones.
    assert.ok(plain > 3000, `${plain} plain names`);
    for (const name of ['con', 'CON.txt', 'com1', 'Lpt9.tar.gz', 'nul', 'a'.repeat(MAX_COMPONENT_BYTES + 1), '.git', 'a.', 'GIT~1']) assert.equal(isPlainComponent(name), false, name);
    for (const name of ['con', 'CON.txt', 'com1', 'Lpt9.tar.gz']) assert.ok(inspectReceivedName(`dir/${name}`).unsafeHere, name);
    assert.throws(() => inspectReceivedName(`dir/${'a'.repeat(MAX_COMPONENT_BYTES + 1)}`), { code: 'BAD_NAME' });
  });

  it('refuses non-strings', () => {
    for (const value of [undefined, null, 3, {}, ['a']]) assert.throws(() => checkReceivedName(value), { code: 'BAD_NAME' });
  });

  it('every invisible code point is refused in a name and escaped on screen (all 1,114,112 checked)', () => {
    let invisible = 0;
    for (let cp = 0; cp <= 0x10ffff; cp++) {
      const c = String.fromCodePoint(cp);
      if (!INVISIBLE_CHARS.test(c)) continue;
      invisible++;
      const name = `a${c}b`;
      assert.throws(() => checkReceivedName(name), { code: 'BAD_NAME' }, `U+${cp.toString(16)} in a name`);
      assert.notEqual(sanitizeForDisplay(name), name, `U+${cp.toString(16)} on screen`);
      assert.doesNotMatch(sanitizeForDisplay(name), DISGUISING_CHARS);
    }
    // Default-ignorables, controls, format characters, surrogates, spaces and the named blanks.
    assert.ok(invisible > 6000, `${invisible} invisible code points`);
  });
});

describe('collisionKey (names one file system would merge)', () => {
  const pairs: [string, string, string][] = [
    ['Readme.MD', 'readme.md', 'case'],
    ['e\u0301.txt', '\u00e9.txt', 'NFD and NFC'],
    ['\u0131.txt', 'I.txt', 'dotless ı and I (NTFS)'],
    ['\u017fecret', 'secret', 'long ſ and s'],
    ['\u212aey.txt', 'key.txt', 'the Kelvin sign and K'],
    ['\u212b.txt', '\u00e5.txt', 'the Ångström sign and å'],
    ['Stra\u00dfe.txt', 'STRASSE.txt', 'ß and SS (APFS full folding)'],
    ['\u03c2.txt', '\u03c3.txt', 'final sigma and sigma'],
    ['\ufb01le.txt', 'file.txt', 'the fi ligature (NFKC)'],
    ['\uff26\uff49\uff4c\uff45.txt', 'file.txt', 'full-width letters'],
    ['dir/\u0131/x', 'DIR/I/X', 'a folder on the way'],
  ];
  for (const [a, b, why] of pairs) {
    it(`merges ${why}: ${shown(a)} and ${shown(b)}`, () => {
      assert.equal(collisionKey(a), collisionKey(b));
    });
  }

  it('keeps names apart that no file system merges', () => {
    for (const [a, b] of [['a.txt', 'b.txt'], ['é.txt', 'e.txt'], ['dir/x', 'dirx'], ['日本.md', '日本語.md'], ['ı', 'İ']]) {
      assert.notEqual(collisionKey(a), collisionKey(b), `${a} vs ${b}`);
    }
  });

  it('drops invisible characters, as HFS+ ignores some when it compares', () => {
    assert.equal(collisionKey('.g\u200cit'), collisionKey('.git'));
  });

  it('foldName lowers printable ASCII alone, exactly as the full fold does (every character, and the letters in names)', () => {
    const fullFold = (t: string): string => t.normalize('NFKC').toLowerCase().toUpperCase().toLowerCase().normalize('NFKC');
    const printable = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i));
    for (const c of printable) assert.equal(foldName(c), fullFold(c), JSON.stringify(c));
    const all = printable.join('');
    assert.equal(foldName(all), fullFold(all));
    for (const name of ['.GIT', '.VSCode', 'Makefile', 'CON.txt', 'PROGRA~1', 'dir-000/file-00001.bin']) assert.equal(foldName(name), fullFold(name));
    // Past printable ASCII the full fold runs: a control character, a Turkish dotless i, a full-width letter.
    assert.equal(foldName('.G\u0131T\u0007'), fullFold('.G\u0131T\u0007'));
    assert.equal(foldName('\u212Aelvin'), 'kelvin');
  });

  it('foldName is the fold the .git check and collisionKey share', () => {
    assert.equal(foldName('.G\u0131T'), '.git');
    assert.equal(foldName('\uff36\uff33\uff23\uff4f\uff44\uff45'), 'vscode');
  });
});

describe('sanitizeForDisplay (the same rule on screen)', () => {
  const kept: [string, string][] = [
    ['👩\u200d💻 Ana', 'an emoji ZWJ sequence'],
    ['👩🏽\u200d💻', 'a ZWJ sequence with a skin tone'],
    ['🏳\ufe0f\u200d🌈', 'a ZWJ sequence with VS16'],
    ['❤\ufe0f', 'VS16 after an emoji'],
    ['1\ufe0f\u20e3', 'a keycap'],
    ['\u0639\u0644\u06cc\u200c\u0631\u0636\u0627', 'a Persian name with a ZWNJ'],
    ['\u0915\u094d\u200d\u0937', 'Devanagari with a ZWJ'],
    ['José Ñúñez 日本', 'accents, CJK and plain spaces'],
  ];
  for (const [text, why] of kept) {
    it(`keeps ${why}: ${shown(text)}`, () => {
      assert.equal(sanitizeForDisplay(text), text);
      assert.doesNotMatch(text, DISGUISING_CHARS);
    });
  }

  const escaped: [string, string, string][] = [
    ['Ali\u200dce', 'Ali\\u200dce', 'a ZWJ between Latin letters'],
    ['.g\u200cit', '.g\\u200cit', 'a ZWNJ between Latin letters'],
    ['\u0628\u061c\u200c\u0628', '\u0628\\u061c\\u200c\u0628', 'a ZWNJ beside an escaped mark'],
    ['a\ufe0f', 'a\\ufe0f', 'a variation selector after a letter'],
    ['❤\ufe0f\ufe0f', '❤\ufe0f\\ufe0f', 'a second variation selector (data hidden in selectors)'],
    ['👩\u200d\u200d💻', '👩\\u200d\\u200d💻', 'a doubled ZWJ'],
    ['x\u{e0041}y', 'x\\u{e0041}y', 'a tag character'],
    ['\u3164\uffa0\u2800\u00ad\u180e\u2062', '\\u3164\\uffa0\\u2800\\u00ad\\u180e\\u2062', 'fillers and invisible characters'],
    ['a\u00a0b\u3000c', 'a\\u00a0b\\u3000c', 'spaces other than U+0020'],
  ];
  for (const [text, want, why] of escaped) {
    it(`escapes ${why}: ${shown(text)}`, () => {
      assert.equal(sanitizeForDisplay(text), want);
    });
  }

  it('a name padded with fillers cannot pass for someone else’s name, address and ID', () => {
    const forged = `Alice (192.168.1.20, FLRK-XVPC-ERBT)${'\u2800'.repeat(40)}${'\u3164'.repeat(20)}`;
    const onScreen = sanitizeForDisplay(forged);
    assert.doesNotMatch(onScreen, DISGUISING_CHARS);
    assert.equal(onScreen.split('\\u2800').length - 1, 40);
    assert.equal(onScreen.split('\\u3164').length - 1, 20);
  });

  it('escapes exactly what DISGUISING_CHARS names, and anything it would alter is refused as a file name', () => {
    const pieces = ['a', 'I', ' ', '.', '👩', '💻', '🏽', '\u0628', '\u0915', '\u094d', '1', '\u20e3', '\u200c', '\u200d', '\ufe0f', '\u061c', '\u180b', '\u3164', '\u2800', '\u00a0', '\u{e0041}', '\u202e', '\u001b'];
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...pieces), { maxLength: 12 }), (parts) => {
        const text = parts.join('');
        const onScreen = sanitizeForDisplay(text);
        assert.doesNotMatch(onScreen, DISGUISING_CHARS);
        if (DISGUISING_CHARS.test(text)) {
          assert.notEqual(onScreen, text);
          assert.throws(() => checkReceivedName(text), { code: 'BAD_NAME' });
        } else assert.equal(onScreen, text);
      }),
      { numRuns: 2000 },
    );
  });
});
