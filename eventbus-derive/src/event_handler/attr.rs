//! `#[event_handler(name = "...", retries = N, backoff = "100ms", max_backoff = "10s",
//! timeout = "30s", concurrency = N, crate = "path")]`, parsed with `syn::meta::parser`.

use std::time::Duration;

use syn::meta::ParseNestedMeta;
use syn::{LitInt, LitStr};

use crate::attr::{Attr, parse_crate, unknown};
use crate::ctxt::Ctxt;
use crate::symbol::{BACKOFF, CONCURRENCY, CRATE, MAX_BACKOFF, NAME, RETRIES, Symbol, TIMEOUT};

const KIND: &str = "`event_handler` argument";
const KEYS: &[Symbol] = &[
    NAME,
    RETRIES,
    BACKOFF,
    MAX_BACKOFF,
    TIMEOUT,
    CONCURRENCY,
    CRATE,
];

/// A duration option, kept with its literal for later cross-checks.
pub(crate) struct DurationArg {
    /// Whole milliseconds, at least 1.
    pub(crate) millis: u64,
    /// The literal as written, for error spans.
    pub(crate) lit: LitStr,
}

/// The arguments of one `#[event_handler(...)]`, as written (each validated on its own).
pub(crate) struct Args<'c> {
    cx: &'c Ctxt,
    /// `name = "..."`.
    pub(crate) name: Attr<'c, LitStr>,
    /// `retries = N`.
    pub(crate) retries: Attr<'c, u32>,
    /// `backoff = "..."`.
    pub(crate) backoff: Attr<'c, DurationArg>,
    /// `max_backoff = "..."`.
    pub(crate) max_backoff: Attr<'c, DurationArg>,
    /// `timeout = "..."`.
    pub(crate) timeout: Attr<'c, DurationArg>,
    /// `concurrency = N`.
    pub(crate) concurrency: Attr<'c, u32>,
    /// `crate = "path"`.
    pub(crate) krate: Attr<'c, syn::Path>,
}

impl<'c> Args<'c> {
    /// No argument given yet.
    pub(crate) fn new(cx: &'c Ctxt) -> Self {
        Args {
            cx,
            name: Attr::none(cx, KIND, NAME),
            retries: Attr::none(cx, KIND, RETRIES),
            backoff: Attr::none(cx, KIND, BACKOFF),
            max_backoff: Attr::none(cx, KIND, MAX_BACKOFF),
            timeout: Attr::none(cx, KIND, TIMEOUT),
            concurrency: Attr::none(cx, KIND, CONCURRENCY),
            krate: Attr::none(cx, KIND, CRATE),
        }
    }

    /// Parses `tokens` (the attribute's arguments); every problem goes to the context.
    pub(crate) fn parse_into(&mut self, tokens: proc_macro2::TokenStream) {
        use syn::parse::Parser;
        let parser = syn::meta::parser(|meta| self.parse_one(meta));
        if let Err(err) = parser.parse2(tokens) {
            self.cx.syn_error(err);
        }
    }

    /// One `key = value`. Invalid values are recorded and parsing goes on; an unknown key or
    /// malformed syntax stops it (the remaining tokens cannot be trusted).
    fn parse_one(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let cx = self.cx;
        if meta.path == NAME {
            let lit: LitStr = meta.value()?.parse()?;
            if let Err(msg) = validate_name(&lit.value()) {
                cx.error_spanned_by(&lit, msg);
            }
            self.name.set(&meta.path, lit);
        } else if meta.path == RETRIES {
            let lit: LitInt = meta.value()?.parse()?;
            if let Some(n) = parse_u32(cx, &lit, RETRIES) {
                self.retries.set(&meta.path, n);
            }
        } else if meta.path == CONCURRENCY {
            let lit: LitInt = meta.value()?.parse()?;
            match parse_u32(cx, &lit, CONCURRENCY) {
                Some(0) => cx.error_spanned_by(
                    &lit,
                    "`concurrency` must be at least 1 (the number of runs in flight at once)",
                ),
                Some(n) => self.concurrency.set(&meta.path, n),
                None => {}
            }
        } else if meta.path == BACKOFF || meta.path == MAX_BACKOFF || meta.path == TIMEOUT {
            let (key, slot) = if meta.path == BACKOFF {
                (BACKOFF, &mut self.backoff)
            } else if meta.path == MAX_BACKOFF {
                (MAX_BACKOFF, &mut self.max_backoff)
            } else {
                (TIMEOUT, &mut self.timeout)
            };
            let lit: LitStr = meta.value()?.parse()?;
            match parse_duration(&lit.value()) {
                Ok(millis) => slot.set(&meta.path, DurationArg { millis, lit }),
                Err(msg) => cx.error_spanned_by(&lit, format_args!("invalid `{key}`: {msg}")),
            }
        } else if meta.path == CRATE {
            parse_crate(cx, &meta, &mut self.krate)?;
        } else {
            return Err(unknown(&meta, KIND, KEYS));
        }
        Ok(())
    }
}

fn parse_u32(cx: &Ctxt, lit: &LitInt, key: Symbol) -> Option<u32> {
    match lit.base10_parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => {
            cx.error_spanned_by(
                lit,
                format_args!("`{key}` must fit in a `u32`, got `{lit}`"),
            );
            None
        }
    }
}

/// A handler name names a consumer group and appears in dead letters and key patterns: 1 to 200
/// characters without whitespace, control characters, braces or glob characters (`*`, `?`, `[`,
/// `]`, `\`). The bus checks the same rule at start-up.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("handler name cannot be empty".to_owned());
    }
    if name.len() > 200 {
        return Err(format!(
            "handler name is {} bytes long; use at most 200",
            name.len()
        ));
    }
    if let Some(bad) = name.chars().find(|&c| {
        c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '*' | '?' | '[' | ']' | '\\')
    }) {
        return Err(format!(
            "handler name {name:?} contains {bad:?}; use no whitespace, control characters, \
             braces or glob characters (`*`, `?`, `[`, `]`, `\\`), e.g. \"billing.charge\""
        ));
    }
    Ok(())
}

const DURATION_HELP: &str = "write a duration such as \"100ms\", \"2s\" or \"1m\"";

/// Parses a humantime duration into whole, positive milliseconds that fit a `u64`.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let duration: Duration = humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration ({err}); {DURATION_HELP}"))?;
    if duration.is_zero() {
        return Err(format!("{text:?} is zero; {DURATION_HELP}"));
    }
    if !duration.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "{text:?} is not a whole number of milliseconds; {DURATION_HELP}"
        ));
    }
    u64::try_from(duration.as_millis())
        .map_err(|_| format!("{text:?} is too long; {DURATION_HELP}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn errors(tokens: proc_macro2::TokenStream) -> Vec<String> {
        let cx = Ctxt::new();
        let mut args = Args::new(&cx);
        args.parse_into(tokens);
        drop(args);
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(100));
        assert_eq!(parse_duration("2s"), Ok(2_000));
        assert_eq!(parse_duration("1m 30s"), Ok(90_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(
            parse_duration("0s").expect_err("invalid"),
            "\"0s\" is zero; write a duration such as \"100ms\", \"2s\" or \"1m\""
        );
        assert!(
            parse_duration("500us")
                .expect_err("invalid")
                .contains("whole number of milliseconds")
        );
        assert!(
            parse_duration("fast")
                .expect_err("invalid")
                .starts_with("\"fast\" is not a duration (")
        );
        assert!(
            parse_duration("100")
                .expect_err("invalid")
                .contains("is not a duration")
        );
        assert!(parse_duration("600000000000000000y").is_err());
    }

    #[test]
    fn all_keys_parse() {
        let cx = Ctxt::new();
        let mut args = Args::new(&cx);
        args.parse_into(quote!(
            name = "projection.chat",
            retries = 5,
            backoff = "100ms",
            max_backoff = "10s",
            timeout = "30s",
            concurrency = 8,
            crate = "::my_bus"
        ));
        let Args {
            name,
            retries,
            backoff,
            max_backoff,
            timeout,
            concurrency,
            krate,
            ..
        } = args;
        assert_eq!(
            name.get().map(|l| l.value()).as_deref(),
            Some("projection.chat")
        );
        assert_eq!(retries.get(), Some(5));
        assert_eq!(backoff.get().map(|d| d.millis), Some(100));
        assert_eq!(max_backoff.get().map(|d| d.millis), Some(10_000));
        assert_eq!(timeout.get().map(|d| d.millis), Some(30_000));
        assert_eq!(concurrency.get(), Some(8));
        assert!(krate.get().is_some());
        cx.check().expect("valid");
    }

    #[test]
    fn duplicates_are_reported_once_per_repeat() {
        assert_eq!(
            errors(quote!(
                retries = 1,
                backoff = "1s",
                retries = 2,
                retries = 3
            )),
            [
                "duplicate `event_handler` argument `retries`",
                "duplicate `event_handler` argument `retries`"
            ]
        );
    }

    #[test]
    fn unknown_key() {
        assert_eq!(
            errors(quote!(foo = 1)),
            [
                "unknown `event_handler` argument `foo`; expected one of: `name`, `retries`, \
              `backoff`, `max_backoff`, `timeout`, `concurrency`, `crate`"
            ]
        );
    }

    #[test]
    fn every_invalid_value_is_reported() {
        let msgs = errors(quote!(
            name = "a b",
            retries = -1,
            backoff = "soon",
            concurrency = 0,
            max_backoff = "0ms",
            timeout = "0s"
        ));
        assert_eq!(msgs.len(), 6, "{msgs:?}");
        assert!(
            msgs[0].starts_with("handler name \"a b\" contains ' '; use no whitespace"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("`retries` must fit in a `u32`"),
            "{msgs:?}"
        );
        assert!(
            msgs[2].starts_with("invalid `backoff`: \"soon\" is not a duration"),
            "{msgs:?}"
        );
        assert!(
            msgs[3].starts_with("`concurrency` must be at least 1"),
            "{msgs:?}"
        );
        assert!(
            msgs[4].starts_with("invalid `max_backoff`: \"0ms\" is zero"),
            "{msgs:?}"
        );
        assert!(
            msgs[5].starts_with("invalid `timeout`: \"0s\" is zero"),
            "{msgs:?}"
        );
    }

    #[test]
    fn handler_names_refuse_glob_characters_and_braces() {
        assert_eq!(validate_name("my_app::billing.charge-2^x"), Ok(()));
        for (bad, ch) in [
            ("a*", "'*'"),
            ("a?", "'?'"),
            ("a[b", "'['"),
            ("a]b", "']'"),
            ("a\\b", "'\\\\'"),
            ("a{b}", "'{'"),
            ("a\tb", "'\\t'"),
        ] {
            let msg = validate_name(bad).expect_err("invalid");
            assert!(msg.contains(&format!("contains {ch};")), "{bad:?}: {msg}");
        }
        assert!(validate_name(&"x".repeat(201)).is_err());
    }

    #[test]
    fn empty_name_and_wrong_literal_kind() {
        assert_eq!(errors(quote!(name = "")), ["handler name cannot be empty"]);
        assert_eq!(errors(quote!(retries = "3")), ["expected integer literal"]);
    }
}
