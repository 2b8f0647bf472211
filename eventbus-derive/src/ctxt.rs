//! Error collection, after serde's `internals/ctxt.rs`.
//!
//! Parsing and checking push every problem they find into a [`Ctxt`] instead of returning at the
//! first one, so the user sees all bad attributes in one compile instead of fixing them one by
//! one.

use std::cell::RefCell;
use std::fmt::Display;
use std::thread;

use quote::ToTokens;

/// Collects the errors of one macro invocation.
///
/// [`Ctxt::check`] must be called before the context is dropped; forgetting it is a bug in this
/// crate and panics (only in debug assertions' spirit: it cannot be reached by user input).
#[derive(Default)]
pub(crate) struct Ctxt {
    /// `None` once [`Ctxt::check`] has taken the errors.
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    /// An empty context.
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records an error spanning the tokens of `obj` (first to last token).
    pub(crate) fn error_spanned_by<A: ToTokens, T: Display>(&self, obj: A, msg: T) {
        self.syn_error(syn::Error::new_spanned(obj.into_token_stream(), msg));
    }

    /// Records an error produced by syn.
    pub(crate) fn syn_error(&self, err: syn::Error) {
        self.errors
            .borrow_mut()
            .as_mut()
            .expect("Ctxt used after check()")
            .push(err);
    }

    /// Consumes the context, combining every recorded error into one `syn::Error`.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self
            .errors
            .take()
            .expect("Ctxt::check called twice")
            .into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for rest in errors {
            combined.combine(rest);
        }
        Err(combined)
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !thread::panicking() && self.errors.borrow().is_some() {
            panic!("forgot to check for errors");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::Span;

    #[test]
    fn check_without_errors_is_ok() {
        assert!(Ctxt::new().check().is_ok());
    }

    #[test]
    fn check_combines_all_errors_in_order() {
        let cx = Ctxt::new();
        cx.syn_error(syn::Error::new(Span::call_site(), "first"));
        cx.syn_error(syn::Error::new(Span::call_site(), "second"));
        let messages: Vec<String> = cx
            .check()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(messages, ["first", "second"]);
    }

    #[test]
    #[should_panic(expected = "forgot to check for errors")]
    fn dropping_unchecked_context_panics() {
        let _cx = Ctxt::new();
    }
}
