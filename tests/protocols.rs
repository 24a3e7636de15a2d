#![allow(clippy::unwrap_used)]
//! Which protocol a connection gets to speak: `http2: false` on a plaintext listener, ALPN
//! on a TLS listener, and plain HTTP sent to a TLS port (answered in HTTP, as NGINX
//! does, rather than with a failed handshake).

mod support;

use http::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(5);

/// One GET over HTTP/2 with prior knowledge on `io`: the status, or why it failed.
async fn h2_get<IO>(io: IO, uri: &str) -> Result<(u16, Version), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let attempt = async {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(uri).body(empty()).unwrap();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        Ok((resp.status().as_u16(), resp.version()))
    };
    tokio::time::timeout(LIMIT, attempt)
        .await
        .unwrap_or_else(|_| Err("no answer and no close within the limit".into()))
}

fn plaintext_config(up: SocketAddr) -> String {
    format!(
        r#"listeners:
  - name: on
    address: 127.0.0.1:0
  - name: off
    address: 127.0.0.1:0
    http2: false
routes:
  - name: all
    cluster: web
clusters:
  - name: web
    endpoints: [{{ address: "{up}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_false_refuses_h2c_prior_knowledge_and_still_serves_http1() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&plaintext_config(up.addr)).await;
    let running = gw.running.as_ref().unwrap();
    let (on, off) = (running.addr("on").unwrap(), running.addr("off").unwrap());

    // The control: the default listener speaks h2c to a client with prior knowledge.
    let got = h2_get(TcpStream::connect(on).await.unwrap(), "http://x/").await;
    assert_eq!(got, Ok((200, Version::HTTP_2)));

    let hits = up.hits();
    let got = h2_get(TcpStream::connect(off).await.unwrap(), "http://x/").await;
    assert!(
        got.is_err(),
        "http2: false still served HTTP/2 with prior knowledge: {got:?}"
    );
    assert_eq!(up.hits(), hits, "the HTTP/2 request reached the upstream");

    let got = get(off, "x", "/").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "up");
}

struct Tls {
    gw: Gateway,
    ca: TestCa,
}

async fn tls_gateway(up: SocketAddr, alpn: &str) -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.leaf(dir.path(), "site", &["site.test"]);
    let yaml = format!(
        r#"accessLog: {{ path: access.log }}
listeners:
  - name: https
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert: site.pem, key: site.key }}]
      alpn: {alpn}
routes:
  - name: all
    cluster: web
clusters:
  - name: web
    endpoints: [{{ address: "{up}" }}]
"#
    );
    Tls {
        gw: Gateway::start_in(dir, &yaml).await,
        ca,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_speaks_only_the_protocol_alpn_chose() {
    let up = Upstream::start("up").await;

    // ALPN offers only http/1.1: a client that speaks HTTP/2 anyway is refused.
    let t = tls_gateway(up.addr, "[http/1.1]").await;
    let client = tls_client(&[b"http/1.1"], &[], Some(&t.ca));
    let io = tls_connect(t.gw.addr, Some("site.test"), client.clone())
        .await
        .unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let got = h2_get(io, "https://site.test/").await;
    assert!(
        got.is_err(),
        "HTTP/2 served where ALPN chose http/1.1: {got:?}"
    );
    let io = tls_connect(t.gw.addr, Some("site.test"), client)
        .await
        .unwrap();
    let got = H1::over(io).await.get("site.test", "/").await;
    assert_eq!(got.status, 200, "HTTP/1.1 is what ALPN chose");

    // ALPN chose h2: HTTP/1.1 bytes are refused, HTTP/2 is served.
    let t = tls_gateway(up.addr, "[h2, http/1.1]").await;
    let client = tls_client(&[b"h2"], &[], Some(&t.ca));
    let mut io = tls_connect(t.gw.addr, Some("site.test"), client.clone())
        .await
        .unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    io.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LIMIT, io.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was left open");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "HTTP/1.1 served where ALPN chose h2: {answer:?}"
    );
    let io = tls_connect(t.gw.addr, Some("site.test"), client)
        .await
        .unwrap();
    assert_eq!(
        h2_get(io, "https://site.test/").await,
        Ok((200, Version::HTTP_2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_sent_to_a_tls_port_gets_a_400_that_says_so_and_the_port_still_speaks_tls() {
    let up = Upstream::start("up").await;
    let t = tls_gateway(up.addr, "[h2, http/1.1]").await;
    let (text, closed) = raw(
        t.gw.addr,
        b"GET /plain HTTP/1.1\r\nHost: site.test\r\n\r\n",
        LIMIT,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert!(closed, "connection left open: {text:?}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["status"], 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("plain HTTP") && message.contains("https://"),
        "{message}"
    );
    assert_eq!(up.hits(), 0);

    let line = &t.gw.access_log(1).await[0];
    assert_eq!(line["path"], "/plain", "{line}");
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(line["error"], "plain_http_on_tls_port", "{line}");
    assert_eq!(line["tls"], serde_json::Value::Null, "{line}");

    let client = tls_client(&[b"http/1.1"], &[], Some(&t.ca));
    let io = tls_connect(t.gw.addr, Some("site.test"), client)
        .await
        .unwrap();
    let got = H1::over(io).await.get("site.test", "/").await;
    assert_eq!(got.status, 200);
    assert_eq!(
        t.gw.metric("gateway_tls_handshake_errors_total{listener=\"https\"}"),
        Some(0.0),
        "plain HTTP is answered, not counted as a failed handshake"
    );
}
