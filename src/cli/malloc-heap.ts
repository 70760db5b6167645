/**
 * Keeps glibc's malloc from handing the CLI's heap back to the kernel after every collection.
 *
 * *Why:* a TLS socket hands each 16 KiB of received data to JavaScript in a buffer of its own,
 * allocated with malloc and freed when V8 collects it, several MiB at a time. With glibc's first
 * thresholds, each such batch at the top of the heap is trimmed (a `brk` down) and the next reads
 * grow the heap again, so every page is faulted and zeroed once more: `peershare serve` receiving
 * 1 GiB shrank its heap 24 times and took 48,000-85,000 page faults and about 1 CPU-s more than
 * the same process with the heap kept (docs/benchmarks.md, issue 12). glibc raises its thresholds
 * by itself once a chunk it had mapped on its own is freed (mmap threshold to that chunk's size,
 * trim threshold to twice it), which some runs happened to do and others did not; one 8 MiB
 * buffer, never touched and dropped here, makes that happen in every run: then up to 16 MiB of
 * free heap stays with the process instead of being faulted in again.
 *
 * It costs one untouched mapping of 8 MiB, given back at the first collection. Elsewhere (musl,
 * macOS, Windows) it is an allocation freed like any other.
 */
const RAISE_THRESHOLDS_BYTES = 8 * 1024 * 1024;

export function keepMallocHeap(): void {
  if (process.platform !== 'linux') return;
  // Uninitialized: no page of it is written, so it is never faulted in.
  Buffer.allocUnsafeSlow(RAISE_THRESHOLDS_BYTES);
}
