//! How values from the API are shown to people: bodies, times, ages, one-line cells.
//!
//! Bodies are shown in the form the API returns them: a JSON body as its JSON text (a JSON string
//! as the text it holds), a `body_base64` body decoded when it is UTF-8 text and as
//! `base64:<text>` otherwise.

use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::time::{Duration, UNIX_EPOCH};

/// Widest body or error text in a table cell, in characters; longer ones end in `…`.
pub const CELL_CHARS_MAX: usize = 60;

/// A message body as the API sends it: `body` (any JSON, `null` included) or `body_base64`.
#[derive(Deserialize, Default)]
pub struct Body {
    #[serde(default, deserialize_with = "present")]
    pub body: Option<Box<RawValue>>,
    #[serde(default)]
    pub body_base64: Option<String>,
}

/// Keeps a JSON `null` body as a body (serde would read it as a missing one).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

impl Body {
    /// The body as text: a JSON string's content, other JSON as sent, bytes decoded when they are
    /// UTF-8 and as `base64:…` when they are not.
    pub fn text(&self) -> String {
        if let Some(raw) = &self.body {
            return match serde_json::from_str::<String>(raw.get()) {
                Ok(text) => text,
                Err(_) => raw.get().to_string(),
            };
        }
        let Some(encoded) = &self.body_base64 else {
            return String::new();
        };
        match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => format!("base64:{encoded}"),
            },
            Err(_) => format!("base64:{encoded}"),
        }
    }
}

/// Text made safe for one table cell: control characters escaped (`\n`, `\t`, `\u{1b}`), and cut
/// to `chars_max` characters with a trailing `…`.
pub fn one_line(text: &str, chars_max: usize) -> String {
    let mut line = String::new();
    let mut count = 0;
    for character in text.chars() {
        let piece = match character {
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            '\t' => "\\t".to_string(),
            control if control.is_control() => control.escape_unicode().to_string(),
            other => other.to_string(),
        };
        let piece_count = piece.chars().count();
        if count + piece_count > chars_max {
            line.push('…');
            return line;
        }
        count += piece_count;
        line.push_str(&piece);
    }
    line
}

/// An epoch-milliseconds time as RFC 3339 UTC, to the second: `2030-01-31T09:00:00Z`.
pub fn time(epoch_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(epoch_ms)).to_string()
}

/// Like [`time`], to the millisecond, for event lines: `2030-01-31T09:00:00.123Z`.
pub fn time_ms(epoch_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(epoch_ms)).to_string()
}

/// An optional time; `-` when absent.
pub fn optional_time(epoch_ms: Option<u64>) -> String {
    epoch_ms.map_or_else(|| "-".to_string(), time)
}

/// A duration in its two largest units: `850ms`, `12s`, `3m04s`, `2h05m`, `3d04h`.
pub fn age(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0 => format!("{ms}ms"),
        1..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..=86_399 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Body {
        serde_json::from_str(json).expect("test body parses")
    }

    #[test]
    fn bodies_show_in_the_api_encoding() {
        assert_eq!(body(r#"{"body":"hello"}"#).text(), "hello");
        assert_eq!(body(r#"{"body":{"to": "ada"}}"#).text(), r#"{"to": "ada"}"#);
        assert_eq!(body(r#"{"body":null}"#).text(), "null");
        assert_eq!(body(r#"{"body_base64":"aGk="}"#).text(), "hi");
        assert_eq!(body(r#"{"body_base64":"AAEC/w=="}"#).text(), "base64:AAEC/w==");
    }

    #[test]
    fn cells_are_one_line_and_cut() {
        assert_eq!(one_line("a\nb\tc", 60), "a\\nb\\tc");
        assert_eq!(one_line("abcdef", 4), "abcd…");
        assert_eq!(one_line("\u{1b}[31m", 60), "\\u{1b}[31m");
    }

    #[test]
    fn times_and_ages_read_well() {
        assert_eq!(time(1_896_080_400_000), "2030-01-31T09:00:00Z");
        assert_eq!(time_ms(1_896_080_400_123), "2030-01-31T09:00:00.123Z");
        assert_eq!(optional_time(None), "-");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_000), "12s");
        assert_eq!(age(184_000), "3m04s");
        assert_eq!(age(7_500_000), "2h05m");
        assert_eq!(age(273_600_000), "3d04h");
    }
}
