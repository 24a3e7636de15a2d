//! `openspec/admin.yaml` is the source of truth: every admin response, and the proxy's
//! own error envelope, validates against it; it lists every admin endpoint and method;
//! and `/config` is a configuration that reads back as itself, with no secret in it.
#![allow(clippy::unwrap_used)]

mod contract;
mod support;

use contract::Contract;
use http::{Method, Request};
use std::net::SocketAddr;
use std::path::Path;
use support::*;

const TOKEN: &str = "openapi-test-token-1234";

/// The admin endpoints the gateway serves; the contract must list exactly these.
const ENDPOINTS: [&str; 6] = [
    "/healthz", "/readyz", "/metrics", "/status", "/config", "/reload",
];

async fn request(addr: SocketAddr, method: Method, path: &str, token: Option<&str>) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    H1::connect(addr)
        .await
        .send(req.body(empty()).unwrap())
        .await
}

/// A self-signed certificate and its key, written as PEM into `dir`.
fn cert_pair(dir: &Path, name: &str) -> (String, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["upstream.test".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let key_pem = ck.signing_key.serialize_pem();
    (
        cert.display().to_string(),
        key.display().to_string(),
        key_pem,
    )
}

struct Setup {
    gw: Gateway,
    _up: Upstream,
    files: tempfile::TempDir,
    token_file: String,
    client_key: String,
    client_key_pem: String,
    server_key: String,
}

/// Every section the model has: admin with a token, access log with fields, listeners,
/// routes with overrides, conditions, rewrites, header rules, rate limits, a redirect and
/// a direct response, clusters with mTLS, passive and active health, L4 with allow/deny.
async fn setup(token: bool) -> Setup {
    let up = Upstream::start("u").await;
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("admin.token").display().to_string();
    std::fs::write(&token_file, format!("  {TOKEN}\n")).unwrap();
    let (cert, key, key_pem) = cert_pair(files.path(), "client");
    let (server_cert, server_key, _) = cert_pair(files.path(), "server");
    let token_line = if token {
        format!(", tokenFile: \"{token_file}\"")
    } else {
        String::new()
    };
    let yaml = format!(
        r#"
version: 1
workers: 2
admin: {{ address: "127.0.0.1:0"{token_line} }}
accessLog: {{ path: "{{dir}}/access.log", sampleRate: 0.5, fields: [ts, status, path] }}
reload: {{ watch: false, debounce: 1s }}
listeners:
  - name: public
    address: 127.0.0.1:0
    http2: false
    limits: {{ maxRequestHeadersSize: 32KiB, maxRequestBody: 1MiB }}
    timeouts: {{ readHeader: 5s, read: 1m30s, write: 30s, idle: 2m }}
  - name: secure
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert: "{server_cert}", key: "{server_key}", serverNames: [upstream.test] }}]
      minVersion: "1.3"
      alpn: [http/1.1]
routes:
  - name: api
    listeners: [public]
    match: {{ host: "*.example.com", pathPrefix: /api }}
    cluster: c
    timeouts: {{ connect: 250ms, request: 10s }}
    retry: {{ attempts: 0 }}
  - {{ name: secure, match: {{ host: secure.test }}, cluster: tls }}
  - {{ name: fallback, cluster: c }}
  - name: shaped
    match:
      pathPrefix: /shaped
      methods: [GET, POST]
      headers: [{{ name: X-Canary, value: "1" }}, {{ name: x-beta, present: true }}]
    cluster: c
    rewrite: {{ pathPrefix: /, host: "api.internal:8080" }}
    headers:
      request: {{ set: {{ x-env: prod }}, add: {{ x-tag: a }}, remove: [x-debug] }}
      response: {{ set: {{ strict-transport-security: "max-age=600" }}, remove: [server] }}
    rateLimit: {{ requestsPerSecond: 2.5, burst: 10, key: "header:x-api-key" }}
  - name: moved
    match: {{ pathPrefix: /old }}
    redirect: {{ scheme: https, port: 8443, pathPrefix: /new, code: 308 }}
    rateLimit: {{ requestsPerSecond: 100, key: route }}
  - name: gone
    match: {{ pathPrefix: /gone }}
    directResponse: {{ status: 410, body: "gone\n" }}
    headers: {{ response: {{ add: {{ x-frame-options: DENY }} }} }}
  - name: empty
    match: {{ pathPrefix: /empty }}
    directResponse: {{ status: 204 }}
clusters:
  - name: c
    endpoints: [{{ address: "{up}", weight: 3 }}, {{ address: "127.0.0.1:9", weight: 1 }}]
    passiveHealth:
      consecutiveFailures: 3
      baseEjectionTime: 10s
      latency: {{ threshold: 500ms, weightFactor: 0.25 }}
  - name: tls
    protocol: http2
    endpoints: [{{ address: "127.0.0.1:9" }}]
    security:
      mode: mtls
      caBundle: "{cert}"
      serverName: upstream.test
      clientCert: "{cert}"
      clientKey: "{key}"
    activeHealth:
      path: /healthz?deep=1
      interval: 1h
      timeout: 2s
      unhealthyThreshold: 4
      expectedStatuses: [204, "200-299"]
      host: upstream.test
l4:
  listeners:
    - {{ name: tcp, address: "127.0.0.1:0", cluster: c, idleTimeout: 1h, allow: [127.0.0.0/8], deny: [10.0.5.0/24] }}
"#,
        up = up.addr,
    );
    Setup {
        gw: Gateway::start(&yaml).await,
        _up: up,
        files,
        token_file,
        client_key: key,
        client_key_pem: key_pem,
        server_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_response_validates_against_the_contract() {
    let s = setup(false).await;
    let contract = Contract::load();
    let admin = s.gw.admin();
    // Some traffic first, so pools, counters and histograms are not all empty.
    assert_eq!(get(s.gw.addr, "a.example.com", "/api/x").await.status, 200);

    for path in ["/healthz", "/readyz", "/metrics", "/status", "/config"] {
        let got = request(admin, Method::GET, path, None).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text());
        contract.check(path, "GET", &got);
    }
    let got = request(admin, Method::POST, "/reload", None).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["ok"], true);
    assert_eq!(got.json()["generation"], 2);
    contract.check("/reload", "POST", &got);
    // The status document now tells of that reload.
    let got = request(admin, Method::GET, "/status", None).await;
    assert_eq!(got.json()["lastReload"]["ok"], true);
    assert_eq!(got.json()["lastReload"]["trigger"], "api");
    contract.check("/status", "GET", &got);
    // A broken file: 422 with every reason, and the running configuration stays.
    let path = s.gw.dir.path().join("gateway.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{good}
listeners: 3
bogus: true
"
        ),
    )
    .unwrap();
    let got = request(admin, Method::POST, "/reload", None).await;
    assert_eq!(got.status, 422, "{}", got.text());
    assert_eq!(got.json()["error"]["code"], "invalid_config");
    let reasons = got.json()["error"]["reasons"].as_array().unwrap().len();
    assert!(reasons >= 2, "every reason: {}", got.text());
    contract.check("/reload", "POST", &got);
    let got = request(admin, Method::GET, "/status", None).await;
    assert_eq!(got.json()["generation"], 2, "unchanged");
    assert_eq!(got.json()["lastReload"]["ok"], false);
    contract.check("/status", "GET", &got);
    std::fs::write(&path, good).unwrap();
    let got = request(admin, Method::GET, "/nope", None).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["error"]["code"], "not_found");
    contract.check("/nope", "GET", &got);

    // Readiness while draining: 503, same shape.
    s.gw.running.as_ref().unwrap().begin_drain();
    let got = request(admin, Method::GET, "/readyz", None).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.json()["status"], "not ready");
    contract.check("/readyz", "GET", &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_lists_every_admin_endpoint_and_each_undocumented_method_is_405() {
    let s = setup(false).await;
    let contract = Contract::load();
    let mut paths = contract.paths();
    paths.sort();
    let mut expected: Vec<String> = ENDPOINTS.iter().map(|p| p.to_string()).collect();
    expected.sort();
    assert_eq!(paths, expected);

    for path in ENDPOINTS {
        let documented = contract.methods(path);
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            if documented.contains(&method.to_string()) {
                continue;
            }
            let got = request(s.gw.admin(), method.clone(), path, None).await;
            assert_eq!(got.status, 405, "{method} {path}");
            contract.check_component("MethodNotAllowed", &got);
            // `Allow` names the documented methods (HEAD goes with GET).
            let mut allow: Vec<String> = got
                .header("allow")
                .unwrap()
                .split(", ")
                .map(str::to_string)
                .filter(|m| m != "HEAD")
                .collect();
            allow.sort();
            let mut want = documented.clone();
            want.sort();
            assert_eq!(allow, want, "Allow of {path}");
        }
        // HEAD wherever GET is: same status, no body.
        if documented.contains(&"GET".to_string()) {
            let got = request(s.gw.admin(), Method::HEAD, path, None).await;
            assert_eq!(got.status, 200, "HEAD {path}");
            assert!(got.body.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_file_status_and_config_need_the_token_and_the_401_is_documented() {
    let s = setup(true).await;
    let contract = Contract::load();
    let admin = s.gw.admin();
    for path in ["/metrics", "/status", "/config"] {
        for token in [None, Some("nope"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let got = request(admin, Method::GET, path, token).await;
            assert_eq!(got.status, 401, "{path} with {token:?}");
            assert_eq!(got.header("www-authenticate"), Some("Bearer"));
            contract.check(path, "GET", &got);
        }
        let got = request(admin, Method::GET, path, Some(TOKEN)).await;
        assert_eq!(got.status, 200, "{path}");
        contract.check(path, "GET", &got);
    }
    let got = request(admin, Method::POST, "/reload", None).await;
    assert_eq!(got.status, 401);
    contract.check("/reload", "POST", &got);
    for path in ["/healthz", "/readyz"] {
        let got = request(admin, Method::GET, path, None).await;
        assert_eq!(got.status, 200, "{path} needs no token");
        contract.check(path, "GET", &got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_error_envelopes_validate_against_the_contract() {
    let up = Upstream::start("u").await;
    let refused = closed_port().await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: ok, match: {{ pathPrefix: /ok }}, cluster: up }}
  - {{ name: dead, match: {{ pathPrefix: /dead }}, cluster: gone }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{}" }}] }}
  - {{ name: gone, endpoints: [{{ address: "{refused}" }}] }}
"#,
        up.addr
    ))
    .await;
    let contract = Contract::load();
    for (path, status, code) in [
        ("/elsewhere", 404, "no_route"),
        ("/dead", 502, "upstream_unavailable"),
    ] {
        let got = get(gw.addr, "svc.test", path).await;
        assert_eq!(got.status, status, "{path}");
        assert_eq!(got.header("content-type"), Some("application/json"));
        let body = got.json();
        contract.check_schema("ErrorEnvelope", &body);
        assert_eq!(body["error"]["status"], status);
        assert_eq!(body["error"]["code"], code);
        assert_eq!(
            body["error"]["requestId"].as_str(),
            got.header("x-request-id"),
            "the envelope names the request's id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_endpoint_health_and_effective_weight() {
    let s = setup(false).await;
    let contract = Contract::load();
    let got = request(s.gw.admin(), Method::GET, "/status", None).await;
    contract.check("/status", "GET", &got);
    let status = got.json();
    let c = &status["clusters"][0];
    assert_eq!(c["name"], "c");
    assert_eq!(c["panic"], false);
    let ep = &c["endpoints"][0];
    assert_eq!(ep["weight"], 3);
    assert_eq!(ep["effectiveWeight"], 3.0);
    assert_eq!(ep["healthy"], true);
    assert_eq!(ep["ejections"], 0);
    assert_eq!(ep["ejectedForMs"], 0);
    assert_eq!(ep["passiveHealthy"], true);
    assert_eq!(
        ep["activeHealthy"],
        serde_json::Value::Null,
        "no activeHealth on `c`"
    );
    assert_eq!(ep["takenOutBy"], serde_json::json!([]));
    assert_eq!(ep["activeChecks"], serde_json::Value::Null);
    let probed = &status["clusters"][1]["endpoints"][0];
    assert_eq!(
        probed["activeHealthy"], true,
        "in rotation before its first check"
    );
    assert!(probed["activeChecks"]["checks"].is_u64());
    assert_eq!(status["routes"][4]["action"], "redirect");
    assert_eq!(status["routes"][4]["cluster"], serde_json::Value::Null);
    assert_eq!(status["routes"][3]["action"], "cluster");
    assert_eq!(status["l4"][0]["name"], "tcp");
    assert_eq!(status["routes"][0]["listeners"][0], "public");
    assert_eq!(status["routes"][2]["host"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_document_reads_back_as_the_same_configuration_and_holds_no_secret() {
    let s = setup(true).await;
    let got = request(s.gw.admin(), Method::GET, "/config", Some(TOKEN)).await;
    assert_eq!(got.status, 200);
    Contract::load().check("/config", "GET", &got);
    let text = got.text();
    let doc = got.json();

    // Paths of secrets are shown; what they hold is not.
    assert_eq!(doc["admin"]["tokenFile"], s.token_file);
    assert_eq!(doc["clusters"][1]["security"]["clientKey"], s.client_key);
    assert!(!text.contains(TOKEN), "the admin token leaked");
    assert!(!text.contains("PRIVATE KEY") && !text.contains("-----BEGIN"));
    let key_body = s.client_key_pem.lines().nth(1).unwrap();
    assert!(!text.contains(key_body), "key material leaked");

    // What was configured, with defaults filled in.
    assert_eq!(doc["workers"], 2);
    assert_eq!(doc["listeners"][0]["timeouts"]["read"], "1m30s");
    assert_eq!(
        doc["listeners"][0]["limits"]["maxRequestHeadersSize"],
        32768
    );
    assert_eq!(doc["listeners"][0]["maxConnections"], 10000);
    assert_eq!(doc["routes"][0]["match"]["host"], "*.example.com");
    assert_eq!(doc["routes"][0]["timeouts"]["connect"], "250ms");
    assert_eq!(doc["routes"][2]["timeouts"]["request"], "0s");
    assert_eq!(doc["clusters"][0]["passiveHealth"]["maxEjectionTime"], "5m");
    assert_eq!(doc["l4"]["listeners"][0]["deny"][0], "10.0.5.0/24");
    assert_eq!(doc["accessLog"]["fields"][2], "path");
    let tls = &doc["listeners"][1]["tls"];
    assert_eq!(tls["certificates"][0]["key"], s.server_key);
    assert_eq!(tls["minVersion"], "1.3");
    assert_eq!(tls["alpn"][0], "http/1.1");
    assert!(doc["listeners"][1].get("http2").is_none());
    // The traffic keys, with their defaults.
    let shaped = &doc["routes"][3];
    assert_eq!(
        shaped["match"]["methods"],
        serde_json::json!(["GET", "POST"])
    );
    assert_eq!(
        shaped["match"]["headers"],
        serde_json::json!([{"name": "x-canary", "value": "1"}, {"name": "x-beta", "present": true}])
    );
    assert_eq!(shaped["rewrite"]["host"], "api.internal:8080");
    assert_eq!(shaped["headers"]["request"]["remove"][0], "x-debug");
    assert_eq!(
        shaped["rateLimit"],
        serde_json::json!({"requestsPerSecond": 2.5, "burst": 10, "key": "header:x-api-key"})
    );
    assert_eq!(doc["routes"][4]["redirect"]["code"], 308);
    assert_eq!(doc["routes"][4]["rateLimit"]["burst"], 100, "default burst");
    assert!(doc["routes"][4].get("cluster").is_none() && doc["routes"][4].get("retry").is_none());
    assert_eq!(doc["routes"][5]["directResponse"]["body"], "gone\n");
    assert_eq!(
        doc["routes"][6]["directResponse"],
        serde_json::json!({"status": 204, "body": ""})
    );
    let active = &doc["clusters"][1]["activeHealth"];
    assert_eq!(
        active["expectedStatuses"],
        serde_json::json!([204, "200-299"])
    );
    assert_eq!(active["healthyThreshold"], 2, "default");
    assert_eq!(active["interval"], "1h");

    // Saved as a file it validates, and the gateway would run the same thing.
    let file = s.files.path().join("running.json");
    std::fs::write(&file, &text).unwrap();
    let loaded = gateway::config::load(&file)
        .unwrap_or_else(|e| panic!("/config is not a valid configuration: {e}\n{text}"));
    assert_eq!(gateway::admin::config_document(&loaded.config), doc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_rejects_what_it_does_not_describe() {
    let contract = Contract::load();
    let envelope = serde_json::json!({"error": {"status": 404, "code": "no_route",
        "message": "no route matches this request", "requestId": "abc"}});
    assert!(contract.is_valid("ErrorEnvelope", &envelope));
    let mut extra = envelope.clone();
    extra["error"]["detail"] = "x".into();
    assert!(!contract.is_valid("ErrorEnvelope", &extra), "unknown field");
    let mut missing = envelope.clone();
    missing["error"]
        .as_object_mut()
        .unwrap()
        .remove("requestId");
    assert!(
        !contract.is_valid("ErrorEnvelope", &missing),
        "missing field"
    );
    let mut bad = envelope.clone();
    bad["error"]["code"] = "No Route".into();
    assert!(
        !contract.is_valid("ErrorEnvelope", &bad),
        "code not snake_case"
    );
    bad["error"]["code"] = "no_route".into();
    bad["error"]["status"] = 200.into();
    assert!(
        !contract.is_valid("ErrorEnvelope", &bad),
        "not an error status"
    );

    // A route with both a cluster and a redirect, or neither, is not a route.
    let route = serde_json::json!({"name": "r", "match": {"pathPrefix": "/"}, "cluster": "c",
        "timeouts": {"request": "0s"}, "retry": {"attempts": 1}});
    assert!(contract.is_valid("RouteConfig", &route));
    let mut both = route.clone();
    both["redirect"] = serde_json::json!({"scheme": "https", "code": 301});
    assert!(!contract.is_valid("RouteConfig", &both));
    let neither = serde_json::json!({"name": "r", "match": {"pathPrefix": "/"}});
    assert!(!contract.is_valid("RouteConfig", &neither));

    // A status document whose endpoint lost a health field is refused, via the $refs.
    let s = setup(false).await;
    let mut status = get(s.gw.admin(), "admin", "/status").await.json();
    assert!(contract.is_valid("Status", &status));
    status["clusters"][0]["endpoints"][0]
        .as_object_mut()
        .unwrap()
        .remove("healthy");
    assert!(!contract.is_valid("Status", &status));
}
