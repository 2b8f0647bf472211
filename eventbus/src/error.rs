//! The one public error type.

/// A specialised `Result` for eventbus operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
///
/// Handler failures are not errors of this type: they are retried and dead-lettered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached at start-up.
    #[error("cannot reach Redis at {url}: {hint}")]
    Connect {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What to do about it.
        hint: &'static str,
        /// What the client reported.
        #[source]
        source: redis::RedisError,
    },

    /// A Redis command failed.
    #[error("redis command {command} failed")]
    Redis {
        /// The command that failed.
        command: &'static str,
        /// What Redis or the client reported.
        #[source]
        source: redis::RedisError,
    },

    /// The Redis ACL denied a command (`NOPERM`). Not retried: it will not pass by itself.
    #[error(
        "permission denied by the Redis ACL for {command} ({detail}): give the user the key pattern `~<namespace>:*` and the commands listed in the README's ACL section"
    )]
    Permission {
        /// The command that was denied.
        command: &'static str,
        /// What Redis said.
        detail: String,
    },

    /// A configuration value is invalid.
    #[error("invalid configuration `{key}` = {value:?}: {hint}")]
    Config {
        /// The builder setting or environment variable.
        key: &'static str,
        /// The value given.
        value: String,
        /// What a valid value looks like.
        hint: String,
    },

    /// Two handlers are registered under one name.
    #[error(
        "two handlers are named `{name}` (at {first} and {second}): handler names are consumer group names and must be unique; set `#[event_handler(name = \"...\")]` on one of them"
    )]
    DuplicateHandler {
        /// The shared name.
        name: String,
        /// Where the first one is defined.
        first: String,
        /// Where the second one is defined.
        second: String,
    },

    /// Two event types are registered under one event name.
    #[error(
        "two event types are named `{name}`: `{first}` and `{second}`; give one of them `#[event(name = \"...\")]`"
    )]
    DuplicateEvent {
        /// The shared event name.
        name: String,
        /// One type.
        first: &'static str,
        /// The other type.
        second: &'static str,
    },

    /// `.handlers([...])` named a handler that is not registered.
    #[error("no handler is named `{name}`; registered handlers: {known}")]
    UnknownHandler {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated.
        known: String,
    },

    /// A handler asks for `State<T>` that was not given to the builder.
    #[error(
        "handler `{handler}` asks for `State<{type_name}>`, but no such state was given: call `.state(value)` on `Bus::builder()` with a `{type_name}`"
    )]
    MissingState {
        /// The handler.
        handler: String,
        /// The state type.
        type_name: &'static str,
    },

    /// An event could not be encoded for publishing.
    #[error("cannot encode event `{event}`")]
    Encode {
        /// The event name.
        event: &'static str,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// A dead letter was asked for that does not exist.
    #[error("no dead letter with id `{0}`")]
    DeadLetterNotFound(String),

    /// A dead letter cannot be replayed (its envelope or handler is unusable).
    #[error("dead letter `{id}` cannot be replayed: {reason}")]
    Replay {
        /// The dead letter's id.
        id: String,
        /// Why.
        reason: String,
    },

    /// An event's envelope is larger than the configured maximum payload.
    #[error(
        "event `{event}` is {size} bytes as an envelope, more than the maximum of {max}: raise `max_payload` (EVENTBUS_MAX_PAYLOAD) or publish a reference to the data instead"
    )]
    PayloadTooLarge {
        /// The event name.
        event: &'static str,
        /// The envelope's size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },

    /// A call did not finish within its time limit (e.g. `publish_timeout`): Redis is slow,
    /// frozen or unreachable. For a publish, the event may or may not have been stored.
    #[error("{operation} did not finish within {limit:?}{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout {
        /// What timed out, e.g. "publish of `order.placed`".
        operation: String,
        /// The limit that passed.
        limit: std::time::Duration,
        /// The last error seen before the limit passed, if any.
        last_error: Option<String>,
    },

    /// Waiting for a shutdown signal failed.
    #[error("cannot listen for shutdown signals")]
    Signal(#[source] std::io::Error),

    /// An extractor could not produce its value.
    #[error("{0}")]
    Extract(String),
}

impl Error {
    pub(crate) fn redis(command: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
        move |source| {
            if source.code() == Some("NOPERM") {
                Error::Permission {
                    command,
                    detail: source.detail().unwrap_or("NOPERM").to_owned(),
                }
            } else {
                Error::Redis { command, source }
            }
        }
    }

    /// Whether retrying the same call later may succeed: connection and timeout failures, and
    /// server answers that pass by themselves (`READONLY`/`MASTERDOWN` during a failover,
    /// `LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`); false for configuration, permission and
    /// encoding errors, and for `MOVED`/`ASK` (this client does not follow cluster redirects).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis { source, .. } | Error::Connect { source, .. } => is_transient(source),
            Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// A start-up connection failure, with a hint that fits its cause.
    pub(crate) fn connect(url: &str, source: redis::RedisError) -> Error {
        let text = format!("{source:?}").to_ascii_lowercase();
        let hint = if ["certificate", "tls", "unknownissuer", "handshake"]
            .iter()
            .any(|w| text.contains(w))
        {
            "the TLS handshake failed: check the CA file (EVENTBUS_TLS_CA_FILE) and, for mutual TLS, the client certificate (EVENTBUS_TLS_CERT_FILE, EVENTBUS_TLS_KEY_FILE)"
        } else if matches!(source.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) {
            "Redis refused the credentials: check the user and password in REDIS_URL"
        } else {
            "start redis-server there or set REDIS_URL"
        };
        Error::Connect {
            url: crate::transport::redact(url),
            hint,
            source,
        }
    }

    /// As [`Error::redis`], naming the key in a permission error.
    pub(crate) fn redis_key<'a>(
        command: &'static str,
        key: &'a str,
    ) -> impl FnOnce(redis::RedisError) -> Error + 'a {
        move |source| match Error::redis(command)(source) {
            Error::Permission { command, detail } => Error::Permission {
                command,
                detail: format!("{detail}; key `{key}`"),
            },
            other => other,
        }
    }

    pub(crate) fn config(
        key: &'static str,
        value: impl Into<String>,
        hint: impl Into<String>,
    ) -> Error {
        Error::Config {
            key,
            value: value.into(),
            hint: hint.into(),
        }
    }
}

/// Failures that a retry may get past: connection-level ones (I/O error, timeout, dropped or
/// refused connection) and server answers that pass by themselves (`READONLY` and `MASTERDOWN`
/// while the connection moves to the new primary, `LOADING`, `BUSY`, `TRYAGAIN`,
/// `CLUSTERDOWN`). Classified by kind and code. `MOVED`/`ASK` are not: against a non-cluster
/// client the same command would be redirected again, forever.
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("READONLY" | "MASTERDOWN" | "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(reply: &str) -> redis::RedisError {
        match redis::parse_redis_value(reply.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn moved_and_ask_are_not_transient() {
        assert!(!is_transient(&parsed("-MOVED 3999 127.0.0.1:6381\r\n")));
        assert!(!is_transient(&parsed("-ASK 3999 127.0.0.1:6381\r\n")));
        for reply in [
            "-READONLY You can't write against a read only replica.\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-BUSY Redis is busy running a script\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
        ] {
            assert!(is_transient(&parsed(reply)), "{reply}");
        }
        assert!(!is_transient(&parsed("-NOPERM no permissions\r\n")));
        assert!(!is_transient(&parsed(
            "-WRONGTYPE Operation against a key\r\n"
        )));
        assert!(!is_transient(&parsed("-OOM command not allowed\r\n")));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(is_transient(&io));
    }
}
