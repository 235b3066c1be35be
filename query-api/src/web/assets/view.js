// The view a URL describes (window, buckets, zone, filters, workspace, refresh), both ways, and
// the time helpers that depend on the zone. The URL only ever says what to show: which
// workspace a key may read is the server's answer to the key, never the URL's.

export const FILTERS = ['flow', 'deployment', 'work_pool', 'tag'];
const RANGES = ['24h', '7d', 'custom'];
export const HOUR = 3600e3;
const DEFAULT_REFRESH = 10;

export function readView(search) {
  const p = new URLSearchParams(search);
  const since = p.get('since') || '';
  const until = p.get('until') || '';
  let range = p.get('range');
  if (!RANGES.includes(range)) range = since && until ? 'custom' : '7d';
  const refresh = Number(p.get('refresh'));
  return {
    range,
    since,
    until,
    bucket: ['hour', 'day'].includes(p.get('bucket')) ? p.get('bucket') : '',
    tz: p.get('tz') || 'UTC',
    workspace: p.get('workspace') || '',
    refresh: Number.isFinite(refresh) && refresh >= 1 && refresh <= 3600 ? refresh : DEFAULT_REFRESH,
    filters: Object.fromEntries(FILTERS.map((f) => [f, [...new Set(p.getAll(f).filter(Boolean))]])),
  };
}

// The URL of `view`: only what differs from the defaults, so a shared link stays short.
export function viewSearch(view) {
  const p = new URLSearchParams();
  if (view.range !== '7d') p.set('range', view.range);
  if (view.range === 'custom') {
    p.set('since', view.since);
    p.set('until', view.until);
  }
  if (view.bucket) p.set('bucket', view.bucket);
  if (view.tz !== 'UTC') p.set('tz', view.tz);
  for (const f of FILTERS) for (const v of view.filters[f]) p.append(f, v);
  if (view.workspace) p.set('workspace', view.workspace);
  if (view.refresh !== DEFAULT_REFRESH) p.set('refresh', String(view.refresh));
  const text = p.toString();
  return text ? `?${text}` : '';
}

// Hours for a day or less, days beyond three days, as the user chose otherwise.
export function bucketOf(view) {
  if (view.bucket) return view.bucket;
  if (view.range === '24h') return 'hour';
  if (view.range === '7d') return 'day';
  const span = Date.parse(view.until) - Date.parse(view.since);
  return span > 3 * 24 * HOUR ? 'day' : 'hour';
}

// The query of the metric routes for `view`. Windows are aligned to the hour, so that every
// refresh within an hour asks the same question (and an unchanged answer costs a 304); the
// 7-day window is the server's default, the zone's seven local days with day buckets.
export function metricQuery(view, now = Date.now()) {
  const q = new URLSearchParams();
  if (view.range === '24h') {
    const until = Math.floor(now / HOUR) * HOUR + HOUR;
    q.set('since', new Date(until - 24 * HOUR).toISOString());
    q.set('until', new Date(until).toISOString());
  } else if (view.range === 'custom') {
    q.set('since', view.since);
    q.set('until', view.until);
  }
  q.set('bucket', bucketOf(view));
  q.set('tz', view.tz);
  for (const f of FILTERS) for (const v of view.filters[f]) q.append(f, v);
  return q;
}

// The offset of `tz` from UTC at instant `ms`, in milliseconds.
function offsetAt(tz, ms) {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: tz, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric',
    hour: 'numeric', minute: 'numeric', second: 'numeric',
  }).formatToParts(new Date(ms));
  const n = (type) => Number(parts.find((x) => x.type === type).value);
  const local = Date.UTC(n('year'), n('month') - 1, n('day'), n('hour'), n('minute'), n('second'));
  return local - Math.floor(ms / 1000) * 1000;
}

// `YYYY-MM-DDTHH:MM` (an <input type=datetime-local> value) read as a time in `tz`.
export function zonedToUtc(local, tz) {
  const naive = Date.parse(`${local}:00Z`);
  if (Number.isNaN(naive)) return null;
  let guess = naive - offsetAt(tz, naive);
  guess = naive - offsetAt(tz, guess);
  return new Date(guess).toISOString();
}

// An instant as a <input type=datetime-local> value in `tz`.
export function utcToZoned(iso, tz) {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return '';
  return new Date(ms + offsetAt(tz, ms)).toISOString().slice(0, 16);
}

export function isZone(tz) {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

// A bucket's label: its start in the zone, as wide as the bucket needs.
export function bucketLabel(iso, bucket, tz) {
  const options = bucket === 'day'
    ? { weekday: 'short', day: 'numeric', month: 'short' }
    : { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' };
  return new Intl.DateTimeFormat('en-GB', { ...options, timeZone: tz }).format(new Date(iso));
}

export function timeLabel(iso, tz) {
  return new Intl.DateTimeFormat('en-GB', {
    day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit', second: '2-digit',
    hourCycle: 'h23', timeZone: tz,
  }).format(new Date(iso));
}

// Numbers as the cards show them (the browser tests format the ground truth the same way).
export const fmt = {
  count: (n) => Number(n).toLocaleString('en-US'),
  percent: (r) => (r === null || r === undefined ? '–' : `${(r * 100).toFixed(1)} %`),
  seconds(s) {
    if (s === null || s === undefined) return '–';
    if (s < 100) return `${s.toFixed(1)} s`;
    if (s < 6000) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  },
};
