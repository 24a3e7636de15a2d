//! `rewrite.pathPrefix` and `rewrite.host` through the real server: the matched prefix is
//! replaced on segment boundaries without `//`, the query is kept, the upstream gets the
//! rewritten host while forwarding headers keep the client's, and the access log shows
//! both what the client asked for and what went upstream — from HTTP/1.1 and HTTP/2
//! clients, to HTTP/1.1 and HTTP/2 upstreams.
#![allow(clippy::unwrap_used)]

mod support;

use http::Request;
use support::*;

async fn setup() -> (Gateway, Upstream, Upstream) {
    let h1 = Upstream::start("h1").await;
    let h2 = Upstream::start_h2("h2").await;
    let gw = Gateway::start(&format!(
        r#"
accessLog: {{ path: "{{dir}}/access.log" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - name: api
    match: {{ pathPrefix: /api }}
    cluster: h1
    rewrite: {{ pathPrefix: /, host: api.internal }}
  - name: v1
    match: {{ pathPrefix: /v1/ }}
    cluster: h2
    rewrite: {{ pathPrefix: /v2, host: "svc.internal:8443" }}
  - name: base
    cluster: h1
    rewrite: {{ pathPrefix: /base/ }}
clusters:
  - {{ name: h1, endpoints: [{{ address: "{}" }}] }}
  - {{ name: h2, protocol: http2, endpoints: [{{ address: "{}" }}] }}
"#,
        h1.addr, h2.addr
    ))
    .await;
    (gw, h1, h2)
}

/// (client path, upstream, what the upstream must see as its request target)
const CASES: &[(&str, &str, &str)] = &[
    ("/api/users?q=1&r", "h1", "/users?q=1&r"),
    ("/api", "h1", "/"),
    ("/api/", "h1", "/"),
    ("/api/a/../b", "h1", "/b"),
    ("/api//x", "h1", "//x"),
    ("/api/%2F%7e", "h1", "/%2F~"),
    (
        "/v1/items/7?x=y",
        "h2",
        "http://svc.internal:8443/v2/items/7?x=y",
    ),
    ("/v1/", "h2", "http://svc.internal:8443/v2/"),
    ("/apix/y", "h1", "/base/apix/y"),
    ("/", "h1", "/base/"),
];

fn get(path: &str, h2: bool) -> Request<Body> {
    if h2 {
        Request::get(format!("http://client.test{path}"))
    } else {
        Request::get(path).header("host", "client.test")
    }
    .body(empty())
    .unwrap()
}

fn check(up: &Upstream, want: &str, path: &str) {
    let seen = up.last_seen();
    assert_eq!(seen.uri, want, "{path}");
    if up.name == "h1" {
        let api_route = path == "/api" || path.starts_with("/api/");
        let host = if api_route {
            "api.internal"
        } else {
            "client.test"
        };
        assert_eq!(seen.headers["host"], host, "{path}");
    }
    assert_eq!(seen.headers["x-forwarded-host"], "client.test", "{path}");
    assert!(
        seen.headers["forwarded"]
            .to_str()
            .unwrap()
            .contains("host=\"client.test\""),
        "{path}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_get_rewritten_paths_and_hosts_upstream() {
    let (gw, h1, h2) = setup().await;
    let mut c = H1::connect(gw.addr).await;
    for (path, to, want) in CASES {
        let got = c.send(get(path, false)).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.header("x-upstream"), Some(*to), "{path}");
        check(if *to == "h1" { &h1 } else { &h2 }, want, path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_rewritten_paths_and_hosts_upstream() {
    let (gw, h1, h2) = setup().await;
    let mut c = H2::connect(gw.addr).await;
    for (path, to, want) in CASES {
        let got = c.send(get(path, true)).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.header("x-upstream"), Some(*to), "{path}");
        check(if *to == "h1" { &h1 } else { &h2 }, want, path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_shows_the_clients_path_and_what_went_upstream() {
    let (gw, _h1, _h2) = setup().await;
    let mut c = H1::connect(gw.addr).await;
    assert_eq!(c.send(get("/api/users?q=1", false)).await.status, 200);
    assert_eq!(c.send(get("/v1/a", false)).await.status, 200);
    let log = gw.access_log(2).await;
    assert_eq!(log[0]["path"], "/api/users?q=1");
    assert_eq!(log[0]["upstreamPath"], "/users?q=1");
    assert_eq!(log[0]["route"], "api");
    assert_eq!(log[1]["path"], "/v1/a");
    assert_eq!(log[1]["upstreamPath"], "/v2/a");
    // A request that never went upstream has no upstream path.
    let mut c = H1::connect(gw.addr).await;
    let got = c
        .send(
            Request::get("/api/%00")
                .header("host", "client.test")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 400);
    let log = gw.access_log(3).await;
    assert_eq!(log[2]["upstreamPath"], serde_json::Value::Null);
}
