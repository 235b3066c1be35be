// The cards: what each asks (one request per card per refresh at most) and how it shows the
// answer. Every number a card shows is in an element with `data-k` or a table row, as text.

import { STATE_COLOURS, LEVEL_COLOURS, LEVEL_NAMES, colourOf, stackedBars, legend, meter } from './chart.js';
import { bucketLabel, timeLabel, fmt } from './view.js';

const TYPE_ORDER = ['COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED', 'CANCELLING', 'RUNNING', 'PENDING', 'SCHEDULED', 'PAUSED'];
const typeRank = (t) => (TYPE_ORDER.includes(t) ? TYPE_ORDER.indexOf(t) : TYPE_ORDER.length);

// A DOM element with text; children may be nodes or strings.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

function stat(label, key, value, note) {
  return h('div', { class: 'stat' },
    h('dt', { text: label }),
    h('dd', { 'data-k': key, text: value }),
    note ? h('dd', { class: 'note', text: note }) : null);
}

// A table of rows of cells; the first cell of a row is its header. Shown on demand for series.
function table(name, head, rows, caption) {
  return h('table', { 'data-table': name },
    caption ? h('caption', { text: caption }) : null,
    h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col', text: c })))),
    h('tbody', {}, rows.map((r) => h('tr', r.attrs || {},
      r.cells.map((c, i) => (i === 0 ? h('th', { scope: 'row', text: c }) : h('td', { text: c })))))));
}

function seriesChart(name, answer, series, parts, ctx, what) {
  const bucket = answer.window.bucket;
  const buckets = answer.series.map((b) => ({ label: bucketLabel(b.start, bucket, ctx.view.tz), parts: parts(b) }));
  const total = buckets.reduce((s, b) => s + b.parts.reduce((x, p) => x + p.value, 0), 0);
  const summary = `${what} per ${bucket} in ${ctx.view.tz}: ${total.toLocaleString('en-US')} over ${buckets.length} ${bucket}s`;
  const rows = buckets.map((b, i) => ({
    attrs: { 'data-start': answer.series[i].start },
    cells: [b.label, ...series.map((s) => fmt.count(b.parts.find((p) => p.key === s.key)?.value || 0))],
  }));
  return h('figure', {},
    stackedBars(buckets, series, summary, ctx.width),
    legend(series),
    h('details', {}, h('summary', { text: 'Table' }),
      table(name, [bucket === 'day' ? 'Day' : 'Hour', ...series.map((s) => s.name)], rows, summary)));
}

const empty = (text) => ({ empty: text });

export const CARDS = [
  {
    id: 'flow-runs',
    title: 'Flow runs by state',
    wide: true,
    fetch: (ctx) => ctx.flowRuns,
    render(answer, ctx) {
      if (answer.total === 0) return empty('No flow run ended in this window. Widen the window or clear the filters.');
      const states = [...answer.by_state].sort((a, b) => typeRank(a.state_type) - typeRank(b.state_type)
        || a.state_name.localeCompare(b.state_name));
      const series = states.map((s, i) => ({ key: `${s.state_type}/${s.state_name}`, name: s.state_name, colour: colourOf(STATE_COLOURS, s.state_type, i) }));
      return [
        h('dl', { class: 'stats' },
          stat('Ended', 'total', fmt.count(answer.total)),
          stat('Failed or crashed', 'failures', fmt.count(answer.failures))),
        table('by-state', ['State', 'Type', 'Runs'], states.map((s) => ({
          attrs: { 'data-key': `${s.state_type}/${s.state_name}` },
          cells: [s.state_name, s.state_type, fmt.count(s.count)],
        }))),
        seriesChart('series', answer, series,
          (b) => b.by_state.map((s) => ({ key: `${s.state_type}/${s.state_name}`, value: s.count })), ctx, 'Flow runs ended'),
      ];
    },
  },
  {
    id: 'failure-rate',
    title: 'Failure rate',
    async fetch(ctx) {
      const { since, until } = await ctx.window;
      const span = Date.parse(until) - Date.parse(since);
      const q = new URLSearchParams(ctx.query);
      q.set('since', new Date(Date.parse(since) - span).toISOString());
      q.set('until', since);
      const [current, previous] = await Promise.all([ctx.flowRuns, ctx.api.get(`${ctx.base}/metrics/flow-runs?${q}`, ctx.signal)]);
      return { data: { current: current.data, previous: previous.data }, asOf: Math.min(current.asOf, previous.asOf), fresh: previous.fresh || current.fresh };
    },
    render({ current, previous }) {
      const change = current.failure_rate !== null && previous.failure_rate !== null
        ? (current.failure_rate - previous.failure_rate) * 100 : null;
      const trend = change === null ? '' : change > 0 ? `▲ ${change.toFixed(1)} points` : change < 0 ? `▼ ${(-change).toFixed(1)} points` : 'unchanged';
      return [h('dl', { class: 'stats' },
        stat('This window', 'current', fmt.percent(current.failure_rate), `${fmt.count(current.failures)} of ${fmt.count(current.total)} runs`),
        stat('Previous window', 'previous', fmt.percent(previous.failure_rate), `${fmt.count(previous.failures)} of ${fmt.count(previous.total)} runs`)),
      h('p', { class: 'note', 'data-k': 'trend', text: trend })];
    },
  },
  {
    id: 'late-runs',
    title: 'Late runs',
    fetch: (ctx) => ctx.api.get(`${ctx.base}/metrics/late-runs?${ctx.query}`, ctx.signal),
    render(answer, ctx) {
      return [
        h('dl', { class: 'stats' },
          stat('Late runs', 'late', fmt.count(answer.late_runs)),
          stat('Mean lateness', 'mean-lateness', fmt.seconds(answer.mean_lateness_seconds),
            `over ${fmt.count(answer.lateness_runs)} runs that started`)),
        answer.late_runs > 0
          ? seriesChart('series', answer, [{ key: 'late', name: 'Late runs', colour: STATE_COLOURS.SCHEDULED }],
            (b) => [{ key: 'late', value: b.count }], ctx, 'Runs that became late')
          : h('p', { class: 'note', text: 'No run became late in this window.' }),
      ];
    },
  },
  {
    id: 'durations',
    title: 'Run duration per flow',
    fetch: (ctx) => ctx.api.get(`${ctx.base}/metrics/durations?${ctx.query}`, ctx.signal),
    render(answer) {
      if (answer.flows.length === 0) return empty('No run that started ended in this window.');
      const flows = [...answer.flows].sort((a, b) => b.p95_seconds - a.p95_seconds || a.flow_name.localeCompare(b.flow_name));
      const max = Math.max(...flows.map((f) => f.p95_seconds));
      return [
        h('table', { 'data-table': 'durations' },
          h('thead', {}, h('tr', {}, ['Flow', 'Runs', 'p50', 'p95', ''].map((c) => h('th', { scope: 'col', text: c })))),
          h('tbody', {}, flows.map((f) => h('tr', { 'data-id': f.flow_id },
            h('th', { scope: 'row', text: f.flow_name || f.flow_id }),
            h('td', { text: fmt.count(f.runs) }),
            h('td', { text: fmt.seconds(f.p50_seconds) }),
            h('td', { text: fmt.seconds(f.p95_seconds) }),
            h('td', { class: 'bar' }, meter(f.p95_seconds, max, STATE_COLOURS.RUNNING)))))),
        answer.truncated ? h('p', { class: 'note', text: 'More flows than shown: narrow the filters.' }) : null,
      ];
    },
  },
  ...[['flow', 'flows', 'flow'], ['deployment', 'deployments', 'deployment'], ['work-pool', 'work pools', 'work_pool']].map(([by, plural, filter]) => ({
    id: `top-${by}`,
    title: `Top failing ${plural}`,
    fetch(ctx) {
      const q = new URLSearchParams(ctx.query);
      q.set('by', by);
      q.set('limit', '5');
      return ctx.api.get(`${ctx.base}/metrics/top-failing?${q}`, ctx.signal);
    },
    render(answer, ctx) {
      if (answer.items.length === 0) return empty(`No ${by.replace('-', ' ')} has a failed run in this window.`);
      ctx.learn(filter, answer.items.map((i) => [i.id, i.flow_name ? `${i.flow_name} / ${i.name}` : i.name]));
      return [h('ol', { class: 'ranked', 'data-table': 'items' }, answer.items.map((i) => {
        const name = i.flow_name !== undefined ? `${i.flow_name} / ${i.name}` : i.name || i.id;
        const button = h('button', { type: 'button', class: 'link', 'aria-label': `Show only ${name}`, text: name });
        button.addEventListener('click', () => ctx.addFilter(filter, i.id));
        return h('li', { 'data-id': i.id }, button, h('span', { class: 'count', 'data-k': 'failures', text: fmt.count(i.failures) }));
      }))];
    },
  })),
  {
    id: 'task-runs',
    title: 'Task runs by state',
    wide: true,
    fetch: (ctx) => ctx.api.get(`${ctx.base}/metrics/task-runs?${ctx.query}`, ctx.signal),
    render(answer, ctx) {
      if (answer.by_state_type.length === 0) return empty('No task run reached a final state in this window.');
      const types = [...answer.by_state_type].sort((a, b) => typeRank(a.state_type) - typeRank(b.state_type));
      const series = types.map((t, i) => ({ key: t.state_type, name: t.state_type, colour: colourOf(STATE_COLOURS, t.state_type, i) }));
      return [
        h('dl', { class: 'stats' }, stat('Failed or crashed', 'failures', fmt.count(answer.failures))),
        table('by-state-type', ['State type', 'Task runs'], types.map((t) => ({ attrs: { 'data-key': t.state_type }, cells: [t.state_type, fmt.count(t.count)] }))),
        seriesChart('series', answer, series, (b) => b.by_state_type.map((t) => ({ key: t.state_type, value: t.count })), ctx, 'Task runs reaching a final state'),
      ];
    },
  },
  {
    id: 'logs',
    title: 'Log lines by level',
    wide: true,
    fetch: (ctx) => ctx.api.get(`${ctx.base}/metrics/logs?${ctx.query}`, ctx.signal),
    render(answer, ctx) {
      if (answer.total === 0) return empty('No log line in this window.');
      const series = answer.by_level.map((l, i) => ({ key: l.level, name: LEVEL_NAMES[l.level] || `level ${l.level}`, colour: colourOf(LEVEL_COLOURS, l.level, i) }));
      return [
        h('dl', { class: 'stats' }, stat('Log lines', 'total', fmt.count(answer.total))),
        table('by-level', ['Level', 'Lines'], answer.by_level.map((l) => ({ attrs: { 'data-key': String(l.level) }, cells: [LEVEL_NAMES[l.level] || String(l.level), fmt.count(l.count)] }))),
        seriesChart('series', answer, series, (b) => b.by_level.map((l) => ({ key: l.level, value: l.count })), ctx, 'Log lines'),
      ];
    },
  },
  {
    id: 'failed-runs',
    title: 'Recent failed runs',
    wide: true,
    async fetch(ctx) {
      const { since, until } = await ctx.window;
      return ctx.api.post(`${ctx.base}/events/filter`, { filter: failedRunsFilter(since, until, ctx.view.filters), limit: 10 }, ctx.signal);
    },
    render(answer, ctx) {
      if (answer.events.length === 0) return empty('No flow run failed or crashed in this window.');
      return [h('table', { 'data-table': 'failed-runs' },
        h('thead', {}, h('tr', {}, ['Run', 'Flow', 'State', 'When', ''].map((c) => h('th', { scope: 'col', text: c })))),
        h('tbody', {}, answer.events.map((e) => {
          const id = e.resource['prefect.resource.id'].replace('prefect.flow-run.', '');
          const flow = (e.related || []).find((r) => r['prefect.resource.role'] === 'flow');
          return h('tr', { 'data-id': id },
            h('th', { scope: 'row', text: e.resource['prefect.resource.name'] || id }),
            h('td', { text: flow ? flow['prefect.resource.name'] || '' : '' }),
            h('td', { text: e.event.replace('prefect.flow-run.', '') }),
            h('td', { text: timeLabel(e.occurred, ctx.view.tz) }),
            h('td', {}, h('a', { href: `#run=${encodeURIComponent(id)}`, text: 'Events and logs' })));
        })))];
    },
  },
  {
    id: 'automations',
    title: 'Automations',
    wide: true,
    // Not a metric of the window: the workspace's automations, each with its last firing.
    async fetch(ctx) {
      try {
        return await ctx.api.get(`${ctx.base}/automations/status`, ctx.signal);
      } catch (error) {
        // A query API without the automations' routes (they come with `flowhouse query-api`).
        if (error.status === 404) return { data: null, asOf: Date.now(), fresh: true };
        throw error;
      }
    },
    render(answer, ctx) {
      if (answer === null) return empty('Automations are not served here.');
      if (answer.length === 0) return empty('No automation in this workspace (flowhouse automations create).');
      return [h('table', { 'data-table': 'automations' },
        h('thead', {}, h('tr', {}, ['Automation', 'Trigger', 'Enabled', 'Last firing'].map((c) => h('th', { scope: 'col', text: c })))),
        h('tbody', {}, answer.map((a) => h('tr', { 'data-id': a.id },
          h('th', { scope: 'row', text: a.name }),
          h('td', { text: a.trigger }),
          h('td', { text: a.enabled ? 'on' : 'off' }),
          h('td', { text: a.last_fired ? `${a.last_transition} ${timeLabel(a.last_fired, ctx.view.tz)}` : 'never' })))))];
    },
  },
];

const PREFIX = { flow: 'prefect.flow.', deployment: 'prefect.deployment.', work_pool: 'prefect.work-pool.', tag: 'prefect.tag.' };

// The latest failure event of each flow run in [since, until], newest first, with the
// filters as related resources (values of one filter are alternatives, filters combine).
export function failedRunsFilter(since, until, filters) {
  const related = Object.entries(filters).filter(([, v]) => v.length)
    .map(([f, values]) => ({ id: values.map((v) => PREFIX[f] + v) }));
  return {
    occurred: { since, until },
    event: { prefix: ['prefect.flow-run.'] },
    resource: { labels: { 'prefect.state-type': ['FAILED', 'CRASHED'] }, distinct: true },
    ...(related.length ? { related } : {}),
    order: 'DESC',
  };
}
