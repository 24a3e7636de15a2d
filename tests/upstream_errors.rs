//! Failed upstream attempts as an operator sees them: `gateway_upstream_errors_total` by
//! cluster, endpoint and kind for each way an attempt fails (refused, TLS, reset, invalid
//! response, timeout), `gateway_retries_total` by route, and — through the real binary's
//! JSON log — one WARN line per endpoint per 10 s at most, with the count of the lines
//! held back, however hard a dead endpoint is hit.
#![allow(clippy::unwrap_used)]

mod support;

use http::Request;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A TCP server that answers every connection with `reply` (nothing: just close) and
/// closes it.
async fn raw_upstream(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // Read the request head first, so that the close is a reset of a sent
                // request rather than a refused write.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    use tokio::io::AsyncReadExt;
                    let _ = s.read(&mut buf).await;
                })
                .await;
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn series(cluster: &str, endpoint: SocketAddr, kind: &str) -> String {
    format!("gateway_upstream_errors_total{{cluster=\"{cluster}\",endpoint=\"{endpoint}\",kind=\"{kind}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_an_attempt_fails_is_counted_under_its_kind() {
    let up = Upstream::start("up").await;
    let refused = closed_port().await;
    let reset = raw_upstream(b"").await;
    let garbage = raw_upstream(b"SPEAKING NONSENSE\r\n\r\n").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: refused, match: {{ pathPrefix: /refused }}, cluster: refused }}
  - {{ name: tls, match: {{ pathPrefix: /tls }}, cluster: tls }}
  - {{ name: reset, match: {{ pathPrefix: /reset }}, cluster: reset, retry: {{ attempts: 0 }} }}
  - {{ name: garbage, match: {{ pathPrefix: /garbage }}, cluster: garbage }}
  - {{ name: slow, match: {{ pathPrefix: /sleep }}, cluster: up, timeouts: {{ read: 100ms }} }}
clusters:
  - {{ name: refused, endpoints: [{{ address: "{refused}" }}] }}
  - name: tls
    endpoints: [{{ address: "{plain}" }}]
    security: {{ mode: tls, caBundle: ca.pem }}
  - {{ name: reset, endpoints: [{{ address: "{reset}" }}] }}
  - {{ name: garbage, endpoints: [{{ address: "{garbage}" }}] }}
  - {{ name: up, endpoints: [{{ address: "{plain}" }}] }}
"#,
        plain = up.addr,
    );
    let gw = Gateway::start_in(dir, &yaml).await;
    let mut c = H1::connect(gw.addr).await;
    for (path, status) in [
        ("/refused", 502),
        ("/refused", 502),
        ("/tls", 502),
        ("/reset", 502),
        ("/garbage", 502),
        ("/sleep/500", 504),
    ] {
        assert_eq!(c.get("svc.test", path).await.status, status, "{path}");
    }
    for (cluster, endpoint, kind, n) in [
        ("refused", refused, "connect_error", 2.0),
        ("tls", up.addr, "tls_error", 1.0),
        ("reset", reset, "reset", 1.0),
        ("garbage", garbage, "protocol_error", 1.0),
        ("up", up.addr, "timeout", 1.0),
    ] {
        assert_eq!(
            gw.metric(&series(cluster, endpoint, kind)),
            Some(n),
            "{cluster} {kind}:\n{}",
            gw.metrics_text()
        );
    }
    // Only the kinds that happened have series.
    assert_eq!(gw.metric(&series("refused", refused, "timeout")), None);
    assert_eq!(
        gw.metrics_text()
            .lines()
            .filter(|l| l.starts_with("gateway_upstream_errors_total{"))
            .count(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_around_a_dead_endpoint_is_counted_for_its_route_and_the_client_sees_200() {
    let up = Upstream::start("up").await;
    let refused = closed_port().await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: flaky, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{refused}" }}, {{ address: "{}" }}] }}]
"#,
        up.addr
    ))
    .await;
    let mut c = H1::connect(gw.addr).await;
    for _ in 0..10 {
        assert_eq!(c.get("svc.test", "/").await.status, 200);
    }
    // The cycle is [dead, live] and a retry takes the next pick, so every request meets
    // the dead endpoint first and is retried once.
    assert_eq!(
        gw.metric("gateway_retries_total{route=\"flaky\"}"),
        Some(10.0)
    );
    assert_eq!(
        gw.metric(&series("c", refused, "connect_error")),
        Some(10.0)
    );
    assert_eq!(up.hits(), 10);
}

/// The real binary with `--log-format json`, its stderr lines collected.
struct Binary {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Binary {
    fn run(config: &std::path::Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Binary { child, lines }
    }

    fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["fields"]["event"] == event)
            .cloned()
            .collect()
    }

    /// The address the HTTP listener bound (from its `listening` line).
    async fn listening(&self) -> SocketAddr {
        eventually(Duration::from_secs(20), || {
            self.lines.lock().unwrap().iter().find_map(|l| {
                (l["fields"]["message"] == "listening" && l["fields"]["kind"] == "http")
                    .then(|| l["fields"]["address"].as_str()?.parse().ok())
                    .flatten()
            })
        })
        .await
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_under_load_logs_one_warn_line_per_ten_seconds_with_the_count_held_back() {
    let refused = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
             routes: [{{ name: r, cluster: dead }}]\n\
             clusters: [{{ name: dead, endpoints: [{{ address: \"{refused}\" }}] }}]\n"
        ),
    )
    .unwrap();
    let bin = Binary::run(&config);
    let addr = bin.listening().await;
    let started = std::time::Instant::now();
    // Load: 8 connections × 50 requests, every one failing on the dead endpoint.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1::connect(addr).await;
            for _ in 0..50 {
                let got = c
                    .send(
                        Request::get("/")
                            .header("host", "svc.test")
                            .body(empty())
                            .unwrap(),
                    )
                    .await;
                assert_eq!(got.status, 502);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let burst = started.elapsed();
    let first = eventually(Duration::from_secs(5), || {
        bin.events("upstream_error").into_iter().next()
    })
    .await;
    assert_eq!(first["level"], "WARN");
    assert_eq!(first["fields"]["cluster"], "dead");
    assert_eq!(first["fields"]["endpoint"], refused.to_string());
    assert_eq!(first["fields"]["reason"], "upstream_connect_error");
    assert_eq!(first["fields"]["suppressed"], 0);
    // 400 failures: one line per started 10 s, not one per failure.
    let lines = bin.events("upstream_error").len() as u64;
    assert!(
        lines <= 1 + burst.as_secs() / 10,
        "{lines} lines for 400 failures in {burst:?}"
    );
    // Keep failing until the next line is allowed; it tells how many were held back.
    let mut sent = 400u64;
    let mut c = H1::connect(addr).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let second = loop {
        let lines = bin.events("upstream_error");
        if lines.len() as u64 >= 2 {
            break lines[1].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second line within 20 s"
        );
        assert_eq!(c.get("svc.test", "/").await.status, 502);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let held_back = second["fields"]["suppressed"].as_u64().unwrap();
    // The second line's own failure is not among those held back; any failure sent
    // after it was logged is not either.
    assert!(
        held_back >= 399 && held_back < sent - 1,
        "held back {held_back} of {sent}"
    );
    assert!(
        second["fields"]["message"]
            .as_str()
            .unwrap()
            .contains(&held_back.to_string()),
        "{second}"
    );
}
