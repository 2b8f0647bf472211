//! The stream seam's steps that take more than one store call, over the in-memory store. Each
//! keeps the Redis backend's semantics (`transport/redis/stream/`).

use std::collections::HashSet;

use super::{DurableRef, Memory};
use crate::transport::keys::{EventKeys, attempts_field};
use crate::transport::settle::{Letter, Written};
use crate::transport::source::{Entry, parse_id};
use crate::transport::stream::{Stream, TResult};

/// The `(min, max)` ids of `ids`.
fn bounds<'a>(ids: impl Iterator<Item = &'a str> + Clone) -> Option<(&'a str, &'a str)> {
    let min = ids.clone().min_by_key(|id| parse_id(id))?;
    let max = ids.max_by_key(|id| parse_id(id))?;
    Some((min, max))
}

/// Of `ids`, the ones pending for the stream's consumer.
pub(crate) fn owned(
    m: &Memory,
    s: &Stream,
    ids: &[String],
    room: usize,
) -> TResult<HashSet<String>> {
    let Some((min, max)) = bounds(ids.iter().map(String::as_str)) else {
        return Ok(HashSet::new());
    };
    let wanted: HashSet<&String> = ids.iter().collect();
    Ok(m.pending(
        &s.keys.stream,
        s.group,
        Some(&s.consumer),
        min,
        max,
        ids.len() + room,
    )?
    .into_iter()
    .map(|p| p.id)
    .filter(|id| wanted.contains(id))
    .collect())
}

/// [`owned`] of `entries`, with the attempts charged to each.
pub(crate) fn owned_and_charged(
    m: &Memory,
    s: &Stream,
    entries: &[Entry],
    room: usize,
) -> TResult<(HashSet<String>, Vec<u32>)> {
    let Some((min, max)) = bounds(entries.iter().map(|e| e.id.as_str())) else {
        return Ok((HashSet::new(), Vec::new()));
    };
    let pending = m
        .pending(
            &s.keys.stream,
            s.group,
            Some(&s.consumer),
            min,
            max,
            entries.len() + room,
        )?
        .into_iter()
        .map(|p| p.id)
        .collect();
    let fields: Vec<String> = entries
        .iter()
        .map(|e| attempts_field(s.group, &e.id))
        .collect();
    let charged = m
        .hmget(&s.keys.attempts, &fields)?
        .into_iter()
        .map(|c| c.and_then(|c| u32::try_from(c).ok()).unwrap_or(0))
        .collect();
    Ok((pending, charged))
}

/// The dead letter, with the ack of a durable entry in the same step.
pub(crate) fn dead_letter(
    m: &Memory,
    keys: &EventKeys,
    group: &str,
    ack: Option<&str>,
    letter: &Letter<'_>,
) -> TResult<Written> {
    let field = ack.map(|id| attempts_field(group, id));
    let durable = match (ack, field.as_deref()) {
        (Some(id), Some(field)) => Some(DurableRef {
            stream: &keys.stream,
            group,
            id,
            attempts_key: &keys.attempts,
            attempts_field: field,
        }),
        _ => None,
    };
    letter.with_fields(ack, |fields| m.dead_letter(&keys.dlq, durable, fields))
}
