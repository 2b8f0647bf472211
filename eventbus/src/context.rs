//! [`Context`]: what a handler knows about the event it runs for.

use std::sync::Arc;

use crate::envelope::{EventId, Meta};
use crate::error::Result;
use crate::event::DomainEvent;
use crate::publish::Publisher;
use crate::state::States;

/// What a handler knows about the delivery it runs for, and a way to publish follow-up events.
///
/// Take it as a handler argument:
///
/// ```
/// use eventbus::prelude::*;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// struct OrderPlaced { order_id: u64 }
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// struct InvoiceRequested { order_id: u64 }
///
/// #[event_handler]
/// async fn bill(ev: OrderPlaced, ctx: Context) -> anyhow::Result<()> {
///     tracing::info!(event_id = %ctx.event_id(), attempt = ctx.attempt(), "billing");
///     // Carries the correlation id on, and records this event as the cause.
///     ctx.publish(&InvoiceRequested { order_id: ev.order_id }).await?;
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Context {
    delivery: Arc<Inbound>,
    attempt: u32,
}

/// The parts of a context shared by all attempts of one delivery.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) event_id: EventId,
    pub(crate) event_name: &'static str,
    pub(crate) correlation_id: Option<EventId>,
    pub(crate) causation_id: Option<EventId>,
    pub(crate) handler: &'static str,
    pub(crate) publisher: Publisher,
    pub(crate) states: Arc<States>,
}

impl Context {
    pub(crate) fn new(delivery: Arc<Inbound>, attempt: u32) -> Self {
        Self { delivery, attempt }
    }

    /// The id of the event being handled (the envelope's `id`).
    pub fn event_id(&self) -> EventId {
        self.delivery.event_id.clone()
    }

    /// The event name (the envelope's `type`).
    pub fn event_name(&self) -> &str {
        self.delivery.event_name
    }

    /// The correlation id: the publisher's, or the event's own id when the publisher set none.
    pub fn correlation_id(&self) -> EventId {
        self.delivery
            .correlation_id
            .clone()
            .unwrap_or_else(|| self.delivery.event_id.clone())
    }

    /// The id of the event whose handler published this one, if any.
    pub fn causation_id(&self) -> Option<EventId> {
        self.delivery.causation_id.clone()
    }

    /// Which attempt this is, counting from 1: the attempts already charged to this event
    /// (failed attempts, and crashes it caused while running alone, in any process) plus this
    /// one. Redeliveries that never ran (a crash of a neighbour, a shutdown, a reconnect) do not
    /// count. The event is dead-lettered after attempt `retries + 1` fails.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The name of the handler running (its consumer group).
    pub fn handler(&self) -> &'static str {
        self.delivery.handler
    }

    /// The state values given to the bus.
    pub fn states(&self) -> &States {
        &self.delivery.states
    }

    /// Publishes a follow-up event: it carries this event's correlation id, and this event's id
    /// as its causation id.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`](crate::Bus::publish).
    pub async fn publish<E: DomainEvent>(&self, event: &E) -> Result<EventId> {
        let meta = Meta {
            correlation_id: Some(self.correlation_id()),
            causation_id: Some(self.delivery.event_id.clone()),
        };
        self.delivery.publisher.publish(event, &meta).await
    }
}
