// Message bodies as the server stores them: JSON kept byte for byte, or bytes in base64.
//
// A JSON body is never parsed into numbers and written back: `JSON.parse` would round
// 12345678901234567890 and drop the spelling of 2.50. The page reads the body's text out of the
// response as it is, and pretty-prints it by re-indenting its tokens, so every literal is shown,
// and sent back on an edit, exactly as stored.

const SPACE = ' \t\r\n';

function skipSpace(text, index) {
  while (index < text.length && SPACE.includes(text[index])) index += 1;
  return index;
}

/** The index just past the string that starts at `index` (a `"`). */
function endOfString(text, index) {
  let at = index + 1;
  while (at < text.length) {
    if (text[at] === '\\') at += 2;
    else if (text[at] === '"') return at + 1;
    else at += 1;
  }
  throw new Error('unterminated string');
}

/** The index just past the JSON value that starts at `index`. */
function endOfValue(text, start) {
  let index = skipSpace(text, start);
  const first = text[index];
  if (first === '"') return endOfString(text, index);
  if (first === '{' || first === '[') {
    let depth = 0;
    while (index < text.length) {
      const char = text[index];
      if (char === '"') {
        index = endOfString(text, index);
        continue;
      }
      if (char === '{' || char === '[') depth += 1;
      else if (char === '}' || char === ']') {
        depth -= 1;
        if (depth === 0) return index + 1;
      }
      index += 1;
    }
    throw new Error('unterminated value');
  }
  while (index < text.length && !',}] \t\r\n'.includes(text[index])) index += 1;
  return index;
}

/** The raw text of a top-level field of the JSON object `text`, or null if it has none. */
export function rawField(text, key) {
  let index = skipSpace(text, 0);
  if (text[index] !== '{') return null;
  index += 1;
  for (;;) {
    index = skipSpace(text, index);
    if (text[index] !== '"') return null;
    const keyEnd = endOfString(text, index);
    const name = JSON.parse(text.slice(index, keyEnd));
    index = skipSpace(text, keyEnd) + 1;
    const start = skipSpace(text, index);
    const end = endOfValue(text, start);
    if (name === key) return text.slice(start, end);
    index = skipSpace(text, end);
    if (text[index] !== ',') return null;
    index += 1;
  }
}

/** Re-indents JSON text by two spaces per level; strings and literals are kept as written. */
export function prettyJson(raw) {
  let out = '';
  let depth = 0;
  let index = 0;
  const newline = () => `\n${'  '.repeat(depth)}`;
  while (index < raw.length) {
    const char = raw[index];
    if (SPACE.includes(char)) {
      index += 1;
    } else if (char === '"') {
      const end = endOfString(raw, index);
      out += raw.slice(index, end);
      index = end;
    } else if (char === '{' || char === '[') {
      const next = skipSpace(raw, index + 1);
      if (raw[next] === (char === '{' ? '}' : ']')) {
        out += char + raw[next];
        index = next + 1;
      } else {
        depth += 1;
        out += char + newline();
        index += 1;
      }
    } else if (char === '}' || char === ']') {
      depth = Math.max(0, depth - 1);
      out += newline() + char;
      index += 1;
    } else if (char === ',') {
      out += `,${newline()}`;
      index += 1;
    } else if (char === ':') {
      out += ': ';
      index += 1;
    } else {
      const start = index;
      while (index < raw.length && !' \t\r\n,:{}[]"'.includes(raw[index])) index += 1;
      out += raw.slice(start, index);
    }
  }
  return out;
}

export function base64ToBytes(text) {
  const binary = window.atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index += 1) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

/** The bytes as UTF-8 text, or null when they are not valid UTF-8. */
export function utf8(bytes) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (_) {
    return null;
  }
}

/** Bytes shown in a hex dump (the first ones; the rest is summarised). */
export const HEX_BYTES_MAX = 64 * 1024;

/** `00000000  48 65 6c 6c 6f …  |Hello…|`, 16 bytes a line. */
export function hexDump(bytes) {
  const lines = [];
  const shown = Math.min(bytes.length, HEX_BYTES_MAX);
  for (let offset = 0; offset < shown; offset += 16) {
    const row = bytes.subarray(offset, Math.min(offset + 16, shown));
    const hex = Array.from(row, (byte) => byte.toString(16).padStart(2, '0')).join(' ');
    const ascii = Array.from(row, (byte) => (byte >= 0x20 && byte < 0x7f
      ? String.fromCharCode(byte) : '.')).join('');
    lines.push(`${offset.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  |${ascii}|`);
  }
  if (bytes.length > shown) lines.push(`… ${bytes.length - shown} more bytes`);
  return lines.join('\n');
}

/**
 * What a message body is, from the response text of `GET /v1/messages/{id}`:
 * `{kind: 'json', raw}` (any JSON but a string), `{kind: 'text', raw, text}` (a JSON string), or
 * `{kind: 'bytes', base64, bytes, text}` (`text` null unless the bytes are UTF-8).
 */
export function bodyOf(responseText, view) {
  if (typeof view.body_base64 === 'string') {
    const bytes = base64ToBytes(view.body_base64);
    return { kind: 'bytes', base64: view.body_base64, bytes, text: utf8(bytes) };
  }
  const raw = rawField(responseText, 'body');
  if (raw === null) return { kind: 'json', raw: 'null' };
  if (raw.startsWith('"')) return { kind: 'text', raw, text: JSON.parse(raw) };
  return { kind: 'json', raw };
}
