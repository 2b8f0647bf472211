//! State given to the bus, handed to handlers by type ([`State<T>`]).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

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
