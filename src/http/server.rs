//! Protocol step: one accepted client connection (plaintext, or after the TLS handshake)
//! served as HTTP/1.1 or HTTP/2 by hyper-util's auto server — h2c by prior knowledge on
//! plaintext, by ALPN on TLS — with the listener's limits and timeouts, HTTP/2 abuse
//! limits (`h2guard`), idle close, and graceful shutdown on drain.

use crate::config::model::Listener;
use crate::http::h2guard::H2Guard;
use crate::http::proxy::{handle, ConnCtx};
use crate::util::{TimedIo, WriteTimeout};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// hyper refuses a read buffer smaller than this.
const MIN_BUF: usize = 8192;
/// HTTP/2 streams per connection: enough for browsers and gRPC, small enough for the edge.
const H2_MAX_STREAMS: u32 = 100;

/// Which HTTP versions a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Versions {
    /// Plaintext: HTTP/1.x, and h2c with prior knowledge when the listener's `http2` is on.
    Plaintext,
    /// TLS, ALPN chose `h2`.
    H2,
    /// TLS, ALPN chose `http/1.1` or nothing.
    Http1,
}

/// The hyper server settings for a listener.
///
/// HTTP/2 limits, for an edge proxy: 100 concurrent streams per connection; the decoded
/// header list bounded by `maxRequestHeadersSize` (HPACK bombs decode into nothing
/// larger); at most 20 streams reset by the client before they were accepted, and 100
/// streams the server had to reset, before GOAWAY; flow-control windows of 256 KiB per
/// stream and 1 MiB per connection, so one connection holds at most 1 MiB of a client's
/// unread uploads however many streams it has, while a single stream still fills a
/// 20 ms × 100 Mbit/s path.
pub(crate) fn builder(cfg: &Listener) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // readHeader is enforced by `serve` from the sniffer's clock: hyper's timer would
        // restart on every idle keep-alive connection and cut `idle` short.
        .header_read_timeout(None)
        // The head limit is enforced exactly (431) in the proxy; hyper's buffer only has to
        // be large enough to hold such a head.
        .max_buf_size(
            cfg.limits
                .max_request_headers_size
                .saturating_add(1024)
                .max(MIN_BUF),
        )
        .max_headers(256)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(
            u32::try_from(cfg.limits.max_request_headers_size).unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(100)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_send_buf_size(256 * 1024);
    if !cfg.http2 {
        b = b.http1_only();
    }
    b
}

/// Serves one client connection to its end, or until `shutdown` asks it to finish.
pub(crate) async fn serve<I>(
    io: I,
    ctx: Arc<ConnCtx>,
    cfg: &Listener,
    versions: Versions,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = builder(cfg);
    let guard = match versions {
        Versions::Plaintext if cfg.http2 => H2Guard::new(io, Some(ctx.peer)),
        Versions::Plaintext => H2Guard::off(io),
        Versions::H2 => {
            builder = builder.http2_only();
            H2Guard::new(io, Some(ctx.peer))
        }
        Versions::Http1 => {
            builder = builder.http1_only();
            H2Guard::off(io)
        }
    };
    let io = TokioIo::new(TimedIo::new(guard, WriteTimeout::Fixed(cfg.timeouts.write)));
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle(req, svc_ctx.clone()));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle_ms = cfg.timeouts.idle.as_millis() as u64;
    let read_header_ms = cfg.timeouts.read_header.as_millis() as u64;
    let clock = ctx.gateway.clock;
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        // The next moment something could be overdue: the head being read, or the
        // connection's idleness. While requests are in flight, look again after `idle`.
        let now = clock.now_ms();
        let head_due = ctx.head.head_since_ms().map(|t| t + read_header_ms);
        let idle_due = (idle_ms > 0 && !closing).then(|| {
            if ctx.activity.in_flight() == 0 {
                ctx.activity.idle_since_ms() + idle_ms
            } else {
                now + idle_ms
            }
        });
        let due = head_due.into_iter().chain(idle_due).min();
        let watchdog = async {
            match due {
                Some(due) => {
                    tokio::time::sleep(Duration::from_millis(due.saturating_sub(now).max(1))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %ctx.peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = watchdog => {
                let now = clock.now_ms();
                if ctx.head.head_since_ms().is_some_and(|t| now >= t + read_header_ms) {
                    // No request is in progress on a connection still sending its head:
                    // nothing is lost by closing it at once.
                    tracing::debug!(peer = %ctx.peer, "request head not received within readHeader; closing");
                    return;
                }
                if !closing && idle_ms > 0 && ctx.activity.idle_for(now, idle_ms) {
                    tracing::trace!(peer = %ctx.peer, "closing idle client connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
