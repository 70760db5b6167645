import { sanitizeForDisplay, type DownloadProgress } from '../core';
import { formatBytes } from '../core/format';

/**
 * A one-line progress bar for a terminal, redrawn at most ten times a second. A resumed download
 * counts from what is already on disk, so the bar and the percentage say how much of the file is
 * there; the speed and the time left count only what arrives now.
 */
export class ProgressBar {
  private lastDraw = 0;
  private readonly startedAt = Date.now();
  private drawn = false;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  update(p: DownloadProgress): void {
    const now = Date.now();
    if (now - this.lastDraw < 100 && !p.checking) return;
    this.lastDraw = now;
    // The name is the peer's choice: escaped before it reaches the terminal.
    const shown = sanitizeForDisplay(p.file);
    const name = shown.length > 30 ? `…${shown.slice(-29)}` : shown;
    const resumed = p.resumedBytes ?? 0;
    if (p.checking) {
      this.draw(`Checking the ${formatBytes(resumed)} already downloaded of ${name}…`);
      this.lastDraw = 0; // the first new bytes replace this line at once
      return;
    }
    const seconds = Math.max((now - this.startedAt) / 1000, 0.001);
    const rate = p.bytes / seconds;
    const done = resumed + p.bytes;
    const width = Math.max(10, Math.min(30, (this.stream.columns ?? 80) - 70));
    let text = `${formatBytes(done)} ${formatBytes(rate)}/s`;
    if (p.totalBytes && p.totalBytes > 0) {
      const share = Math.min(done / p.totalBytes, 1);
      const filled = Math.round(share * width);
      const left = rate > 0 ? ` ${formatDuration((p.totalBytes - done) / rate)} left` : '';
      text = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(share * 100).toFixed(0).padStart(3)}% ${formatBytes(done)} of ${formatBytes(p.totalBytes)} ${formatBytes(rate)}/s${left}`;
    }
    this.draw(`${text} ${name}`);
  }

  done(): void {
    if (this.drawn) this.stream.write('\r\u001b[K');
    this.drawn = false;
  }

  private draw(line: string): void {
    this.stream.write(`\r${line}\u001b[K`);
    this.drawn = true;
  }
}

/** "45 s", "3 min 20 s", "1 h 05 min". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}
