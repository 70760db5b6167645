/**
 * Lines typed at a terminal, each with the time its first key was pressed. The terminal is put in
 * raw mode so that time is known (in the usual line mode, a program sees nothing until Enter), and
 * a question can refuse a line that was begun before it appeared: keys meant for one question
 * never answer the next, even when the first question disappears while the person is typing.
 * Echo, Backspace, Ctrl+C (SIGINT), Ctrl+\ (SIGQUIT) and Ctrl+Z (the terminal back in line mode
 * while the job is stopped, raw again when it continues) behave as people expect.
 */
export class TerminalLines {
  private buffer = '';
  private startedAt = 0;
  /** The line being typed was begun for a question that went away: it answers nothing, up to its Enter. */
  private stale = false;
  private readonly onData = (chunk: Buffer): void => this.take(chunk.toString('utf8'));

  private closed = false;

  constructor(
    private readonly input: NodeJS.ReadStream,
    private readonly echo: NodeJS.WriteStream,
    private readonly onLine: (line: string, startedAt: number) => void,
    /** How a key's signal reaches this process (in raw mode the terminal no longer sends them). */
    private readonly raise: (signal: NodeJS.Signals) => void = (signal) => process.kill(process.pid, signal),
  ) {
    if (input.isTTY) input.setRawMode(true);
    input.on('data', this.onData);
    input.resume();
  }

  /**
   * Forgets a half-typed line (its question went away). The rest of that line, up to its Enter,
   * still belongs to the old question: it is delivered as begun before any later question ("n",
   * withdrawn, then "o" would otherwise answer the next one).
   */
  discardPending(): void {
    if (this.buffer !== '') this.stale = true;
    this.buffer = '';
  }

  close(): void {
    this.closed = true;
    this.input.off('data', this.onData);
    if (this.input.isTTY) this.input.setRawMode(false);
    this.input.pause();
  }

  /** Ctrl+Z: a stopped job must leave the shell a terminal in line mode, and get raw mode back on `fg`. */
  private suspend(): void {
    if (this.input.isTTY) this.input.setRawMode(false);
    process.once('SIGCONT', () => {
      if (!this.closed && this.input.isTTY) this.input.setRawMode(true);
    });
    this.raise('SIGTSTP');
  }

  private take(text: string): void {
    for (const key of text) {
      if (key === '\u0003') {
        this.raise('SIGINT');
      } else if (key === '\u001c') {
        this.raise('SIGQUIT');
      } else if (key === '\u001a') {
        this.suspend();
      } else if (key === '\r' || key === '\n') {
        this.echo.write('\n');
        const line = this.buffer;
        this.buffer = '';
        this.onLine(line, this.stale ? 0 : this.startedAt);
        this.stale = false;
      } else if (key === '\u007f' || key === '\b') {
        if (this.buffer.length > 0) {
          this.buffer = this.buffer.slice(0, -1);
          this.echo.write('\b \b');
        }
      } else if (key >= ' ' && this.buffer.length < 64) {
        if (this.buffer === '') this.startedAt = Date.now();
        this.buffer += key;
        this.echo.write(key);
      }
    }
  }
}
