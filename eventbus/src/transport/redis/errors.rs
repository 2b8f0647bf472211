//! Classifying `redis::RedisError` into the transport-neutral [`TransportError`], by the error's
//! kind and code (never by its text), and building the public [`Error`] from it.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::{Error, TransportError, TransportErrorKind};

/// Failures that a retry may get past: connection-level ones (I/O error, timeout, dropped or
/// refused connection) and server answers that pass by themselves (`READONLY` and `MASTERDOWN`
/// while the connection moves to the new primary, `LOADING`, `BUSY`, `TRYAGAIN`,
/// `CLUSTERDOWN`). Classified by kind and code. `MOVED`/`ASK` are not: against a non-cluster
/// client the same command would be redirected again, forever.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    matches!(
        kind_of(e),
        TransportErrorKind::Connection
            | TransportErrorKind::Timeout
            | TransportErrorKind::Unavailable
    )
}

/// A connection-level failure: the command may not have reached Redis or its reply was lost
/// (I/O error, timeout, dropped or refused connection), as opposed to an answer from the server.
pub(crate) fn is_connection_level(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// A server answer that passes by itself.
fn is_unavailable(e: &RedisError) -> bool {
    matches!(
        e.code(),
        Some("READONLY" | "MASTERDOWN" | "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN")
    )
}

/// Whether a connection that returned `e` must be dropped for a new one: it is pinned to a
/// server that is no longer the primary (`READONLY`, `MASTERDOWN`, or `UNBLOCKED`, which a
/// demoted primary sends to blocked clients before closing them), or it is broken (I/O error,
/// timeout, dropped or refused, or a reply that does not parse). For the blocking readers'
/// error path; the shared connection heals by itself.
pub(crate) fn needs_new_connection(e: &RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "UNBLOCKED"))
        || e.kind() == ErrorKind::Parse
        || e.is_unrecoverable_error()
        || is_connection_level(e)
}

/// Whether `e` came from a failed TLS handshake: a `rustls::Error` inside the I/O error it
/// wraps (found by type, not by text). redis-rs keeps the I/O error behind an `Arc`, and
/// `io::Error::source` skips the error it wraps, so both are opened here.
fn is_tls(e: &RedisError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return true;
        }
        let io = s.downcast_ref::<std::io::Error>().or_else(|| {
            s.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
                .and_then(|inner| (**inner).downcast_ref::<std::io::Error>())
        });
        if let Some(io) = io
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The neutral kind of `e`.
pub(crate) fn kind_of(e: &RedisError) -> TransportErrorKind {
    if is_tls(e) {
        return TransportErrorKind::Tls;
    }
    if e.is_timeout() {
        return TransportErrorKind::Timeout;
    }
    if is_connection_level(e) {
        return TransportErrorKind::Connection;
    }
    if is_unavailable(e) {
        return TransportErrorKind::Unavailable;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => return TransportErrorKind::Auth,
        ErrorKind::Server(ServerErrorKind::NoPerm) => return TransportErrorKind::Permission,
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => {
            return TransportErrorKind::Redirect;
        }
        _ => {}
    }
    match e.code() {
        Some("NOPERM") => TransportErrorKind::Permission,
        Some("WRONGPASS" | "NOAUTH") => TransportErrorKind::Auth,
        Some("NOGROUP") => TransportErrorKind::NoGroup,
        Some("MOVED" | "ASK") => TransportErrorKind::Redirect,
        Some(_) => TransportErrorKind::Rejected,
        None => match e.kind() {
            ErrorKind::Server(_) => TransportErrorKind::Rejected,
            _ => TransportErrorKind::Client,
        },
    }
}

/// `e` as a [`TransportError`]: its kind, code, the server's detail (or the client's message)
/// as the message, and `e` itself as the source.
pub(crate) fn classify(e: RedisError) -> TransportError {
    let kind = kind_of(&e);
    let reconnect = needs_new_connection(&e);
    let message = match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    };
    let mut error = TransportError::new(kind, message);
    if let Some(code) = e.code() {
        error = error.with_code(code);
    }
    error.with_reconnect(reconnect).with_source(e)
}

/// The public error of a failed command `op`: [`Error::Permission`] for `NOPERM`,
/// [`Error::Transport`] otherwise.
pub(crate) fn to_error(op: &'static str) -> impl FnOnce(RedisError) -> Error {
    move |e| Error::transport(op)(classify(e))
}

/// A start-up connection failure, with a hint that fits its cause.
pub(crate) fn unreachable(url: &str, e: RedisError) -> Error {
    Error::unreachable(crate::config::redact(url), classify(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(reply: &str) -> RedisError {
        match redis::parse_redis_value(reply.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn moved_and_ask_are_not_transient() {
        assert!(!is_transient(&parsed("-MOVED 3999 127.0.0.1:6381\r\n")));
        assert!(!is_transient(&parsed("-ASK 3999 127.0.0.1:6381\r\n")));
        assert_eq!(
            kind_of(&parsed("-MOVED 3999 127.0.0.1:6381\r\n")),
            TransportErrorKind::Redirect
        );
        for reply in [
            "-READONLY You can't write against a read only replica.\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-BUSY Redis is busy running a script\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
        ] {
            assert!(is_transient(&parsed(reply)), "{reply}");
            assert!(classify(parsed(reply)).is_transient(), "{reply}");
        }
        assert!(!is_transient(&parsed("-NOPERM no permissions\r\n")));
        assert!(!is_transient(&parsed(
            "-WRONGTYPE Operation against a key\r\n"
        )));
        assert!(!is_transient(&parsed("-OOM command not allowed\r\n")));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(is_transient(&io));
        assert!(classify(io).is_transient());
    }

    #[test]
    fn kinds_and_codes() {
        let e = classify(parsed("-NOGROUP No such key or consumer group\r\n"));
        assert_eq!(e.kind(), TransportErrorKind::NoGroup);
        assert_eq!(e.code(), Some("NOGROUP"));
        let e = classify(parsed("-NOPERM User has no permissions\r\n"));
        assert_eq!(e.kind(), TransportErrorKind::Permission);
        let e = classify(parsed("-WRONGTYPE Operation against a key\r\n"));
        assert_eq!(e.kind(), TransportErrorKind::Rejected);
        assert_eq!(e.code(), Some("WRONGTYPE"));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(refused).kind(), TransportErrorKind::Connection);
        let tls = RedisError::from(std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        assert_eq!(kind_of(&tls), TransportErrorKind::Tls);
        // A wrong CA or certificate does not pass by itself: not retried.
        assert!(!is_transient(&tls));
        assert!(!classify(tls).is_transient());
    }
}
