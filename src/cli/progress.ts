import { formatBytes } from '../core/format';

/** A one-line progress bar for a terminal, redrawn at most ten times a second. */
export class ProgressBar {
  private lastDraw = 0;
  private readonly startedAt = Date.now();
  private drawn = false;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  update(bytes: number, total: number | undefined, file: string): void {
    const now = Date.now();
    if (now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const seconds = Math.max((now - this.startedAt) / 1000, 0.001);
    const speed = `${formatBytes(bytes / seconds)}/s`;
    const width = Math.max(10, Math.min(40, (this.stream.columns ?? 80) - 60));
    let bar = '';
    if (total && total > 0) {
      const filled = Math.round((bytes / total) * width);
      bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${((bytes / total) * 100).toFixed(0).padStart(3)}% `;
    }
    const name = file.length > 30 ? `…${file.slice(-29)}` : file;
    this.stream.write(`\r${bar}${formatBytes(bytes)} ${speed} ${name}\u001b[K`);
    this.drawn = true;
  }

  done(): void {
    if (this.drawn) this.stream.write('\r\u001b[K');
    this.drawn = false;
  }
}
