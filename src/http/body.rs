//! Streaming bodies on the request path. Frames (data and trailers) pass through one at a
//! time; these wrappers only add timeouts, limits, byte counts and the end-of-request hook.

use crate::error::ErrorKind;
use crate::http::proxy::RequestLog;
use crate::upstream::PoolReturn;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Milliseconds on a process-wide clock, for the activity shared by the two directions of
/// one exchange.
fn clock_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A deadline that is armed when a poll first returns Pending and disarmed on progress:
/// "no progress for `timeout`", without resetting a timer on every frame.
#[derive(Debug, Default)]
struct Stall {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    /// Returns true once `timeout` (capped by `hard`, an absolute deadline) has passed
    /// since the first pending poll, and no byte moved the other way for as long
    /// (`activity`: a long-lived stream where one side is quiet while the other streams,
    /// such as gRPC bidi, is not idle).
    fn expired(
        &mut self,
        cx: &mut Context<'_>,
        timeout: Duration,
        hard: Option<Instant>,
        activity: Option<&RequestShared>,
    ) -> bool {
        if timeout.is_zero() && hard.is_none() {
            return false;
        }
        if !self.armed {
            self.arm(Instant::now(), timeout, hard);
        }
        loop {
            let fired = self
                .sleep
                .as_mut()
                .is_some_and(|s| s.as_mut().poll(cx).is_ready());
            if !fired {
                return false;
            }
            let now = Instant::now();
            if hard.is_some_and(|h| now >= h) || timeout.is_zero() {
                return true;
            }
            let quiet_ms = activity.map_or(u64::MAX, |a| {
                clock_ms().saturating_sub(a.last_ms.load(Ordering::Relaxed))
            });
            let quiet = Duration::from_millis(quiet_ms);
            if quiet >= timeout {
                return true;
            }
            // The other direction moved recently: idle is counted from then.
            self.arm(now, timeout - quiet, hard);
        }
    }

    fn arm(&mut self, now: Instant, timeout: Duration, hard: Option<Instant>) {
        let mut deadline = if timeout.is_zero() {
            now + Duration::from_secs(86_400 * 365)
        } else {
            now + timeout
        };
        if let Some(h) = hard {
            deadline = deadline.min(h);
        }
        match &mut self.sleep {
            Some(s) => s.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.armed = true;
    }

    fn progress(&mut self) {
        self.armed = false;
    }
}

/// What the client's request body did, shared with the handler so that an upstream
/// failure caused by the client maps to the client's error (400/408/413), not a 502.
#[derive(Debug, Default)]
pub struct RequestShared {
    pub bytes: AtomicU64,
    failure: AtomicU8,
    finished: AtomicBool,
    /// `clock_ms` when a frame last moved in either direction of this exchange.
    last_ms: AtomicU64,
}

impl RequestShared {
    fn touch(&self) {
        self.last_ms.store(clock_ms(), Ordering::Relaxed);
    }

    fn fail(&self, kind: ErrorKind) {
        let code = match kind {
            ErrorKind::BodyTooLarge => 1,
            ErrorKind::ClientTimeout => 2,
            _ => 3,
        };
        let _ = self
            .failure
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the whole request body has been read from the client.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The client-side failure, if the request body failed.
    pub fn failure(&self) -> Option<ErrorKind> {
        match self.failure.load(Ordering::Relaxed) {
            1 => Some(ErrorKind::BodyTooLarge),
            2 => Some(ErrorKind::ClientTimeout),
            3 => Some(ErrorKind::BadRequest),
            _ => None,
        }
    }
}

/// The client's request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    shared: Option<Arc<RequestShared>>,
    limit: u64,
    seen: u64,
    read_timeout: Duration,
    stall: Stall,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?}")]
pub struct ClientBodyError(pub ErrorKind);

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            shared: None,
            limit: 0,
            seen: 0,
            read_timeout: Duration::ZERO,
            stall: Stall::default(),
        }
    }

    /// Wraps a client body: `limit` bytes at most (0 = unlimited), failing after
    /// `read_timeout` without data.
    pub fn new(inner: Incoming, limit: u64, read_timeout: Duration) -> (Self, Arc<RequestShared>) {
        let shared = Arc::new(RequestShared::default());
        (
            RequestBody {
                inner: Some(inner),
                shared: Some(shared.clone()),
                limit,
                seen: 0,
                read_timeout,
                stall: Stall::default(),
            },
            shared,
        )
    }

    fn mark_finished(&self) {
        if let Some(s) = &self.shared {
            s.finished.store(true, Ordering::Release);
        }
    }

    fn fail(&mut self, kind: ErrorKind) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(s) = &self.shared {
            s.fail(kind);
        }
        self.inner = None;
        Poll::Ready(Some(Err(Box::new(ClientBodyError(kind)))))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progress();
                if let Some(s) = &this.shared {
                    s.touch();
                }
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.seen += n;
                    if let Some(s) = &this.shared {
                        s.bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    if this.limit > 0 && this.seen > this.limit {
                        return this.fail(ErrorKind::BodyTooLarge);
                    }
                }
                if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                    this.mark_finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.fail(ErrorKind::BadRequest),
            Poll::Ready(None) => {
                this.inner = None;
                this.mark_finished();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let activity = this.shared.as_deref();
                if this.stall.expired(cx, this.read_timeout, None, activity) {
                    this.fail(ErrorKind::ClientTimeout)
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// An upstream's response body on its way to the client.
#[derive(Debug)]
pub struct UpstreamBody {
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
pub struct ResponseBody {
    kind: Kind,
    log: Option<RequestLog>,
    /// Ended early by the gateway (after a gRPC status trailer): nothing more follows.
    cut: bool,
}

impl ResponseBody {
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Empty,
            log: None,
            cut: false,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            log: None,
            cut: false,
        }
    }

    pub fn upstream(body: UpstreamBody) -> Self {
        ResponseBody {
            kind: Kind::Upstream(body, Stall::default()),
            log: None,
            cut: false,
        }
    }

    /// Hands the request's log guard to the body; it is finished when the body ends or is
    /// dropped (client gone), whichever comes first.
    pub fn attach(&mut self, log: RequestLog) {
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
