/**
 * Keeps glibc's malloc from handing the CLI's heap back to the kernel after every collection.
 *
 * *Why:* a TLS socket hands each 16 KiB of received data to JavaScript in a buffer of its own,
 * allocated with malloc and freed when V8 collects it, several MiB at a time. With glibc's first
 * thresholds, each such batch at the top of the heap is trimmed (a `brk` down) and the next reads
 * grow the heap again, so every page is faulted and zeroed once more: `peershare serve` receiving
 * 1 GiB shrank its heap 24 times and took 48,000-85,000 page faults and about 1 CPU-s more than
 * the same process with the heap kept (docs/benchmarks.md, issue 12). glibc raises its thresholds
 * by itself once a chunk it had mapped on its own is freed (the mmap threshold to that chunk's size,
 * the trim threshold to twice it), which some runs happened to do and others did not. One buffer
 * just under glibc's 32 MiB ceiling for that rule, never touched and dropped here, makes it happen
 * in every run: up to 62 MiB of free heap then stays with the process instead of being faulted in
 * again. An 8 MiB one (a 16 MiB trim threshold) was not enough: a collection freed 18-21 MiB at a
 * time in some runs, and the trimming came back.
 *
 * The cost: one untouched mapping of 31 MiB, given back at the first collection; the process's
 * peak is what its largest batch of garbage already made it, but it keeps that memory afterwards.
 * Only the CLI does this (the extension host, which runs in VS Code's Electron, was not measured for
 * it). Elsewhere than Linux it is an allocation freed like any other.
 */
const RAISE_THRESHOLDS_BYTES = 31 * 1024 * 1024;

export function keepMallocHeap(): void {
  if (process.platform !== 'linux') return;
  // Uninitialized: no page of it is written, so it is never faulted in.
  Buffer.allocUnsafeSlow(RAISE_THRESHOLDS_BYTES);
}
