import * as path from 'node:path';
import Mocha from 'mocha';

/** The test entry VS Code loads into the extension host: runs the bundled mocha suites. */
export function run(): Promise<void> {
  const mocha = new Mocha({ ui: 'bdd', timeout: 60_000, color: false, reporter: 'spec' });
  mocha.addFile(path.join(__dirname, 'extension.test.js'));
  mocha.addFile(path.join(__dirname, 'send.test.js'));
  mocha.addFile(path.join(__dirname, 'update.test.js'));
  // Last: it ends with the extension's own deactivate().
  mocha.addFile(path.join(__dirname, 'hostile.test.js'));
  return new Promise((resolve, reject) => {
    mocha.run((failures) => (failures > 0 ? reject(new Error(`${failures} editor test(s) failed`)) : resolve()));
  });
}
