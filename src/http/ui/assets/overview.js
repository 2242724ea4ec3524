// The queues overview: every queue with its counts per state, the age of its oldest ready
// message, its rates over the last minutes, whether it is paused, and what needs attention.

import { flash, formatCount, formatDuration, fill, h, STATE_MEANING, STATES, svg, throttle } from './dom.js';
import { get } from './api.js';

/** How often the overview reads everything again, events or not: ages and rates move by
 * themselves. */
const REFRESH_MS = 5000;
/** The oldest ready message has waited this long when a growing backlog is worth a marker. */
export const BACKLOG_AGE_MS = 10000;
/** Buckets of the rates that make the last minute (the rates come in 5 s buckets). */
const MINUTE_BUCKETS = 12;

/** Sums of the last minute of a queue's rates (`series` from GET /v1/rates, or undefined). */
export function lastMinute(series) {
  const sum = (values) => (values || []).slice(-MINUTE_BUCKETS).reduce((a, b) => a + b, 0);
  return {
    enqueued: sum(series && series.enqueued),
    acked: sum(series && series.acked),
    failed: sum(series && series.failed),
  };
}

/**
 * Why a queue needs a person, as markers: dead messages; paused; a growing backlog (in the last
 * minute more messages were enqueued than delivered, and the oldest ready message has waited at
 * least BACKLOG_AGE_MS).
 */
export function attentionOf(queue, series) {
  const marks = [];
  if (queue.counts.dead > 0) {
    marks.push({
      key: 'dead', text: `${formatCount(queue.counts.dead)} dead`,
      title: 'Dead messages are not retried by themselves: retry, redrive, edit or delete them.',
    });
  }
  if (queue.paused) {
    marks.push({ key: 'paused', text: 'paused', title: 'A paused queue leases nothing until it is resumed.' });
  }
  const minute = lastMinute(series);
  const age = queue.oldest_ready_age_ms;
  if (minute.enqueued > minute.acked && age !== null && age >= BACKLOG_AGE_MS) {
    marks.push({
      key: 'backlog', text: 'backlog growing',
      title: `In the last minute ${minute.enqueued} were enqueued and ${minute.acked} delivered; the oldest ready message has waited ${formatDuration(age)}. Consumers are not keeping up (or are stopped).`,
    });
  }
  return marks;
}

export function markers(marks) {
  return h('span', { class: 'markers' }, marks.map((mark) => h('span', {
    class: `marker marker-${mark.key}`, title: mark.title, dataset: { marker: mark.key },
  }, mark.text)));
}

/** A small chart of enqueued, delivered and failed messages per 5 s over the rates' window. */
export function rateChart(series, width = 120, height = 28) {
  const lines = [['enqueued', 'line-enqueued'], ['acked', 'line-acked'], ['failed', 'line-failed']];
  const values = series ? lines.map(([key]) => series[key]) : [];
  const top = Math.max(1, ...values.flat());
  const chart = svg('svg', {
    class: 'spark', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
  });
  const minute = lastMinute(series);
  chart.append(svg('title', {}, `Last minute: ${minute.enqueued} enqueued, ${minute.acked} delivered, ${minute.failed} failed deliveries (5 s steps over the last 5 minutes)`));
  lines.forEach(([key, css], index) => {
    const points = values[index];
    if (!points || (key === 'failed' && !points.some(Boolean))) return;
    const step = width / Math.max(1, points.length - 1);
    const path = points.map((value, at) => `${(at * step).toFixed(1)},${(height - 1 - (value / top) * (height - 2)).toFixed(1)}`).join(' ');
    chart.append(svg('polyline', { class: css, points: path }));
  });
  return chart;
}

/** A minute's count as a rate: per second from one a second up, else per minute. */
function rate(count) {
  if (count < 60) return `${count}/min`;
  const perSecond = count / 60;
  return `${perSecond >= 10 ? perSecond.toFixed(0) : perSecond.toFixed(1)}/s`;
}

export class OverviewView {
  constructor() {
    this.title = 'Queues';
    this.summary = h('p', { class: 'summary muted' });
    this.body = h('div', { class: 'table-wrap' });
    this.element = h('section', { class: 'overview' }, h('h1', {}, 'Queues'), this.summary, this.body);
    this.queues = null;
    this.rates = new Map();
    this.refreshSoon = throttle(() => this.refresh(), 500);
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  async loadRates() {
    const rates = await get('v1/rates');
    this.rates = new Map(rates.queues.map((series) => [series.name, series]));
  }

  async refresh() {
    this.generation = (this.generation || 0) + 1;
    const generation = this.generation;
    try {
      const [queues] = await Promise.all([get('v1/queues'), this.loadRates()]);
      if (generation !== this.generation) return;
      this.queues = queues.queues;
      this.render();
    } catch (failure) {
      if (failure.status !== 401) flash(failure);
    }
  }

  onEvent() {
    this.refreshSoon();
  }

  destroy() {
    clearInterval(this.timer);
  }

  /**
   * Draws the queues. Each queue keeps its row, and each row its links, from one refresh to the
   * next (only their text changes): the overview refreshes on every event, and a link replaced
   * under the pointer would lose the click a person was making.
   */
  render() {
    if (!this.queues) return;
    const needy = this.queues.filter((queue) => attentionOf(queue, this.rates.get(queue.name)).length);
    this.summary.textContent = `${this.queues.length} queue${this.queues.length === 1 ? '' : 's'}` +
      (needy.length ? `, ${needy.length} needing attention` : ', none needs attention');
    if (this.queues.length === 0) {
      this.rows = null;
      fill(this.body, h('p', { class: 'empty' },
        'No queues yet. A queue appears with its first message: ',
        h('code', {}, 'curl -X POST …/v1/queues/emails/messages -d \'{"messages": [{"body": "hello"}]}\'')));
      return;
    }
    if (!this.rows) {
      this.rows = new Map();
      this.tbody = h('tbody', {});
      const head = h('tr', {}, h('th', {}, 'Queue'), h('th', {}, 'Delivery'),
        STATES.map((state) => h('th', { class: 'num', title: STATE_MEANING[state] }, state)),
        h('th', { class: 'num', title: 'How long the oldest ready message has waited' }, 'Oldest ready'),
        h('th', {}, 'Last 5 minutes'),
        h('th', {}, 'Needs attention'));
      fill(this.body, h('table', { class: 'queues' }, h('thead', {}, head), this.tbody));
    }
    const rows = new Map();
    for (const queue of this.queues) {
      const row = this.rows.get(queue.name) || this.row(queue.name);
      this.update(row, queue);
      rows.set(queue.name, row);
    }
    this.rows = rows;
    const elements = [...rows.values()].map((row) => row.element);
    const unchanged = elements.length === this.tbody.children.length
      && elements.every((element, index) => this.tbody.children[index] === element);
    if (!unchanged) this.tbody.replaceChildren(...elements);
    window.performance.mark('outboxd:overview');
  }

  /** A queue's row, empty: its cells are filled by `update`. */
  row(name) {
    const link = (state) => `#/queues/${encodeURIComponent(name)}?state=${state}`;
    const counts = new Map(STATES.map((state) => [state, h('a', { href: link(state) })]));
    const cells = {
      delivery: h('td', { class: 'delivery' }),
      counts: STATES.map((state) => h('td', { class: `num count count-${state}`, dataset: { state } }, counts.get(state))),
      age: h('td', { class: 'num age' }),
      rates: h('td', { class: 'rates' }),
      attention: h('td', { class: 'attention' }),
    };
    const element = h('tr', { dataset: { queue: name } },
      h('td', { class: 'name' }, h('a', { href: `#/queues/${encodeURIComponent(name)}` }, name)),
      cells.delivery, cells.counts, cells.age, cells.rates, cells.attention);
    return { element, cells, counts };
  }

  /** Writes a queue's figures into its row. */
  update(row, queue) {
    const series = this.rates.get(queue.name);
    const marks = attentionOf(queue, series);
    const minute = lastMinute(series);
    row.element.className = marks.length ? 'needs-attention' : '';
    fill(row.cells.delivery, queue.paused
      ? h('span', { class: 'badge paused' }, 'paused')
      : h('span', { class: 'badge delivering' }, 'delivering'));
    STATES.forEach((state, index) => {
      row.counts.get(state).textContent = formatCount(queue.counts[state]);
      row.cells.counts[index].classList.toggle('nonzero', queue.counts[state] > 0);
    });
    row.cells.age.textContent = queue.oldest_ready_age_ms === null ? '—' : formatDuration(queue.oldest_ready_age_ms);
    fill(row.cells.rates, rateChart(series),
      h('span', { class: 'rate-text', title: 'over the last minute: enqueued, delivered, failed deliveries' },
        `${rate(minute.enqueued)} in · ${rate(minute.acked)} out`,
        minute.failed ? ` · ${rate(minute.failed)} failed` : ''));
    fill(row.cells.attention, markers(marks));
  }
}
