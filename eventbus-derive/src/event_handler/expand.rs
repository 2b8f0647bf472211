//! Code generation for `#[event_handler]`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

use super::check::{Inputs, Options};

/// The user's function, unchanged, followed by its shims and registration:
///
/// ```text
/// #[doc(hidden)]
/// const _: () = {
///     fn __eventbus_call(__data: &RawValue, __ctx: Context) -> CallResult {
///         let __event = decode::<Event>(__data)?;
///         let __arg1 = extract::<Arg1>(&__ctx);
///         Ok(boxed(async move {
///             let __arg1 = match __arg1 { Ok(v) => v, Err(e) => return Err(e.to_string()) };
///             into_handler_result(handler(__event, __arg1).await)
///         }))
///     }
///     fn __eventbus_check(__states: &States) -> Result<(), Error> {
///         check_extractor::<Arg1>(__states)?;
///         Ok(())
///     }
///     inventory::submit! {
///         HandlerRegistration::new::<Event>(name, options, __eventbus_call, __eventbus_check,
///                                           file!(), line!())
///     }
/// };
/// ```
///
/// Each line that can fail a trait bound is generated with the span of the user's token it is
/// about, so that the compiler reports it there.
pub(crate) fn handler(item: &ItemFn, inputs: &Inputs<'_>, options: &Options) -> TokenStream {
    let paths = &options.paths;
    let private = paths.private();
    let context = paths.context();
    let states = paths.states();
    let error = paths.error();
    let ident = &item.sig.ident;

    let event = inputs.event;
    let event_private = paths.private_at(event.span());
    let decode = quote_spanned! {event.span()=>
        let __event = #event_private::decode::<#event>(__data)?;
    };

    let args: Vec<_> = (1..=inputs.extractors.len())
        .map(|i| format_ident!("__arg{i}"))
        .collect();
    let mut extract = Vec::new();
    let mut unwrap = Vec::new();
    let mut check = Vec::new();
    for (arg, ty) in args.iter().zip(&inputs.extractors) {
        let span = ty.span();
        let p = paths.private_at(span);
        extract.push(quote_spanned! {span=>
            let #arg = #p::extract::<#ty>(&__ctx);
        });
        check.push(quote_spanned! {span=>
            #p::check_extractor::<#ty>(__states)?;
        });
        unwrap.push(quote! {
            let #arg = match #arg {
                #private::Ok(value) => value,
                #private::Err(error) => {
                    return #private::Err(::std::string::ToString::to_string(&error));
                }
            };
        });
    }

    let call = call_result(item, &private, &args);
    let name = match &options.name {
        Some(lit) => lit.to_token_stream(),
        None => {
            let fn_name =
                syn::LitStr::new(&syn::ext::IdentExt::unraw(ident).to_string(), ident.span());
            quote!(#private::concat!(#private::module_path!(), "::", #fn_name))
        }
    };
    let handler_options = handler_options(options, &private);

    quote! {
        #item

        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::absolute_paths)]
        const _: () = {
            fn __eventbus_call(
                __data: &#private::RawValue,
                __ctx: #context,
            ) -> #private::CallResult {
                #decode
                #(#extract)*
                #private::Ok(#private::boxed(async move {
                    #(#unwrap)*
                    #call
                }))
            }

            fn __eventbus_check(__states: &#states) -> #private::Result<(), #error> {
                #(#check)*
                #private::Ok(())
            }

            #private::inventory::submit! {
                #private::HandlerRegistration::new::<#event>(
                    #name,
                    #handler_options,
                    __eventbus_call,
                    __eventbus_check,
                    #private::file!(),
                    #private::line!(),
                )
            }
        };
    }
}

/// `into_handler_result(handler(__event, ..).await)`, laid out so that a return type that is not
/// `IntoHandlerResult` is reported on the return type, or on the signature when there is none.
///
/// The compiler reports a failed bound on an argument expression from the span of its first
/// token to the span of its last, so the call gets the first span of the return type (or of
/// `fn`) on the function name and the last span (or of the closing parenthesis) on `.await`.
fn call_result(item: &ItemFn, private: &TokenStream, args: &[syn::Ident]) -> TokenStream {
    let sig = &item.sig;
    let (first, last) = match &sig.output {
        ReturnType::Type(_, ty) => first_last_span(ty),
        ReturnType::Default => (sig.fn_token.span, sig.paren_token.span.close()),
    };
    let mut function = sig.ident.clone();
    function.set_span(first);
    let await_ = quote_spanned!(last=> .await);
    let into_handler_result = crate::respan::respan(quote!(#private::into_handler_result), first);
    quote! {
        #into_handler_result(#function(__event #(, #args)*) #await_)
    }
}

fn first_last_span(tokens: impl ToTokens) -> (Span, Span) {
    let mut iter = tokens.into_token_stream().into_iter();
    let first = iter.next().map_or_else(Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    (first, last)
}

fn handler_options(options: &Options, private: &TokenStream) -> TokenStream {
    let mut tokens = quote!(#private::HandlerOptions::new());
    if let Some(n) = options.retries {
        tokens.extend(quote!(.retries(#n)));
    }
    if let Some(ms) = options.backoff_ms {
        tokens.extend(quote!(.backoff_ms(#ms)));
    }
    if let Some(ms) = options.max_backoff_ms {
        tokens.extend(quote!(.max_backoff_ms(#ms)));
    }
    if let Some(ms) = options.timeout_ms {
        tokens.extend(quote!(.timeout_ms(#ms)));
    }
    if let Some(n) = options.concurrency {
        tokens.extend(quote!(.concurrency(#n)));
    }
    tokens
}
