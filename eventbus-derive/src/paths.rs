//! Every path the generated code names, in one table (Rocket's `exports.rs`).
//!
//! All of them are absolute and, apart from the public traits and types, go through the hidden
//! `__private` module of the runtime crate, so that a user's `struct Result;` or a glob import
//! cannot change what they resolve to.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse_quote;

use crate::respan::respan;

/// Paths into the runtime crate, rooted at `::eventbus` or at the `crate = "..."` override.
pub(crate) struct Paths {
    krate: syn::Path,
}

impl Paths {
    /// Paths rooted at `krate`, or at `::eventbus` when `None`.
    pub(crate) fn new(krate: Option<syn::Path>) -> Self {
        Paths {
            krate: krate.unwrap_or_else(|| parse_quote!(::eventbus)),
        }
    }
}

macro_rules! exported_paths {
    ($($(#[$doc:meta])* $name:ident => $($segment:ident)::+,)*) => {
        impl Paths {
            $(
                $(#[$doc])*
                pub(crate) fn $name(&self) -> TokenStream {
                    let krate = &self.krate;
                    quote!(#krate $(:: $segment)+)
                }
            )*
        }
    };
}

exported_paths! {
    /// The public `DomainEvent` trait.
    domain_event => DomainEvent,
    /// The public `Delivery` enum (`DomainEvent::DELIVERY`).
    delivery => Delivery,
    /// The public `Context` type (handler shim argument).
    context => Context,
    /// The public `States` type (check shim argument).
    states => States,
    /// The public `Error` type (check shim result).
    error => Error,
    /// The hidden module everything else comes from.
    private => __private,
}

impl Paths {
    /// [`Paths::private`] with every token on `span`, for `quote_spanned!` blocks whose errors must
    /// land on a user's token.
    pub(crate) fn private_at(&self, span: Span) -> TokenStream {
        respan(self.private(), span)
    }
}
