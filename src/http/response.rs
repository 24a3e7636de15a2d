//! An upstream's response body on its way to the client (step 5 of the request path), and
//! the gateway's own bodies: frames pass through one at a time with the upstream `read`
//! and route deadline timers, byte counts, the pooled connection's return, and the
//! request's log guard, finished exactly once when the body ends or is dropped.

use crate::error::ErrorKind;
use crate::http::body::{BoxError, RequestShared, Stall};
use crate::telemetry::request::RequestLog;
use crate::upstream::PoolReturn;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// An upstream's response body on its way to the client.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    pub inner: Incoming,
    /// Upstream `read`: inactivity while waiting for body data.
    pub read_timeout: Duration,
    /// The route's `request` deadline, if any.
    pub deadline: Option<Instant>,
    /// Where the upstream connection goes back when the body has been read to its end.
    pub pooled: Option<PoolReturn>,
    /// A gRPC response: a failure midway ends the stream with a grpc-status trailer
    /// (14 for a reset, 4 for a timeout) instead of resetting it.
    pub grpc: bool,
    /// The request's side of the exchange, whose progress keeps this body from idling
    /// out (and which this body's progress keeps alive in turn).
    pub activity: Option<Arc<RequestShared>>,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Full(Option<Bytes>),
    Upstream(UpstreamBody, Stall),
}

/// Every response the gateway sends: an upstream's streamed body or a body of its own,
/// carrying the request's log guard so the access-log line is written when it ends.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    kind: Kind,
    log: Option<RequestLog>,
    /// Ended early by the gateway (after a gRPC status trailer): nothing more follows.
    cut: bool,
}

impl ResponseBody {
    pub(crate) fn empty() -> Self {
        ResponseBody {
            kind: Kind::Empty,
            log: None,
            cut: false,
        }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            log: None,
            cut: false,
        }
    }

    pub(crate) fn upstream(body: UpstreamBody) -> Self {
        ResponseBody {
            kind: Kind::Upstream(body, Stall::default()),
            log: None,
            cut: false,
        }
    }

    /// Hands the request's log guard to the body; it is finished when the body ends or is
    /// dropped (client gone), whichever comes first.
    pub(crate) fn attach(&mut self, log: RequestLog) {
        self.log = Some(log);
        if self.is_end_stream() {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if let Kind::Upstream(up, _) = &mut self.kind {
            if let Some(ret) = up.pooled.take() {
                ret.checkin();
            }
        }
        self.log = None;
    }

    fn count(&mut self, n: usize) {
        if let Some(log) = &mut self.log {
            log.entry.bytes_out += n as u64;
        }
    }

    /// The trailers that end a gRPC response the gateway had to cut short, so the client
    /// sees a status (UNAVAILABLE, DEADLINE_EXCEEDED) rather than a reset stream.
    fn grpc_end(&mut self, kind: ErrorKind) -> Frame<Bytes> {
        self.cut = true;
        let row = kind.row();
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            &crate::http::grpc::GRPC_STATUS,
            http::HeaderValue::from(u16::from(row.grpc.unwrap_or(14))),
        );
        trailers.insert(
            &crate::http::grpc::GRPC_MESSAGE,
            http::HeaderValue::from_static(row.code),
        );
        Frame::trailers(trailers)
    }

    fn fail(&mut self, code: &'static str) {
        if let Kind::Upstream(up, _) = &mut self.kind {
            up.pooled = None;
        }
        if let Some(log) = &mut self.log {
            log.entry.error = Some(code);
        }
        self.log = None;
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(None);
        }
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up, stall) => match Pin::new(&mut up.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    stall.progress();
                    if let Some(a) = &up.activity {
                        a.touch();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    let grpc = up.grpc;
                    this.fail(ErrorKind::UpstreamReset.row().log);
                    if grpc {
                        return Poll::Ready(Some(Ok(this.grpc_end(ErrorKind::UpstreamReset))));
                    }
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    let activity = up.activity.as_deref();
                    if stall.expired(cx, up.read_timeout, up.deadline, activity) {
                        let kind = match up.deadline {
                            Some(d) if Instant::now() >= d => ErrorKind::RequestTimeout,
                            _ => ErrorKind::UpstreamTimeout,
                        };
                        let grpc = up.grpc;
                        this.fail(kind.row().log);
                        if grpc {
                            return Poll::Ready(Some(Ok(this.grpc_end(kind))));
                        }
                        return Poll::Ready(Some(Err(Box::new(crate::error::ProxyError::new(
                            kind,
                        )))));
                    }
                    Poll::Pending
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len();
                    this.count(n);
                }
                // hyper stops polling once the body reports its end, so the end of a
                // sized body is noticed here rather than from a final `None`.
                if this.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if self.cut {
            return true;
        }
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(up, _) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(up, _) => up.inner.size_hint(),
        }
    }
}
