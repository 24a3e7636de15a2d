//! `rateLimit` through the real server: a token bucket per key (client IP, route, or a
//! header), 429 `rate_limited` with `retry-after` in whole seconds, RESOURCE_EXHAUSTED for
//! gRPC, the access log's `error` and `gateway_rate_limited_total`, on HTTP/1.1 and
//! HTTP/2; buckets survive a reload that keeps the route's limit, and start afresh when
//! it changes.
#![allow(clippy::unwrap_used)]

mod support;

use http::Request;
use std::net::IpAddr;
use support::*;

/// One token per 1,000 s: within a test, a bucket only empties.
fn config(up: &Upstream, limit: &str) -> String {
    format!(
        r#"
reload: {{ watch: false }}
accessLog: {{ path: "{{dir}}/access.log" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - name: limited
    match: {{ pathPrefix: /limited }}
    cluster: up
    rateLimit: {limit}
    headers: {{ response: {{ set: {{ x-limit-policy: strict }} }} }}
  - {{ name: open, cluster: up }}
clusters: [{{ name: up, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    )
}

fn get(path: &str, h2: bool, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = if h2 {
        Request::get(format!("http://svc.test{path}"))
    } else {
        Request::get(path).header("host", "svc.test")
    };
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(empty()).unwrap()
}

enum Client {
    H1(H1),
    H2(H2),
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, h2: bool) -> Client {
        if h2 {
            Client::H2(H2::connect(addr).await)
        } else {
            Client::H1(H1::connect(addr).await)
        }
    }

    async fn send(&mut self, req: Request<Body>) -> Got {
        match self {
            Client::H1(c) => c.send(req).await,
            Client::H2(c) => c.send(req).await,
        }
    }
}

fn retry_after(got: &Got) -> u64 {
    got.header("retry-after").unwrap().parse().unwrap()
}

async fn burst_then_429(h2: bool) {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(
        &up,
        "{ requestsPerSecond: 0.001, burst: 3, key: clientIp }",
    ))
    .await;
    let mut c = Client::connect(gw.addr, h2).await;
    for _ in 0..3 {
        assert_eq!(c.send(get("/limited/x", h2, &[])).await.status, 200);
    }
    let got = c.send(get("/limited/x", h2, &[])).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.json()["error"]["code"], "rate_limited");
    assert_eq!(got.json()["error"]["status"], 429);
    let secs = retry_after(&got);
    assert!((1..=1000).contains(&secs), "retry-after {secs}");
    assert_eq!(
        got.header("x-limit-policy"),
        Some("strict"),
        "the route's response headers"
    );
    // Other routes are not limited.
    assert_eq!(c.send(get("/other", h2, &[])).await.status, 200);
    assert_eq!(up.hits(), 4, "the refused request never went upstream");
    let log = gw.access_log(5).await;
    assert_eq!(log[3]["status"], 429);
    assert_eq!(log[3]["error"], "rate_limited");
    assert_eq!(log[3]["route"], "limited");
    assert_eq!(log[3]["upstream"], serde_json::Value::Null);
    assert_eq!(
        gw.metric("gateway_rate_limited_total{route=\"limited\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_its_burst_then_429_with_retry_after_on_http1() {
    burst_then_429(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_its_burst_then_429_with_retry_after_on_http2() {
    burst_then_429(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ips_have_buckets_of_their_own_and_a_route_key_shares_one() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(&up, "{ requestsPerSecond: 0.001, burst: 1 }")).await;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let mut c = H1::connect_from(gw.addr, ip(from)).await;
        assert_eq!(c.get("svc.test", "/limited").await.status, 200, "{from}");
        assert_eq!(c.get("svc.test", "/limited").await.status, 429, "{from}");
    }
    // A new connection from a known address is the same client.
    let mut c = H1::connect_from(gw.addr, ip("127.0.0.2")).await;
    assert_eq!(c.get("svc.test", "/limited").await.status, 429);

    let gw = Gateway::start(&config(
        &up,
        "{ requestsPerSecond: 0.001, burst: 2, key: route }",
    ))
    .await;
    let mut a = H1::connect_from(gw.addr, ip("127.0.0.4")).await;
    let mut b = H1::connect_from(gw.addr, ip("127.0.0.5")).await;
    assert_eq!(a.get("svc.test", "/limited").await.status, 200);
    assert_eq!(b.get("svc.test", "/limited").await.status, 200);
    assert_eq!(
        a.get("svc.test", "/limited").await.status,
        429,
        "one bucket for everyone"
    );
    assert_eq!(b.get("svc.test", "/limited").await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_limits_each_value_and_requests_without_it_share_a_bucket() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(
        &up,
        "{ requestsPerSecond: 0.001, burst: 1, key: \"header:X-Api-Key\" }",
    ))
    .await;
    let mut c = H2::connect(gw.addr).await;
    for key in ["alpha", "beta"] {
        let h = [("x-api-key", key)];
        assert_eq!(c.send(get("/limited", true, &h)).await.status, 200, "{key}");
        assert_eq!(c.send(get("/limited", true, &h)).await.status, 429, "{key}");
    }
    assert_eq!(c.send(get("/limited", true, &[])).await.status, 200);
    assert_eq!(
        c.send(get("/limited", true, &[])).await.status,
        429,
        "no header: one shared bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_over_the_limit_get_resource_exhausted() {
    let up = Upstream::start_h2("up").await;
    let gw = Gateway::start(&config(&up, "{ requestsPerSecond: 0.001, burst: 1 }")).await;
    let mut c = H2::connect(gw.addr).await;
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let _first = c.send(get("/limited/pkg.Svc/Call", true, &grpc)).await;
    let got = c.send(get("/limited/pkg.Svc/Call", true, &grpc)).await;
    assert_eq!(got.status, 200, "trailers-only, as gRPC clients expect");
    assert_eq!(got.header("grpc-status"), Some("8"));
    assert_eq!(got.header("grpc-message"), Some("rate_limited"));
    assert!(retry_after(&got) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_a_reload_that_keeps_the_limit_and_start_afresh_when_it_changes() {
    let up = Upstream::start("up").await;
    let limit = "{ requestsPerSecond: 0.001, burst: 1 }";
    let gw = Gateway::start(&config(&up, limit)).await;
    let mut c = H1::connect(gw.addr).await;
    assert_eq!(c.get("svc.test", "/limited").await.status, 200);
    assert_eq!(c.get("svc.test", "/limited").await.status, 429);
    // Something else changes (a new route); the limit stays, so does the empty bucket.
    let more = config(&up, limit).replace(
        "  - { name: open, cluster: up }",
        "  - { name: open, cluster: up }\n  - { name: extra, match: { pathPrefix: /extra }, cluster: up }",
    );
    assert_eq!(gw.reload_with(&more).await, Ok(2));
    assert_eq!(
        c.get("svc.test", "/extra").await.status,
        200,
        "new config live"
    );
    assert_eq!(c.get("svc.test", "/limited").await.status, 429);
    // A new burst is a new limit: fresh buckets.
    let changed = config(&up, "{ requestsPerSecond: 0.001, burst: 2 }");
    assert_eq!(gw.reload_with(&changed).await, Ok(3));
    assert_eq!(c.get("svc.test", "/limited").await.status, 200);
    assert_eq!(c.get("svc.test", "/limited").await.status, 200);
    assert_eq!(c.get("svc.test", "/limited").await.status, 429);
}
