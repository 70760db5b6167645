import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { tempDir } from '../helpers';

/**
 * A small file system with everything an attacker would aim at, for the security suite:
 *
 *   <base>/ws/                  the shared folder (or the download destination's parent)
 *     README.md, src/a.ts, sub/deep/note.txt        what may be served
 *     .git/config, .env, server.pem, .ssh/id_rsa     excluded, each holding the secret
 *     home/key.pem                                   the sharer's own identity folder (private)
 *     link-out -> ../outside, file-link -> ../outside/secret.txt, loop -> loop,
 *     dev-zero -> /dev/zero, fifo (a named pipe)
 *   <base>/ws-secret/x          the sibling-prefix trap
 *   <base>/outside/secret.txt   never to be read or written
 *
 * Every file that must never leave holds `secret`, so a test can assert that no byte a peer
 * received contains it; `snapshot()` records every entry (type, mode, size, mtime and ctime to the
 * nanosecond, inode, link target) to assert that nothing was created, changed or removed.
 */
export interface World {
  base: string;
  ws: string;
  home: string;
  outside: string;
  secret: string;
  initial: Snapshot;
  snapshot(): Promise<Snapshot>;
}

export type Snapshot = Record<string, string>;

export async function buildWorld(prepare?: (base: string) => Promise<void>): Promise<World> {
  const base = tempDir('peershare-world-');
  const secret = `SECRET-${randomBytes(12).toString('hex')}`;
  const ws = path.join(base, 'ws');
  const home = path.join(ws, 'home');
  const outside = path.join(base, 'outside');
  const files: Record<string, string> = {
    'ws/README.md': 'hello from the share\n',
    'ws/src/a.ts': 'export const a = 1;\n',
    'ws/sub/deep/note.txt': 'deep\n',
    'ws/.git/config': `[core]\n# ${secret}\n`,
    'ws/.git/hooks/pre-commit': `#!/bin/sh\n# ${secret}\n`,
    'ws/.env': `TOKEN=${secret}\n`,
    'ws/server.pem': secret,
    'ws/.ssh/id_rsa': secret,
    'ws/home/key.pem': secret,
    'ws/home/trusted-peers.json': `{"peers":[],"note":"${secret}"}`,
    'ws-secret/x': secret,
    'outside/secret.txt': secret,
  };
  for (const [rel, content] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(base, rel)), { recursive: true });
    await fs.writeFile(path.join(base, rel), content);
  }
  await fs.symlink('../outside', path.join(ws, 'link-out'));
  await fs.symlink('../outside/secret.txt', path.join(ws, 'file-link'));
  await fs.symlink('loop', path.join(ws, 'loop'));
  await fs.symlink('/dev/zero', path.join(ws, 'dev-zero'));
  execFileSync('mkfifo', [path.join(ws, 'fifo')]);
  await prepare?.(base);
  const world: World = { base, ws, home, outside, secret, initial: {}, snapshot: () => snapshot(base) };
  world.initial = await world.snapshot();
  return world;
}

/** Every entry below `dir`, without following links or opening anything but regular files. */
export async function snapshot(dir: string): Promise<Snapshot> {
  const out: Snapshot = {};
  async function walk(rel: string): Promise<void> {
    for (const name of (await fs.readdir(path.join(dir, rel))).sort()) {
      const childRel = rel ? `${rel}/${name}` : name;
      const full = path.join(dir, childRel);
      const st = await fs.lstat(full, { bigint: true });
      const mode = (st.mode & 0o7777n).toString(8);
      if (st.isSymbolicLink()) out[childRel] = `link -> ${await fs.readlink(full)}`;
      else if (st.isDirectory()) {
        out[childRel] = `dir ${mode}`;
        await walk(childRel);
      } else if (st.isFile()) {
        // Any write, truncate or chmod moves the ctime, which only the kernel sets.
        out[childRel] = `file ${mode} ${st.size} ${st.mtimeNs} ${st.ctimeNs} ${st.ino}`;
      } else out[childRel] = `special ${mode}`;
    }
  }
  await walk('');
  return out;
}

/** Every entry of `after` equals `before`, except paths matching `allowed` (a trailing * is a prefix). */
export function assertOnlyChanged(before: Snapshot, after: Snapshot, allowed: string[]): void {
  const ok = (p: string): boolean => allowed.some((a) => (a.endsWith('*') ? p.startsWith(a.slice(0, -1)) : p === a));
  const changed = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter((p) => before[p] !== after[p] && !ok(p));
  assert.deepEqual(
    changed.map((p) => `${p}: ${before[p] ?? 'absent'} -> ${after[p] ?? 'absent'}`),
    [],
    'nothing else created, changed or removed',
  );
}
