//! The soak's clients: one paced loop per worker, each bounded by the run's end and its
//! share of the request budget, every exchange checked (status, which upstream answered,
//! echoed bytes) and every failure kept with its id and times for the verdict.

use crate::gateway::{Ports, Variant};
use crate::grpc::{self, Msg};
use crate::now;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::RwLock;
use tokio::time::{Instant, MissedTickBehavior};

/// Longest any one exchange may take before it counts as a failure (a hang).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// The names of the nodes behind clusters `web` and `grpc`.
pub const WEB: [&str; 3] = ["a", "b", "c"];
/// The host every request names (the TLS certificate's name).
const HOST: &str = "soak.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Http1,
    Http1Post,
    H2c,
    Https1,
    HttpsNewConn,
    H2Tls,
    Ws,
    Wss,
    GrpcUnary,
    GrpcUnaryTls,
    GrpcBidi,
    GrpcBidiTls,
    L4,
    ExtraRoute,
    ExtraListener,
    Reload,
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::Http1,
        Kind::Http1Post,
        Kind::H2c,
        Kind::Https1,
        Kind::HttpsNewConn,
        Kind::H2Tls,
        Kind::Ws,
        Kind::Wss,
        Kind::GrpcUnary,
        Kind::GrpcUnaryTls,
        Kind::GrpcBidi,
        Kind::GrpcBidiTls,
        Kind::L4,
        Kind::ExtraRoute,
        Kind::ExtraListener,
        Kind::Reload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Http1 => "http1",
            Kind::Http1Post => "http1-post",
            Kind::H2c => "h2c",
            Kind::Https1 => "https1",
            Kind::HttpsNewConn => "https1-new-conn",
            Kind::H2Tls => "h2-tls",
            Kind::Ws => "ws",
            Kind::Wss => "wss",
            Kind::GrpcUnary => "grpc-unary",
            Kind::GrpcUnaryTls => "grpc-unary-tls",
            Kind::GrpcBidi => "grpc-bidi",
            Kind::GrpcBidiTls => "grpc-bidi-tls",
            Kind::L4 => "l4",
            Kind::ExtraRoute => "reload-route",
            Kind::ExtraListener => "reload-listener",
            Kind::Reload => "reload",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Kind::Http1 => "GET, HTTP/1.1 keep-alive, plaintext",
            Kind::Http1Post => "POST 8 KiB to /echo, HTTP/1.1 keep-alive, body checked",
            Kind::H2c => "GET, HTTP/2 prior knowledge (h2c), 8 streams at a time",
            Kind::Https1 => "GET, HTTP/1.1 keep-alive over TLS",
            Kind::HttpsNewConn => "GET on a new TLS connection each (handshakes)",
            Kind::H2Tls => "GET, HTTP/2 over TLS (ALPN h2), 8 streams at a time",
            Kind::Ws => "WebSocket message echoed, plaintext, 100 per session",
            Kind::Wss => "WebSocket message echoed over TLS, 100 per session",
            Kind::GrpcUnary => "gRPC unary, h2c",
            Kind::GrpcUnaryTls => "gRPC unary over TLS",
            Kind::GrpcBidi => "gRPC bidi message echoed, h2c, 100 per stream",
            Kind::GrpcBidiTls => "gRPC bidi message echoed over TLS, 100 per stream",
            Kind::L4 => "1 KiB echoed through the L4 listener, 100 per connection",
            Kind::ExtraRoute => "/extra: the added route's cluster while it exists, web after",
            Kind::ExtraListener => "the added listener serves; once removed, it refuses",
            Kind::Reload => "POST /reload of the other configuration",
        }
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// One failed exchange. Session kinds (WebSocket, gRPC bidi, L4) carry the session's id
/// and its start, since what fails is the session.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: Kind,
    pub id: String,
    pub start: f64,
    pub end: f64,
    pub error: String,
    /// The client's own address, for L4 connections (whose access-log line has no id).
    pub local: Option<SocketAddr>,
}

#[derive(Default)]
pub struct Stats {
    ok: [AtomicU64; Kind::ALL.len()],
    failed: [AtomicU64; Kind::ALL.len()],
    failures: Mutex<Vec<Failure>>,
}

/// Failures kept in full; beyond this only counted.
const KEEP_FAILURES: usize = 100_000;

impl Stats {
    pub fn ok(&self, kind: Kind) {
        self.ok[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fail(&self, f: Failure) {
        self.failed[f.kind.index()].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut all) = self.failures.lock() {
            if all.len() < KEEP_FAILURES {
                all.push(f);
            }
        }
    }

    pub fn counts(&self, kind: Kind) -> (u64, u64) {
        (
            self.ok[kind.index()].load(Ordering::Relaxed),
            self.failed[kind.index()].load(Ordering::Relaxed),
        )
    }

    pub fn failures(&self) -> Vec<Failure> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// Which configuration is loaded and since when; the reloader holds it for writing while
/// it switches, so what the extra worker checks is never mid-reload.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub variant: Variant,
    pub since: Instant,
}

pub struct Ctx {
    pub ports: Ports,
    pub end: Instant,
    pub stats: Stats,
    pub tls_h1: Arc<rustls::ClientConfig>,
    pub tls_h2: Arc<rustls::ClientConfig>,
    pub ca_pem: String,
    pub phase: RwLock<Phase>,
    /// Exchanges left before every loop stops, whatever the time.
    pub budget: AtomicI64,
}

impl Ctx {
    /// Whether a loop may start another exchange.
    fn go(&self) -> bool {
        Instant::now() < self.end && self.budget.fetch_sub(1, Ordering::Relaxed) > 0
    }

    fn fail(
        &self,
        kind: Kind,
        id: &str,
        start: f64,
        error: impl ToString,
        local: Option<SocketAddr>,
    ) {
        self.stats.fail(Failure {
            kind,
            id: id.to_string(),
            start,
            end: now(),
            error: error.to_string(),
            local,
        });
    }
}

/// Runs `f` with the exchange timeout; errors become strings.
async fn timed<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

// ---- connections --------------------------------------------------------------------

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A TCP connection to `port`, wrapped in TLS (with `soak.test` as SNI) if `tls` is set.
async fn dial(
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Box<dyn Io>, SocketAddr), String> {
    let tcp = TcpStream::connect(addr(port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    match tls {
        None => Ok((Box::new(tcp), local)),
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(HOST).map_err(|e| e.to_string())?;
            let s = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            Ok((Box::new(s), local))
        }
    }
}

type ReqBody = Full<Bytes>;

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl Sender {
    async fn open(
        port: u16,
        tls: Option<&Arc<rustls::ClientConfig>>,
        h2: bool,
    ) -> Result<Sender, String> {
        let (io, _) = dial(port, tls).await?;
        let io = TokioIo::new(io);
        if h2 {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H2(s))
        } else {
            let (s, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn.with_upgrades());
            Ok(Sender::H1(s))
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(req).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    fn clone_h2(&self) -> Option<http2::SendRequest<ReqBody>> {
        match self {
            Sender::H2(s) => Some(s.clone()),
            Sender::H1(_) => None,
        }
    }
}

fn get(path: &str, id: &str, h2: bool) -> Request<ReqBody> {
    let uri = if h2 {
        format!("http://{HOST}{path}")
    } else {
        path.to_string()
    };
    let mut b = Request::get(uri).header("x-request-id", id);
    if !h2 {
        b = b.header("host", HOST);
    }
    b.body(Full::new(Bytes::new())).unwrap_or_default()
}

/// A web answer is right when it is 200 and its body names the upstream its header names,
/// one of `allowed`.
fn check_named(r: &(StatusCode, HeaderMap, Bytes), allowed: &[&str]) -> Result<(), String> {
    let (status, headers, body) = r;
    let upstream = headers.get("x-upstream").and_then(|v| v.to_str().ok());
    let text = String::from_utf8_lossy(body);
    if *status != StatusCode::OK || upstream != Some(&*text) || !allowed.contains(&&*text) {
        return Err(format!(
            "unexpected answer {status} x-upstream={upstream:?} body={:.120}",
            text
        ));
    }
    Ok(())
}

// ---- HTTP workers -----------------------------------------------------------------------

/// Plain GETs (and every tenth a POST echo, on HTTP/1.1) on one kept-alive connection,
/// `streams` at a time on HTTP/2, every `period`. A connection found closed after a good
/// exchange counts as a failure too: the gateway has no reason to close one here.
pub async fn http(
    ctx: Arc<Ctx>,
    kind: Kind,
    w: usize,
    tls: bool,
    h2: bool,
    streams: usize,
    period: Duration,
) {
    let port = if tls { ctx.ports.tls } else { ctx.ports.plain };
    let config = if h2 { &ctx.tls_h2 } else { &ctx.tls_h1 };
    let config = tls.then_some(config);
    let mut conn: Option<Sender> = None;
    let mut tick = ticker(period);
    let mut seq = 0u64;
    let post_body = Bytes::from((0..8192u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    while ctx.go() {
        tick.tick().await;
        seq += 1;
        let id = format!("{}-{w}-{seq}", kind.name());
        let start = now();
        if let Some(c) = &conn {
            if c.is_closed() {
                ctx.fail(
                    kind,
                    &id,
                    start,
                    "the gateway closed a kept-alive connection",
                    None,
                );
                conn = None;
                continue;
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match timed(Sender::open(port, config, h2)).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    ctx.fail(kind, &id, start, e, None);
                    continue;
                }
            },
        };
        if h2 {
            let Some(s) = c.clone_h2() else { continue };
            let exchanges = (0..streams).map(|i| {
                let mut s = Sender::H2(s.clone());
                let id = format!("{id}.{i}");
                async move {
                    let r = timed(s.send(get("/h2", &id, true))).await;
                    (id, r.and_then(|r| check_named(&r, &WEB)))
                }
            });
            let mut broken = false;
            for (id, r) in futures_util::future::join_all(exchanges).await {
                match r {
                    Ok(()) => ctx.stats.ok(kind),
                    Err(e) => {
                        broken = true;
                        ctx.fail(kind, &id, start, e, None);
                    }
                }
            }
            if broken {
                conn = None;
            }
            continue;
        }
        let post = kind == Kind::Http1 && seq.is_multiple_of(10);
        let (k, req) = if post {
            let req = Request::post("/echo")
                .header("host", HOST)
                .header("x-request-id", &id)
                .body(Full::new(post_body.clone()))
                .unwrap_or_default();
            (Kind::Http1Post, req)
        } else {
            (kind, get("/h1", &id, false))
        };
        let checked = timed(c.send(req)).await.and_then(|r| {
            if post {
                (r.0 == StatusCode::OK && r.2 == post_body)
                    .then_some(())
                    .ok_or_else(|| format!("echo: {} with {} bytes", r.0, r.2.len()))
            } else {
                check_named(&r, &WEB)
            }
        });
        match checked {
            Ok(()) => ctx.stats.ok(k),
            Err(e) => {
                // A failed exchange may leave the connection to be closed: start afresh.
                ctx.fail(k, &id, start, e, None);
                conn = None;
            }
        }
    }
}

/// One GET on a new TLS connection every `period`: handshakes all along.
pub async fn https_new(ctx: Arc<Ctx>, w: usize, period: Duration) {
    let mut tick = ticker(period);
    let mut seq = 0u64;
    while ctx.go() {
        tick.tick().await;
        seq += 1;
        let id = format!("{}-{w}-{seq}", Kind::HttpsNewConn.name());
        let start = now();
        let r = timed(async {
            let mut s = Sender::open(ctx.ports.tls, Some(&ctx.tls_h1), false).await?;
            let r = s.send(get("/new", &id, false)).await?;
            check_named(&r, &WEB)
        })
        .await;
        match r {
            Ok(()) => ctx.stats.ok(Kind::HttpsNewConn),
            Err(e) => ctx.fail(Kind::HttpsNewConn, &id, start, e, None),
        }
    }
}

// ---- WebSocket ----------------------------------------------------------------------------

const SESSION: usize = 100;

/// WebSocket sessions of `SESSION` echoed messages, one every `period`.
pub async fn websocket(ctx: Arc<Ctx>, w: usize, tls: bool, period: Duration) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let kind = if tls { Kind::Wss } else { Kind::Ws };
    let port = if tls { ctx.ports.tls } else { ctx.ports.plain };
    let mut tick = ticker(period);
    let mut session = 0u64;
    while ctx.go() {
        tick.tick().await;
        session += 1;
        let sid = format!("{}-{w}-{session}", kind.name());
        let start = now();
        let opened = timed(async {
            let (io, _) = dial(port, tls.then_some(&ctx.tls_h1)).await?;
            let scheme = if tls { "wss" } else { "ws" };
            let mut req = format!("{scheme}://{HOST}/ws")
                .into_client_request()
                .map_err(|e| e.to_string())?;
            if let Ok(v) = sid.parse() {
                req.headers_mut().insert("x-request-id", v);
            }
            let (ws, resp) = tokio_tungstenite::client_async(req, io)
                .await
                .map_err(|e| format!("upgrade: {e}"))?;
            let up = resp
                .headers()
                .get("x-upstream")
                .and_then(|v| v.to_str().ok());
            if !up.is_some_and(|u| WEB.contains(&u)) {
                return Err(format!("upgrade answered by {up:?}"));
            }
            Ok::<_, String>(ws)
        })
        .await;
        let mut ws = match opened {
            Ok(ws) => ws,
            Err(e) => {
                ctx.fail(kind, &sid, start, e, None);
                continue;
            }
        };
        let mut failed = false;
        for i in 0..SESSION {
            if i > 0 {
                if !ctx.go() {
                    break;
                }
                tick.tick().await;
            }
            let text = format!("{sid} message {i}");
            let r = timed(async {
                ws.send(Message::text(text.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == text => return Ok(()),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(other)) => return Err(format!("unexpected message {other:?}")),
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("closed".to_string()),
                    }
                }
            })
            .await;
            match r {
                Ok(()) => ctx.stats.ok(kind),
                Err(e) => {
                    ctx.fail(kind, &sid, start, e, None);
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            let _ = timed(async { ws.close(None).await.map_err(|e| e.to_string()) }).await;
        }
    }
}

// ---- gRPC -----------------------------------------------------------------------------------

async fn grpc_client(
    ctx: &Ctx,
    tls: bool,
) -> Result<tonic::client::Grpc<tonic::transport::Channel>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let e = |e: tonic::transport::Error| e.to_string();
    let endpoint = if tls {
        Endpoint::from_shared(format!("https://127.0.0.1:{}", ctx.ports.tls))
            .map_err(e)?
            .origin(
                format!("https://{HOST}:{}", ctx.ports.tls)
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| e.to_string())?,
            )
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ctx.ca_pem))
                    .domain_name(HOST),
            )
            .map_err(e)?
    } else {
        Endpoint::from_shared(format!("http://127.0.0.1:{}", ctx.ports.plain))
            .map_err(e)?
            .origin(
                format!("http://{HOST}:{}", ctx.ports.plain)
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| e.to_string())?,
            )
    };
    let channel = endpoint.connect_timeout(OP_TIMEOUT).connect_lazy();
    Ok(tonic::client::Grpc::new(channel))
}

fn grpc_request<T>(msg: T, id: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = id.parse() {
        req.metadata_mut().insert("x-request-id", v);
    }
    req
}

/// gRPC unary calls, one every `period`, on a channel that tonic reconnects by itself.
pub async fn grpc_unary(ctx: Arc<Ctx>, w: usize, tls: bool, period: Duration) {
    let kind = if tls {
        Kind::GrpcUnaryTls
    } else {
        Kind::GrpcUnary
    };
    let mut client = match grpc_client(&ctx, tls).await {
        Ok(c) => c,
        Err(e) => {
            ctx.fail(kind, &format!("{}-{w}-client", kind.name()), now(), e, None);
            return;
        }
    };
    let mut tick = ticker(period);
    let mut seq = 0u64;
    while ctx.go() {
        tick.tick().await;
        seq += 1;
        let id = format!("{}-{w}-{seq}", kind.name());
        let start = now();
        let text = format!("unary {seq}");
        let r = timed(async {
            client.ready().await.map_err(|e| e.to_string())?;
            let req = grpc_request(
                Msg {
                    text: text.clone(),
                    blob: vec![7; 256],
                },
                &id,
            );
            let resp = client
                .unary(
                    req,
                    http::uri::PathAndQuery::from_static(grpc::UNARY),
                    grpc::Codec::default(),
                )
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            let m = resp.into_inner();
            (m.text == format!("echo {text}") && m.blob.len() == 256)
                .then_some(())
                .ok_or_else(|| format!("unexpected reply {:?}", m.text))
        })
        .await;
        match r {
            Ok(()) => ctx.stats.ok(kind),
            Err(e) => ctx.fail(kind, &id, start, e, None),
        }
    }
}

/// gRPC bidi streams of `SESSION` echoed messages, one every `period`.
pub async fn grpc_bidi(ctx: Arc<Ctx>, w: usize, tls: bool, period: Duration) {
    let kind = if tls {
        Kind::GrpcBidiTls
    } else {
        Kind::GrpcBidi
    };
    let mut client = match grpc_client(&ctx, tls).await {
        Ok(c) => c,
        Err(e) => {
            ctx.fail(kind, &format!("{}-{w}-client", kind.name()), now(), e, None);
            return;
        }
    };
    let mut tick = ticker(period);
    let mut session = 0u64;
    while ctx.go() {
        tick.tick().await;
        session += 1;
        let sid = format!("{}-{w}-{session}", kind.name());
        let start = now();
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let opened = timed(async {
            client.ready().await.map_err(|e| e.to_string())?;
            client
                .streaming(
                    grpc_request(outbound, &sid),
                    http::uri::PathAndQuery::from_static(grpc::BIDI),
                    grpc::Codec::default(),
                )
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
        .await;
        let mut replies = match opened {
            Ok(r) => r.into_inner(),
            Err(e) => {
                ctx.fail(kind, &sid, start, e, None);
                continue;
            }
        };
        let mut failed = false;
        for i in 0..SESSION {
            if i > 0 {
                if !ctx.go() {
                    break;
                }
                tick.tick().await;
            }
            let text = format!("{sid} message {i}");
            let r = timed(async {
                tx.send(Msg {
                    text: text.clone(),
                    blob: Vec::new(),
                })
                .await
                .map_err(|_| "the request stream ended".to_string())?;
                match replies.message().await {
                    Ok(Some(m)) if m.text == format!("echo {text}") => Ok(()),
                    Ok(Some(m)) => Err(format!("unexpected reply {:?}", m.text)),
                    Ok(None) => Err("the stream ended early".to_string()),
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                }
            })
            .await;
            match r {
                Ok(()) => ctx.stats.ok(kind),
                Err(e) => {
                    ctx.fail(kind, &sid, start, e, None);
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            continue;
        }
        drop(tx);
        // The stream ends cleanly with status OK once the client half-closes.
        let end = timed(async {
            match replies.message().await {
                Ok(None) => Ok(()),
                Ok(Some(m)) => Err(format!("a reply after the end: {:?}", m.text)),
                Err(s) => Err(format!("at the end: {:?}: {}", s.code(), s.message())),
            }
        })
        .await;
        if let Err(e) = end {
            ctx.fail(kind, &sid, start, e, None);
        }
    }
}

// ---- L4 -----------------------------------------------------------------------------------

/// TCP sessions through the L4 listener: `id <session>\n`, the node's `ok\n`, then
/// `SESSION` chunks of 1 KiB echoed, one every `period`, and a clean close both ways.
pub async fn l4(ctx: Arc<Ctx>, w: usize, period: Duration) {
    let kind = Kind::L4;
    let mut tick = ticker(period);
    let mut session = 0u64;
    while ctx.go() {
        tick.tick().await;
        session += 1;
        let sid = format!("{}-{w}-{session}", kind.name());
        let start = now();
        let mut local = None;
        let opened = timed(async {
            let mut s = TcpStream::connect(addr(ctx.ports.l4))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = s.set_nodelay(true);
            local = s.local_addr().ok();
            s.write_all(format!("id {sid}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut ok = [0u8; 3];
            s.read_exact(&mut ok)
                .await
                .map_err(|e| format!("greeting: {e}"))?;
            (&ok == b"ok\n")
                .then_some(s)
                .ok_or_else(|| format!("greeting {ok:?}"))
        })
        .await;
        let mut s = match opened {
            Ok(s) => s,
            Err(e) => {
                ctx.fail(kind, &sid, start, e, local);
                continue;
            }
        };
        let mut failed = false;
        for i in 0..SESSION {
            if i > 0 {
                if !ctx.go() {
                    break;
                }
                tick.tick().await;
            }
            let chunk: Vec<u8> = (0..1024).map(|j| ((i * 31 + j) % 256) as u8).collect();
            let r = timed(async {
                s.write_all(&chunk).await.map_err(|e| e.to_string())?;
                let mut back = vec![0u8; chunk.len()];
                s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
                (back == chunk)
                    .then_some(())
                    .ok_or_else(|| "echoed bytes differ".to_string())
            })
            .await;
            match r {
                Ok(()) => ctx.stats.ok(kind),
                Err(e) => {
                    ctx.fail(kind, &sid, start, e, local);
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            continue;
        }
        let end = timed(async {
            s.shutdown().await.map_err(|e| e.to_string())?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.map_err(|e| e.to_string())?;
            rest.is_empty()
                .then_some(())
                .ok_or_else(|| format!("{} bytes after the end", rest.len()))
        })
        .await;
        if let Err(e) = end {
            ctx.fail(kind, &sid, start, e, local);
        }
    }
}

// ---- what the reloads change ------------------------------------------------------------

/// Checks that each reload really took effect, every `period`: while B is loaded, `/extra`
/// is answered by node x and the extra listener serves; while A is, `/extra` falls to the
/// web route and, a second after the switch, the extra listener's port refuses.
pub async fn extra(ctx: Arc<Ctx>, period: Duration) {
    let mut tick = ticker(period);
    let mut seq = 0u64;
    while ctx.go() {
        tick.tick().await;
        seq += 1;
        let phase = ctx.phase.read().await;
        let id = format!("{}-{seq}", Kind::ExtraRoute.name());
        let start = now();
        let allowed: &[&str] = match phase.variant {
            Variant::A => &WEB,
            Variant::B => &["x"],
        };
        let r = timed(async {
            let mut s = Sender::open(ctx.ports.plain, None, false).await?;
            let r = s.send(get("/extra/probe", &id, false)).await?;
            check_named(&r, allowed)
        })
        .await;
        match r {
            Ok(()) => ctx.stats.ok(Kind::ExtraRoute),
            Err(e) => ctx.fail(
                Kind::ExtraRoute,
                &id,
                start,
                format!("{:?}: {e}", phase.variant),
                None,
            ),
        }
        let id = format!("{}-{seq}", Kind::ExtraListener.name());
        let start = now();
        match phase.variant {
            Variant::B => {
                let r = timed(async {
                    let mut s = Sender::open(ctx.ports.extra, None, false).await?;
                    let r = s.send(get("/on-extra", &id, false)).await?;
                    check_named(&r, &WEB)
                })
                .await;
                match r {
                    Ok(()) => ctx.stats.ok(Kind::ExtraListener),
                    Err(e) => ctx.fail(Kind::ExtraListener, &id, start, e, None),
                }
            }
            Variant::A if phase.since.elapsed() > Duration::from_secs(1) => {
                match TcpStream::connect(addr(ctx.ports.extra)).await {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        ctx.stats.ok(Kind::ExtraListener)
                    }
                    Err(e) => ctx.fail(Kind::ExtraListener, &id, start, e, None),
                    Ok(_) => ctx.fail(
                        Kind::ExtraListener,
                        &id,
                        start,
                        "the removed listener still accepts connections",
                        None,
                    ),
                }
            }
            Variant::A => {}
        }
    }
}
