//! `gateway demo`: three built-in upstreams and an example configuration in front of
//! them, so the whole request flow can be tried with curl and nothing else.

use crate::runtime::{start, Running, StartError};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long the demo's `/slow` upstream takes: longer than the route's 1s timeout.
const SLOW: Duration = Duration::from_secs(3);

/// Why the demo could not start. Each message says what happened once: the source is
/// either in the message or behind `source()`, never both (`{:#}` prints the chain).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a demo upstream")]
    Upstream(#[source] std::io::Error),
    /// The port is taken; the message says how to choose another.
    #[error("port {port} on 127.0.0.1 is already in use; choose another with `gateway demo {flag} PORT`")]
    PortInUse { port: u16, flag: &'static str },
    #[error("cannot use port {port} on 127.0.0.1")]
    Port {
        port: u16,
        #[source]
        error: std::io::Error,
    },
    #[error("the demo configuration is invalid")]
    Config(#[source] crate::config::Invalid),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Fails early, with a hint, when a port the demo wants is taken (the bind error alone
/// does not say which flag changes it).
fn check_port(port: u16, flag: &'static str) -> Result<(), DemoError> {
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(DemoError::PortInUse { port, flag })
        }
        Err(error) => Err(DemoError::Port { port, error }),
    }
}

/// The demo's configuration for upstreams at `ups` and the gateway on `port` (admin on
/// `admin_port`). Also the source of `examples/quickstart.yaml`'s shape.
pub fn config(ups: [SocketAddr; 3], port: u16, admin_port: u16) -> String {
    format!(
        r#"version: 1
workers: 2
admin:
  address: 127.0.0.1:{admin_port}
accessLog:
  path: stdout
listeners:
  - name: public
    address: 127.0.0.1:{port}
routes:
  - name: slow
    match: {{ pathPrefix: /slow }}
    cluster: web
    timeouts: {{ request: 1s }}
  - name: api
    match: {{ host: api.localhost, pathPrefix: / }}
    cluster: api
  - name: web
    match: {{ pathPrefix: / }}
    cluster: web
clusters:
  - name: web
    endpoints:
      - {{ address: "{a}", weight: 3 }}
      - {{ address: "{b}", weight: 1 }}
      - {{ address: "{c}", weight: 1 }}
    timeouts: {{ connect: 1s, read: 10s }}
  - name: api
    endpoints:
      - {{ address: "{c}" }}
"#,
        a = ups[0],
        b = ups[1],
        c = ups[2],
    )
}

async fn upstream(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    if req.uri().path().starts_with("/slow") {
                        tokio::time::sleep(SLOW).await;
                    }
                    let body = format!(
                        "hello from {name}: {} {} (host {})\n",
                        req.method(),
                        req.uri(),
                        req.headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("-")
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Starts the upstreams and the gateway, and prints what to try.
pub async fn run(port: u16, admin_port: u16) -> Result<Running, DemoError> {
    check_port(port, "--port")?;
    check_port(admin_port, "--admin-port")?;
    let ups = [
        upstream("upstream-a").await.map_err(DemoError::Upstream)?,
        upstream("upstream-b").await.map_err(DemoError::Upstream)?,
        upstream("upstream-c").await.map_err(DemoError::Upstream)?,
    ];
    let text = config(ups, port, admin_port);
    let loaded =
        crate::config::load_str(Path::new("demo.yaml"), &text).map_err(DemoError::Config)?;
    let running = start(loaded, "demo.yaml".into()).await?;
    let gw = running.addr("public").map_or(port, |a| a.port());
    let admin = running.admin.map_or(admin_port, |a| a.port());
    eprintln!(
        r#"
gateway demo is running. The configuration it uses:

{text}
Try, in this order:
  for i in 1 2 3 4 5; do curl -s http://127.0.0.1:{gw}/; done   # cluster "web", weights 3:1:1, smooth WRR: a b a c a
  curl -i -H 'Host: api.localhost' http://127.0.0.1:{gw}/users  # host route "api" → upstream-c
  curl -i http://127.0.0.1:{gw}/slow              # route timeout 1s, upstream takes 3s → 504 JSON
  curl -i --path-as-is 'http://127.0.0.1:{gw}/a/../b?q=1'   # the gateway normalises the path to /b before routing
  curl -s http://127.0.0.1:{admin}/status         # admin: config, routes, clusters

Access-log lines appear below, one JSON object per request. Ctrl-C drains and exits.
"#
    );
    Ok(running)
}
