//! L4 TCP passthrough, beside the HTTP flow: accept → allow/deny → connection limit →
//! balance/ (smooth WRR) → connect (one retry on another endpoint) → bidirectional copy
//! with idle and lifetime timeouts → one access-log line.
//!
//! Bytes are relayed as they are, never parsed. Each direction has one fixed buffer, so a
//! peer that stops reading stops the other side from being read (TCP backpressure) and a
//! connection never holds more than `2 × BUFFER` bytes of the gateway's memory.

pub(crate) mod access;

use crate::listener::{ConnGuard, Phase};
use crate::state::{ClusterState, Gateway};
use crate::telemetry::access_log::{AccessLogger, L4Entry};
use access::{L4Stats, CONNECTION_LIMIT, DENIED};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Relay buffer per direction (HAProxy's default `tune.bufsize`): 32 KiB per connection.
pub(crate) const BUFFER: usize = 16 * 1024;

/// Endpoints tried per connection: the one WRR picks, then one other on connect failure.
const CONNECT_ATTEMPTS: usize = 2;

// Access-log `error` codes of L4 connections.
const CONNECT_ERROR: &str = "upstream_connect_error";
const CONNECT_TIMEOUT: &str = "upstream_connect_timeout";
const NO_ENDPOINT: &str = "no_healthy_upstream";
const IDLE_TIMEOUT: &str = "idle_timeout";
const MAX_DURATION: &str = "max_duration";
const CLIENT_RESET: &str = "client_reset";
const UPSTREAM_RESET: &str = "upstream_reset";
const SHUTDOWN: &str = "shutdown";

/// Takes a connection accepted on L4 listener `name`: refused at once (and logged) when
/// the client is denied or the listener is at `maxConnections`, else relayed on a task of
/// its own. Once connected upstream, the connection holds only its two sockets, its
/// listener's counters and its drain guard: no snapshot.
pub(crate) fn accept(
    gateway: &Gateway,
    name: &str,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
) {
    let snap = gateway.snapshot.load();
    let Some(state) = snap.l4_named(name).cloned() else {
        // Removed by a reload whose accept loop has not stopped yet.
        return;
    };
    let log = snap.access_log.clone();
    drop(snap);
    state.stats.accepted.fetch_add(1, Ordering::Relaxed);
    let rejected = if !state.access.admits(peer.ip()) {
        state.stats.rejected_denied.fetch_add(1, Ordering::Relaxed);
        Some(DENIED)
    } else if !state.stats.try_admit(state.cfg.max_connections as u64) {
        state.stats.rejected_limit.fetch_add(1, Ordering::Relaxed);
        Some(CONNECTION_LIMIT)
    } else {
        None
    };
    if let Some(reason) = rejected {
        // Closed before anything is read or any upstream is contacted.
        drop(stream);
        if let Some(log) = log.filter(|l| l.sampled(true)) {
            log.log_l4(&L4Entry {
                ts: SystemTime::now(),
                client_addr: peer,
                listener: state.name.clone(),
                cluster: state.cluster.name.clone(),
                upstream: None,
                bytes_in: 0,
                bytes_out: 0,
                duration_ms: 0.0,
                error: Some(reason),
            });
        }
        return;
    }
    let conn = Conn {
        meter: Arc::new(Meter::new(state.stats.clone())),
        ts: SystemTime::now(),
        peer,
        listener: state.name.clone(),
        cluster_name: state.cluster.name.clone(),
        idle_timeout: state.cfg.idle_timeout,
        max_duration: state.cfg.max_duration,
        stats: state.stats.clone(),
        log,
        upstream: None,
        error: Some(SHUTDOWN),
    };
    tokio::spawn(conn.run(stream, state.cluster.clone(), guard));
}

/// One admitted connection. Dropping it (however the task ends, even cancelled) writes
/// the access-log line and frees the connection slot, exactly once.
struct Conn {
    listener: Arc<str>,
    cluster_name: Arc<str>,
    idle_timeout: Duration,
    max_duration: Option<Duration>,
    stats: Arc<L4Stats>,
    log: Option<Arc<AccessLogger>>,
    meter: Arc<Meter>,
    ts: SystemTime,
    peer: SocketAddr,
    upstream: Option<Arc<str>>,
    /// What ended the connection; starts as `shutdown` for a task that is cancelled.
    error: Option<&'static str>,
}

impl Conn {
    async fn run(mut self, client: TcpStream, cluster: Arc<ClusterState>, mut guard: ConnGuard) {
        let connected = tokio::select! {
            r = connect(&cluster) => r,
            () = guard.until(Phase::Stopped) => return,
        };
        drop(cluster);
        let upstream = match connected {
            Ok((stream, address)) => {
                self.upstream = Some(address);
                stream
            }
            Err((address, code)) => {
                self.upstream = address;
                self.error = Some(code);
                return;
            }
        };
        let end_of_life = self.max_duration.map(|d| self.meter.at(d));
        let lifetime = async move {
            match end_of_life {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let meter = self.meter.clone();
        let mut client = Metered::new(client, meter.clone(), true);
        let mut upstream = Metered::new(upstream, meter.clone(), false);
        let ended = tokio::select! {
            r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER) => match r {
                Ok(_) => None,
                Err(e) => {
                    let code = if meter.client_failed.load(Ordering::Relaxed) { CLIENT_RESET } else { UPSTREAM_RESET };
                    tracing::debug!(listener = %self.listener, error = %e, code, "L4 connection failed");
                    Some(code)
                }
            },
            _ = meter.idle(self.idle_timeout) => Some(IDLE_TIMEOUT),
            _ = lifetime => Some(MAX_DURATION),
            () = guard.until(Phase::Stopped) => Some(SHUTDOWN),
        };
        self.error = ended;
        // Both sockets close here; the log line follows when `self` drops.
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The line is queued before the slot is freed: whoever sees the slot free also
        // finds the line ahead of any later one.
        if let Some(log) = self
            .log
            .as_ref()
            .filter(|l| l.sampled(self.error.is_some()))
        {
            log.log_l4(&L4Entry {
                ts: self.ts,
                client_addr: self.peer,
                listener: self.listener.clone(),
                cluster: self.cluster_name.clone(),
                upstream: self.upstream.clone(),
                bytes_in: self.meter.bytes_in.load(Ordering::Relaxed),
                bytes_out: self.meter.bytes_out.load(Ordering::Relaxed),
                duration_ms: self.meter.start.elapsed().as_secs_f64() * 1000.0,
                error: self.error,
            });
        }
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Picks an endpoint by the cluster's smooth WRR and connects under the cluster's connect
/// timeout; on failure tries one other endpoint. Returns the stream and the endpoint, or
/// the last endpoint tried and the log code of its failure.
async fn connect(
    cluster: &ClusterState,
) -> Result<(TcpStream, Arc<str>), (Option<Arc<str>>, &'static str)> {
    let mut tried = [usize::MAX; CONNECT_ATTEMPTS];
    let mut failure = (None, NO_ENDPOINT);
    for attempt in 0..CONNECT_ATTEMPTS {
        let Some((i, endpoint)) = cluster
            .balancer
            .pick_except(&tried[..attempt])
            .and_then(|i| cluster.endpoints.get(i).map(|e| (i, e)))
        else {
            break;
        };
        tried[attempt] = i;
        let address = endpoint.address.clone();
        // An `ip:port` endpoint parses without a lookup; a DNS name is resolved per connect.
        match tokio::time::timeout(cluster.timeouts.connect, TcpStream::connect(&*address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                cluster.balancer.report(i, true, None);
                return Ok((stream, address));
            }
            Ok(Err(e)) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %address, error = %e, "L4 connect failed");
                cluster.balancer.report(i, false, None);
                failure = (Some(address), CONNECT_ERROR);
            }
            Err(_) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %address, "L4 connect timed out");
                cluster.balancer.report(i, false, None);
                failure = (Some(address), CONNECT_TIMEOUT);
            }
        }
    }
    Err(failure)
}

/// Byte counts and the last-activity clock of one connection, shared by both directions
/// of the copy and by the idle watchdog.
#[derive(Debug)]
struct Meter {
    stats: Arc<L4Stats>,
    start: Instant,
    /// Milliseconds after `start` when bytes last moved in either direction.
    last_ms: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Which side's socket failed, for the log code.
    client_failed: AtomicBool,
}

impl Meter {
    fn new(stats: Arc<L4Stats>) -> Self {
        Meter {
            stats,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            client_failed: AtomicBool::new(false),
        }
    }

    fn at(&self, after_start: Duration) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start + after_start)
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no bytes have moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.at(last + idle);
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A socket that reports its traffic to the connection's [`Meter`] (and the client side's
/// byte counts to the listener's counters).
struct Metered {
    inner: TcpStream,
    meter: Arc<Meter>,
    client: bool,
}

impl Metered {
    fn new(inner: TcpStream, meter: Arc<Meter>, client: bool) -> Self {
        Metered {
            inner,
            meter,
            client,
        }
    }

    fn failed<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if self.client && matches!(r, Poll::Ready(Err(_))) {
            self.meter.client_failed.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.meter.touch();
            if self.client {
                self.meter.bytes_in.fetch_add(n, Ordering::Relaxed);
                let stats = &self.meter.stats;
                stats.bytes_in.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.failed(r)
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.meter.touch();
                if self.client {
                    self.meter.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    let stats = &self.meter.stats;
                    stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        self.failed(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.failed(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.failed(r)
    }
}
