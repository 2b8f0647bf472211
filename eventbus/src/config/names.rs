//! Names that become parts of keys, patterns and group names.

use crate::error::{Error, Result};

/// The first character that a name which becomes part of a Redis key, a key pattern or a group
/// name may not contain: whitespace, control characters, braces (they would change a key's hash
/// tag) and every glob metacharacter of `SCAN MATCH` (`*`, `?`, `[`, `]` and the escape `\`).
/// `^` is allowed: it is special only inside brackets, which are refused.
pub(crate) fn forbidden_char(value: &str) -> Option<char> {
    value.chars().find(|&c| {
        c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '*' | '?' | '[' | ']' | '\\')
    })
}

/// What a valid name looks like, for error messages.
pub(crate) const NAME_RULE: &str = "1 to 200 characters without whitespace, control characters, braces or glob characters (* ? [ ] \\)";

/// Names that become parts of keys: see [`forbidden_char`].
pub(super) fn check_name(key: &'static str, value: &str) -> Result<()> {
    let problem = if value.is_empty() {
        Some("is empty".to_owned())
    } else if value.len() > 200 {
        Some(format!("is {} bytes long", value.len()))
    } else {
        forbidden_char(value).map(|c| format!("contains {c:?}"))
    };
    match problem {
        Some(problem) => Err(Error::config(
            key,
            value,
            format!("{problem}; must be {NAME_RULE}, e.g. \"orders-staging\""),
        )),
        None => Ok(()),
    }
}
