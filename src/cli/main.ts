import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import { parseArgs } from 'node:util';
import {
  DEFAULT_LIMITS,
  DEFAULT_PORT,
  PeerShareNode,
  PeerShareError,
  Share,
  TrustStore,
  ReceiveSettings,
  download,
  follow,
  syncFile,
  syncFolder,
  OriginStore,
  originFileFor,
  resolveTarget,
  loadOrCreateIdentity,
  Discovery,
  verificationCode,
  fingerprintFromPeerId,
  sanitizeForDisplay,
  shortPeerId,
  provePeer,
  toPeerShareError,
  MAX_NOTE_CHARS,
  formatDhtKey,
  parseBootstrap,
  type DhtBootstrap,
  type NearbyPeer,
  type AccessDecision,
  type AccessRequest,
  type Identity,
  type PeerConnection,
  type ErrorCode,
  type FollowReport,
} from '../core';
import { keepMallocHeap } from './malloc-heap';
import { ProgressBar } from './progress';
import { parseSnippetName, terminalReceivePolicy, type ReceiveMode } from './receive';
import { TerminalLines } from './terminal-lines';
import { countOf, formatBytes } from '../core/format';
import type { WatchBatch } from '../core/watch';

/** Exit codes, documented in README.md: scripts can tell these apart. */
export const EXIT = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  CONNECTION: 3,
  REFUSED: 4,
  INTEGRITY: 5,
  EXISTS: 6,
  INTERRUPTED: 130,
} as const;

const EXIT_BY_CODE: Partial<Record<ErrorCode, number>> = {
  INVALID_ARGUMENT: EXIT.USAGE,
  INVALID_INVITE: EXIT.USAGE,
  UNKNOWN_PEER: EXIT.USAGE,
  CONNECTION_FAILED: EXIT.CONNECTION,
  CONNECTION_CLOSED: EXIT.CONNECTION,
  TIMEOUT: EXIT.CONNECTION,
  BUSY: EXIT.CONNECTION,
  ADDRESS_IN_USE: EXIT.CONNECTION,
  PEER_UNTRUSTED: EXIT.REFUSED,
  PEER_MISMATCH: EXIT.REFUSED,
  TOKEN_INVALID: EXIT.REFUSED,
  VERSION_UNSUPPORTED: EXIT.REFUSED,
  NOT_FOUND: EXIT.REFUSED,
  OUTSIDE_SHARE: EXIT.REFUSED,
  EXCLUDED: EXIT.REFUSED,
  NOT_A_FILE: EXIT.REFUSED,
  NOT_A_DIRECTORY: EXIT.REFUSED,
  PERMISSION_DENIED: EXIT.REFUSED,
  HASH_MISMATCH: EXIT.INTEGRITY,
  SIZE_MISMATCH: EXIT.INTEGRITY,
  BAD_NAME: EXIT.INTEGRITY,
  PROTOCOL_ERROR: EXIT.INTEGRITY,
  FILE_CHANGED: EXIT.INTEGRITY,
  UNSAFE_HOME: EXIT.REFUSED,
  DEST_EXISTS: EXIT.EXISTS,
  CANCELLED: EXIT.INTERRUPTED,
};

const USAGE = `Usage: peershare <command> [options]

Commands:
  serve [dir...]                      Share folders (default: the current one) and print an invite
  ls <invite|peer> [path]             List a peer's shared folders, or a folder in them
  ls <invite|peer> <path> --watch     List a folder, then print its changes as they happen (Ctrl+C stops)
  get <invite|peer> <remote> [dest]   Download a file or folder (dest: a folder or a new name; default .)
  sync <invite|peer> <remote> <dest>  Make dest a mirror of a peer's file or folder, moving only changed chunks
  sync ... --watch [--delete]         Keep dest in step: apply each change as it happens (Ctrl+C stops)
  send <peer> <path>...               Offer files and folders to a peer; they travel only if it accepts
  send <peer> --text --name F:LINE    Send the text on standard input as a snippet of F from LINE (nothing is written there)
  id                                  Show this installation's peer ID
  nearby                              List peers announcing themselves on the local network (--timeout ms)
  trust ls                            List the peers this installation trusts
  trust rm <peer>                     Stop trusting a peer (by ID, ID prefix or name)
  trust receive <peer> ask|inbox|never  What a peer may send you: ask each time (default), straight into the inbox, or nothing

<peer> is a trusted peer's ID (or its first 8+ characters), its name, or host:port.

Options:
  --home DIR            Identity and trust folder (default: $PEERSHARE_HOME or ~/.peershare)
  --json                Print one machine-readable JSON result
  --name NAME           The name other peers see (default: user@host)
  serve:  --port N (default 47474, or any free port if it is taken; 0: any free port)
          --host ADDR (default 127.0.0.1; 0.0.0.0 for the LAN)
          --invite-ttl SECONDS (default 3600)  --invite-uses N (default 1)
          --exclude GLOB (repeatable)  --no-gitignore  --no-default-excludes
          --announce   Announce this peer to the local network (nearby peers see a hint, not trust)
          --requests ask|deny  Nearby peers asking to connect: ask at this terminal, or refuse (default deny)
          --receive-into DIR   Take files trusted peers send (peershare send) into DIR; without it every offer is refused
          --receive ask|trusted  With --receive-into: ask at this terminal (default; declined without one), or accept from trusted peers without asking
  nearby, serve --announce, ls, get:  --interface ADDR (IPv4 address, repeatable; default: every LAN interface)
          --discovery-port N (default 47475)
  ls, get: a trusted peer not at its last address is looked for at its host's port 47474, then
          among the peers announcing themselves nearby (its certificate decides);
          --no-discovery  Do not listen for announcements
  ls:     --watch           Keep running: + added, ~ changed, - removed (with --json: one JSON line each)
  get:    --overwrite       Replace existing files (default: never; a folder's existing files are skipped)
          --keep-both       Save next to existing files as "name (2).ext"
  sync:   dest is the mirror itself (a folder's files go straight into it; a file goes into dest
          if it is a folder, else becomes dest). A file whose size or time differs from the peer's
          is replaced by the peer's version, built from the chunks already in dest plus the changed
          ones, once verified whole with BLAKE3: local edits to such a file are replaced (dest is a
          mirror). Files only in dest are kept; a link or anything but a file in a file's place is
          left alone and reported. --json: files checked, changed and deleted, bytes received and
          bytes reused from local copies (with --watch: one JSON line per sync or batch of changes)
          --watch   Keep running: the peer's changes are applied as they happen, until Ctrl+C
          --delete  Remove files the peer removed, only if a sync created them and they were not
                    edited here since (what came from where is kept under the home's origins/)
  send:   --note TEXT       A note shown with the offer (at most 200 characters)
          --text --name F:LINE[-END]  With --text, --name names the snippet, not you
          Exit codes: 0 all accepted and received, 4 declined or refused, others as for get
  serve, ls, get, sync:  --internet  Internet reach through HyperDHT: serve listens there too (its invite
          carries a DHT key), ls and get also try a peer's DHT key. The DHT learns this machine's IP
          address and, while serving, its DHT key.
          --dht-bootstrap HOST:PORT[,HOST:PORT]  A private DHT's bootstrap nodes (default:
          $PEERSHARE_DHT_BOOTSTRAP, else HyperDHT's public ones)
`;

interface Globals {
  json: boolean;
  home?: string;
  name: string;
  /** Where serve listens unless --port says otherwise, and where ls and get look for a restarted peer. */
  defaultPort: number;
  /** Where ls and get listen for a trusted peer's announcements when it is not where it was; false: not at all. */
  lookNearby: { interfaces?: string[]; port?: number } | false;
  /** Internet reach (--internet): the DHT's bootstrap nodes; false: off. */
  internet: { bootstrap: DhtBootstrap } | false;
}

function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

const OPTIONS = {
  home: { type: 'string' },
  json: { type: 'boolean', default: false },
  name: { type: 'string' },
  port: { type: 'string' },
  host: { type: 'string' },
  'invite-ttl': { type: 'string' },
  'invite-uses': { type: 'string' },
  exclude: { type: 'string', multiple: true },
  'no-gitignore': { type: 'boolean', default: false },
  'no-default-excludes': { type: 'boolean', default: false },
  overwrite: { type: 'boolean', default: false },
  'keep-both': { type: 'boolean', default: false },
  watch: { type: 'boolean', default: false },
  delete: { type: 'boolean', default: false },
  announce: { type: 'boolean', default: false },
  requests: { type: 'string' },
  interface: { type: 'string', multiple: true },
  'discovery-port': { type: 'string' },
  'no-discovery': { type: 'boolean', default: false },
  internet: { type: 'boolean', default: false },
  'dht-bootstrap': { type: 'string' },
  timeout: { type: 'string' },
  note: { type: 'string' },
  text: { type: 'boolean', default: false },
  'receive-into': { type: 'string' },
  receive: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
  version: { type: 'boolean', default: false },
} as const;

async function main(argv: string[]): Promise<number> {
  keepMallocHeap();
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: OPTIONS,
  });
  const [command, ...args] = positionals;
  if (values.help || !command) {
    process.stdout.write(USAGE);
    return values.help ? EXIT.OK : EXIT.USAGE;
  }
  const discovery = {
    announce: values.announce ?? false,
    interfaces: values.interface,
    port: intOption(values['discovery-port'], 'discovery-port', 1, 65535),
  };
  const globals: Globals = {
    json: values.json ?? false,
    home: values.home,
    // With --text, --name names the snippet (the issue's `peershare send <peer> --text --name app.ts:40`).
    name: (values.text ? undefined : values.name) ?? `${os.userInfo().username}@${os.hostname()}`,
    defaultPort: defaultPortSetting(),
    lookNearby: values['no-discovery'] ? false : { interfaces: discovery.interfaces, port: discovery.port },
    internet: internetOption(values.internet ?? false, values['dht-bootstrap']),
  };
  switch (command) {
    case 'nearby':
      if (args.length > 0) throw new PeerShareError('INVALID_ARGUMENT', 'Usage: peershare nearby [--timeout ms] [--json]');
      return commandNearby(globals, discovery, intOption(values.timeout, 'timeout', 100, 600_000) ?? 3000);
    case 'id':
      return commandId(globals);
    case 'serve':
      return commandServe(globals, args.length ? args : ['.'], {
        port: intOption(values.port, 'port', 0, 65535),
        host: values.host ?? '127.0.0.1',
        ttlMs: (intOption(values['invite-ttl'], 'invite-ttl', 1, 365 * 86400) ?? 3600) * 1000,
        uses: intOption(values['invite-uses'], 'invite-uses', 1, 1_000_000) ?? 1,
        excludes: values.exclude ?? [],
        honourGitignore: !values['no-gitignore'],
        defaultExcludes: !values['no-default-excludes'],
        discovery,
        requests: requestsOption(values.requests),
        receive: receiveOption(values['receive-into'], values.receive),
        internet: globals.internet !== false,
      });
    case 'send': {
      if (args.length < 1 || (values.text ? args.length !== 1 : args.length < 2)) {
        throw new PeerShareError('INVALID_ARGUMENT', 'Usage: peershare send <peer> <path>... [--note TEXT]  or  peershare send <peer> --text --name FILE:LINE');
      }
      if (values.text && !values.name) throw new PeerShareError('INVALID_ARGUMENT', 'A snippet needs --name FILE:LINE (the file and line it comes from).');
      return commandSend(globals, args[0], args.slice(1), { note: values.note, snippetName: values.text ? values.name : undefined });
    }
    case 'trust':
      return commandTrust(globals, args);
    case 'ls':
      if (args.length < 1 || args.length > 2) throw new PeerShareError('INVALID_ARGUMENT', 'Usage: peershare ls <invite|peer> [path]');
      if (values.watch) {
        if (args.length < 2) throw new PeerShareError('INVALID_ARGUMENT', 'Usage: peershare ls <invite|peer> <path> --watch (a folder inside a shared one)');
        return commandLsWatch(globals, args[0], args[1]);
      }
      return commandLs(globals, args[0], args[1] ?? '');
    case 'get': {
      if (args.length < 2 || args.length > 3) throw new PeerShareError('INVALID_ARGUMENT', 'Usage: peershare get <invite|peer> <remote-path> [dest]');
      if (values.overwrite && values['keep-both']) throw new PeerShareError('INVALID_ARGUMENT', 'Choose --overwrite or --keep-both, not both.');
      const conflict = values.overwrite ? 'overwrite' : values['keep-both'] ? 'keepBoth' : undefined;
      // A download makes a stream of short-lived 16 KiB read buffers. Left to grow, V8's young
      // generation doubles under it and the dead buffers pile up between collections; kept at
      // its first size, a 1 GiB download peaks about 14 MiB lower at the same speed. Only here:
      // a sharer listing 100,000 files would promote more to the old generation and grow instead.
      v8.setFlagsFromString('--semi-space-growth-factor=1');
      return commandGet(globals, args[0], args[1], args[2] ?? '.', conflict);
    }
    case 'sync':
      if (args.length !== 3) throw new PeerShareError('INVALID_ARGUMENT', 'Usage: peershare sync <invite|peer> <remote-path> <dest> [--watch] [--delete]');
      return commandSync(globals, args[0], args[1], args[2], { watch: values.watch, deleteRemoved: values.delete });
    default: {
      const guess = closest(command, COMMANDS);
      throw new PeerShareError('INVALID_ARGUMENT', `Unknown command "${sanitizeForDisplay(command).slice(0, 40)}".${guess ? ` Did you mean "${guess}"?` : ''} Run peershare --help.`);
    }
  }
}

const COMMANDS = ['serve', 'ls', 'get', 'sync', 'send', 'id', 'nearby', 'trust'];

/** The candidate at most two edits away from `word`, if exactly one is closest: for "did you mean". */
function closest(word: string, candidates: readonly string[]): string | undefined {
  const distance = (a: string, b: string): number => {
    const row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      let previous = row[0];
      row[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const here = row[j];
        row[j] = Math.min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
        previous = here;
      }
    }
    return row[b.length];
  };
  const scored = candidates.map((c) => ({ c, d: distance(word.toLowerCase(), c) })).filter((s) => s.d <= 2).sort((x, y) => x.d - y.d);
  return scored.length > 0 && (scored.length === 1 || scored[0].d < scored[1].d) ? scored[0].c : undefined;
}

function requestsOption(value: string | undefined): 'ask' | 'deny' {
  if (value === undefined || value === 'deny') return 'deny';
  if (value === 'ask') {
    if (!process.stdin.isTTY) throw new PeerShareError('INVALID_ARGUMENT', '--requests ask needs a terminal to ask at.');
    return 'ask';
  }
  throw new PeerShareError('INVALID_ARGUMENT', '--requests takes ask or deny.');
}

function receiveOption(into: string | undefined, mode: string | undefined): { into: string; mode: ReceiveMode } | undefined {
  if (into === undefined) {
    if (mode !== undefined) throw new PeerShareError('INVALID_ARGUMENT', '--receive needs --receive-into DIR (where received files go).');
    return undefined;
  }
  if (mode !== undefined && mode !== 'ask' && mode !== 'trusted') throw new PeerShareError('INVALID_ARGUMENT', '--receive takes ask or trusted.');
  return { into: path.resolve(into), mode: mode ?? 'ask' };
}

/**
 * One question at the terminal, in the queue of questions (one at a time; only a line begun
 * after it appeared answers it). `answers` maps what may be typed to its result; a withdrawn
 * question, or none answered in time, is `withdrawn` (and `onWithdrawn` is said).
 */
function askAtTerminalQueue<T>(question: string, answers: Record<string, T>, retry: string, withdrawn: T, onWithdrawn: string, signal: AbortSignal): Promise<T> {
  const turn = questions.then(
    () =>
      new Promise<T>((resolve) => {
        if (signal.aborted) return resolve(withdrawn);
        startReadingTerminal();
        const shownAt = Date.now();
        const finish = (answer: T): void => {
          lineHandler = undefined;
          terminalLines?.discardPending();
          signal.removeEventListener('abort', onAbort);
          resolve(answer);
        };
        const onAbort = (): void => {
          process.stderr.write(`\n(${onWithdrawn})\n`);
          finish(withdrawn);
        };
        signal.addEventListener('abort', onAbort);
        lineHandler = (line, startedAt) => {
          if (startedAt < shownAt) {
            process.stderr.write('(ignored: typed before this question appeared; answer again) ');
            return;
          }
          const answer = line.trim().toLowerCase();
          if (Object.hasOwn(answers, answer)) return finish(answers[answer]);
          process.stderr.write(retry);
        };
        process.stderr.write(question);
      }),
  );
  questions = turn;
  return turn;
}

/** A yes/no question at the terminal (see askAtTerminalQueue); a withdrawn question, or none in time, is no. */
function askYesNo(question: string, signal: AbortSignal): Promise<boolean> {
  return askAtTerminalQueue(question, { y: true, yes: true, n: false, no: false }, 'Type y or n: ', false, 'the offer was withdrawn, or no answer came in time: declined', signal);
}

/**
 * Asks at the terminal whether a nearby peer may connect. A peer can make us ask, so the prompt
 * is built to be hard to trick: one question at a time (the sharer bounds how many wait, per
 * source and in all); only a line *begun* after the question appeared answers it (type-ahead is
 * dropped, so keys pressed for one question never answer the next, even one that was withdrawn
 * while the person typed); and what identifies the peer
 * (the verification code and the ID from its certificate) stands apart from the name it chose,
 * which is escaped, shortened and quoted. No answer before the deadline is a Deny.
 */
let questions: Promise<unknown> = Promise.resolve();
let terminalLines: TerminalLines | undefined;
let lineHandler: ((line: string, startedAt: number) => void) | undefined;

function onTerminalLine(line: string, startedAt: number): void {
  if (lineHandler) lineHandler(line, startedAt);
  else if (line.trim() !== '') process.stderr.write('(ignored: no question is open)\n');
}

/** One reader for the whole run, always reading, so lines typed while no question is open are consumed and dropped. */
function startReadingTerminal(): void {
  terminalLines ??= new TerminalLines(process.stdin, process.stderr, onTerminalLine);
}

function askAtTerminal(request: AccessRequest, signal: AbortSignal): Promise<AccessDecision> {
  const answers: Record<string, AccessDecision> = { a: 'always', always: 'always', o: 'once', once: 'once', d: 'deny', deny: 'deny', n: 'deny', no: 'deny' };
  return askAtTerminalQueue(formatAccessQuestion(request), answers, 'Type o, a or d: ', 'deny', 'the request was withdrawn, or no answer came in time: denied', signal);
}

/** The question, with what the certificate proves set apart from what the peer says of itself. */
export function formatAccessQuestion(request: AccessRequest): string {
  const name = sanitizeForDisplay(request.name).slice(0, 64);
  return (
    '\nA peer asks to connect and read your share.\n' +
    `  Verification code  ${request.verificationCode}   (ask them to read theirs; it must match)\n` +
    `  Peer ID            ${shortPeerId(request.id)}…   (from its certificate)\n` +
    `  Address            ${sanitizeForDisplay(request.address).slice(0, 64)}\n` +
    `  Calls itself       "${name}"   (its own choice: proves nothing)\n` +
    'Allow once [o], always allow [a], deny [d]? '
  );
}

/** Who may read whom, in words: trust has a direction. */
function describeTrust(peer: { mayReadUs: boolean; weRead: boolean }): string {
  if (peer.mayReadUs && peer.weRead) return 'reads your share; you read theirs';
  return peer.mayReadUs ? 'reads your share' : 'you read theirs';
}

/**
 * DEFAULT_PORT, unless PEERSHARE_DEFAULT_PORT says otherwise. That variable is for tests: they
 * check the default port's behaviour on a port of their own, so they never contend for 47474
 * with a serve running on the same machine (or with each other).
 */
function defaultPortSetting(): number {
  const value = process.env.PEERSHARE_DEFAULT_PORT;
  if (value === undefined || value === '') return DEFAULT_PORT;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new PeerShareError('INVALID_ARGUMENT', 'PEERSHARE_DEFAULT_PORT must be a whole number from 1 to 65535.');
  return n;
}

function intOption(value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new PeerShareError('INVALID_ARGUMENT', `--${name} must be a whole number from ${min} to ${max}.`);
  return n;
}

async function commandId(globals: Globals): Promise<number> {
  const identity = await loadOrCreateIdentity(globals.home);
  if (globals.json) printJson({ peerId: identity.peerId, fingerprint: identity.fingerprint.toString('hex'), home: identity.home });
  else out(identity.peerId);
  return EXIT.OK;
}

async function commandTrust(globals: Globals, args: string[]): Promise<number> {
  const [sub, target, ...rest] = args;
  const identity = await loadOrCreateIdentity(globals.home);
  const trust = await TrustStore.open(identity.home);
  if (sub === 'ls' && target === undefined) {
    const peers = trust.list().map((p) => ({ ...p, verificationCode: verificationCode(identity.fingerprint, fingerprintFromPeerId(p.id)) }));
    if (globals.json) printJson({ peers });
    else if (peers.length === 0) out('No trusted peers yet. Pair with one using an invite.');
    else for (const p of peers) out(`${p.id}  ${sanitizeForDisplay(p.name || '-').slice(0, 64)}  ${describeTrust(p)}  ${p.addresses[0] ? sanitizeForDisplay(p.addresses[0]).slice(0, 64) : 'not sharing'}  code ${p.verificationCode}`);
    return EXIT.OK;
  }
  if (sub === 'receive' && target !== undefined && rest.length === 1) {
    const setting = rest[0];
    if (setting !== 'ask' && setting !== 'inbox' && setting !== 'never') throw new PeerShareError('INVALID_ARGUMENT', 'Usage: peershare trust receive <peer> ask|inbox|never');
    const peer = trust.find(target);
    if (!peer) throw new PeerShareError('UNKNOWN_PEER', `No trusted peer matches "${target}".`);
    await new ReceiveSettings(identity.home).set(peer.id, setting);
    if (globals.json) printJson({ peer: peer.id, receive: setting });
    else out(`${sanitizeForDisplay(peer.name || peer.id).slice(0, 64)} (${peer.id}) ${setting === 'ask' ? 'is asked about each offer' : setting === 'inbox' ? 'sends straight into the inbox (--receive-into), without a question' : 'may send you nothing'}.`);
    return EXIT.OK;
  }
  if (sub === 'rm' && target !== undefined && rest.length === 0) {
    const peer = trust.find(target);
    if (!peer) throw new PeerShareError('UNKNOWN_PEER', `No trusted peer matches "${target}".`);
    await trust.remove(peer.id);
    if (globals.json) printJson({ removed: peer.id });
    else out(`No longer trusting ${sanitizeForDisplay(peer.name || peer.id).slice(0, 64)} (${peer.id}). A running "peershare serve" with this home refuses its next request.`);
    return EXIT.OK;
  }
  throw new PeerShareError('INVALID_ARGUMENT', 'Usage: peershare trust ls | peershare trust rm <peer> | peershare trust receive <peer> ask|inbox|never');
}

async function commandServe(
  globals: Globals,
  folders: string[],
  options: {
    /** Undefined: the default port, or any free one if it is taken. */
    port?: number;
    host: string;
    ttlMs: number;
    uses: number;
    excludes: string[];
    honourGitignore: boolean;
    defaultExcludes: boolean;
    discovery: DiscoverySettings;
    requests: 'ask' | 'deny';
    receive?: { into: string; mode: ReceiveMode };
    internet: boolean;
  },
): Promise<number> {
  const log = (level: string, message: string): void => {
    if (level !== 'debug' || process.env.PEERSHARE_DEBUG) process.stderr.write(`[${new Date().toISOString()}] ${level}: ${message}\n`);
  };
  const loopbackOnly = isLoopback(options.host);
  // With no --interface, announcements go to every network interface.
  const interfaces = options.discovery.interfaces;
  if (options.discovery.announce && loopbackOnly && !(interfaces && interfaces.every(isLoopback))) {
    throw new PeerShareError(
      'INVALID_ARGUMENT',
      `--announce tells your network where to connect, but serve listens on ${options.host} only, where no other machine can reach it. Add --host 0.0.0.0 to share on the network.`,
    );
  }
  const node = await openNode(globals, options.discovery.announce && { interfaces, port: options.discovery.port }, log);
  const { identity } = node;
  const receive = options.receive;
  const askOffers = receive?.mode === 'ask' && process.stdin.isTTY === true;
  if (receive) {
    await fs.mkdir(receive.into, { recursive: true });
    node.setReceivePolicy(
      terminalReceivePolicy({
        into: receive.into,
        mode: receive.mode,
        json: globals.json,
        ask: askOffers ? askYesNo : undefined,
        out,
        log: (level, message) => log(level, message),
      }),
    );
  }
  const { server, share, port, defaultPortInUse, announced, internetKey, internetError } = await node.share({
    folders: folders.map((f) => path.resolve(f)),
    excludes: options.excludes,
    honourGitignore: options.honourGitignore,
    defaultExcludes: options.defaultExcludes,
    host: options.host,
    port: options.port,
    announce: options.discovery.announce,
    onAccessRequest: options.requests === 'ask' ? askAtTerminal : undefined,
    internet: options.internet,
  });
  const invite = server.createInvite({ ttlMs: options.ttlMs, uses: options.uses });
  // Only once everything is up: a failed start must not leave the terminal being read (and raw).
  if (options.requests === 'ask' || askOffers) startReadingTerminal();
  if (globals.json) {
    const reach = internetKey ? { dht: formatDhtKey(internetKey) } : internetError ? { internetError: { code: internetError.code, message: internetError.message } } : {};
    printJson({ event: 'listening', addresses: server.addresses(), port, ...(defaultPortInUse ? { defaultPortInUse } : {}), ...reach, peerId: identity.peerId, invite, roots: share.roots.map((r) => r.name) });
  } else {
    out(`Sharing ${share.roots.map((r) => r.realPath).join(', ')} (read-only) as "${globals.name}"`);
    out(`Peer ID:   ${identity.peerId}`);
    out(`Listening: ${server.addresses().join(', ')}`);
    if (internetKey) out(`Internet:  on the DHT as ${formatDhtKey(internetKey)} (the invite carries it)`);
    if (internetError) out(`Internet:  off: ${internetError.message}`);
    if (defaultPortInUse) {
      out(
        `Port ${defaultPortInUse} is in use; listening on ${port} instead. Peers that paired with you find you ${announced ? 'through your announcements' : 'only with a new invite (or when you announce yourself: --announce)'}.`,
      );
    }
    out(`Invite (valid ${Math.round(options.ttlMs / 60000)} min, ${options.uses} use${options.uses === 1 ? '' : 's'}):`);
    out(`  ${invite}`);
    if (receive) out(`Receiving: files trusted peers send go into ${receive.into} (${receive.mode === 'trusted' ? 'accepted without asking' : askOffers ? 'asked at this terminal' : 'declined: no terminal to ask at'}).`);
    if (loopbackOnly) out(`Only this machine can connect (listening on ${options.host}). To share on your network, add --host 0.0.0.0.`);
    else out('On the other machine: peershare ls "<invite>"   (quote the invite)');
    out('Press Ctrl+C to stop.');
  }
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      terminalLines?.close();
      void node.close().then(() => {
        log('info', 'Stopped sharing.');
        resolve();
      });
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  return EXIT.OK;
}

function isLoopback(host: string): boolean {
  return /^127\./.test(host) || host === '::1' || host === 'localhost';
}

/** Addresses checked per claimed ID (at once and within a deadline: nearbyProbesAtOnce, nearbyProbeDeadlineMs). */
const NEARBY_PROBES_PER_ID = DEFAULT_LIMITS.maxAnnouncedAddressesTried;

interface DiscoverySettings {
  announce: boolean;
  interfaces?: string[];
  port?: number;
}

async function commandNearby(globals: Globals, settings: DiscoverySettings, timeoutMs: number): Promise<number> {
  const identity = await loadOrCreateIdentity(globals.home);
  const trust = await TrustStore.open(identity.home);
  const nearby = new Discovery({ selfId: identity.peerId, interfaces: settings.interfaces, port: settings.port });
  await nearby.start();
  await new Promise((resolve) => setTimeout(resolve, timeoutMs));
  // An announcement is only a claim: a known ID counts as trusted only where a TLS handshake
  // proved its certificate. Only known IDs are probed, so strangers cannot send us anywhere else.
  // Strangers choose what is announced: at most a few addresses per ID are probed, within one
  // deadline for all, so a flood of announcements can neither hold `nearby` up nor aim us anywhere.
  const announced = nearby.list();
  const probing = AbortSignal.timeout(DEFAULT_LIMITS.nearbyProbeDeadlineMs);
  const probesPerId = new Map<string, number>();
  const peers: (NearbyPeer & { known: boolean; trusted: boolean })[] = [];
  for (let i = 0; i < announced.length; i += DEFAULT_LIMITS.nearbyProbesAtOnce) {
    peers.push(
      ...(await Promise.all(
        announced.slice(i, i + DEFAULT_LIMITS.nearbyProbesAtOnce).map(async (p) => {
          const known = trust.knows(p.id);
          const tries = (probesPerId.get(p.id) ?? 0) + 1;
          probesPerId.set(p.id, tries);
          const worthProbing = known && tries <= NEARBY_PROBES_PER_ID && !probing.aborted;
          const proved = worthProbing && (await provePeer({ identity, address: p.address, expectedPeerId: p.id, timeoutMs: 2000, signal: probing }));
          if (proved) nearby.markProved(p.id, p.address);
          return { ...p, proved, known, trusted: proved };
        }),
      )),
    );
  }
  await nearby.stop();
  if (globals.json) printJson({ peers });
  else if (peers.length === 0) out('No peers announcing themselves nearby.');
  else {
    for (const p of peers) {
      const status = p.trusted ? 'trusted (certificate checked)' : p.known ? 'claims the ID of a peer you know, but could not prove it' : 'not trusted (pair with an invite)';
      out(`${p.id}  ${sanitizeForDisplay(p.name || '-').slice(0, 64)}  ${sanitizeForDisplay(p.address)}  ${status}`);
    }
  }
  return EXIT.OK;
}

/** Connects to an invite, a trusted peer's ID or name, or host:port of a trusted peer. */
async function connectTarget(globals: Globals, target: string, signal?: AbortSignal): Promise<{ conn: PeerConnection; identity: Identity }> {
  const node = await openNode(globals, globals.lookNearby);
  const { conn, movedFrom } = await node.connectTarget(target, { signal });
  if (movedFrom && !globals.json) {
    process.stderr.write(`Found ${sanitizeForDisplay(conn.peerName).slice(0, 64) || 'the peer'} at ${conn.address}, a new address; remembered for next time.\n`);
  }
  return { conn, identity: node.identity };
}

/** This installation, as the CLI's options describe it; `discovery` false: no listening for or sending announcements. */
function openNode(globals: Globals, discovery: { interfaces?: string[]; port?: number } | false, log?: (level: string, message: string) => void): Promise<PeerShareNode> {
  const internet = globals.internet;
  const opening = PeerShareNode.open({ home: globals.home, name: () => globals.name, defaultPort: globals.defaultPort, discovery: () => discovery, log, internet: () => internet });
  void opening.then((node) => openNodes.add(node), () => undefined);
  return opening;
}

/** Nodes a command opened: closed when it ends, so a DHT node's sockets do not keep the process alive. */
const openNodes = new Set<PeerShareNode>();

async function closeOpenNodes(): Promise<void> {
  await Promise.all([...openNodes].map((node) => node.close().catch(() => undefined)));
}

/**
 * --internet and where the DHT is: --dht-bootstrap, else PEERSHARE_DHT_BOOTSTRAP, else the public
 * HyperDHT, chosen by name. A bootstrap list without --internet turns nothing on.
 */
function internetOption(on: boolean, bootstrap: string | undefined): Globals['internet'] {
  if (!on) return false;
  const given = bootstrap ?? process.env.PEERSHARE_DHT_BOOTSTRAP;
  if (given === undefined || given.trim() === '') return { bootstrap: 'public' };
  return { bootstrap: parseBootstrap(given.split(',').map((entry) => entry.trim())) };
}

async function commandLs(globals: Globals, target: string, remotePath: string): Promise<number> {
  const { conn } = await connectTarget(globals, target);
  try {
    await printListing(globals, conn, remotePath);
  } finally {
    conn.close();
  }
  return EXIT.OK;
}

/** `ls`'s output: one JSON object, or a line per entry (folders first), names escaped. */
async function printListing(globals: Globals, conn: PeerConnection, remotePath: string, jsonExtra: Record<string, unknown> = {}): Promise<void> {
  const entries = await conn.list(remotePath).catch((err: unknown) => {
    throw naming(err, remotePath);
  });
  entries.sort((a, b) => (a.type === b.type ? (a.name < b.name ? -1 : 1) : a.type === 'dir' ? -1 : 1));
  if (globals.json) {
    printJson({ peer: { id: conn.peerId, name: conn.peerName }, path: remotePath, ...jsonExtra, entries });
  } else {
    for (const e of entries) out(`${e.type === 'dir' ? 'd' : '-'} ${entryLine(e.name, e)}`);
  }
}

function entryLine(name: string, e: { type: 'file' | 'dir'; size: number; mtimeMs: number }): string {
  const when = new Date(e.mtimeMs).toISOString().slice(0, 16).replace('T', ' ');
  const size = e.type === 'dir' ? '-' : formatBytes(e.size);
  return `${size.padStart(10)}  ${when}  ${sanitizeForDisplay(name)}${e.type === 'dir' ? '/' : ''}`;
}

/**
 * `ls <peer> <path> --watch` (docs/protocol-v2.md 14): the watch is armed first, then the folder
 * listed, so no change falls between; then each change as it arrives (`+` added, `~` changed, `-`
 * removed; with --json, each change as one JSON line, `{resync, entries}` after a flood), until
 * Ctrl+C. Names are escaped for the terminal; in JSON they are the peer's names as JSON strings.
 */
/** `ls --watch`: batches of changes held for printing at most; more become one resync (found by the live tree's attack: a hostile sharer took the CLI to 680 MB). */
const MAX_WAITING_WATCH_BATCHES = 4;

async function commandLsWatch(globals: Globals, target: string, remotePath: string): Promise<number> {
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const { conn } = await connectTarget(globals, target, abort.signal);
    try {
      // Batches are printed in order, after the first listing; a resync lists again before the next.
      let listed!: () => void;
      let printing = new Promise<void>((resolve) => (listed = resolve));
      let failure: unknown;
      const print = async (batch: WatchBatch): Promise<void> => {
        if (batch.kind === 'resync') {
          if (!globals.json) out('(many changes at once: the folder as it is now)');
          await printListing(globals, conn, remotePath, { resync: true });
          return;
        }
        for (const change of batch.changes) {
          if (globals.json) printJson(change);
          else if (change.type === 'removed') out(`- ${sanitizeForDisplay(change.path)}`);
          else out(`${change.type === 'added' ? '+' : '~'} ${entryLine(change.path, change.entry!)}`);
        }
        // A slow reader of our output (a pipe) holds the next batch back, not our memory.
        if (process.stdout.writableNeedDrain) await new Promise((resolve) => process.stdout.once('drain', resolve));
      };
      // At most a few batches wait to be printed; past that (a sharer sending faster than the
      // terminal takes it), they become one resync, which lists the folder as it is when printed.
      let waiting = 0;
      let resyncWaiting = false;
      const onChanges = (arrived: WatchBatch): void => {
        let batch = arrived;
        if (batch.kind === 'resync' || waiting >= MAX_WAITING_WATCH_BATCHES) {
          if (resyncWaiting) return; // the resync waiting to be printed covers this too
          resyncWaiting = true;
          batch = { kind: 'resync' };
        }
        waiting++;
        printing = printing
          .then(() => {
            waiting--;
            if (batch.kind === 'resync') resyncWaiting = false;
            return print(batch);
          })
          .catch((err: unknown) => {
            // A listing after a resync failed: that is the error to report, and the watch stops.
            failure ??= err;
            conn.close();
          });
      };
      const watch = await conn.share.watch(remotePath, { onChanges, signal: abort.signal }).catch((err: unknown) => {
        throw naming(err, remotePath);
      });
      await printListing(globals, conn, remotePath);
      listed();
      if (!globals.json && process.stderr.isTTY) process.stderr.write('Watching for changes; Ctrl+C stops.\n');
      await watch.ended.catch((err: unknown) => {
        throw failure ?? err;
      });
      await printing;
      if (failure) throw failure;
    } finally {
      conn.close();
    }
  } catch (err) {
    if (abort.signal.aborted) return EXIT.OK;
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return EXIT.OK;
}

/**
 * What `get` and `send` start with: Ctrl+C (or SIGTERM) cancels through `abort`, the clock, the
 * connection, and a progress bar on a terminal; `end` puts all of that away.
 */
async function startTransfer(
  globals: Globals,
  target: string,
): Promise<{ abort: AbortController; started: bigint; conn: PeerConnection; identity: Identity; bar?: ProgressBar; end: () => void }> {
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const started = process.hrtime.bigint();
  const stopListening = (): void => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
  const { conn, identity } = await connectTarget(globals, target, abort.signal).catch((err: unknown) => {
    stopListening();
    throw err;
  });
  const bar = !globals.json && process.stderr.isTTY ? new ProgressBar(process.stderr) : undefined;
  return {
    abort,
    started,
    conn,
    identity,
    bar,
    end: () => {
      bar?.done();
      conn.close();
      stopListening();
    },
  };
}

async function commandGet(globals: Globals, target: string, remotePath: string, dest: string, conflict: 'overwrite' | 'keepBoth' | undefined): Promise<number> {
  const { abort, started, conn, bar, end } = await startTransfer(globals, target);
  try {
    // "dir/" names a folder, as in cp and rsync: made if missing, and the download goes inside it.
    if (/[/\\]$/.test(dest)) {
      await fs.mkdir(dest, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
        throw new PeerShareError('IO_ERROR', `Cannot make the folder ${dest} to download into (${err.code === 'ENOTDIR' || err.code === 'EEXIST' ? 'a file is in the way' : 'a folder on the way is missing or not writable'}).`, { detail: String(err) });
      });
    }
    const result = await download(conn, remotePath, path.resolve(dest), {
      onConflict: conflict,
      signal: abort.signal,
      onProgress: bar ? (p) => bar.update(p) : undefined,
    }).catch((err: unknown) => {
      throw naming(err, remotePath);
    });
    bar?.done();
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (globals.json) {
      printJson({ ...result, seconds, maxRssBytes: process.resourceUsage().maxRSS * 1024 });
    } else {
      const what = result.type === 'dir' ? `${result.files} file${result.files === 1 ? '' : 's'}` : path.basename(result.target);
      out(`Downloaded ${what} (${formatBytes(result.bytes)}${result.resumedBytes ? `, resumed after ${formatBytes(result.resumedBytes)}` : ''}) to ${result.target} in ${seconds.toFixed(2)} s, verified with BLAKE3.`);
      if (result.skippedExisting.length) out(`Left ${countOf(result.skippedExisting.length, 'existing file')} alone; use --overwrite or --keep-both to replace or keep both.`);
      for (const s of result.skippedByPeer) out(`The peer could not send ${sanitizeForDisplay(s.path)}: ${sanitizeForDisplay(String(s.code)).slice(0, 40)} ${sanitizeForDisplay(s.message)}`);
      const unlisted = result.skippedByPeerCount - result.skippedByPeer.length;
      if (unlisted > 0) out(`...and ${unlisted} more file${unlisted === 1 ? '' : 's'} the peer could not send.`);
      for (const l of result.leftOut) out(`Left out ${sanitizeForDisplay(l.path)}: its name is not safe here (${l.why}).`);
      const unlistedLeftOut = result.leftOutCount - result.leftOut.length;
      if (unlistedLeftOut > 0) out(`...and ${unlistedLeftOut} more left out for their names.`);
    }
  } finally {
    end();
  }
  return EXIT.OK;
}

/**
 * `sync`: dest becomes a mirror of the peer's file or folder (issue 13), moving only the chunks
 * that changed (core/delta.ts). Files whose size and time match cost nothing. With --delete, a
 * file the sharer removed is removed here if a sync created it and it was not edited since
 * (core/follow.ts's rule, from the record under the home's origins/). With --watch, the folder is
 * followed: each change is applied as it arrives, until Ctrl+C.
 */
async function commandSync(globals: Globals, target: string, remotePath: string, dest: string, options: { watch: boolean; deleteRemoved: boolean }): Promise<number> {
  const { abort, started, conn, identity, end } = await startTransfer(globals, target);
  let origins: OriginStore | undefined;
  try {
    const entry = await conn.stat(remotePath, { signal: abort.signal }).catch((err: unknown) => {
      throw naming(err, remotePath);
    });
    let named = path.resolve(dest);
    if (entry.type === 'file') {
      // "dir/" names a folder, as for get: made if missing, and the file goes inside it.
      if (/[/\\]$/.test(dest)) await fs.mkdir(dest, { recursive: true });
      named = await resolveTarget(remotePath, dest);
    }
    origins = await OriginStore.open(originFileFor(identity.home, named));
    const sync = { origins, deleteRemoved: options.deleteRemoved, signal: abort.signal };
    if (!options.watch) {
      const report = entry.type === 'dir' ? await syncFolder(conn, remotePath, named, sync) : await syncFile(conn, remotePath, named, sync);
      printSyncReport(globals, { ...report, kind: 'initial', seconds: Number(process.hrtime.bigint() - started) / 1e9 }, entry.type, named);
      return EXIT.OK;
    }
    const following = await follow(conn, remotePath, named, { ...sync, onSynced: (report) => printSyncReport(globals, report, entry.type, named) }).catch((err: unknown) => {
      throw naming(err, remotePath);
    });
    if (!globals.json && process.stderr.isTTY) process.stderr.write('Following changes; Ctrl+C stops.\n');
    await following.ended;
  } catch (err) {
    if (options.watch && abort.signal.aborted) return EXIT.OK;
    throw err;
  } finally {
    await origins?.flush().catch((err: unknown) => process.stderr.write(`Could not save what came from where: ${toPeerShareError(err).message}\n`));
    end();
  }
  return EXIT.OK;
}

/** One sync's result: a sentence (and what was left alone), or with --json one line of JSON. */
function printSyncReport(globals: Globals, report: FollowReport, type: 'file' | 'dir', named: string): void {
  if (globals.json) {
    printJson({ type, target: named, ...report });
    return;
  }
  const deleted = report.filesDeleted > 0 ? `, ${report.filesDeleted} deleted` : '';
  const moved = `${formatBytes(report.bytesReceived)} received, ${formatBytes(report.bytesReused)} reused from local copies, in ${report.seconds.toFixed(2)} s`;
  if (report.kind === 'changes') out(`Applied ${countOf(report.filesChecked, 'changed file')}: ${report.filesChanged} updated${deleted}, ${moved}.`);
  else out(`${report.kind === 'resync' ? 'Synced again' : 'Synced'} ${countOf(report.filesChecked, 'file')} into ${named}: ${report.filesChanged} changed${deleted}, ${moved}, verified with BLAKE3.`);
  for (const l of report.leftAlone) out(`Left alone ${sanitizeForDisplay(l.path)}: ${sanitizeForDisplay(l.why)}`);
  const unlisted = report.leftAloneCount - report.leftAlone.length;
  if (unlisted > 0) out(`...and ${unlisted} more left alone.`);
}

/** The nearest folder up from `start` that holds `.git` (the project a receiver's workspace is likely to be), else `start`. */
async function projectRoot(start: string): Promise<string> {
  for (let dir = path.resolve(start); ; dir = path.dirname(dir)) {
    if (await fs.lstat(path.join(dir, '.git')).then(() => true, () => false)) return dir;
    if (path.dirname(dir) === dir) return path.resolve(start);
  }
}

/** Reads standard input whole, refusing more than `max` bytes. */
async function readStdin(max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of process.stdin) {
    bytes += (chunk as Buffer).length;
    if (bytes > max) throw new PeerShareError('TOO_LARGE', `A snippet may have at most ${max} bytes; send the file instead.`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function commandSend(globals: Globals, target: string, paths: string[], options: { note?: string; snippetName?: string }): Promise<number> {
  if (options.note !== undefined && options.note.length > MAX_NOTE_CHARS) throw new PeerShareError('INVALID_ARGUMENT', `--note may have at most ${MAX_NOTE_CHARS} characters.`);
  const snippetText = options.snippetName === undefined ? undefined : await readStdin(DEFAULT_LIMITS.maxSnippetBytes);
  const { abort, started, conn, bar, end } = await startTransfer(globals, target);
  try {
    const session = conn.sendSession;
    if (!session?.peerTakesOffers) {
      throw new PeerShareError('VERSION_UNSUPPORTED', `${sanitizeForDisplay(conn.peerName).slice(0, 64) || 'The peer'} runs a PeerShare that cannot receive files; ask them to update PeerShare.`);
    }
    const peer = sanitizeForDisplay(conn.peerName).slice(0, 64) || conn.peerId;
    let result;
    if (snippetText !== undefined) {
      const claimed = parseSnippetName(options.snippetName!, snippetText);
      result = await session.offerSnippet({ text: snippetText, ...claimed }, { note: options.note, signal: abort.signal });
    } else {
      if (!globals.json) process.stderr.write(`Offering ${countOf(paths.length, 'item')} to ${peer}; waiting for an answer…\n`);
      result = await session.offerFiles(
        paths.map((p) => path.resolve(p)),
        // Where each is in its project goes with it, so the receiver can review it against the same path.
        { note: options.note, signal: abort.signal, placesFrom: [await projectRoot(process.cwd())], onProgress: bar ? (p) => bar.update({ bytes: p.bytes, totalBytes: p.totalBytes, file: '' }) : undefined },
      );
    }
    bar?.done();
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const declined = result.entries.filter((e) => e.status === 'declined');
    const failed = result.entries.filter((e) => e.status === 'failed');
    if (globals.json) printJson({ ...result, seconds });
    else if (result.shown) out(`Sent the snippet to ${peer}.`);
    else if (result.refused) out(`${peer} takes no files from you (it refused without asking).`);
    else {
      const received = result.entries.filter((e) => e.status === 'received');
      if (received.length) out(`Sent ${countOf(received.length, 'item')} (${formatBytes(result.bytes)}) to ${peer} in ${seconds.toFixed(2)} s; received and verified with BLAKE3 on their side.`);
      for (const e of declined) out(`${peer} declined ${sanitizeForDisplay(e.name)}${e.message ? ` (${sanitizeForDisplay(e.message)})` : ''}.`);
      for (const e of failed) out(`${peer} could not receive ${sanitizeForDisplay(e.name)}: ${sanitizeForDisplay(e.message ?? 'no reason given')}${e.code ? ` [${e.code}]` : ''}`);
    }
    if (result.refused || declined.length > 0) return EXIT.REFUSED;
    // The receiver's code says what kind of failure it was (its hash check, its disk); its own cancel is a refusal.
    if (failed.length > 0) return failed[0].code === 'CANCELLED' ? EXIT.REFUSED : (EXIT_BY_CODE[failed[0].code ?? 'INTERNAL'] ?? EXIT.FAILURE);
    return EXIT.OK;
  } finally {
    end();
  }
}

main(process.argv.slice(2)).finally(closeOpenNodes).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const coded = err instanceof PeerShareError ? err : isUsageError(err) ? usageError(err as Error & { code: string }) : toPeerShareError(err);
    const exit = EXIT_BY_CODE[coded.code] ?? EXIT.FAILURE;
    // Messages may quote what a peer sent; escaped here too, whatever built them.
    const message = sanitizeForDisplay(coded.message);
    if (process.argv.includes('--json')) printJson({ error: { code: coded.code, message } });
    const hint = HINTS[coded.code];
    process.stderr.write(`peershare: ${message} [${coded.code}]\n${hint ? `${hint}\n` : ''}`);
    if (coded.detail && process.env.PEERSHARE_DEBUG) process.stderr.write(`  ${coded.detail}\n`);
    process.exitCode = exit;
  },
);

/** A "not found" that says what was not found. */
function naming(err: unknown, remotePath: string): unknown {
  if (err instanceof PeerShareError && err.code === 'NOT_FOUND') {
    return new PeerShareError('NOT_FOUND', `The peer's share has no "${sanitizeForDisplay(remotePath).slice(0, 200)}". List it with: peershare ls <peer> <folder>`);
  }
  return err;
}

/** What a person can do next, after the error itself; for the CLI only (the editor offers buttons). */
const HINTS: Partial<Record<ErrorCode, string>> = {
  ADDRESS_IN_USE: 'Choose another port with --port N, or --port 0 for any free port.',
  DEST_EXISTS: 'To replace it, add --overwrite; to keep both, add --keep-both.',
  CANCELLED: 'What arrived so far is kept: run the same command again to resume.',
  INVALID_INVITE:
    'Quote the invite, as in: peershare ls "peershare://invite?..." (unquoted, the shell cuts it at the first &).',
};

/** Node's own argument-parser messages, in PeerShare's words. */
function usageError(err: Error & { code: string }): PeerShareError {
  const option = /'(-[^' ]*)/.exec(err.message)?.[1];
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && option) {
    const guess = closest(option.replace(/^-+/, ''), Object.keys(OPTIONS));
    return new PeerShareError('INVALID_ARGUMENT', `Unknown option ${sanitizeForDisplay(option).slice(0, 40)}.${guess ? ` Did you mean --${guess}?` : ''} Run peershare --help.`);
  }
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && option) {
    return new PeerShareError('INVALID_ARGUMENT', `${sanitizeForDisplay(option).slice(0, 40)} needs a value. Run peershare --help.`);
  }
  return new PeerShareError('INVALID_ARGUMENT', `${err.message.replace(/\s*To specify a positional argument.*$/s, '')} Run peershare --help.`);
}

function isUsageError(err: unknown): boolean {
  return typeof (err as { code?: unknown })?.code === 'string' && String((err as { code: string }).code).startsWith('ERR_PARSE_ARGS');
}
