//! Upstream, step 4 of the request path: per-endpoint connection pools, connect with a
//! timeout, HTTP/1.1 or HTTP/2 (h2c) handshakes, and sending a request so that the caller
//! learns whether any of it reached the upstream (which decides retries).

use crate::config::model::{Protocol, Security, SecurityMode};
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::RequestBody;
use crate::util::{TimedIo, WriteTimeout};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// An idle pooled connection older than this is closed rather than reused (upstreams
/// commonly close idle connections after 60–75 s; reuse races are retried anyway).
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

type H1Sender = http1::SendRequest<RequestBody>;
type H2Sender = http2::SendRequest<RequestBody>;

struct Idle {
    sender: H1Sender,
    write_ms: Arc<AtomicU64>,
    since: Instant,
}

/// TLS origination settings for one endpoint: the cluster's client config (roots, client
/// certificate, ALPN) and the name to send as SNI and verify.
#[derive(Debug)]
pub(crate) struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// A connection to an upstream, plaintext or TLS.
enum UpstreamIo {
    Plain(TimedIo<TcpStream>),
    Tls(Box<tokio_rustls::client::TlsStream<TimedIo<TcpStream>>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections to one endpoint. Survives reloads for endpoints that stay.
pub(crate) struct Pool {
    address: Arc<str>,
    resolved: Option<SocketAddr>,
    protocol: Protocol,
    /// The cluster's TLS settings this pool's connections were made with (compared by
    /// value when a reload decides whether the pool stays).
    security: Security,
    tls: Option<UpstreamTls>,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<H2Sender>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("address", &self.address)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// A connection ready to take one request.
pub(crate) enum Conn {
    H1 {
        sender: H1Sender,
        write_ms: Arc<AtomicU64>,
    },
    H2(H2Sender),
}

/// A checked-out HTTP/1.1 connection waiting for its response body to end, after which it
/// goes back to the pool.
pub(crate) struct PoolReturn {
    pool: Arc<Pool>,
    sender: H1Sender,
    write_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for PoolReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolReturn")
            .field("pool", &self.pool.address)
            .finish_non_exhaustive()
    }
}

impl PoolReturn {
    pub(crate) fn checkin(self) {
        if self.sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.pool.idle.lock() {
            if idle.len() < MAX_IDLE_PER_ENDPOINT {
                idle.push(Idle {
                    sender: self.sender,
                    write_ms: self.write_ms,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// The rustls client configuration of a cluster with `security` set (None for mode
/// none), from the material validation loaded: trust roots from `caBundle` or the system,
/// the client certificate for mtls, and ALPN for the cluster's protocol. TLS 1.2 and 1.3
/// with rustls' safe defaults. Reads no file.
pub(crate) fn client_config(
    security: &Security,
    protocol: Protocol,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if security.mode == SecurityMode::None {
        return Ok(None);
    }
    let Some(material) = &security.material else {
        return Err("TLS material was not loaded".into());
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?
    .with_root_certificates(material.roots.clone());
    let mut config = match (security.mode, &material.identity) {
        (SecurityMode::Mtls, Some(id)) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| format!("client certificate: {e}"))?,
        (SecurityMode::Mtls, None) => return Err("mode mtls needs clientCert and clientKey".into()),
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        Protocol::Http2 => vec![b"h2".to_vec()],
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(Some(Arc::new(config)))
}

/// The name an endpoint is reached as: `serverName` if set, else the endpoint's host (an
/// IP address is verified as an IP).
pub(crate) fn server_name(
    security: &Security,
    endpoint: &str,
) -> Result<ServerName<'static>, String> {
    let host = match &security.server_name {
        Some(name) => name.as_str(),
        None => match endpoint.parse::<SocketAddr>() {
            Ok(addr) => return Ok(ServerName::IpAddress(addr.ip().into())),
            Err(_) => endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h),
        },
    };
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("`{host}` is not a valid TLS server name"))
}

/// The outcome of a failed send.
pub(crate) enum SendError {
    /// Nothing was written; the request comes back for another endpoint.
    NotSent(Box<Request<RequestBody>>, ProxyError),
    /// The request (or part of it) was written; the failure came after.
    Sent(ProxyError),
}

impl Pool {
    pub(crate) fn new(
        address: Arc<str>,
        protocol: Protocol,
        security: Security,
        tls: Option<UpstreamTls>,
    ) -> Self {
        Pool {
            resolved: address.parse().ok(),
            address,
            protocol,
            security,
            tls,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        }
    }

    /// Idle connections currently pooled (HTTP/1.1) or 1 if an HTTP/2 connection is open.
    pub(crate) fn idle_count(&self) -> usize {
        match self.protocol {
            Protocol::Http1 => self.idle.lock().map_or(0, |i| i.len()),
            Protocol::Http2 => self.h2.lock().map_or(0, |h| {
                usize::from(h.as_ref().is_some_and(|s| !s.is_closed()))
            }),
        }
    }

    /// A connection for one request: a pooled one if any is usable, else a new one.
    pub(crate) async fn checkout(
        &self,
        connect_timeout: Duration,
        write_timeout: Duration,
    ) -> Result<Conn, ProxyError> {
        let write = write_timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        match self.protocol {
            Protocol::Http1 => {
                loop {
                    let candidate = self.idle.lock().ok().and_then(|mut i| i.pop());
                    let Some(mut idle) = candidate else { break };
                    if idle.sender.is_closed() || idle.since.elapsed() > MAX_IDLE_AGE {
                        continue;
                    }
                    if !idle.sender.is_ready() {
                        // Just returned: its connection task may still be finishing the last
                        // response. Give it a moment, never long.
                        let ready =
                            tokio::time::timeout(Duration::from_millis(50), idle.sender.ready())
                                .await;
                        if !matches!(ready, Ok(Ok(()))) {
                            continue;
                        }
                    }
                    idle.write_ms.store(write, Ordering::Relaxed);
                    return Ok(Conn::H1 {
                        sender: idle.sender,
                        write_ms: idle.write_ms,
                    });
                }
                let write_ms = Arc::new(AtomicU64::new(write));
                let io = self
                    .connect(connect_timeout, WriteTimeout::Shared(write_ms.clone()))
                    .await?;
                let (sender, conn) =
                    tokio::time::timeout(connect_timeout, http1::Builder::new().handshake(io))
                        .await
                        .map_err(|_| ProxyError::new(ErrorKind::UpstreamConnectTimeout))?
                        .map_err(|e| ProxyError::with(ErrorKind::UpstreamConnect, e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
                Ok(Conn::H1 { sender, write_ms })
            }
            Protocol::Http2 => {
                if let Ok(guard) = self.h2.lock() {
                    if let Some(s) = guard.as_ref().filter(|s| !s.is_closed()) {
                        return Ok(Conn::H2(s.clone()));
                    }
                }
                let io = self
                    .connect(connect_timeout, WriteTimeout::Fixed(write_timeout))
                    .await?;
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .adaptive_window(true)
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10));
                let (sender, conn) = tokio::time::timeout(connect_timeout, builder.handshake(io))
                    .await
                    .map_err(|_| ProxyError::new(ErrorKind::UpstreamConnectTimeout))?
                    .map_err(|e| ProxyError::with(ErrorKind::UpstreamConnect, e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                    }
                });
                if let Ok(mut guard) = self.h2.lock() {
                    *guard = Some(sender.clone());
                }
                Ok(Conn::H2(sender))
            }
        }
    }

    /// Whether this pool speaks to its endpoint with these settings, compared by value (a
    /// reload that keeps them keeps the pool and its warm connections; one that changes
    /// the protocol, TLS settings or material gets a new pool).
    pub(crate) fn same_settings(&self, protocol: Protocol, security: &Security) -> bool {
        self.protocol == protocol && self.security == *security
    }

    async fn connect(
        &self,
        timeout: Duration,
        write: WriteTimeout,
    ) -> Result<TokioIo<UpstreamIo>, ProxyError> {
        let deadline = Instant::now() + timeout;
        let attempt = async {
            match self.resolved {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(&*self.address).await,
            }
        };
        let stream = match tokio::time::timeout(timeout, attempt).await {
            Err(_) => return Err(ProxyError::new(ErrorKind::UpstreamConnectTimeout)),
            Ok(Err(e)) => return Err(ProxyError::with(ErrorKind::UpstreamConnect, e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let io = TimedIo::new(stream, write);
        let Some(tls) = &self.tls else {
            return Ok(TokioIo::new(UpstreamIo::Plain(io)));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        match tokio::time::timeout_at(deadline, connector.connect(tls.server_name.clone(), io))
            .await
        {
            Err(_) => Err(ProxyError::new(ErrorKind::UpstreamConnectTimeout)),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %self.address, error = %e, "upstream TLS handshake failed");
                Err(ProxyError::with(ErrorKind::UpstreamTls, e))
            }
            Ok(Ok(stream)) => {
                // An http2 cluster needs the upstream to have agreed to h2 over ALPN.
                if self.protocol == Protocol::Http2
                    && stream.get_ref().1.alpn_protocol() != Some(b"h2")
                {
                    return Err(ProxyError::with(
                        ErrorKind::UpstreamTls,
                        "the upstream did not agree to HTTP/2 (ALPN h2)",
                    ));
                }
                Ok(TokioIo::new(UpstreamIo::Tls(Box::new(stream))))
            }
        }
    }
}

impl Conn {
    /// Sends the request and waits for the response head. On HTTP/1.1 the connection is
    /// handed back inside a [`PoolReturn`] for the response body to return when it ends.
    pub(crate) async fn send(
        self,
        pool: &Arc<Pool>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<PoolReturn>), SendError> {
        match self {
            Conn::H1 {
                mut sender,
                write_ms,
            } => {
                let fut = sender.try_send_request(req);
                match fut.await {
                    Ok(resp) => Ok((
                        resp,
                        Some(PoolReturn {
                            pool: pool.clone(),
                            sender,
                            write_ms,
                        }),
                    )),
                    Err(mut e) => match e.take_message() {
                        Some(req) => {
                            Err(SendError::NotSent(Box::new(req), classify(e.into_error())))
                        }
                        None => Err(SendError::Sent(classify(e.into_error()))),
                    },
                }
            }
            Conn::H2(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => Ok((resp, None)),
                Err(mut e) => match e.take_message() {
                    Some(req) => Err(SendError::NotSent(Box::new(req), classify(e.into_error()))),
                    None => Err(SendError::Sent(classify(e.into_error()))),
                },
            },
        }
    }
}

/// Maps a hyper client error to the error table. A failure caused by the client's own
/// request body is reported by the body wrapper, which the caller checks first.
fn classify(e: hyper::Error) -> ProxyError {
    let kind = if e.is_parse() || e.is_parse_status() {
        ErrorKind::UpstreamProtocol
    } else if e.is_timeout() || caused_by_timeout(&e) {
        ErrorKind::UpstreamTimeout
    } else {
        ErrorKind::UpstreamReset
    };
    ProxyError::with(kind, e)
}

fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = e.source();
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}
