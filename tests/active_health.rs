//! Active health through the real server: probes take a failing endpoint out after
//! `unhealthyThreshold` failed checks and bring it back after `healthyThreshold` passing
//! ones; they speak the cluster's protocol and TLS; they feed the same rotation as
//! passive health (panic mode included), and `/status` and `gateway_endpoint_healthy`
//! show both views and which one took an endpoint out; a reload keeps the probe history of
//! endpoints that stay and stops the probes of a removed cluster.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(10);

/// An upstream whose `/healthz` answers a status the test sets; every other path answers
/// 200 with the upstream's name. It counts both kinds of request and keeps the health
/// checks' Host (or :authority), user agent and HTTP version.
struct Checked {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    checks: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl Checked {
    async fn start(name: &'static str) -> Checked {
        Self::start_with(name, None).await
    }

    /// With `tls`, serves TLS (ALPN h2 and http/1.1) with that certificate and key.
    async fn start_with(name: &'static str, tls: Option<(&Leaf, &TestCa)>) -> Checked {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|(leaf, _)| {
            use rustls::pki_types::pem::PemObject;
            let cert = rustls::pki_types::CertificateDer::from_pem_file(&leaf.cert).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let c = Checked {
            addr,
            health: Arc::new(AtomicU16::new(200)),
            checks: Arc::default(),
            requests: Arc::default(),
            seen: Arc::default(),
        };
        let (health, checks, requests, seen) = (
            c.health.clone(),
            c.checks.clone(),
            c.requests.clone(),
            c.seen.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (health, checks, requests, seen) = (
                    health.clone(),
                    checks.clone(),
                    requests.clone(),
                    seen.clone(),
                );
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (health, checks, requests, seen) = (
                            health.clone(),
                            checks.clone(),
                            requests.clone(),
                            seen.clone(),
                        );
                        async move {
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                            if req.uri().path() == "/healthz" {
                                let host = req
                                    .uri()
                                    .authority()
                                    .map(|a| a.to_string())
                                    .or_else(|| {
                                        req.headers()
                                            .get("host")
                                            .map(|h| h.to_str().unwrap().to_string())
                                    })
                                    .unwrap_or_default();
                                let ua = req
                                    .headers()
                                    .get("user-agent")
                                    .map(|h| h.to_str().unwrap().to_string())
                                    .unwrap_or_default();
                                seen.lock().unwrap().push((
                                    host,
                                    ua,
                                    format!("{:?}", req.version()),
                                ));
                                checks.fetch_add(1, Ordering::SeqCst);
                                *r.status_mut() =
                                    StatusCode::from_u16(health.load(Ordering::SeqCst)).unwrap();
                            } else {
                                requests.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        c
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }
}

fn endpoints(ups: &[&Checked]) -> String {
    ups.iter()
        .map(|u| format!("{{ address: \"{}\" }}", u.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

const CHECKS: &str = "{ path: /healthz, interval: 100ms, timeout: 100ms, unhealthyThreshold: 2, healthyThreshold: 2, host: health.internal }";

fn config(ups: &[&Checked], extra: &str) -> String {
    format!(
        r#"
reload: {{ watch: false }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c, retry: {{ attempts: 0 }} }}]
clusters:
  - name: c
    endpoints: [{}]
    activeHealth: {CHECKS}
{extra}"#,
        endpoints(ups)
    )
}

async fn status(gw: &Gateway) -> Value {
    get(gw.admin(), "admin", "/status").await.json()
}

/// The `/status` entry of endpoint `addr` in cluster `cluster`.
fn endpoint<'a>(s: &'a Value, cluster: &str, addr: SocketAddr) -> &'a Value {
    let c = s["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster} in {s}"));
    c["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("no endpoint {addr} in {c}"))
}

/// Waits until `/status` satisfies `ready`; returns that document.
async fn status_until(gw: &Gateway, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = status(gw).await;
        if ready(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status did not settle:\n{s:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_taken_out_by_its_checks_and_brought_back() {
    let a = Checked::start("a").await;
    let b = Checked::start("b").await;
    let gw = Gateway::start(&config(&[&a, &b], "")).await;
    b.set_health(503);
    let s = status_until(&gw, |s| endpoint(s, "c", b.addr)["activeHealthy"] == false).await;
    let eb = endpoint(&s, "c", b.addr);
    assert_eq!(eb["healthy"], false);
    assert_eq!(eb["passiveHealthy"], true);
    assert_eq!(eb["takenOutBy"], serde_json::json!(["active"]));
    assert_eq!(eb["activeChecks"]["lastResult"], "failed");
    assert_eq!(eb["activeChecks"]["lastStatus"], 503);
    assert_eq!(eb["activeChecks"]["lastError"], "unexpected_status");
    assert!(eb["activeChecks"]["consecutiveFailed"].as_u64().unwrap() >= 2);
    let ea = endpoint(&s, "c", a.addr);
    assert_eq!(ea["healthy"], true);
    assert_eq!(ea["activeChecks"]["lastResult"], "passed");
    assert_eq!(ea["takenOutBy"], serde_json::json!([]));
    let series =
        |e: SocketAddr| format!("gateway_endpoint_healthy{{cluster=\"c\",endpoint=\"{e}\"}}");
    assert_eq!(gw.metric(&series(b.addr)), Some(0.0));
    assert_eq!(gw.metric(&series(a.addr)), Some(1.0));

    // Out of rotation: every request goes to `a`.
    let before = b.requests();
    let mut c = H1::connect(gw.addr).await;
    for _ in 0..10 {
        let got = c.get("svc.test", "/work").await;
        assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "a"));
    }
    assert_eq!(b.requests(), before);

    // It recovers: back after two passing checks, and it gets traffic again.
    b.set_health(200);
    let s = status_until(&gw, |s| endpoint(s, "c", b.addr)["healthy"] == true).await;
    assert_eq!(
        endpoint(&s, "c", b.addr)["takenOutBy"],
        serde_json::json!([])
    );
    assert_eq!(gw.metric(&series(b.addr)), Some(1.0));
    for _ in 0..10 {
        assert_eq!(c.get("svc.test", "/work").await.status, 200);
    }
    assert!(b.requests() > before, "back in rotation");

    // The checks asked for the configured host, as the gateway.
    let seen = b.seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|(host, ua, _)| host == "health.internal" && ua.starts_with("gateway-health-check/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_fails_its_checks_panic_mode_routes_to_all_of_them() {
    let a = Checked::start("a").await;
    let b = Checked::start("b").await;
    a.set_health(500);
    b.set_health(500);
    let gw = Gateway::start(&config(&[&a, &b], "")).await;
    let s = status_until(&gw, |s| s["clusters"][0]["panic"] == true).await;
    for u in [&a, &b] {
        assert_eq!(
            endpoint(&s, "c", u.addr)["takenOutBy"],
            serde_json::json!(["active"])
        );
    }
    let mut c = H1::connect(gw.addr).await;
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let got = c.get("svc.test", "/work").await;
        assert_eq!(got.status, 200, "panic mode still sends traffic");
        answered.insert(got.text());
    }
    assert_eq!(answered.len(), 2, "to both endpoints: {answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_speak_http2_and_tls_as_the_cluster_does() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf(dir.path(), "upstream", &["upstream.test"]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let h2 = Checked::start("h2").await;
    let tls = Checked::start_with("tls", Some((&leaf, &ca))).await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: h2, match: {{ pathPrefix: /h2 }}, cluster: h2 }}
  - {{ name: tls, cluster: tls }}
clusters:
  - name: h2
    protocol: http2
    endpoints: [{{ address: "{}" }}]
    activeHealth: {{ path: /healthz, interval: 200ms, timeout: 200ms }}
  - name: tls
    endpoints: [{{ address: "{}" }}]
    security: {{ mode: tls, caBundle: ca.pem, serverName: upstream.test }}
    activeHealth: {{ path: /healthz, interval: 200ms, timeout: 200ms, expectedStatuses: [200] }}
"#,
        h2.addr, tls.addr
    );
    let gw = Gateway::start_in(dir, &yaml).await;
    let s = status_until(&gw, |s| {
        endpoint(s, "h2", h2.addr)["activeChecks"]["checks"].as_u64() >= Some(2)
            && endpoint(s, "tls", tls.addr)["activeChecks"]["checks"].as_u64() >= Some(2)
    })
    .await;
    for (cluster, up) in [("h2", &h2), ("tls", &tls)] {
        let e = endpoint(&s, cluster, up.addr);
        assert_eq!(e["activeChecks"]["lastResult"], "passed", "{cluster}: {e}");
        assert_eq!(e["activeChecks"]["lastStatus"], 200);
        assert_eq!(e["activeHealthy"], true);
    }
    assert!(h2
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|(host, _, v)| v == "HTTP/2.0" && host == &h2.addr.to_string()));
    assert!(
        tls.checks() >= 2,
        "the TLS endpoint was reached through TLS"
    );
    // A TLS handshake that fails is a failed check, named so.
    tls.set_health(200);
    let wrong = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), wrong.pem()).unwrap();
    let gw = Gateway::start_in(dir, &yaml).await;
    let s = status_until(&gw, |s| {
        endpoint(s, "tls", tls.addr)["activeHealthy"] == false
    })
    .await;
    assert_eq!(
        endpoint(&s, "tls", tls.addr)["activeChecks"]["lastError"],
        "tls_error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_and_active_health_share_the_rotation_and_status_says_which_took_an_endpoint_out() {
    let a = Checked::start("a").await;
    let b = Checked::start("b").await;
    let dead = closed_port().await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c, retry: {{ attempts: 0 }} }}]
clusters:
  - name: c
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}, {{ address: "{dead}" }}]
    passiveHealth: {{ consecutiveFailures: 1, baseEjectionTime: 60s, maxEjectedPercent: 100 }}
    activeHealth: {CHECKS}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&yaml).await;
    b.set_health(503);
    // The dead endpoint fails its checks and, once a request meets it, passive health too.
    let mut c = H1::connect(gw.addr).await;
    for _ in 0..3 {
        c.get("svc.test", "/work").await;
    }
    let s = status_until(&gw, |s| {
        endpoint(s, "c", b.addr)["activeHealthy"] == false
            && endpoint(s, "c", dead)["activeHealthy"] == false
            && endpoint(s, "c", dead)["passiveHealthy"] == false
    })
    .await;
    assert_eq!(
        endpoint(&s, "c", b.addr)["takenOutBy"],
        serde_json::json!(["active"])
    );
    assert_eq!(
        endpoint(&s, "c", dead)["takenOutBy"],
        serde_json::json!(["passive", "active"])
    );
    assert_eq!(
        endpoint(&s, "c", dead)["activeChecks"]["lastError"],
        "connect_error"
    );
    assert_eq!(s["clusters"][0]["panic"], false);
    for _ in 0..6 {
        assert_eq!(c.get("svc.test", "/work").await.text(), "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_probe_history_of_endpoints_that_stay_and_stops_removed_clusters() {
    let a = Checked::start("a").await;
    let b = Checked::start("b").await;
    let other = Checked::start("other").await;
    let with_other = format!(
        "  - name: other\n    endpoints: [{{ address: \"{}\" }}]\n    activeHealth: {CHECKS}\n",
        other.addr
    );
    let gw = Gateway::start(&config(&[&a, &b], &with_other)).await;
    b.set_health(503);
    status_until(&gw, |s| endpoint(s, "c", b.addr)["activeHealthy"] == false).await;
    assert!(other.checks() > 0);

    // A reload that keeps cluster `c` (and drops `other`): `b` is still out at once, its
    // history intact; its checks go on.
    let before = endpoint(&status(&gw).await, "c", b.addr)["activeChecks"]["checks"]
        .as_u64()
        .unwrap();
    assert_eq!(gw.reload_with(&config(&[&a, &b], "")).await, Ok(2));
    let s = status(&gw).await;
    let eb = endpoint(&s, "c", b.addr);
    assert_eq!(eb["healthy"], false, "kept out across the reload");
    assert!(eb["activeChecks"]["checks"].as_u64().unwrap() >= before);
    let mut c = H1::connect(gw.addr).await;
    for _ in 0..4 {
        assert_eq!(c.get("svc.test", "/work").await.text(), "a");
    }
    // `other` is gone: its probes stop, while `a`'s go on (they are the clock here).
    let stopped_at = other.checks();
    let a_then = a.checks();
    eventually(LIMIT, || (a.checks() >= a_then + 5).then_some(())).await;
    assert!(
        other.checks() <= stopped_at + 1,
        "probes of a removed cluster stop ({} → {})",
        stopped_at,
        other.checks()
    );
    // And removing activeHealth from `c` forgets its verdicts: `b` is back.
    let plain = config(&[&a, &b], "").replace(&format!("    activeHealth: {CHECKS}\n"), "");
    assert_eq!(gw.reload_with(&plain).await, Ok(3));
    let s = status(&gw).await;
    let eb = endpoint(&s, "c", b.addr);
    assert_eq!(eb["healthy"], true);
    assert_eq!(eb["activeHealthy"], Value::Null);
    assert_eq!(eb["activeChecks"], Value::Null);
}
