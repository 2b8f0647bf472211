//! Attribute keys, compared against `syn::Path`s as serde's `internals/symbol.rs` does.

use std::fmt::{self, Display};

use syn::{Ident, Path};

/// One attribute name or key.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Symbol(pub(crate) &'static str);

/// `#[event(...)]`, the helper attribute of `#[derive(DomainEvent)]`.
pub(crate) const EVENT: Symbol = Symbol("event");
/// `name = "..."` (both macros).
pub(crate) const NAME: Symbol = Symbol("name");
/// `version = N` (derive).
pub(crate) const VERSION: Symbol = Symbol("version");
/// `broadcast` (derive): delivered with PUBLISH/SUBSCRIBE.
pub(crate) const BROADCAST: Symbol = Symbol("broadcast");
/// `durable` (derive): delivered through a stream (the default).
pub(crate) const DURABLE: Symbol = Symbol("durable");
/// The delivery flags, for the duplicate message: `broadcast`/`durable`.
pub(crate) const DELIVERY: Symbol = Symbol("broadcast`/`durable");
/// `crate = "path"` (both macros).
pub(crate) const CRATE: Symbol = Symbol("crate");
/// `retries = N` (handler).
pub(crate) const RETRIES: Symbol = Symbol("retries");
/// `backoff = "100ms"` (handler).
pub(crate) const BACKOFF: Symbol = Symbol("backoff");
/// `max_backoff = "10s"` (handler).
pub(crate) const MAX_BACKOFF: Symbol = Symbol("max_backoff");
/// `timeout = "30s"` (handler): how long one attempt may run.
pub(crate) const TIMEOUT: Symbol = Symbol("timeout");
/// `concurrency = N` (handler).
pub(crate) const CONCURRENCY: Symbol = Symbol("concurrency");

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0)
    }
}

/// Formats a list of keys as "`a`, `b`, `c`" for "expected one of" messages.
pub(crate) fn one_of(symbols: &[Symbol]) -> String {
    symbols
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
