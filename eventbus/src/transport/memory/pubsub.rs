//! Pub/Sub for broadcast events (`PUBLISH`, `SUBSCRIBE`): at most once. A message goes to the
//! subscriptions that exist when it is published and is lost when there is none; channels are
//! not keys. [`Memory::disconnect_broadcast`] ends every subscription, as a dropped connection
//! does.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Memory;

/// One message as a subscription receives it: the channel and the payload.
type Message = (String, Arc<[u8]>);

/// The store's side of one subscription.
#[derive(Debug)]
pub(super) struct Subscriber {
    /// The channels it listens to.
    channels: BTreeSet<String>,
    /// Where its messages go.
    tx: mpsc::UnboundedSender<Message>,
    /// Fired when the store disconnects it.
    ended: CancellationToken,
    /// Messages sent to it and not yet received.
    queued: Arc<AtomicUsize>,
    /// The session (consumer process) it belongs to: once killed, it receives nothing more, as
    /// a dead process's connection is closed.
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl Subscriber {
    /// Whether it can still receive.
    fn live(&self) -> bool {
        !self.tx.is_closed() && !self.dead.load(Ordering::Acquire)
    }
}

/// A subscription to some channels: receives every message published to them from its creation
/// until it is dropped or [`Memory::disconnect_broadcast`] ends it. The queue is unbounded (the
/// runtime bounds its own lanes).
#[derive(Debug)]
pub(crate) struct Subscription {
    /// The messages, in publish order.
    rx: mpsc::UnboundedReceiver<Message>,
    /// Fired by [`Memory::disconnect_broadcast`].
    ended: CancellationToken,
    /// Messages sent to it and not yet received.
    queued: Arc<AtomicUsize>,
}

impl Subscription {
    /// The next message: its channel and payload. `None` once the subscription was ended by
    /// [`Memory::disconnect_broadcast`]; messages still queued then are lost with the
    /// connection, as in Redis.
    pub(crate) async fn recv(&mut self) -> Option<(String, Arc<[u8]>)> {
        if self.ended.is_cancelled() {
            return None;
        }
        tokio::select! {
            biased;
            () = self.ended.cancelled() => None,
            m = self.rx.recv() => {
                if m.is_some() {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                }
                m
            }
        }
    }
}

impl super::State {
    /// `PUBLISH` under the store's lock (so a script-like step can publish atomically).
    pub(super) fn publish(&mut self, channel: &str, payload: Arc<[u8]>) -> usize {
        self.subscribers.retain(Subscriber::live);
        self.subscribers
            .iter()
            .filter(|s| s.channels.contains(channel))
            .filter(|s| {
                s.queued.fetch_add(1, Ordering::AcqRel);
                let sent =
                    s.tx.send((channel.to_owned(), Arc::clone(&payload)))
                        .is_ok();
                if !sent {
                    s.queued.fetch_sub(1, Ordering::AcqRel);
                }
                sent
            })
            .count()
    }
}

impl Memory {
    /// `PUBLISH <channel> <payload>`: delivers to every current subscription of `channel`;
    /// returns how many got it (0: the message is lost).
    pub(crate) fn publish(&self, channel: &str, payload: Arc<[u8]>) -> usize {
        self.lock().publish(channel, payload)
    }

    /// `SUBSCRIBE <channels...>`: a subscription that receives every message published to
    /// these channels from now on.
    pub(crate) fn subscribe(&self, channels: &[String]) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let ended = CancellationToken::new();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut state = self.lock();
        state.subscribers.retain(Subscriber::live);
        state.subscribers.push(Subscriber {
            channels: channels.iter().cloned().collect(),
            tx,
            ended: ended.clone(),
            queued: queued.clone(),
            dead: self.dead.clone(),
        });
        Subscription { rx, ended, queued }
    }

    /// Messages published to live subscriptions that they have not received yet.
    pub(crate) fn undelivered_broadcasts(&self) -> usize {
        let mut state = self.lock();
        state.subscribers.retain(Subscriber::live);
        state
            .subscribers
            .iter()
            .filter(|s| !s.ended.is_cancelled())
            .map(|s| s.queued.load(Ordering::Acquire))
            .sum()
    }

    /// Drops every Pub/Sub connection (fault injection): every current [`Subscription`] ends
    /// (`recv` returns `None`) and stops counting as a receiver; messages published until the
    /// next [`subscribe`](Self::subscribe) are lost. Later subscriptions work as usual.
    pub(crate) fn disconnect_broadcast(&self) {
        let gone = std::mem::take(&mut self.lock().subscribers);
        for s in gone {
            s.ended.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    fn channels(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn every_subscription_of_the_channel_gets_each_message() {
        let m = Memory::new();
        let mut a = m.subscribe(&channels(&["ns:x", "ns:y"]));
        let mut b = m.subscribe(&channels(&["ns:x"]));
        assert_eq!(m.publish("ns:x", payload("1")), 2);
        assert_eq!(m.publish("ns:y", payload("2")), 1);
        assert_eq!(m.publish("ns:z", payload("3")), 0);
        assert_eq!(a.recv().await, Some(("ns:x".to_owned(), payload("1"))));
        assert_eq!(a.recv().await, Some(("ns:y".to_owned(), payload("2"))));
        assert_eq!(b.recv().await, Some(("ns:x".to_owned(), payload("1"))));
        // Channels are not keys.
        assert!(m.keys().is_empty());
    }

    #[tokio::test]
    async fn nobody_listening_means_lost() {
        let m = Memory::new();
        assert_eq!(m.publish("ns:x", payload("early")), 0);
        let mut s = m.subscribe(&channels(&["ns:x"]));
        assert_eq!(m.publish("ns:x", payload("late")), 1);
        assert_eq!(s.recv().await, Some(("ns:x".to_owned(), payload("late"))));
        // A dropped subscription no longer counts.
        drop(s);
        assert_eq!(m.publish("ns:x", payload("after drop")), 0);
    }

    #[tokio::test]
    async fn disconnect_ends_every_subscription_and_later_ones_work() {
        let m = Memory::new();
        let mut a = m.subscribe(&channels(&["ns:x"]));
        let mut b = m.subscribe(&channels(&["ns:y"]));
        assert_eq!(m.publish("ns:x", payload("queued")), 1);

        // A receiver parked in recv() is released too.
        let parked = tokio::spawn(async move { b.recv().await });
        tokio::task::yield_now().await;
        m.disconnect_broadcast();
        assert_eq!(parked.await.expect("task"), None);
        // What was queued is lost with the connection.
        assert_eq!(a.recv().await, None);
        assert_eq!(a.recv().await, None);
        assert_eq!(m.publish("ns:x", payload("lost")), 0);

        let mut c = m.subscribe(&channels(&["ns:x"]));
        assert_eq!(m.publish("ns:x", payload("new")), 1);
        assert_eq!(c.recv().await, Some(("ns:x".to_owned(), payload("new"))));
        assert_eq!(a.recv().await, None);
    }
}
