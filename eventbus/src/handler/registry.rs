//! The link-time registry, checked once at start-up.

use std::collections::BTreeMap;

use crate::config::{NAME_RULE, forbidden_char};
use crate::error::{Error, Result};
use crate::event::EventRegistration;
use crate::handler::HandlerRegistration;
use crate::state::States;

/// Every registered handler, sorted by name, after checking for duplicate handler names and
/// duplicate event names.
pub(crate) fn all_handlers() -> Result<Vec<&'static HandlerRegistration>> {
    let mut handlers: Vec<&'static HandlerRegistration> =
        inventory::iter::<HandlerRegistration>.into_iter().collect();
    // Iteration order is unspecified (it changes with LTO): sort for stable start-up and errors.
    handlers.sort_by(|a, b| (a.name, a.file, a.line).cmp(&(b.name, b.file, b.line)));
    for pair in handlers.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(Error::DuplicateHandler {
                name: pair[0].name.to_owned(),
                first: pair[0].location(),
                second: pair[1].location(),
            });
        }
    }
    for h in &handlers {
        if let Some(problem) = handler_name_problem(h.name) {
            return Err(Error::config(
                "#[event_handler(name)]",
                h.name,
                format!(
                    "the handler at {} has an invalid name: it {problem}; handler names must be \
                     {NAME_RULE} (they name consumer groups and dead letters): write \
                     `#[event_handler(name = \"billing.charge\")]`",
                    h.location()
                ),
            ));
        }
    }
    check_events(&handlers)?;
    Ok(handlers)
}

/// Why a handler name cannot be used, if it cannot: see [`forbidden_char`].
fn handler_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > 200 {
        Some(format!("is {} bytes long", name.len()))
    } else {
        forbidden_char(name).map(|c| format!("contains {c:?}"))
    }
}

/// Why an event name cannot be used, if it cannot. The rule of `#[derive(DomainEvent)]`: ASCII
/// letters, digits, `.`, `_` and `-` (a name is a key's hash tag, a channel name and the
/// CloudEvents `type`); checked again here for `DomainEvent` implemented by hand.
fn event_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > 200 {
        Some(format!("is {} bytes long", name.len()))
    } else {
        name.chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("contains {c:?}"))
    }
}

/// Two distinct types with one event name would share a stream and decode each other's data;
/// a name with glob characters or braces would break key patterns and hash tags.
fn check_events(handlers: &[&'static HandlerRegistration]) -> Result<()> {
    let mut by_name: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    let events = inventory::iter::<EventRegistration>
        .into_iter()
        .map(|e| (e.name, (e.type_name)()))
        .chain(handlers.iter().map(|h| (h.event_name, (h.event_type)())));
    let mut pairs: Vec<(&'static str, &'static str)> = events.collect();
    pairs.sort_unstable();
    for &(name, ty) in &pairs {
        if let Some(problem) = event_name_problem(name) {
            return Err(Error::config(
                "#[event(name)]",
                name,
                format!(
                    "the event name of `{ty}` {problem}; event names must be 1 to 200 ASCII \
                     letters, digits, `.`, `_` and `-`: derive `DomainEvent` (not by hand) and \
                     write `#[event(name = \"orders.placed\")]`"
                ),
            ));
        }
    }
    for (name, ty) in pairs {
        match by_name.get(name) {
            Some(&other) if other != ty => {
                return Err(Error::DuplicateEvent {
                    name: name.to_owned(),
                    first: other,
                    second: ty,
                });
            }
            Some(_) => {}
            None => {
                by_name.insert(name, ty);
            }
        }
    }
    Ok(())
}

/// The handlers this bus runs: all, or the ones named; each one's extractors checked.
pub(crate) fn select(
    handlers: &[&'static HandlerRegistration],
    names: Option<&[String]>,
    states: &States,
) -> Result<Vec<&'static HandlerRegistration>> {
    let selected: Vec<&'static HandlerRegistration> = match names {
        None => handlers.to_vec(),
        Some(names) => {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                match handlers.iter().find(|h| h.name == name) {
                    Some(h) if !out.iter().any(|o: &&HandlerRegistration| o.name == h.name) => {
                        out.push(*h)
                    }
                    Some(_) => {}
                    None => {
                        let known = handlers.iter().map(|h| h.name).collect::<Vec<_>>();
                        return Err(Error::UnknownHandler {
                            name: name.clone(),
                            known: if known.is_empty() {
                                "(none)".to_owned()
                            } else {
                                known.join(", ")
                            },
                        });
                    }
                }
            }
            out
        }
    };
    for h in &selected {
        (h.check)(states).map_err(|e| match e {
            Error::MissingState { type_name, .. } => Error::MissingState {
                handler: h.name.to_owned(),
                type_name,
            },
            other => other,
        })?;
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_names_refuse_glob_characters_braces_and_whitespace() {
        for ok in ["billing.charge", "my_app::handlers::charge", "a-b^c", "é"] {
            assert_eq!(handler_name_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("a b", "contains ' '"),
            ("a*", "contains '*'"),
            ("a?", "contains '?'"),
            ("a[b]", "contains '['"),
            ("a]", "contains ']'"),
            ("a\\b", "contains '\\\\'"),
            ("a{b}", "contains '{'"),
            ("a\u{7}", "contains '\\u{7}'"),
        ] {
            assert_eq!(handler_name_problem(bad).as_deref(), Some(why), "{bad:?}");
        }
        assert!(handler_name_problem(&"x".repeat(201)).is_some());
    }

    #[test]
    fn event_names_follow_the_derive_rule() {
        assert_eq!(event_name_problem("orders.placed-v2_x"), None);
        for bad in ["", "a b", "a*", "a?", "a[b]", "a\\b", "a{b}", "a:b", "é"] {
            assert!(event_name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
