//! Header rules through the real server: `set` replaces, `add` appends, `remove` deletes,
//! in that order (remove, set, add), applied after the gateway's own forwarding headers,
//! on HTTP/1.1 and HTTP/2 alike, to what goes upstream and to what comes back — the
//! gateway's own answers for the route (a 502) included.
#![allow(clippy::unwrap_used)]

mod support;

use http::Request;
use support::*;

async fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start("up").await;
    let refused = closed_port().await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - name: api
    match: {{ pathPrefix: /api }}
    cluster: up
    headers:
      request:
        set: {{ x-env: prod }}
        add: {{ X-Tag: gateway }}
        remove: [x-debug, x-forwarded-for]
      response: &secure
        set: {{ strict-transport-security: "max-age=63072000" }}
        add: {{ x-served-by: gateway }}
        remove: [x-upstream]
  - name: dead
    match: {{ pathPrefix: /dead }}
    cluster: dead
    headers: {{ response: *secure }}
  - {{ name: plain, cluster: up }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{}" }}] }}
  - {{ name: dead, endpoints: [{{ address: "{refused}" }}] }}
"#,
        up.addr
    ))
    .await;
    (gw, up)
}

fn request(path: &str, h2: bool) -> Request<Body> {
    let b = if h2 {
        Request::get(format!("http://svc.test{path}"))
    } else {
        Request::get(path).header("host", "svc.test")
    };
    b.header("x-env", "dev")
        .header("x-env", "qa")
        .header("x-tag", "client")
        .header("x-debug", "1")
        .header("x-forwarded-for", "203.0.113.9")
        .body(empty())
        .unwrap()
}

fn values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

async fn check(gw: &Gateway, up: &Upstream, h2: bool) {
    let got = if h2 {
        H2::connect(gw.addr)
            .await
            .send(request("/api/x", true))
            .await
    } else {
        H1::connect(gw.addr)
            .await
            .send(request("/api/x", false))
            .await
    };
    assert_eq!(got.status, 200);
    let seen = up.last_seen();
    assert_eq!(
        values(&seen.headers, "x-env"),
        ["prod"],
        "set replaces every value"
    );
    assert_eq!(
        values(&seen.headers, "x-tag"),
        ["client", "gateway"],
        "add appends"
    );
    assert!(seen.headers.get("x-debug").is_none());
    // Removed after the gateway appended the client's address: the rules run last.
    assert!(seen.headers.get("x-forwarded-for").is_none());
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(seen.headers.get("x-request-id").is_some());
    // The response: the upstream's x-upstream is gone, ours are there.
    assert_eq!(
        got.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    assert_eq!(got.header("x-served-by"), Some("gateway"));
    assert_eq!(got.header("x-upstream"), None);
    assert_eq!(got.text(), "up");

    // A route without rules passes everything through.
    let got = if h2 {
        H2::connect(gw.addr)
            .await
            .send(request("/other", true))
            .await
    } else {
        H1::connect(gw.addr)
            .await
            .send(request("/other", false))
            .await
    };
    assert_eq!(got.header("x-upstream"), Some("up"));
    assert_eq!(got.header("strict-transport-security"), None);
    let seen = up.last_seen();
    assert_eq!(values(&seen.headers, "x-env"), ["dev", "qa"]);
    assert_eq!(
        values(&seen.headers, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_rules_apply_on_http1() {
    let (gw, up) = setup().await;
    check(&gw, &up, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_rules_apply_on_http2() {
    let (gw, up) = setup().await;
    check(&gw, &up, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_error_for_a_route_gets_the_routes_response_headers() {
    let (gw, _up) = setup().await;
    for h2 in [false, true] {
        let got = if h2 {
            H2::connect(gw.addr)
                .await
                .send(request("/dead", true))
                .await
        } else {
            H1::connect(gw.addr)
                .await
                .send(request("/dead", false))
                .await
        };
        assert_eq!(got.status, 502);
        assert_eq!(got.json()["error"]["code"], "upstream_unavailable");
        assert_eq!(
            got.header("strict-transport-security"),
            Some("max-age=63072000")
        );
        assert_eq!(got.header("x-served-by"), Some("gateway"));
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert!(got.header("x-request-id").is_some());
    }
}
