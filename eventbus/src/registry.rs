//! The link-time registry, checked once at start-up.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::event::EventRegistration;
use crate::extract::States;
use crate::handler::HandlerRegistration;

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
        if h.name.is_empty() || h.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::config(
                "#[event_handler(name)]",
                h.name,
                format!(
                    "handler names must be non-empty without whitespace (handler at {})",
                    h.location()
                ),
            ));
        }
    }
    check_events(&handlers)?;
    Ok(handlers)
}

/// Two distinct types with one event name would share a stream and decode each other's data.
fn check_events(handlers: &[&'static HandlerRegistration]) -> Result<()> {
    let mut by_name: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    let events = inventory::iter::<EventRegistration>
        .into_iter()
        .map(|e| (e.name, (e.type_name)()))
        .chain(handlers.iter().map(|h| (h.event_name, (h.event_type)())));
    let mut pairs: Vec<(&'static str, &'static str)> = events.collect();
    pairs.sort_unstable();
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
