import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PassThrough } from 'node:stream';
import { TerminalLines } from '../../src/cli/terminal-lines';

/** A terminal's input as TerminalLines sees it: a stream that says it is a TTY and records raw mode. */
function terminal(): { input: NodeJS.ReadStream; raw: boolean[]; echo: NodeJS.WriteStream; echoed: () => string } {
  const raw: boolean[] = [];
  const input = Object.assign(new PassThrough(), { isTTY: true, setRawMode: (on: boolean) => raw.push(on) }) as unknown as NodeJS.ReadStream;
  let echoed = '';
  const echo = Object.assign(new PassThrough(), { write: (text: string) => ((echoed += text), true) }) as unknown as NodeJS.WriteStream;
  return { input, raw, echo, echoed: () => echoed };
}

const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('TerminalLines: keys in raw mode do what they do in a terminal', () => {
  it('Ctrl+C, Ctrl+\\ and Ctrl+Z raise SIGINT, SIGQUIT and SIGTSTP; a stopped job leaves line mode and gets raw mode back when it continues', async () => {
    const t = terminal();
    const raised: string[] = [];
    const lines: string[] = [];
    const reader = new TerminalLines(t.input, t.echo, (line) => lines.push(line), (signal) => raised.push(signal));
    assert.deepEqual(t.raw, [true]);
    t.input.write('\u0003\u001c');
    await settle();
    assert.deepEqual(raised, ['SIGINT', 'SIGQUIT']);
    t.input.write('\u001a');
    await settle();
    assert.deepEqual(raised, ['SIGINT', 'SIGQUIT', 'SIGTSTP']);
    assert.deepEqual(t.raw, [true, false], 'the shell must get a terminal in line mode while the job is stopped');
    process.emit('SIGCONT');
    assert.deepEqual(t.raw, [true, false, true], 'raw mode again after fg');
    t.input.write('y\r');
    await settle();
    assert.deepEqual(lines, ['y']);
    reader.close();
    assert.deepEqual(t.raw, [true, false, true, false]);
    // Stopped and continued after close: the terminal stays in line mode.
    process.emit('SIGCONT');
    assert.deepEqual(t.raw, [true, false, true, false]);
  });

  it('echoes what is typed and Backspace, and control keys are neither echoed nor part of the line', async () => {
    const t = terminal();
    const lines: string[] = [];
    const reader = new TerminalLines(t.input, t.echo, (line) => lines.push(line), () => undefined);
    t.input.write('ab\u007fc\u0004\u001b\r');
    await settle();
    assert.deepEqual(lines, ['ac']);
    assert.equal(t.echoed(), 'ab\b \bc\n');
    reader.close();
  });
});
