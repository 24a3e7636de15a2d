//! Protocol step: one accepted client connection served as HTTP/1.1 or HTTP/2 (h2c prior
//! knowledge) by hyper-util's auto server, with the listener's limits and timeouts, idle
//! close, and graceful shutdown on drain.

use crate::config::model::Listener;
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

/// The hyper server settings for a listener.
pub fn builder(cfg: &Listener) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.timeouts.read_header)
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
pub async fn serve<I>(io: I, ctx: Arc<ConnCtx>, cfg: &Listener, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = builder(cfg);
    let io = TokioIo::new(TimedIo::new(io, WriteTimeout::Fixed(cfg.timeouts.write)));
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle(req, svc_ctx.clone()));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle = cfg.timeouts.idle;
    let idle_ms = idle.as_millis() as u64;
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let idle_check = async {
            if idle.is_zero() {
                std::future::pending::<()>().await;
            }
            // Wake when the connection could first have been idle for `idle`.
            let last = ctx
                .last_active_ms
                .load(std::sync::atomic::Ordering::Acquire);
            let due = (last + idle_ms).saturating_sub(ctx.gateway.now_ms());
            tokio::time::sleep(Duration::from_millis(due.max(1))).await;
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
            () = idle_check, if !closing => {
                if ctx.idle_for(idle_ms) {
                    tracing::trace!(peer = %ctx.peer, "closing idle client connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
