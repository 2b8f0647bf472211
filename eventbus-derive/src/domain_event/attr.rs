//! `#[event(name = "...", version = N, broadcast, crate = "path")]`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{LitInt, LitStr};

use super::case::to_snake_case;
use crate::attr::{Attr, parse_crate, unknown};
use crate::ctxt::Ctxt;
use crate::symbol::{BROADCAST, CRATE, DELIVERY, DURABLE, EVENT, NAME, Symbol, VERSION};

const KIND: &str = "`event` attribute";
const KEYS: &[Symbol] = &[NAME, VERSION, BROADCAST, DURABLE, CRATE];

/// The validated container attributes of an event type.
pub(crate) struct Container {
    /// The event name, explicit or derived from the type name.
    pub(crate) name: String,
    /// The span of the `name = "..."` literal, or of the type name.
    pub(crate) name_span: Span,
    /// The schema version, at least 1.
    pub(crate) version: u32,
    /// `#[event(broadcast)]`: Pub/Sub instead of a stream.
    pub(crate) broadcast: bool,
    /// `crate = "path"`, if given.
    pub(crate) krate: Option<syn::Path>,
}

impl Container {
    /// Reads every `#[event(...)]` attribute of `input`, reporting problems into `cx`.
    pub(crate) fn from_ast(cx: &Ctxt, input: &syn::DeriveInput) -> Self {
        let mut name = Attr::none(cx, KIND, NAME);
        let mut version = Attr::none(cx, KIND, VERSION);
        let mut krate = Attr::none(cx, KIND, CRATE);
        let mut delivery = Attr::none(cx, KIND, DELIVERY);

        for attr in input.attrs.iter().filter(|attr| attr.path() == EVENT) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path == NAME {
                    let lit: LitStr = meta.value()?.parse()?;
                    if let Err(msg) = validate_name(&lit.value()) {
                        cx.error_spanned_by(&lit, msg);
                    }
                    name.set(&meta.path, lit);
                } else if meta.path == VERSION {
                    let lit: LitInt = meta.value()?.parse()?;
                    match lit.base10_parse::<u32>() {
                        Ok(0) => cx.error_spanned_by(
                            &lit,
                            "event versions start at 1: `#[event(version = 1)]`",
                        ),
                        Ok(n) => version.set(&meta.path, n),
                        Err(_) => cx.error_spanned_by(
                            &lit,
                            format_args!("event version must fit in a `u32`, got `{lit}`"),
                        ),
                    }
                } else if meta.path == BROADCAST || meta.path == DURABLE {
                    if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                        return Err(meta.error(format_args!(
                            "`{}` takes no value: write `#[event({})]`",
                            meta.path
                                .get_ident()
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                            meta.path
                                .get_ident()
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                        )));
                    }
                    delivery.set(&meta.path, meta.path == BROADCAST);
                } else if meta.path == CRATE {
                    parse_crate(cx, &meta, &mut krate)?;
                } else {
                    return Err(unknown(&meta, KIND, KEYS));
                }
                Ok(())
            });
            if let Err(err) = result {
                cx.syn_error(err);
            }
        }

        let (name, name_span) = match name.get() {
            Some(lit) => (lit.value(), lit.span()),
            None => {
                let ident = &input.ident;
                let derived = to_snake_case(&ident.unraw().to_string());
                if let Err(msg) = validate_name(&derived) {
                    cx.error_spanned_by(
                        ident,
                        format_args!(
                            "the default event name of `{ident}` is invalid: {msg}; set one with \
                             `#[event(name = \"...\")]`"
                        ),
                    );
                }
                (derived, ident.span())
            }
        };

        Container {
            name,
            name_span,
            version: version.get().unwrap_or(1),
            broadcast: delivery.get().unwrap_or(false),
            krate: krate.get(),
        }
    }
}

/// An event name becomes part of a Redis key and the CloudEvents `type`: non-empty ASCII
/// letters, digits, `.`, `_` and `-`.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("event name cannot be empty".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "event name `{name}` contains {bad:?}; use only ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn parse(input: syn::DeriveInput) -> Result<Container, Vec<String>> {
        let cx = Ctxt::new();
        let container = Container::from_ast(&cx, &input);
        cx.check()
            .map(|()| container)
            .map_err(|err| err.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn validates_names() {
        assert!(validate_name("chat.created-v2_x").is_ok());
        assert_eq!(
            validate_name("").expect_err("invalid"),
            "event name cannot be empty"
        );
        assert_eq!(
            validate_name("chat created").expect_err("invalid"),
            "event name `chat created` contains ' '; use only ASCII letters, digits, `.`, `_` and `-`"
        );
        assert!(validate_name("chat:created").is_err());
        assert!(validate_name("événement").is_err());
    }

    #[test]
    fn raw_identifiers_are_unrawed() {
        let c = parse(parse_quote!(
            struct r#Match;
        ))
        .expect("valid");
        assert_eq!(c.name, "match");
    }

    #[test]
    fn non_ascii_type_name_needs_explicit_name() {
        let msgs = parse(parse_quote!(
            struct Événement;
        ))
        .err()
        .expect("invalid");
        assert!(
            msgs[0].starts_with("the default event name of `Événement` is invalid"),
            "{msgs:?}"
        );
        let c = parse(parse_quote!(
            #[event(name = "evenement")]
            struct Événement;
        ))
        .expect("valid");
        assert_eq!(c.name, "evenement");
    }

    #[test]
    fn version_out_of_range() {
        let msgs = parse(parse_quote!(
            #[event(version = 4294967296)]
            struct E;
        ))
        .err()
        .expect("invalid");
        assert_eq!(
            msgs,
            ["event version must fit in a `u32`, got `4294967296`"]
        );
    }

    #[test]
    fn bad_crate_path() {
        let msgs = parse(parse_quote!(
            #[event(crate = "not a path")]
            struct E;
        ))
        .err()
        .expect("invalid");
        assert_eq!(
            msgs,
            ["`crate` must be a path such as `\"::eventbus\"`, got \"not a path\""]
        );
    }

    #[test]
    fn other_attributes_are_ignored() {
        let c = parse(parse_quote!(
            #[serde(rename_all = "camelCase")]
            #[doc = "x"]
            struct E;
        ))
        .expect("valid");
        assert_eq!(c.name, "e");
        assert_eq!(c.version, 1);
    }
}
