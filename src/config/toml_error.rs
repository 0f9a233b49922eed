//! A TOML error as the operator reads it: one line with the line number and the key it is
//! about, and never a secret's value, whatever the file's layout. Kept apart from the settings
//! because it reads the raw text, not the parsed values.

use std::ops::Range;

/// A TOML error as one line: its line, the key it is about, and toml's message, which
/// never shows the line itself. toml's messages quote the value that failed to deserialize
/// (`api_secret = 1234` is a type error that would print 1234), so when the failing value
/// sits under a secret key, in any layout (section, inline table, dotted or quoted key), the
/// message is replaced; as a second guard, so is a message that contains a secret's text.
pub(super) fn parse_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = e.message().trim_end().replace('\n', " ");
    let Some(values) = value_spans(text) else {
        // Not even valid TOML: a syntax error, whose message names what was expected, never
        // the text found.
        return match e.span() {
            Some(span) => {
                let (line, column) = position(text, span.start);
                let key = key_on_line(text, span.start);
                match key {
                    Some(key) => {
                        anyhow::anyhow!("line {line}, column {column} ({key}): {message}")
                    }
                    None => anyhow::anyhow!("line {line}, column {column}: {message}"),
                }
            }
            None => anyhow::anyhow!("{message}"),
        };
    };
    let quotes_a_secret = values
        .iter()
        .filter(|v| v.secret)
        .filter_map(|v| text.get(v.span.clone()))
        .map(|secret| secret.trim_matches(['"', '\'']).trim())
        .any(|secret| secret.len() >= 3 && message.contains(secret));
    let Some(span) = e.span() else {
        return if quotes_a_secret {
            anyhow::anyhow!("invalid value (not shown: it may hold a secret)")
        } else {
            anyhow::anyhow!("{message}")
        };
    };
    let (line, _) = position(text, span.start);
    // The innermost value the error points into names the key.
    let at = values
        .iter()
        .filter(|v| v.span.start <= span.start && span.start < v.span.end.max(v.span.start + 1))
        .min_by_key(|v| v.span.len());
    match at {
        Some(v) if v.secret || quotes_a_secret => anyhow::anyhow!(
            "line {line}: invalid value for {} (not shown: it may hold a secret)",
            v.path
        ),
        None if quotes_a_secret => {
            anyhow::anyhow!("line {line}: invalid value (not shown: it may hold a secret)")
        }
        Some(v) => anyhow::anyhow!("line {line}: {}: {message}", v.path),
        None => anyhow::anyhow!("line {line}: {message}"),
    }
}

/// The key before `=` on the line of `offset`, for an error in text that is not valid TOML:
/// never a value, and nothing from inside a string. A multi-line secret (`"""…"""`) may hold
/// a line like `s3cr3t=…`, and an array of strings a line like `"s3cr3t=…",`: their `=` is
/// inside a string, so they name no key.
fn key_on_line(text: &str, offset: usize) -> Option<&str> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].split('\n').next().unwrap_or_default();
    let equals = start + line.find('=')?;
    if in_string_at(text, start) || in_string_at(text, equals) {
        return None;
    }
    Some(text[start..equals].trim()).filter(|k| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
    })
}

/// Whether byte `offset` of TOML text lies inside a string: a small lexer for the four string
/// forms (basic and literal, each on one line or several, escapes in the basic ones) and
/// comments, enough to tell a key from string content in text that does not parse.
fn in_string_at(text: &str, offset: usize) -> bool {
    const OPENINGS: [&[u8]; 4] = [b"\"\"\"", b"'''", b"\"", b"'"];
    let bytes = &text.as_bytes()[..offset.min(text.len())];
    let mut closing: Option<&[u8]> = None;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        match closing {
            None if rest[0] == b'#' => {
                i += rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            }
            None => {
                closing = OPENINGS.into_iter().find(|open| rest.starts_with(open));
                i += closing.map_or(1, <[u8]>::len);
            }
            Some(close) if close[0] == b'"' && rest[0] == b'\\' => i += 2,
            Some(close) if rest.starts_with(close) => {
                closing = None;
                i += close.len();
            }
            // A one-line string ends at its line even when unterminated (that is the error).
            Some(close) if close.len() == 1 && rest[0] == b'\n' => {
                closing = None;
                i += 1;
            }
            Some(_) => i += 1,
        }
    }
    closing.is_some()
}

/// A value of the config file: its dotted key, where it is, and whether it sits under a key
/// that holds a secret.
struct SpannedValue {
    path: String,
    span: Range<usize>,
    secret: bool,
}

/// Whether values under this key are never echoed: the API secret, the database URLs (they may
/// carry a password), and anything named like a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // A webhook URL carries its token in the path (Slack's do).
    key == "url"
        || key == "direct_url"
        || key == "webhook_url"
        || key.contains("secret")
        || key.contains("password")
}

/// Every value in the document with its span, nested ones included; `None` when the text is
/// not valid TOML.
fn value_spans(text: &str) -> Option<Vec<SpannedValue>> {
    fn join(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    }
    fn item(i: &toml_edit::Item, path: &str, secret: bool, out: &mut Vec<SpannedValue>) {
        match i {
            toml_edit::Item::None => {}
            toml_edit::Item::Value(v) => value(v, path, secret, out),
            toml_edit::Item::Table(t) => table(t, path, secret, out),
            toml_edit::Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    table(t, path, secret, out);
                }
            }
        }
    }
    fn table(t: &toml_edit::Table, path: &str, secret: bool, out: &mut Vec<SpannedValue>) {
        for (k, i) in t.iter() {
            item(i, &join(path, k), secret || is_secret_key(k), out);
        }
    }
    fn value(v: &toml_edit::Value, path: &str, secret: bool, out: &mut Vec<SpannedValue>) {
        if let Some(span) = v.span() {
            out.push(SpannedValue {
                path: path.to_owned(),
                span,
                secret,
            });
        }
        match v {
            toml_edit::Value::InlineTable(t) => {
                for (k, v) in t.iter() {
                    value(v, &join(path, k), secret || is_secret_key(k), out);
                }
            }
            toml_edit::Value::Array(a) => {
                for v in a.iter() {
                    value(v, path, secret, out);
                }
            }
            _ => {}
        }
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut out = Vec::new();
    table(doc.as_table(), "", false, &mut out);
    Some(out)
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}
