//! Accept step: binds listener sockets, hands each accepted connection (after the TLS
//! handshake, on TLS listeners) to the HTTP server under a `maxConnections` permit (beyond
//! it, connections wait in the backlog), and tracks live connections so shutdown can
//! drain them.

use crate::http::proxy::ConnCtx;
use crate::http::server::{serve, Versions};
use crate::http::sniff::{HeadWatch, SniffIo, Sniffer};
use crate::state::Gateway;
use crate::tls::Handshake;
use crate::util::Activity;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

/// Listen backlog: connections beyond `maxConnections` wait here.
const BACKLOG: i32 = 1024;

/// Binds a TCP listener with address reuse, so a restart does not wait for TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts HTTP connections for listener `index` until `shutdown` is set. Each connection
/// task holds a clone of `drain` so the caller can wait for all of them to finish.
pub(crate) async fn accept_http(
    listener: TcpListener,
    index: usize,
    name: Arc<str>,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) {
    let max = gateway
        .snapshot
        .load()
        .listener(index, &name)
        .map_or(10_000, |l| l.cfg.max_connections);
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let snap = gateway.snapshot.load_full();
        let Some(state) = snap.listener(index, &name).cloned() else {
            continue;
        };
        // The readHeader clock starts at accept, so on TLS listeners the handshake and
        // the first request head share it (as NGINX's client_header_timeout does).
        let head = Arc::new(HeadWatch::new(gateway.clock.now_ms()));
        let sniffer = Sniffer::new(
            state.cfg.limits.max_request_headers_size + 1024,
            head.clone(),
            gateway.clock,
        );
        let conn = Conn {
            gateway: gateway.clone(),
            index,
            name: name.clone(),
            peer,
            head,
        };
        let shutdown = shutdown.clone();
        let drain = drain.clone();
        let counters = state.connections.clone();
        counters.accepted.inc();
        counters.active.inc();
        tokio::spawn(async move {
            match state.tls.clone() {
                None => {
                    let ctx = conn.ctx(None);
                    let io = SniffIo::new(stream, sniffer);
                    serve(io, ctx, &state.cfg, Versions::Plaintext, shutdown).await;
                }
                Some(tls) => match tls.accept(stream, state.cfg.timeouts.read_header).await {
                    Ok((stream, hs)) => {
                        let versions = if hs.h2 { Versions::H2 } else { Versions::Http1 };
                        let ctx = conn.ctx(Some(hs));
                        let io = SniffIo::new(stream, sniffer);
                        serve(io, ctx, &state.cfg, versions, shutdown).await;
                    }
                    Err(error) => {
                        counters.tls_errors.inc();
                        tracing::info!(listener = %conn.name, peer = %conn.peer, %error, "TLS handshake failed");
                    }
                },
            }
            counters.active.dec();
            drop(permit);
            drop(drain);
        });
    }
}

/// What a connection's context is made of, before the TLS handshake (if any) is done.
struct Conn {
    gateway: Arc<Gateway>,
    index: usize,
    name: Arc<str>,
    peer: SocketAddr,
    head: Arc<HeadWatch>,
}

impl Conn {
    fn ctx(self, tls: Option<Handshake>) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            listener_index: self.index,
            listener: self.name,
            peer: self.peer,
            client: crate::http::headers::Client::new(self.peer.ip()),
            https: tls.is_some(),
            tls_version: tls.as_ref().map(|t| t.version),
            sni: tls.as_ref().and_then(|t| t.sni.clone()),
            cert_names: tls.map(|t| t.names),
            activity: Arc::new(Activity::new(self.gateway.clock.now_ms())),
            requests: AtomicU64::new(0),
            head: self.head,
            gateway: self.gateway,
        })
    }
}
