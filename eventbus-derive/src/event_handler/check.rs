//! Checks of the annotated function and of the arguments taken together.
//!
//! Each problem is reported at the user's token (the `fn` keyword, the parentheses, the
//! `self`, the generics, the literal) and checking goes on, so that one compile shows all of
//! them. Type-level problems (an event type that is not a `DomainEvent`, an argument that is not
//! `FromContext`, a wrong return type) are left to the compiler, at spans chosen in `expand.rs`.

use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Type};

use super::attr::Args;
use crate::ctxt::Ctxt;
use crate::paths::Paths;

/// The validated `#[event_handler(...)]` options.
pub(crate) struct Options {
    /// `name = "..."`; `None` means `module_path!()::fn_name`.
    pub(crate) name: Option<LitStr>,
    /// `retries = N`.
    pub(crate) retries: Option<u32>,
    /// `backoff`, in milliseconds.
    pub(crate) backoff_ms: Option<u64>,
    /// `max_backoff`, in milliseconds.
    pub(crate) max_backoff_ms: Option<u64>,
    /// `timeout`, in milliseconds.
    pub(crate) timeout_ms: Option<u64>,
    /// `concurrency = N`.
    pub(crate) concurrency: Option<u32>,
    /// Paths into the runtime crate (`crate = "..."`).
    pub(crate) paths: Paths,
}

/// Cross-checks the arguments (`max_backoff` ≥ `backoff`) and flattens them.
pub(crate) fn options(cx: &Ctxt, args: Args<'_>) -> Options {
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
    let (backoff, max_backoff) = (backoff.get(), max_backoff.get());
    if let (Some(backoff), Some(max)) = (&backoff, &max_backoff)
        && max.millis < backoff.millis
    {
        cx.error_spanned_by(
            &max.lit,
            format_args!(
                "`max_backoff` ({:?}) is shorter than `backoff` ({:?}); the cap must be at least \
                 the first delay",
                max.lit.value(),
                backoff.lit.value()
            ),
        );
    }
    Options {
        name: name.get(),
        retries: retries.get(),
        backoff_ms: backoff.map(|d| d.millis),
        max_backoff_ms: max_backoff.map(|d| d.millis),
        timeout_ms: timeout.get().map(|d| d.millis),
        concurrency: concurrency.get(),
        paths: Paths::new(krate.get()),
    }
}

/// The argument types of a valid handler.
pub(crate) struct Inputs<'a> {
    /// The first argument's type: the event.
    pub(crate) event: &'a Type,
    /// The types of the other arguments, in order: extractors.
    pub(crate) extractors: Vec<&'a Type>,
}

/// Checks the function's signature; `None` when there is no usable event argument (an error has
/// been recorded then).
pub(crate) fn signature<'a>(cx: &Ctxt, item: &'a ItemFn) -> Option<Inputs<'a>> {
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            "an `#[event_handler]` must be an `async fn`; add `async` before `fn`",
        );
    }
    if let Some(unsafety) = sig.unsafety {
        cx.error_spanned_by(unsafety, "an `#[event_handler]` cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(abi, "an `#[event_handler]` cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(
            &sig.generics,
            "an `#[event_handler]` cannot be generic: the bus registers one concrete function \
             for one concrete event type",
        );
    } else if let Some(where_clause) = &sig.generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            "an `#[event_handler]` cannot have a `where` clause",
        );
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "an `#[event_handler]` cannot be variadic");
    }

    let mut types = Vec::with_capacity(sig.inputs.len());
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => cx.error_spanned_by(
                receiver,
                "an `#[event_handler]` cannot take `self`; make it a free function and pass shared \
                 data with `State<T>`",
            ),
            FnArg::Typed(arg) => {
                if let Type::ImplTrait(ty) = &*arg.ty {
                    cx.error_spanned_by(
                        ty,
                        "`impl Trait` arguments are not supported in an `#[event_handler]`; name \
                         the concrete type",
                    );
                }
                types.push(&*arg.ty);
            }
        }
    }

    let no_event = sig.inputs.is_empty();
    if no_event {
        cx.syn_error(syn::Error::new(
            sig.paren_token.span.join(),
            "an `#[event_handler]` takes the event as its first argument, e.g. \
             `async fn on_chat_created(ev: ChatCreated)`",
        ));
    }
    if let Some(FnArg::Typed(first)) = sig.inputs.first()
        && let Type::Reference(reference) = &*first.ty
    {
        cx.syn_error(syn::Error::new(
            reference.and_token.span(),
            "an `#[event_handler]` takes its event by value; remove the `&`",
        ));
    }
    if no_event || matches!(sig.inputs.first(), Some(FnArg::Receiver(_))) {
        return None;
    }
    let mut types = types.into_iter();
    let event = types.next()?;
    Some(Inputs {
        event,
        extractors: types.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;
    use syn::parse_quote;

    fn errors(item: ItemFn) -> Vec<String> {
        let cx = Ctxt::new();
        signature(&cx, &item);
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn valid_signature() {
        let item: ItemFn = parse_quote!(
            pub(crate) async fn project(
                _: ChatCreated,
                ctx: Context,
                State(db): State<Db>,
            ) -> anyhow::Result<()> {
            }
        );
        let cx = Ctxt::new();
        let inputs = signature(&cx, &item).expect("valid");
        cx.check().expect("valid");
        let event = inputs.event;
        assert_eq!(quote!(#event).to_string(), "ChatCreated");
        let extractors = inputs.extractors;
        assert_eq!(
            quote!(#(#extractors),*).to_string(),
            "Context , State < Db >"
        );
    }

    #[test]
    fn every_signature_problem_is_reported() {
        let msgs = errors(parse_quote!(
            unsafe fn h<T>(&self, x: impl Sized) {}
        ));
        assert_eq!(msgs.len(), 5, "{msgs:?}");
        assert!(msgs[0].contains("must be an `async fn`; add `async` before `fn`"));
        assert!(msgs[1].contains("cannot be `unsafe`"));
        assert!(msgs[2].contains("cannot be generic"));
        assert!(msgs[3].contains("cannot take `self`"));
        assert!(msgs[4].contains("`impl Trait` arguments"));
    }

    #[test]
    fn missing_event_argument() {
        assert_eq!(
            errors(parse_quote!(
                async fn h() {}
            )),
            [
                "an `#[event_handler]` takes the event as its first argument, e.g. \
              `async fn on_chat_created(ev: ChatCreated)`"
            ]
        );
    }

    #[test]
    fn event_by_reference() {
        assert_eq!(
            errors(parse_quote!(
                async fn h(ev: &ChatCreated) {}
            )),
            ["an `#[event_handler]` takes its event by value; remove the `&`"]
        );
    }

    #[test]
    fn max_backoff_shorter_than_backoff() {
        let cx = Ctxt::new();
        let mut args = Args::new(&cx);
        args.parse_into(quote!(backoff = "1s", max_backoff = "500ms"));
        let options = options(&cx, args);
        assert_eq!(options.backoff_ms, Some(1000));
        let msgs: Vec<String> = cx
            .check()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            msgs,
            [
                "`max_backoff` (\"500ms\") is shorter than `backoff` (\"1s\"); the cap must be at \
              least the first delay"
            ]
        );
    }
}
