// Building the page: elements, text, times, dialogs and notices.
//
// Every piece of text that comes from the server (bodies, headers, error texts, names) enters the
// page through `h` as a child or an attribute value, which the browser treats as text: nothing
// here parses markup, so `<script>` in a message is shown as those characters.

/** Creates an element. `props`: `class`, `dataset`, `on<event>` listeners, properties of the
 * element (`value`, `checked`, `hidden`, `disabled`) and attributes; children are nodes or text. */
export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') element.className = value;
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (['value', 'checked', 'hidden', 'disabled', 'selected'].includes(name)) {
      element[name] = value;
    } else element.setAttribute(name, value === true ? '' : String(value));
  }
  append(element, children);
  return element;
}

/** Replaces an element's children; like `h`, absent children (null, false) are skipped. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** An SVG element (for the rate charts), with attributes only. */
export function svg(tag, attributes, ...children) {
  const element = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

/** The message states, in the order the API lists them. */
export const STATES = ['scheduled', 'ready', 'leased', 'retrying', 'dead', 'delivered'];

/** What each state means, for tooltips. */
export const STATE_MEANING = {
  scheduled: 'waiting for its delivery time',
  ready: 'waiting for a consumer',
  leased: 'held by a consumer',
  retrying: 'failed; waiting for its backoff before the next delivery',
  dead: 'failed for good; waits for a person',
  delivered: 'acked by a consumer; kept for the retention period',
};

export function stateBadge(state) {
  return h('span', { class: `badge state-${state}`, title: STATE_MEANING[state] || '' }, state);
}

const pad = (number, width = 2) => String(number).padStart(width, '0');

/** `2030-01-31 09:00:00` in the browser's time zone. */
export function formatTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const date = new Date(ms);
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/** A time element showing the local time, with the UTC time as its tooltip. */
export function time(ms) {
  if (ms === null || ms === undefined) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toISOString() },
    formatTime(ms));
}

/** `850 ms`, `12 s`, `4 min 10 s`, `3 h 5 min`, `2 d 4 h`. */
export function formatDuration(ms) {
  if (ms === null || ms === undefined) return '—';
  const abs = Math.abs(ms);
  if (abs < 1000) return `${Math.round(abs)} ms`;
  const s = Math.floor(abs / 1000);
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  if (min < 60) return s % 60 ? `${min} min ${s % 60} s` : `${min} min`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return min % 60 ? `${hours} h ${min % 60} min` : `${hours} h`;
  const days = Math.floor(hours / 24);
  return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
}

/** `in 5 min` or `5 min ago`, against the browser's clock. */
export function relative(ms) {
  if (ms === null || ms === undefined) return '';
  const delta = ms - Date.now();
  return delta >= 0 ? `in ${formatDuration(delta)}` : `${formatDuration(-delta)} ago`;
}

export function formatCount(count) {
  return Number(count || 0).toLocaleString('en-US');
}

/** A local `datetime-local` value for epoch ms (seconds precision). */
export function toLocalInput(ms) {
  return formatTime(ms).replace(' ', 'T');
}

/** Epoch ms from a `datetime-local` value (the browser's time zone), or NaN. */
export function fromLocalInput(value) {
  return value ? new Date(value).getTime() : NaN;
}

/**
 * A modal dialog. `content` is any node; `buttons` are `{label, value, kind, action}`; the last
 * one is the form's submit button (Enter presses it). Resolves with the value of the button
 * pressed, or null when dismissed. With `submit` (async, given the value), the dialog stays open
 * while it runs, shows its failure (the server's error, as given) inside the dialog and stays
 * open then; it resolves with what `submit` returned.
 */
export function modal(title, content, buttons, submit) {
  return new Promise((resolve) => {
    let result = null;
    const dialog = h('dialog', { class: 'modal', 'aria-label': title });
    const problem = h('div', { class: 'flash error', role: 'alert', hidden: true });
    const close = (value) => {
      result = value;
      dialog.close();
    };
    const submitValue = buttons[buttons.length - 1].value;
    const buttonRow = h('div', { class: 'actions' }, buttons.map((button) => h('button', {
      type: button.value === submitValue ? 'submit' : 'button',
      class: button.kind || '',
      dataset: { action: button.action || (button.value === null ? 'cancel' : 'confirm') },
      onclick: button.value === submitValue ? undefined : () => close(button.value),
    }, button.label)));
    const form = h('form', {
      onsubmit: async (event) => {
        event.preventDefault();
        if (!submit) {
          close(submitValue);
          return;
        }
        for (const button of buttonRow.querySelectorAll('button')) button.disabled = true;
        try {
          close(await submit(submitValue));
        } catch (failure) {
          fill(problem, describeFailure(failure));
          problem.hidden = false;
        } finally {
          for (const button of buttonRow.querySelectorAll('button')) button.disabled = false;
        }
      },
    }, h('h2', {}, title), content, problem, buttonRow);
    dialog.append(form);
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(result);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A refusal as nodes: `403 forbidden` and the server's message, then its hint. */
function describeFailure(failure) {
  const status = failure.status ? `${failure.status} ` : '';
  return [
    h('strong', { class: 'code' }, `${status}${failure.code || 'error'}`),
    h('span', { class: 'message' }, ` ${failure.message}`),
    failure.hint ? h('div', { class: 'hint' }, failure.hint) : null,
  ].filter(Boolean);
}

/** Asks before a destructive action; resolves true when confirmed. */
export async function confirmAction(title, text, confirmLabel) {
  const value = await modal(title, h('p', {}, text), [
    { label: 'Cancel', value: null },
    { label: confirmLabel, value: true, kind: 'danger' },
  ]);
  return value === true;
}

/**
 * Shows the outcome of an action at the top of the page: an API refusal with its status, code,
 * message and hint exactly as the server gave them, or a line of success.
 */
export function flash(outcome) {
  const box = document.getElementById('flash');
  if (!box) return;
  box.replaceChildren();
  box.hidden = false;
  if (typeof outcome === 'string') {
    box.className = 'flash ok';
    box.append(h('span', {}, outcome));
  } else {
    box.className = 'flash error';
    box.append(...describeFailure(outcome));
  }
  box.append(h('button', {
    class: 'link dismiss', type: 'button', 'aria-label': 'Dismiss', onclick: () => hideFlash(),
  }, '×'));
}

export function hideFlash() {
  const box = document.getElementById('flash');
  if (box) {
    box.hidden = true;
    box.replaceChildren();
  }
}

/** Runs `work` on every item, `concurrency` at a time; resolves with the failures. */
export async function forEachLimited(items, concurrency, work) {
  const failures = [];
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const item = items[next++];
      try {
        await work(item);
      } catch (error) {
        failures.push({ item, error });
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return failures;
}

/** Calls `fn` at most once per `ms`, trailing: bursts of calls become one call. */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}
