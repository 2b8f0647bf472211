//! `#[derive(DomainEvent)]`: parse the `#[event(...)]` attributes, validate, expand.
//!
//! The stages follow thiserror's `try_expand`, except that errors are collected in a [`Ctxt`] and
//! that an invalid attribute still produces a fallback impl (see [`expand::fallback`]).

mod attr;
mod case;
mod expand;

use proc_macro2::TokenStream;

use crate::ctxt::Ctxt;

/// Expands `#[derive(DomainEvent)]` on `input`; errors are returned as `compile_error!` tokens,
/// together with a fallback impl where one makes sense.
pub(crate) fn derive(input: &syn::DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let shape_ok = check_shape(&cx, input);
    let attrs = attr::Container::from_ast(&cx, input);
    match cx.check() {
        Ok(()) => expand::impl_domain_event(input, &attrs),
        Err(errors) if shape_ok => expand::fallback(input, &attrs, errors),
        Err(errors) => errors.into_compile_error(),
    }
}

/// Rejects what cannot implement `DomainEvent` at all: generic types and unions. Returns whether
/// the shape is fine, that is, whether a fallback impl can be written.
fn check_shape(cx: &Ctxt, input: &syn::DeriveInput) -> bool {
    let mut ok = true;
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "`#[derive(DomainEvent)]` does not support generic parameters or lifetimes: an event \
             type has one fixed name and is decoded into an owned value; use a concrete type",
        );
        ok = false;
    }
    if let syn::Data::Union(data) = &input.data {
        cx.error_spanned_by(
            data.union_token,
            "`#[derive(DomainEvent)]` does not support unions; use a struct or an enum",
        );
        ok = false;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn errors(input: syn::DeriveInput) -> Vec<String> {
        let cx = Ctxt::new();
        check_shape(&cx, &input);
        attr::Container::from_ast(&cx, &input);
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn default_name_and_version() {
        let out = derive(&parse_quote!(
            struct HTTPRequestSent;
        ))
        .to_string();
        assert!(out.contains("\"http_request_sent\""), "{out}");
        assert!(out.contains("const VERSION : u32 = 1u32"), "{out}");
        assert!(
            out.contains(":: eventbus :: __private :: inventory :: submit !"),
            "{out}"
        );
    }

    #[test]
    fn explicit_name_version_and_crate() {
        let out = derive(&parse_quote!(
            #[event(name = "chat.created", version = 3, crate = "my::bus")]
            enum ChatCreated {
                A,
                B(u8),
            }
        ))
        .to_string();
        assert!(
            out.contains("impl my :: bus :: DomainEvent for ChatCreated"),
            "{out}"
        );
        assert!(out.contains("\"chat.created\""), "{out}");
        assert!(out.contains("3u32"), "{out}");
    }

    #[test]
    fn generics_and_lifetimes_are_rejected_without_fallback() {
        for input in [
            parse_quote!(
                struct E<T>(T);
            ),
            parse_quote!(
                struct E<'a>(&'a str);
            ),
        ] {
            let msgs = errors(input);
            assert_eq!(msgs.len(), 1);
            assert!(
                msgs[0].contains("does not support generic parameters"),
                "{msgs:?}"
            );
        }
        let out = derive(&parse_quote!(
            struct E<T>(T);
        ))
        .to_string();
        assert!(!out.contains("impl"), "{out}");
    }

    #[test]
    fn unions_are_rejected() {
        let msgs = errors(parse_quote!(union U { a: u8 }));
        assert_eq!(
            msgs,
            ["`#[derive(DomainEvent)]` does not support unions; use a struct or an enum"]
        );
    }

    #[test]
    fn all_attribute_errors_are_reported_with_fallback() {
        let input: syn::DeriveInput = parse_quote!(
            #[event(name = "bad name", version = 0)]
            struct E;
        );
        let msgs = errors(input.clone());
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].contains("`bad name`"), "{msgs:?}");
        assert_eq!(
            msgs[1],
            "event versions start at 1: `#[event(version = 1)]`"
        );
        let out = derive(&input).to_string();
        assert!(out.contains("\"__invalid\""), "{out}");
        assert!(out.contains("compile_error !"), "{out}");
        assert!(!out.contains("inventory"), "{out}");
    }

    #[test]
    fn duplicates_across_attributes() {
        let msgs = errors(parse_quote!(
            #[event(name = "a")]
            #[event(version = 2, name = "b")]
            struct E;
        ));
        assert_eq!(msgs, ["duplicate `event` attribute `name`"]);
    }

    #[test]
    fn unknown_key_lists_the_valid_ones() {
        let msgs = errors(parse_quote!(
            #[event(channel = "a")]
            struct E;
        ));
        assert_eq!(
            msgs,
            [
                "unknown `event` attribute `channel`; expected one of: `name`, `version`, `broadcast`, `durable`, `crate`"
            ]
        );
    }

    #[test]
    fn broadcast_sets_the_delivery() {
        let out = derive(&parse_quote!(
            #[event(broadcast)]
            struct E;
        ))
        .to_string();
        assert!(out.contains("const DELIVERY"), "{out}");
        assert!(out.contains("Broadcast"), "{out}");
        let out = derive(&parse_quote!(
            #[event(durable)]
            struct E;
        ))
        .to_string();
        assert!(!out.contains("const DELIVERY"), "{out}");
    }

    #[test]
    fn delivery_flags_take_no_value_and_do_not_repeat() {
        let msgs = errors(parse_quote!(
            #[event(broadcast = true)]
            struct E;
        ));
        assert_eq!(
            msgs,
            ["`broadcast` takes no value: write `#[event(broadcast)]`"]
        );
        let msgs = errors(parse_quote!(
            #[event(broadcast, durable)]
            struct E;
        ));
        assert_eq!(msgs, ["duplicate `event` attribute `broadcast`/`durable`"]);
    }
}
