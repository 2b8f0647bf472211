//! Not public API: paths used by the code that `eventbus-derive` generates.
//!
//! Everything here may change in any release; never name it from user code.

pub use ::core::concat;
pub use ::core::file;
pub use ::core::line;
pub use ::core::module_path;
pub use ::core::option::Option;
pub use ::core::result::Result::{self, Err, Ok};
pub use ::inventory;
pub use ::serde_json::value::RawValue;
pub use ::std::boxed::Box;
pub use ::std::string::String;

pub use crate::event::EventRegistration;
pub use crate::handler::{
    CallFn, CallResult, CheckFn, HandlerFuture, HandlerOptions, HandlerRegistration,
    IntoHandlerResult,
};

/// Decodes the envelope's `data` into the handler's event type.
///
/// Bounded by `DeserializeOwned` only: the `DomainEvent` bound is checked once, by
/// `HandlerRegistration::new`, so a type that forgot the derive gets one error, not two.
pub fn decode<E: ::serde::de::DeserializeOwned>(data: &RawValue) -> Result<E, serde_json::Error> {
    serde_json::from_str(data.get())
}

/// Boxes the future of one handler run.
pub fn boxed<F>(fut: F) -> HandlerFuture
where
    F: ::core::future::Future<Output = Result<(), String>> + Send + 'static,
{
    Box::pin(fut)
}

/// Checks an argument type at start-up; generated with the argument's span.
pub fn check_extractor<T: crate::FromContext>(states: &crate::States) -> Result<(), crate::Error> {
    T::check(states)
}

/// Extracts an argument for one run; generated with the argument's span.
pub fn extract<T: crate::FromContext>(ctx: &crate::Context) -> Result<T, crate::Error> {
    T::from_context(ctx)
}

/// Converts the handler's return value; generated with the return type's span.
pub fn into_handler_result<R: IntoHandlerResult>(r: R) -> Result<(), String> {
    r.into_handler_result()
}
