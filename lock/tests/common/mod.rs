//! What several lock test files share.

/// Names that a 64-character limit, case folding or a byte-for-byte compare of a prefix would
/// confuse: each must be a lock of its own.
pub(crate) fn tricky_names() -> Vec<String> {
    vec![
        "a".repeat(300),
        "A".repeat(300),
        format!("{}b", "a".repeat(299)),
        "déjà vu 🔒🔑".to_owned(),
        "DÉJÀ VU 🔒🔑".to_owned(),
        "trailing space ".to_owned(),
        "trailing space".to_owned(),
    ]
}
