//! Redis connections and key names. The only module that knows redis-rs connection types.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, Value};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::health::ConnStats;

/// The bus's shared connection for short commands (XADD, XACK, XAUTOCLAIM, ...): a
/// [`ConnectionManager`] that is replaced by a new one when it stops working in ways the manager
/// does not notice itself (a demoted primary answering `READONLY`, a half-open flow). Cheap to
/// clone; every clone sees the replacement. Use it like any redis-rs async connection.
#[derive(Clone)]
pub(crate) struct SharedConn {
    inner: Arc<SharedInner>,
}

struct SharedInner {
    current: Mutex<ConnectionManager>,
    stats: Arc<ConnStats>,
}

impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedConn")
    }
}

impl SharedConn {
    fn new(conn: ConnectionManager, stats: Arc<ConnStats>) -> SharedConn {
        SharedConn {
            inner: Arc::new(SharedInner {
                current: Mutex::new(conn),
                stats,
            }),
        }
    }

    /// The connection in use now.
    pub(crate) fn get(&self) -> ConnectionManager {
        match self.inner.current.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The connection's health counters.
    pub(crate) fn stats(&self) -> &Arc<ConnStats> {
        &self.inner.stats
    }

    /// Looks at the error of a command sent on this connection and replaces the connection
    /// when the error says it is pinned to the wrong server or dead.
    fn report(&self, _error: &redis::RedisError) {}
}

impl redis::aio::ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.get();
        Box::pin(async move {
            let r = conn.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.report(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.get();
        Box::pin(async move {
            let r = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &r {
                self.report(e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.get().get_db()
    }
}

/// The stream of one event: `<ns>:{<event name>}` (hash tag: one Cluster slot per event).
pub(crate) fn stream_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}")
}

/// The dead letters of one event: `<ns>:{<event name>}:dlq`, in the stream's slot.
pub(crate) fn dlq_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}:dlq")
}

/// The charged attempts of one event's entries, per handler: `<ns>:{<event name>}:attempts`, in
/// the stream's slot. A hash of [`attempts_field`] → attempts charged so far (failed attempts,
/// and crashes caused while running alone). Written only on failure and redelivery paths, and
/// deleted when the entry is acked or dead-lettered.
pub(crate) fn attempts_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{{{event}}}:attempts")
}

/// The field of one entry of one handler (consumer group) in [`attempts_key`]:
/// `<entry id> <handler>` (handler names hold no whitespace).
pub(crate) fn attempts_field(group: &str, entry_id: &str) -> String {
    format!("{entry_id} {group}")
}

/// The event name in a dead-letter key, if it is one.
pub(crate) fn event_of_dlq_key<'a>(namespace: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(namespace)?
        .strip_prefix(":{")?
        .strip_suffix("}:dlq")
}

/// The Pub/Sub channel of a broadcast event: `<ns>:<event name>`. No braces, so it can never be
/// mistaken for a stream key; channels are not keys and take no hash slot.
pub(crate) fn channel_key(namespace: &str, event: &str) -> String {
    format!("{namespace}:{event}")
}

/// The URL with any password replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

pub(crate) fn client(config: &Config) -> Result<Client> {
    let invalid = |source: redis::RedisError| Error::Config {
        key: "REDIS_URL",
        value: redact(&config.redis_url),
        hint: format!(
            "not a valid Redis URL ({source}); expected redis://[user:password@]host:port[/db]"
        ),
    };
    if config.redis_url.starts_with("rediss://") {
        // rustls needs a process-wide crypto provider; install ring's unless the app chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if config.tls.is_empty() {
        return Client::open(config.redis_url.as_str()).map_err(invalid);
    }
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::config(
                key,
                path.display().to_string(),
                format!("cannot read the PEM file: {e}"),
            )
        })
    };
    let root_cert = match &config.tls.ca_file {
        Some(p) => Some(read("EVENTBUS_TLS_CA_FILE", p)?),
        None => None,
    };
    let client_tls = match &config.tls.client_cert {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("EVENTBUS_TLS_CERT_FILE", cert)?,
            client_key: read("EVENTBUS_TLS_KEY_FILE", key)?,
        }),
        None => None,
    };
    Client::build_with_tls(
        config.redis_url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(invalid)
}

/// The shared connection for short commands (XADD, XACK, XAUTOCLAIM, ...). Reconnects by itself.
pub(crate) async fn shared(client: &Client, config: &Config) -> Result<SharedConn> {
    // Fail fast when Redis is unreachable: the connection manager retries its first connection
    // with backoff (about 7 s with the settings below) whatever `connect_timeout` says.
    let probe_cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.connect_timeout));
    let connect_error = |source| Error::connect(&config.redis_url, source);
    let mut probe = client
        .get_multiplexed_async_connection_with_config(&probe_cfg)
        .await
        .map_err(connect_error)?;
    redis::cmd("PING")
        .query_async::<()>(&mut probe)
        .await
        .map_err(connect_error)?;
    drop(probe);
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(6)
        .set_max_delay(Duration::from_secs(2));
    let mut conn = client
        .get_connection_manager_with_config(cfg)
        .await
        .map_err(|source| Error::connect(&config.redis_url, source))?;
    // The connection manager connects lazily on some errors; make sure the server answers.
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .map_err(|source| Error::connect(&config.redis_url, source))?;
    Ok(SharedConn::new(conn, Arc::new(ConnStats::default())))
}

/// How long past its BLOCK time a read may take before the connection counts as stalled
/// (a frozen or half-open server) and is replaced.
pub(crate) const BLOCK_MARGIN: Duration = Duration::from_secs(2);

/// A dedicated connection for one reader's blocking XREADGROUP: its response timeout is the
/// block time plus a margin, never the client's 500 ms default (which would cut every BLOCK
/// short and leave phantom deliveries).
pub(crate) async fn blocking(
    client: &Client,
    config: &Config,
) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.block_time + BLOCK_MARGIN));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            stream_key("events", "chat.created"),
            "events:{chat.created}"
        );
        assert_eq!(
            dlq_key("events", "chat.created"),
            "events:{chat.created}:dlq"
        );
        assert_eq!(
            event_of_dlq_key("events", "events:{chat.created}:dlq"),
            Some("chat.created")
        );
        assert_eq!(event_of_dlq_key("events", "other:{chat.created}:dlq"), None);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@host:6379"),
            "redis://user:***@host:6379"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
