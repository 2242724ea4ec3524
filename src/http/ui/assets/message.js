// A message: its body (pretty JSON, text, hex or base64), headers, facts, every attempt in a
// timeline with its error and a hint, and the actions its state allows: retry now, edit (body,
// headers, priority, delivery time), reschedule and delete.

import { ApiFailure, may, request } from './api.js';
import {
  confirmAction, flash, formatTime, fromLocalInput, fill, h, modal, relative, stateBadge, throttle,
  time, toLocalInput,
} from './dom.js';
import { bodyOf, hexDump, prettyJson } from './body.js';
import { ACTIONS, askDeliveryTime } from './queue.js';

/** What a person can do about a failed delivery, by how it failed. */
function failureHint(entry) {
  if (entry.dead) {
    return 'This failure made the message dead (its last allowed attempt, or the consumer gave up with dead: true). It will not be delivered again by itself: fix the cause, edit the message if it is wrong, then retry it.';
  }
  if (entry.event === 'lease_expired') {
    return 'The consumer did not ack, nack or extend the message before its lease ran out: it may have crashed or be too slow. Consumers should extend the lease during long work, or the queue needs a longer lease_ms.';
  }
  return 'The consumer reported this error (nack). The message is delivered again after its backoff; if the error will not go away by itself, fix its cause.';
}

/** What the state means for a person, and what they can do now. */
function stateNote(message) {
  switch (message.state) {
    case 'dead':
      return ['danger', 'This message is dead: it will not be delivered again by itself. Read the error below, fix its cause (edit the message if it is wrong), then retry it.'];
    case 'retrying':
      return ['warning', `The last delivery failed; the next attempt is at ${formatTime(message.deliver_at)} (${relative(message.deliver_at)}). Retry now to skip the wait.`];
    case 'leased':
      return ['info', `A consumer holds this message until ${formatTime(message.lease_expires_at)} (${relative(message.lease_expires_at)}). Edits, retries and deletes wait until it acks or nacks it, or the lease expires.`];
    case 'scheduled':
      return ['info', `Scheduled: it becomes ready at ${formatTime(message.deliver_at)} (${relative(message.deliver_at)}).`];
    case 'delivered':
      return ['ok', 'Delivered: a consumer acked it. It stays visible for the queue\'s retention period; it can only be deleted.'];
    default:
      return ['info', 'Ready: waiting for a consumer to lease it.'];
  }
}

const TITLES = {
  enqueued: () => 'Enqueued',
  leased: (entry) => `Delivery ${entry.attempt} began (leased)`,
  nacked: (entry) => `Delivery ${entry.attempt} failed: the consumer nacked it${entry.dead ? ' — dead' : ''}`,
  lease_expired: (entry) => `Delivery ${entry.attempt} failed: the lease expired${entry.dead ? ' — dead' : ''}`,
  acked: (entry) => `Delivered: attempt ${entry.attempt} acked`,
  edited: (entry) => `Edited by a person (${entry.detail})`,
  retried: (entry) => `Retried by a person (${entry.detail})`,
  rescheduled: (entry) => {
    const at = Number((entry.detail || '').replace('deliver at ', ''));
    return `Rescheduled by a person: deliver at ${Number.isFinite(at) && at > 0 ? formatTime(at) : entry.detail}`;
  },
};

function timelineEntry(entry) {
  const title = (TITLES[entry.event] || (() => `${entry.event}${entry.detail ? ` (${entry.detail})` : ''}`))(entry);
  const failed = entry.event === 'nacked' || entry.event === 'lease_expired';
  return h('li', { class: `event event-${entry.event}${failed ? ' failure' : ''}`, dataset: { event: entry.event } },
    h('div', { class: 'when' }, time(entry.at)),
    h('div', { class: 'what' }, h('strong', {}, title),
      failed ? h('pre', { class: 'error-text' }, entry.error || '') : null,
      failed ? h('p', { class: 'hint' }, failureHint(entry)) : null));
}

export class MessageView {
  constructor(where) {
    this.id = where.id;
    this.title = `Message ${this.id}`;
    this.message = null;
    this.body = null;
    this.editing = false;
    this.bodyMode = null;
    this.refreshSoon = throttle(() => this.refresh(), 300);
    this.element = h('section', { class: 'message' }, h('p', { class: 'muted' }, 'Loading…'));
  }

  async refresh() {
    if (this.editing) {
      this.staleNote.hidden = false;
      return;
    }
    this.generation = (this.generation || 0) + 1;
    const generation = this.generation;
    try {
      const { text, json } = await request('GET', `v1/messages/${encodeURIComponent(this.id)}`);
      if (generation !== this.generation || this.editing) return;
      this.message = json;
      this.body = bodyOf(text, json);
      this.render();
    } catch (failure) {
      if (failure.status === 404 || failure.code === 'invalid_id') {
        this.message = null;
        fill(this.element, h('h1', {}, 'Message ', h('span', { class: 'mono' }, this.id)),
          h('p', { class: 'empty', id: 'message-gone' }, failure.code === 'invalid_id'
            ? 'This is not a message id (16 hex characters).'
            : 'There is no such message: it was deleted, purged or removed by retention, or never existed.'));
      } else if (failure.status !== 401) flash(failure);
    }
  }

  onEvent(event) {
    if (event.message_id === this.id) this.refreshSoon();
  }

  destroy() {}

  render() {
    const message = this.message;
    const [noteKind, noteText] = stateNote(message);
    const queueLink = h('a', { href: `#/queues/${encodeURIComponent(message.queue)}?state=${message.state}` }, message.queue);
    this.staleNote = h('p', { class: 'banner warning', hidden: true }, 'This message changed on the server while you were editing it. Cancel to see the new version.');
    fill(this.element, 
      h('h1', {}, 'Message ', h('span', { class: 'mono' }, message.id), ' ', stateBadge(message.state)),
      h('p', { class: `note ${noteKind}`, id: 'state-note' }, noteText),
      this.actions(),
      this.staleNote,
      this.editing ? this.editor() : null,
      h('div', { class: 'columns' },
        h('div', {},
          h('h2', {}, 'Facts'),
          h('dl', { class: 'facts' },
            h('dt', {}, 'Queue'), h('dd', {}, queueLink),
            h('dt', {}, 'State'), h('dd', { id: 'message-state' }, message.state),
            h('dt', {}, 'Priority'), h('dd', {}, String(message.priority)),
            h('dt', {}, 'Attempts'), h('dd', {}, `${message.attempts} of ${message.max_attempts}`),
            h('dt', {}, 'Enqueued'), h('dd', {}, time(message.enqueued_at)),
            h('dt', {}, 'Last change'), h('dd', {}, time(message.updated_at)),
            h('dt', {}, 'Deliver at'), h('dd', {}, time(message.deliver_at)),
            h('dt', {}, 'Lease expires'), h('dd', {}, time(message.lease_expires_at))),
          this.lastError(),
          h('h2', {}, 'Headers'),
          this.headers()),
        h('div', {}, h('h2', {}, 'Body'), this.bodyPanel())),
      h('h2', {}, 'Timeline'),
      message.history_dropped ? h('p', { class: 'muted' }, `${message.history_dropped} older events were dropped (the server keeps the newest ones).`) : null,
      h('ol', { class: 'timeline', id: 'timeline' }, message.history.map(timelineEntry)));
    window.performance.mark('outboxd:message');
  }

  lastError() {
    const error = this.message.last_error;
    if (!error) return null;
    return h('div', { class: 'last-error', id: 'last-error' },
      h('h2', {}, 'Last error'),
      h('pre', { class: 'error-text' }, error.message),
      h('p', { class: 'muted' }, `Delivery ${error.attempt}, ${error.kind === 'lease_expired' ? 'lease expired' : 'nacked'}, `, time(error.at)),
      h('p', { class: 'hint', id: 'last-error-hint' }, failureHint({
        event: error.kind, dead: this.message.state === 'dead',
      })));
  }

  headers() {
    const entries = Object.entries(this.message.headers || {});
    if (entries.length === 0) return h('p', { class: 'muted' }, 'No headers.');
    return h('table', { class: 'headers', id: 'headers' }, h('tbody', {}, entries.map(([name, value]) => h('tr', {},
      h('th', { class: 'mono' }, name), h('td', { class: 'mono' }, value)))));
  }

  /** The body in each form it can be read in; the first is the default. */
  bodyViews() {
    const body = this.body;
    if (body.kind === 'json') return [['JSON', prettyJson(body.raw)], ['As stored', body.raw]];
    if (body.kind === 'text') return [['Text', body.text], ['JSON', body.raw]];
    const views = [['Hex', hexDump(body.bytes)], ['Base64', body.base64]];
    if (body.text !== null) views.unshift(['Text', body.text]);
    return views;
  }

  bodyPanel() {
    const views = this.bodyViews();
    if (!views.some(([name]) => name === this.bodyMode)) this.bodyMode = views[0][0];
    const content = h('pre', { class: 'body', id: 'body', dataset: { kind: this.body.kind } });
    const buttons = views.map(([name, text]) => h('button', {
      type: 'button', class: `tab${name === this.bodyMode ? ' current' : ''}`, dataset: { view: name },
      onclick: (event) => {
        this.bodyMode = name;
        content.textContent = text;
        for (const other of buttons) other.classList.toggle('current', other === event.target);
      },
    }, name));
    content.textContent = views.find(([name]) => name === this.bodyMode)[1];
    const size = this.body.kind === 'bytes' ? `${this.body.bytes.length} bytes` : `${new TextEncoder().encode(this.body.raw).length} bytes of JSON`;
    return h('div', { class: 'body-panel' }, h('div', { class: 'tabs small' }, buttons, h('span', { class: 'muted' }, ` ${size}`)), content);
  }

  /**
   * The actions the message's state allows. A token without the admin role on its queue gets them
   * hidden and disabled: the server would refuse them (and says so, should one be sent anyway).
   */
  actions() {
    const message = this.message;
    const admin = may('admin', message.queue);
    const offer = (action, label, handler, kind) => (ACTIONS[action].includes(message.state)
      ? h('button', {
        type: 'button', class: kind || '', dataset: { action }, onclick: handler,
        hidden: !admin, disabled: !admin,
      }, label)
      : null);
    return h('div', { class: 'message-actions' },
      admin ? null : h('p', { class: 'muted readonly-note' }, 'This token may look at this message but not change it: actions need the admin role on its queue.'),
      offer('retry', 'Retry now', () => this.retry(), 'primary'),
      this.editing ? null : offer('edit', 'Edit…', () => { this.editing = true; this.render(); }),
      offer('reschedule', 'Reschedule…', () => this.reschedule()),
      offer('delete', 'Delete…', () => this.remove(), 'danger'),
      message.state === 'leased' ? h('span', { class: 'muted' }, 'A leased message belongs to its consumer: no action applies until its lease ends.') : null);
  }

  async act(work, done) {
    try {
      const result = await work();
      flash(done);
      return result;
    } catch (failure) {
      flash(failure);
      return null;
    }
  }

  async retry() {
    const reset = h('input', { type: 'checkbox', name: 'reset_attempts' });
    const go = await modal('Retry now', h('div', {},
      h('p', {}, `Message ${this.id} goes back to ready at once.`),
      h('label', {}, reset, ' Reset its attempts (it gets max_attempts new deliveries)')),
    [{ label: 'Cancel', value: null }, { label: 'Retry now', value: true, kind: 'primary' }]);
    if (!go) return;
    const query = reset.checked ? { reset_attempts: 'true' } : undefined;
    if (await this.act(() => request('POST', `v1/messages/${this.id}/retry`, { query }), `Message ${this.id} is ready again.`)) this.refresh();
  }

  async reschedule() {
    const when = await askDeliveryTime(`Reschedule ${this.id}`, this.message.deliver_at);
    if (when === null) return;
    if (await this.act(() => request('POST', `v1/messages/${this.id}/schedule`, { body: when }), `Message ${this.id} rescheduled.`)) this.refresh();
  }

  async remove() {
    if (!await confirmAction('Delete message', `Delete message ${this.id} of ${this.message.queue}? It is removed for good.`, 'Delete')) return;
    const queue = this.message.queue;
    if (await this.act(() => request('DELETE', `v1/messages/${this.id}`), `Message ${this.id} deleted.`)) {
      window.location.hash = `#/queues/${encodeURIComponent(queue)}`;
    }
  }

  /** The edit form: body (as JSON, text or base64), headers, priority and delivery time. */
  editor() {
    const message = this.message;
    const body = this.body;
    const initialMode = body.kind === 'bytes' ? 'base64' : body.kind === 'text' ? 'text' : 'json';
    const initialText = body.kind === 'bytes' ? body.base64 : body.kind === 'text' ? body.text : prettyJson(body.raw);
    const mode = h('select', { name: 'body_mode', 'aria-label': 'Body format' },
      h('option', { value: 'json', selected: initialMode === 'json' }, 'JSON'),
      h('option', { value: 'text', selected: initialMode === 'text' }, 'Text (sent as a JSON string)'),
      h('option', { value: 'base64', selected: initialMode === 'base64' }, 'Bytes (base64)'));
    const text = h('textarea', { name: 'body', rows: '12', spellcheck: 'false', value: initialText });
    const rows = h('tbody', {});
    const addRow = (name, value) => rows.append(h('tr', {},
      h('td', {}, h('input', { type: 'text', name: 'header-name', value: name, 'aria-label': 'Header name' })),
      h('td', {}, h('input', { type: 'text', name: 'header-value', value, 'aria-label': 'Header value' })),
      h('td', {}, h('button', { type: 'button', class: 'link', onclick: (event) => event.target.closest('tr').remove() }, 'remove'))));
    for (const [name, value] of Object.entries(message.headers || {})) addRow(name, value);
    const priority = h('input', { type: 'number', name: 'priority', value: String(message.priority), step: '1' });
    const deliverAt = h('input', { type: 'datetime-local', name: 'deliver_at', step: '1', value: message.deliver_at ? toLocalInput(message.deliver_at) : '' });
    const readHeaders = () => {
      const headers = {};
      for (const row of rows.querySelectorAll('tr')) {
        const name = row.querySelector('[name=header-name]').value;
        if (name !== '') headers[name] = row.querySelector('[name=header-value]').value;
      }
      return headers;
    };
    const initialHeaders = JSON.stringify(Object.entries(message.headers || {}));
    const initialDeliverAt = deliverAt.value;
    const save = async (event) => {
      event.preventDefault();
      const changes = {};
      let rawBody = null;
      if (mode.value !== initialMode || text.value !== initialText) {
        if (mode.value === 'json') {
          try {
            JSON.parse(text.value);
          } catch (error) {
            flash(new ApiFailure(0, 'invalid_json', `The body is not valid JSON: ${error.message}`, 'Fix the JSON, or choose Text to send it as a string.'));
            return;
          }
          rawBody = text.value.trim();
        } else if (mode.value === 'text') changes.body = text.value;
        else changes.body_base64 = text.value.trim();
      }
      const headers = readHeaders();
      if (JSON.stringify(Object.entries(headers)) !== initialHeaders) changes.headers = headers;
      if (Number(priority.value) !== message.priority) changes.priority = Number(priority.value);
      if (deliverAt.value !== initialDeliverAt && deliverAt.value !== '') changes.deliver_at = fromLocalInput(deliverAt.value);
      if (rawBody === null && Object.keys(changes).length === 0) {
        flash('Nothing changed.');
        return;
      }
      // A JSON body goes out as typed, so that its numbers keep every digit.
      const rest = JSON.stringify(changes);
      const payload = rawBody === null ? rest : `{"body":${rawBody}${rest === '{}' ? '' : `,${rest.slice(1, -1)}`}}`;
      try {
        await request('PATCH', `v1/messages/${this.id}`, { rawBody: payload });
        this.editing = false;
        flash(`Message ${this.id} saved.`);
        this.refresh();
      } catch (failure) {
        flash(failure);
      }
    };
    return h('form', { class: 'editor', id: 'editor', onsubmit: save },
      h('h2', {}, 'Edit'),
      h('label', { class: 'field' }, h('span', {}, 'Body'), mode),
      text,
      h('h3', {}, 'Headers'),
      h('table', { class: 'header-editor' }, rows),
      h('button', { type: 'button', class: 'link', dataset: { action: 'add-header' }, onclick: () => addRow('', '') }, 'add a header'),
      h('div', { class: 'row' },
        h('label', { class: 'field' }, h('span', {}, 'Priority'), priority),
        h('label', { class: 'field' }, h('span', {}, 'Deliver at (your time zone; empty: unchanged)'), deliverAt)),
      h('div', { class: 'actions' },
        h('button', { type: 'button', dataset: { action: 'cancel-edit' }, onclick: () => { this.editing = false; this.refresh(); } }, 'Cancel'),
        h('button', { type: 'submit', class: 'primary', dataset: { action: 'save' } }, 'Save')));
  }
}
