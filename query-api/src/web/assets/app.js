// The Flowhouse dashboard. Sign in with a read key (kept in this tab's sessionStorage, sent as
// `Authorization: Bearer`); the workspaces come from the server's answer to the key
// (`/api/me/workspaces`), and a workspace named in the URL is only a preference among those.
// The cards refresh every `refresh` seconds (10 by default), each with one request that costs
// a 304 when its answer did not change; the header says how old the data is.

import { Api, ApiError, workspacePath } from './api.js';
import { readView, viewSearch, metricQuery, zonedToUtc, utcToZoned, isZone, FILTERS } from './view.js';
import { CARDS, h } from './cards.js';
import { Tail, showRun } from './tail.js';

const KEY = 'flowhouse.key';
const $ = (id) => document.getElementById(id);

let api = null;
let workspaces = [];
let workspace = null;
let view = readView(location.search);
let generation = 0;
let controller = null;
let timer = null;
let lastWindow = null;
let painted = false;
const cards = new Map();
const known = { flow: new Map(), deployment: new Map(), work_pool: new Map() };
const tail = new Tail($('tail-list'), $('tail-msg'));

const wsName = (ws) => `${ws.account_id}/${ws.workspace_id}`;

function showSignIn(error) {
  stopRefreshing();
  tail.stop();
  api = null;
  $('dashboard').hidden = true;
  $('who').hidden = true;
  $('freshness').textContent = '';
  $('signin').hidden = false;
  $('signin-error').textContent = error || '';
  $('key').value = '';
  $('key').focus();
}

async function signIn(key) {
  const candidate = new Api(key);
  try {
    const { data } = await candidate.workspaces();
    if (!data.length) throw new ApiError(403, 'this key holds no workspace');
    api = candidate;
    workspaces = data;
    sessionStorage.setItem(KEY, key);
    showDashboard();
  } catch (error) {
    sessionStorage.removeItem(KEY);
    showSignIn(error.advice || String(error));
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  showSignIn(message);
}

function showDashboard() {
  const wanted = view.workspace;
  const found = workspaces.find((ws) => wsName(ws) === wanted);
  workspace = found || workspaces[0];
  const notice = $('notice');
  notice.hidden = !(wanted && !found);
  notice.textContent = wanted && !found
    ? `This key does not hold workspace ${wanted}; showing ${wsName(workspace)}.` : '';
  view.workspace = workspaces.length > 1 ? wsName(workspace) : '';
  history.replaceState(null, '', viewSearch(view) + location.hash);
  // Short labels (two UUIDs would not fit a phone); the whole name is the value and the title.
  $('workspace').replaceChildren(...workspaces.map((ws) => h('option', {
    value: wsName(ws), title: wsName(ws), selected: ws === workspace,
    text: `${ws.workspace_id.slice(0, 8)}… (account ${ws.account_id.slice(0, 8)}…)`,
  })));
  $('signin').hidden = true;
  $('who').hidden = false;
  $('dashboard').hidden = false;
  buildCards();
  syncControls();
  tail.start(api.key, workspacePath(workspace), view.tz);
  refresh();
  onHash();
}

function buildCards() {
  if (cards.size) return;
  for (const card of CARDS) {
    const body = h('div', { class: 'card-body' });
    const section = h('section', { class: card.wide ? 'card wide' : 'card', 'data-card': card.id, 'data-state': 'loading', 'aria-labelledby': `card-${card.id}`, 'aria-busy': 'true' },
      h('h2', { id: `card-${card.id}`, text: card.title }), body);
    $('cards').append(section);
    cards.set(card.id, { section, body, shown: null, asOf: null });
  }
}

function stopRefreshing() {
  clearTimeout(timer);
  if (controller) controller.abort();
  generation += 1;
}

// One refresh of every card; the next is scheduled when it ends.
async function refresh() {
  stopRefreshing();
  const gen = generation;
  controller = new AbortController();
  const base = workspacePath(workspace);
  const query = metricQuery(view);
  const ctx = { api, base, view, query, signal: controller.signal, learn, addFilter };
  ctx.flowRuns = api.get(`${base}/metrics/flow-runs?${query}`, ctx.signal);
  ctx.flowRuns.then((r) => { lastWindow = r.data.window; }, () => {});
  // The window, for the cards that need it: known at once unless it is the server's default,
  // so that those cards need not wait for the first answer.
  ctx.window = query.has('since')
    ? Promise.resolve({ since: query.get('since'), until: query.get('until') })
    : ctx.flowRuns.then((r) => r.data.window);
  await Promise.all(CARDS.map((card) => load(card, ctx, gen)));
  if (gen !== generation) return;
  if (!painted) {
    painted = true;
    performance.mark('flowhouse:cards');
  }
  document.body.dataset.refreshed = String(Date.now());
  tick();
  timer = setTimeout(refresh, view.refresh * 1000);
}

async function load(card, ctx, gen) {
  const slot = cards.get(card.id);
  try {
    const answer = await card.fetch(ctx);
    if (gen !== generation) return;
    const parts = answer.data && answer.data.current ? [answer.data.current, answer.data.previous] : [answer.data];
    const unchanged = slot.shown && slot.shown.length === parts.length && parts.every((p, i) => p === slot.shown[i]);
    if (!unchanged) {
      // Charts are drawn at the card's width, so that their text is never stretched.
      const out = card.render(answer.data, { ...ctx, width: slot.body.clientWidth || 600 });
      if (out.empty) {
        slot.body.replaceChildren(h('p', { class: 'card-msg', text: out.empty }));
        slot.section.dataset.state = 'empty';
      } else {
        slot.body.replaceChildren(...out.filter(Boolean));
        slot.section.dataset.state = 'ok';
      }
      slot.shown = parts;
      if (!performance.getEntriesByName('flowhouse:first-card').length) performance.mark('flowhouse:first-card');
    }
    slot.asOf = answer.asOf;
  } catch (error) {
    if (error.name === 'AbortError' || gen !== generation) return;
    if (error.status === 401) {
      signOut(error.advice);
      return;
    }
    slot.body.replaceChildren(h('p', { class: 'card-msg error', role: 'alert', text: error.advice || String(error) }));
    slot.section.dataset.state = 'error';
    slot.shown = null;
    slot.asOf = null;
  } finally {
    slot.section.setAttribute('aria-busy', 'false');
  }
}

// "As of N s ago": the oldest answer on screen, by the server's own clock of it.
function tick() {
  if (!api) return;
  const times = [...cards.values()].map((c) => c.asOf).filter((t) => t !== null);
  const failed = [...cards.values()].some((c) => c.section.dataset.state === 'error');
  if (!times.length) {
    $('freshness').textContent = failed ? 'No data: see the cards.' : 'Loading…';
    return;
  }
  const seconds = Math.max(0, Math.round((Date.now() - Math.min(...times)) / 1000));
  $('freshness').textContent = `As of ${seconds} s ago · refreshes every ${view.refresh} s${failed ? ' · some cards failed' : ''}`;
}

// Names the cards learned for ids, offered when typing a filter.
function learn(filter, pairs) {
  for (const [id, name] of pairs) known[filter].set(id, name);
  const list = $(`known-${filter}`);
  list.replaceChildren(...[...known[filter]].map(([id, name]) => h('option', { value: id, label: name })));
}

function addFilter(filter, value) {
  if (!view.filters[filter].includes(value)) view.filters[filter].push(value);
  apply();
}

function apply() {
  history.pushState(null, '', viewSearch(view) + location.hash);
  syncControls();
  tail.tz = view.tz;
  refresh();
}

function syncControls() {
  for (const radio of document.querySelectorAll('input[name=range]')) radio.checked = radio.value === view.range;
  $('custom').hidden = view.range !== 'custom';
  $('since').value = view.since ? utcToZoned(view.since, view.tz) : '';
  $('until').value = view.until ? utcToZoned(view.until, view.tz) : '';
  $('bucket').value = view.bucket;
  $('tz').value = view.tz;
  $('tz').removeAttribute('aria-invalid');
  const chips = FILTERS.flatMap((f) => view.filters[f].map((v) => {
    const label = `${f.replace('_', ' ')}: ${known[f]?.get(v) || v}`;
    const remove = h('button', { type: 'button', class: 'chip', 'aria-label': `Remove filter ${label}`, text: `${label} ✕` });
    remove.addEventListener('click', () => {
      view.filters[f] = view.filters[f].filter((x) => x !== v);
      apply();
    });
    return h('li', {}, remove);
  }));
  $('chips').replaceChildren(...chips);
}

function readControls() {
  const range = document.querySelector('input[name=range]:checked')?.value || '7d';
  const tz = $('tz').value.trim() || 'UTC';
  if (!isZone(tz)) {
    $('tz').setAttribute('aria-invalid', 'true');
    $('notice').hidden = false;
    $('notice').textContent = `${tz} is not a time zone: pick one from the list (an IANA name such as Europe/Berlin).`;
    return false;
  }
  view.tz = tz;
  view.range = range;
  view.bucket = $('bucket').value;
  if (range === 'custom') {
    if (!$('since').value && lastWindow) {
      $('since').value = utcToZoned(lastWindow.since, tz);
      $('until').value = utcToZoned(lastWindow.until, tz);
    }
    view.since = zonedToUtc($('since').value, tz) || view.since;
    view.until = zonedToUtc($('until').value, tz) || view.until;
  }
  for (const input of document.querySelectorAll('input[data-filter]')) {
    const value = input.value.trim();
    if (value && !view.filters[input.dataset.filter].includes(value)) view.filters[input.dataset.filter].push(value);
    input.value = '';
  }
  $('notice').hidden = true;
  return true;
}

function onHash() {
  const match = location.hash.match(/^#run=([0-9a-fA-F-]{36})$/);
  if (!match || !api) {
    $('run').hidden = true;
    return;
  }
  showRun(api, workspacePath(workspace), match[1], lastWindow?.since || new Date(Date.now() - 7 * 864e5).toISOString(), view.tz, {
    panel: $('run'), message: $('run-msg'), events: $('run-events'), logs: $('run-logs'),
  });
}

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  signIn($('key').value.trim());
});
$('signout').addEventListener('click', () => signOut(''));
$('controls').addEventListener('submit', (e) => {
  e.preventDefault();
  if (readControls()) apply();
});
$('controls').addEventListener('change', (e) => {
  if (e.target.matches('input[data-filter]')) return;
  if (readControls()) apply();
});
$('workspace').addEventListener('change', () => {
  workspace = workspaces.find((ws) => wsName(ws) === $('workspace').value) || workspaces[0];
  view.workspace = wsName(workspace);
  for (const map of Object.values(known)) map.clear();
  for (const slot of cards.values()) slot.shown = null;
  tail.start(api.key, workspacePath(workspace), view.tz);
  apply();
});
$('run-close').addEventListener('click', (e) => {
  e.preventDefault();
  history.pushState(null, '', location.pathname + location.search);
  onHash();
});
window.addEventListener('popstate', () => {
  view = readView(location.search);
  if (!api) return;
  showDashboard();
});
window.addEventListener('hashchange', onHash);
setInterval(tick, 1000);

if (typeof Intl.supportedValuesOf === 'function') {
  $('zones').replaceChildren(...['UTC', ...Intl.supportedValuesOf('timeZone')].map((z) => h('option', { value: z })));
}

const stored = sessionStorage.getItem(KEY);
if (stored) signIn(stored);
else showSignIn('');
