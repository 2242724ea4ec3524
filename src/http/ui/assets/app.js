// The outbox page: boot, the token prompt, the router, live updates and notices.
//
// Views (overview, queue, message) each own a part of the page and expose `element`, `refresh()`,
// `onEvent(event)` and `destroy()`. The page follows `GET /v1/events` and hands every event to the
// view on screen, which refreshes what the event touched; when the stream is not available (a
// token without the admin role, or a dropped connection) it refreshes every few seconds instead.

import {
  access, followEvents, healthy, loadAccess, may, onUnauthorized, setToken, token,
} from './api.js';
import { flash, fill, h, hideFlash } from './dom.js';
import { MessageView } from './message.js';
import { OverviewView } from './overview.js';
import { QueueView } from './queue.js';

const main = document.getElementById('main');
const POLL_MS = 5000;
const HEALTH_MS = 10000;

let view = null;
let stream = null;
let pollTimer = null;
let healthTimer = null;
let started = false;

/** Where the hash points: `#/`, `#/queues/<name>?state=…`, `#/messages/<id>`. */
function route() {
  const hash = window.location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  let parts;
  try {
    parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  } catch (_) {
    parts = [];
  }
  const params = new URLSearchParams(query || '');
  if (parts[0] === 'queues' && parts[1]) return { name: 'queue', queue: parts[1], params };
  if (parts[0] === 'messages' && parts[1]) return { name: 'message', id: parts[1], params };
  return { name: 'overview', params };
}

function show() {
  if (view) view.destroy();
  hideFlash();
  const where = route();
  if (where.name === 'queue') view = new QueueView(where);
  else if (where.name === 'message') view = new MessageView(where);
  else view = new OverviewView(where);
  fill(main, view.element);
  document.title = view.title ? `${view.title} · outboxd` : 'outboxd';
  view.refresh();
}

function setLive(state, text) {
  const badge = document.getElementById('live');
  badge.className = `live ${state}`;
  badge.dataset.state = state;
  badge.textContent = { live: '● live', polling: '○ refreshing every 5 s', reconnecting: '○ reconnecting…' }[state] || state;
  badge.title = text || '';
}

function startPolling() {
  if (pollTimer) return;
  pollTimer = setInterval(() => view && view.refresh(), POLL_MS);
}

function stopPolling() {
  clearInterval(pollTimer);
  pollTimer = null;
}

/** Follows the event stream when the token may read it; polls otherwise. */
function startLive() {
  if (!may('admin')) {
    setLive('polling', 'The event stream needs a token with the admin role; this page refreshes every 5 s instead.');
    startPolling();
    return;
  }
  let wasOpen = false;
  stream = followEvents({
    event: (event) => {
      if (event.kind === 'dead') noteDead(event);
      if (view) view.onEvent(event);
    },
    missed: () => view && view.refresh(),
    state: (state, failure) => {
      if (state === 'open') {
        stopPolling();
        setLive('live', 'Counts and tables follow the server\'s event stream.');
        removeBanner('stream');
        // Events from while the stream was down may be gone: read everything once.
        if (wasOpen && view) view.refresh();
        wasOpen = true;
      } else if (state === 'refused') {
        setLive('polling', failure ? failure.message : '');
        startPolling();
      } else {
        setLive('reconnecting', failure ? String(failure.message || failure) : '');
        banner('stream', 'warning', 'Live updates stopped: the connection to the server\'s event stream was lost. Reconnecting; meanwhile the page refreshes every 5 s.');
        startPolling();
      }
    },
  });
}

/** A notice at the top of the page, replacing any earlier one with the same key. */
function banner(key, kind, ...content) {
  const box = document.getElementById('banners');
  const old = box.querySelector(`[data-banner="${key}"]`);
  const element = h('div', { class: `banner ${kind}`, dataset: { banner: key }, role: 'status' },
    h('div', { class: 'banner-text' }, content),
    h('button', { type: 'button', class: 'link dismiss', 'aria-label': 'Dismiss', onclick: () => element.remove() }, '×'));
  if (old) old.replaceWith(element);
  else box.append(element);
}

function removeBanner(key) {
  const old = document.getElementById('banners').querySelector(`[data-banner="${key}"]`);
  if (old) old.remove();
}

const dead = { count: 0, queues: new Set() };

/** A message went dead: it needs a person. Says which, why, and where to act. */
function noteDead(event) {
  dead.count += 1;
  dead.queues.add(event.queue);
  const queueLink = (queue) => h('a', { href: `#/queues/${encodeURIComponent(queue)}?state=dead` }, queue);
  banner('dead', 'danger',
    h('strong', {}, dead.count === 1 ? 'A message went dead' : `${dead.count} messages went dead`),
    ' while this page was open (queues: ', [...dead.queues].flatMap((queue, index) => [index ? ', ' : '', queueLink(queue)]), '). Latest: ',
    h('a', { href: `#/messages/${encodeURIComponent(event.message_id)}`, class: 'mono' }, event.message_id),
    ' in ', event.queue, ': ',
    h('q', { class: 'error-text' }, event.error || ''),
    h('div', { class: 'hint' }, 'It will not be retried by itself: fix the cause, then retry it (or redrive the queue).'));
}

async function checkHealth() {
  const ok = await healthy();
  if (ok) removeBanner('health');
  else {
    banner('health', 'danger', h('strong', {}, 'The server is not healthy. '),
      'GET /healthz fails: it stopped taking writes after a storage failure, or cannot be reached. Reads may still work; see "Troubleshooting" in docs/operations.md.');
  }
}

function renderWho() {
  const who = document.getElementById('who');
  if (!access.enabled) {
    fill(who, h('span', { class: 'muted', title: 'The server has no API tokens: every request is allowed.' }, 'no access control'));
    return;
  }
  fill(who, 
    h('span', { title: 'The API token this tab uses' }, 'token ', h('strong', {}, access.name),
      ` (${access.roles.join(', ')}; queues ${access.queues})`),
    ' ',
    h('button', {
      type: 'button', class: 'link', id: 'forget-token',
      onclick: () => {
        setToken('');
        window.location.reload();
      },
    }, 'forget token'));
}

/** The server wants a token: ask for one, keep it for this tab only. */
function askForToken(failure) {
  if (stream) stream.stop();
  stream = null;
  stopPolling();
  if (view) view.destroy();
  view = null;
  const input = h('input', {
    type: 'password', id: 'token-input', autocomplete: 'off', spellcheck: 'false', required: true,
    'aria-label': 'API token',
  });
  const form = h('form', {
    class: 'token-form',
    onsubmit: (event) => {
      event.preventDefault();
      setToken(input.value.trim());
      boot();
    },
  },
  h('h1', {}, 'This server needs an API token'),
  failure && token() ? h('p', { class: 'flash error' }, h('strong', { class: 'code' }, `${failure.status} ${failure.code}`), ` ${failure.message}`) : null,
  h('p', {}, 'Paste a token from the server\'s config file ([[tokens]]). A token without the admin role can look but not change anything.'),
  h('label', {}, 'Token ', input),
  h('button', { type: 'submit', class: 'primary', id: 'token-submit' }, 'Open the outbox'),
  h('p', { class: 'muted' }, 'The token is kept for this tab only (sessionStorage) and sent as an Authorization: Bearer header with each request. The page sets no cookie.'));
  setToken('');
  fill(main, form);
  document.getElementById('who').replaceChildren();
  input.focus();
}

async function boot() {
  fill(main, h('p', { class: 'muted' }, 'Loading…'));
  try {
    await loadAccess();
  } catch (failure) {
    if (failure.status !== 401) {
      main.replaceChildren();
      flash(failure);
    }
    return;
  }
  renderWho();
  startLive();
  if (!started) {
    started = true;
    window.addEventListener('hashchange', show);
    healthTimer = setInterval(checkHealth, HEALTH_MS);
    checkHealth();
  }
  show();
}

onUnauthorized((failure) => askForToken(failure));
window.addEventListener('pagehide', () => {
  if (stream) stream.stop();
  clearInterval(healthTimer);
});
boot();
