//! The soak's upstream nodes, behind the gateway: each serves HTTP/1.1 and h2c on one port
//! (its name for any GET, a body echo at `/echo`, a WebSocket echo at `/ws`, the gRPC echo
//! service under `/soak.Echo/`) and a TCP echo on another (for the L4 listener). The
//! victim node remembers the request ids (and L4 session ids) it received in each life,
//! and can be killed (both ports closed, every connection dropped at once) and restarted
//! on the same ports.

use crate::now;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Body = tonic::body::Body;

/// One kill of the victim: when it went down and came back, and the ids it had received
/// in the life the kill ended.
#[derive(Debug, Clone)]
pub struct Death {
    pub killed: f64,
    pub restarted: Option<f64>,
    pub ids: HashSet<String>,
}

pub struct Node {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    shared: Arc<Shared>,
    life: tokio::sync::Mutex<Option<Life>>,
    deaths: Mutex<Vec<Death>>,
}

struct Shared {
    name: &'static str,
    /// Ids received in the current life; None for a node that is never killed.
    lived: Option<Mutex<HashSet<String>>>,
}

impl Shared {
    fn saw(&self, id: &str) {
        if let Some(lived) = &self.lived {
            if let Ok(mut l) = lived.lock() {
                l.insert(id.to_string());
            }
        }
    }
}

struct Life {
    kill: watch::Sender<bool>,
    loops: Vec<JoinHandle<()>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

impl Node {
    /// Starts a node on two ports; `victim` nodes keep the ids they receive.
    pub async fn start(
        name: &'static str,
        http: SocketAddr,
        tcp: SocketAddr,
        victim: bool,
    ) -> std::io::Result<Arc<Node>> {
        let (hl, tl) = (bind(http)?, bind(tcp)?);
        let node = Node {
            http,
            tcp,
            shared: Arc::new(Shared {
                name,
                lived: victim.then(|| Mutex::new(HashSet::new())),
            }),
            life: tokio::sync::Mutex::new(None),
            deaths: Mutex::new(Vec::new()),
        };
        node.live(hl, tl).await;
        Ok(Arc::new(node))
    }

    async fn live(&self, http: TcpListener, tcp: TcpListener) {
        let (kill, rx) = watch::channel(false);
        let loops = vec![
            tokio::spawn(http_loop(http, self.shared.clone(), rx.clone())),
            tokio::spawn(tcp_loop(tcp, self.shared.clone(), rx)),
        ];
        *self.life.lock().await = Some(Life { kill, loops });
    }

    /// Kills the node: every connection is dropped and both ports refuse once this returns.
    pub async fn kill(&self) -> f64 {
        let Some(life) = self.life.lock().await.take() else {
            return now();
        };
        let at = now();
        let _ = life.kill.send(true);
        for l in life.loops {
            let _ = l.await;
        }
        if let Ok(mut d) = self.deaths.lock() {
            d.push(Death {
                killed: at,
                restarted: None,
                ids: HashSet::new(),
            });
        }
        at
    }

    /// Brings a killed node back on the same ports.
    pub async fn restart(&self) -> std::io::Result<f64> {
        let (hl, tl) = (bind(self.http)?, bind(self.tcp)?);
        self.close_death();
        let at = now();
        if let Ok(mut d) = self.deaths.lock() {
            if let Some(last) = d.last_mut() {
                last.restarted = Some(at);
            }
        }
        self.live(hl, tl).await;
        Ok(at)
    }

    /// Whatever the killed life received (stragglers included) belongs to its death: no
    /// request reaches a dead node, so the set is complete when the node comes back.
    fn close_death(&self) {
        let Some(lived) = &self.shared.lived else {
            return;
        };
        let ids = lived
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        if let Ok(mut d) = self.deaths.lock() {
            if let Some(last) = d.last_mut() {
                last.ids.extend(ids);
            }
        }
    }

    /// The kills so far (closing the last one if the node is still down).
    pub fn deaths(&self) -> Vec<Death> {
        if let Ok(life) = self.life.try_lock() {
            if life.is_none() {
                self.close_death();
            }
        }
        self.deaths.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

async fn http_loop(listener: TcpListener, shared: Arc<Shared>, kill: watch::Receiver<bool>) {
    let mut k = kill.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = k.wait_for(|dead| *dead) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (shared, mut k, k2) = (shared.clone(), kill.clone(), kill.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req, k2.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = k.wait_for(|dead| *dead) => {}
            }
        });
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Body::new(Full::new(b.into()))
}

async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    kill: watch::Receiver<bool>,
) -> Result<Response<Body>, Infallible> {
    if let Some(id) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        shared.saw(id);
    }
    let path = req.uri().path().to_string();
    let mut resp = if path.starts_with("/soak.Echo/") {
        crate::grpc::serve(req).await
    } else if path == "/ws" {
        websocket(&mut req, kill)
    } else if path == "/echo" {
        match req.into_body().collect().await {
            Ok(b) => Response::new(full(b.to_bytes())),
            Err(_) => {
                let mut r = Response::new(full("body read failed"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        }
    } else {
        Response::new(full(shared.name))
    };
    if let Ok(v) = shared.name.parse() {
        resp.headers_mut().insert("x-upstream", v);
    }
    Ok(resp)
}

/// Answers a WebSocket upgrade and echoes text and binary messages until the client
/// closes or the node is killed.
fn websocket(req: &mut Request<Incoming>, mut kill: watch::Receiver<bool>) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    let key = req.headers().get("sec-websocket-key").cloned();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        let echo = async {
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_text() || msg.is_binary() {
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    let _ = tx.close().await;
                    break;
                }
            }
        };
        tokio::select! {
            () = echo => {}
            _ = kill.wait_for(|dead| *dead) => {}
        }
    });
    let accept = key
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", http::HeaderValue::from_static("upgrade"));
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    if let Ok(v) = accept.parse() {
        h.insert("sec-websocket-accept", v);
    }
    r
}

async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>, kill: watch::Receiver<bool>) {
    let mut k = kill.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = k.wait_for(|dead| *dead) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (shared, mut k) = (shared.clone(), kill.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = tcp_session(stream, shared) => {}
                _ = k.wait_for(|dead| *dead) => {}
            }
        });
    }
}

/// The L4 peer: reads `id <session>\n`, answers `ok\n`, then echoes until EOF.
async fn tcp_session(mut s: TcpStream, shared: Arc<Shared>) {
    let _ = s.set_nodelay(true);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 200 {
        match s.read(&mut byte).await {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return,
        }
    }
    let Some(id) = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("id "))
    else {
        return;
    };
    shared.saw(id);
    if s.write_all(b"ok\n").await.is_err() {
        return;
    }
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}
