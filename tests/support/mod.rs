//! Test harness: in-process upstreams on 127.0.0.1:0, the real gateway server started
//! from YAML text, and small real clients (hyper HTTP/1.1 and HTTP/2, raw TCP).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// An upstream server in this process. Behaviour by path:
/// - `/sleep/<ms>`: waits, then 200;
/// - `/status/<code>`: answers that status;
/// - `/echo`: streams the request body back;
/// - `/trailers`: a body followed by trailers `x-trailer: done`;
/// - `/ws`: WebSocket echo;
/// - `/big/<bytes>`: that many bytes, streamed in 16 KiB chunks;
/// - anything else: 200 with the upstream's name as body.
///
/// Every response carries `x-upstream: <name>`.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    recording: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        Self::start_with(name, false).await
    }

    /// An upstream that keeps no record of what it saw (`seen` stays empty): for tests
    /// that measure memory, since each record holds on to its request's header bytes.
    pub async fn start_unrecorded(name: &'static str) -> Upstream {
        let up = Self::start_with(name, false).await;
        up.recording.store(false, Ordering::SeqCst);
        up
    }

    /// An upstream that speaks HTTP/2 only (h2c prior knowledge).
    pub async fn start_h2(name: &'static str) -> Upstream {
        Self::start_with(name, true).await
    }

    async fn start_with(name: &'static str, h2: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recording = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (h, s, rec) = (hits.clone(), seen.clone(), recording.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, s, rec) = (h.clone(), s.clone(), rec.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let seen = rec.load(Ordering::SeqCst).then(|| s.clone());
                        serve(name, req, h.clone(), seen)
                    });
                    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if h2 {
                        b = b.http2_only();
                    }
                    let _ = b
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            name,
            addr,
            hits,
            seen,
            recording,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }
}

async fn serve(
    name: &'static str,
    mut req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
    seen: Option<Arc<Mutex<Vec<Seen>>>>,
) -> Result<Response<Body>, Infallible> {
    let unrecorded = Arc::new(Mutex::new(Vec::new()));
    let seen = seen.unwrap_or(unrecorded);
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let mut record = Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
        body_len: 0,
    };
    let mut resp = if let Some(ms) = path.strip_prefix("/sleep/") {
        seen.lock().unwrap().push(record);
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(name))
    } else if let Some(code) = path.strip_prefix("/status/") {
        seen.lock().unwrap().push(record);
        let mut r = Response::new(full(name));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        r
    } else if path == "/echo" {
        seen.lock().unwrap().push(record);
        Response::new(req.into_body().map_err(|e| e.into()).boxed())
    } else if path == "/collect" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        record.body_len = body.len();
        seen.lock().unwrap().push(record);
        Response::new(full(format!("{}", body.len())))
    } else if path == "/trailers" {
        seen.lock().unwrap().push(record);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", "done".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
            Ok(Frame::data(Bytes::from_static(b"part one;"))),
            Ok(Frame::data(Bytes::from_static(b"part two"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
        // HTTP/1.1 only sends trailers that the head announced.
        r.headers_mut()
            .insert("trailer", "x-trailer".parse().unwrap());
        r
    } else if let Some(n) = path.strip_prefix("/big/") {
        seen.lock().unwrap().push(record);
        let n: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        let frames = (0..n.div_ceil(chunk.len())).map(move |i| {
            let len = (n - i * chunk.len()).min(chunk.len());
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.slice(..len)))
        });
        Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
    } else if path == "/ws" {
        seen.lock().unwrap().push(record);
        let key = req.headers().get("sec-websocket-key").cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                use futures_util::{SinkExt, StreamExt};
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if tx.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            }
        });
        let accept = key
            .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
            .unwrap_or_default();
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("sec-websocket-accept", accept.parse().unwrap());
        return Ok(r);
    } else {
        seen.lock().unwrap().push(record);
        Response::new(full(name))
    };
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    Ok(resp)
}

/// A gateway started in this process from YAML text (written to a temp dir, so relative
/// paths and the access-log file live there).
pub struct Gateway {
    pub running: Option<gateway::runtime::Running>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway. The text may use `{dir}` for the temp dir path.
    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_in(tempfile::tempdir().unwrap(), yaml).await
    }

    pub fn admin(&self) -> SocketAddr {
        self.running
            .as_ref()
            .unwrap()
            .admin
            .expect("admin configured")
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Waits until the access log holds at least `n` lines, and returns them as written.
    pub async fn access_log_lines(&self, n: usize) -> Vec<String> {
        let path = self.access_log_path();
        eventually(Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            (lines.len() >= n).then_some(lines)
        })
        .await
    }

    /// Waits until the access log holds at least `n` lines, and returns them parsed.
    pub async fn access_log(&self, n: usize) -> Vec<serde_json::Value> {
        self.access_log_lines(n)
            .await
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l}: {e}")))
            .collect()
    }

    pub async fn shutdown(mut self, drain: Duration) -> bool {
        self.running.take().unwrap().shutdown(drain).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            // Best effort: stop accepting so ports and tasks go away with the test.
            let _ = tokio::runtime::Handle::try_current()
                .map(|h| h.spawn(r.shutdown(Duration::from_millis(10))));
        }
    }
}

/// Polls `check` until it returns Some, or panics after `limit`. The way tests wait for
/// something to happen, instead of sleeping.
pub async fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not met within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A finished HTTP response with its body read.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn read_all(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// An HTTP/1.1 connection to `addr`, kept alive across requests.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1 { sender }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Got {
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("response");
        read_all(resp).await
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Got {
        self.send(
            Request::get(path)
                .header("host", host)
                .body(empty())
                .unwrap(),
        )
        .await
    }
}

/// One GET on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Got {
    H1::connect(addr).await.get(host, path).await
}

/// An HTTP/2 (h2c prior knowledge) connection.
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Body>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2 { sender }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Got {
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("response");
        read_all(resp).await
    }
}

/// Writes raw bytes on a new connection and reads until the server closes it (or `limit`).
/// Returns what was read and whether the server closed the connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// A TCP port on 127.0.0.1 with nothing listening on it.
///
/// The port stays bound (without listening) for the rest of the test process, so no
/// other test's listener can take it and connections to it keep being refused.
pub async fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

impl Gateway {
    /// The bound address of the L4 listener `name`.
    pub fn l4_addr(&self, name: &str) -> SocketAddr {
        self.running
            .as_ref()
            .unwrap()
            .l4_addr(name)
            .unwrap_or_else(|| panic!("no L4 listener named {name}"))
    }
}

// ---- TLS: certificates made at test time, TLS clients, and gateways started beside them ----

/// A test certificate authority (ECDSA P-256) that issues leaf certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate written to disk: its files and its DER (to recognise it on the wire).
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a certificate for `names` (its DNS SANs) and writes `<dir>/<file>.pem` and
    /// `<dir>/<file>.key`.
    pub fn leaf(&self, dir: &std::path::Path, file: &str, names: &[&str]) -> Leaf {
        self.leaf_with(dir, file, names, |_| {})
    }

    /// As `leaf`, with the parameters adjusted first (validity, …).
    pub fn leaf_with(
        &self,
        dir: &std::path::Path,
        file: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, file);
        adjust(&mut params);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

/// Accepts any server certificate: for tests that look at *which* certificate was served.
#[derive(Debug)]
pub struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client config offering `alpn`, TLS `versions` (empty = 1.2 and 1.3), that trusts
/// `ca` or, without one, accepts any certificate.
pub fn tls_client(
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    ca: Option<&TestCa>,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = if versions.is_empty() {
        rustls::DEFAULT_VERSIONS
    } else {
        versions
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    let mut config = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

pub type TlsIo = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` with `sni` (None = send no SNI).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsIo> {
    let mut config = config;
    let name = match sni {
        Some(s) => rustls_pki_types::ServerName::try_from(s.to_string()).unwrap(),
        None => {
            let mut c = (*config).clone();
            c.enable_sni = false;
            config = Arc::new(c);
            rustls_pki_types::ServerName::try_from("no-sni.invalid").unwrap()
        }
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The DER of the leaf certificate a TLS connection was served.
pub fn served_cert(io: &TlsIo) -> Vec<u8> {
    io.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

impl H1 {
    /// An HTTP/1.1 connection over an already connected stream (TLS).
    pub async fn over<IO>(io: IO) -> H1
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1 { sender }
    }
}

impl H2 {
    /// An HTTP/2 connection over an already connected stream (TLS with ALPN h2).
    pub async fn over<IO>(io: IO) -> H2
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2 { sender }
    }
}

impl Gateway {
    /// Starts a gateway whose config lives in `dir`, where its certificates already are.
    pub async fn start_in(dir: tempfile::TempDir, yaml: &str) -> Gateway {
        let text = yaml.replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, &text).unwrap();
        let loaded = match gateway::config::load(&path) {
            Ok(l) => l,
            Err(e) => panic!("test config is invalid: {e}\n{text}"),
        };
        let running = gateway::runtime::start(loaded, path).await.unwrap();
        let addr = running.listeners[0].1;
        Gateway {
            running: Some(running),
            addr,
            dir,
        }
    }

    /// The gateway's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.running.as_ref().unwrap().metrics_text()
    }
}

impl Gateway {
    /// Starts a gateway from a configuration that was already loaded from `path` (in
    /// `dir`), for tests that change files between validation and start.
    pub async fn start_loaded(
        dir: tempfile::TempDir,
        path: PathBuf,
        loaded: gateway::config::Loaded,
    ) -> Gateway {
        let running = gateway::runtime::start(loaded, path).await.unwrap();
        let addr = running.listeners[0].1;
        Gateway {
            running: Some(running),
            addr,
            dir,
        }
    }
}

/// A GET with a bearer token on a fresh HTTP/1.1 connection.
pub async fn get_with_token(addr: SocketAddr, path: &str, token: &str) -> Got {
    H1::connect(addr)
        .await
        .send(
            Request::get(path)
                .header("host", "admin")
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap(),
        )
        .await
}

impl Gateway {
    /// The value of one series in `/metrics` (`name{labels}` exactly as exposed), if any.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics_text().lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }
}

// ---- traffic features: clients from other loopback addresses, reloads with new text ----

impl H1 {
    /// An HTTP/1.1 connection to `addr` from the loopback address `from` (any 127.x.y.z
    /// works on Linux), so tests can be several clients by IP.
    pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> H1 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        H1::over(socket.connect(addr).await.unwrap()).await
    }
}

impl Gateway {
    /// Writes new configuration text (`{dir}` is the gateway's folder) and reloads it,
    /// as SIGHUP does: the new generation, or every reason it failed.
    pub async fn reload_with(&self, yaml: &str) -> Result<u64, Vec<String>> {
        let text = yaml.replace("{dir}", &self.dir.path().display().to_string());
        std::fs::write(self.dir.path().join("gateway.yaml"), text).unwrap();
        self.running.as_ref().unwrap().reload().await
    }
}
