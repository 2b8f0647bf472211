//! Handler arguments after the event: [`FromContext`], [`State`] and [`States`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::context::Context;
use crate::error::Error;

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

/// Shared application state given to the bus with `Bus::builder().state(value)`.
///
/// Like axum's `State`: a clone of the value, dereferencing to `T`.
///
/// ```no_run
/// use eventbus::prelude::*;
///
/// #[derive(Clone)]
/// struct Db { url: String }
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// struct UserSignedUp { user_id: u64 }
///
/// #[event_handler]
/// async fn store(ev: UserSignedUp, db: State<Db>) -> anyhow::Result<()> {
///     println!("storing {} in {}", ev.user_id, db.url);
///     Ok(())
/// }
///
/// # async fn run() -> eventbus::Result<()> {
/// let bus = Bus::builder().state(Db { url: "postgres://".into() }).build().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
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

/// The state values given to the bus, by type.
#[derive(Clone, Default)]
pub struct States {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl States {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if one was given.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }

    /// Whether a value of type `T` was given.
    pub fn contains<T: Send + Sync + 'static>(&self) -> bool {
        self.map.contains_key(&TypeId::of::<T>())
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("States")
            .field("len", &self.map.len())
            .finish()
    }
}

impl FromContext for crate::EventId {
    fn from_context(ctx: &Context) -> Result<Self, Error> {
        Ok(ctx.event_id())
    }
}
