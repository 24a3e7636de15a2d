//! End-to-end behaviour of the L7 proxy through the real server with real upstreams.
#![allow(clippy::unwrap_used)]

mod support;

use http::Request;
use std::time::Duration;
use support::*;

fn one_cluster(ups: &[&Upstream], extra_route: &str, cluster_extra: &str) -> String {
    let eps: String = ups
        .iter()
        .map(|u| format!("      - {{ address: \"{}\" }}\n", u.addr))
        .collect();
    format!(
        r#"
accessLog: {{ path: "{{dir}}/access.log" }}
listeners:
  - name: public
    address: 127.0.0.1:0
routes:
{extra_route}
  - name: default
    cluster: c
clusters:
  - name: c
    endpoints:
{eps}{cluster_extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_5_1_1_give_the_exact_smooth_wrr_sequence_through_the_proxy() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c }}]
clusters:
  - name: c
    endpoints:
      - {{ address: "{}", weight: 5 }}
      - {{ address: "{}", weight: 1 }}
      - {{ address: "{}", weight: 1 }}
"#,
        a.addr, b.addr, c.addr
    ))
    .await;
    let mut client = H1::connect(gw.addr).await;
    let mut seq = Vec::new();
    for _ in 0..14 {
        seq.push(client.get("x", "/").await.text());
    }
    assert_eq!(seq.join(" "), "a a b a c a a a a b a c a a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_the_precedence_table() {
    let names = [
        "exact",
        "exact-v1",
        "wild",
        "wild-v1",
        "any",
        "any-v1",
        "any-v1-slash",
    ];
    let mut ups = Vec::new();
    for n in names {
        ups.push(Upstream::start(n).await);
    }
    let clusters: String = ups
        .iter()
        .map(|u| {
            format!(
                "  - {{ name: {}, endpoints: [{{ address: \"{}\" }}] }}\n",
                u.name, u.addr
            )
        })
        .collect();
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: any, cluster: any }}
  - {{ name: any-v1, match: {{ pathPrefix: /v1 }}, cluster: any-v1 }}
  - {{ name: any-v1-slash, match: {{ pathPrefix: /v1/ }}, cluster: any-v1-slash }}
  - {{ name: wild-v1, match: {{ host: "*.example.com", pathPrefix: /v1 }}, cluster: wild-v1 }}
  - {{ name: wild, match: {{ host: "*.example.com" }}, cluster: wild }}
  - {{ name: exact-v1, match: {{ host: api.example.com, pathPrefix: /v1 }}, cluster: exact-v1 }}
  - {{ name: exact, match: {{ host: api.example.com, pathPrefix: /exact }}, cluster: exact }}
  - {{ name: shadowed, match: {{ host: api.example.com, pathPrefix: /exact }}, cluster: any }}
clusters:
{clusters}"#
    ))
    .await;
    let table = [
        // (host, path, expected upstream)
        ("api.example.com", "/v1/users", "exact-v1"),
        ("API.Example.COM:8080", "/v1", "exact-v1"),
        ("api.example.com", "/exact/x", "exact"), // first of two equal routes wins
        ("api.example.com", "/v10", "wild"),      // no exact prefix → wildcard group
        ("www.example.com", "/v1/x", "wild-v1"),
        ("www.example.com", "/other", "wild"),
        ("a.b.example.com", "/v1/x", "any-v1-slash"), // wildcard covers one label only
        ("example.com", "/v1", "any-v1"),             // the bare domain is not *.example.com
        ("other.org", "/v1/", "any-v1-slash"),        // longest prefix: /v1/ beats /v1
        ("other.org", "/v10", "any"),                 // segment boundary: /v1 ≠ /v10
        ("other.org", "/", "any"),
        ("other.org", "/v1/../v1x", "any"), // normalised to /v1x
        ("other.org", "/x/%2e%2e/v1/a", "any-v1-slash"), // %2e%2e is a dot-segment
    ];
    let mut client = H1::connect(gw.addr).await;
    for (host, path, want) in table {
        let got = client.get(host, path).await;
        assert_eq!(got.text(), want, "host {host} path {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404_json_envelope_and_the_path_is_normalised_before_forwarding() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: api, match: {{ pathPrefix: /api }}, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    let got = get(gw.addr, "h", "/nothing").await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("content-type"), Some("application/json"));
    let j = got.json();
    assert_eq!(j["error"]["status"], 404);
    assert_eq!(j["error"]["code"], "no_route");
    assert_eq!(j["error"]["requestId"].as_str(), got.header("x-request-id"));

    let got = get(gw.addr, "h", "/x/../api/%7Euser/./a?q=%2e%2e&z=1").await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last_seen().uri, "/api/~user/a?q=%2e%2e&z=1");
    let got = get(gw.addr, "h", "/api/a%2Fb").await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last_seen().uri, "/api/a%2Fb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_gives_502_and_a_slow_upstream_gives_504_within_the_route_timeout() {
    let dead = closed_port().await;
    let slow = Upstream::start("slow").await;
    let gw = Gateway::start(&format!(
        r#"
accessLog: {{ path: "{{dir}}/access.log" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: dead, match: {{ pathPrefix: /dead }}, cluster: dead }}
  - {{ name: slow, match: {{ pathPrefix: /sleep }}, cluster: slow, timeouts: {{ request: 300ms }} }}
clusters:
  - {{ name: dead, endpoints: [{{ address: "{dead}" }}] }}
  - {{ name: slow, endpoints: [{{ address: "{}" }}] }}
"#,
        slow.addr
    ))
    .await;
    let got = get(gw.addr, "h", "/dead").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["error"]["code"], "upstream_unavailable");

    let started = std::time::Instant::now();
    let got = get(gw.addr, "h", "/sleep/5000").await;
    assert_eq!(got.status, 504);
    assert_eq!(got.json()["error"]["code"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the 504 came from the route timeout, not the upstream"
    );

    let logs = gw.access_log(2).await;
    let errors: Vec<&str> = logs
        .iter()
        .map(|l| l["error"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(errors[0], "upstream_connect_error");
    assert_eq!(errors[1], "request_timeout");
    assert_eq!(logs[0]["status"], 502);
    assert_eq!(logs[1]["status"], 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_read_timeout_waiting_for_headers_gives_504() {
    let slow = Upstream::start("slow").await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c, timeouts: {{ read: 200ms }} }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        slow.addr
    ))
    .await;
    let got = get(gw.addr, "h", "/sleep/3000").await;
    assert_eq!(got.status, 504);
    assert_eq!(got.json()["error"]["code"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_moves_to_a_live_endpoint_so_no_request_fails() {
    let live = Upstream::start("live").await;
    let dead = closed_port().await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c }}]
clusters:
  - name: c
    endpoints: [{{ address: "{dead}" }}, {{ address: "{}" }}]
"#,
        live.addr
    ))
    .await;
    let mut client = H1::connect(gw.addr).await;
    for i in 0..10 {
        let got = client.get("h", "/").await;
        assert_eq!(got.status, 200, "request {i}");
        assert_eq!(got.text(), "live");
    }
    // A POST with a body is retried too when nothing reached the upstream (connect refused).
    for _ in 0..4 {
        let got = client
            .send(
                Request::post("/collect")
                    .header("host", "h")
                    .body(full("payload"))
                    .unwrap(),
            )
            .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "7");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_attempts_zero_means_a_dead_endpoint_fails_the_request() {
    let live = Upstream::start("live").await;
    let dead = closed_port().await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c, retry: {{ attempts: 0 }} }}]
clusters:
  - name: c
    endpoints: [{{ address: "{dead}" }}, {{ address: "{}" }}]
"#,
        live.addr
    ))
    .await;
    let mut client = H1::connect(gw.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.get("h", "/").await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 502, 502]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways_and_forwarding_headers_set() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&one_cluster(&[&up], "", "")).await;
    let mut client = H1::connect(gw.addr).await;
    let req = Request::get("/x?y=1")
        .header("host", "shop.example.com")
        .header("connection", "keep-alive, x-drop-me, x-forwarded-for")
        .header("x-drop-me", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-keep", "yes")
        .body(empty())
        .unwrap();
    let got = client.send(req).await;
    assert_eq!(got.status, 200);
    let seen = up.last_seen();
    let h = &seen.headers;
    for gone in [
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(h["x-keep"], "yes");
    // x-forwarded-for was named in Connection, so the client's value is dropped before the
    // gateway appends the real peer.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;host=\"shop.example.com\";proto=http"
    );
    assert_eq!(h["host"], "shop.example.com");
    assert_eq!(
        h["x-request-id"].to_str().unwrap(),
        got.header("x-request-id").unwrap()
    );

    // An existing x-forwarded-for is appended to; a valid client request id is kept.
    let req = Request::get("/")
        .header("host", "h")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "client-id-123")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let got = client.send(req).await;
    let h = up.last_seen().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-request-id"], "client-id-123");
    assert_eq!(h["te"], "trailers");
    assert_eq!(got.header("x-request-id"), Some("client-id-123"));

    // An invalid request id is replaced.
    let got = client
        .send(
            Request::get("/")
                .header("host", "h")
                .header("x-request-id", "bad id with spaces")
                .body(empty())
                .unwrap(),
        )
        .await;
    let id = got.header("x-request-id").unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(up.last_seen().headers["x-request-id"].to_str().unwrap(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_headers_are_stripped() {
    // A raw upstream that sends hop-by-hop headers in its response.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=9\r\nX-Fine: 1\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{addr}" }}] }}]
"#
    ))
    .await;
    let got = get(gw.addr, "h", "/").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "ok");
    assert!(got.header("x-secret").is_none());
    assert!(got.header("keep-alive").is_none());
    assert_eq!(got.header("x-fine"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_with_trailers() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&one_cluster(&[&up], "", "")).await;
    // 8 MiB up and back through /echo.
    let payload = vec![7u8; 8 << 20];
    let mut client = H1::connect(gw.addr).await;
    let got = client
        .send(
            Request::post("/echo")
                .header("host", "h")
                .body(full(payload.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), payload.len());
    assert!(got.body.iter().all(|&b| b == 7));

    // Trailers survive over HTTP/2 end to end (HTTP/1.1 clients get them only if chunked;
    // h2 always carries them).
    let mut h2 = H2::connect(gw.addr).await;
    let got = h2
        .send(
            Request::get(format!("http://{}/trailers", gw.addr))
                .header("te", "trailers")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.text(), "part one;part two");
    assert_eq!(
        got.trailers
            .as_ref()
            .and_then(|t| t.get("x-trailer"))
            .map(|v| v.as_bytes()),
        Some(&b"done"[..])
    );

    // A large download streams.
    let got = client.get("h", "/big/3000000").await;
    assert_eq!(got.body.len(), 3_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_reach_http1_and_http2_upstreams() {
    let h1 = Upstream::start("h1-up").await;
    let h2up = Upstream::start_h2("h2-up").await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: a, match: {{ pathPrefix: /one }}, cluster: one }}
  - {{ name: b, match: {{ pathPrefix: /two }}, cluster: two }}
clusters:
  - {{ name: one, endpoints: [{{ address: "{}" }}] }}
  - {{ name: two, protocol: http2, endpoints: [{{ address: "{}" }}] }}
"#,
        h1.addr, h2up.addr
    ))
    .await;
    let mut c = H2::connect(gw.addr).await;
    let got = c
        .send(Request::get("http://svc.local/one").body(empty()).unwrap())
        .await;
    assert_eq!(got.text(), "h1-up");
    assert_eq!(h1.last_seen().headers["host"], "svc.local");
    let got = c
        .send(Request::get("http://svc.local/two").body(empty()).unwrap())
        .await;
    assert_eq!(got.text(), "h2-up");
    // HTTP/1.1 client to an HTTP/2 upstream, many requests multiplexed on one connection.
    let mut c1 = H1::connect(gw.addr).await;
    for _ in 0..5 {
        assert_eq!(c1.get("svc.local", "/two").await.text(), "h2-up");
    }
    assert!(h2up.last_seen().uri.ends_with("/two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start("ws").await;
    let gw = Gateway::start(&one_cluster(&[&up], "", "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let msg = ws.next().await.unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
    let seen = up.last_seen();
    assert_eq!(seen.headers["upgrade"], "websocket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_every_field_per_request() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&one_cluster(&[&up], "", "")).await;
    let mut c = H1::connect(gw.addr).await;
    let got = c
        .send(
            Request::post("/collect?a=1")
                .header("host", "logged.example")
                .header("user-agent", "test-agent/1")
                .body(full("12345"))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 200);
    let logs = gw.access_log(1).await;
    let l = &logs[0];
    let raw = &gw.access_log_lines(1).await[0];
    let order = [
        "ts",
        "requestId",
        "clientAddr",
        "listener",
        "tls",
        "sni",
        "protocol",
        "method",
        "host",
        "path",
        "upstreamPath",
        "status",
        "route",
        "cluster",
        "upstream",
        "bytesIn",
        "bytesOut",
        "durationMs",
        "upstreamMs",
        "error",
        "userAgent",
    ];
    assert_eq!(l.as_object().unwrap().len(), order.len());
    let positions: Vec<usize> = order
        .iter()
        .map(|k| {
            raw.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} missing in {raw}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "fields in spec order: {raw}"
    );
    assert!(l["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(l["requestId"].as_str(), got.header("x-request-id"));
    assert!(l["clientAddr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(l["listener"], "public");
    assert!(l["tls"].is_null());
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["method"], "POST");
    assert_eq!(l["host"], "logged.example");
    assert_eq!(l["path"], "/collect?a=1");
    assert_eq!(l["upstreamPath"], "/collect?a=1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["route"], "default");
    assert_eq!(l["cluster"], "c");
    assert_eq!(l["upstream"], up.addr.to_string());
    assert_eq!(l["bytesIn"], 5);
    assert_eq!(l["bytesOut"], 1);
    assert!(l["durationMs"].as_f64().unwrap() >= l["upstreamMs"].as_f64().unwrap());
    assert!(l["error"].is_null());
    assert_eq!(l["userAgent"], "test-agent/1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_fields_and_sampling_are_honoured() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"
accessLog:
  path: "{{dir}}/access.log"
  sampleRate: 0.0
  alwaysLogErrors: true
  fields: [status, error, route]
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, match: {{ pathPrefix: /ok }}, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    let mut c = H1::connect(gw.addr).await;
    for _ in 0..5 {
        assert_eq!(c.get("h", "/ok").await.status, 200);
    }
    assert_eq!(c.get("h", "/missing").await.status, 404);
    let lines = gw.access_log_lines(1).await;
    // Only the error was logged (sampleRate 0), with just the chosen fields in order.
    assert_eq!(
        lines,
        vec![r#"{"status":404,"error":"no_route","route":null}"#.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&one_cluster(&[&up], "", "")).await;
    let addr = gw.addr;
    let inflight = tokio::spawn(async move { get(addr, "h", "/sleep/500").await });
    eventually(Duration::from_secs(5), || (up.hits() >= 1).then_some(())).await;
    let drained = gw.shutdown(Duration::from_secs(5)).await;
    let got = inflight.await.unwrap();
    assert_eq!(
        got.status, 200,
        "the in-flight request finished during the drain"
    );
    assert!(drained);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_read_timeout_counts_from_the_end_of_a_slow_upload() {
    use http_body_util::{BodyExt, StreamBody};
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c, timeouts: {{ read: 200ms }} }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    // Six chunks, 100 ms apart: the upload takes three times the read timeout.
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        if i == 6 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
                bytes::Bytes::from_static(b"0123456789"),
            )),
            i + 1,
        ))
    });
    let body = StreamBody::new(chunks).boxed();
    let mut c = H1::connect(gw.addr).await;
    let got = c
        .send(
            Request::post("/collect")
                .header("host", "h")
                .body(body)
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "60");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_asking_for_trailers_get_them() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&one_cluster(&[&up], "", "")).await;
    let mut c = H1::connect(gw.addr).await;
    let got = c
        .send(
            Request::get("/trailers")
                .header("host", "h")
                .header("te", "trailers")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.text(), "part one;part two");
    let t = got.trailers.expect("trailers arrived");
    assert_eq!(t["x-trailer"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_by_the_write_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    timeouts: {{ write: 300ms }}
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    let total = 200_000_000usize;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("GET /big/{total} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The stimulus itself: a client that does not read while the gateway has plenty to
    // send, for well over the write timeout.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    assert!(closed, "the gateway closed the connection");
    assert!(
        got < total,
        "only what was buffered before the stall arrived ({got} bytes)"
    );
}
