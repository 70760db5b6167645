import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkReceivedName, collisionKey } from '../../src/core';

describe('checkReceivedName (names a peer sends us)', () => {
  it('accepts plain relative names', () => {
    assert.deepEqual(checkReceivedName('a/b/c.txt'), ['a', 'b', 'c.txt']);
    assert.deepEqual(checkReceivedName('é ü/日本.md'), ['é ü', '日本.md']);
    assert.deepEqual(checkReceivedName('.gitignore'), ['.gitignore']);
  });

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

  it('refuses non-strings', () => {
    for (const value of [undefined, null, 3, {}, ['a']]) assert.throws(() => checkReceivedName(value), { code: 'BAD_NAME' });
  });

  it('folds case and Unicode normalisation for collision checks', () => {
    assert.equal(collisionKey('Readme.MD'), collisionKey('readme.md'));
    assert.equal(collisionKey('e\u0301.txt'), collisionKey('\u00e9.txt'));
  });
});
