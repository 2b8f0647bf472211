//! Procedural macros of [`eventbus`](https://docs.rs/eventbus): `#[derive(DomainEvent)]` and
//! `#[event_handler]`.
//!
//! Do not depend on this crate directly: use the re-exports `eventbus::DomainEvent` and
//! `eventbus::event_handler`. The generated code names the runtime crate's hidden `__private`
//! module, which only matches the `eventbus` release pinned to this exact version.
//!
//! Set `EVENTBUS_MACROS_DEBUG` (to anything) while compiling to print every expansion to stderr.

mod attr;
mod ctxt;
mod domain_event;
mod event_handler;
mod paths;
mod respan;
mod symbol;

use proc_macro::TokenStream;
use quote::ToTokens;

/// Implements `DomainEvent` for a struct or an enum and registers the event at link time.
///
/// ```text
/// use eventbus::prelude::*;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// #[event(name = "chat.created", version = 2)]
/// struct ChatCreated {
///     chat_id: u64,
///     title: String,
/// }
/// ```
///
/// # `#[event(...)]`
///
/// | key | default | |
/// |---|---|---|
/// | `name = "..."` | the type name in snake_case | the envelope `type` and part of the Redis key |
/// | `version = N` | `1` | the schema version, at least 1 |
/// | `broadcast` | durable | deliver with Redis Pub/Sub to every running instance (at most once) instead of a stream |
/// | `durable` | durable | deliver through a Redis stream, one consumer group per handler (at least once) |
/// | `crate = "path"` | `::eventbus` | where to find `eventbus` if it is renamed |
///
/// A name is non-empty and uses only ASCII letters, digits, `.`, `_` and `-`.
///
/// The default name splits the type name into words the way the `heck` crate does and joins them
/// with `_` in lowercase: a word ends before an uppercase letter that follows a lowercase letter
/// or a digit, and the last letter of an uppercase run starts a new word when a lowercase letter
/// follows it. A raw identifier loses its `r#`.
///
/// | type | default name |
/// |---|---|
/// | `ChatCreated` | `chat_created` |
/// | `HTTPRequestSent` | `http_request_sent` |
/// | `Order2Paid` | `order2_paid` |
/// | `UserV2Created` | `user_v2_created` |
///
/// Generic types and unions are rejected: an event has one fixed name and is decoded into an
/// owned value.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    expand_with(input, |input: syn::DeriveInput| {
        Ok(domain_event::derive(&input))
    })
}

/// Registers an `async fn` as a handler of the event type of its first argument.
///
/// ```text
/// use eventbus::prelude::*;
///
/// #[event_handler]
/// async fn notify(ev: ChatCreated) -> anyhow::Result<()> {
///     Ok(())
/// }
///
/// #[event_handler(name = "projection.chat", retries = 5, backoff = "100ms", max_backoff = "10s", timeout = "30s", concurrency = 8)]
/// async fn project(ev: ChatCreated, ctx: Context, db: State<Db>) -> Result<(), MyError> {
///     Ok(())
/// }
/// ```
///
/// The first argument is the event, taken by value; it must implement `DomainEvent`. Every
/// further argument is extracted with `FromContext` (`Context`, `State<T>`, or your own type). The
/// function returns `Result<(), E>` where `E: Display`. It may be `pub` and live in any module;
/// it stays callable as a normal function.
///
/// # Arguments
///
/// | key | default | |
/// |---|---|---|
/// | `name = "..."` | `module_path!()::fn_name` | the consumer group; 1 to 200 characters, no whitespace, control characters, braces or glob characters (`*`, `?`, `[`, `]`, `\`) |
/// | `retries = N` | bus default | retries after the first attempt |
/// | `backoff = "100ms"` | bus default | first retry delay, a `humantime` duration |
/// | `max_backoff = "10s"` | bus default | cap on any delay, at least `backoff` (a bus default shorter than this handler's `backoff` never undercuts it) |
/// | `timeout = "30s"` | bus default (`handler_timeout`, `5m`) | how long one attempt may run; a longer one is cancelled and fails like an error (retried, then dead-lettered) |
/// | `concurrency = N` | bus default | runs in flight at once, at least 1 |
/// | `crate = "path"` | `::eventbus` | where to find `eventbus` if it is renamed |
///
/// Durations are checked at compile time and must be a positive whole number of milliseconds.
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    debug_print(event_handler::expand(args.into(), item.into())).into()
}

/// Parses `input`, runs `f`, and turns a parse error into a compile error (axum's `expand_with`).
fn expand_with<F, I, K>(input: TokenStream, f: F) -> TokenStream
where
    F: FnOnce(I) -> syn::Result<K>,
    I: syn::parse::Parse,
    K: ToTokens,
{
    match syn::parse(input).and_then(f) {
        Ok(tokens) => debug_print(tokens.into_token_stream()).into(),
        Err(err) => err.into_compile_error().into(),
    }
}

/// Prints the expansion to stderr when `EVENTBUS_MACROS_DEBUG` is set.
fn debug_print(tokens: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    if std::env::var_os("EVENTBUS_MACROS_DEBUG").is_some() {
        eprintln!("{tokens}");
    }
    tokens
}
