/** Sizes as people read them: 58 B, 1.5 KiB, 432 KiB, 2.6 GiB. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`;
}

/** "1 file", "3 files". */
export function countOf(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/**
 * What a finished download did, in one sentence a person reads: what landed and under which name,
 * and what did not (left alone, not sent, left out). Never "downloaded" for what was skipped.
 * `name` is the remote file or folder's name, `from` the peer's; both already escaped.
 */
export function describeDownload(
  result: { type: 'file' | 'dir'; target: string; files: number; skippedExisting: string[]; skippedByPeerCount: number; leftOutCount: number },
  name: string,
  from: string,
): string {
  const landedAs = result.target.split(/[/\\]/).pop() ?? name;
  if (result.type === 'file') {
    if (result.files === 0) return `Left ${name} alone: it already exists.`;
    return landedAs === name ? `Downloaded ${name} from ${from}.` : `Downloaded ${name} from ${from} as ${landedAs}.`;
  }
  const notes: string[] = [];
  if (result.skippedExisting.length) notes.push(`${countOf(result.skippedExisting.length, 'existing file')} left alone`);
  if (result.skippedByPeerCount) notes.push(`${countOf(result.skippedByPeerCount, 'file')} the peer could not send`);
  if (result.leftOutCount) notes.push(`${result.leftOutCount} left out for ${result.leftOutCount === 1 ? 'its name' : 'their names'}`);
  const head = result.files === 0 ? `Nothing new from ${name} (${from})` : `Downloaded ${countOf(result.files, 'file')} of ${name} from ${from}`;
  return `${head}${notes.length ? `: ${notes.join(', ')}` : ''}.`;
}
