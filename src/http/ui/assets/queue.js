// A queue: its counts and settings, a table of its messages per state (server-side pages,
// filters by header and by text in the last error, oldest or newest first), actions on many
// selected messages, and the queue's own actions: pause, resume, redrive, purge and settings.

import { ApiFailure, get, may, request } from './api.js';
import {
  confirmAction, flash, forEachLimited, formatCount, formatDuration, fromLocalInput, fill, h, modal,
  relative, STATE_MEANING, STATES, time, throttle, toLocalInput,
} from './dom.js';
import { attentionOf, markers, rateChart } from './overview.js';

const PAGE_SIZE = 50;
/** Requests in flight at once for an action on many messages. */
const BULK_CONCURRENCY = 4;

/** Which person's actions apply to a message in each state (docs/api.md, Visibility and control). */
export const ACTIONS = {
  retry: ['retrying', 'dead'],
  reschedule: ['scheduled', 'ready', 'retrying', 'dead'],
  edit: ['scheduled', 'ready', 'retrying', 'dead'],
  delete: ['scheduled', 'ready', 'retrying', 'dead', 'delivered'],
};

const path = (queue) => `v1/queues/${encodeURIComponent(queue)}`;

/** The time column of a state: what the time there means. */
function dueColumn(state) {
  return {
    scheduled: ['Deliver at', (m) => m.deliver_at],
    retrying: ['Next attempt', (m) => m.deliver_at],
    leased: ['Lease expires', (m) => m.lease_expires_at],
  }[state] || ['Last change', (m) => m.updated_at];
}

/** Several failures of one action on many messages, as one refusal to show. */
function summarise(failures, total, verb) {
  const first = failures[0].error;
  return new ApiFailure(first.status, first.code,
    `${failures.length} of ${total} messages could not be ${verb}; the first (${failures[0].item}): ${first.message}`,
    first.hint);
}

export class QueueView {
  constructor(where) {
    this.name = where.queue;
    this.title = this.name;
    const params = where.params;
    this.state = STATES.includes(params.get('state')) ? params.get('state') : null;
    this.order = params.get('order') === 'desc' ? 'desc' : 'asc';
    this.header = params.get('header') || '';
    this.error = params.get('error') || '';
    this.cursors = [null];
    this.nextCursor = null;
    this.selected = new Set();
    this.queue = null;
    this.rates = null;
    this.admin = may('admin', this.name);
    this.refreshSoon = throttle(() => this.refresh(), 700);

    this.heading = h('div', { class: 'queue-heading' });
    this.actions = h('div', { class: 'queue-actions' });
    this.tabs = h('nav', { class: 'tabs', 'aria-label': 'Message states' });
    this.filters = this.buildFilters();
    this.bulk = h('div', { class: 'bulk', hidden: true });
    this.table = h('div', { class: 'table-wrap' });
    this.pager = h('div', { class: 'pager' });
    this.element = h('section', { class: 'queue' }, this.heading, this.actions, this.tabs,
      this.filters, this.bulk, this.table, this.pager);
  }

  /** The link to this queue's table with `changes` to its state, order or filters. */
  href(changes) {
    const params = new URLSearchParams();
    const next = { state: this.state, order: this.order, header: this.header, error: this.error, ...changes };
    for (const [name, value] of Object.entries(next)) {
      if (value && !(name === 'order' && value === 'asc')) params.set(name, value);
    }
    return `#/queues/${encodeURIComponent(this.name)}?${params}`;
  }

  /** Rewrites the hash (the view is rebuilt from it), so every view of a table has a link. */
  go(changes) {
    window.location.hash = this.href(changes);
  }

  buildFilters() {
    const header = h('input', {
      type: 'search', name: 'header', value: this.header, placeholder: 'name:value',
      'aria-label': 'Only messages with this header', title: 'Only messages with this header: name:value',
    });
    const error = h('input', {
      type: 'search', name: 'error', value: this.error, placeholder: 'text in the last error',
      'aria-label': 'Only messages whose last error contains this text',
    });
    const order = h('select', { name: 'order', 'aria-label': 'Order' },
      h('option', { value: 'asc', selected: this.order === 'asc' }, 'Oldest first'),
      h('option', { value: 'desc', selected: this.order === 'desc' }, 'Newest first'));
    order.addEventListener('change', () => this.go({ order: order.value }));
    return h('form', {
      class: 'filters',
      onsubmit: (event) => {
        event.preventDefault();
        this.go({ header: header.value.trim(), error: error.value.trim() });
      },
    },
    h('label', {}, 'Header ', header), h('label', {}, 'Last error ', error), order,
    h('button', { type: 'submit' }, 'Filter'),
    this.header || this.error ? h('button', {
      type: 'button', class: 'link', onclick: () => this.go({ header: '', error: '' }),
    }, 'clear filters') : null);
  }

  async refresh() {
    // Only the newest of overlapping refreshes is shown, so a slow answer never overwrites a newer.
    this.generation = (this.generation || 0) + 1;
    const generation = this.generation;
    try {
      const cursor = this.cursors[this.cursors.length - 1];
      const [queue, rates] = await Promise.all([
        get(path(this.name)),
        get('v1/rates', { queue: this.name }),
      ]);
      this.queue = queue;
      this.rates = rates.queues[0];
      if (!this.state) this.state = queue.counts.dead > 0 ? 'dead' : 'ready';
      const page = await get(`${path(this.name)}/messages`, {
        state: this.state, limit: PAGE_SIZE, order: this.order, header: this.header,
        error: this.error, cursor,
      });
      if (generation === this.generation) this.render(page);
    } catch (failure) {
      if (failure.status === 404 && failure.code === 'queue_not_found') {
        fill(this.element, h('h1', {}, this.name),
          h('p', { class: 'empty' }, `There is no queue named "${this.name}" (yet): a queue appears with its first message.`));
      } else if (failure.status !== 401) flash(failure);
    }
  }

  onEvent(event) {
    if (event.queue === this.name) this.refreshSoon();
  }

  destroy() {}

  /**
   * Draws what a refresh read. Buttons, tabs, the pager and the rows of messages that did not
   * change are kept, not rebuilt: the view refreshes on every event of its queue, and a control
   * replaced under the pointer would lose the click a person was making.
   */
  render(page) {
    this.renderHeading();
    this.renderActions();
    this.renderTabs();
    this.renderTable(page);
    this.renderBulk();
    window.performance.mark('outboxd:table');
  }

  renderHeading() {
    const queue = this.queue;
    const settings = queue.settings;
    const setting = (value, unit) => (value === null ? 'server default' : `${value}${unit || ''}`);
    fill(this.heading,
      h('h1', {}, queue.name, ' ', queue.paused
        ? h('span', { class: 'badge paused', id: 'queue-state' }, 'paused')
        : h('span', { class: 'badge delivering', id: 'queue-state' }, 'delivering'),
      ' ', markers(attentionOf(queue, this.rates))),
      h('p', { class: 'facts muted' },
        `Oldest ready: ${queue.oldest_ready_age_ms === null ? 'none ready' : formatDuration(queue.oldest_ready_age_ms)} · `,
        `max attempts ${setting(settings.max_attempts)} · lease ${setting(settings.lease_ms, ' ms')} · `,
        `retention ${settings.retention_ms === null ? 'server default' : formatDuration(settings.retention_ms)}`,
        ' ', rateChart(this.rates, 160, 24)));
  }

  /**
   * The queue's actions, built once. A token without the admin role on the queue gets them
   * hidden and disabled: the server would refuse them (and says so, should one be sent anyway).
   */
  renderActions() {
    const queue = this.queue;
    if (!this.buttons) {
      const button = (action, label, handler, kind) => h('button', {
        type: 'button', class: kind || '', dataset: { action }, onclick: handler,
        hidden: !this.admin, disabled: !this.admin,
      }, label);
      this.buttons = {
        pause: button('pause', 'Pause', () => this.pause(true)),
        resume: button('resume', 'Resume', () => this.pause(false), 'primary'),
        redrive: button('redrive', 'Redrive dead', () => this.redrive()),
        purge: button('purge', 'Purge…', () => this.purge(), 'danger'),
        settings: button('settings', 'Settings…', () => this.settings()),
      };
      fill(this.actions, this.admin ? null : h('p', { class: 'muted readonly-note' },
        'This token may look at this queue but not change it: actions need the admin role on it.'),
      Object.values(this.buttons));
    }
    if (!this.admin) return;
    this.buttons.pause.hidden = queue.paused;
    this.buttons.resume.hidden = !queue.paused;
    this.buttons.redrive.textContent = `Redrive dead (${formatCount(queue.counts.dead)})`;
  }

  renderTabs() {
    if (!this.tabLinks) {
      this.tabLinks = STATES.map((state) => h('a', {
        href: this.href({ state }), class: 'tab', title: STATE_MEANING[state], dataset: { state },
      }, state, ' ', h('span', { class: 'count' })));
      fill(this.tabs, this.tabLinks);
    }
    for (const link of this.tabLinks) {
      const current = link.dataset.state === this.state;
      link.classList.toggle('current', current);
      if (current) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
      link.querySelector('.count').textContent = formatCount(this.queue.counts[link.dataset.state]);
    }
  }

  selectable() {
    return this.admin && Object.values(ACTIONS).some((states) => states.includes(this.state));
  }

  /** The table's frame, built once the state is known: head, body, the empty note, the pager. */
  buildTable() {
    const [dueLabel] = dueColumn(this.state);
    this.selectAll = h('input', {
      type: 'checkbox', 'aria-label': 'Select all on this page',
      onchange: (event) => {
        for (const id of this.shown) {
          if (event.target.checked) this.selected.add(id);
          else this.selected.delete(id);
        }
        for (const [id, row] of this.rows) if (row.checkbox) row.checkbox.checked = this.selected.has(id);
        this.renderBulk();
      },
    });
    this.tbody = h('tbody', {});
    this.messageTable = h('table', { class: 'messages', dataset: { state: this.state } },
      h('thead', {}, h('tr', {}, this.selectable() ? h('th', { class: 'select' }, this.selectAll) : null,
        h('th', {}, 'Id'), h('th', { class: 'num' }, 'Priority'), h('th', { class: 'num' }, 'Attempts'),
        h('th', {}, 'Enqueued'), h('th', {}, dueLabel), h('th', {}, 'Last error'))),
      this.tbody);
    this.emptyNote = h('p', { class: 'empty', hidden: true });
    fill(this.table, this.messageTable, this.emptyNote);
    this.rows = new Map();
    this.previous = h('button', {
      type: 'button', dataset: { action: 'previous' },
      onclick: () => { this.cursors.pop(); this.refresh(); },
    }, '← Previous');
    this.next = h('button', {
      type: 'button', dataset: { action: 'next' },
      onclick: () => { this.cursors.push(this.nextCursor); this.refresh(); },
    }, 'Next →');
    this.pageLabel = h('span', { class: 'muted' });
    fill(this.pager, this.previous, this.pageLabel, this.next);
  }

  /** One message's row; `checkbox` reflects the selection, which outlives re-renders. */
  row(message) {
    const [, due] = dueColumn(this.state);
    const checkbox = this.selectable() ? h('input', {
      type: 'checkbox', 'aria-label': `Select ${message.id}`,
      onchange: (event) => {
        if (event.target.checked) this.selected.add(message.id);
        else this.selected.delete(message.id);
        this.renderBulk();
      },
    }) : null;
    const element = h('tr', { dataset: { id: message.id } },
      checkbox ? h('td', { class: 'select' }, checkbox) : null,
      h('td', { class: 'mono' }, h('a', { href: `#/messages/${message.id}` }, message.id)),
      h('td', { class: 'num' }, String(message.priority)),
      h('td', { class: 'num' }, `${message.attempts} / ${message.max_attempts}`),
      h('td', {}, time(message.enqueued_at)),
      h('td', {}, time(due(message)), ' ', h('span', { class: 'muted' }, relative(due(message)))),
      h('td', { class: 'error-text' }, message.last_error ? message.last_error.message : ''));
    return { element, checkbox, signature: JSON.stringify(message) };
  }

  renderTable(page) {
    if (!this.rows) this.buildTable();
    const messages = page.messages;
    this.nextCursor = page.next_cursor;
    this.shown = messages.map((message) => message.id);
    for (const id of [...this.selected]) if (!this.shown.includes(id)) this.selected.delete(id);
    // A row whose message did not change is the same element as before; the others are new.
    const rows = new Map();
    for (const message of messages) {
      const old = this.rows.get(message.id);
      const signature = JSON.stringify(message);
      rows.set(message.id, old && old.signature === signature ? old : this.row(message));
    }
    this.rows = rows;
    const elements = [...rows.values()].map((row) => row.element);
    const unchanged = elements.length === this.tbody.children.length
      && elements.every((element, index) => this.tbody.children[index] === element);
    if (!unchanged) this.tbody.replaceChildren(...elements);
    for (const [id, row] of rows) if (row.checkbox) row.checkbox.checked = this.selected.has(id);
    this.selectAll.checked = messages.length > 0 && this.selected.size === messages.length;
    const filtered = this.header || this.error;
    this.messageTable.hidden = messages.length === 0 && Boolean(this.nextCursor);
    this.emptyNote.hidden = messages.length > 0;
    this.emptyNote.textContent = filtered
      ? `No ${this.state} message on this page matches the filter.`
      : `No ${this.state} messages.`;
    const pageNumber = this.cursors.length;
    this.previous.disabled = pageNumber === 1;
    this.next.disabled = !this.nextCursor;
    this.pageLabel.textContent = ` Page ${pageNumber} ${filtered && this.nextCursor ? '(a filtered page may hold fewer than 50; follow Next) ' : ''}`;
  }

  /** The bar of actions on the selected messages, built once and shown while any is selected. */
  renderBulk() {
    if (!this.bulkButtons) {
      const offer = (action, label, handler, kind) => (ACTIONS[action].includes(this.state)
        ? h('button', { type: 'button', class: kind || '', dataset: { action: `bulk-${action}` }, onclick: handler }, label)
        : null);
      this.bulkCount = h('span', {});
      this.bulkButtons = [
        offer('retry', 'Retry now', () => this.bulkRetry(), 'primary'),
        offer('reschedule', 'Reschedule…', () => this.bulkReschedule()),
        offer('delete', 'Delete…', () => this.bulkDelete(), 'danger'),
      ];
      fill(this.bulk, this.bulkCount, this.bulkButtons);
    }
    const count = this.selected.size;
    this.bulk.hidden = count === 0;
    this.bulkCount.textContent = `${count} selected: `;
  }

  /** Runs one request per selected message and says how it went. */
  async runBulk(verb, work) {
    const ids = [...this.selected];
    const failures = await forEachLimited(ids, BULK_CONCURRENCY, work);
    this.selected.clear();
    if (failures.length) flash(summarise(failures, ids.length, verb));
    else flash(`${ids.length} message${ids.length === 1 ? '' : 's'} ${verb}.`);
    this.refresh();
  }

  async bulkRetry() {
    const reset = h('input', { type: 'checkbox', name: 'reset_attempts' });
    const go = await modal(`Retry ${this.selected.size} messages now`, h('div', {},
      h('p', {}, 'They go back to ready at once.'),
      h('label', {}, reset, ' Reset their attempts (each gets max_attempts new deliveries)')),
    [{ label: 'Cancel', value: null }, { label: 'Retry now', value: true, kind: 'primary' }]);
    if (!go) return;
    const query = reset.checked ? { reset_attempts: 'true' } : undefined;
    await this.runBulk('retried', (id) => request('POST', `v1/messages/${id}/retry`, { query }));
  }

  async bulkReschedule() {
    const when = await askDeliveryTime(`Reschedule ${this.selected.size} messages`, null);
    if (when === null) return;
    await this.runBulk('rescheduled', (id) => request('POST', `v1/messages/${id}/schedule`, { body: when }));
  }

  async bulkDelete() {
    const count = this.selected.size;
    if (!await confirmAction(`Delete ${count} messages`, `Delete ${count} ${this.state} message${count === 1 ? '' : 's'} of ${this.name}? They are removed for good.`, 'Delete')) return;
    await this.runBulk('deleted', (id) => request('DELETE', `v1/messages/${id}`));
  }

  async pause(paused) {
    try {
      this.queue = (await request('POST', `${path(this.name)}/${paused ? 'pause' : 'resume'}`)).json;
      flash(paused ? `${this.name} is paused: nothing is leased until it is resumed.` : `${this.name} is delivering again.`);
      this.refresh();
    } catch (failure) {
      flash(failure);
    }
  }

  async redrive() {
    const queue = await get(path(this.name)).catch(() => this.queue);
    const count = queue.counts.dead;
    const reset = h('input', { type: 'checkbox', name: 'reset_attempts' });
    const result = await modal(`Redrive ${this.name}`, h('div', {},
      h('p', { class: 'preview' }, `${formatCount(count)} dead message${count === 1 ? '' : 's'} will go back to ready (messages that die meanwhile are included).`),
      h('label', {}, reset, ' Reset their attempts')),
    [{ label: 'Cancel', value: null }, { label: `Redrive ${formatCount(count)}`, value: true, kind: 'primary' }],
    async () => (await request('POST', `${path(this.name)}/redrive`, {
      query: reset.checked ? { reset_attempts: 'true' } : undefined,
    })).json);
    if (result) {
      flash(`${formatCount(result.redriven)} message${result.redriven === 1 ? '' : 's'} redriven to ready.`);
      this.refresh();
    }
  }

  async purge() {
    const counts = (await get(path(this.name)).catch(() => this.queue)).counts;
    const purgeable = STATES.filter((state) => state !== 'leased');
    const initial = purgeable.includes(this.state) ? this.state : 'dead';
    const choice = h('select', { name: 'state', 'aria-label': 'State to purge' }, purgeable.map((state) => h('option', {
      value: state, selected: state === initial,
    }, `${state} (${formatCount(counts[state])})`)));
    const warning = h('p', { class: 'preview' });
    const describe = () => {
      warning.textContent = `Deletes all ${formatCount(counts[choice.value])} ${choice.value} messages of ${this.name} for good, and any that enter that state while the purge runs.`;
    };
    choice.addEventListener('change', describe);
    describe();
    const result = await modal(`Purge ${this.name}`, h('div', {}, h('label', {}, 'State ', choice), warning,
      h('p', { class: 'muted' }, 'Leased messages belong to their consumers and cannot be purged.')),
    [{ label: 'Cancel', value: null }, { label: 'Purge', value: true, kind: 'danger' }],
    async () => (await request('DELETE', `${path(this.name)}/messages`, { query: { state: choice.value } })).json);
    if (result) {
      flash(`Purged ${formatCount(result.deleted)} ${result.state} message${result.deleted === 1 ? '' : 's'}.`);
      this.refresh();
    }
  }

  async settings() {
    const current = (await get(path(this.name)).catch(() => this.queue)).settings;
    const field = (name, label, value, step, help) => h('label', { class: 'field' }, h('span', {}, label),
      h('input', { type: 'number', name, value: value === null ? '' : String(value), step: step || '1', min: '0', placeholder: 'server default' }),
      h('small', { class: 'muted' }, help));
    const form = h('div', { class: 'settings' },
      h('p', { class: 'muted' }, 'An empty field takes the server\'s default. Saving replaces all of the queue\'s settings.'),
      field('max_attempts', 'Max attempts', current.max_attempts, '1', '1 to 1000 deliveries before a message is dead'),
      field('lease_ms', 'Lease (ms)', current.lease_ms, '1', 'how long a consumer holds a message'),
      field('backoff.initial_ms', 'Backoff initial (ms)', current.backoff.initial_ms, '1', 'wait after the first failure'),
      field('backoff.multiplier', 'Backoff multiplier', current.backoff.multiplier, '0.1', '1.0 to 100.0, per further failure'),
      field('backoff.max_ms', 'Backoff max (ms)', current.backoff.max_ms, '1', 'longest wait'),
      field('backoff.jitter', 'Backoff jitter', current.backoff.jitter, '0.01', '0 to 0.99, random spread'),
      field('retention_ms', 'Retention (ms)', current.retention_ms, '1', 'how long delivered messages stay; 0 removes them at the ack'),
      field('dead_retention_ms', 'Dead retention (ms)', current.dead_retention_ms, '1', 'empty: dead messages stay until a person acts'));
    const read = (name) => {
      const text = form.querySelector(`input[name="${name}"]`).value.trim();
      return text === '' ? null : Number(text);
    };
    const saved = await modal(`Settings of ${this.name}`, form,
      [{ label: 'Cancel', value: null }, { label: 'Save', value: true, kind: 'primary' }],
      async () => (await request('PUT', path(this.name), {
        body: {
          max_attempts: read('max_attempts'),
          lease_ms: read('lease_ms'),
          backoff: {
            initial_ms: read('backoff.initial_ms'),
            multiplier: read('backoff.multiplier'),
            max_ms: read('backoff.max_ms'),
            jitter: read('backoff.jitter'),
          },
          retention_ms: read('retention_ms'),
          dead_retention_ms: read('dead_retention_ms'),
        },
      })).json);
    if (saved) {
      flash(`Saved the settings of ${this.name}.`);
      this.refresh();
    }
  }
}

/**
 * Asks when to deliver: a local date and time, or now. Resolves with the body of
 * `POST /v1/messages/{id}/schedule` (`{deliver_at}` or `{delay_ms: 0}`), or null.
 */
export async function askDeliveryTime(title, currentMs) {
  const initial = currentMs && currentMs > Date.now() ? currentMs : Date.now() + 3600000;
  const input = h('input', { type: 'datetime-local', name: 'deliver_at', step: '1', value: toLocalInput(initial), required: true });
  const choice = await modal(title, h('div', {},
    h('label', {}, 'Deliver at (your time zone) ', input),
    h('p', { class: 'muted' }, 'A time in the future makes the messages scheduled; a past time or "Deliver now" makes them ready at once.')),
  [{ label: 'Cancel', value: null }, { label: 'Deliver now', value: 'now', action: 'now' },
    { label: 'Reschedule', value: 'at', kind: 'primary' }]);
  if (choice === 'now') return { delay_ms: 0 };
  if (choice !== 'at') return null;
  const at = fromLocalInput(input.value);
  if (Number.isNaN(at)) {
    flash(new ApiFailure(0, 'invalid_time', `"${input.value}" is not a date and time.`, 'Pick a date and a time.'));
    return null;
  }
  return { deliver_at: at };
}
