//! Moving generated tokens onto a user's span, as serde's `respan.rs` does.

use proc_macro2::{Group, Span, TokenStream, TokenTree};

/// Gives every token of `stream` the span `span`, so that an error about a path built by the
/// macro (for example a failed trait bound) is reported at the user's token.
pub(crate) fn respan(stream: TokenStream, span: Span) -> TokenStream {
    stream
        .into_iter()
        .map(|token| respan_token(token, span))
        .collect()
}

fn respan_token(mut token: TokenTree, span: Span) -> TokenTree {
    if let TokenTree::Group(g) = &mut token {
        *g = Group::new(g.delimiter(), respan(g.stream(), span));
    }
    token.set_span(span);
    token
}
