//! The one place where a repeated attribute key is detected (serde's `Attr<T>`).
//!
//! Every key of both macros is read into an [`Attr`]; the second occurrence of a key is reported
//! at that occurrence, and the first value is kept so that checking can go on.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;

use crate::ctxt::Ctxt;
use crate::symbol::{Symbol, one_of};

/// An optional attribute value together with the tokens it was written as.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    /// "`event` attribute" or "`event_handler` argument", for messages.
    kind: &'static str,
    name: Symbol,
    tokens: TokenStream,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    /// An unset key `name` of the attribute described by `kind`.
    pub(crate) fn none(cx: &'c Ctxt, kind: &'static str, name: Symbol) -> Self {
        Attr {
            cx,
            kind,
            name,
            tokens: TokenStream::new(),
            value: None,
        }
    }

    /// Sets the value; if it was already set, reports "duplicate ..." at `obj` and keeps the
    /// first value.
    pub(crate) fn set<A: ToTokens>(&mut self, obj: A, value: T) {
        let tokens = obj.into_token_stream();
        if self.value.is_some() {
            self.cx
                .error_spanned_by(tokens, format!("duplicate {} `{}`", self.kind, self.name));
        } else {
            self.tokens = tokens;
            self.value = Some(value);
        }
    }

    /// The value, if set.
    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

/// Reads `crate = "path"` (both macros) into `krate`.
pub(crate) fn parse_crate(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    krate: &mut Attr<'_, syn::Path>,
) -> syn::Result<()> {
    let lit: syn::LitStr = meta.value()?.parse()?;
    match lit.parse::<syn::Path>() {
        Ok(path) => krate.set(&meta.path, path),
        Err(_) => cx.error_spanned_by(
            &lit,
            format_args!(
                "`crate` must be a path such as `\"::eventbus\"`, got {:?}",
                lit.value()
            ),
        ),
    }
    Ok(())
}

/// Builds the error for a key that neither macro knows.
pub(crate) fn unknown(meta: &ParseNestedMeta<'_>, kind: &str, expected: &[Symbol]) -> syn::Error {
    let path = meta.path.to_token_stream().to_string().replace(' ', "");
    meta.error(format_args!(
        "unknown {kind} `{path}`; expected one of: {}",
        one_of(expected)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbol::NAME;

    #[test]
    fn second_occurrence_is_reported_and_first_value_kept() {
        let cx = Ctxt::new();
        let mut name = Attr::none(&cx, "`event` attribute", NAME);
        name.set(quote::quote!(name), "a");
        name.set(quote::quote!(name), "b");
        assert_eq!(name.get(), Some("a"));
        let err = cx.check().expect_err("invalid");
        assert_eq!(err.to_string(), "duplicate `event` attribute `name`");
    }
}
