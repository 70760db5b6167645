import * as path from 'node:path';
import {
  sanitizeForDisplay,
  shortPeerId,
  type IncomingOffer,
  type IncomingSnippet,
  type OfferDecision,
  type ReceivePolicy,
  type ReceiveResult,
} from '../core';
import { countOf, formatBytes } from '../core/format';

/**
 * `peershare serve --receive-into DIR`: the CLI's implementation of the receive policy
 * (src/core/send-policy.ts). `trusted` accepts every offer of a trusted peer into DIR; `ask` asks
 * at the terminal (one question at a time, type-ahead dropped: main.ts's terminal reader) and
 * declines when there is no terminal. Everything a peer chose is escaped and bounded on its way
 * to the terminal.
 */
export type ReceiveMode = 'ask' | 'trusted';

/** Lines of a snippet printed, and characters per line: a peer chooses the text. */
const SNIPPET_LINES = 200;
const SNIPPET_LINE_CHARS = 300;
/** Entries listed in a question; the rest are counted. */
const LISTED_ENTRIES = 20;

export interface TerminalPolicyOptions {
  into: string;
  mode: ReceiveMode;
  json: boolean;
  /** Asks a yes/no question at the terminal (undefined: no terminal, so Decline). */
  ask?: (question: string, signal: AbortSignal) => Promise<boolean>;
  out: (line: string) => void;
  log: (level: 'info' | 'warn', message: string) => void;
}

function who(peer: { id: string; name: string }): string {
  const name = sanitizeForDisplay(peer.name).slice(0, 64);
  return `${name ? `"${name}" ` : ''}(${shortPeerId(peer.id)}…)`;
}

function shown(text: string, max = 120): string {
  const s = sanitizeForDisplay(text);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** The question for an offer, with what the certificate proves (the ID) apart from the names the peer chose. */
export function formatOfferQuestion(offer: IncomingOffer, into: string): string {
  const lines = [`\n${who(offer.peer)} offers ${countOf(offer.entries.length, 'item')} (${formatBytes(offer.totalBytes)}):`];
  for (const e of offer.entries.slice(0, LISTED_ENTRIES)) {
    const what = e.type === 'dir' ? `folder, ${countOf(e.files, 'file')}, ${formatBytes(e.size)}` : formatBytes(e.size);
    lines.push(`  ${shown(e.name)}${e.type === 'dir' ? '/' : ''}  (${what})${e.unsafeHere ? `  not saved: its name is not safe here (${e.unsafeHere.why})` : ''}`);
  }
  if (offer.entries.length > LISTED_ENTRIES) lines.push(`  …and ${offer.entries.length - LISTED_ENTRIES} more`);
  if (offer.note) lines.push(`  Note: "${shown(offer.note, 200)}"`);
  lines.push(`Save into ${into} [y], decline [n]? `);
  return lines.join('\n');
}

/** A snippet as the terminal shows it: who sent which lines of which file, then the text, escaped, bounded. */
export function formatSnippet(s: IncomingSnippet): string[] {
  const { snippet } = s;
  const lines = snippet.startLine === snippet.endLine ? `line ${snippet.startLine}` : `lines ${snippet.startLine}-${snippet.endLine}`;
  const out = [`${who(s.peer)} sent ${lines} of ${shown(snippet.path, 200)}${snippet.language ? ` (${snippet.language})` : ''}:`];
  if (s.note) out.push(`  Note: "${shown(s.note, 200)}"`);
  const text = snippet.text.split(/\r?\n/);
  if (text.length > 1 && text[text.length - 1] === '') text.pop();
  for (const line of text.slice(0, SNIPPET_LINES)) out.push(`  | ${shown(line, SNIPPET_LINE_CHARS)}`);
  if (text.length > SNIPPET_LINES) out.push(`  …and ${text.length - SNIPPET_LINES} more lines`);
  return out;
}

export function terminalReceivePolicy(options: TerminalPolicyOptions): ReceivePolicy {
  const into = path.resolve(options.into);
  const acceptAll = (offer: IncomingOffer): OfferDecision => ({ into, entries: offer.entries.map(() => ({})) });
  return {
    async decideOffer(offer, signal) {
      if (options.mode === 'trusted') return acceptAll(offer);
      if (!options.ask) {
        options.log('warn', `Declined an offer from ${who(offer.peer)}: no terminal to ask at.`);
        return 'decline';
      }
      return (await options.ask(formatOfferQuestion(offer, into), signal)) ? acceptAll(offer) : 'decline';
    },
    inboxFor: () => into,
    async showSnippet(s) {
      if (options.json) {
        options.out(JSON.stringify({ event: 'snippet', peer: s.peer, note: s.note, ...s.snippet }));
        return;
      }
      for (const line of formatSnippet(s)) options.out(line);
    },
    onReceived(result: ReceiveResult) {
      if (options.json) {
        options.out(JSON.stringify({ event: 'received', ...result }));
        return;
      }
      for (const e of result.entries) {
        if (e.status === 'received') options.log('info', `Received ${shown(e.name)} from ${who(result.peer)} into ${e.target ?? into}, verified with BLAKE3.`);
        else if (e.status === 'failed') options.log('warn', `Could not receive ${shown(e.name)} from ${who(result.peer)}: ${shown(e.message ?? '', 300)} [${e.code ?? 'FAILED'}]`);
      }
      if (result.cancelled) options.log('warn', `The offer from ${who(result.peer)} was cancelled; what had arrived of it was removed.`);
    },
    onNotice(message) {
      options.log('warn', message);
    },
  };
}

/** `--name app.ts:40` or `app.ts:40-51`: the path and the line range a snippet claims. */
export function parseSnippetName(name: string, text: string): { path: string; startLine: number; endLine: number; language: string } {
  const match = /^(.+?):(\d+)(?:-(\d+))?$/.exec(name);
  const file = match ? match[1] : name;
  const startLine = match ? Number(match[2]) : 1;
  const lines = text.split(/\r?\n/);
  const count = Math.max(1, text.endsWith('\n') ? lines.length - 1 : lines.length);
  const endLine = match?.[3] !== undefined ? Number(match[3]) : startLine + count - 1;
  return { path: file.replace(/\\/g, '/').replace(/^\.\//, ''), startLine, endLine, language: LANGUAGES[path.extname(file).slice(1).toLowerCase()] ?? '' };
}

const LANGUAGES: Record<string, string> = {
  ts: 'typescript',
  tsx: 'typescriptreact',
  js: 'javascript',
  jsx: 'javascriptreact',
  mjs: 'javascript',
  cjs: 'javascript',
  json: 'json',
  md: 'markdown',
  py: 'python',
  rs: 'rust',
  go: 'go',
  java: 'java',
  c: 'c',
  h: 'c',
  cpp: 'cpp',
  cc: 'cpp',
  cs: 'csharp',
  rb: 'ruby',
  php: 'php',
  sh: 'shellscript',
  yml: 'yaml',
  yaml: 'yaml',
  html: 'html',
  css: 'css',
  sql: 'sql',
};
