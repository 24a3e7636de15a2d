//! The client's request body on its way upstream (step 4 of the request path): frames
//! (data and trailers) pass through one at a time, with the listener's `read` timeout, the
//! body limit and byte counts, and what the client did is shared with the handler so an
//! upstream failure caused by the client is answered as the client's error. The stall
//! timer here is also used by the response side (`http::response`).

use crate::error::ErrorKind;
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

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Milliseconds on the process clock, for the activity shared by the two directions of
/// one exchange.
fn clock_ms() -> u64 {
    crate::util::Clock::process().now_ms()
}

/// A deadline that is armed when a poll first returns Pending and disarmed on progress:
/// "no progress for `timeout`", without resetting a timer on every frame.
#[derive(Debug, Default)]
pub(crate) struct Stall {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    /// Returns true once `timeout` (capped by `hard`, an absolute deadline) has passed
    /// since the first pending poll, and no byte moved the other way for as long
    /// (`activity`: a long-lived stream where one side is quiet while the other streams,
    /// such as gRPC bidi, is not idle).
    pub(crate) fn expired(
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

    pub(crate) fn progress(&mut self) {
        self.armed = false;
    }
}

/// What the client's request body did, shared with the handler so that an upstream
/// failure caused by the client maps to the client's error (400/408/413), not a 502.
#[derive(Debug, Default)]
pub(crate) struct RequestShared {
    pub bytes: AtomicU64,
    failure: AtomicU8,
    finished: AtomicBool,
    /// `clock_ms` when a frame last moved in either direction of this exchange.
    last_ms: AtomicU64,
}

impl RequestShared {
    pub(crate) fn touch(&self) {
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
    pub(crate) fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The client-side failure, if the request body failed.
    pub(crate) fn failure(&self) -> Option<ErrorKind> {
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
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    shared: Option<Arc<RequestShared>>,
    limit: u64,
    seen: u64,
    read_timeout: Duration,
    stall: Stall,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?}")]
pub(crate) struct ClientBodyError(pub ErrorKind);

impl RequestBody {
    pub(crate) fn empty() -> Self {
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
    pub(crate) fn new(
        inner: Incoming,
        limit: u64,
        read_timeout: Duration,
    ) -> (Self, Arc<RequestShared>) {
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
