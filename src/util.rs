//! Small pieces shared along the request path, in the bottom layer: the one process clock,
//! a connection's in-flight counter, the write-stall timeout wrapper used on both client
//! and upstream sockets, request ids, and a cheap per-thread random source.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The process clock: milliseconds since one origin, shared by everything that stores
/// times in atomics (health state, connection idleness, the `readHeader` watch, the
/// activity of an exchange). Times from different parts of the gateway are comparable,
/// and a snapshot built on a reload is given the same clock as the one it replaces, so
/// carried-over health keeps its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    /// The clock of this process (its origin is the first call).
    pub fn process() -> Clock {
        static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
        Clock {
            origin: *ORIGIN.get_or_init(std::time::Instant::now),
        }
    }

    /// Milliseconds since the origin.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant `ms` milliseconds after the origin.
    pub fn instant_at(&self, ms: u64) -> std::time::Instant {
        self.origin + Duration::from_millis(ms)
    }
}

/// Requests in flight on one client connection, and when it last had none: the idle
/// timeout counts only while nothing is in flight.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl Activity {
    /// A connection that opened at `now_ms` (on the process clock) with nothing in flight.
    pub(crate) fn new(now_ms: u64) -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
        }
    }

    /// A request started.
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A request ended at `now_ms`.
    pub(crate) fn end(&self, now_ms: u64) {
        self.idle_since_ms.store(now_ms, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When the last request ended (or the connection opened).
    pub(crate) fn idle_since_ms(&self) -> u64 {
        self.idle_since_ms.load(Ordering::Acquire)
    }

    /// Whether nothing has been in flight for at least `idle_ms` at `now_ms`.
    pub(crate) fn idle_for(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.in_flight() == 0 && now_ms.saturating_sub(self.idle_since_ms()) >= idle_ms
    }
}

/// How long a write may stay blocked (peer not reading) before the connection is failed.
#[derive(Debug, Clone)]
pub(crate) enum WriteTimeout {
    Fixed(Duration),
    /// Milliseconds, changeable per checkout (pooled upstream connections carry the
    /// timeout of the route that is using them).
    Shared(Arc<AtomicU64>),
}

impl WriteTimeout {
    fn get(&self) -> Duration {
        match self {
            WriteTimeout::Fixed(d) => *d,
            WriteTimeout::Shared(ms) => Duration::from_millis(ms.load(Ordering::Relaxed)),
        }
    }
}

/// A socket whose writes fail with `TimedOut` once they have been blocked for longer than
/// the write timeout. Reads pass straight through; read inactivity is timed per request
/// body, where it means something.
#[derive(Debug)]
pub(crate) struct TimedIo<T> {
    inner: T,
    timeout: WriteTimeout,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<T> TimedIo<T> {
    pub(crate) fn new(inner: T, timeout: WriteTimeout) -> Self {
        TimedIo {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// Called when a write is pending: arms the deadline on the first pending poll and
    /// reports whether it has passed.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout.get();
        if timeout.is_zero() {
            return false;
        }
        if !self.armed {
            let deadline = Instant::now() + timeout;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    fn progress<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => {
                if self.stalled(cx) {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "write timed out: peer stopped reading",
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // std seeds RandomState from the OS's randomness; good enough for ids and sampling.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}

/// A fast per-thread pseudo-random u64 (xorshift64*); not for secrets.
pub(crate) fn random_u64() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

thread_local! {
    /// Request ids are carved out of a per-thread buffer, so an id costs no allocation of
    /// its own and its clones (log, upstream header, response header) share it.
    static ID_ARENA: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// A new request id: 32 lower-case hex digits.
pub(crate) fn new_request_id() -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (half, word) in [random_u64(), random_u64()].into_iter().enumerate() {
        for i in 0..16 {
            buf[half * 16 + i] = HEX[((word >> (i * 4)) & 0xf) as usize];
        }
    }
    let bytes = ID_ARENA.with(|arena| {
        let mut arena = arena.borrow_mut();
        if arena.capacity() < buf.len() {
            *arena = bytes::BytesMut::with_capacity(buf.len() * 128);
        }
        arena.extend_from_slice(&buf);
        arena.split().freeze()
    });
    // Hex digits are always a valid header value.
    http::HeaderValue::from_maybe_shared(bytes).unwrap_or(http::HeaderValue::from_static("0"))
}

/// Whether a client-sent request id may be kept: 1..=128 visible ASCII characters from a
/// conservative set, so it is safe in logs and headers.
pub(crate) fn valid_request_id(v: &http::HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
        assert!(valid_request_id(&a));
        assert!(!valid_request_id(&http::HeaderValue::from_static(
            "has space"
        )));
    }
}
