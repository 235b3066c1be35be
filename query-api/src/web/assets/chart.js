// Charts as SVG, drawn here: stacked bars over time and a legend. Every element is made with
// createElementNS and every text set with textContent, so names are only ever text.

const NS = 'http://www.w3.org/2000/svg';

// Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), matched to
// Prefect's state hues where they stay distinguishable: green completed, red-orange failed,
// purple crashed, grey cancelled, blue running, light blue pending, orange scheduled.
export const STATE_COLOURS = {
  COMPLETED: '#009E73',
  FAILED: '#D55E00',
  CRASHED: '#CC79A7',
  CANCELLED: '#6F6F6F',
  CANCELLING: '#A8A8A8',
  RUNNING: '#0072B2',
  PENDING: '#56B4E9',
  SCHEDULED: '#E69F00',
  PAUSED: '#F0E442',
};
export const LEVEL_COLOURS = { 10: '#A8A8A8', 20: '#0072B2', 30: '#E69F00', 40: '#D55E00', 50: '#CC79A7' };
export const LEVEL_NAMES = { 10: 'DEBUG', 20: 'INFO', 30: 'WARNING', 40: 'ERROR', 50: 'CRITICAL' };
const FALLBACK = ['#000000', '#56B4E9', '#F0E442', '#E69F00'];

export function colourOf(palette, key, index) {
  return palette[key] || FALLBACK[index % FALLBACK.length];
}

function el(name, attrs = {}) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// A round maximum for the y axis.
function niceMax(max) {
  if (max <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

// Stacked bars: `buckets` = [{ label, parts: [{ key, value }] }], `series` = [{ key, name,
// colour }] in stacking order. `summary` names the chart for assistive technology.
export function stackedBars(buckets, series, summary, drawnWidth = 640) {
  const width = Math.max(240, Math.round(drawnWidth));
  const height = 180;
  const left = 36;
  const bottom = 22;
  const plotW = width - left - 4;
  const plotH = height - bottom - 6;
  const totals = buckets.map((b) => b.parts.reduce((s, p) => s + p.value, 0));
  const max = niceMax(Math.max(0, ...totals));
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'chart' });
  const title = el('title');
  title.textContent = summary;
  svg.append(title);
  for (const tick of [0, max / 2, max]) {
    const y = 6 + plotH - (tick / max) * plotH;
    svg.append(el('line', { x1: left, x2: width - 4, y1: y, y2: y, class: 'grid' }));
    const t = el('text', { x: left - 4, y: y + 4, 'text-anchor': 'end', class: 'tick' });
    t.textContent = Number.isInteger(tick) ? tick.toLocaleString('en-US') : tick.toFixed(1);
    svg.append(t);
  }
  const slot = plotW / Math.max(1, buckets.length);
  const barW = Math.max(1, slot * 0.8);
  const every = Math.max(1, Math.ceil(buckets.length / Math.max(2, Math.floor(width / 80))));
  buckets.forEach((bucket, i) => {
    let y = 6 + plotH;
    const x = left + i * slot + (slot - barW) / 2;
    const g = el('g');
    const tip = el('title');
    tip.textContent = `${bucket.label}: ${bucket.parts.filter((p) => p.value > 0)
      .map((p) => `${series.find((s) => s.key === p.key)?.name ?? p.key} ${p.value.toLocaleString('en-US')}`)
      .join(', ') || 'none'}`;
    g.append(tip);
    for (const s of series) {
      const value = bucket.parts.find((p) => p.key === s.key)?.value || 0;
      if (!value) continue;
      const h = (value / max) * plotH;
      y -= h;
      g.append(el('rect', { x, y, width: barW, height: Math.max(h, 0.5), fill: s.colour }));
    }
    svg.append(g);
    if (i % every === 0) {
      // The last labels are anchored at their end, so that they stay inside the chart.
      const centre = x + barW / 2;
      const atEnd = centre > width - 40;
      const t = el('text', { x: atEnd ? width - 2 : centre, y: height - 6, 'text-anchor': atEnd ? 'end' : 'middle', class: 'tick' });
      t.textContent = bucket.label;
      svg.append(t);
    }
  });
  return svg;
}

// A legend: a swatch and a name per series (colour is never the only cue: names and counts
// are in the legend and in the tables).
export function legend(series) {
  const list = document.createElement('ul');
  list.className = 'legend';
  for (const s of series) {
    const item = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = s.colour;
    item.append(swatch, document.createTextNode(s.name));
    list.append(item);
  }
  return list;
}

// A horizontal bar, as wide as `value` is of `max`.
export function meter(value, max, colour) {
  const svg = el('svg', { viewBox: '0 0 100 8', class: 'meter', 'aria-hidden': 'true', preserveAspectRatio: 'none' });
  svg.append(el('rect', { x: 0, y: 0, width: max > 0 ? (100 * value) / max : 0, height: 8, fill: colour }));
  return svg;
}
