import { Share, resolveLimits } from '../../src/core';
import { buildWorld } from './world';
async function main() {
  const world = await buildWorld();
  const share = await Share.create({ folders: [world.ws], privatePaths: [world.home] }, resolveLimits());
  for (const p of ['ws/.env', 'ws/server.pem', 'ws/file-link', 'ws/README.md']) {
    try { const o = await share.openFile(p); console.log(p, 'OPENED', await o.handle.readFile('utf8')); await o.handle.close(); } catch (e) { console.log(p, (e as any).code); }
  }
}
main();
