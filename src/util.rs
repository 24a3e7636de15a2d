//! Small pieces shared along the request path: the write-stall timeout wrapper used on
//! both client and upstream sockets, request ids, and a cheap per-thread random source.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a write may stay blocked (peer not reading) before the connection is failed.
#[derive(Debug, Clone)]
pub enum WriteTimeout {
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
pub struct TimedIo<T> {
    inner: T,
    timeout: WriteTimeout,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<T> TimedIo<T> {
    pub fn new(inner: T, timeout: WriteTimeout) -> Self {
        TimedIo {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
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
pub fn random_u64() -> u64 {
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
pub fn new_request_id() -> http::HeaderValue {
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
pub fn valid_request_id(v: &http::HeaderValue) -> bool {
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
