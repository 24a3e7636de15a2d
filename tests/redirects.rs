//! `redirect` and `directResponse` through the real server: routes that answer by
//! themselves, on HTTP/1.1 and HTTP/2, in a configuration with no cluster at all; the
//! `Location` is absolute and built from the request; response header rules apply to
//! these answers too (security headers on a 404).
#![allow(clippy::unwrap_used)]

mod support;

use http::{Method, Request};
use support::*;

const YAML: &str = r#"
accessLog: { path: "{dir}/access.log" }
listeners: [{ name: plain, address: "127.0.0.1:0" }]
routes:
  - name: healthz
    match: { pathPrefix: /healthz }
    directResponse: { status: 200, body: "ok\n" }
  - name: gone
    match: { pathPrefix: /gone }
    directResponse: { status: 404, body: '{"gone":true}', contentType: application/json }
    headers: { response: { set: { x-frame-options: DENY, strict-transport-security: "max-age=600" } } }
  - name: empty
    match: { pathPrefix: /empty }
    directResponse: { status: 204 }
  - name: moved
    match: { pathPrefix: /old }
    redirect: { pathPrefix: /new/, code: 301 }
  - name: landing
    match: { pathPrefix: /promo }
    redirect: { host: www.example.com, path: /landing, code: 302 }
  - name: to-https
    redirect: { scheme: https, code: 308 }
    headers: { response: { add: { x-redirected-by: gateway } } }
"#;

fn request(method: Method, host: &str, path: &str, h2: bool) -> Request<Body> {
    let b = Request::builder().method(method);
    let b = if h2 {
        b.uri(format!("http://{host}{path}"))
    } else {
        b.uri(path).header("host", host)
    };
    b.body(empty()).unwrap()
}

async fn send(gw: &Gateway, method: Method, host: &str, path: &str, h2: bool) -> Got {
    let req = request(method, host, path, h2);
    if h2 {
        H2::connect(gw.addr).await.send(req).await
    } else {
        H1::connect(gw.addr).await.send(req).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_build_an_absolute_location_from_the_request() {
    let gw = Gateway::start(YAML).await;
    for h2 in [false, true] {
        let got = send(&gw, Method::GET, "example.com:8080", "/a/b?q=1&r", h2).await;
        assert_eq!(got.status, 308, "h2 {h2}");
        assert_eq!(
            got.header("location"),
            Some("https://example.com/a/b?q=1&r"),
            "a new scheme drops the plaintext port"
        );
        assert_eq!(got.header("x-redirected-by"), Some("gateway"));
        assert!(got.body.is_empty());
        assert!(got.header("x-request-id").is_some());

        let got = send(&gw, Method::POST, "shop.test:8080", "/old/items/7?x=1", h2).await;
        assert_eq!(got.status, 301);
        assert_eq!(
            got.header("location"),
            Some("http://shop.test:8080/new/items/7?x=1"),
            "same scheme and host: the port stays"
        );
        let got = send(&gw, Method::GET, "shop.test", "/old", h2).await;
        assert_eq!(got.header("location"), Some("http://shop.test/new/"));

        let got = send(&gw, Method::GET, "shop.test:8080", "/promo/x?utm=1", h2).await;
        assert_eq!(got.status, 302);
        assert_eq!(
            got.header("location"),
            Some("http://www.example.com/landing?utm=1")
        );
        // The path is normalised first, as for every route.
        let got = send(&gw, Method::GET, "shop.test", "/old/a/../b", h2).await;
        assert_eq!(got.header("location"), Some("http://shop.test/new/b"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_would_corrupt_the_location_is_refused() {
    let gw = Gateway::start(YAML).await;
    let mut c = H1::connect(gw.addr).await;
    let got = c
        .send(request(Method::GET, "evil.test/phish", "/x", false))
        .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["error"]["code"], "bad_request");
    assert_eq!(got.header("location"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses_answer_with_their_status_body_and_content_type() {
    let gw = Gateway::start(YAML).await;
    for h2 in [false, true] {
        let got = send(&gw, Method::GET, "svc.test", "/healthz", h2).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "ok\n");
        assert_eq!(
            got.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(got.header("content-length"), Some("3"));

        let got = send(&gw, Method::HEAD, "svc.test", "/healthz", h2).await;
        assert_eq!(got.status, 200);
        assert!(got.body.is_empty(), "HEAD has no body");

        // Security headers on a 404, from the route's response rules.
        let got = send(&gw, Method::GET, "svc.test", "/gone/page", h2).await;
        assert_eq!(got.status, 404);
        assert_eq!(got.json()["gone"], true);
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(got.header("x-frame-options"), Some("DENY"));
        assert_eq!(got.header("strict-transport-security"), Some("max-age=600"));

        let got = send(&gw, Method::DELETE, "svc.test", "/empty", h2).await;
        assert_eq!(got.status, 204);
        assert_eq!(got.header("content-type"), None);
        assert!(got.body.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_their_own_are_logged_and_counted_without_a_cluster() {
    let gw = Gateway::start(YAML).await;
    let mut c = H1::connect(gw.addr).await;
    assert_eq!(c.get("svc.test", "/healthz").await.status, 200);
    assert_eq!(c.get("svc.test", "/x").await.status, 308);
    let log = gw.access_log(2).await;
    for (l, route, status) in [(&log[0], "healthz", 200), (&log[1], "to-https", 308)] {
        assert_eq!(l["route"], route);
        assert_eq!(l["status"], status);
        assert_eq!(l["cluster"], serde_json::Value::Null);
        assert_eq!(l["upstream"], serde_json::Value::Null);
        assert_eq!(l["upstreamPath"], serde_json::Value::Null);
        assert_eq!(l["error"], serde_json::Value::Null);
    }
    assert_eq!(
        gw.metric(
            "gateway_requests_total{listener=\"plain\",route=\"to-https\",cluster=\"\",code=\"308\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_get_the_gateways_own_answers_without_a_body_on_http2() {
    let gw = Gateway::start(
        "listeners: [{ name: plain, address: \"127.0.0.1:0\" }]\n\
         routes: [{ name: h, match: { host: h.test }, directResponse: { status: 200, body: \"hello\" } }]\n",
    )
    .await;
    let mut c = H2::connect(gw.addr).await;
    let got = c.send(request(Method::HEAD, "h.test", "/", true)).await;
    assert_eq!(
        (got.status.as_u16(), got.header("content-length")),
        (200, Some("5"))
    );
    assert!(got.body.is_empty());
    // No route: the JSON envelope's length, no body.
    let got = c.send(request(Method::HEAD, "other.test", "/", true)).await;
    assert_eq!(got.status, 404);
    assert!(got.body.is_empty());
    assert!(got.header("content-length").is_some());
    // The connection is still good.
    let got = c.send(request(Method::GET, "h.test", "/", true)).await;
    assert_eq!(got.text(), "hello");
}

#[test]
fn the_https_redirect_example_redirects_plaintext_and_serves_tls() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/https-redirect.yaml");
    let loaded = gateway::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = &loaded.config;
    let https = c.listeners.iter().find(|l| l.tls.is_some()).unwrap();
    let plain = c.listeners.iter().find(|l| l.tls.is_none()).unwrap();
    let redirect = c
        .routes
        .iter()
        .find_map(|r| match &r.action {
            gateway::config::model::RouteAction::Redirect(d) => Some((r, d)),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        redirect.0.listeners.as_deref(),
        Some(&[plain.name.clone()][..])
    );
    assert_eq!(redirect.1.scheme.as_deref(), Some("https"));
    assert_eq!(redirect.1.port, Some(https.address.port()));
    assert_eq!(redirect.1.code, 308);
}
