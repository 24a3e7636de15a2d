//! The one error type of the request path and the one table from error kind to HTTP
//! status, envelope code, gRPC status, access-log `error` code, whether the client
//! connection is closed, and whether an upstream attempt that failed so may be retried.
//! Every phase of the request path (`http::proxy`) fails with a [`ProxyError`]; the
//! response, the log line, the retry decision and the metrics all read this table.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client, or its request.
    Downstream,
    /// An upstream endpoint.
    Upstream,
    /// The gateway itself (routing, configuration).
    Internal,
}

impl Side {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }
}

/// Whether an upstream attempt that failed may be sent again, to another endpoint (the
/// spec's retry rules, decided where the failure is known, as Pingora's errors carry it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Never: the upstream may have acted on the request, or the failure is not the
    /// upstream's.
    Never,
    /// Nothing of the request reached the upstream (connect refused or timed out, TLS
    /// failure, a pooled connection found closed before writing): any request may go
    /// again, body included.
    NotSent,
    /// The request reached the upstream, but the connection failed before any response
    /// byte: only a request that can be replayed (idempotent method, no body) may go again.
    Replayable,
}

/// What went wrong. Each kind has exactly one row in [`ErrorKind::row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    NoRoute,
    BadRequest,
    /// Plain HTTP sent to a TLS listener (NGINX: "plain HTTP request was sent to HTTPS port").
    PlainHttpOnTls,
    /// `CONNECT` (this is a reverse proxy, not a forward proxy).
    MethodNotAllowed,
    /// On a TLS connection, a host that neither is the SNI name nor is covered by the
    /// certificate that SNI chose.
    MisdirectedRequest,
    HeadersTooLarge,
    BodyTooLarge,
    /// The client stopped sending its request body for longer than the listener's `read`.
    ClientTimeout,
    /// The client went away before the response was complete.
    ClientClosed,
    /// The TLS handshake with an upstream failed (verification, protocol, ALPN).
    UpstreamTls,
    UpstreamConnect,
    UpstreamConnectTimeout,
    /// The upstream closed or reset the connection before answering.
    UpstreamReset,
    /// The upstream sent something that is not valid HTTP.
    UpstreamProtocol,
    NoHealthyUpstream,
    /// No response headers within the upstream `read` timeout.
    UpstreamTimeout,
    /// The route's `request` timeout (or a gRPC deadline) elapsed.
    RequestTimeout,
    /// Over the route's `rateLimit`.
    RateLimited,
}

/// One row of the error table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub status: u16,
    /// `error.code` in the JSON envelope.
    pub code: &'static str,
    /// `error` in the access log: finer than `code`.
    pub log: &'static str,
    /// grpc-status for gRPC requests; None = answer with the HTTP status.
    pub grpc: Option<u8>,
    pub side: Side,
    pub message: &'static str,
    /// HTTP/1.x: the gateway closes the client connection after answering
    /// (`connection: close`), because what follows in the byte stream cannot be trusted.
    pub closes: bool,
    /// Whether an upstream attempt that failed with this kind may be retried (a
    /// [`ProxyError`] may know better, see [`ProxyError::not_sent`]).
    pub retry: Retry,
    /// The `kind` label of `gateway_upstream_errors_total`, for failures of an upstream
    /// attempt; None for everything else.
    pub upstream: Option<&'static str>,
}

impl ErrorKind {
    /// The table (spec "Gateway-generated responses"). A connect timeout answers 504 like
    /// NGINX does ("upstream timed out while connecting"), logged as
    /// `upstream_connect_timeout`.
    pub(crate) const fn row(self) -> Row {
        use ErrorKind::*;
        use Retry::*;
        use Side::*;
        // (status, envelope code, log code, grpc-status, side, message, closes the client
        // connection, retry, upstream error kind)
        let (status, code, log, grpc, side, message, closes, retry, upstream) = match self {
            NoRoute => (
                404,
                "no_route",
                "no_route",
                Some(12),
                Internal,
                "no route matches this request",
                false,
                Never,
                None,
            ),
            BadRequest => (
                400,
                "bad_request",
                "bad_request",
                None,
                Downstream,
                "the request is malformed",
                true,
                Never,
                None,
            ),
            PlainHttpOnTls => (
                400,
                "bad_request",
                "plain_http_on_tls_port",
                None,
                Downstream,
                "a plain HTTP request was sent to a port that speaks HTTPS; use https://",
                true,
                Never,
                None,
            ),
            MethodNotAllowed => (
                405,
                "method_not_allowed",
                "method_not_allowed",
                None,
                Downstream,
                "this method is not supported by the gateway",
                false,
                Never,
                None,
            ),
            MisdirectedRequest => (
                421,
                "misdirected_request",
                "misdirected_request",
                None,
                Downstream,
                "this connection's certificate does not cover the requested host",
                false,
                Never,
                None,
            ),
            HeadersTooLarge => (
                431,
                "headers_too_large",
                "headers_too_large",
                None,
                Downstream,
                "request headers are too large",
                true,
                Never,
                None,
            ),
            BodyTooLarge => (
                413,
                "body_too_large",
                "body_too_large",
                Some(8),
                Downstream,
                "request body is too large",
                true,
                Never,
                None,
            ),
            ClientTimeout => (
                408,
                "client_timeout",
                "client_timeout",
                Some(4),
                Downstream,
                "the client stopped sending its request",
                true,
                Never,
                None,
            ),
            ClientClosed => (
                499,
                "client_closed",
                "client_closed",
                None,
                Downstream,
                "the client closed the connection",
                false,
                Never,
                None,
            ),
            UpstreamTls => (
                502,
                "upstream_unavailable",
                "upstream_tls_error",
                Some(14),
                Upstream,
                "the TLS handshake with the upstream failed",
                false,
                NotSent,
                Some("tls_error"),
            ),
            UpstreamConnect => (
                502,
                "upstream_unavailable",
                "upstream_connect_error",
                Some(14),
                Upstream,
                "could not connect to an upstream",
                false,
                NotSent,
                Some("connect_error"),
            ),
            UpstreamConnectTimeout => (
                504,
                "upstream_timeout",
                "upstream_connect_timeout",
                Some(4),
                Upstream,
                "timed out connecting to an upstream",
                false,
                NotSent,
                Some("connect_timeout"),
            ),
            UpstreamReset => (
                502,
                "upstream_unavailable",
                "upstream_reset",
                Some(14),
                Upstream,
                "the upstream closed the connection",
                false,
                Replayable,
                Some("reset"),
            ),
            UpstreamProtocol => (
                502,
                "upstream_unavailable",
                "upstream_protocol_error",
                Some(14),
                Upstream,
                "the upstream sent an invalid response",
                false,
                Never,
                Some("protocol_error"),
            ),
            NoHealthyUpstream => (
                503,
                "no_healthy_upstream",
                "no_healthy_upstream",
                Some(14),
                Upstream,
                "no upstream endpoint is available",
                false,
                Never,
                None,
            ),
            UpstreamTimeout => (
                504,
                "upstream_timeout",
                "upstream_timeout",
                Some(4),
                Upstream,
                "the upstream did not answer in time",
                false,
                Never,
                Some("timeout"),
            ),
            RequestTimeout => (
                504,
                "upstream_timeout",
                "request_timeout",
                Some(4),
                Upstream,
                "the request did not complete in time",
                false,
                Never,
                Some("timeout"),
            ),
            RateLimited => (
                429,
                "rate_limited",
                "rate_limited",
                Some(8),
                Downstream,
                "too many requests; retry after the number of seconds in retry-after",
                false,
                Never,
                None,
            ),
        };
        Row {
            status,
            code,
            log,
            grpc,
            side,
            message,
            closes,
            retry,
            upstream,
        }
    }
}

/// An error on the request path.
#[derive(Debug)]
pub(crate) struct ProxyError {
    pub kind: ErrorKind,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Whether the failed upstream attempt may go again: the kind's default, or what the
    /// place that failed knows better (nothing was written after all).
    pub retry: Retry,
    /// `RateLimited`: whole seconds until the client may try again (`retry-after`); 0 =
    /// no such header.
    pub retry_after_secs: u32,
}

impl ProxyError {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        ProxyError {
            kind,
            source: None,
            retry: kind.row().retry,
            retry_after_secs: 0,
        }
    }

    /// Over a rate limit: 429 with `retry-after`, in whole seconds and at least 1 (HTTP
    /// has no finer unit; rounding down would invite a retry that is refused again).
    pub(crate) fn rate_limited(retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        ProxyError {
            retry_after_secs: u32::try_from(secs.max(1)).unwrap_or(u32::MAX),
            ..ProxyError::new(ErrorKind::RateLimited)
        }
    }

    pub(crate) fn with(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ProxyError {
            kind,
            source: Some(source.into()),
            retry: kind.row().retry,
            retry_after_secs: 0,
        }
    }

    /// The request came back unwritten (hyper hands it back when a pooled connection
    /// turned out to be closed): whatever the kind, it may go to another endpoint.
    pub(crate) fn not_sent(mut self) -> Self {
        self.retry = Retry::NotSent;
        self
    }

    /// Whether the failed attempt may be sent again: when nothing reached the upstream,
    /// or when it did but `replayable` (an idempotent request without a body, kept for
    /// that) and the connection failed before any response byte.
    pub(crate) fn may_retry(&self, replayable: bool) -> bool {
        match self.retry {
            Retry::Never => false,
            Retry::NotSent => true,
            Retry::Replayable => replayable,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.row().message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<ErrorKind> for ProxyError {
    fn from(kind: ErrorKind) -> Self {
        ProxyError::new(kind)
    }
}

/// At most one log line per period for one subject (an endpoint), counting the lines it
/// held back, so that a dead endpoint under load writes one line per period rather than
/// one per request. Lock-free: one compare-and-swap decides who writes.
#[derive(Debug, Default)]
pub(crate) struct LogGate {
    /// Process-clock ms from which the next line may be written; 0 = at once.
    next_ms: AtomicU64,
    /// Lines held back since the last one written.
    suppressed: AtomicU64,
}

impl LogGate {
    /// Whether a line may be written at `now_ms`: `Some(lines held back since the last
    /// one)` if so (the gate then closes for `period_ms`), None if this one is held back.
    pub(crate) fn admit(&self, now_ms: u64, period_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Acquire);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(period_ms).max(1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_gate_lets_one_line_through_per_period_and_counts_the_rest() {
        let gate = LogGate::default();
        assert_eq!(gate.admit(5, 10_000), Some(0));
        assert_eq!(gate.admit(6, 10_000), None);
        assert_eq!(gate.admit(9_000, 10_000), None);
        assert_eq!(
            gate.admit(10_004, 10_000),
            None,
            "the period is 10 s from 5 ms"
        );
        assert_eq!(gate.admit(10_005, 10_000), Some(3), "three held back");
        assert_eq!(gate.admit(10_006, 10_000), None);
    }

    #[test]
    fn only_failures_the_spec_allows_are_retried_and_upstream_failures_have_a_kind() {
        use ErrorKind::*;
        for kind in [UpstreamConnect, UpstreamConnectTimeout, UpstreamTls] {
            assert!(
                ProxyError::new(kind).may_retry(false),
                "{kind:?}: nothing was sent"
            );
        }
        let reset = ProxyError::new(UpstreamReset);
        assert!(reset.may_retry(true) && !reset.may_retry(false));
        for kind in [
            UpstreamTimeout,
            RequestTimeout,
            UpstreamProtocol,
            BadRequest,
        ] {
            assert!(!ProxyError::new(kind).may_retry(true), "{kind:?}");
        }
        // Whatever the kind, a request handed back unwritten may go again.
        assert!(ProxyError::new(UpstreamProtocol)
            .not_sent()
            .may_retry(false));
        for kind in [NoRoute, BadRequest, ClientTimeout, NoHealthyUpstream] {
            assert_eq!(kind.row().upstream, None, "{kind:?}");
        }
        assert_eq!(UpstreamTls.row().upstream, Some("tls_error"));
        assert!(BadRequest.row().closes && !UpstreamReset.row().closes);
    }
}
