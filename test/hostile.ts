import * as net from 'node:net';
import * as tls from 'node:tls';
import { FRAME_HEADER_BYTES, FrameParser, encodeMessage } from '../src/core/frames';
import { ConnectionFrameParser, encodeMessageFrame, type WireMessage } from '../src/core/v2/frames';
import type { Duplex } from 'node:stream';
import { dialTls, resolveLimits, type Identity, type Limits } from '../src/core';
import { peerIdOfCert } from '../src/core/peer-id';
import type { AuthenticatedStream } from '../src/core/transport';
import { TlsListener } from '../src/core/transport-tls';
import type { Connection, RequestHandler } from '../src/core/v2/connection';
import { acceptV2, dialV2 } from '../src/core/v2/handshake';
import { ShareClient } from '../src/core/v2/share-client';
import { blockSizeFor, encodeBlockManifest } from '../src/core/blocks';
import { manifestOfBytes } from '../src/core/v2/share-messages';

/**
 * Hostile peers for tests, written against the wire format directly so they can break every
 * rule the real implementation keeps.
 */

export interface HostileServer {
  address: string;
  close(): Promise<void>;
}

export interface RawClient {
  socket: tls.TLSSocket;
  /** Messages received so far. */
  messages: Record<string, unknown>[];
  /** DATA frame payloads received so far. */
  data: Buffer[];
  send(m: object): void;
  /**
   * After a v2 welcome: opens a request (a REQUEST frame with the next id of ours) and returns its
   * id. Messages of the connection arrive in `messages` as they are, with `frame` (REPLY, END,
   * CLOSE…) and `id` added; DATA payloads in `data`.
   */
  request(m: object): number;
  closed: Promise<void>;
}

/** A TLS client that speaks raw frames; with no identity it presents no certificate. */
export function rawClient(address: string, identity?: Identity, extra: tls.ConnectionOptions = {}): Promise<RawClient> {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port: Number(port),
      rejectUnauthorized: false,
      ...(identity ? { key: identity.keyPem, cert: identity.certPem } : {}),
      ...extra,
    });
    const messages: Record<string, unknown>[] = [];
    const data: Buffer[] = [];
    // The handshake's frames (v1's layout) until a v2 welcome; the connection's frames after it.
    const handshake = new FrameParser({ maxMessageBytes: 1 << 20, maxDataFrameBytes: 1 << 20 }, { onMessage: (m) => messages.push(m), onData: (chunk) => data.push(Buffer.from(chunk)) });
    const connection = new ConnectionFrameParser(
      { frameBytes: 1 << 20, maxEventBytes: 1 << 20 },
      {
        onHeader: () => undefined,
        onMessage: (type, id, message) => void messages.push({ ...message, frame: type, id }),
        onData: (_id, chunk) => void data.push(Buffer.from(chunk)),
        onWindow: () => undefined,
        onCancel: () => undefined,
      },
    );
    let pending = Buffer.alloc(0);
    let v2 = false;
    const closed = new Promise<void>((done) => socket.on('close', () => done()));
    socket.on('data', (chunk: Buffer) => {
      try {
        if (v2) return connection.push(chunk);
        pending = Buffer.concat([pending, chunk]);
        // One handshake frame at a time, so the bytes after a welcome go to the connection's parser.
        while (!v2 && pending.length >= FRAME_HEADER_BYTES && pending.length >= FRAME_HEADER_BYTES + pending.readUInt32BE(1)) {
          const end = FRAME_HEADER_BYTES + pending.readUInt32BE(1);
          handshake.push(pending.subarray(0, end));
          pending = pending.subarray(end);
          const last = messages[messages.length - 1];
          if (last?.type === 'welcome' && last.version === 2) v2 = true;
        }
        if (v2 && pending.length > 0) connection.push(pending);
      } catch {
        socket.destroy();
      }
    });
    let nextId = 1;
    const request = (m: object): number => {
      const id = nextId;
      nextId += 2;
      socket.write(encodeMessageFrame('REQUEST', id, m as WireMessage));
      return id;
    };
    socket.once('secureConnect', () => resolve({ socket, messages, data, send: (m) => socket.write(encodeMessage(m)), request, closed }));
    socket.once('error', reject);
  });
}

/**
 * Writes `bytes` to the client one byte every `everyMs`, as a slow-loris peer would, until they are
 * all sent or the socket closes; resolves with how many were sent by the time it closed.
 */
export async function dripUntilClosed(client: RawClient, bytes: Uint8Array, everyMs: number): Promise<number> {
  let sent = 0;
  const timer = setInterval(() => {
    if (sent < bytes.length && !client.socket.destroyed) client.socket.write(bytes.subarray(sent, ++sent));
  }, everyMs);
  await client.closed;
  clearInterval(timer);
  return sent;
}

/** A plain TCP connection, for stalls and plaintext. */
export function tcpConnect(address: string): Promise<net.Socket> {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), host, () => resolve(socket));
    socket.once('error', reject);
  });
}

export function waitFor(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (predicate()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error('timed out waiting'));
      setTimeout(tick, 10);
    };
    tick();
  });
}

/**
 * A v2 peer over real TLS whose stream the test holds: to pause it (a reader that never reads),
 * or to open requests ShareClient would not. Handshake as any client (dialTls + dialV2).
 */
export interface RawV2Peer {
  stream: Duplex;
  connection: Connection;
  share: ShareClient;
}

export async function dialRawV2(address: string, identity: Identity, expectedPeerId: string, limits?: Partial<Limits>): Promise<RawV2Peer> {
  const remote = await dialTls({ identity, address, timeoutMs: 5000 });
  const { connection } = await dialV2(remote, { expectedPeerId, name: 'raw', serve: {}, limits });
  return { stream: remote.stream, connection, share: new ShareClient(connection) };
}

/** The hello a v2 dialer sends (protocol-v2 4.1), for raw clients that speak the handshake by hand. */
export function helloV2(name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { type: 'hello', versions: [2], name, caps: {}, frame: 64 * 1024, window: 1024 * 1024, requests: 16, ...extra };
}

/** How a hostile v2 sharer answers one request: REPLY messages and DATA through the real connection, or raw bytes past it. */
export interface ReplierV2 {
  message(m: Record<string, unknown>): Promise<void>;
  data(chunk: Buffer): Promise<void>;
  /** Bytes written to the stream as they are, outside any frame the connection makes. */
  raw(bytes: Buffer): void;
  stream: Duplex;
  /** Aborted when the requester cancels the request or the connection ends. */
  signal: AbortSignal;
}

/** What a hostile v2 sharer does with a request; what it returns is the END, a promise that never settles is silence. */
export type ScenarioV2 = (request: Record<string, unknown>, reply: ReplierV2) => Promise<Record<string, unknown> | void> | Record<string, unknown> | void;

/**
 * A sharer that completes the real TLS transport and v2 handshake (any dialer is let in), then
 * answers `share/1` requests as `scenario` says: for tests of what a lying peer can do. With `tls`,
 * a plain TLS server with those options stands in for the real transport (a sharer that only
 * speaks TLS 1.2, say); its streams then go through the same v2 handshake.
 */
export async function startHostileSharerV2(
  identity: Identity,
  scenario: ScenarioV2,
  options: { welcomeId?: string; welcomeName?: string; roots?: string[]; tls?: tls.TlsOptions } = {},
): Promise<HostileServer> {
  const streams = new Set<Duplex>();
  const serve = (remote: AuthenticatedStream): void => {
    streams.add(remote.stream);
    remote.stream.on('close', () => streams.delete(remote.stream));
    const handler: RequestHandler = async (request, reply, signal) => {
      const end = await scenario(request, { message: (m) => reply.message(m as never), data: (chunk) => reply.data(chunk), raw: (bytes) => void remote.stream.write(bytes), stream: remote.stream, signal });
      return end ?? {};
    };
    acceptV2(remote, {
      name: options.welcomeName ?? 'hostile',
      ownPeerId: options.welcomeId ?? identity.peerId,
      admit: async () => ({ serve: { 'share/1': { params: { roots: options.roots ?? ['ws'] }, handler } }, paired: false }),
    }).catch(() => undefined);
  };
  if (options.tls) {
    const server = tls.createServer({ key: identity.keyPem, cert: identity.certPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3', ...options.tls }, (socket) => {
      socket.on('error', () => socket.destroy());
      const cert = socket.getPeerCertificate(true);
      if (!cert?.raw) return void socket.destroy();
      serve({ stream: socket, peerId: peerIdOfCert(cert.raw), address: `${socket.remoteAddress}:${socket.remotePort}`, host: socket.remoteAddress ?? '', side: 'acceptor' });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return {
      address: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
      close: async () => {
        for (const stream of streams) stream.destroy();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      },
    };
  }
  const stats = { connectionsAccepted: 0, handshakesRateLimited: 0, unauthenticatedEvicted: 0, oversizedHandshakes: 0 };
  const listener = new TlsListener({
    identity,
    limits: resolveLimits(),
    stats,
    log: () => undefined,
    onStream: (remote, admission) => {
      // Every dialer is let in, as a trusted one: its handshake is given back to its source's rate,
      // so a suite that connects many times a second to one hostile sharer is not cut off before TLS.
      admission.refundHandshake();
      admission.leave();
      serve(remote);
    },
  });
  const port = await listener.listen(0, '127.0.0.1');
  return {
    address: `127.0.0.1:${port}`,
    close: () =>
      listener.close(() => {
        for (const stream of streams) stream.destroy();
      }),
  };
}

/** The mtime (ms) a hostile sharer's honest answers give their files. */
export const HOSTILE_MTIME_MS = 1000;

/** An honest `share.manifest` answer for `content` (or for `manifest`, which may lie). */
export async function sendManifest(reply: ReplierV2, content: Buffer, manifest = manifestOfBytes(content, blockSizeFor(content.length))): Promise<Record<string, unknown>> {
  await reply.message({ type: 'manifest', size: manifest.size, mtimeMs: HOSTILE_MTIME_MS, blockSize: manifest.blockSize, fileHash: manifest.fileHash.toString('hex') });
  await reply.data(encodeBlockManifest(manifest));
  return {};
}

/** The blocks a read asks for, of `content`, one DATA call per block (as an honest sharer sends them). */
export async function sendBlocks(req: Record<string, unknown>, reply: ReplierV2, content: Buffer): Promise<Record<string, unknown>> {
  const blockSize = blockSizeFor(content.length);
  for (const [first, end] of req.blocks as [number, number][]) {
    for (let i = first; i < end; i++) await reply.data(content.subarray(i * blockSize, Math.min((i + 1) * blockSize, content.length)));
  }
  return {};
}

/** A file entry of a send/1 offer (docs/protocol-v2.md 13.2), honest about `content`: what a hostile sender starts from. */
export const fileEntry = (name: string, content: Buffer, mtimeMs = 1000): Record<string, unknown> => ({
  name,
  type: 'file',
  size: content.length,
  mtimeMs,
  fileHash: manifestOfBytes(content, blockSizeFor(content.length)).fileHash.toString('hex'),
});

/** The code a promise is refused with (undefined when it resolves): for asserting what a peer's request got. */
export const codeOf = async (promise: Promise<unknown>): Promise<string | undefined> => {
  try {
    await promise;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code;
  }
};
