//! Route conditions through the real server (spec "routes": `match.methods` and
//! `match.headers`): the longest prefix whose conditions hold wins, more conditions win on
//! equal prefixes, and a request no route of a prefix holds for falls through to a
//! shorter one — the same on HTTP/1.1 and HTTP/2.
#![allow(clippy::unwrap_used)]

mod support;

use http::{Method, Request};
use support::*;

async fn setup() -> (Gateway, Vec<Upstream>) {
    let names = ["canary", "reads", "writes", "beta", "default"];
    let mut ups = Vec::new();
    for n in names {
        ups.push(Upstream::start(n).await);
    }
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - name: reads
    match: {{ pathPrefix: /api, methods: [GET, HEAD] }}
    cluster: reads
  - name: canary
    match:
      pathPrefix: /api
      methods: [GET]
      headers: [{{ name: X-Canary, value: "1" }}]
    cluster: canary
  - name: writes
    match: {{ pathPrefix: /api, methods: [POST] }}
    cluster: writes
  - name: beta
    match: {{ pathPrefix: /api/v2, headers: [{{ name: x-beta, present: true }}] }}
    cluster: beta
  - {{ name: default, cluster: default }}
clusters:
  - {{ name: canary, endpoints: [{{ address: "{}" }}] }}
  - {{ name: reads, endpoints: [{{ address: "{}" }}] }}
  - {{ name: writes, endpoints: [{{ address: "{}" }}] }}
  - {{ name: beta, endpoints: [{{ address: "{}" }}] }}
  - {{ name: default, endpoints: [{{ address: "{}" }}] }}
"#,
        ups[0].addr, ups[1].addr, ups[2].addr, ups[3].addr, ups[4].addr
    );
    (Gateway::start(&yaml).await, ups)
}

/// (method, path, headers, the upstream that must answer)
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const CASES: &[Case] = &[
    ("GET", "/api/x", &[], "reads"),
    ("HEAD", "/api/x", &[], "reads"),
    ("GET", "/api/x", &[("x-canary", "1")], "canary"),
    ("GET", "/api/x", &[("x-canary", "2")], "reads"),
    ("POST", "/api/x", &[("x-canary", "1")], "writes"),
    // No /api route holds for PUT: the shorter prefix `/` answers.
    ("PUT", "/api/x", &[], "default"),
    // The longest prefix whose conditions hold, even with fewer conditions.
    ("GET", "/api/v2/x", &[("x-beta", "anything")], "beta"),
    ("DELETE", "/api/v2", &[("X-Beta", "")], "beta"),
    ("GET", "/api/v2/x", &[("x-canary", "1")], "canary"),
    ("GET", "/apix", &[("x-canary", "1")], "default"),
];

fn request(method: &str, path: &str, headers: &[(&str, &str)], h2: bool) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(if h2 {
            format!("http://svc.test{path}")
        } else {
            path.to_string()
        });
    if !h2 {
        b = b.header("host", "svc.test");
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_headers_choose_the_route_on_http1() {
    let (gw, _ups) = setup().await;
    let mut c = H1::connect(gw.addr).await;
    for (method, path, headers, want) in CASES {
        let got = c.send(request(method, path, headers, false)).await;
        assert_eq!(got.status, 200, "{method} {path} {headers:?}");
        assert_eq!(
            got.header("x-upstream"),
            Some(*want),
            "{method} {path} {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_headers_choose_the_route_on_http2() {
    let (gw, _ups) = setup().await;
    let mut c = H2::connect(gw.addr).await;
    for (method, path, headers, want) in CASES {
        let got = c.send(request(method, path, headers, true)).await;
        assert_eq!(got.status, 200, "{method} {path} {headers:?}");
        assert_eq!(
            got.header("x-upstream"),
            Some(*want),
            "{method} {path} {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_route_holds_for_is_404_and_the_log_names_the_route_that_matched() {
    let up = Upstream::start("only").await;
    let gw = Gateway::start(&format!(
        r#"
accessLog: {{ path: "{{dir}}/access.log" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: gets, match: {{ methods: [GET] }}, cluster: c }}
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    let mut c = H1::connect(gw.addr).await;
    assert_eq!(c.get("svc.test", "/x").await.status, 200);
    let got = c.send(request("POST", "/x", &[], false)).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["error"]["code"], "no_route");
    let log = gw.access_log(2).await;
    assert_eq!(log[0]["route"], "gets");
    assert_eq!(log[1]["route"], serde_json::Value::Null);
    assert_eq!(log[1]["error"], "no_route");
}
