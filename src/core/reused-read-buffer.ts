import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { REUSED_READ_BUFFER_BYTES } from './limits';

/**
 * Reading a socket into one buffer reused for every read, instead of a new Buffer per read.
 *
 * Why: Node hands every TLS record it decrypts (16 KiB) to JavaScript in a Buffer of its own,
 * 65,536 of them per GiB, each allocated, counted by the collector as external memory and freed
 * in batches. In a process that lives long (`peershare serve`, the extension host) the young
 * generation grows, the freed buffers pile up between collections, and that pile starts
 * mark-compacts: the serve receiving 1 GiB ran 2-11 of them and 24 collections "for external
 * memory pressure", and used 0.3-0.8 CPU-s more per GiB than the CLI receiving the same bytes. Read into
 * one buffer, a socket allocates nothing per read (measured on plain TLS: 0.6-1.1 CPU-s per GiB
 * against 1.0-1.7, and no page faults).
 *
 * Node's own form of this is the `onread` option, but it takes effect only on a socket Node
 * connects itself (a TLS dial without a socket of its own), never on one a server accepts. The switch is
 * made here through the three fields that option sets (found by name on a probe socket, so only
 * where they exist) and the handle's `useUserBuffer`, which the option calls. Where any of them
 * is missing (another Node), nothing is changed, false is returned, and the caller reads 'data'
 * events as before. Tests check that both ends of a real TLS connection take this path.
 */

interface ReadFields {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let fields: ReadFields | null | undefined;

/** The fields `onread` sets, as this Node names them; null when it names them otherwise. */
function readFields(): ReadFields | null {
  if (fields !== undefined) return fields;
  try {
    // Node's types list `onread` for connect() only; the constructor takes it too (and sets the fields).
    const probe = new net.Socket({ onread: { buffer: Buffer.alloc(1), callback: () => undefined } } as net.SocketConstructorOpts);
    const byName = new Map(Object.getOwnPropertySymbols(probe).map((s) => [s.description, s]));
    const buffer = byName.get('kBuffer');
    const callback = byName.get('kBufferCb');
    const generator = byName.get('kBufferGen');
    probe.destroy();
    fields = buffer && callback && generator ? { buffer, callback, generator } : null;
  } catch {
    fields = null;
  }
  return fields;
}

type Switchable = net.Socket & Record<symbol, unknown> & { _handle?: { useUserBuffer?: (buffer: Buffer) => void } | null };

/**
 * From now on, what `stream` reads goes to `onChunk`, one read at a time, in a slice of one buffer
 * that the next read overwrites: `onChunk` must copy whatever it keeps. Call it on a paused
 * stream whose buffered data has been read (stream.read() until null), then resume() it; 'data'
 * events stop, 'end', 'error' and 'close' stay. Returns false, changing nothing, when this stream
 * cannot be switched (not a socket with a native handle, or a Node without these fields).
 */
export function readIntoReusedBuffer(stream: Duplex, onChunk: (chunk: Buffer) => void): boolean {
  const found = readFields();
  if (!found || !(stream instanceof net.Socket)) return false;
  const socket = stream as Switchable;
  const handle = socket._handle;
  const own = Object.getOwnPropertySymbols(socket);
  if (!handle || typeof handle.useUserBuffer !== 'function' || !own.includes(found.buffer) || !own.includes(found.callback) || !own.includes(found.generator)) {
    return false;
  }
  const buffer = Buffer.allocUnsafeSlow(REUSED_READ_BUFFER_BYTES);
  socket[found.buffer] = buffer;
  socket[found.generator] = null;
  socket[found.callback] = (bytes: number): void => onChunk(buffer.subarray(0, bytes));
  handle.useUserBuffer(buffer);
  return true;
}
