//! Code generation for `#[derive(DomainEvent)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::LitStr;

use super::attr::Container;
use crate::paths::Paths;

/// The impl and the link-time registration:
///
/// ```text
/// const _: () = {
///     #[automatically_derived]
///     impl ::eventbus::DomainEvent for ChatCreated {
///         const NAME: &'static str = "chat.created";
///         const VERSION: u32 = 1u32;
///     }
///     ::eventbus::__private::inventory::submit! {
///         ::eventbus::__private::EventRegistration::new::<ChatCreated>()
///     }
/// };
/// ```
pub(crate) fn impl_domain_event(input: &syn::DeriveInput, attrs: &Container) -> TokenStream {
    let paths = Paths::new(attrs.krate.clone());
    let private = paths.private();
    let ident = &input.ident;
    let the_impl = domain_event_impl(
        &paths,
        ident,
        &LitStr::new(&attrs.name, attrs.name_span),
        attrs.version,
        attrs.broadcast,
    );
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::absolute_paths)]
        const _: () = {
            #the_impl
            #private::inventory::submit! {
                #private::EventRegistration::new::<#ident>()
            }
        };
    }
}

/// After an attribute error: the errors plus an impl with a placeholder name, so that uses of the
/// type as an event do not fail a second time with "not a `DomainEvent`" (thiserror's
/// `fallback.rs`). Nothing is registered.
pub(crate) fn fallback(
    input: &syn::DeriveInput,
    attrs: &Container,
    errors: syn::Error,
) -> TokenStream {
    let paths = Paths::new(attrs.krate.clone());
    let ident = &input.ident;
    let the_impl = domain_event_impl(
        &paths,
        ident,
        &LitStr::new("__invalid", ident.span()),
        1,
        false,
    );
    let errors = errors.into_compile_error();
    quote! {
        #errors
        #[allow(non_upper_case_globals, unused_qualifications, clippy::absolute_paths)]
        const _: () = {
            #the_impl
        };
    }
}

fn domain_event_impl(
    paths: &Paths,
    ident: &syn::Ident,
    name: &LitStr,
    version: u32,
    broadcast: bool,
) -> TokenStream {
    let domain_event = paths.domain_event();
    let delivery = broadcast.then(|| {
        let delivery = paths.delivery();
        quote!(const DELIVERY: #delivery = #delivery::Broadcast;)
    });
    // Spanned at the type name, so that a missing `Serialize`/`Deserialize` supertrait is reported
    // on the user's type rather than on the derive.
    quote_spanned! {ident.span()=>
        #[automatically_derived]
        impl #domain_event for #ident {
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;
            #delivery
        }
    }
}
