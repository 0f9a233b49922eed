//! Bounded copies of text that came from outside: a source row's columns, which may hold
//! anything (10 KB or 1 MB of random characters, control characters, an MCC of 40 digits).
//! Such text reaches an index (whose rows are limited to about 2.7 KB), a reason column and a
//! log line; unbounded, one row can stop a whole tick or fill the log. What is kept is enough to
//! find the row again: its first characters, its length and a hash of the whole.

use md5::{Digest, Md5};

/// Characters of the original kept in a copy.
pub const KEEP: usize = 64;

/// Whether `text` is kept whole: short enough for every index and line.
fn fits(text: &str) -> bool {
    text.chars().nth(KEEP).is_none()
}

/// The first hex digits of the MD5 of the whole text: not a security measure, an identifier
/// that tells two long values with the same beginning apart.
fn hash(text: &str) -> String {
    hex::encode(&Md5::digest(text.as_bytes())[..6])
}

/// The text for a column of the row that records it (`app_id`, `mcc`): itself when it fits,
/// else its first [`KEEP`] characters, an ellipsis and a hash of the whole, so that two long
/// values of one tick stay distinct in the unique index.
pub fn stored(text: &str) -> String {
    if fits(text) {
        return text.to_owned();
    }
    let head: String = text.chars().take(KEEP).collect();
    format!("{head}…#{}", hash(text))
}

/// The text for a message (a reason, a log line): quoted, control and bidi characters
/// escaped, and when it is long, its first [`KEEP`] characters followed by its length and hash.
pub fn quoted(text: &str) -> String {
    let shown = clean(text, KEEP);
    if fits(text) {
        return format!("\"{shown}\"");
    }
    format!(
        "\"{}\" ({} characters, md5 {}…)",
        shown.trim_end_matches('…'),
        text.chars().count(),
        hash(text)
    )
}

/// The most characters of an error message in one log line or health answer.
pub const LINE: usize = 1_000;

/// An error message (which may quote a source value, or the query itself) fit for one log
/// line: control characters escaped, at most [`LINE`] characters.
pub fn line(text: &str) -> String {
    clean(text, LINE)
}

/// [`quoted`] for a column that may be NULL.
pub fn opt(text: Option<&str>) -> String {
    text.map_or_else(|| "NULL".to_owned(), quoted)
}

/// Whether a character can drive a terminal or reorder what it shows: the C0 and C1 controls
/// (ESC starts a sequence; U+009B is one by itself), DEL, the line and paragraph separators,
/// and the bidirectional marks, embeddings, overrides and isolates (a right-to-left override
/// turns the rest of a line around).
pub fn drives_a_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Provider text made fit for one log line, one database field and a terminal: characters
/// that [drive a terminal](drives_a_terminal) escaped as Rust writes them (`\n`, `\u{1b}`,
/// `\u{202e}`), so that a `\n` in a reason cannot start a forged log line nor an ESC recolour
/// or clear the screen, and at most `max` characters, so that a reason cannot fill the log.
/// Everything the commands print that came from outside (the provider, the source, the
/// database) goes through it, or through [`clean_json`] when it is JSON.
pub fn clean(text: &str, max: usize) -> String {
    escape(text, max, false)
}

/// JSON made safe for a terminal without changing its value: the characters [`clean`]
/// escapes are written as JSON escapes (`\u001b`, `\u202e`), which serde leaves raw for
/// everything but C0. Newlines, carriage returns and tabs are left alone: in valid JSON they
/// can only be whitespace between tokens (inside a string serde has escaped them already).
pub fn clean_json(json: &str) -> String {
    escape(json, usize::MAX, true)
}

/// [`clean`] and [`clean_json`]: one rule, in Rust's escape syntax or JSON's.
fn escape(text: &str, max: usize, json: bool) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut used = 0;
    for c in text.chars() {
        let piece: String = if !drives_a_terminal(c) || (json && matches!(c, '\n' | '\r' | '\t')) {
            c.to_string()
        } else if json {
            // Every character the rule names is in the Basic Multilingual Plane.
            format!("\\u{:04x}", u32::from(c))
        } else {
            c.escape_default().collect()
        };
        let len = piece.chars().count();
        if used + len > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        used += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole_and_long_text_is_cut_with_its_length_and_hash() {
        assert_eq!(stored("appA"), "appA");
        assert_eq!(quoted("appA"), "\"appA\"");
        let long = "x".repeat(10_240);
        let kept = stored(&long);
        assert!(kept.starts_with(&"x".repeat(KEEP)), "{kept}");
        assert!(kept.chars().count() < 100, "{kept}");
        let shown = quoted(&long);
        assert!(shown.contains("10240 characters, md5 "), "{shown}");
        assert!(shown.chars().count() < 120, "{shown}");
    }

    #[test]
    fn two_long_values_with_one_beginning_stay_distinct() {
        let a = format!("{}a", "y".repeat(200));
        let b = format!("{}b", "y".repeat(200));
        assert_ne!(stored(&a), stored(&b));
    }

    #[test]
    fn control_characters_are_escaped_in_messages_but_kept_in_columns() {
        assert_eq!(quoted("ab\u{1b}[31m\ncd"), "\"ab\\u{1b}[31m\\ncd\"");
        assert_eq!(stored("ab\u{1b}c"), "ab\u{1b}c");
        assert_eq!(opt(None), "NULL");
    }

    #[test]
    fn a_copy_never_splits_a_character() {
        let wide = "界".repeat(1_000);
        assert!(stored(&wide).starts_with(&"界".repeat(KEEP)));
        assert!(quoted(&wide).contains("1000 characters"));
    }

    #[test]
    fn clean_escapes_line_breaks_and_controls_and_caps_the_length() {
        assert_eq!(clean("ip not allowed", 500), "ip not allowed");
        assert_eq!(
            clean("bad\n2026-01-01T00:00:00Z  INFO forged\r\u{1b}[31m", 500),
            "bad\\n2026-01-01T00:00:00Z  INFO forged\\r\\u{1b}[31m"
        );
        assert_eq!(clean("a\u{2028}b\u{202e}c", 500), "a\\u{2028}b\\u{202e}c");
        assert_eq!(
            clean("\u{9b}31m\u{200f}\u{7f}", 500),
            "\\u{9b}31m\\u{200f}\\u{7f}"
        );
        assert_eq!(clean("参数异常", 500), "参数异常");
        let long = clean(&"x".repeat(10_000), 500);
        assert_eq!(long.chars().count(), 501);
        assert!(long.ends_with('…'));
        // An escape is never cut in half.
        assert_eq!(clean("ab\n", 3), "ab…");
    }

    #[test]
    fn clean_json_escapes_the_same_characters_in_json_syntax_keeping_the_value() {
        let value = serde_json::json!({"app": "rtl\u{202e}Shop\u{1b}[2J\u{9b}1m\u{2066}x\u{7f}"});
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let cleaned = clean_json(&pretty);
        assert!(
            !cleaned.chars().any(|c| drives_a_terminal(c) && c != '\n'),
            "{cleaned:?}"
        );
        assert!(
            cleaned.contains(r"rtl\u202eShop\u001b[2J\u009b1m\u2066x\u007f"),
            "{cleaned}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&cleaned).unwrap(),
            value
        );
        assert_eq!(clean_json("{\r\n\t\"a\": 1\n}"), "{\r\n\t\"a\": 1\n}");
    }
}
