//! Handler arguments after the event: [`FromContext`], [`State`] and [`States`].

use crate::context::Context;
use crate::error::Error;
pub use crate::state::{State, States};

/// A type that can be an argument of an `#[event_handler]` after the event.
///
/// Implemented by [`Context`] and [`State<T>`]; implement it for your own extractors.
///
/// ```
/// use eventbus::{Context, Error, FromContext};
///
/// /// The id of the request that started the chain of events.
/// struct Correlation(String);
///
/// impl FromContext for Correlation {
///     fn from_context(ctx: &Context) -> Result<Self, Error> {
///         Ok(Correlation(ctx.correlation_id().to_string()))
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of an `#[event_handler]`",
    label = "not an extractor",
    note = "after the event, handler arguments must implement `FromContext`: `Context`, `State<T>`, or your own type"
)]
pub trait FromContext: Sized + Send + 'static {
    /// Checked once when the bus is built: fail here when the value can never be produced
    /// (as [`State<T>`] does when no `T` was given), so the mistake shows at start-up.
    ///
    /// # Errors
    ///
    /// An error that says what to configure.
    fn check(states: &States) -> Result<(), Error> {
        let _ = states;
        Ok(())
    }

    /// Produces the argument for one handler run.
    ///
    /// # Errors
    ///
    /// Counts as a failed attempt of the handler.
    fn from_context(ctx: &Context) -> Result<Self, Error>;
}

impl FromContext for Context {
    fn from_context(ctx: &Context) -> Result<Self, Error> {
        Ok(ctx.clone())
    }
}

impl<T: Clone + Send + Sync + 'static> FromContext for State<T> {
    fn check(states: &States) -> Result<(), Error> {
        if states.contains::<T>() {
            Ok(())
        } else {
            Err(Error::MissingState {
                handler: String::new(),
                type_name: std::any::type_name::<T>(),
            })
        }
    }

    fn from_context(ctx: &Context) -> Result<Self, Error> {
        ctx.states().get::<T>().cloned().map(State).ok_or_else(|| {
            Error::Extract(format!(
                "no state of type `{}` was given to the bus",
                std::any::type_name::<T>()
            ))
        })
    }
}

impl FromContext for crate::EventId {
    fn from_context(ctx: &Context) -> Result<Self, Error> {
        Ok(ctx.event_id())
    }
}
