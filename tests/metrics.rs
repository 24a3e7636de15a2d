//! `/metrics` after a known mix of traffic: every counter moves by exactly what the
//! traffic explains, label values come only from configuration names and fixed sets, the
//! token guards the endpoint, and `docs/observability/overview.md` lists exactly the
//! families the gateway exposes.
#![allow(clippy::unwrap_used)]

mod contract;
mod support;

use contract::{Contract, Scrape};
use http::Request;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(5);
const TOKEN: &str = "metrics-test-token";
/// Put into every request path, query, host and user agent; must never reach a label.
const CANARY: &str = "zz-canary";

/// A TCP echo server on 127.0.0.1:0 (echoes until EOF, then closes).
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// A port that refuses connections for as long as the socket is held (bound, never
/// listening), so no other test can take it.
fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

struct Setup {
    gw: Gateway,
    up: Upstream,
    _refusing: tokio::net::TcpSocket,
    refused: SocketAddr,
    echo: SocketAddr,
    _echo_task: tokio::task::JoinHandle<()>,
    _token_dir: tempfile::TempDir,
}

/// Routes `/ok` and `/status` to a live upstream, `/dead` to a refusing port, `/flaky`
/// to a cluster of both (so it retries) and `/limited` to the live upstream under a rate
/// limit of one request; no default route. L4 listener `tcp` echoes; `tcp-deny` refuses 127.0.0.1.
async fn setup() -> Setup {
    let up = Upstream::start("up").await;
    let (refusing, refused) = refusing_port();
    let (echo, echo_task) = echo_server().await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0", tokenFile: "{token}" }}
accessLog: {{ path: "{{dir}}/access.log" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: ok, match: {{ pathPrefix: /ok }}, cluster: up }}
  - {{ name: status, match: {{ pathPrefix: /status }}, cluster: up }}
  - {{ name: dead, match: {{ pathPrefix: /dead }}, cluster: gone }}
  - {{ name: flaky, match: {{ pathPrefix: /flaky }}, cluster: flaky }}
  - name: limited
    match: {{ pathPrefix: /limited }}
    cluster: up
    rateLimit: {{ requestsPerSecond: 0.001, burst: 1, key: route }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: gone, endpoints: [{{ address: "{refused}" }}] }}
  - {{ name: flaky, endpoints: [{{ address: "{refused}" }}, {{ address: "{up}" }}] }}
  - {{ name: echo, endpoints: [{{ address: "{echo}" }}] }}
l4:
  listeners:
    - {{ name: tcp, address: "127.0.0.1:0", cluster: echo }}
    - {{ name: tcp-deny, address: "127.0.0.1:0", cluster: echo, deny: [127.0.0.1] }}
"#,
        token = token_file.display(),
        up = up.addr,
    );
    Setup {
        gw: Gateway::start(&yaml).await,
        up,
        _refusing: refusing,
        refused,
        echo,
        _echo_task: echo_task,
        _token_dir: token_dir,
    }
}

async fn admin_get(gw: &Gateway, path: &str, token: Option<&str>) -> Got {
    let mut req = Request::get(path).header("host", "admin");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    H1::connect(gw.admin())
        .await
        .send(req.body(empty()).unwrap())
        .await
}

async fn scrape_text(gw: &Gateway) -> String {
    let got = admin_get(gw, "/metrics", Some(TOKEN)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.text()
}

async fn scrape(gw: &Gateway) -> Scrape {
    Scrape::parse(&scrape_text(gw).await)
}

/// Polls `/metrics` until `ready` holds, and returns that scrape.
async fn scrape_until(gw: &Gateway, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = scrape(gw).await;
        if ready(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics did not settle:\n{s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn send(conn: &mut H1, host: &str, path: &str) -> Got {
    conn.send(
        Request::get(path)
            .header("host", host)
            .header("user-agent", format!("{CANARY}-agent"))
            .body(empty())
            .unwrap(),
    )
    .await
}

/// Sends the mix: on three client connections, 5 × 200 (`ok`), 3 × upstream 404
/// (`status`), 2 × 404 no route, 2 × 502 (`dead`), 2 × 200 after a retry (`flaky`: the
/// cycle is [refused, up] and a retry takes the next pick, so both meet the refusing
/// endpoint first), 1 × 200 and 1 × 429 (`limited`); then two echoed L4 connections
/// (5 + 8 bytes each way) and one denied one. Returns the proxy's 404 and 502 responses.
async fn traffic(s: &Setup) -> (Got, Got) {
    let gw = &s.gw;
    let mut a = H1::connect(gw.addr).await;
    for i in 0..5 {
        let got = send(
            &mut a,
            "svc.test",
            &format!("/ok/{CANARY}-ok-{i}?q={CANARY}"),
        )
        .await;
        assert_eq!(got.status, 200);
    }
    for _ in 0..3 {
        let got = send(&mut a, "svc.test", &format!("/status/404?{CANARY}")).await;
        assert_eq!(got.status, 404);
        assert_eq!(got.header("x-upstream"), Some("up"));
    }
    let mut b = H1::connect(gw.addr).await;
    let mut no_route = None;
    for _ in 0..2 {
        let got = send(
            &mut b,
            &format!("{CANARY}-host"),
            &format!("/{CANARY}-nowhere"),
        )
        .await;
        assert_eq!(got.status, 404);
        no_route = Some(got);
    }
    let mut c = H1::connect(gw.addr).await;
    let mut bad_gateway = None;
    for _ in 0..2 {
        let got = send(&mut c, "svc.test", &format!("/dead/{CANARY}-dead")).await;
        assert_eq!(got.status, 502);
        bad_gateway = Some(got);
    }
    for _ in 0..2 {
        let got = send(&mut c, "svc.test", &format!("/flaky/{CANARY}-flaky")).await;
        assert_eq!(got.status, 200);
    }
    for status in [200, 429] {
        let got = send(&mut c, "svc.test", &format!("/limited/{CANARY}-limited")).await;
        assert_eq!(got.status, status);
    }
    // All three connections are open at once here.
    scrape_until(gw, |m| {
        m.get("gateway_active_connections", &[("listener", "public")]) == Some(3.0)
    })
    .await;
    drop((a, b, c));

    for msg in [&b"hello"[..], b"goodbye!"] {
        let mut conn = TcpStream::connect(gw.l4_addr("tcp")).await.unwrap();
        conn.write_all(msg).await.unwrap();
        conn.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(LIMIT, conn.read_to_end(&mut back))
            .await
            .expect("the echo ends in time")
            .unwrap();
        assert_eq!(back, msg);
    }
    let mut denied = TcpStream::connect(gw.l4_addr("tcp-deny")).await.unwrap();
    let mut buf = [0u8; 8];
    let closed = tokio::time::timeout(LIMIT, denied.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "denied is closed");
    (no_route.unwrap(), bad_gateway.unwrap())
}

/// Every request and connection of the mix is accounted for, and nothing is in flight.
fn settled(m: &Scrape) -> bool {
    m.total("gateway_request_duration_seconds_count") == 16.0
        && m.value("gateway_active_connections", &[("listener", "public")]) == 0.0
        && m.value("gateway_l4_active_connections", &[("listener", "tcp")]) == 0.0
        && m.value("gateway_l4_connections_total", &[("listener", "tcp-deny")]) == 1.0
        && m.value(
            "gateway_l4_rejected_total",
            &[("listener", "tcp-deny"), ("reason", "denied")],
        ) == 1.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_counter_moves_by_exactly_what_the_traffic_explains() {
    let s = setup().await;
    let before = scrape(&s.gw).await;
    traffic(&s).await;
    let after = scrape_until(&s.gw, settled).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };

    let requests = "gateway_requests_total";
    let req = |route, cluster, code| {
        [
            ("listener", "public"),
            ("route", route),
            ("cluster", cluster),
            ("code", code),
        ]
    };
    assert_eq!(moved(requests, &req("ok", "up", "200")), 5.0);
    assert_eq!(moved(requests, &req("status", "up", "404")), 3.0);
    assert_eq!(
        moved(requests, &req("", "", "404")),
        2.0,
        "no route: empty route and cluster"
    );
    assert_eq!(moved(requests, &req("dead", "gone", "502")), 2.0);
    assert_eq!(moved(requests, &req("flaky", "flaky", "200")), 2.0);
    assert_eq!(moved(requests, &req("limited", "up", "200")), 1.0);
    assert_eq!(moved(requests, &req("limited", "up", "429")), 1.0);
    assert_eq!(
        after.total(requests) - before.total(requests),
        16.0,
        "and nothing else"
    );

    let listener = [("listener", "public")];
    assert_eq!(moved("gateway_connections_total", &listener), 3.0);
    assert_eq!(
        after.get("gateway_active_connections", &listener),
        Some(0.0)
    );
    assert_eq!(
        after.get("gateway_tls_handshake_errors_total", &listener),
        Some(0.0)
    );

    let duration = "gateway_request_duration_seconds";
    for (route, n) in [
        ("ok", 5.0),
        ("status", 3.0),
        ("", 2.0),
        ("dead", 2.0),
        ("flaky", 2.0),
        ("limited", 2.0),
    ] {
        let l = [("route", route)];
        assert_eq!(moved(&format!("{duration}_count"), &l), n, "route {route}");
        let inf = [("route", route), ("le", "+Inf")];
        assert_eq!(moved(&format!("{duration}_bucket"), &inf), n);
        assert!(after.value(&format!("{duration}_sum"), &l) > 0.0);
        let tiny = [("route", route), ("le", "0.0005")];
        assert!(
            after.value(&format!("{duration}_bucket"), &tiny) <= n,
            "buckets are cumulative"
        );
    }
    let upstream = "gateway_upstream_duration_seconds";
    assert_eq!(
        moved(&format!("{upstream}_count"), &[("cluster", "up")]),
        9.0,
        "every answer from `up`, 200s and 404s (the 429 never went upstream)"
    );
    assert_eq!(
        after.get(&format!("{upstream}_count"), &[("cluster", "gone")]),
        None,
        "a refused connect has no upstream latency"
    );
    assert_eq!(
        moved(&format!("{upstream}_count"), &[("cluster", "flaky")]),
        2.0,
        "the retries' answers"
    );

    let refused = s.refused.to_string();
    let errors = |cluster, kind| {
        [
            ("cluster", cluster),
            ("endpoint", refused.as_str()),
            ("kind", kind),
        ]
    };
    let upstream_errors = "gateway_upstream_errors_total";
    assert_eq!(
        moved(upstream_errors, &errors("gone", "connect_error")),
        2.0
    );
    assert_eq!(
        moved(upstream_errors, &errors("flaky", "connect_error")),
        2.0
    );
    assert_eq!(
        after.total(upstream_errors) - before.total(upstream_errors),
        4.0
    );
    assert_eq!(moved("gateway_retries_total", &[("route", "flaky")]), 2.0);
    assert_eq!(
        moved("gateway_rate_limited_total", &[("route", "limited")]),
        1.0
    );
    assert_eq!(
        after.get("gateway_rate_limited_total", &[("route", "ok")]),
        None,
        "a route without a limit has no series"
    );
    assert_eq!(
        after.get("gateway_retries_total", &[("route", "dead")]),
        None,
        "one endpoint: nothing to retry on"
    );

    let tcp = [("listener", "tcp")];
    let deny = [("listener", "tcp-deny")];
    assert_eq!(moved("gateway_l4_connections_total", &tcp), 2.0);
    assert_eq!(moved("gateway_l4_connections_total", &deny), 1.0);
    assert_eq!(after.get("gateway_l4_active_connections", &tcp), Some(0.0));
    for direction in ["in", "out"] {
        let l = [("listener", "tcp"), ("direction", direction)];
        assert_eq!(moved("gateway_l4_bytes_total", &l), 13.0, "{direction}");
        let l = [("listener", "tcp-deny"), ("direction", direction)];
        assert_eq!(moved("gateway_l4_bytes_total", &l), 0.0);
    }
    let rejected = "gateway_l4_rejected_total";
    assert_eq!(
        moved(rejected, &[("listener", "tcp-deny"), ("reason", "denied")]),
        1.0
    );
    for (l, reason) in [
        ("tcp-deny", "connection_limit"),
        ("tcp", "denied"),
        ("tcp", "connection_limit"),
    ] {
        assert_eq!(
            after.get(rejected, &[("listener", l), ("reason", reason)]),
            Some(0.0)
        );
    }

    assert_eq!(after.get("gateway_config_generation", &[]), Some(1.0));
    assert_eq!(
        after.get(
            "gateway_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", gateway::version::COMMIT),
                ("target", gateway::version::TARGET),
            ]
        ),
        Some(1.0)
    );
    assert!(after.get("gateway_access_log_dropped_total", &[]).is_some());
    assert_eq!(after.get("gateway_reload_success_total", &[]), Some(0.0));
    assert_eq!(after.get("gateway_reload_failure_total", &[]), Some(0.0));
    for (cluster, endpoint) in [
        ("up", s.up.addr.to_string()),
        ("gone", s.refused.to_string()),
        ("echo", s.echo.to_string()),
        ("flaky", s.refused.to_string()),
        ("flaky", s.up.addr.to_string()),
    ] {
        let l = [("cluster", cluster), ("endpoint", endpoint.as_str())];
        assert_eq!(after.get("gateway_endpoint_healthy", &l), Some(1.0));
        assert_eq!(after.get("gateway_endpoint_ejections_total", &l), Some(0.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_values_come_only_from_configuration_names_and_fixed_sets() {
    let s = setup().await;
    traffic(&s).await;
    let text = scrape_text(&s.gw).await;
    assert!(
        !text.contains(CANARY),
        "request data leaked into /metrics:\n{text}"
    );
    let m = Scrape::parse(&text);
    let endpoints = [
        s.up.addr.to_string(),
        s.refused.to_string(),
        s.echo.to_string(),
    ];
    for sample in &m.samples {
        for (label, value) in &sample.labels {
            let allowed = match label.as_str() {
                "listener" => ["public", "tcp", "tcp-deny", "admin"].contains(&value.as_str()),
                "route" => {
                    ["ok", "status", "dead", "flaky", "limited", ""].contains(&value.as_str())
                }
                "cluster" => ["up", "gone", "echo", "flaky", ""].contains(&value.as_str()),
                "kind" => [
                    "connect_error",
                    "connect_timeout",
                    "tls_error",
                    "reset",
                    "protocol_error",
                    "timeout",
                ]
                .contains(&value.as_str()),
                "code" => value.len() == 3 && value.bytes().all(|b| b.is_ascii_digit()),
                "endpoint" => endpoints.contains(value),
                "direction" => ["in", "out"].contains(&value.as_str()),
                "reason" => [
                    "denied",
                    "connection_limit",
                    "descriptors",
                    "memory",
                    "aborted",
                    "other",
                ]
                .contains(&value.as_str()),
                "version" => value == env!("CARGO_PKG_VERSION"),
                "commit" => value == gateway::version::COMMIT,
                "target" => value == gateway::version::TARGET,
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                _ => false,
            };
            assert!(
                allowed,
                "{}: label {label}={value:?} is not from the configuration or a fixed set",
                sample.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_needs_the_token_and_accepts_it() {
    let s = setup().await;
    let contract = Contract::load();
    for token in [None, Some("wrong"), Some("metrics-test-toke")] {
        let got = admin_get(&s.gw, "/metrics", token).await;
        assert_eq!(got.status, 401, "{token:?}");
        assert!(
            !got.text().contains("gateway_"),
            "no metrics without the token"
        );
        contract.check("/metrics", "GET", &got);
    }
    let got = admin_get(&s.gw, "/metrics", Some(TOKEN)).await;
    assert_eq!(got.status, 200);
    contract.check("/metrics", "GET", &got);
    Scrape::parse(&got.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_buckets_run_from_half_a_millisecond_to_thirty_seconds() {
    let s = setup().await;
    let mut conn = H1::connect(s.gw.addr).await;
    assert_eq!(send(&mut conn, "svc.test", "/ok").await.status, 200);
    let m = scrape_until(&s.gw, |m| {
        m.total("gateway_request_duration_seconds_count") == 1.0
    })
    .await;
    for family in [
        ("gateway_request_duration_seconds_bucket", "route", "ok"),
        ("gateway_upstream_duration_seconds_bucket", "cluster", "up"),
    ] {
        let (name, key, value) = family;
        let bounds: Vec<String> = m
            .samples
            .iter()
            .filter(|x| x.name == name && x.labels.get(key).map(String::as_str) == Some(value))
            .map(|x| x.labels["le"].clone())
            .collect();
        assert_eq!(
            bounds,
            [
                "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                "0.5", "1.0", "2.5", "5.0", "10.0", "20.0", "30.0", "+Inf"
            ],
            "{name}"
        );
    }
}

/// `(name as queried, type, label names)` for every metric in the doc's table: rows
/// that start with a back-quoted `gateway_` name.
fn documented_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/observability/overview.md"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `gateway_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let kind = cells[2].to_string();
        let labels: BTreeSet<String> = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty() && l != "—")
            .collect();
        assert!(
            out.insert(name.clone(), (kind, labels)).is_none(),
            "{name} listed twice"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_list_exactly_the_metrics_that_are_exposed() {
    let s = setup().await;
    traffic(&s).await;
    let m = scrape_until(&s.gw, settled).await;
    let mut exposed: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for sample in &m.samples {
        let (family, kind) = m.family_of(&sample.name).unwrap();
        // The name a user queries: counters with `_total`, info with `_info`, histograms
        // by their base name.
        let queried = match kind {
            "counter" => format!("{family}_total"),
            "info" => format!("{family}_info"),
            _ => family.to_string(),
        };
        let labels = sample
            .labels
            .keys()
            .filter(|l| *l != "le")
            .cloned()
            .collect();
        let entry = exposed
            .entry(queried.clone())
            .or_insert_with(|| (kind.to_string(), labels));
        assert_eq!(
            entry.1,
            sample
                .labels
                .keys()
                .filter(|l| *l != "le")
                .cloned()
                .collect(),
            "{queried} has series with different label names"
        );
    }
    // Families with no series yet still have a # TYPE line; they must be documented too.
    for (family, kind) in &m.types {
        let queried = match kind.as_str() {
            "counter" => format!("{family}_total"),
            "info" => format!("{family}_info"),
            _ => family.clone(),
        };
        assert!(
            exposed.contains_key(&queried),
            "{queried} has no series after the traffic mix; the test cannot check its labels"
        );
    }
    let documented = documented_metrics();
    let exposed_names: BTreeSet<&String> = exposed.keys().collect();
    let documented_names: BTreeSet<&String> = documented.keys().collect();
    assert_eq!(
        exposed_names, documented_names,
        "docs/observability/overview.md must list exactly what /metrics exposes"
    );
    for (name, (kind, labels)) in &exposed {
        let (doc_kind, doc_labels) = &documented[name];
        assert_eq!(doc_kind, kind, "{name}: documented type");
        assert_eq!(doc_labels, labels, "{name}: documented labels");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_documented_metrics_and_covers_each_view() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/observability/dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let documented = documented_metrics();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("gateway_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| documented.contains_key(*b)))
                .unwrap_or(&name);
            assert!(
                documented.contains_key(base),
                "the dashboard queries {name}, which is not a documented metric"
            );
            used.insert(base.to_string());
        }
    }
    for needed in [
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_active_connections",
        "gateway_l4_bytes_total",
        "gateway_reload_success_total",
        "gateway_reload_failure_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}
