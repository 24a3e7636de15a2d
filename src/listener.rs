//! Accept step: binds listener sockets, hands each accepted connection to the HTTP server
//! under a `maxConnections` permit (beyond it, connections wait in the backlog), and
//! tracks live connections so shutdown can drain them.

use crate::http::proxy::ConnCtx;
use crate::http::sniff::{HeadWatch, SniffIo, Sniffer};
use crate::state::Gateway;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

/// Listen backlog: connections beyond `maxConnections` wait here.
const BACKLOG: i32 = 1024;

/// Binds a TCP listener with address reuse, so a restart does not wait for TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
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
pub async fn accept_http(
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
        let head = Arc::new(HeadWatch::new(gateway.now_ms()));
        let sniffer = Sniffer::new(
            state.cfg.limits.max_request_headers_size + 1024,
            head.clone(),
            gateway.started,
        );
        let stream = SniffIo::new(stream, sniffer);
        let ctx = Arc::new(ConnCtx {
            gateway: gateway.clone(),
            listener_index: index,
            listener: name.clone(),
            peer,
            client: crate::http::headers::Client::new(peer.ip()),
            https: false,
            tls_version: None,
            sni: None,
            active: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(gateway.now_ms()),
            requests: AtomicU64::new(0),
            head,
        });
        let shutdown = shutdown.clone();
        let drain = drain.clone();
        let counters = state.connections.clone();
        counters.accepted.inc();
        counters.active.inc();
        tokio::spawn(async move {
            crate::http::server::serve(stream, ctx, &state.cfg, shutdown).await;
            counters.active.dec();
            drop(permit);
            drop(drain);
        });
    }
}
