//! The one public error type.

/// A specialised `Result` for eventbus operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
///
/// Handler failures are not errors of this type: they are retried and dead-lettered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport (Redis) could not be reached at start-up.
    #[error("cannot reach Redis at {url}: {hint}")]
    Unreachable {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What to do about it.
        hint: &'static str,
        /// What the transport reported.
        #[source]
        source: TransportError,
    },

    /// A transport operation (a Redis command) failed.
    #[error("{op} failed ({})", source.kind())]
    Transport {
        /// The operation that failed, e.g. `XADD` or `XGROUP CREATE`.
        op: &'static str,
        /// What the transport reported; [`TransportError::kind`] says what kind of failure.
        #[source]
        source: TransportError,
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
    /// Whether retrying the same call later may succeed: connection and timeout failures, and
    /// server answers that pass by themselves (`READONLY`/`MASTERDOWN` during a failover,
    /// `LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`); false for configuration, permission and
    /// encoding errors, and for `MOVED`/`ASK` (this client does not follow cluster redirects).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { source, .. } | Error::Unreachable { source, .. } => {
                source.is_transient()
            }
            Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// A failed transport operation: [`Error::Permission`] when an ACL denied it,
    /// [`Error::Transport`] otherwise.
    pub(crate) fn transport(op: &'static str) -> impl FnOnce(TransportError) -> Error {
        move |source| {
            if source.kind() == TransportErrorKind::Permission {
                Error::Permission {
                    command: op,
                    detail: source.message().to_owned(),
                }
            } else {
                Error::Transport { op, source }
            }
        }
    }

    /// As [`Error::transport`], naming the key in a permission error.
    pub(crate) fn transport_key<'a>(
        op: &'static str,
        key: &'a str,
    ) -> impl FnOnce(TransportError) -> Error + 'a {
        move |source| match Error::transport(op)(source) {
            Error::Permission { command, detail } => Error::Permission {
                command,
                detail: format!("{detail}; key `{key}`"),
            },
            other => other,
        }
    }

    /// The transport at `url` (passwords already redacted) could not be reached:
    /// [`Error::Unreachable`] with a hint that fits the failure's kind (TLS, credentials, or
    /// nothing listening).
    pub(crate) fn unreachable(url: String, source: TransportError) -> Error {
        let hint = match source.kind() {
            TransportErrorKind::Tls => {
                "the TLS handshake failed: check the CA file (EVENTBUS_TLS_CA_FILE) and, for mutual TLS, the client certificate (EVENTBUS_TLS_CERT_FILE, EVENTBUS_TLS_KEY_FILE)"
            }
            TransportErrorKind::Auth | TransportErrorKind::Permission => {
                "Redis refused the credentials: check the user and password in REDIS_URL"
            }
            _ => "start redis-server there or set REDIS_URL",
        };
        Error::Unreachable { url, hint, source }
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

/// What kind of failure a [`TransportError`] is. Backends classify their errors into these by
/// kind and code, never by message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The connection could not be opened, or was lost (I/O error, refused, dropped).
    Connection,
    /// No reply within the time limit.
    Timeout,
    /// The server cannot serve the command for a while: `READONLY`/`MASTERDOWN` during a
    /// failover, `LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`.
    Unavailable,
    /// The server refused the credentials (`WRONGPASS`, `NOAUTH`).
    Auth,
    /// The ACL denied the command or key (`NOPERM`).
    Permission,
    /// The TLS handshake failed (certificate, CA, protocol).
    Tls,
    /// The consumer group or its stream does not exist (`NOGROUP`).
    NoGroup,
    /// A cluster redirect (`MOVED`, `ASK`) this connection does not follow.
    Redirect,
    /// The server refused the command for another reason (`WRONGTYPE`, `OOM`, a script error).
    Rejected,
    /// The client could not use the reply, or was misconfigured.
    Client,
    /// The transport was shut down, or the connection replaced, while the call was in flight.
    Closed,
}

impl TransportErrorKind {
    /// A short lowercase name, e.g. `"connection"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Connection => "connection",
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Unavailable => "unavailable",
            TransportErrorKind::Auth => "auth",
            TransportErrorKind::Permission => "permission",
            TransportErrorKind::Tls => "tls",
            TransportErrorKind::NoGroup => "no group",
            TransportErrorKind::Redirect => "redirect",
            TransportErrorKind::Rejected => "rejected",
            TransportErrorKind::Client => "client",
            TransportErrorKind::Closed => "closed",
        }
    }
}

impl std::fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of the transport under the bus (Redis, or the in-memory test transport), named
/// without the backend's own types: a [`kind`](Self::kind), the server's error code when there
/// is one, and the message.
#[derive(Debug)]
pub struct TransportError {
    kind: TransportErrorKind,
    code: Option<String>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// Set by the backend when the connection this happened on must be replaced.
    reconnect: bool,
}

impl TransportError {
    /// A new error of `kind`.
    pub(crate) fn new(kind: TransportErrorKind, message: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            code: None,
            message: message.into(),
            source: None,
            reconnect: false,
        }
    }

    /// With the server's error code (e.g. `WRONGTYPE`).
    pub(crate) fn with_code(mut self, code: impl Into<String>) -> TransportError {
        self.code = Some(code.into());
        self
    }

    /// With the backend's own error as the source.
    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> TransportError {
        self.source = Some(Box::new(source));
        self
    }

    /// Marks the connection it happened on as one to replace.
    pub(crate) fn with_reconnect(mut self, reconnect: bool) -> TransportError {
        self.reconnect = reconnect;
        self
    }

    /// Whether the connection it happened on must be replaced (lost, timed out, or pinned to a
    /// server that is no longer the primary).
    pub(crate) fn needs_new_connection(&self) -> bool {
        self.reconnect
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// The server's error code (the first word of a Redis error reply, e.g. `WRONGTYPE`), when
    /// the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// What the transport reported.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying later may succeed: connection loss, timeouts, and server answers that
    /// pass by themselves ([`TransportErrorKind::Unavailable`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            TransportErrorKind::Connection
                | TransportErrorKind::Timeout
                | TransportErrorKind::Unavailable
        )
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
