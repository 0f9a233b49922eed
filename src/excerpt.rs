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
    let shown = crate::provider::clean(text, KEEP);
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
    crate::provider::clean(text, LINE)
}

/// [`quoted`] for a column that may be NULL.
pub fn opt(text: Option<&str>) -> String {
    text.map_or_else(|| "NULL".to_owned(), quoted)
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
}
