// The benchmark chart (docs/benchmarks.svg), written by hand as SVG text: no dependency.
//
// One horizontal bar per goal of the performance issue, all on one scale: measured / target for
// an upper bound ("at most"), target / measured for a lower bound ("at least"). The goal is then
// the line at 1.0 for every bar, and a bar that stops left of it meets its goal. Each bar is
// labelled with the real figure and its goal; the scenarios' main figures are listed below.

const WIDTH = 980;
const MARGIN = 24;
const BAR_LEFT = MARGIN;
const BAR_WIDTH = 560;
const ROW_HEIGHT = 50;
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';
const GREEN = '#2e7d32';
const RED = '#c62828';
const GREY = '#616161';

function escapeXml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]);
}

/** A text element; `halo` outlines it in white so it stays readable where it crosses a line. */
function text(x, y, content, { size = 13, weight = 'normal', fill = '#212121', anchor = 'start', halo = false } = {}) {
  const outline = halo ? ' stroke="#ffffff" stroke-width="4" stroke-linejoin="round" paint-order="stroke"' : '';
  return `<text x="${x}" y="${y}" ${FONT} font-size="${size}" font-weight="${weight}" fill="${fill}" text-anchor="${anchor}"${outline}>${escapeXml(content)}</text>`;
}

/** Characters that fit in `pixels` (SVG cannot measure text: about 0.6 em per character, 0.7 for capitals in bold). */
const charsIn = (pixels, size, wide = false) => Math.floor(pixels / (size * (wide ? 0.7 : 0.6)));

/** Cuts a line that would run off the chart. */
function fit(line, pixels, size = 12) {
  const max = charsIn(pixels, size);
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** Splits a line into lines that fit, at spaces. */
function wrap(line, pixels, size = 12) {
  const max = charsIn(pixels, size, true);
  const lines = [];
  let current = '';
  for (const word of line.split(' ')) {
    if (current && current.length + 1 + word.length > max) {
      lines.push(current);
      current = word;
    } else {
      current = current ? `${current} ${word}` : word;
    }
  }
  if (current) lines.push(current);
  return lines;
}

const OPS = { '<': '<', '<=': '≤', '>': '>', '>=': '≥' };

function valueText(g) {
  const unit = g.unit ? (g.unit === '%' || g.unit === '/s' ? g.unit : ` ${g.unit}`) : '';
  return `${g.measured ?? 'no result'}${g.measured === null ? '' : unit} (goal ${OPS[g.op]} ${g.target}${unit})`;
}

/**
 * `doc` is docs/benchmarks.json: { generated, machine, scenarios: { name: { title, measured,
 * date, commit, env, goals, figures, error? } } }. A goal or figure may belong to a variant
 * (`variant`: shared cores or pinned, named in `summary.variants`): each variant's goal is a bar of
 * its own, and its figures are listed under its name.
 */
export function renderChart(doc) {
  const scenarios = Object.entries(doc.scenarios);
  const rows = scenarios.flatMap(([name, s]) =>
    (s.goals?.length ? s.goals : [{ label: `${name}: ${s.error ? `failed: ${s.error}` : 'no goals'}`, measured: null, op: '<=', target: 1, met: false, normalized: null }]).map((g) => ({ name, goal: g })),
  );
  const largest = Math.max(1.5, ...rows.map((r) => r.goal.normalized ?? 0));
  const axisMax = Math.min(4, Math.ceil(largest * 2) / 2); // longer bars are cut, with a mark
  const scale = (v) => (Math.min(v, axisMax) / axisMax) * BAR_WIDTH;

  const parts = [];
  let y = MARGIN + 8;
  parts.push(text(MARGIN, y + 12, 'PeerShare performance: measured ÷ goal', { size: 20, weight: 'bold' }));
  y += 36;
  const m = doc.machine ?? {};
  parts.push(
    text(MARGIN, y, fit(`${doc.generated?.slice(0, 10) ?? ''}, commit ${doc.commit ?? '?'}; ${m.nproc ?? '?'} × ${m.cpuModel ?? '?'}, ${m.os ?? ''}, Node ${m.node ?? ''}`, WIDTH - 2 * MARGIN), { size: 12, fill: GREY }),
  );
  y += 18;
  parts.push(
    text(MARGIN, y, 'A bar that ends left of the goal line meets its goal. Upper bounds: measured ÷ target; lower bounds (≥): target ÷ measured.', { size: 12, fill: GREY }),
  );
  const quick = [...new Set(scenarios.flatMap(([, s]) => Object.entries(s.env ?? {}).filter(([k]) => /SIZE|FILES|MIB|SECONDS|RUNS|CLIENTS/.test(k)).map(([k, v]) => `${k}=${v}`)))];
  for (const line of quick.length ? wrap(`Not the standard sizes: ${quick.join(' ')}`, WIDTH - 2 * MARGIN) : []) {
    y += 18;
    parts.push(text(MARGIN, y, line, { size: 12, fill: RED, weight: 'bold' }));
  }
  y += 20;

  // Axis ticks and the goal line.
  const chartTop = y + 14;
  const chartBottom = chartTop + rows.length * ROW_HEIGHT;
  for (let t = 0; t <= axisMax + 1e-9; t += 0.5) {
    const x = BAR_LEFT + scale(t);
    parts.push(`<line x1="${x}" y1="${chartTop}" x2="${x}" y2="${chartBottom}" stroke="#e0e0e0" stroke-width="1"/>`);
    parts.push(text(x, chartTop - 4, t.toFixed(1), { size: 11, fill: GREY, anchor: 'middle' }));
  }

  // Bars first, then the goal line over them, then the labels (outlined) over both.
  const bars = [];
  const labels = [];
  y = chartTop;
  for (const { goal: g } of rows) {
    const barY = y + 20;
    labels.push(text(BAR_LEFT, y + 14, fit(g.label, WIDTH - 2 * MARGIN, 13), { size: 13, weight: 'bold', halo: true }));
    const colour = g.met ? GREEN : RED;
    if (g.normalized === null || g.normalized === undefined) {
      labels.push(text(BAR_LEFT, barY + 15, 'no result', { size: 12, fill: RED, halo: true }));
    } else {
      const w = Math.max(2, scale(g.normalized));
      bars.push(`<rect x="${BAR_LEFT}" y="${barY}" width="${w.toFixed(1)}" height="20" rx="2" fill="${colour}" fill-opacity="0.85"/>`);
      if (g.normalized > axisMax) bars.push(text(BAR_LEFT + w - 6, barY + 15, '»', { size: 14, weight: 'bold', fill: '#ffffff', anchor: 'end' }));
      const cut = g.normalized > axisMax ? `; bar cut at ${axisMax.toFixed(1)}, it is ${g.normalized.toFixed(2)}` : '';
      labels.push(text(BAR_LEFT + Math.min(w, BAR_WIDTH) + 8, barY + 15, `${g.met ? '✓' : '✗'} ${valueText(g)}${cut}`, { size: 12, fill: colour, weight: 'bold', halo: true }));
    }
    y += ROW_HEIGHT;
  }
  const goalX = BAR_LEFT + scale(1);
  parts.push(
    ...bars,
    `<line x1="${goalX}" y1="${chartTop - 2}" x2="${goalX}" y2="${chartBottom}" stroke="#212121" stroke-width="2" stroke-dasharray="6 4"/>`,
    text(goalX + 4, chartBottom + 14, 'goal', { size: 12, weight: 'bold' }),
    ...labels,
  );

  // The figures behind the bars.
  y = chartBottom + 40;
  parts.push(text(MARGIN, y, 'Figures', { size: 16, weight: 'bold' }));
  y += 6;
  for (const [name, s] of scenarios) {
    y += 22;
    // Its own date and commit first: the heading may be cut where it runs off the chart.
    const when = [s.date?.slice(0, 10), s.commit].filter(Boolean).join(', ');
    parts.push(text(MARGIN, y, fit(`${name}${when ? ` (${when})` : ''}: ${s.measured ?? s.title ?? ''}`, WIDTH - 2 * MARGIN, 13), { size: 13, weight: 'bold' }));
    // Figures of one variant (shared cores, pinned) follow its own sub-heading.
    let variant;
    for (const f of s.error ? [{ label: 'failed', text: s.error }] : (s.figures ?? [])) {
      if (f.variant && f.variant !== variant) {
        variant = f.variant;
        y += 18;
        parts.push(text(MARGIN + 16, y, fit(s.summary?.variants?.[variant]?.label ?? variant, WIDTH - 2 * MARGIN - 16), { size: 12, weight: 'bold', fill: '#424242' }));
      }
      const indent = f.variant ? 32 : 16;
      y += 18;
      parts.push(text(MARGIN + indent, y, fit(`${f.label}: ${f.text}`, WIDTH - 2 * MARGIN - indent), { size: 12, fill: '#424242' }));
    }
  }
  const height = y + MARGIN;

  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" role="img" aria-label="PeerShare benchmark results against their goals">`,
    `<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
