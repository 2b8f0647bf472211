//! The [`DomainEvent`] trait.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// An event type that can travel over the bus.
///
/// Implement it with `#[derive(DomainEvent)]`, never by hand: the derive also registers the event
/// so that two types claiming one event name are caught at start-up.
///
/// ```
/// use eventbus::prelude::*;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// #[event(name = "chat.created", version = 2)]
/// struct ChatCreated { chat_id: u64, title: String }
///
/// assert_eq!(ChatCreated::NAME, "chat.created");
/// assert_eq!(ChatCreated::VERSION, 2);
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// struct UserSignedUp { user_id: u64 }
///
/// // Without `name`, the type name in snake_case; without `version`, 1.
/// assert_eq!(UserSignedUp::NAME, "user_signed_up");
/// assert_eq!(UserSignedUp::VERSION, 1);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event: it does not implement `DomainEvent`",
    label = "not a `DomainEvent`",
    note = "add `#[derive(Serialize, Deserialize, DomainEvent)]` to the definition of `{Self}`"
)]
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event name: the `type` of the envelope and the last part of the Redis key.
    ///
    /// `#[event(name = "...")]`, or the type name in snake_case (`ChatCreated` → `chat_created`).
    const NAME: &'static str;

    /// The schema version written into every envelope (`schemaversion`). Default 1.
    ///
    /// A handler accepts envelopes whose version is between 1 and this value; a newer version is
    /// dead-lettered with the reason instead of being decoded with the wrong schema.
    const VERSION: u32;

    /// How the event travels: [`Delivery::Durable`] (a stream; the default) or
    /// [`Delivery::Broadcast`] (`#[event(broadcast)]`: Pub/Sub).
    const DELIVERY: Delivery = Delivery::Durable;
}

/// How an event travels from publishers to handlers.
///
/// | | `Durable` (default) | `Broadcast` (`#[event(broadcast)]`) |
/// |---|---|---|
/// | Redis primitive | a stream, one consumer group per handler | a Pub/Sub channel |
/// | replicas of a service | share each handler's work | every replica gets every event |
/// | delivery | at least once, survives crashes and restarts | at most once; nothing is kept while no one listens |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// `XADD` to the event's stream; every handler's consumer group gets every event once.
    Durable,
    /// `PUBLISH` to the event's channel; every subscribed bus instance runs every handler.
    Broadcast,
}

impl Delivery {
    /// `"durable"` or `"broadcast"`, as written in dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Durable => "durable",
            Delivery::Broadcast => "broadcast",
        }
    }
}

/// Link-time record of one `#[derive(DomainEvent)]`, used to detect two types with one event name.
#[doc(hidden)]
#[derive(Debug)]
pub struct EventRegistration {
    pub(crate) name: &'static str,
    pub(crate) type_name: fn() -> &'static str,
    pub(crate) delivery: Delivery,
}

impl EventRegistration {
    /// Called by the derive.
    pub const fn new<E: DomainEvent>() -> Self {
        Self {
            name: E::NAME,
            type_name: core::any::type_name::<E>,
            delivery: E::DELIVERY,
        }
    }
}

inventory::collect!(EventRegistration);
