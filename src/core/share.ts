import { closeSync, constants as fsc, existsSync, fstatSync, lstatSync, opendirSync, openSync, promises as fs, readlinkSync, readSync, type BigIntStats, type Dir, type Stats } from 'node:fs';
import * as path from 'node:path';
import ignore, { type Ignore } from 'ignore';
import { PeerShareError, toPeerShareError } from './errors';
import { lastChangeNs, msUntilSettled, sameVersion, versionKey } from './hash-cache';
import { sleep } from './race';
import { INVISIBLE_CHARS, type Entry } from './protocol';
import { foldName, isShortNameShape } from './names';
import { RACY_TIMESTAMP_MS, type Limits } from './limits';
import { MountTable } from './mounts';

/**
 * What a peer may read: the shared roots, read-only, minus what is usually secret. Every path
 * a peer sends is checked here by components (never by string prefix), and every open is
 * verified after the fact, so a symlink swapped in between check and open still cannot lead out.
 */

/**
 * Not shared unless the user opts out (`--no-default-excludes`, `defaultExcludes: false`): version
 * control internals, the identity folder, and files that hold keys, tokens or passwords in the
 * usual places (compared with the file names secret scanners such as gitleaks and gitrob flag).
 * `.gitignore` syntax, matched case-insensitively: a pattern without a slash matches at any
 * depth; `**` patterns name a file by its folder (`.docker/config.json`, wherever that folder is).
 * Names that are as often something harmless (`credentials.json`, `auth.json`, `secrets.yml`,
 * `pip.conf`) are left to the user's own excludes.
 */
export const DEFAULT_EXCLUDES: readonly string[] = [
  // Version control internals and PeerShare's own identity.
  '.git',
  '.hg',
  '.svn',
  '.peershare',
  // Environment files and private keys.
  '.env*',
  '*.pem',
  '*.key',
  '*.p8',
  '*.p12',
  '*.pfx',
  '*.ppk',
  '*.keystore',
  '*.jks',
  'id_rsa*',
  'id_dsa*',
  'id_ecdsa*',
  'id_ed25519*',
  '*.ovpn',
  '.ssh',
  '.gnupg',
  // Password databases.
  '*.kdbx',
  '*.psafe3',
  '*.keychain-db',
  '*.agilekeychain',
  '*.opvault',
  // Tokens and passwords of command-line tools.
  '.git-credentials',
  '**/.config/git/credentials',
  '.netrc',
  '_netrc',
  '.npmrc',
  '.pypirc',
  '.pgpass',
  '.my.cnf',
  '.s3cfg',
  '.boto',
  '.vault-token',
  '.dockercfg',
  '**/.docker/config.json',
  '**/.kube/config',
  'kubeconfig',
  '*.kubeconfig',
  '**/.config/gh/hosts.yml',
  '**/.config/hub',
  '**/.cargo/credentials',
  '**/.cargo/credentials.toml',
  '**/.gem/credentials',
  '**/.gradle/gradle.properties',
  '**/.m2/settings.xml',
  '**/.m2/settings-security.xml',
  '.terraformrc',
  '**/.terraform.d/credentials.tfrc.json',
  'sftp-config.json',
  '**/.vscode/sftp.json',
  '.htpasswd',
  '.htdigest',
  // Cloud accounts: whole folders, every file in them is a token, a cache of one or an account.
  '.aws',
  '.azure',
  '**/.config/gcloud',
  'application_default_credentials.json',
  'client_secret*.json',
  'service-account*.json',
  'service_account*.json',
  // Terraform state and variables hold every secret of the infrastructure they describe.
  '*.tfstate',
  '*.tfstate.*',
  '*.tfvars',
  '*.tfvars.json',
  '.terraform',
  // Wallets, keyrings and browser profiles (found by the outside review of round 2).
  'wallet.dat',
  '.bitcoin',
  '.electrum',
  '**/.ethereum/keystore',
  '**/.config/solana/id.json',
  '**/.config/sops/age/keys.txt',
  'secring.*',
  '.password-store',
  '.mozilla',
  '.pki',
  '**/.local/share/keyrings',
  '.Xauthority',
  // More command-line tools' tokens (the same review).
  '**/.config/rclone/rclone.conf',
  '**/.config/github-copilot/hosts.json',
  '**/.config/github-copilot/apps.json',
  '.oci',
  '**/.config/openstack/clouds.yaml',
  '**/.config/doctl',
  '**/.config/hcloud',
  '.heroku',
  '**/.fly/config.yml',
  '**/.config/configstore/firebase-tools.json',
  // Shell and REPL histories: passwords typed on command lines.
  '.*_history',
  '.zhistory',
  'fish_history',
  '.lesshst',
  '.dbshell',
];

export interface ShareOptions {
  folders: string[];
  /** Skip files matched by `.gitignore` files inside the share (default true). */
  honourGitignore?: boolean;
  /** Apply DEFAULT_EXCLUDES (default true). */
  defaultExcludes?: boolean;
  /** More patterns, in .gitignore syntax. */
  excludes?: string[];
  /** Absolute paths never served even if inside a root (the identity folder). */
  privatePaths?: string[];
}

export interface ShareRoot {
  name: string;
  realPath: string;
  /**
   * On a local file system (statfs, LOCAL_FILE_SYSTEMS): only then are small files read with
   * synchronous calls, which would hold the event loop (the extension host) on a stalled network
   * or FUSE mount; and not below another mount inside the root (MountTable).
   */
  local: boolean;
}

/**
 * statfs types of local disk and memory file systems (linux/magic.h): ext2/3/4, XFS, Btrfs, tmpfs,
 * ramfs, overlayfs, F2FS, ZFS, bcachefs. Anything else (NFS, SMB, FUSE, ...) is taken as remote.
 */
const LOCAL_FILE_SYSTEMS = new Set([0xef53, 0x58465342, 0x9123683e, 0x01021994, 0x858458f6, 0x794c7630, 0xf2f52010, 0x2fc12fc1, 0xca451a4e]);

/** @internal exported for its tests */
export async function isLocalFileSystem(folder: string): Promise<boolean> {
  if (process.platform !== 'linux') return false;
  const { type } = await fs.statfs(folder).catch(() => ({ type: -1 }));
  return LOCAL_FILE_SYSTEMS.has(Number(type));
}

export interface OpenedFile {
  handle: fs.FileHandle;
  stat: Stats;
}

/** `size` is there when the walk was asked for sizes (one lstat per batch of names, in parallel). */
export type WalkItem = { kind: 'dir'; relPath: string } | { kind: 'file'; relPath: string; remotePath: string; size?: number };

// Linux tells us where an open descriptor really points: the race-free check.
const PROC_FD = process.platform === 'linux' && existsSync('/proc/self/fd') ? '/proc/self/fd' : undefined;
/** A larger .gitignore is not read (its rules are not applied). */
const MAX_GITIGNORE_BYTES = 1024 * 1024;

export class Share {
  readonly roots: ShareRoot[];
  private readonly rules: Ignore;
  private readonly mounts = new MountTable();
  /**
   * Each .gitignore's rules with the version of the file they were read from ('absent' when there
   * is none), and whether that version can be trusted to change its times when the file changes
   * (it was older than RACY_TIMESTAMP_MS when read).
   */
  private readonly gitignoreCache = new Map<string, { version: string; trusted: boolean; rules: Ignore | null }>();

  private constructor(
    roots: ShareRoot[],
    private readonly options: ShareOptions,
    private readonly privatePaths: string[],
    /** Device and inode (`dev:ino`) of the files directly in the private paths: a hard link to one, inside the share, is the same file under another name. */
    private readonly privateFiles: Set<string>,
    private readonly limits: Pick<Limits, 'maxPathBytes' | 'maxListEntries' | 'listBatchEntries' | 'maxTreeFiles' | 'maxTreeDepth'>,
  ) {
    this.roots = roots;
    this.rules = ignore({ ignorecase: true });
    if (options.defaultExcludes !== false) this.rules.add([...DEFAULT_EXCLUDES]);
    if (options.excludes?.length) this.rules.add(options.excludes);
  }

  static async create(options: ShareOptions, limits: Share['limits']): Promise<Share> {
    if (options.folders.length === 0) throw new PeerShareError('INVALID_ARGUMENT', 'Nothing to share: no folder given.');
    const roots: ShareRoot[] = [];
    const used = new Set<string>();
    for (const folder of options.folders) {
      let realPath: string;
      try {
        realPath = await fs.realpath(folder);
      } catch (err) {
        throw new PeerShareError('NOT_FOUND', `Cannot share ${folder}: it does not exist.`, { cause: err });
      }
      if (!(await fs.stat(realPath)).isDirectory()) {
        throw new PeerShareError('NOT_A_DIRECTORY', `Cannot share ${folder}: it is not a folder.`);
      }
      const base = path.basename(realPath) || 'root';
      let name = base;
      for (let n = 2; used.has(name.toLowerCase()); n++) name = `${base}-${n}`;
      used.add(name.toLowerCase());
      roots.push({ name, realPath, local: await isLocalFileSystem(realPath) });
    }
    const privatePaths: string[] = [];
    for (const p of options.privatePaths ?? []) privatePaths.push(await fs.realpath(p).catch(() => path.resolve(p)));
    const share = new Share(roots, options, privatePaths, await filesIn(privatePaths), limits);
    share.mounts.refresh();
    // Each root's own mount as it is now: one made over or above it later sends its work the
    // asynchronous way (round 13).
    for (const root of roots) share.mounts.crossesKnown(root.realPath, []);
    return share;
  }

  /**
   * Checks a path a peer sent. Paths are `/`-separated and relative to the virtual top whose
   * children are the roots: `""` is the top, `"project/src/a.ts"` a file. Returns the root and
   * the components below it; refuses every traversal spelling before touching the disk.
   */
  resolve(remotePath: string): { root?: ShareRoot; components: string[] } {
    if (Buffer.byteLength(remotePath, 'utf8') > this.limits.maxPathBytes) {
      throw new PeerShareError('TOO_LARGE', 'That path is too long.');
    }
    const trimmed = remotePath.endsWith('/') ? remotePath.slice(0, -1) : remotePath;
    if (trimmed === '') return { components: [] };
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f\\]/.test(trimmed) || trimmed.startsWith('/') || /\uFFFD/.test(trimmed)) {
      throw new PeerShareError('OUTSIDE_SHARE', 'That path is not a plain path inside the share.');
    }
    const parts = trimmed.split('/');
    for (const part of parts) {
      if (part === '' || part === '.' || part === '..' || Buffer.byteLength(part, 'utf8') > 255) {
        throw new PeerShareError('OUTSIDE_SHARE', 'That path is not a plain path inside the share.');
      }
    }
    const root = this.roots.find((r) => r.name === parts[0]);
    if (!root) throw new PeerShareError('NOT_FOUND', 'No shared folder has that name.');
    return { root, components: parts.slice(1) };
  }

  /** True if the path, or any folder above it, is excluded. */
  async isExcluded(root: ShareRoot, components: string[], isDir: boolean): Promise<boolean> {
    if (components.length === 0) return false;
    // Not there under that exact name: whatever it would open by alias is not found, excluded or not.
    if (await this.reachesThroughAlias(root, components)) throw new PeerShareError('NOT_FOUND');
    const canonical = components.map(canonicalComponent);
    for (let i = 1; i <= canonical.length; i++) {
      const dirPrefix = i < canonical.length || isDir;
      const rel = canonical.slice(0, i).join('/') + (dirPrefix ? '/' : '');
      if (this.rules.ignores(rel)) return true;
      if (this.options.honourGitignore !== false) {
        for (let j = 0; j < i; j++) {
          const rules = await this.gitignoreRules(root, components.slice(0, j));
          if (rules?.ignores(canonical.slice(j, i).join('/') + (dirPrefix ? '/' : ''))) return true;
        }
      }
    }
    if (this.privatePaths.length > 0) {
      const full = path.join(root.realPath, ...components);
      if (this.privatePaths.some((p) => isInside(p, full))) return true;
    }
    return false;
  }

  /**
   * Some file systems open one name under another: NTFS and FAT by an 8.3 short name (`GIT~1` is
   * `.git`), HFS+ ignoring invisible characters (`.g<ZWNJ>it` is `.git`). A component that could be
   * such an alias must be in its folder's listing under exactly that name; otherwise it is an
   * alias of some other entry, whose exclusion it would dodge. Ordinary names cost nothing here.
   */
  private async reachesThroughAlias(root: ShareRoot, components: string[]): Promise<boolean> {
    for (let i = 0; i < components.length; i++) {
      const part = components[i];
      if (!isShortNameShape(part) && !INVISIBLE_CHARS.test(part)) continue;
      const names = await fs.readdir(path.join(root.realPath, ...components.slice(0, i))).catch(() => [] as string[]);
      if (!names.includes(part)) return true;
    }
    return false;
  }

  /**
   * A fast check for the children of a folder already known not to be excluded: only the child's
   * own name is tested, against the share's rules and every .gitignore from the root down.
   */
  private async childExclusion(root: ShareRoot, dirComponents: string[]): Promise<(name: string, isDir: boolean) => boolean> {
    const canonicalDir = dirComponents.map(canonicalComponent);
    const gitignores: { rules: Ignore; prefix: string[] }[] = [];
    if (this.options.honourGitignore !== false) {
      for (let j = 0; j <= dirComponents.length; j++) {
        const rules = await this.gitignoreRules(root, dirComponents.slice(0, j));
        if (rules) gitignores.push({ rules, prefix: canonicalDir.slice(j) });
      }
    }
    const dirPath = path.join(root.realPath, ...dirComponents);
    const privateHere = this.privatePaths.filter((p) => isInside(dirPath, p) || isInside(p, dirPath));
    return (name, isDir) => {
      const child = canonicalComponent(name);
      const suffix = isDir ? '/' : '';
      if (this.rules.ignores([...canonicalDir, child].join('/') + suffix)) return true;
      for (const { rules, prefix } of gitignores) if (rules.ignores([...prefix, child].join('/') + suffix)) return true;
      return privateHere.some((p) => isInside(p, path.join(dirPath, name)));
    };
  }

  /**
   * The rules of the .gitignore in root/dirComponents, read again whenever the file is not the
   * version they were read from. *Why not a time to live: for the 2 s it lasted, a file a person
   * had just added to .gitignore was still listed and served.* The look is a synchronous lstat
   * where the folder is on a local file system with no other mount on the way (microseconds), an
   * asynchronous one elsewhere.
   */
  private async gitignoreRules(root: ShareRoot, dirComponents: string[]): Promise<Ignore | null> {
    const file = path.join(root.realPath, ...dirComponents, '.gitignore');
    const cached = this.gitignoreCache.get(file);
    if (cached?.trusted && cached.version === (await this.gitignoreVersion(root, dirComponents, file))) return cached.rules;
    const readAt = Date.now();
    let rules: Ignore | null = null;
    let version = 'absent';
    let trusted = true;
    // Through its folder, opened without following a link at any component: a folder swapped for
    // a link to one with no .gitignore while the rules were read made them absent, and the file
    // they exclude was then listed and opened (round 13). A folder that cannot be opened so
    // refuses the request (NOT_FOUND, OUTSIDE_SHARE), never reads as "no rules".
    const folder = PROC_FD ? await openFolderBeneath(PROC_FD, root, dirComponents) : undefined;
    try {
      // Opened as any shared file is (never through a link, never waiting on a FIFO) and checked
      // after the open: a .gitignore swapped for a FIFO between a look and an open would hold one
      // of libuv's four threads for ever, and four of them every file operation of the process.
      const handle = await fs.open(folder ? `${PROC_FD}/${folder.fd}/.gitignore` : file, openFlags(false));
      try {
        const st = await handle.stat({ bigint: true });
        version = versionKey(st);
        trusted = readAt - Number(lastChangeNs(st) / 1_000_000n) >= RACY_TIMESTAMP_MS;
        if (st.isFile() && st.size <= MAX_GITIGNORE_BYTES) rules = ignore({ ignorecase: true }).add(await handle.readFile('utf8'));
      } finally {
        await handle.close();
      }
    } catch (err) {
      // None there: remembered as absent; anything else unreadable: no rules, and looked at again.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') trusted = false;
      rules = null;
    } finally {
      await folder?.close();
    }
    if (this.gitignoreCache.size > 10_000) this.gitignoreCache.clear();
    this.gitignoreCache.set(file, { version, trusted, rules });
    return rules;
  }

  /** The .gitignore's version as gitignoreRules keeps it ('absent', or 'other' when it cannot be looked at). */
  private async gitignoreVersion(root: ShareRoot, dirComponents: string[], file: string): Promise<string> {
    const local = root.local && !this.mounts.crosses(root.realPath, dirComponents);
    try {
      const st = local ? lstatSync(file, { bigint: true, throwIfNoEntry: false }) : await fs.lstat(file, { bigint: true });
      return st ? versionKey(st) : 'absent';
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'absent' : 'other';
    }
  }

  /** A private file (the identity key, say) reached through a hard link from inside the share: excluded as the file itself is. */
  private isPrivateFile(stat: BigIntStats | Stats): boolean {
    return this.privateFiles.has(`${stat.dev}:${stat.ino}`);
  }

  /** A file that is one of the private files (the identity key) under another name, by a hard link: never shown, not even its name. */
  isPrivateHardLink(stat: Stats): boolean {
    return stat.isFile() && stat.nlink > 1 && this.isPrivateFile(stat);
  }

  /** Opens a regular file inside the share for reading, or throws a coded error. */
  async openFile(remotePath: string): Promise<OpenedFile & { root: ShareRoot; components: string[] }> {
    const { root, components } = this.resolve(remotePath);
    if (!root || components.length === 0) throw new PeerShareError('NOT_A_FILE');
    if (await this.isExcluded(root, components, false)) throw new PeerShareError('EXCLUDED');
    const opened = await openVerified(root, components, false);
    if (!opened.stat.isFile()) {
      await opened.handle.close();
      throw new PeerShareError('NOT_A_FILE', opened.stat.isDirectory() ? 'That is a folder, not a file.' : 'Only regular files are shared.');
    }
    if (opened.stat.nlink > 1 && this.isPrivateFile(await opened.handle.stat({ bigint: true }))) {
      await opened.handle.close();
      throw new PeerShareError('EXCLUDED');
    }
    return { ...opened, root, components };
  }

  /**
   * Reads a small file that `walk` just listed, whole, with synchronous calls: for a file of a
   * few KiB one thread-pool round trip per call costs more than the calls themselves, and the
   * event loop is held for microseconds. The walk opened each folder on the way through a verified
   * descriptor and applied the share's rules to every name, so only the open with O_NOFOLLOW and
   * the /proc/self/fd check after it remain. Returns undefined for a file over `maxBytes`, where
   * /proc/self/fd is missing or the root is not on a local file system: those take the streaming
   * path with every check.
   */
  readWalkedFileSync(item: WalkItem & { kind: 'file' }, maxBytes: number): { data: Buffer; mtimeMs: number } | undefined {
    if (!PROC_FD) return undefined;
    const { root, components } = this.resolve(item.remotePath);
    if (!root || components.length === 0) throw new PeerShareError('NOT_A_FILE');
    if (!root.local || this.mounts.crosses(root.realPath, components)) return undefined;
    const expected = path.join(root.realPath, ...components);
    let fd: number;
    try {
      fd = openSync(expected, openFlags(false));
    } catch (err) {
      throw openError(err, false);
    }
    try {
      const stat = this.smallFileOpened(fd, expected, maxBytes);
      // Over maxBytes, or changed within a clock tick: the streaming path (which waits for it to settle).
      if (!stat || msUntilSettled(stat) > 0) return undefined;
      return { data: readOneVersionSync(fd, stat), mtimeMs: Number(stat.mtimeNs / 1_000_000n) };
    } catch (err) {
      throw toPeerShareError(err, 'IO_ERROR');
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Reads a small regular file inside the share, whole, with every check of openFile (the share's
   * rules, no link at any component, the descriptor's path, the private files) but synchronous
   * calls once the rules have passed: *why: for a file of a few KiB (share.chunks inline, a burst
   * of small changes) the thread-pool round trips of a dozen calls cost more than the calls.*
   * Returns the bytes and the version they are (compared before and after the read); undefined for
   * a file over `maxBytes`, where /proc/self/fd is missing or the root is not on a local file
   * system: those take openFile.
   */
  async readSmallFile(remotePath: string, maxBytes: number): Promise<{ data: Buffer; version: BigIntStats } | undefined> {
    if (!PROC_FD) return undefined;
    const { root, components } = this.resolve(remotePath);
    if (!root || components.length === 0) throw new PeerShareError('NOT_A_FILE');
    if (!root.local) return undefined;
    this.mounts.refresh(); // read again before going synchronous (round 13)
    if (this.mounts.crossesKnown(root.realPath, components)) return undefined;
    if (await this.isExcluded(root, components, false)) throw new PeerShareError('EXCLUDED');
    const expected = path.join(root.realPath, ...components);
    let fd: number;
    try {
      refuseSymlinkComponentsSync(root, components);
      fd = openBeneathSync(PROC_FD, root.realPath, components, openFlags(false));
    } catch (err) {
      throw err instanceof PeerShareError ? err : openError(err, false);
    }
    try {
      const version = this.smallFileOpened(fd, expected, maxBytes);
      if (!version) return undefined;
      // Still being written: the caller takes the path that reads the list and the chunks apart.
      const settled = await settledVersion(version, () => fstatSync(fd, { bigint: true }));
      return settled && { data: readOneVersionSync(fd, settled), version: settled };
    } catch (err) {
      throw toPeerShareError(err, 'IO_ERROR');
    } finally {
      closeSync(fd);
    }
  }

  /**
   * The checks after a synchronous open of `expected` (readWalkedFileSync, readSmallFile): the
   * descriptor is that very path (no link on the way), a regular file, not a private file by a
   * hard link; its version, or undefined when it is over `maxBytes`.
   */
  private smallFileOpened(fd: number, expected: string, maxBytes: number): BigIntStats | undefined {
    const version = fstatSync(fd, { bigint: true });
    if (readlinkSync(`${PROC_FD}/${fd}`) !== expected) throw new PeerShareError('OUTSIDE_SHARE', 'Symbolic links are not followed.');
    if (!version.isFile()) throw new PeerShareError('NOT_A_FILE', version.isDirectory() ? 'That is a folder, not a file.' : 'Only regular files are shared.');
    if (version.nlink > 1n && this.isPrivateFile(version)) throw new PeerShareError('EXCLUDED');
    return version.size > BigInt(maxBytes) ? undefined : version;
  }

  async stat(remotePath: string): Promise<Entry> {
    const { root, components } = this.resolve(remotePath);
    if (!root) return { name: '', type: 'dir', size: 0, mtimeMs: 0 };
    if (components.length > 0 && (await this.isExcluded(root, components, false))) throw new PeerShareError('EXCLUDED');
    const opened = await openVerified(root, components, undefined);
    try {
      const { stat } = opened;
      if (stat.isDirectory() && components.length > 0 && (await this.isExcluded(root, components, true))) {
        throw new PeerShareError('EXCLUDED');
      }
      if (!stat.isFile() && !stat.isDirectory()) throw new PeerShareError('NOT_A_FILE', 'Only regular files and folders are shared.');
      return entryOf(components.length ? components[components.length - 1] : root.name, stat);
    } finally {
      await opened.handle.close();
    }
  }

  /** Lists a folder in batches, so no folder becomes one giant message. */
  async *list(remotePath: string): AsyncGenerator<Entry[]> {
    const { root, components } = this.resolve(remotePath);
    if (!root) {
      const entries: Entry[] = [];
      for (const r of this.roots) {
        const st = await fs.stat(r.realPath).catch(() => undefined);
        if (st) entries.push({ name: r.name, type: 'dir', size: 0, mtimeMs: Math.floor(st.mtimeMs) });
      }
      yield entries;
      return;
    }
    if (await this.isExcluded(root, components, true)) throw new PeerShareError('EXCLUDED');
    let count = 0;
    for await (const batch of this.readDirBatches(root, components)) {
      count += batch.length;
      if (count > this.limits.maxListEntries) {
        throw new PeerShareError('TOO_LARGE', `The folder has more than ${this.limits.maxListEntries} entries.`);
      }
      if (batch.length > 0) yield batch;
    }
  }

  /**
   * The files and folders below a folder, depth first in name order, for a folder download. With
   * `sizes`, each file comes with its size (an offer totals them before anything is sent).
   */
  async *walk(remotePath: string, { sizes = false }: { sizes?: boolean } = {}): AsyncGenerator<WalkItem> {
    const { root, components } = this.resolve(remotePath);
    if (!root) throw new PeerShareError('NOT_A_DIRECTORY', 'Choose one shared folder to download.');
    if (await this.isExcluded(root, components, true)) throw new PeerShareError('EXCLUDED');
    // Files and folders both count, as the receiving side counts them.
    let items = 0;
    const limits = this.limits;
    const counted = (): void => {
      if (++items > limits.maxTreeFiles) throw new PeerShareError('TOO_LARGE', `The folder has more than ${limits.maxTreeFiles} files and folders.`);
    };
    const self = this;
    async function* visit(dirComponents: string[], relPath: string, depth: number): AsyncGenerator<WalkItem> {
      if (depth > limits.maxTreeDepth) throw new PeerShareError('TOO_LARGE', `The folder is nested deeper than ${limits.maxTreeDepth} levels.`);
      const children: Entry[] = [];
      // Names and types are enough for a download: each file is opened and measured when it is sent.
      for await (const batch of self.readDirBatches(root!, dirComponents, false)) {
        children.push(...batch);
        if (children.length > limits.maxListEntries) throw new PeerShareError('TOO_LARGE', 'A folder has too many entries.');
      }
      children.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const child of children) {
        const childRel = relPath ? `${relPath}/${child.name}` : child.name;
        counted();
        if (child.type === 'dir') {
          yield { kind: 'dir', relPath: childRel };
          yield* visit([...dirComponents, child.name], childRel, depth + 1);
        } else {
          if (!sizes) {
            yield { kind: 'file', relPath: childRel, remotePath: [root!.name, ...dirComponents, child.name].join('/') };
            continue;
          }
          // A stat each, synchronous as the folder stream's reads of small files are: for 10,000
          // files a third of the time of one promise per stat. One gone or no longer a file is left out.
          const st = lstatOrUndefined(path.join(root!.realPath, ...dirComponents, child.name));
          if (st?.isFile()) yield { kind: 'file', relPath: childRel, remotePath: [root!.name, ...dirComponents, child.name].join('/'), size: st.size };
        }
      }
    }
    yield* visit(components, '', 0);
  }

  /** A folder's visible entries, in batches; without `withStats`, sizes and times are left 0. */
  private async *readDirBatches(root: ShareRoot, components: string[], withStats = true): AsyncGenerator<Entry[]> {
    // On a local file system, with no other mount on the way or in this folder, the folder is
    // opened, read and its entries looked at with synchronous calls. *Why: a sync of 10,000 files
    // lists 100 folders; their 10,000 lstats through the thread pool took the sharer 0.2 s, and
    // the dozen round trips of each folder's open and read about as much again. A stalled network
    // mount must not hold the event loop, hence the mount checks, with the table read again for
    // each listing (round 11 found a table read before an idle while, round 13 one read within
    // the last 2 s, missing a mount made since; one small read of /proc).*
    if (root.local) this.mounts.refresh();
    const sync = root.local && !this.mounts.crossesKnown(root.realPath, components) && !this.mounts.holdsMount(root.realPath, components);
    if (sync && PROC_FD) {
      yield* this.readDirBatchesSync(PROC_FD, root, components, withStats);
      return;
    }
    const opened = await openVerified(root, components, true);
    const dirPath = path.join(root.realPath, ...components);
    try {
      // Reading (and looking at each entry) through the verified descriptor means the listing is
      // of the folder we checked, even if it is swapped for a link between batches (round 13: the
      // entries were looked at by path, and gave sizes and times from outside).
      const entriesDir = PROC_FD ? `${PROC_FD}/${opened.handle.fd}` : dirPath;
      const dir = await fs.opendir(entriesDir, { bufferSize: 256 });
      let pending: { name: string; isDir: boolean }[] = [];
      const excluded = await this.childExclusion(root, components);
      const statSync = withStats && sync;
      const flush = async (): Promise<Entry[]> => {
        const batch = pending.filter(({ name, isDir }) => !excluded(name, isDir));
        pending = [];
        if (!withStats) return batch.map(({ name, isDir }) => unmeasuredEntry(name, isDir));
        const entries = statSync
          ? batch.map(({ name }) => this.shownEntry(name, lstatOrUndefined(path.join(entriesDir, name))))
          : await Promise.all(batch.map(async ({ name }) => this.shownEntry(name, await fs.lstat(path.join(entriesDir, name)).catch(() => undefined))));
        return entries.filter((e): e is Entry => e !== undefined);
      };
      for await (const dirent of dir) {
        if (!mayShow(dirent)) continue;
        pending.push({ name: dirent.name, isDir: dirent.isDirectory() });
        if (pending.length >= this.limits.listBatchEntries) yield await flush();
      }
      if (pending.length > 0) yield await flush();
    } finally {
      await opened.handle.close();
    }
  }

  /** What a listing shows of an entry looked at (`st`): a regular file or a folder, never a hard link to a private file (the identity key: not even its name and size). */
  private shownEntry(name: string, st: Stats | undefined): Entry | undefined {
    if (!st || !(st.isFile() || st.isDirectory()) || this.isPrivateHardLink(st)) return undefined;
    return entryOf(name, st);
  }

  /**
   * readDirBatches with synchronous calls, for a folder on a local file system with no mount on
   * the way or in it: the same checks (openVerified's, in openVerifiedFolderSync), the same
   * entries. A batch at a time, so a huge folder does not hold the event loop in one piece.
   */
  private async *readDirBatchesSync(procFd: string, root: ShareRoot, components: string[], withStats: boolean): AsyncGenerator<Entry[]> {
    const fd = openVerifiedFolderSync(procFd, root, components);
    const folder = `${procFd}/${fd}`;
    let dir: Dir | undefined;
    try {
      const excluded = await this.childExclusion(root, components);
      // Reading through the verified descriptor means the listing is of the folder we checked.
      dir = opendirSync(folder, { bufferSize: 256 });
      for (let more = true, first = true; more; first = false) {
        // Every entry read counts toward the batch, shown or not, and the event loop gets a turn
        // between batches: a folder of 40,000 links or excluded names held the sharer for 0.85 s
        // in one piece (round 13).
        if (!first) await new Promise((resolve) => setImmediate(resolve));
        const batch: Entry[] = [];
        for (let read = 0; read < this.limits.listBatchEntries; read++) {
          const dirent = dir.readSync();
          if (!dirent) {
            more = false;
            break;
          }
          if (!mayShow(dirent) || excluded(dirent.name, dirent.isDirectory())) continue;
          const entry = withStats ? this.shownEntry(dirent.name, lstatOrUndefined(`${folder}/${dirent.name}`)) : unmeasuredEntry(dirent.name, dirent.isDirectory());
          if (entry) batch.push(entry);
        }
        if (batch.length > 0) yield batch;
      }
    } catch (err) {
      throw toPeerShareError(err, 'IO_ERROR');
    } finally {
      if (dir) dir.closeSync();
      closeSync(fd);
    }
  }
}

/**
 * Windows and macOS file systems treat `.git.`, `.GIT `, `.gıt` (and HFS+ `.g<ZWNJ>it`) as `.git`:
 * exclusion rules match the name folded the way the name check folds it (`foldName`), without
 * invisible characters and trailing dots or spaces.
 */
const INVISIBLE_ALL = new RegExp(INVISIBLE_CHARS.source, 'gu');
function canonicalComponent(component: string): string {
  return foldName(component).replace(INVISIBLE_ALL, '').replace(/[. ]+$/, '') || component;
}

/** Only regular files and folders are ever shown (no links, devices, FIFOs or sockets), and only names that are valid UTF-8 (others cannot be named on the wire). */
function mayShow(dirent: { name: string; isFile(): boolean; isDirectory(): boolean }): boolean {
  return (dirent.isFile() || dirent.isDirectory()) && !dirent.name.includes('\uFFFD');
}

/** An entry a folder download's walk lists without looking at it: each file is measured when it is sent. */
function unmeasuredEntry(name: string, isDir: boolean): Entry {
  return { name, type: isDir ? 'dir' : 'file', size: 0, mtimeMs: 0 };
}

function entryOf(name: string, st: Stats): Entry {
  return { name, type: st.isDirectory() ? 'dir' : 'file', size: st.isDirectory() ? 0 : st.size, mtimeMs: Math.floor(st.mtimeMs) };
}

export function isInside(parent: string, candidate: string): boolean {
  const rel = path.relative(parent, candidate);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

/**
 * Opens root/components without following a symlink at any component. The final component is
 * opened with O_NOFOLLOW; then the path the descriptor really points to must be exactly the
 * path we meant, which fails if any folder on the way was (or became) a symlink.
 * `wantDir`: true for folders only, false for files only, undefined for either.
 */
async function openVerified(root: ShareRoot, components: string[], wantDir: boolean | undefined): Promise<OpenedFile> {
  const expected = path.join(root.realPath, ...components);
  const flags = openFlags(wantDir);
  // Refuse known symlinks, FIFOs, devices and sockets before opening anything, so nothing outside
  // is even opened and no open has a side effect (a writer waiting on a FIFO is let through by
  // our open; some devices act on open); the check after the open is what makes a symlink swapped
  // in meanwhile harmless.
  await refuseSymlinkComponents(root, components);
  let handle: fs.FileHandle;
  try {
    handle = PROC_FD && components.length > 0 ? await openBeneath(PROC_FD, root.realPath, components, flags) : await fs.open(expected, flags);
  } catch (err) {
    throw openError(err, wantDir);
  }
  try {
    const stat = await handle.stat();
    if (PROC_FD) {
      const actual = await fs.readlink(`${PROC_FD}/${handle.fd}`);
      if (actual !== expected) throw new PeerShareError('OUTSIDE_SHARE', 'Symbolic links are not followed.');
    } else {
      const now = await fs.lstat(expected);
      if (now.ino !== stat.ino || now.dev !== stat.dev) throw new PeerShareError('OUTSIDE_SHARE', 'The path changed while it was opened.');
    }
    if (wantDir === true && !stat.isDirectory()) throw new PeerShareError('NOT_A_DIRECTORY');
    return { handle, stat };
  } catch (err) {
    await handle.close();
    throw toPeerShareError(err, 'IO_ERROR');
  }
}

/** root/dirComponents opened as a folder, never through a link at any component (gitignoreRules); a coded error when it cannot be. */
async function openFolderBeneath(procFd: string, root: ShareRoot, dirComponents: string[]): Promise<fs.FileHandle> {
  // Known links, FIFOs and devices refused before anything is opened, as openVerified does.
  await refuseSymlinkComponents(root, dirComponents);
  try {
    return dirComponents.length > 0 ? await openBeneath(procFd, root.realPath, dirComponents, openFlags(true)) : await fs.open(root.realPath, openFlags(true));
  } catch (err) {
    throw err instanceof PeerShareError ? err : openError(err, false);
  }
}

/** openVerified for a folder, with synchronous calls (readDirBatchesSync); returns the descriptor. */
function openVerifiedFolderSync(procFd: string, root: ShareRoot, components: string[]): number {
  const flags = openFlags(true);
  let fd: number;
  try {
    refuseSymlinkComponentsSync(root, components);
    fd = components.length > 0 ? openBeneathSync(procFd, root.realPath, components, flags) : openSync(root.realPath, flags);
  } catch (err) {
    throw err instanceof PeerShareError ? err : openError(err, true);
  }
  try {
    if (readlinkSync(`${procFd}/${fd}`) !== path.join(root.realPath, ...components)) throw new PeerShareError('OUTSIDE_SHARE', 'Symbolic links are not followed.');
    if (!fstatSync(fd).isDirectory()) throw new PeerShareError('NOT_A_DIRECTORY');
    return fd;
  } catch (err) {
    closeSync(fd);
    throw toPeerShareError(err, 'IO_ERROR');
  }
}

/**
 * Opens `components` below `base` one folder at a time, each through the descriptor of the one
 * before (`/proc/self/fd/N/name`: openat without a binding), never following a link at any step.
 * A folder on the way swapped for a symlink after refuseSymlinkComponents looked is then refused
 * (NOT_FOUND), not opened through: nothing outside the share is opened, not even for a moment.
 */
/** @internal exported for its tests */
export async function openBeneath(procFd: string, base: string, components: string[], flags: number): Promise<fs.FileHandle> {
  const folderFlags = fsc.O_RDONLY | (fsc.O_DIRECTORY ?? 0) | (fsc.O_NOFOLLOW ?? 0) | (fsc.O_NONBLOCK ?? 0);
  let folder = await fs.open(base, folderFlags);
  try {
    for (const part of components.slice(0, -1)) {
      const next = await fs.open(`${procFd}/${folder.fd}/${part}`, folderFlags).catch((err: NodeJS.ErrnoException) => {
        // A file, or a symlink (O_DIRECTORY with O_NOFOLLOW refuses it as ENOTDIR), where a
        // folder was: the path names nothing here (as refuseSymlinkComponents answers a file).
        throw err.code === 'ENOTDIR' ? new PeerShareError('NOT_FOUND') : err;
      });
      await folder.close();
      folder = next;
    }
    return await fs.open(`${procFd}/${folder.fd}/${components[components.length - 1]}`, flags);
  } finally {
    await folder.close();
  }
}

/**
 * The open small file's bytes, whole, as the one `version` it was: FILE_CHANGED if the version
 * differs after the read (ctime too: a write that puts the old mtime back still changes it). The
 * caller has let a just-changed file settle first (settledVersion).
 */
function readOneVersionSync(fd: number, version: BigIntStats): Buffer {
  const data = Buffer.allocUnsafe(Number(version.size));
  for (let done = 0; done < data.length; ) {
    const n = readSync(fd, data, done, data.length - done, done);
    if (n === 0) throw new PeerShareError('FILE_CHANGED');
    done += n;
  }
  if (!sameVersion(version, fstatSync(fd, { bigint: true }))) throw new PeerShareError('FILE_CHANGED');
  return data;
}

/**
 * `version` once its last change is a clock tick old (TIMESTAMP_TICK_MS), waiting if it is newer;
 * undefined if it changed meanwhile (a file being written). *Why: a same-size rewrite within one
 * tick of the kernel's coarse clock leaves the times alike, so a read that met it, half of each
 * version, passed the check of the times after it, with a fileHash made from those bytes that
 * checked out (found by attack round 9, inline-attacks.test.ts). Once the last change is a tick
 * old, any write during the read changes the ctime.*
 */
export async function settledVersion(version: BigIntStats, statNow: () => BigIntStats | Promise<BigIntStats>): Promise<BigIntStats | undefined> {
  const wait = msUntilSettled(version);
  if (wait === 0) return version;
  await sleep(wait, NEVER_ABORTED);
  const now = await statNow();
  return sameVersion(version, now) ? now : undefined;
}

const NEVER_ABORTED = new AbortController().signal;

/** openBeneath with synchronous calls (Share.readSmallFile); returns the descriptor. */
function openBeneathSync(procFd: string, base: string, components: string[], flags: number): number {
  const folderFlags = fsc.O_RDONLY | (fsc.O_DIRECTORY ?? 0) | (fsc.O_NOFOLLOW ?? 0) | (fsc.O_NONBLOCK ?? 0);
  let folder = openSync(base, folderFlags);
  try {
    for (const part of components.slice(0, -1)) {
      let next: number;
      try {
        next = openSync(`${procFd}/${folder}/${part}`, folderFlags);
      } catch (err) {
        throw (err as NodeJS.ErrnoException).code === 'ENOTDIR' ? new PeerShareError('NOT_FOUND') : err;
      }
      closeSync(folder);
      folder = next;
    }
    return openSync(`${procFd}/${folder}/${components[components.length - 1]}`, flags);
  } finally {
    closeSync(folder);
  }
}

/** Never follows a symlink at the last component; never blocks on a FIFO; a terminal swapped in never becomes ours. */
function openFlags(wantDir: boolean | undefined): number {
  return fsc.O_RDONLY | (fsc.O_NOFOLLOW ?? 0) | (fsc.O_NONBLOCK ?? 0) | (fsc.O_NOCTTY ?? 0) | (wantDir ? fsc.O_DIRECTORY ?? 0 : 0);
}

function openError(err: unknown, wantDir: boolean | undefined): PeerShareError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ELOOP' || code === 'EMLINK') return new PeerShareError('OUTSIDE_SHARE', 'Symbolic links are not followed.');
  if (code === 'ENOTDIR') return new PeerShareError(wantDir ? 'NOT_A_DIRECTORY' : 'NOT_FOUND');
  if (code === 'ENXIO') return new PeerShareError('NOT_A_FILE', 'Only regular files are shared.');
  return toPeerShareError(err, 'IO_ERROR');
}

async function refuseSymlinkComponents(root: ShareRoot, components: string[]): Promise<void> {
  let current = root.realPath;
  for (const part of components) {
    current = path.join(current, part);
    const st = await fs.lstat(current).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'ENOTDIR' ? new PeerShareError('NOT_FOUND') : toPeerShareError(err, 'IO_ERROR');
    });
    if (st.isSymbolicLink()) throw new PeerShareError('OUTSIDE_SHARE', 'Symbolic links are not followed.');
    if (!st.isFile() && !st.isDirectory()) throw new PeerShareError('NOT_A_FILE', 'Only regular files and folders are shared.');
  }
}

/** refuseSymlinkComponents with synchronous calls (Share.readSmallFile). */
function refuseSymlinkComponentsSync(root: ShareRoot, components: string[]): void {
  let current = root.realPath;
  for (const part of components) {
    current = path.join(current, part);
    let st: Stats;
    try {
      st = lstatSync(current);
    } catch (err) {
      throw (err as NodeJS.ErrnoException).code === 'ENOTDIR' ? new PeerShareError('NOT_FOUND') : toPeerShareError(err, 'IO_ERROR');
    }
    if (st.isSymbolicLink()) throw new PeerShareError('OUTSIDE_SHARE', 'Symbolic links are not followed.');
    if (!st.isFile() && !st.isDirectory()) throw new PeerShareError('NOT_A_FILE', 'Only regular files and folders are shared.');
  }
}

/** `dev:ino` of the regular files directly in `folders` (or of a path that is itself a file): what a hard link would share. */
async function filesIn(folders: string[]): Promise<Set<string>> {
  const files = new Set<string>();
  const add = async (file: string): Promise<void> => {
    const st = await fs.lstat(file, { bigint: true }).catch(() => undefined);
    if (st?.isFile()) files.add(`${st.dev}:${st.ino}`);
  };
  for (const folder of folders) {
    const entries = await fs.readdir(folder).catch(() => undefined);
    if (entries) await Promise.all(entries.map((name) => add(path.join(folder, name))));
    else await add(folder);
  }
  return files;
}

function lstatOrUndefined(file: string): Stats | undefined {
  try {
    return lstatSync(file);
  } catch {
    return undefined;
  }
}
