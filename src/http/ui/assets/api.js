// The page's only way to the server: the HTTP API under v1/, with the tab's token.
//
// The token is kept in sessionStorage: it lives as long as the tab, is not shared with other tabs
// and is never written to a cookie, so no other site can make the browser send it. Every call
// carries it as `Authorization: Bearer`. Refusals come back as `ApiFailure` with the server's own
// status, code, message and hint, which the page shows as they are.

const TOKEN_KEY = 'outboxd.token';

/** The API lives beside the page: `/` normally, `/prefix/` behind a proxy that adds one. */
const base = new URL('./', window.location.href);

export function token() {
  return window.sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(secret) {
  if (secret) window.sessionStorage.setItem(TOKEN_KEY, secret);
  else window.sessionStorage.removeItem(TOKEN_KEY);
}

/** A refusal or a transport failure, as the API gives it. */
export class ApiFailure extends Error {
  constructor(status, code, message, hint) {
    super(message);
    this.status = status;
    this.code = code;
    this.hint = hint || '';
  }
}

let unauthorized = () => {};

/** Called with the failure whenever the server answers 401 (no token, or an unknown one). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

function headers(extra) {
  const all = { ...extra };
  const secret = token();
  if (secret) all.Authorization = `Bearer ${secret}`;
  return all;
}

function address(path, query) {
  const url = new URL(path, base);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, value);
  }
  return url;
}

async function failureOf(response) {
  const text = await response.text().catch(() => '');
  let error = null;
  try {
    error = JSON.parse(text).error;
  } catch (_) {
    error = null;
  }
  if (error && typeof error.code === 'string') {
    return new ApiFailure(response.status, error.code, String(error.message || ''),
      String(error.hint || ''));
  }
  return new ApiFailure(response.status, `http_${response.status}`,
    `The server answered ${response.status} ${response.statusText}`.trim(), '');
}

/**
 * One API call. `body` is sent as JSON; `rawBody` is sent as it is (already JSON text, e.g. a
 * message body whose numbers must keep every digit). Resolves with `{json, text}`.
 */
export async function request(method, path, { query, body, rawBody } = {}) {
  const init = { method, headers: headers(), cache: 'no-store', credentials: 'omit' };
  if (rawBody !== undefined || body !== undefined) {
    init.body = rawBody !== undefined ? rawBody : JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(address(path, query), init);
  } catch (error) {
    throw new ApiFailure(0, 'unreachable', `The server did not answer (${error.message}).`,
      'Check that outboxd is running and reachable from this browser, then try again.');
  }
  if (!response.ok) {
    const failure = await failureOf(response);
    if (response.status === 401) unauthorized(failure);
    throw failure;
  }
  const text = await response.text();
  return { text, json: text ? JSON.parse(text) : null };
}

export async function get(path, query) {
  return (await request('GET', path, { query })).json;
}

/** `GET /healthz`: true when the server takes writes. */
export async function healthy() {
  try {
    const response = await fetch(address('healthz'), { cache: 'no-store', credentials: 'omit' });
    return response.ok;
  } catch (_) {
    return false;
  }
}

/**
 * Turns the bytes of an event stream, in chunks cut anywhere, into events `{id, kind, data}`
 * (`data` the text of its `data:` lines). Takes LF, CRLF and CR line ends (a proxy may rewrite
 * them) and skips comments.
 */
export class EventStreamParser {
  constructor() {
    this.buffer = '';
    this.carry = '';
  }

  /** Feeds one chunk of text; returns the events it completed. */
  push(chunk) {
    // A CR at the end of a chunk waits for the next one, which may start with its LF.
    let text = this.carry + chunk;
    this.carry = text.endsWith('\r') ? '\r' : '';
    if (this.carry) text = text.slice(0, -1);
    this.buffer += text.replace(/\r\n?/g, '\n');
    const events = [];
    let end = this.buffer.indexOf('\n\n');
    while (end >= 0) {
      const event = parseBlock(this.buffer.slice(0, end));
      if (event) events.push(event);
      this.buffer = this.buffer.slice(end + 2);
      end = this.buffer.indexOf('\n\n');
    }
    return events;
  }
}

function parseBlock(block) {
  let id = null;
  let kind = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') id = value;
    else if (field === 'event') kind = value;
    else if (field === 'data') data.push(value);
  }
  if (id === null && data.length === 0) return null;
  return { id, kind, data: data.join('\n') };
}

/**
 * Follows `GET /v1/events` (Server-Sent Events) with `fetch`, so that the token travels in a
 * header as on every other call (`EventSource` cannot send one). Reconnects with `Last-Event-ID`
 * after a drop, waiting 1 s, then longer; stops for good on 401 or 403.
 *
 * `handlers`: `event(data)`, `missed(data)`, `state(name, failure)` with name `open`, `closed`
 * (will retry) or `refused` (will not).
 */
export function followEvents(handlers) {
  let lastId = null;
  let stopped = false;
  let controller = null;
  let timer = null;
  let retryMs = 1000;

  function dispatch(event) {
    if (event.id) lastId = event.id;
    if (!event.data) return;
    let parsed;
    try {
      parsed = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    if (event.kind === 'missed') handlers.missed(parsed);
    else handlers.event(parsed);
  }

  async function connect() {
    controller = new AbortController();
    const extra = { Accept: 'text/event-stream' };
    if (lastId) extra['Last-Event-ID'] = lastId;
    let failure = null;
    try {
      const response = await fetch(address('v1/events'), {
        headers: headers(extra), cache: 'no-store', credentials: 'omit', signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        handlers.state('refused', await failureOf(response));
        return;
      }
      if (!response.ok) throw await failureOf(response);
      handlers.state('open', null);
      retryMs = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new EventStreamParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value).forEach(dispatch);
      }
    } catch (error) {
      failure = error;
    }
    if (stopped) return;
    handlers.state('closed', failure);
    timer = setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
  }

  connect();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (controller) controller.abort();
    },
  };
}

/**
 * What the tab's token may do, from `GET /v1/whoami`: `enabled` false when the server has no
 * tokens (everything is allowed), else the token's `name`, `roles` and `queues` pattern. The page
 * hides what the token may not do; the server decides regardless.
 */
export const access = { enabled: false, name: '', roles: [], queues: '*' };

export async function loadAccess() {
  const who = await get('v1/whoami');
  access.enabled = Boolean(who.access_control);
  access.name = who.token ? who.token.name : '';
  access.roles = who.token ? who.token.roles : [];
  access.queues = who.token ? who.token.queues : '*';
  return access;
}

/** A queue pattern's rule: `*` matches any run of characters, the rest is literal. */
export function patternMatches(pattern, queue) {
  const parts = pattern.split('*');
  if (parts.length === 1) return pattern === queue;
  const first = parts[0];
  const last = parts[parts.length - 1];
  if (!queue.startsWith(first)) return false;
  let rest = queue.slice(first.length);
  for (const part of parts.slice(1, -1)) {
    const at = rest.indexOf(part);
    if (at < 0) return false;
    rest = rest.slice(at + part.length);
  }
  return rest.length >= last.length && rest.endsWith(last);
}

/** Whether the token holds `role` on `queue` (any queue it covers when `queue` is omitted). */
export function may(role, queue) {
  if (!access.enabled) return true;
  if (!access.roles.includes(role)) return false;
  return queue === undefined || patternMatches(access.queues, queue);
}
