//! Redis Pub/Sub for broadcast events: one connection per bus subscribed to every broadcast
//! channel, pinged while it is quiet so that a frozen server or a half-open connection is noticed.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, RedisError, Value};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::Redis;
use super::conn::BLOCK_MARGIN;
use super::errors::classify;
use crate::error::{Error, TransportError, TransportErrorKind};
use crate::transport::subscribe::{self, Received};

/// One Pub/Sub message.
pub(crate) type Message = Msg;

/// The channel of `msg`.
pub(crate) fn channel(msg: &Msg) -> &str {
    msg.get_channel_name()
}

/// The payload of `msg`.
pub(crate) fn payload(msg: &Msg) -> &[u8] {
    msg.get_payload_bytes()
}

/// The shortest time between two pings of a subscription.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);

/// A subscribed Pub/Sub connection: the sink (commands: `PING`) and the stream of messages.
pub(crate) struct Subscription {
    sink: PubSubSink,
    stream: PubSubStream,
    /// Pings every `block_time` (at least [`MIN_PING_INTERVAL`]).
    ping: Interval,
    /// How long a ping may wait for its reply: `block_time` plus [`BLOCK_MARGIN`], as a blocking
    /// read's.
    ping_timeout: Duration,
}

impl Redis {
    /// `SUBSCRIBE` on a new connection, confirmed within `connect_timeout`.
    pub(crate) async fn subscribe(
        &self,
        channels: &[&str],
    ) -> Result<Subscription, TransportError> {
        let limit = self.config.connect_timeout;
        let subscribed = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channels).await?;
            Ok::<_, RedisError>(pubsub.split())
        };
        let (sink, stream) = match tokio::time::timeout(limit, subscribed).await {
            Ok(result) => result.map_err(classify)?,
            Err(_) => {
                return Err(classify(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("SUBSCRIBE was not confirmed within {limit:?}"),
                    )
                    .into(),
                ));
            }
        };
        let every = self.config.block_time.max(MIN_PING_INTERVAL);
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Subscription {
            sink,
            stream,
            ping,
            ping_timeout: self.config.block_time + BLOCK_MARGIN,
        })
    }

    /// A subscription that failed at start-up: see [`start_error`].
    pub(crate) fn subscribe_error(&self, error: TransportError) -> Error {
        start_error(&self.config.redis_url, error)
    }
}

/// A subscription that failed at start-up: the ACL's denial as [`Error::Permission`], anything
/// else as the server at `redis_url` being unreachable, as for the shared connection (the hint
/// comes from the Redis error behind `error`, its source).
fn start_error(redis_url: &str, error: TransportError) -> Error {
    if error.kind() == TransportErrorKind::Permission {
        return Error::transport("SUBSCRIBE")(error);
    }
    Error::unreachable(crate::config::redact(redis_url), error)
}

impl Subscription {
    /// The next message, or the outcome of the next ping.
    pub(crate) async fn recv(&mut self) -> Received {
        tokio::select! {
            msg = self.stream.next() => match msg {
                Some(msg) => Received::Message(subscribe::Message::Redis(msg)),
                None => Received::Lost("the connection closed".to_owned()),
            },
            _ = self.ping.tick() => {
                // Subscribed (RESP2), PING answers `["pong", ""]`, not `PONG`: any reply.
                match tokio::time::timeout(self.ping_timeout, self.sink.ping::<Value>()).await {
                    Ok(Ok(_)) => Received::Alive,
                    Ok(Err(e)) => Received::Lost(e.to_string()),
                    Err(_) => Received::Lost("ping timed out".to_owned()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_are_a_denial_or_an_unreachable_server() {
        let denied = match redis::parse_redis_value(b"-NOPERM no permissions\r\n") {
            Ok(Value::ServerError(e)) => RedisError::from(e),
            other => panic!("not a server error: {other:?}"),
        };
        let error = start_error("redis://u:pw@h:1", classify(denied));
        assert!(
            matches!(
                error,
                Error::Permission {
                    command: "SUBSCRIBE",
                    ..
                }
            ),
            "{error:?}"
        );
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let error = start_error("redis://u:pw@h:1", classify(refused));
        let text = error.to_string();
        assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
        assert!(
            text.contains("start redis-server") && !text.contains("pw"),
            "{text}"
        );
    }
}
