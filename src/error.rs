//! The one error type of the request path and the one table from error kind to HTTP
//! status, envelope code, gRPC status and access-log `error` code.

use std::fmt;

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
}

impl ErrorKind {
    /// The table (spec "Gateway-generated responses"). A connect timeout answers 504 like
    /// NGINX does ("upstream timed out while connecting"), logged as
    /// `upstream_connect_timeout`.
    pub(crate) const fn row(self) -> Row {
        use ErrorKind::*;
        use Side::*;
        let (status, code, log, grpc, side, message) = match self {
            NoRoute => (
                404,
                "no_route",
                "no_route",
                Some(12),
                Internal,
                "no route matches this request",
            ),
            BadRequest => (
                400,
                "bad_request",
                "bad_request",
                None,
                Downstream,
                "the request is malformed",
            ),
            PlainHttpOnTls => (
                400,
                "bad_request",
                "plain_http_on_tls_port",
                None,
                Downstream,
                "a plain HTTP request was sent to a port that speaks HTTPS; use https://",
            ),
            MethodNotAllowed => (
                405,
                "method_not_allowed",
                "method_not_allowed",
                None,
                Downstream,
                "this method is not supported by the gateway",
            ),
            MisdirectedRequest => (
                421,
                "misdirected_request",
                "misdirected_request",
                None,
                Downstream,
                "this connection's certificate does not cover the requested host",
            ),
            HeadersTooLarge => (
                431,
                "headers_too_large",
                "headers_too_large",
                None,
                Downstream,
                "request headers are too large",
            ),
            BodyTooLarge => (
                413,
                "body_too_large",
                "body_too_large",
                Some(8),
                Downstream,
                "request body is too large",
            ),
            ClientTimeout => (
                408,
                "client_timeout",
                "client_timeout",
                Some(4),
                Downstream,
                "the client stopped sending its request",
            ),
            ClientClosed => (
                499,
                "client_closed",
                "client_closed",
                None,
                Downstream,
                "the client closed the connection",
            ),
            UpstreamTls => (
                502,
                "upstream_unavailable",
                "upstream_tls_error",
                Some(14),
                Upstream,
                "the TLS handshake with the upstream failed",
            ),
            UpstreamConnect => (
                502,
                "upstream_unavailable",
                "upstream_connect_error",
                Some(14),
                Upstream,
                "could not connect to an upstream",
            ),
            UpstreamConnectTimeout => (
                504,
                "upstream_timeout",
                "upstream_connect_timeout",
                Some(4),
                Upstream,
                "timed out connecting to an upstream",
            ),
            UpstreamReset => (
                502,
                "upstream_unavailable",
                "upstream_reset",
                Some(14),
                Upstream,
                "the upstream closed the connection",
            ),
            UpstreamProtocol => (
                502,
                "upstream_unavailable",
                "upstream_protocol_error",
                Some(14),
                Upstream,
                "the upstream sent an invalid response",
            ),
            NoHealthyUpstream => (
                503,
                "no_healthy_upstream",
                "no_healthy_upstream",
                Some(14),
                Upstream,
                "no upstream endpoint is available",
            ),
            UpstreamTimeout => (
                504,
                "upstream_timeout",
                "upstream_timeout",
                Some(4),
                Upstream,
                "the upstream did not answer in time",
            ),
            RequestTimeout => (
                504,
                "upstream_timeout",
                "request_timeout",
                Some(4),
                Upstream,
                "the request did not complete in time",
            ),
        };
        Row {
            status,
            code,
            log,
            grpc,
            side,
            message,
        }
    }
}

/// An error on the request path.
#[derive(Debug)]
pub(crate) struct ProxyError {
    pub kind: ErrorKind,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxyError {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        ProxyError { kind, source: None }
    }

    pub(crate) fn with(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ProxyError {
            kind,
            source: Some(source.into()),
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
