//! The default event name: the type name in snake_case.
//!
//! Word boundaries follow the `heck` crate (so `ChatCreated` → `chat_created`,
//! `HTTPRequestSent` → `http_request_sent`, `Order2Paid` → `order2_paid`):
//! - every non-alphanumeric character (`_`) separates words and is dropped;
//! - a word ends after a lowercase letter (or a digit following one) that is followed by an
//!   uppercase letter;
//! - in a run of uppercase letters, the last one starts a new word if a lowercase letter follows
//!   it (`HTTPRequest` → `HTTP` `Request`).

/// Converts a Rust type name to snake_case.
pub(crate) fn to_snake_case(name: &str) -> String {
    let mut words: Vec<&str> = Vec::new();
    for part in name.split(|c: char| !c.is_alphanumeric()) {
        split_words(part, &mut words);
    }
    words
        .iter()
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join("_")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Boundary,
    Lowercase,
    Uppercase,
}

fn split_words<'a>(part: &'a str, words: &mut Vec<&'a str>) {
    let mut chars = part.char_indices().peekable();
    let mut start = 0;
    let mut mode = Mode::Boundary;
    while let Some((i, c)) = chars.next() {
        let Some(&(next_i, next)) = chars.peek() else {
            if start < part.len() {
                words.push(&part[start..]);
            }
            break;
        };
        let next_mode = if c.is_lowercase() {
            Mode::Lowercase
        } else if c.is_uppercase() {
            Mode::Uppercase
        } else {
            mode
        };
        if next_mode == Mode::Lowercase && next.is_uppercase() {
            words.push(&part[start..next_i]);
            start = next_i;
            mode = Mode::Boundary;
        } else if mode == Mode::Uppercase && c.is_uppercase() && next.is_lowercase() {
            words.push(&part[start..i]);
            start = i;
            mode = Mode::Boundary;
        } else {
            mode = next_mode;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::to_snake_case;

    #[test]
    fn heck_style_word_splitting() {
        for (input, expected) in [
            ("ChatCreated", "chat_created"),
            ("HTTPRequestSent", "http_request_sent"),
            ("Order2Paid", "order2_paid"),
            ("UserV2Created", "user_v2_created"),
            ("ABC", "abc"),
            ("A", "a"),
            ("Ping", "ping"),
            ("already_snake", "already_snake"),
            ("Mixed_Case__Name", "mixed_case_name"),
            ("XMLHttpRequest", "xml_http_request"),
            ("IOError", "io_error"),
            ("Sha256Computed", "sha256_computed"),
            ("E2E", "e2e"),
        ] {
            assert_eq!(to_snake_case(input), expected, "{input}");
        }
    }
}
