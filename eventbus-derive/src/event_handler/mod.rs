//! `#[event_handler]`: parse the arguments, check the function, expand.
//!
//! On any error the function is emitted unchanged next to the errors (tokio's `entry.rs`), so
//! that calls to it and IDE completions keep working and only the real mistakes are reported.

mod attr;
mod check;
mod expand;

use proc_macro2::{Span, TokenStream};
use quote::quote;

use crate::ctxt::Ctxt;

/// Expands `#[event_handler(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let item_fn: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(item_fn) => item_fn,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[event_handler]` can only be applied to an `async fn`",
            )
            .into_compile_error();
            return quote!(#item #error);
        }
    };

    let cx = Ctxt::new();
    let mut parsed = attr::Args::new(&cx);
    parsed.parse_into(args);
    let options = check::options(&cx, parsed);
    let inputs = check::signature(&cx, &item_fn);
    match (cx.check(), inputs) {
        (Ok(()), Some(inputs)) => expand::handler(&item_fn, &inputs, &options),
        (result, _) => {
            // `signature` returns `None` only after recording an error, so `result` is `Err`.
            let errors = result.err().map(syn::Error::into_compile_error);
            quote!(#item #errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_expansion() {
        let out = expand(
            quote!(
                name = "projection.chat",
                retries = 5,
                backoff = "100ms",
                max_backoff = "10s",
                concurrency = 8
            ),
            quote!(
                async fn project(
                    ev: ChatCreated,
                    ctx: Context,
                    db: State<Db>,
                ) -> Result<(), MyError> {
                    Ok(())
                }
            ),
        )
        .to_string();
        for expected in [
            "async fn project (ev : ChatCreated , ctx : Context , db : State < Db > ,) -> Result",
            "let __event = :: eventbus :: __private :: decode :: < ChatCreated > (__data) ?",
            "let __arg1 = :: eventbus :: __private :: extract :: < Context > (& __ctx)",
            "let __arg2 = :: eventbus :: __private :: extract :: < State < Db > > (& __ctx)",
            ":: eventbus :: __private :: check_extractor :: < State < Db > > (__states) ?",
            ":: eventbus :: __private :: into_handler_result (project (__event , __arg1 , __arg2) . await)",
            ":: eventbus :: __private :: HandlerRegistration :: new :: < ChatCreated > (\"projection.chat\" , \
             :: eventbus :: __private :: HandlerOptions :: new () . retries (5u32) . backoff_ms (100u64) \
             . max_backoff_ms (10000u64) . concurrency (8u32) ,",
        ] {
            assert!(out.contains(expected), "missing `{expected}` in\n{out}");
        }
    }

    #[test]
    fn default_name_and_crate_override() {
        let out = expand(
            quote!(crate = "my_bus"),
            quote!(
                async fn r#match(_: E) -> anyhow::Result<()> {
                    Ok(())
                }
            ),
        )
        .to_string();
        assert!(
            out.contains("my_bus :: __private :: concat ! (my_bus :: __private :: module_path ! () , \"::\" , \"match\")"),
            "{out}"
        );
        assert!(out.contains("HandlerOptions :: new () ,"), "{out}");
    }

    #[test]
    fn errors_keep_the_function() {
        let out = expand(
            quote!(retries = 1, retries = 2),
            quote!(
                fn h(ev: E) {}
            ),
        )
        .to_string();
        assert!(out.starts_with("fn h (ev : E) { }"), "{out}");
        assert!(
            out.contains("duplicate `event_handler` argument `retries`"),
            "{out}"
        );
        assert!(out.contains("must be an `async fn`"), "{out}");
        assert!(!out.contains("__eventbus_call"), "{out}");
    }

    #[test]
    fn not_a_function() {
        let out = expand(
            TokenStream::new(),
            quote!(
                struct S;
            ),
        )
        .to_string();
        assert!(out.starts_with("struct S ;"), "{out}");
        assert!(
            out.contains("can only be applied to an `async fn`"),
            "{out}"
        );
    }
}
