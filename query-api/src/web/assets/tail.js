// The live tail (the `/events/out` websocket, Prefect's subscriber protocol: an `auth` message,
// a `filter` message, a backfill, then events as Kafka has them) and a flow run's events and
// logs.

import { h } from './cards.js';
import { timeLabel } from './view.js';

const KEEP = 20;

export class Tail {
  constructor(list, message) {
    this.list = list;
    this.message = message;
    this.socket = null;
    this.retry = 1000;
    this.seen = new Set();
  }

  start(key, base, tz) {
    this.stop();
    this.tz = tz;
    this.stopped = false;
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${base}/events/out`;
    const socket = new WebSocket(url);
    this.socket = socket;
    this.message.textContent = 'Connecting…';
    socket.addEventListener('open', () => {
      socket.send(JSON.stringify({ type: 'auth', token: key }));
    });
    socket.addEventListener('message', (m) => {
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch {
        return;
      }
      if (msg.type === 'auth_success') {
        // A filter's `until` defaults to now, which would match no live event: a week ahead.
        const since = new Date(Date.now() - 15 * 60e3).toISOString();
        const until = new Date(Date.now() + 7 * 864e5).toISOString();
        socket.send(JSON.stringify({ type: 'filter', filter: { occurred: { since, until } }, backfill: true }));
        this.message.textContent = 'Newest first; the last 15 minutes, then events as they arrive.';
        this.retry = 1000;
      } else if (msg.type === 'event') {
        this.add(msg.event);
      }
    });
    socket.addEventListener('close', (e) => {
      if (this.stopped || this.socket !== socket) return;
      if (e.code === 1008) {
        this.message.textContent = `The live tail was refused: ${e.reason || 'the key may not read this workspace'}.`;
        return;
      }
      if (e.code === 1000 && e.reason) {
        this.message.textContent = `No live tail: ${e.reason}.`;
        return;
      }
      this.message.textContent = 'The live tail is disconnected; reconnecting…';
      this.timer = setTimeout(() => this.start(key, base, tz), this.retry);
      this.retry = Math.min(this.retry * 2, 30000);
    });
  }

  add(event) {
    if (this.seen.has(event.id)) return;
    this.seen.add(event.id);
    const item = h('li', { 'data-event-id': event.id },
      h('time', { datetime: event.occurred, text: timeLabel(event.occurred, this.tz) }),
      h('span', { class: 'event', text: event.event }),
      h('span', { class: 'resource', text: event.resource['prefect.resource.name'] || event.resource['prefect.resource.id'] }));
    // Newest first: insert by time, as the backfill and the live feed may interleave.
    const after = [...this.list.children].find((li) => li.querySelector('time').getAttribute('datetime') < event.occurred);
    this.list.insertBefore(item, after || null);
    while (this.list.children.length > KEEP) this.list.lastElementChild.remove();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close();
    this.socket = null;
    this.list.replaceChildren();
    this.seen.clear();
  }
}

// A flow run's events and logs, for the "Events and logs" links of the failed runs.
export async function showRun(api, base, runId, since, tz, elements) {
  const { panel, message, events, logs } = elements;
  panel.hidden = false;
  message.textContent = 'Loading…';
  events.replaceChildren();
  logs.replaceChildren();
  panel.querySelector('h2').textContent = `Flow run ${runId}`;
  try {
    const from = new Date(Date.parse(since) - 24 * 3600e3).toISOString();
    const [ev, lg] = await Promise.all([
      api.post(`${base}/events/filter`, {
        filter: { resource: { id: [`prefect.flow-run.${runId}`] }, occurred: { since: from }, order: 'ASC' },
        limit: 200,
      }),
      api.post(`${base}/logs/filter`, { logs: { flow_run_id: { any_: [runId] } }, sort: 'TIMESTAMP_ASC', limit: 200 }),
    ]);
    events.replaceChildren(...ev.data.events.map((e) => h('li', {},
      h('time', { datetime: e.occurred, text: timeLabel(e.occurred, tz) }), h('span', { class: 'event', text: e.event }))));
    logs.replaceChildren(...lg.data.map((l) => h('li', {},
      h('time', { datetime: l.timestamp, text: timeLabel(l.timestamp, tz) }),
      h('span', { class: 'event', text: l.level >= 40 ? 'ERROR' : l.level >= 30 ? 'WARNING' : 'INFO' }),
      h('span', { class: 'resource', text: l.message }))));
    message.textContent = `${ev.data.events.length} events, ${lg.data.length} log lines.`;
    panel.focus();
  } catch (error) {
    message.textContent = error.advice || String(error);
  }
}
