//! The server's own JSON rules, checked before a payload is sent: syntax alone is not enough.
//! MariaDB's `JSON_VALID` refuses nesting 32 deep (MySQL's JSON type: deeper than 100) and both
//! refuse a lone UTF-16 surrogate escape such as `"\ud800"`; sent anyway, the insert fails with
//! a bare constraint error. Here the refusal names the place in the payload (`$.a[2].b`).

/// Nesting depth accepted by every supported server (MariaDB refuses 32 and more).
pub const PORTABLE_MAX_DEPTH: u32 = 31;
/// MySQL's JSON type refuses documents nested deeper than this.
pub const MYSQL_MAX_DEPTH: u32 = 100;

/// A container being scanned: array (with the index of the current element) or object (with
/// the byte range of the current key in the text).
enum Frame {
    Array(usize),
    Object(Option<(usize, usize)>),
}

/// Checks `text` (already valid JSON syntax) against the servers' rules: nesting at most
/// `max_depth`, no lone surrogate escapes. `Err` says what and where.
pub fn check(text: &str, max_depth: u32) -> Result<(), String> {
    let b = text.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    // In an object, whether the next string is a key.
    let mut expect_key = false;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                if stack.len() as u32 >= max_depth {
                    return Err(format!(
                        "nested deeper than {max_depth} levels at {} (the server refuses it; \
                         flatten the payload or store the data elsewhere)",
                        path(text, &stack)
                    ));
                }
                if b[i] == b'{' {
                    stack.push(Frame::Object(None));
                    expect_key = true;
                } else {
                    stack.push(Frame::Array(0));
                }
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
                i += 1;
            }
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Array(n)) => *n += 1,
                    Some(Frame::Object(_)) => expect_key = true,
                    None => {}
                }
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let end = scan_string(text, start, &stack)?;
                if expect_key {
                    if let Some(Frame::Object(k)) = stack.last_mut() {
                        *k = Some((start, end));
                    }
                    expect_key = false;
                }
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Scans the string starting after its opening quote at `start`; returns the index of its
/// closing quote, or an error for a lone surrogate escape.
fn scan_string(text: &str, start: usize, stack: &[Frame]) -> Result<usize, String> {
    let b = text.as_bytes();
    let mut i = start;
    let mut pending_high: Option<usize> = None;
    while i < b.len() {
        match b[i] {
            b'"' => break,
            b'\\' if b.get(i + 1) == Some(&b'u') => {
                let unit = text
                    .get(i + 2..i + 6)
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("malformed \\u escape at {}", path(text, stack)))?;
                match unit {
                    0xD800..=0xDBFF => {
                        if pending_high.is_some() {
                            return Err(lone(text, stack));
                        }
                        pending_high = Some(i);
                    }
                    0xDC00..=0xDFFF => {
                        if pending_high.take().is_none() {
                            return Err(lone(text, stack));
                        }
                    }
                    _ => {
                        if pending_high.is_some() {
                            return Err(lone(text, stack));
                        }
                    }
                }
                i += 6;
                continue;
            }
            b'\\' => {
                if pending_high.is_some() {
                    return Err(lone(text, stack));
                }
                i += 2;
                continue;
            }
            _ => {
                if pending_high.is_some() {
                    return Err(lone(text, stack));
                }
            }
        }
        i += 1;
    }
    if pending_high.is_some() {
        return Err(lone(text, stack));
    }
    Ok(i)
}

fn lone(text: &str, stack: &[Frame]) -> String {
    format!(
        "a lone UTF-16 surrogate escape (such as \\ud800 without its pair) in a string at {}; \
         the server refuses it: send the character as UTF-8 or as a valid surrogate pair",
        path(text, stack)
    )
}

/// The JSON path of the current position: `$`, `$.key`, `$[3]`, `$."odd key"`.
fn path(text: &str, stack: &[Frame]) -> String {
    let mut p = String::from("$");
    for f in stack {
        match f {
            Frame::Array(n) => p.push_str(&format!("[{n}]")),
            Frame::Object(Some((s, e))) => {
                let key = &text[*s..*e];
                if !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    p.push('.');
                    p.push_str(key);
                } else {
                    p.push_str(&format!(".\"{}\"", key.escape_debug()));
                }
            }
            Frame::Object(None) => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn depth_like_the_servers() {
        // (text, max depth, accepted)
        let table = [
            (nested(31), PORTABLE_MAX_DEPTH, true),
            (nested(32), PORTABLE_MAX_DEPTH, false),
            (nested(100), MYSQL_MAX_DEPTH, true),
            (nested(101), MYSQL_MAX_DEPTH, false),
            (r#"{"a": {"b": [1, {"c": "[[[[{{"}]}}"#.to_owned(), 4, true),
            ("\"[[[[\"".to_owned(), 1, true),
        ];
        for (text, max, ok) in table {
            assert_eq!(check(&text, max).is_ok(), ok, "{text} at {max}");
        }
        let deep = r#"{"a": [1, 2, {"b c": {"d": [[]]}}]}"#;
        let e = check(deep, 4).unwrap_err();
        assert!(e.contains(r#"$.a[2]."b c".d"#), "{e}");
    }

    #[test]
    fn surrogates_must_pair() {
        let table = [
            (r#""\ud83d\ude00""#, true),
            (r#""\u00e9 \u4e2d""#, true),
            (r#""\\ud800""#, true), // an escaped backslash, then plain text
            (r#""\ud800""#, false),
            (r#""\udc00""#, false),
            (r#""\ud800x""#, false),
            (r#""\ud800\u0041""#, false),
            (r#""\ud800\ud800""#, false),
            (r#""\ude00\ud83d""#, false),
        ];
        for (text, ok) in table {
            assert_eq!(check(text, 31).is_ok(), ok, "{text}");
        }
        let e = check(r#"{"list": ["ok", "\ud800"]}"#, 31).unwrap_err();
        assert!(e.contains("$.list[1]"), "{e}");
    }
}
