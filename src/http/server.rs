//! Protocol step: one accepted client connection of an HTTP listener — the TLS handshake
//! on TLS listeners, then HTTP/1.1 or HTTP/2 by hyper-util's auto server (h2c by prior
//! knowledge on plaintext, by ALPN on TLS) — with the listener's limits and timeouts as
//! they were when the connection was accepted, HTTP/2 abuse limits (`h2guard`), idle
//! close, and graceful close when the listener drains.

use crate::http::h2guard::H2Guard;
use crate::http::proxy::{handle, ConnCtx, ConnSettings};
use crate::http::sniff::{HeadWatch, Protocols, Refusal, SniffIo, Sniffer, MAX_HEADERS};
use crate::listener::{ConnGuard, Permit, Phase};
use crate::state::Gateway;
use crate::tls::Handshake;
use crate::util::{Activity, TimedIo, WriteTimeout};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Takes a connection accepted on HTTP listener `name` and serves it on a task of its own,
/// which holds the connection's permit and drain guard to its end. The connection keeps
/// only what it needs of the listener's state (settings, the TLS acceptor until the
/// handshake is done, its metric handles), never the snapshot.
pub(crate) fn accept(
    gateway: &Arc<Gateway>,
    name: &Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<Permit>,
    guard: ConnGuard,
) {
    let snap = gateway.snapshot.load();
    let Some((index, state)) = snap.listener_named(name) else {
        // Removed by a reload whose accept loop has not stopped yet.
        return;
    };
    let settings = ConnSettings::of(&state.cfg);
    let tls = state.tls.clone();
    let counters = state.connections.clone();
    let conn = Accepted {
        gateway: gateway.clone(),
        index,
        name: name.clone(),
        fallback: Arc::downgrade(state),
        settings,
        peer,
        // The readHeader clock starts at accept, so on TLS listeners the handshake and
        // the first request head share it (as NGINX's client_header_timeout does).
        head: Arc::new(HeadWatch::new(gateway.clock.now_ms())),
        guard,
    };
    drop(snap);
    let sniffer = Sniffer::new(
        settings.limits.max_request_headers_size + 1024,
        conn.head.clone(),
        gateway.clock,
    );
    counters.opened();
    tokio::spawn(async move {
        let _permit = permit;
        match tls {
            None => {
                let versions = Versions::Plaintext;
                let io = SniffIo::new(stream, sniffer.protocols(versions.protocols(&settings)));
                serve(io, conn.into_ctx(None), versions).await;
            }
            Some(tls) => {
                let budget = settings.timeouts.read_header;
                let started = tokio::time::Instant::now();
                match first_byte(&stream, budget).await {
                    // A TLS connection starts with a handshake record (0x16); a letter is
                    // an HTTP method: answer it in HTTP, as NGINX does, instead of failing
                    // a handshake the client never started.
                    Ok(b) if b.is_ascii_alphabetic() => {
                        drop(tls);
                        let sniffer = sniffer
                            .protocols(Protocols::Http1)
                            .refuse_first_head(Refusal::PlainHttp);
                        let io = SniffIo::new(stream, sniffer);
                        serve(io, conn.into_ctx(None), Versions::Http1).await;
                    }
                    Ok(_) => {
                        let left = budget.saturating_sub(started.elapsed());
                        match tls.accept(stream, left).await {
                            Ok((stream, hs)) => {
                                drop(tls);
                                let versions = if hs.h2 { Versions::H2 } else { Versions::Http1 };
                                let sniffer = sniffer.protocols(versions.protocols(&settings));
                                let io = SniffIo::new(stream, sniffer);
                                serve(io, conn.into_ctx(Some(hs)), versions).await;
                            }
                            Err(error) => {
                                counters.tls_failed();
                                tracing::info!(listener = %conn.name, peer = %conn.peer, %error, "TLS handshake failed");
                            }
                        }
                    }
                    Err(error) => {
                        counters.tls_failed();
                        tracing::info!(listener = %conn.name, peer = %conn.peer, %error, "TLS handshake failed");
                    }
                }
            }
        }
        counters.closed();
    });
}

/// The first byte a client sends, without taking it from the socket, within `limit`.
async fn first_byte(stream: &TcpStream, limit: Duration) -> Result<u8, &'static str> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(limit, stream.peek(&mut b)).await {
        Err(_) => Err("handshake timed out"),
        Ok(Err(_)) => Err("the connection failed before the handshake"),
        Ok(Ok(0)) => Err("the client closed the connection before the handshake"),
        Ok(Ok(_)) => Ok(b[0]),
    }
}

/// What a connection's context is made of, before the TLS handshake (if any) is done.
struct Accepted {
    gateway: Arc<Gateway>,
    index: usize,
    name: Arc<str>,
    fallback: std::sync::Weak<crate::state::ListenerState>,
    settings: ConnSettings,
    peer: SocketAddr,
    head: Arc<HeadWatch>,
    guard: ConnGuard,
}

impl Accepted {
    fn into_ctx(self, tls: Option<Handshake>) -> Arc<ConnCtx> {
        let now = self.gateway.clock.now_ms();
        Arc::new(ConnCtx {
            listener_index: self.index,
            listener: self.name,
            fallback: self.fallback,
            settings: self.settings,
            peer: self.peer,
            client: crate::http::headers::Client::new(self.peer.ip()),
            https: tls.is_some(),
            tls_version: tls.as_ref().map(|t| t.version),
            sni: tls.as_ref().and_then(|t| t.sni.clone()),
            cert_names: tls.map(|t| t.names),
            activity: Arc::new(Activity::new(now)),
            requests: AtomicU64::new(0),
            head: self.head,
            guard: self.guard,
            gateway: self.gateway,
        })
    }
}

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

impl Versions {
    /// What the sniffer lets through. hyper-util's auto server tells HTTP/2 from HTTP/1
    /// by the first bytes and ignores `http1_only`/`http2_only` when it serves upgrades
    /// (its documentation says so), so the sniffer is what keeps a connection to the
    /// versions it may speak.
    fn protocols(self, cfg: &ConnSettings) -> Protocols {
        match self {
            Versions::Plaintext if cfg.http2 => Protocols::Any,
            Versions::Plaintext | Versions::Http1 => Protocols::Http1,
            Versions::H2 => Protocols::Http2,
        }
    }
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
pub(crate) fn builder(cfg: &ConnSettings) -> auto::Builder<TokioExecutor> {
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
        .max_headers(MAX_HEADERS)
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
    b
}

/// Serves one client connection to its end: closed gracefully when its listener drains
/// (HTTP/1.1: `connection: close` on the next response; HTTP/2: GOAWAY), and at once when
/// the drain deadline passes.
async fn serve<I>(io: I, ctx: Arc<ConnCtx>, versions: Versions)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &ctx.settings;
    let mut phase = ctx.guard.phase();
    let builder = builder(cfg);
    let guard = match versions.protocols(cfg) {
        Protocols::Any | Protocols::Http2 => H2Guard::new(io, Some(ctx.peer)),
        Protocols::Http1 => H2Guard::off(io),
    };
    let io = TokioIo::new(TimedIo::new(guard, WriteTimeout::Fixed(cfg.timeouts.write)));
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle(req, svc_ctx.clone()));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle_ms = cfg.timeouts.idle.as_millis() as u64;
    let read_header_ms = cfg.timeouts.read_header.as_millis() as u64;
    let clock = ctx.gateway.clock;
    let mut closing = *phase.borrow() != Phase::Serving;
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
            changed = phase.changed() => {
                let now = if changed.is_err() { Phase::Stopped } else { *phase.borrow() };
                if now == Phase::Stopped {
                    tracing::debug!(peer = %ctx.peer, "drain deadline passed; closing");
                    return;
                }
                if now == Phase::Draining && !closing {
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
